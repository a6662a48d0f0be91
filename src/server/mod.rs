//! `ipxe-ca serve`: HTTPS with mutual TLS (rustls) that gives each board its own script, and
//! plain HTTP for boot files. In proxy mode, plain HTTP behind nginx, trusting nginx's
//! client-certificate headers from trusted peers only.

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
mod tls;
mod verified;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::{Config, ConfigCache};
use crate::error::{Error, Result};
use crate::Lab;

pub use one_time::OneTimeStore;
pub use response::Verdict;

/// The rustls configuration `serve` accepts boards with (both server certificates chosen per
/// ClientHello, board certificates verified against the CA and remembered, `sessions` TLS
/// sessions kept), so that the benchmark's TLS floor measures this and not a look-alike.
pub fn tls_config(state: &crate::state::StateDir, sessions: usize) -> Result<rustls::ServerConfig> {
    tls::build(state, sessions)
}

/// Where the boards' TLS ends.
#[derive(Clone, Debug)]
pub enum Front {
    /// `serve` does mutual TLS itself, on this address.
    Mtls {
        /// The HTTPS listener.
        https: SocketAddr,
    },
    /// A TLS-terminating proxy (nginx, for iPXE older than 2024) passes the client
    /// certificate's facts in headers over plain HTTP.
    Proxy {
        /// Peers whose X-SSL-Client-* headers are believed.
        trusted: Vec<IpAddr>,
        /// What the proxy must send as `X-IPXE-CA-Proxy-Secret`.
        secret: String,
    },
}

/// How `serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Who terminates the boards' TLS.
    pub front: Front,
    /// Plain-HTTP listener (files; in proxy mode also the scripts).
    pub http: SocketAddr,
    /// Root of `/files/`.
    pub files: PathBuf,
    /// Lifetime of one-time URLs.
    pub one_time_ttl: Duration,
    /// Cap on concurrent connections per listener.
    pub max_connections: usize,
    /// Cap on concurrent connections from one address, per listener.
    pub max_per_ip: usize,
    /// TLS handshake and request-header timeout.
    pub timeout: Duration,
    /// TLS sessions kept for resumption by session ID (no tickets are issued).
    pub tls_sessions: usize,
    /// Where Prometheus scrapes `/metrics` (keep it off the boards' network).
    pub metrics: Option<SocketAddr>,
    /// Threads running the event loop. One per core serves the most boards at once; fewer
    /// spend less CPU per boot on a host that does other work (fewer wake-ups: one thread on
    /// 2 shared cores spent a fifth to a quarter less per ECDSA boot than two).
    pub workers: usize,
}

impl ServeOptions {
    /// Whether `ip` is a `--trusted-proxy` in proxy mode (::ffff:127.0.0.1 is 127.0.0.1: a
    /// dual-stack listener sees mapped addresses).
    pub(crate) fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match &self.front {
            Front::Proxy { trusted, .. } => trusted.iter().any(|t| t.to_canonical() == ip),
            Front::Mtls { .. } => false,
        }
    }
}

/// The earliest expiry of each kind (`board`, `server`, …), in seconds from now.
type Earliest = Vec<(&'static str, i64)>;

/// Shared state of a running server.
pub(crate) struct Shared {
    pub lab: Lab,
    /// `config.toml`, read again when it changes.
    pub config: ConfigCache,
    /// The boot files folder, checked again whenever its path names another one.
    pub files: Arc<files::FilesRoot>,
    pub one_time: OneTimeStore,
    pub revoked: crl::RevokedSerials,
    /// Profiles and secret templates, compiled once per version of their file.
    pub templates: crate::render::Templates,
    /// Board files and secrets, read once per version of their files.
    pub boards: crate::registry::BoardCache,
    /// What changed under the state directory since a cache read it (inotify).
    pub changes: crate::watch::Changes,
    /// Each board's recent requests.
    pub journal: crate::history::Journal,
    pub metrics: metrics::Metrics,
    /// The earliest expiry of each kind, as the last scrape read it, and when.
    pub expiry: std::sync::Mutex<Option<(std::time::Instant, Earliest)>>,
    pub opts: ServeOptions,
}

/// What identifies the client on one connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnInfo {
    pub peer: Option<SocketAddr>,
    /// SHA-1 of the verified client certificate (TLS), when there is one.
    pub fingerprint_sha1: Option<String>,
    /// Whether this connection came through the mTLS listener.
    pub tls: bool,
    /// How the TLS connection was made, for the access log.
    pub session: Option<TlsSession>,
    /// What the connection proves itself with, to leave the unproven budget.
    pub proof: Option<Arc<guard::Proof>>,
}

