//! `/files/PATH`: boot files over plain HTTP, streamed, with single-range support.
//! Paths are checked segment by segment and again after resolving symlinks, so nothing
//! outside the files root (and nothing of the state dir's keys) is ever served.

use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::routes::{full, Body, Outcome};
use super::Shared;

/// Decode `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file a request path names, or why it is refused.
fn resolve(raw: &str, shared: &Shared) -> Result<PathBuf, (StatusCode, &'static str)> {
    const BAD: (StatusCode, &str) = (StatusCode::BAD_REQUEST, "bad path");
    let decoded = percent_decode(raw).ok_or(BAD)?;
    if decoded.is_empty() || decoded.starts_with('/') || decoded.contains(['\0', '\\']) {
        return Err(BAD);
    }
    if decoded
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(BAD);
    }
    // Dot-names are ipxe-ca's bookkeeping (signature index, build staging), never boot files.
    if decoded.split('/').any(|seg| seg.starts_with('.')) {
        return Err((StatusCode::FORBIDDEN, "dot-names are never served"));
    }
    let joined = shared.files_root.join(&decoded);
    let real = std::fs::canonicalize(&joined).map_err(|_| (StatusCode::NOT_FOUND, "not found"))?;
    if !real.starts_with(&shared.files_root) {
        return Err((StatusCode::FORBIDDEN, "outside the files directory"));
    }
    if is_state_secret(&real, &shared.state_root, &shared.files_root) {
        return Err((StatusCode::FORBIDDEN, "key material is never served"));
    }
    Ok(real)
}

/// Inside the state dir, only the files dir may be served (keys, secrets and the registry never).
fn is_state_secret(real: &Path, state_root: &Path, files_root: &Path) -> bool {
    let in_state = real.starts_with(state_root);
    let files_in_state = files_root.starts_with(state_root) && files_root != state_root;
    (in_state && !files_in_state)
        || real
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".key") || n == "key.pem" || n == "secrets.toml")
}

/// A boot file (or its `.sig`) without a current signature is served, and the log says so.
fn note_signature(path: &Path, shared: &Shared, out: &mut Outcome) {
    use crate::codesign::{Index, SigStatus};
    let Ok(rel) = path.strip_prefix(&shared.files_root) else {
        return;
    };
    let rel = rel.to_string_lossy();
    let file = rel.strip_suffix(".sig").unwrap_or(&rel);
    let status = Index::load(&shared.files_root)
        .map(|i| i.status(&shared.files_root, file))
        .unwrap_or(SigStatus::Missing);
    out.note = match status {
        SigStatus::Current => None,
        SigStatus::Stale => Some(format!(
            "{file} changed since it was signed: imgverify refuses it (ipxe-ca sign-files)"
        )),
        SigStatus::Missing => Some(format!("{file} has no signature (ipxe-ca sign-files)")),
    };
}

/// Parse a single `bytes=` range against a length: `Ok(None)` means the whole file.
fn parse_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // Multiple ranges: answer with the whole file, which RFC 9110 allows.
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn refuse(status: StatusCode, why: &str, out: &mut Outcome) -> Response<Body> {
    out.note = Some(why.to_string());
    let body = format!("{why}\n");
    out.bytes = body.len() as u64;
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

pub(crate) async fn serve(
    raw: &str,
    req: &Request<Incoming>,
    shared: &Shared,
    out: &mut Outcome,
) -> Response<Body> {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD", out);
    }
    let path = match resolve(raw, shared) {
        Ok(p) => p,
        Err((status, why)) => return refuse(status, why, out),
    };
    note_signature(&path, shared, out);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return refuse(StatusCode::NOT_FOUND, "not found", out),
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return refuse(StatusCode::NOT_FOUND, "not a file", out),
    };
    let range = match req.headers().get(RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(h) => match parse_range(h, len) {
            Ok(r) => r,
            Err(()) => {
                let mut r = refuse(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range not satisfiable",
                    out,
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(CONTENT_RANGE, v);
                }
                return r;
            }
        },
    };
    let (start, count, status) = match range {
        Some((s, e)) => (s, e - s + 1, StatusCode::PARTIAL_CONTENT),
        None => (0, len, StatusCode::OK),
    };
    let body = if method == Method::HEAD {
        full(bytes::Bytes::new())
    } else {
        if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "seek failed", out);
        }
        out.bytes = count;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 * 1024);
        StreamBody::new(stream.map_ok(Frame::data)).boxed()
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{len}", start, start + count - 1))
        {
            h.insert(CONTENT_RANGE, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=5-1", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2e%2E/b").as_deref(), Some("a../b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
    }
}
