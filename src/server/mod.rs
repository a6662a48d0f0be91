//! `ipxe-ca serve`: HTTPS with mutual TLS (rustls) that gives each board its own script, and
//! plain HTTP for boot files. In proxy mode, plain HTTP behind nginx, trusting nginx's
//! client-certificate headers from trusted peers only.

mod boot;
mod console;
mod crl;
mod files;
mod guard;
mod log;
mod metrics;
pub mod nginx;
mod one_time;
mod response;
mod routes;
mod sandbox;
mod shared;
mod tls;
mod verdict;
mod verified;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::store::config::ConfigCache;
use crate::store::registry::Registry;

pub use one_time::OneTimeStore;
use shared::{ConnInfo, Shared};
pub use shared::{ConsoleListen, Front, ServeOptions};
pub use verdict::Verdict;

/// The rustls configuration `serve` accepts boards with (both server certificates chosen per
/// ClientHello, board certificates verified against the CA and remembered, `sessions` TLS
/// sessions kept), so that the benchmark's TLS floor measures this and not a look-alike.
pub fn tls_config(
    state: &crate::store::state::StateDir,
    sessions: usize,
) -> Result<rustls::ServerConfig> {
    tls::build(state, sessions)
}

/// TLS bytes a connection may queue for the socket: what one write hands the kernel while a
/// kernel or initrd goes out (the benchmark's bulk floor uses it too).
pub const SEND_BUFFER: usize = tls::SEND_BUFFER;

/// Where `serve` listens for boot scripts unless told otherwise: every address, the port
/// `init`'s default server URL names.
pub fn default_https() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], crate::store::config::DEFAULT_HTTPS_PORT))
}

/// Where `serve` listens for boot files unless told otherwise.
pub fn default_http() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], crate::store::config::DEFAULT_HTTP_PORT))
}

/// The name of an event-loop thread.
const LOOP_THREAD: &std::ffi::CStr = c"ipxe-ca-loop";

