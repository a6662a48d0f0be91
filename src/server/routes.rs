//! Request routing: boot scripts per board, one-time secret URLs, boot files.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::USER_AGENT;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::files;
use super::log::{self, Entry};
use super::metrics::Route;
use super::response::{respond, script, Body, Outcome, Refusal, Verdict};
use super::shared::{ConnInfo, Front, Shared, Watcher};
use crate::board::{Board, Status};
use crate::history;
use crate::render::Context;
use crate::types::{Fingerprint, Mac, Serial};
use crate::watch::Snapshot;

pub(crate) async fn serve_http<I>(
    io: TokioIo<I>,
    info: ConnInfo,
    shared: Arc<Shared>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let timeout = shared.opts.timeout;
    let svc = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(handle(req, &info, &shared).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(16 * 1024);
    let conn = builder.serve_connection(io, svc);
    let _ = watcher.watch(conn).await;
}

async fn handle(req: Request<Incoming>, info: &ConnInfo, shared: &Arc<Shared>) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let ua = req
        .headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut out = Outcome::default();
    // A connection proves itself with its first request, or from a trusted proxy's address
    // with the proxy secret; until then it is in the unproven budget (oldest closed first).
    if let Some(proof) = info.proof.as_ref().filter(|p| !p.proven()) {
        let proves = match &shared.opts.front {
            Front::Proxy { secret, .. } if trusted_proxy(info, shared) => {
                proxy_authentic(&req, secret).is_ok()
            }
            _ => true,
        };
        if proves && !proof.prove().await {
            shared.metrics.refused_connection("connection-budget");
            let mut r = Response::new(super::response::full("server busy: try again\n"));
            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
    }
    let is_boot = path == "/boot.ipxe" || path == "/boot/ipxe" || path.starts_with("/ipxe/");
    // The route (a metrics label) is decided where the request is dispatched, nowhere else.
    let (route, resp) = if let Some(rest) = path.strip_prefix("/files/") {
        // Over HTTPS (or a trusted proxy), files are for enrolled boards only: the mutual-TLS
        // route that keeps kernels and initrds from being swapped on the wire.
        let resp = if info.tls || trusted_proxy(info, shared) {
            match authorize(
                &req,
                None,
                info,
                shared,
                &shared.changes.snapshot(),
                &mut out,
            ) {
                Ok(_) => files::serve(rest, &req, info.tls, files_of(shared), &mut out).await,
                Err(refusal) => refusal.respond(&mut out),
            }
        } else {
            files::serve(rest, &req, false, files_of(shared), &mut out).await
        };
        (Route::Files, resp)
    } else if let Some(token) = path.strip_prefix("/secret/") {
        let resp = if info.tls || trusted_proxy(info, shared) {
            one_time(token, &method, shared, &mut out)
        } else {
            // A one-time secret never crosses the network in clear text.
            script(
                StatusCode::FORBIDDEN,
                "one-time URLs are served over HTTPS only",
                &mut out,
            )
        };
        (Route::Secret, resp)
    } else if is_boot {
        let mac = path
            .strip_prefix("/ipxe/")
            .map(|m| m.trim_end_matches(".ipxe").to_string())
            .or_else(|| query_param(&query, "mac"));
        let imgverify = query_param(&query, "imgverify").as_deref() == Some("1");
        (
            Route::Boot,
            boot(&req, mac, imgverify, info, shared, &mut out),
        )
    } else if !info.tls && path.len() > 1 {
        // The plain port serves the files directory at its root too, so that
        // `{{ files_url }}/vmlinuz` names `files/vmlinuz` (and `/files/vmlinuz` keeps working).
        (
            Route::Files,
            files::serve(&path[1..], &req, false, files_of(shared), &mut out).await,
        )
    } else {
        let resp = script(
            StatusCode::NOT_FOUND,
            "not found: boards fetch /boot.ipxe",
            &mut out,
        );
        (Route::Other, resp)
    };
    let logged_path = match path.strip_prefix("/secret/") {
        // A one-time token is a capability: log only its start.
        Some(t) => format!("/secret/{}…", t.chars().take(6).collect::<String>()),
        None if query.is_empty() => path,
        None => format!("{path}?{query}"),
    };
    let status = resp.status();
    let verdict = out.verdict.unwrap_or(match status.as_u16() {
        200..=399 => Verdict::Served,
        404 => Verdict::NotFound,
        500.. => Verdict::ServerError,
        _ => Verdict::Refused,
    });
    shared.metrics.request(route, verdict);
    if route == Route::Files && verdict == Verdict::Served {
        shared
            .metrics
            .file_bytes
            .fetch_add(out.bytes, std::sync::atomic::Ordering::Relaxed);
    }
    let time = log::now();
    if let Some(board) = out.board.as_deref().and_then(|b| b.parse().ok()) {
        shared.journal.record(
            board,
            history::Record {
                time: time.clone(),
                peer: info.peer.map(|p| p.to_string()),
                path: logged_path.clone(),
                status: status.as_u16(),
                outcome: verdict.name().to_string(),
                reason: out.note.clone(),
                tls: info.session.map(|s| history::TlsFacts {
                    version: s.version.map(str::to_string),
                    suite: s.suite.map(str::to_string),
                    group: s.group.map(str::to_string),
                    resumed: s.resumed,
                }),
            },
        );
    }
    log::write(&Entry {
        time,
        peer: info.peer.map(|p| p.to_string()),
        outcome: verdict.name(),
        board: out.board,
        fingerprint: out.fingerprint,
        serial: out.serial,
        mac: out.mac,
        method: method.to_string(),
        path: logged_path,
        status: status.as_u16(),
        bytes: out.bytes,
        duration_ms: (start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        user_agent: ua,
        tls: info.session,
        note: out.note,
    });
    resp
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| files::percent_decode(v).unwrap_or_else(|| v.to_string()))
    })
}

