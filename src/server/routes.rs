//! Request routing: boot scripts per board, one-time secret URLs, boot files.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::log::{self, Entry};
use super::{files, ConnInfo, Shared, Watcher};
use crate::registry::{Board, Status};
use crate::render::Context;
use crate::types::{validate_name, Fingerprint, Mac};

pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// In-memory one-time secrets: each answers once, within its TTL. Bounded: a board has at
/// most one outstanding URL per secret name (a new one replaces the old), the whole store at
/// most [`OneTimeStore::CAP`], and expired ones are purged on a timer.
#[derive(Default)]
pub struct OneTimeStore {
    inner: Mutex<OneTime>,
}

#[derive(Default)]
struct OneTime {
    /// token → (deadline, body, owner)
    by_token: HashMap<String, (Instant, String, (String, String))>,
    /// (board, secret name) → its outstanding token
    by_owner: HashMap<(String, String), String>,
}

impl OneTime {
    fn remove(&mut self, token: &str) -> Option<(Instant, String)> {
        let (deadline, body, owner) = self.by_token.remove(token)?;
        if self.by_owner.get(&owner).is_some_and(|t| t == token) {
            self.by_owner.remove(&owner);
        }
        Some((deadline, body))
    }

    fn purge(&mut self, now: Instant) {
        let dead: Vec<String> = self
            .by_token
            .iter()
            .filter(|(_, (d, _, _))| *d <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for t in dead {
            self.remove(&t);
        }
    }
}

impl std::fmt::Debug for OneTimeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneTimeStore")
    }
}

impl OneTimeStore {
    /// Outstanding one-time URLs at most (a few MB of secrets at worst).
    pub const CAP: usize = 10_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, OneTime> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Keep `body` for `board`'s secret `name` and return the token that fetches it once.
    /// The board's previous URL for the same secret stops working.
    pub fn insert(&self, board: &str, name: &str, body: String, ttl: Duration) -> Option<String> {
        let mut raw = [0u8; 24];
        aws_lc_rs::rand::fill(&mut raw).ok()?;
        let token = hex::encode(raw);
        let now = Instant::now();
        let owner = (board.to_string(), name.to_string());
        let mut m = self.lock();
        if let Some(old) = m.by_owner.get(&owner).cloned() {
            m.remove(&old);
        }
        if m.by_token.len() >= Self::CAP {
            m.purge(now);
        }
        if m.by_token.len() >= Self::CAP {
            // Still full of live URLs: the one closest to expiry goes.
            if let Some(t) = m
                .by_token
                .iter()
                .min_by_key(|(_, (d, _, _))| *d)
                .map(|(t, _)| t.clone())
            {
                m.remove(&t);
            }
        }
        m.by_token
            .insert(token.clone(), (now.checked_add(ttl)?, body, owner.clone()));
        m.by_owner.insert(owner, token.clone());
        Some(token)
    }

    /// Take the secret: it is gone afterwards, whether or not it had expired.
    pub fn take(&self, token: &str) -> Option<String> {
        let (deadline, body) = self.lock().remove(token)?;
        (deadline > Instant::now()).then_some(body)
    }

    /// Drop expired URLs (run on a timer, so that memory returns after a burst).
    pub fn purge_expired(&self) {
        self.lock().purge(Instant::now());
    }

    /// Outstanding URLs.
    pub fn len(&self) -> usize {
        self.lock().by_token.len()
    }

    /// Whether none are outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod one_time_tests {
    use super::*;

