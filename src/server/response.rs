//! What every route answers with: a body type, the facts the access log needs, and the
//! `#!ipxe` refusal a board prints on its console.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// How a request for a script or a file ended: the access log, the board's history and the
/// metrics count these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Script, file or one-time secret sent.
    Served,
    /// No client certificate (TLS or the proxy's headers).
    NoCertificate,
    /// A certificate of our CA that no board is registered with.
    Unknown,
    /// The board is revoked.
    Revoked,
    /// The request named a MAC other than the board's.
    MacMismatch,
    /// The board's profile failed to render.
    TemplateError,
    /// Proxy headers from an untrusted peer, a wrong proxy secret, a serial mismatch.
    Refused,
    /// No such path, file or one-time URL.
    NotFound,
    /// The registry or a file could not be read.
    ServerError,
}

impl Verdict {
    /// Every verdict, for metrics that list zeros too.
    pub const ALL: [Verdict; 9] = [
        Verdict::Served,
        Verdict::NoCertificate,
        Verdict::Unknown,
        Verdict::Revoked,
        Verdict::MacMismatch,
        Verdict::TemplateError,
        Verdict::Refused,
        Verdict::NotFound,
        Verdict::ServerError,
    ];

    /// The kebab-case name (logs, history, metric labels).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Served => "served",
            Verdict::NoCertificate => "no-certificate",
            Verdict::Unknown => "unknown",
            Verdict::Revoked => "revoked",
            Verdict::MacMismatch => "mac-mismatch",
            Verdict::TemplateError => "template-error",
            Verdict::Refused => "refused",
            Verdict::NotFound => "not-found",
            Verdict::ServerError => "server-error",
        }
    }
}

/// Why a request is refused: the status, the words the board's console shows, the verdict.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub why: String,
    pub verdict: Verdict,
}

impl Refusal {
    pub fn forbidden(verdict: Verdict, why: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::FORBIDDEN,
            why: why.into(),
            verdict,
        }
    }

    /// The `#!ipxe` answer that says why.
    pub fn respond(self, out: &mut Outcome) -> Response<Body> {
        out.verdict = Some(self.verdict);
        script(self.status, &self.why, out)
    }
}

/// What a handler returns besides the response: facts for the access log.
#[derive(Default)]
pub(crate) struct Outcome {
    pub verdict: Option<Verdict>,
    pub board: Option<String>,
    pub fingerprint: Option<String>,
    pub serial: Option<String>,
    pub mac: Option<String>,
    pub bytes: u64,
    pub note: Option<String>,
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

pub(crate) fn respond(status: StatusCode, body: String, out: &mut Outcome) -> Response<Body> {
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