/// A plain-HTTP peer that terminates TLS for us (proxy mode, `--trusted-proxy`).
fn trusted_proxy(info: &ConnInfo, shared: &Shared) -> bool {
    info.peer
        .is_some_and(|p| shared.opts.is_trusted_proxy(p.ip()))
}

/// Equal in constant time (the proxy secret must not leak through timing): aws-lc's compare,
/// not one of ours.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// The proxy proved itself: exactly one X-IPXE-CA-Proxy-Secret, equal to ours.
fn proxy_authentic(req: &Request<Incoming>, ours: &str) -> Result<(), Refusal> {
    let mut sent = req.headers().get_all("x-ipxe-ca-proxy-secret").iter();
    match (sent.next(), sent.next()) {
        (Some(v), None) if same_secret(v.as_bytes(), ours.as_bytes()) => Ok(()),
        (None, _) => Err(Refusal::forbidden(Verdict::Refused, "no proxy secret: the request did not come through the nginx block `ipxe-ca nginx-config` writes")),
        _ => Err(Refusal::forbidden(Verdict::Refused, "wrong proxy secret: regenerate the nginx block with `ipxe-ca nginx-config` and reload nginx")),
    }
}

/// Step 1, who is asking: the SHA-1 fingerprint of a verified client certificate, from TLS
/// or from a trusted proxy's headers (with the serial the proxy saw).
fn identify(
    req: &Request<Incoming>,
    info: &ConnInfo,
    shared: &Shared,
) -> Result<(Fingerprint, Option<Serial>), Refusal> {
    if info.tls {
        let fp = info.fingerprint_sha1.as_deref().ok_or_else(|| {
            Refusal::forbidden(Verdict::NoCertificate, "no client certificate was presented; the board's image must carry its certificate (ipxe-ca build)")
        })?;
        let fp = fp
            .parse()
            .map_err(|_| Refusal::forbidden(Verdict::Refused, "bad fingerprint"))?;
        return Ok((fp, None));
    }
    let Front::Proxy { secret, .. } = &shared.opts.front else {
        return Err(Refusal::forbidden(
            Verdict::NoCertificate,
            "boot scripts are served only over HTTPS with a client certificate",
        ));
    };
    if !trusted_proxy(info, shared) {
        let peer: Option<IpAddr> = info.peer.map(|p| p.ip());
        return Err(Refusal::forbidden(
            Verdict::Refused,
            format!(
                "client-certificate headers ignored: peer {} is not a --trusted-proxy",
                peer.map(|i| i.to_string()).unwrap_or_default()
            ),
        ));
    }
    proxy_authentic(req, secret)?;
    for name in [
        "x-ssl-client-verify",
        "x-ssl-client-fingerprint",
        "x-ssl-client-serial",
    ] {
        if req.headers().get_all(name).iter().count() > 1 {
            return Err(Refusal::forbidden(
                Verdict::Refused,
                format!("{name} appears more than once: refused"),
            ));
        }
    }
    let h = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    match h("x-ssl-client-verify") {
        Some("SUCCESS") => {}
        Some(other) => {
            return Err(Refusal::forbidden(
                Verdict::NoCertificate,
                format!("the proxy could not verify the client certificate ({other})"),
            ))
        }
        None => {
            return Err(Refusal::forbidden(
                Verdict::NoCertificate,
                "no client certificate was presented to the proxy",
            ))
        }
    }
    let serial = match h("x-ssl-client-serial") {
        Some(s) => Some(s.parse::<Serial>().map_err(|_| {
            Refusal::forbidden(Verdict::Refused, "the proxy sent a malformed serial")
        })?),
        None => None,
    };
    let fp = h("x-ssl-client-fingerprint").ok_or_else(|| {
        Refusal::forbidden(
            Verdict::NoCertificate,
            "the proxy sent no X-SSL-Client-Fingerprint",
        )
    })?;
    let fp = fp.parse().map_err(|_| {
        Refusal::forbidden(Verdict::Refused, "the proxy sent a malformed fingerprint")
    })?;
    Ok((fp, serial))
}