    #[test]
    fn a_new_url_replaces_the_boards_old_one_and_the_store_is_bounded() {
        let s = OneTimeStore::default();
        let ttl = Duration::from_secs(60);
        let a = s.insert("b1", "x", "one".into(), ttl).unwrap();
        let b = s.insert("b1", "x", "two".into(), ttl).unwrap();
        let c = s.insert("b1", "y", "other".into(), ttl).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.take(&a), None);
        assert_eq!(s.take(&b).as_deref(), Some("two"));
        assert_eq!(s.take(&c).as_deref(), Some("other"));
        for i in 0..OneTimeStore::CAP + 50 {
            s.insert(&format!("b{i}"), "x", "s".into(), ttl).unwrap();
        }
        assert_eq!(s.len(), OneTimeStore::CAP);
        let short = OneTimeStore::default();
        short
            .insert("b", "x", "s".into(), Duration::from_nanos(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
        short.purge_expired();
        assert!(short.is_empty());
    }
}

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

/// What a handler returns besides the response: facts for the access log.
#[derive(Default)]
pub(crate) struct Outcome {
    pub board: Option<String>,
    pub fingerprint: Option<String>,
    pub serial: Option<String>,
    pub mac: Option<String>,
    pub bytes: u64,
    pub note: Option<String>,
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
    let resp = if let Some(rest) = path.strip_prefix("/files/") {
        // Over HTTPS (or a trusted proxy), files are for enrolled boards only: the mutual-TLS
        // route that keeps kernels and initrds from being swapped on the wire.
        if info.tls || trusted_proxy(info, shared) {
            match authorize(&req, None, info, shared, &mut out) {
                Ok(_) => files::serve(rest, &req, shared, &mut out).await,
                Err((status, why)) => script(status, &why, &mut out),
            }
        } else {
            files::serve(rest, &req, shared, &mut out).await
        }
    } else if let Some(token) = path.strip_prefix("/secret/") {
        if info.tls || trusted_proxy(info, shared) {
            one_time(token, &method, shared, &mut out)
        } else {
            // A one-time secret never crosses the network in clear text.
            script(
                StatusCode::FORBIDDEN,
                "one-time URLs are served over HTTPS only",
                &mut out,
            )
        }
    } else if path == "/boot.ipxe" || path == "/boot/ipxe" || path.starts_with("/ipxe/") {
        let mac = path
            .strip_prefix("/ipxe/")
            .map(|m| m.trim_end_matches(".ipxe").to_string())
            .or_else(|| query_param(&query, "mac"));
        let imgverify = query_param(&query, "imgverify").as_deref() == Some("1");
        boot(&req, mac, imgverify, info, shared, &mut out)
    } else if !info.tls && path.len() > 1 {
        // The plain port serves the files directory at its root too, so that
        // `{{ files_url }}/vmlinuz` names `files/vmlinuz` (and `/files/vmlinuz` keeps working).
        files::serve(&path[1..], &req, shared, &mut out).await
    } else {
        script(
            StatusCode::NOT_FOUND,
            "not found: boards fetch /boot.ipxe",
            &mut out,
        )
    };
    let logged_path = match path.strip_prefix("/secret/") {
        // A one-time token is a capability: log only its start.
        Some(t) => format!("/secret/{}…", t.chars().take(6).collect::<String>()),
        None if query.is_empty() => path,
        None => format!("{path}?{query}"),
    };
    log::write(&Entry {
        time: log::now(),
        peer: info.peer.map(|p| p.to_string()),
        board: out.board,
        fingerprint: out.fingerprint,
        serial: out.serial,
        mac: out.mac,
        method: method.to_string(),
        path: logged_path,
        status: resp.status().as_u16(),
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

/// A `#!ipxe` answer; for refusals it echoes why on the board's console.
fn script(status: StatusCode, why: &str, out: &mut Outcome) -> Response<Body> {
    let body = format!(
        "#!ipxe\necho ipxe-ca: {} {}: {}\necho ipxe-ca: ask the operator to check `ipxe-ca list` and the server log\nexit 1\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        why.replace(['\n', '\r'], " ")
    );
    out.note = Some(why.to_string());
    respond(status, body, out)
}

fn respond(status: StatusCode, body: String, out: &mut Outcome) -> Response<Body> {
    out.bytes = body.len() as u64;
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A plain-HTTP peer that terminates TLS for us (proxy mode, `--trusted-proxy`).
fn trusted_proxy(info: &ConnInfo, shared: &Shared) -> bool {
    info.peer
        .is_some_and(|p| shared.opts.is_trusted_proxy(p.ip()))
}

/// Equal in constant time (the proxy secret must not leak through timing).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The proxy proved itself: exactly one X-IPXE-CA-Proxy-Secret, equal to ours.
fn proxy_authentic(req: &Request<Incoming>, shared: &Shared) -> Result<(), String> {
    let Some(ours) = shared.opts.proxy_secret.as_deref() else {
        return Err("proxy mode without a proxy secret".into());
    };
    let mut sent = req.headers().get_all("x-ipxe-ca-proxy-secret").iter();
    match (sent.next(), sent.next()) {
        (Some(v), None) if same_secret(v.as_bytes(), ours.as_bytes()) => Ok(()),
        (None, _) => Err("no proxy secret: the request did not come through the nginx block `ipxe-ca nginx-config` writes".into()),
        _ => Err("wrong proxy secret: regenerate the nginx block with `ipxe-ca nginx-config` and reload nginx".into()),
    }
}

/// Who is asking: the SHA-1 fingerprint of a verified client certificate, from TLS or
/// from a trusted proxy's headers; otherwise why not.
fn identify(
    req: &Request<Incoming>,
    info: &ConnInfo,
    shared: &Shared,
    out: &mut Outcome,
) -> Result<Fingerprint, String> {
    if info.tls {
        let fp = info
            .fingerprint_sha1
            .clone()
            .ok_or("no client certificate was presented; the board's image must carry its certificate (ipxe-ca build)")?;
        return fp.parse().map_err(|_| "bad fingerprint".to_string());
    }
    if !shared.opts.behind_proxy {
        return Err("boot scripts are served only over HTTPS with a client certificate".into());
    }
    let peer_ip: Option<IpAddr> = info.peer.map(|p| p.ip());
    if !trusted_proxy(info, shared) {
        return Err(format!(
            "client-certificate headers ignored: peer {} is not a --trusted-proxy",
            peer_ip.map(|i| i.to_string()).unwrap_or_default()
        ));
    }
    proxy_authentic(req, shared)?;
    for name in [
        "x-ssl-client-verify",
        "x-ssl-client-fingerprint",
        "x-ssl-client-serial",
    ] {
        if req.headers().get_all(name).iter().count() > 1 {
            return Err(format!("{name} appears more than once: refused"));
        }
    }
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match h("x-ssl-client-verify").as_deref() {
        Some("SUCCESS") => {}
        Some(other) => {
            return Err(format!(
                "the proxy could not verify the client certificate ({other})"
            ))
        }
        None => return Err("no client certificate was presented to the proxy".into()),
    }
    out.serial = h("x-ssl-client-serial").map(|s| s.to_lowercase());
    let fp = h("x-ssl-client-fingerprint").ok_or("the proxy sent no X-SSL-Client-Fingerprint")?;
    fp.parse()
        .map_err(|_| "the proxy sent a malformed fingerprint".to_string())
}

/// The board behind this request, verified: a known certificate (TLS or a trusted proxy),
/// the serial nginx saw, not revoked, the MAC it names (if any) its own. Otherwise the
/// refusal to send.
fn authorize(
    req: &Request<Incoming>,
    mac: Option<&str>,
    info: &ConnInfo,
    shared: &Shared,
    out: &mut Outcome,
) -> Result<Board, (StatusCode, String)> {
    let fp = match identify(req, info, shared, out) {
        Ok(fp) => fp,
        Err(why) => return Err((StatusCode::FORBIDDEN, why)),
    };
    out.fingerprint = Some(fp.to_string());
    let board = match shared.lab.registry().by_fingerprint(&fp) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Err((
                StatusCode::FORBIDDEN,
                format!("certificate {fp} is not registered (ipxe-ca enroll/register)"),
            ))
        }
        Err(e) => {
            log::say(&format!("ipxe-ca: registry lookup failed: {e}"));
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "registry error; see the server log".to_string(),
            ));
        }
    };
    out.board = Some(board.name.to_string());
    if let Some(hdr_serial) = out.serial.clone() {
        if hdr_serial.trim_start_matches('0') != board.serial.trim_start_matches('0') {
            return Err((
                StatusCode::FORBIDDEN,
                "certificate serial does not match the registry".to_string(),
            ));
        }
    }
    out.serial = Some(board.serial.clone());
    if board.status == Status::Revoked || shared.revoked.contains(&board.serial) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("board {} is revoked", board.name),
        ));
    }
    if let (Some(registered), Some(asked)) = (board.mac, mac) {
        match asked.parse::<Mac>() {
            Ok(m) if m == registered => {}
            _ => {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!(
                    "MAC mismatch: board {} is registered with {registered}, request names {asked}",
                    board.name
                ),
                ))
            }
        }
    }
    Ok(board)
}

