//! What every route answers with over HTTP: a body type, and the `#!ipxe` answers a board
//! prints on its console (a refusal says why).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::verdict::{Denial, Outcome};

pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The `#!ipxe` answer that says why a board is refused.
pub(crate) fn refuse(d: Denial, out: &mut Outcome) -> Response<Body> {
    out.verdict = Some(d.verdict);
    let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN);
    script(status, &d.why, out)
}

/// A `#!ipxe` answer; for refusals it echoes why on the board's console.
pub(crate) fn script(status: StatusCode, why: &str, out: &mut Outcome) -> Response<Body> {
    let body = format!(
        "#!ipxe\necho ipxe-ca: {} {}: {}\necho ipxe-ca: ask the operator to check `ipxe-ca list` and the server log\nexit 1\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        why.replace(['\n', '\r'], " ")
    );
    out.note = Some(why.to_string());
    respond(status, body, out)
}

pub(crate) fn respond(
    status: StatusCode,
    body: impl Into<Bytes>,
    out: &mut Outcome,
) -> Response<Body> {
    let body: Bytes = body.into();
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
