//! Request routing: boot scripts per board, one-time secret URLs, boot files.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::USER_AGENT;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::boot;
use super::files;
use super::log::{self, Entry};
use super::metrics::Route;
use super::response::{refuse, respond, script, Body};
use super::shared::{ConnInfo, Front, Shared, Watcher};
use super::verdict::{Denial, Outcome, Verdict};
use crate::board::Board;
use crate::store::history;
use crate::store::watch::Snapshot;
use crate::types::{Fingerprint, Serial};

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
    // What is asked for, decided here and nowhere else (the route is a metrics label too).
    let secure = info.tls || trusted_proxy(info, shared);
    let asked = Asked::parse(&path, &query, info.tls);
    let route = asked.route();
    let resp = match asked {
        // Over HTTPS (or a trusted proxy), files are for enrolled boards only: the mutual-TLS
        // route that keeps kernels and initrds from being swapped on the wire.
        Asked::File(rest) if secure => {
            match authorize(
                &req,
                None,
                info,
                shared,
                &shared.changes.snapshot(),
                &mut out,
            ) {
                Ok(_) => files::serve(rest, &req, info.tls, files_of(shared), &mut out).await,
                Err(refusal) => refuse(refusal, &mut out),
            }
        }
        Asked::File(rest) | Asked::PlainFile(rest) => {
            files::serve(rest, &req, false, files_of(shared), &mut out).await
        }
        Asked::Secret(token) if secure => one_time(token, &method, shared, &mut out),
        // A one-time secret never crosses the network in clear text.
        Asked::Secret(_) => script(
            StatusCode::FORBIDDEN,
            "one-time URLs are served over HTTPS only",
            &mut out,
        ),
        Asked::Script { mac, imgverify } => {
            boot_script(&req, mac, imgverify, info, shared, &mut out)
        }
        Asked::Nothing => script(
            StatusCode::NOT_FOUND,
            "not found: boards fetch /boot.ipxe",
            &mut out,
        ),
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
    let peer = info.peer.map(|p| p.to_string());
    if let Some(board) = out.board.as_deref().and_then(|b| b.parse().ok()) {
        shared.journal.record(
            board,
            history::Record {
                time: time.clone(),
                peer: peer.clone(),
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
        peer,
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

/// What a request asks for, parsed from its path and query once.
enum Asked<'a> {
    /// A board's script (`/boot.ipxe`, `/boot/ipxe`, `/ipxe/MAC`), naming a MAC or not.
    Script {
        mac: Option<String>,
        imgverify: bool,
    },
    /// A boot file under `/files/`, by its path beneath the files folder: for enrolled boards
    /// only when it comes over HTTPS or from a trusted proxy.
    File(&'a str),
    /// A boot file at the plain port's root (`{{ files_url }}/vmlinuz`): served to anyone, as
    /// plain HTTP is (a trusted proxy's address included: a board behind the same NAT).
    PlainFile(&'a str),
    /// A one-time secret, by its token.
    Secret(&'a str),
    Nothing,
}

impl<'a> Asked<'a> {
    fn parse(path: &'a str, query: &str, tls: bool) -> Asked<'a> {
        if let Some(rest) = path.strip_prefix("/files/") {
            Asked::File(rest)
        } else if let Some(token) = path.strip_prefix("/secret/") {
            Asked::Secret(token)
        } else if path == "/boot.ipxe" || path == "/boot/ipxe" || path.starts_with("/ipxe/") {
            let mac = path
                .strip_prefix("/ipxe/")
                .map(|m| m.trim_end_matches(".ipxe").to_string())
                .or_else(|| query_param(query, "mac"));
            let imgverify = query_param(query, "imgverify").as_deref() == Some("1");
            Asked::Script { mac, imgverify }
        } else if !tls && path.len() > 1 {
            // The plain port serves the files directory at its root too, so that
            // `{{ files_url }}/vmlinuz` names `files/vmlinuz` (and `/files/vmlinuz` works).
            Asked::PlainFile(&path[1..])
        } else {
            Asked::Nothing
        }
    }

    fn route(&self) -> Route {
        match self {
            Asked::Script { .. } => Route::Boot,
            Asked::File(_) | Asked::PlainFile(_) => Route::Files,
            Asked::Secret(_) => Route::Secret,
            Asked::Nothing => Route::Other,
        }
    }
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
fn proxy_authentic(req: &Request<Incoming>, ours: &str) -> Result<(), Denial> {
    let mut sent = req.headers().get_all("x-ipxe-ca-proxy-secret").iter();
    match (sent.next(), sent.next()) {
        (Some(v), None) if same_secret(v.as_bytes(), ours.as_bytes()) => Ok(()),
        (None, _) => Err(Denial::forbidden(Verdict::Refused, "no proxy secret: the request did not come through the nginx block `ipxe-ca nginx-config` writes")),
        _ => Err(Denial::forbidden(Verdict::Refused, "wrong proxy secret: regenerate the nginx block with `ipxe-ca nginx-config` and reload nginx")),
    }
}

/// Step 1, who is asking: the SHA-1 fingerprint of a verified client certificate, from TLS
/// or from a trusted proxy's headers (with the serial the proxy saw).
fn identify(
    req: &Request<Incoming>,
    info: &ConnInfo,
    shared: &Shared,
) -> Result<(Fingerprint, Option<Serial>), Denial> {
    if info.tls {
        let fp = info.fingerprint_sha1.clone().ok_or_else(|| {
            Denial::forbidden(Verdict::NoCertificate, "no client certificate was presented; the board's image must carry its certificate (ipxe-ca build)")
        })?;
        return Ok((fp, None));
    }
    let Front::Proxy { secret, .. } = &shared.opts.front else {
        return Err(Denial::forbidden(
            Verdict::NoCertificate,
            "boot scripts are served only over HTTPS with a client certificate",
        ));
    };
    if !trusted_proxy(info, shared) {
        let peer: Option<IpAddr> = info.peer.map(|p| p.ip());
        return Err(Denial::forbidden(
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
            return Err(Denial::forbidden(
                Verdict::Refused,
                format!("{name} appears more than once: refused"),
            ));
        }
    }
    let h = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    match h("x-ssl-client-verify") {
        Some("SUCCESS") => {}
        Some(other) => {
            return Err(Denial::forbidden(
                Verdict::NoCertificate,
                format!("the proxy could not verify the client certificate ({other})"),
            ))
        }
        None => {
            return Err(Denial::forbidden(
                Verdict::NoCertificate,
                "no client certificate was presented to the proxy",
            ))
        }
    }
    let serial = match h("x-ssl-client-serial") {
        Some(s) => Some(s.parse::<Serial>().map_err(|_| {
            Denial::forbidden(Verdict::Refused, "the proxy sent a malformed serial")
        })?),
        None => None,
    };
    let fp = h("x-ssl-client-fingerprint").ok_or_else(|| {
        Denial::forbidden(
            Verdict::NoCertificate,
            "the proxy sent no X-SSL-Client-Fingerprint",
        )
    })?;
    let fp = fp.parse().map_err(|_| {
        Denial::forbidden(Verdict::Refused, "the proxy sent a malformed fingerprint")
    })?;
    Ok((fp, serial))
}

/// The board behind this request, verified (identify, then select); otherwise the refusal.
fn authorize(
    req: &Request<Incoming>,
    mac: Option<&str>,
    info: &ConnInfo,
    shared: &Shared,
    now: &Snapshot,
    out: &mut Outcome,
) -> Result<Arc<Board>, Denial> {
    let (fp, serial) = identify(req, info, shared)?;
    boot::select(&fp, serial.as_ref(), mac, shared, now, out)
}

/// A board's boot script: who asks (the edge's part), then the boot core's answer.
fn boot_script(
    req: &Request<Incoming>,
    mac: Option<String>,
    imgverify: bool,
    info: &ConnInfo,
    shared: &Arc<Shared>,
    out: &mut Outcome,
) -> Response<Body> {
    out.mac = mac.clone();
    let rendered = identify(req, info, shared).and_then(|(fp, serial)| {
        boot::boot(shared, &fp, serial.as_ref(), mac.as_deref(), imgverify, out)
    });
    match rendered {
        Ok(body) => {
            out.verdict = Some(Verdict::Served);
            respond(StatusCode::OK, body, out)
        }
        Err(refusal) => refuse(refusal, out),
    }
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