/// What operators grep for when a board will not boot: how it connected.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct TlsSession {
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: Option<&'static str>,
    /// e.g. `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`.
    pub suite: Option<&'static str>,
    /// Key-exchange group, e.g. `X25519`.
    pub group: Option<&'static str>,
    /// Whether the session was resumed (no signature, no key exchange).
    pub resumed: bool,
}

/// The name of an event-loop thread.
const LOOP_THREAD: &std::ffi::CStr = c"ipxe-ca-loop";

/// Run the server until SIGTERM or SIGINT, then let in-flight requests finish.
pub fn run(lab: Lab, opts: ServeOptions) -> Result<()> {
    guard::raise_nofile();
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
    let r = rt.block_on(serve(lab, opts, shutdown_signal()));
    log::flush_messages(Duration::from_secs(2));
    r
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

/// Boot files without a current signature are served, but never silently: imgverify on the
/// boards will refuse them.
fn warn_unsigned(files_root: &std::path::Path) {
    use crate::codesign::SigStatus;
    match crate::codesign::check(files_root) {
        Ok(report) => {
            for (status, what) in [
                (SigStatus::Missing, "no signature"),
                (SigStatus::Stale, "a stale signature (changed since signed)"),
            ] {
                let names: Vec<&str> = report
                    .iter()
                    .filter(|f| f.status == status)
                    .map(|f| f.path.as_str())
                    .collect();
                if !names.is_empty() {
                    log::say(&format!(
                        "ipxe-ca: warning: {} boot file(s) with {what}: {}; boards that verify \
(imgverify) will refuse them: run `ipxe-ca sign-files`",
                        names.len(),
                        names.join(", ")
                    ));
                }
            }
        }
        Err(e) => log::say(&format!(
            "ipxe-ca: warning: cannot check boot file signatures: {e}"
        )),
    }
}

/// A server host the server certificates do not name is the operator's to mend (boards would
/// refuse the server): said, at start and when an edit brings it, not fatal.
pub(crate) fn warn_unnamed(lab: &Lab, config: &Config) {
    if let Some(detail) = lab.server_name_problem(config) {
        log::say(&format!("ipxe-ca: warning: {detail}"));
    }
}

/// Serve until `shutdown` completes.
pub async fn serve(
    lab: Lab,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let config = ConfigCache::load(lab.state())?;
    warn_unnamed(&lab, &config.in_force());
    let files = Arc::new(files::FilesRoot::new(&opts.files, lab.state().root())?);
    warn_unsigned(&files.root());
    let shared = Arc::new(Shared {
        config,
        files,
        one_time: OneTimeStore::default(),
        revoked: crl::RevokedSerials::new(lab.state())?,
        templates: crate::render::Templates::default(),
        boards: crate::registry::BoardCache::new(lab.registry().clone()),
        changes: crate::watch::Changes::new(lab.state().root()),
        journal: crate::history::Journal::start(lab.state().clone(), log::say),
        metrics: metrics::Metrics::default(),
        expiry: Default::default(),
        opts: opts.clone(),
        lab,
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
                match shared.lab.expiring(30) {
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

    if let Front::Mtls { https: addr } = opts.front {
        let tls = Arc::new(tls::Reloading::new(shared.lab.state(), opts.tls_sessions)?);
        let listener = bind(addr).await?;
        log::say(&format!(
            "ipxe-ca: serving boot scripts on https://{} (mutual TLS)",
            local(&listener)
        ));
        tasks.push(tokio::spawn(accept_loop(
            listener,
            Some(tls),
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

fn local(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<Shared>, bool);

impl OpenGuard {
    fn new(shared: Arc<Shared>, https: bool) -> OpenGuard {
        let g = OpenGuard(shared, https);
        g.gauge().fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        g
    }

    fn gauge(&self) -> &std::sync::atomic::AtomicI64 {
        if self.1 {
            &self.0.metrics.open_https
        } else {
            &self.0.metrics.open_http
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

type Watcher = hyper_util::server::graceful::Watcher;

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
                for e in shared.lab.expiring(36_500).unwrap_or_default() {
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
    tls: Option<Arc<tls::Reloading>>,
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
        let tls = tls.as_ref().map(|t| t.current());
        let watcher = graceful.watcher();
        let anonymous = anonymous.clone();
        tokio::spawn(async move {
            let _ip_slot = ip_slot;
            let _open = OpenGuard::new(shared.clone(), tls.is_some());
            let metrics = shared.clone();
            let work = async move {
                match tls {
                    Some(tls) => {
                        tls::serve_tls(stream, peer, tls, shared, watcher, anonymous, proof).await
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