/// Run the server until SIGTERM or SIGINT, then let in-flight requests finish.
pub fn run(registry: Registry, opts: ServeOptions) -> Result<()> {
    guard::raise_nofile();
    let state = registry.state().clone();
    state.require_ca()?;
    // Every folder the rules name exists before they are made (index/ comes with the first
    // board): one made later would be out of reach.
    for dir in state.served_dirs() {
        crate::store::state::create_dir_private(&dir)?;
    }
    // Before the runtime starts a thread: every thread it starts is confined too.
    let (confinement, folders) = sandbox::confine_serve(&state);
    let confined = !matches!(confinement, sandbox::Confinement::None(_));
    log::say(&match confinement {
        sandbox::Confinement::Enforced => format!(
            "ipxe-ca: confined by the kernel (Landlock): reads only {} and writes only board \
             history; keys and build output are out of reach",
            served_list(&state)
        ),
        sandbox::Confinement::Partial => format!(
            "ipxe-ca: confined by the kernel (Landlock, partly: an older kernel): reads only {}",
            served_list(&state)
        ),
        sandbox::Confinement::None(why) => format!(
            "ipxe-ca: warning: not confined by the kernel ({why}): serve relies on its own \
             checks to keep keys out of reach"
        ),
    });
    let workers = opts.workers.max(1);
    let started = std::sync::atomic::AtomicUsize::new(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        // The event loops start first, before any file is read on the blocking pool: named
        // apart, `top -H` tells them from the pool's threads (`tokio-rt-worker`).
        .on_thread_start(move || {
            if started.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < workers {
                let _ = rustix::thread::set_name(LOOP_THREAD);
            }
        })
        .enable_all()
        .build()
        .map_err(|e| Error::Server(format!("cannot start runtime: {e}")))?;
    let gone = std::sync::Mutex::new(None);
    let until = async {
        if !confined {
            return shutdown_signal().await;
        }
        tokio::select! {
            _ = shutdown_signal() => {}
            p = sandbox::replaced(folders) => {
                log::say(&format!(
                    "ipxe-ca: {} was replaced while serve ran (a state dir restored from a \
                     copy?): the kernel confines serve to the folders it started with, so it \
                     stops to be started again on the new ones",
                    p.display()
                ));
                *gone.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
        }
    };
    let r = rt.block_on(serve(registry, opts, until));
    log::flush_messages(Duration::from_secs(2));
    r?;
    match gone.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(p) => Err(Error::StateReplaced(p)),
        None => Ok(()),
    }
}

/// `ca/, server/, …` relative to the state dir, for the log.
fn served_list(state: &crate::store::state::StateDir) -> String {
    state
        .served_dirs()
        .iter()
        .filter_map(|d| d.file_name())
        .map(|n| format!("{}/", n.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Serve until `shutdown` completes.
pub async fn serve(
    registry: Registry,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let config = ConfigCache::load(registry.state())?;
    let state = registry.state();
    let server_names = crate::store::cached::Cached::new(
        vec![state.server_cert(), state.server_ecdsa_cert()],
        || Ok::<_, Error>(shared::read_server_names(state)),
    )?;
    boot::warn_unnamed(&server_names, &config.in_force(), state);
    let files = Arc::new(files::FilesRoot::new(&opts.files, registry.state().root())?);
    files.warn_unsigned();
    let shared = Arc::new(Shared {
        config,
        server_names,
        files,
        one_time: OneTimeStore::default(),
        revoked: crl::RevokedSerials::new(registry.state())?,
        templates: crate::render::Templates::default(),
        scripts: Default::default(),
        boards: crate::store::registry::BoardCache::new(registry.clone()),
        changes: crate::store::watch::Changes::new(registry.state().root()),
        journal: crate::store::history::Journal::start(registry.state().clone(), log::say),
        metrics: metrics::Metrics::default(),
        consoles: Default::default(),
        expiry: Default::default(),
        opts: opts.clone(),
        registry,
    });
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    // What runs out within 30 days is said at start and once a day after, while it lasts.
    let expiry_watch = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(24 * 3600));
            loop {
                tick.tick().await;
                match crate::health::expiring(&shared.registry, 30) {
                    Ok(soon) => {
                        for e in soon {
                            log::say(&format!(
                                "ipxe-ca: warning: {} expires in {} days ({}): renew it before boards stop booting",
                                e.what, e.days_left, e.expires
                            ));
                        }
                    }
                    Err(e) => {
                        log::say(&format!("ipxe-ca: warning: cannot check expiry dates: {e}"))
                    }
                }
            }
        })
    };
    // Expired one-time URLs go on a timer (every TTL, 1 to 10 s), so memory comes back after a
    // burst and the expired count is current.
    let purger = {
        let shared = shared.clone();
        let ttl = shared.opts.one_time_ttl;
        tokio::spawn(async move {
            let every = ttl.clamp(Duration::from_secs(1), Duration::from_secs(10));
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                shared.one_time.purge_expired();
            }
        })
    };

    let console = console_listener(&opts, &shared.config.in_force()).await?;
    let acceptor = match (&opts.front, &console) {
        (Front::Proxy { .. }, None) => None,
        _ => Some(Arc::new(tls::Reloading::new(
            shared.registry.state(),
            opts.tls_sessions,
        )?)),
    };
    if let (Front::Mtls { https: addr }, Some(acceptor)) = (&opts.front, &acceptor) {
        let listener = bind(*addr).await?;
        log::say(&format!(
            "ipxe-ca: serving boot scripts on https://{} (mutual TLS)",
            local(&listener)
        ));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            Some((acceptor.clone(), tls::Purpose::Boot)),
            shared.clone(),
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    if let (Some(listener), Some(acceptor)) = (console, &acceptor) {
        log::say(&format!(
            "ipxe-ca: receiving the boards' consoles on {} (TLS, each board's own certificate)",
            local(&listener)
        ));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            Some((acceptor.clone(), tls::Purpose::Console)),
            shared.clone(),
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(addr) = opts.metrics {
        let listener = bind(addr).await?;
        log::say(&format!(
            "ipxe-ca: metrics on http://{}/metrics",
            local(&listener)
        ));
        tasks.push(tokio::spawn(metrics_loop(
            listener,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    let listener = bind(opts.http).await?;
    if let Front::Proxy { trusted, .. } = &opts.front {
        log::say(&format!(
            "ipxe-ca: serving boot scripts and files on http://{} behind a proxy (trusted: {trusted:?})",
            local(&listener),
        ));
    } else {
        log::say(&format!(
            "ipxe-ca: serving boot files on http://{}/files/",
            local(&listener)
        ));
    }
    tasks.push(tokio::spawn(accept_loop(
        listener,
        None,
        shared.clone(),
        graceful.clone(),
        stop_rx,
    )));

    shutdown.await;
    log::say("ipxe-ca: shutting down; letting in-flight requests finish");
    let _ = stop_tx.send(true);
    purger.abort();
    expiry_watch.abort();
    for t in tasks {
        let _ = t.await;
    }
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {
                log::say("ipxe-ca: requests still running after 30 s; exiting anyway");
            }
        }
    }
    // The last requests' history is on disk before the process ends.
    let _ = tokio::task::spawn_blocking(move || shared.journal.flush(Duration::from_secs(5))).await;
    Ok(())
}

/// The console listener, where it is wanted and (by default) where its port is free.
async fn console_listener(
    opts: &ServeOptions,
    config: &crate::store::config::Config,
) -> Result<Option<TcpListener>> {
    let addr = match (opts.console, &opts.front) {
        (ConsoleListen::Off, _) => return Ok(None),
        (ConsoleListen::At(a), _) => return bind(a).await.map(Some),
        // iPXE behind nginx is older than the TLS serve speaks: no console by default.
        (ConsoleListen::Default, Front::Proxy { .. }) => return Ok(None),
        (ConsoleListen::Default, Front::Mtls { https }) => match config.console_port() {
            Some(port) => SocketAddr::new(https.ip(), port),
            None => return Ok(None),
        },
    };
    match bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) => {
            log::say(&format!(
                "ipxe-ca: warning: boards' consoles are not received: {e}; pass --console ADDR \
                 (and set it with `ipxe-ca config --console`) or --no-console"
            ));
            Ok(None)
        }
    }
}

fn local(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<Shared>, Option<tls::Purpose>);

impl OpenGuard {
    fn new(shared: Arc<Shared>, tls: Option<tls::Purpose>) -> OpenGuard {
        let g = OpenGuard(shared, tls);
        g.gauge().fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        g
    }

    fn gauge(&self) -> &std::sync::atomic::AtomicI64 {
        match self.1 {
            Some(tls::Purpose::Boot) => &self.0.metrics.open_https,
            Some(tls::Purpose::Console) => &self.0.metrics.open_console,
            None => &self.0.metrics.open_http,
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge()
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A burst of booting boards must wait in the accept queue, not lose SYNs (a lost SYN costs a
/// client a one-second retransmit): listen with a deep backlog.
const BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let fail = |e: std::io::Error| {
        Error::Server(format!(
            "cannot listen on {addr}: {e} (is another server using the port?)"
        ))
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    socket.bind(addr).map_err(fail)?;
    socket.listen(BACKLOG).map_err(fail)
}

/// The admin listener: `GET /metrics` only.
async fn metrics_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use hyper::{Response, StatusCode};
    // Scrapers are few (Prometheus, an operator's curl): a handful at once, the rest wait.
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let mut r = if req.uri().path() == "/metrics" {
                            // It reads the registry: the blocking pool's work, not a loop's.
                            let text = tokio::task::spawn_blocking(move || scrape(&shared))
                                .await
                                .unwrap_or_default();
                            Response::new(response::full(text))
                        } else {
                            let mut r = Response::new(response::full("see /metrics\n"));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        };
                        r.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// Metrics connections served at once.
const METRICS_CONNECTIONS: usize = 8;
/// How long the expiry dates of one scrape serve the next ones: reading them reads every board
/// file, and they change by the day.
const EXPIRY_REUSE: Duration = Duration::from_secs(30);

fn scrape(shared: &Shared) -> String {
    let expiry = {
        let mut cached = shared.expiry.lock().unwrap_or_else(|e| e.into_inner());
        match &*cached {
            Some((at, v)) if at.elapsed() < EXPIRY_REUSE => {
                let age = at.elapsed().as_secs() as i64;
                v.iter().map(|(k, s)| (*k, s - age)).collect()
            }
            _ => {
                let mut earliest: std::collections::BTreeMap<&'static str, i64> =
                    Default::default();
                // Everything within a century: the earliest expiry of each kind.
                for e in crate::health::expiring(&shared.registry, 36_500).unwrap_or_default() {
                    let v = earliest.entry(e.kind).or_insert(i64::MAX);
                    *v = (*v).min(e.seconds_left);
                }
                let v: Vec<(&'static str, i64)> = earliest.into_iter().collect();
                *cached = Some((std::time::Instant::now(), v.clone()));
                v
            }
        }
    };
    let (issued, used, expired) = shared.one_time.counts();
    shared
        .metrics
        .render((issued, used, expired, shared.one_time.len()), &expiry)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<(Arc<tls::Reloading>, tls::Purpose)>,
    shared: Arc<Shared>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(shared.opts.max_connections.max(1)));
    // Connections that have not proved themselves (handshake, first request, proxy secret)
    // hold no slot: they have a budget of their own, oldest closed first, a share per prefix
    // and a deadline, so idle connections from many addresses cannot lock boards out.
    let unproven = guard::Unproven::new(
        shared.opts.max_connections,
        shared.opts.max_per_ip,
        slots.clone(),
    );
    // Connections without a client certificate only ever get a 403 script: a quarter of the
    // slots at most, so that they cannot crowd out enrolled boards.
    let anonymous = Arc::new(Semaphore::new((shared.opts.max_connections / 4).max(1)));
    let per_ip = guard::PerIp::default();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    log::say(&format!("ipxe-ca: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // A trusted proxy carries every board's connection: once proved, it may hold the
        // whole budget.
        let cap = if shared.opts.is_trusted_proxy(peer.ip()) {
            shared.opts.max_connections
        } else {
            shared.opts.max_per_ip
        };
        let Some(ip_slot) = per_ip.take(peer.ip(), cap.max(1)) else {
            // One address holds its share already: drop the newcomer, not an enrolled board.
            drop(stream);
            shared.metrics.refused_connection("per-address-cap");
            continue;
        };
        let (proof, watch) = unproven.enter(peer.ip(), shared.opts.timeout);
        let _ = stream.set_nodelay(true);
        let stream = guard::Stalled::new(stream, shared.opts.timeout);
        let shared = shared.clone();
        let tls = tls.as_ref().map(|(t, purpose)| (t.current(), *purpose));
        let watcher = graceful.watcher();
        let anonymous = anonymous.clone();
        tokio::spawn(async move {
            let _ip_slot = ip_slot;
            let _open = OpenGuard::new(shared.clone(), tls.as_ref().map(|(_, p)| *p));
            let metrics = shared.clone();
            let work = async move {
                match tls {
                    Some((tls, purpose)) => {
                        tls::serve_tls(
                            stream, peer, tls, shared, watcher, anonymous, proof, purpose,
                        )
                        .await
                    }
                    None => {
                        let info = ConnInfo {
                            peer: Some(peer),
                            fingerprint_sha1: None,
                            tls: false,
                            session: None,
                            proof: Some(proof),
                        };
                        routes::serve_http(
                            hyper_util::rt::TokioIo::new(stream),
                            info,
                            shared,
                            watcher,
                        )
                        .await
                    }
                }
            };
            tokio::select! {
                _ = work => {}
                why = watch.closed() => metrics.metrics.refused_connection(why),
            }
        });
    }
}