fn boot(
    req: &Request<Incoming>,
    mac: Option<String>,
    imgverify: bool,
    info: &ConnInfo,
    shared: &Arc<Shared>,
    out: &mut Outcome,
) -> Response<Body> {
    out.mac = mac.clone();
    let board = match authorize(req, mac.as_deref(), info, shared, out) {
        Ok(b) => b,
        Err((status, why)) => return script(status, &why, out),
    };
    match render_profile(shared, &board, imgverify) {
        Ok(body) => respond(StatusCode::OK, body, out),
        Err(e) => {
            log::say(&format!(
                "ipxe-ca: cannot render profile {:?} for board {}: {e}",
                board.profile.as_str(),
                board.name
            ));
            script(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!(
                    "profile {} cannot be rendered; see the server log",
                    board.profile
                ),
                out,
            )
        }
    }
}

fn context(shared: &Shared, board: &Board, imgverify: bool) -> crate::Result<Context> {
    let mut ctx = Context::new(board, &shared.config);
    ctx.secrets = shared.lab.registry().secrets(&board.name)?;
    ctx.imgverify = imgverify;
    Ok(ctx)
}

fn render_profile(shared: &Arc<Shared>, board: &Board, imgverify: bool) -> crate::Result<String> {
    let path = shared
        .lab
        .state()
        .profiles_dir()
        .join(format!("{}.ipxe", board.profile));
    let ctx = context(shared, board, imgverify)?;
    let s = shared.clone();
    let c = ctx.clone();
    let one_time =
        minijinja::Value::from_function(move |name: String| -> Result<String, minijinja::Error> {
            let err = |m: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m);
            validate_name(&name, "secret template name").map_err(|e| err(e.to_string()))?;
            let p = s.lab.state().secrets_dir().join(&name);
            let body = s
                .templates
                .render_file(&p, &c, &[])
                .map_err(|e| err(e.to_string()))?;
            let token = s
                .one_time
                .insert(&c.board.name, &name, body, s.opts.one_time_ttl)
                .ok_or_else(|| err("random number generator failed".into()))?;
            Ok(format!("{}/secret/{token}", s.config.server_url))
        });
    shared
        .templates
        .render_file(&path, &ctx, &[("one_time_url", one_time)])
}

fn one_time(token: &str, method: &Method, shared: &Shared, out: &mut Outcome) -> Response<Body> {
    if method != Method::GET {
        return script(StatusCode::METHOD_NOT_ALLOWED, "use GET", out);
    }
    match shared.one_time.take(token) {
        Some(body) => respond(StatusCode::OK, body, out),
        None => script(
            StatusCode::NOT_FOUND,
            "no such one-time URL (used already, or expired)",
            out,
        ),
    }
}