/// Step 2, which board that is and whether it may have what it asks for: a registered
/// certificate, the serial the proxy saw, not revoked, the MAC it names (if any) its own.
pub(crate) fn select(
    fp: &Fingerprint,
    seen_serial: Option<&Serial>,
    mac: Option<&str>,
    shared: &Shared,
    now: &Snapshot,
    out: &mut Outcome,
) -> Result<Arc<Board>, Refusal> {
    out.fingerprint = Some(fp.to_string());
    let board = match shared.boards.by_fingerprint(fp, now) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err(Refusal::forbidden(
                Verdict::Unknown,
                format!("certificate {fp} is not registered (ipxe-ca enroll/register)"),
            ))
        }
        Err(e) => {
            log::say(&format!("ipxe-ca: registry lookup failed: {e}"));
            return Err(Refusal {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                why: "registry error; see the server log".to_string(),
                verdict: Verdict::ServerError,
            });
        }
    };
    out.board = Some(board.name.to_string());
    let Some(cert) = board.presented(fp) else {
        return Err(Refusal::forbidden(
            Verdict::Unknown,
            "certificate not registered",
        ));
    };
    out.serial = Some(seen_serial.unwrap_or(cert.serial).to_string());
    if seen_serial.is_some_and(|s| s != cert.serial) {
        return Err(Refusal::forbidden(
            Verdict::Refused,
            "certificate serial does not match the registry",
        ));
    }
    if cert.revoked && cert.previous && board.status == Status::Active {
        return Err(Refusal::forbidden(
            Verdict::Revoked,
            format!(
                "this is an old certificate of board {}, revoked after renewal: flash its new image (ipxe-ca build)",
                board.name
            ),
        ));
    }
    if cert.revoked || shared.revoked.contains(cert.serial, now) {
        return Err(Refusal::forbidden(
            Verdict::Revoked,
            format!("board {} is revoked", board.name),
        ));
    }
    if let (Some(registered), Some(asked)) = (board.mac, mac) {
        if asked.parse::<Mac>().ok() != Some(registered) {
            return Err(Refusal::forbidden(
                Verdict::MacMismatch,
                format!(
                    "MAC mismatch: board {} is registered with {registered}, request names {asked}",
                    board.name
                ),
            ));
        }
    }
    Ok(board)
}

