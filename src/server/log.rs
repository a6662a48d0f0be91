//! The access log: one JSON line per request on stdout. Secret values never reach it.

use std::net::SocketAddr;

use serde::Serialize;

/// One request as logged.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Entry {
    pub time: String,
    pub peer: Option<String>,
    pub board: Option<String>,
    pub fingerprint: Option<String>,
    pub serial: Option<String>,
    pub mac: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub duration_ms: f64,
    pub user_agent: Option<String>,
    /// How the connection was made (HTTPS only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::TlsSession>,
    /// Why a request was refused, in words an operator can act on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn write(e: &Entry) {
    if let Ok(line) = serde_json::to_string(e) {
        println!("{line}");
    }
}

/// A handshake that failed before any request (unknown CA, revoked certificate, timeouts).
pub(crate) fn tls_failure(peer: SocketAddr, why: &str) {
    #[derive(Serialize)]
    struct Tls<'a> {
        time: String,
        peer: String,
        event: &'static str,
        note: &'a str,
    }
    if let Ok(line) = serde_json::to_string(&Tls {
        time: now(),
        peer: peer.to_string(),
        event: "tls_handshake_failed",
        note: why,
    }) {
        println!("{line}");
    }
}
