//! How a request ended, in the server's own terms (no HTTP): the verdict the logs, the metrics
//! and the board's history count, why a board was refused, and the facts the access log keeps.
//! Beneath every part of `serve` that reports.

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

/// Why a board is refused: the words its console shows, and the verdict the logs count.
#[derive(Debug)]
pub(crate) struct Denial {
    pub why: String,
    pub verdict: Verdict,
}

impl Denial {
    pub fn forbidden(verdict: Verdict, why: impl Into<String>) -> Denial {
        Denial {
            why: why.into(),
            verdict,
        }
    }

    /// The HTTP status it is answered with: the server's own failures are 500s, the rest 403.
    pub fn status(&self) -> u16 {
        match self.verdict {
            Verdict::ServerError | Verdict::TemplateError => 500,
            _ => 403,
        }
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