/// The board behind this request, verified (identify, then select); otherwise the refusal.
fn authorize(
    req: &Request<Incoming>,
    mac: Option<&str>,
    info: &ConnInfo,
    shared: &Shared,
    now: &Snapshot,
    out: &mut Outcome,
) -> Result<Arc<Board>, Refusal> {
    let (fp, serial) = identify(req, info, shared)?;
    select(&fp, serial.as_ref(), mac, shared, now, out)
}

/// A board's boot script: authorize, then render its profile.
fn boot(
    req: &Request<Incoming>,
    mac: Option<String>,
    imgverify: bool,
    info: &ConnInfo,
    shared: &Arc<Shared>,
    out: &mut Outcome,
) -> Response<Body> {
    out.mac = mac.clone();
    // One look at what changed on disk, before any cache is trusted.
    let now = shared.changes.snapshot();
    let rendered = authorize(req, mac.as_deref(), info, shared, &now, out)
        .and_then(|board| render_profile(shared, &board, imgverify, &now));
    match rendered {
        Ok(body) => {
            out.verdict = Some(Verdict::Served);
            respond(StatusCode::OK, body, out)
        }
        Err(refusal) => refusal.respond(out),
    }
}

/// Step 3, the script: the board's profile rendered with its variables and secrets.
fn render_profile(
    shared: &Arc<Shared>,
    board: &Board,
    imgverify: bool,
    now: &Snapshot,
) -> Result<String, Refusal> {
    let rendered = (|| {
        let secrets = shared.boards.secrets(&board.name, now)?;
        let (config, changed) = shared.config.get(now, log::say);
        if changed {
            warn_unnamed(&shared.registry, &config);
        }
        let ctx = Context::for_board(board, &config, secrets, imgverify);
        let path = shared.registry.state().profile(&board.profile);
        let s = shared.clone();
        let c = ctx.clone();
        let one_time = minijinja::Value::from_function(
            move |name: String| -> Result<String, minijinja::Error> {
                let err =
                    |m: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m);
                let p = s
                    .registry
                    .state()
                    .secret_template(&name)
                    .map_err(|e| err(e.to_string()))?;
                let body = s
                    .templates
                    .render_file(&p, &c, &[], &s.changes.snapshot())
                    .map_err(|e| err(e.to_string()))?;
                let token = s
                    .one_time
                    .insert(&c.board.name, &name, body, s.opts.one_time_ttl)
                    .ok_or_else(|| err("random number generator failed".into()))?;
                Ok(format!("{}/secret/{token}", config.server_url))
            },
        );
        shared
            .templates
            .render_file(&path, &ctx, &[("one_time_url", one_time)], now)
    })();
    rendered.map_err(|e| {
        log::say(&format!(
            "ipxe-ca: cannot render profile {:?} for board {}: {e}",
            board.profile.as_str(),
            board.name
        ));
        Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            why: format!(
                "profile {} cannot be rendered; see the server log",
                board.profile
            ),
            verdict: Verdict::TemplateError,
        }
    })
}

fn one_time(token: &str, method: &Method, shared: &Shared, out: &mut Outcome) -> Response<Body> {
    if method != Method::GET {
        return script(StatusCode::METHOD_NOT_ALLOWED, "use GET", out);
    }
    let taken = shared.one_time.take(token);
    out.board = taken.as_ref().map(|t| t.board.clone());
    match taken.and_then(|t| t.body) {
        Some(body) => respond(StatusCode::OK, body, out),
        None => script(
            StatusCode::NOT_FOUND,
            "no such one-time URL (used already, or expired)",
            out,
        ),
    }
}

/// What the files route needs of the server: the folder and the read counters.
fn files_of(shared: &Shared) -> (&Arc<files::FilesRoot>, &Arc<super::metrics::FileReads>) {
    (&shared.files, &shared.metrics.file_reads)
}

/// A server host the server certificates do not name is the operator's to mend (boards would
/// refuse the server): said, at start and when an edit brings it, not fatal.
pub(crate) fn warn_unnamed(registry: &crate::registry::Registry, config: &crate::config::Config) {
    if let Some(e) = crate::health::server_name_problem(registry.state(), config) {
        log::say(&format!(
            "ipxe-ca: warning: {e}; `ipxe-ca check` says what to do"
        ));
    }
}
