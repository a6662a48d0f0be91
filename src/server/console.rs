//! The boards' own consoles at the server: iPXE sends what it prints over TLS (its `syslogs`
//! console, RFC 5425's port by default), with the board's own certificate, so each line is
//! attributed to a board the way a boot request is, and kept in that board's history.
//!
//! A connection is accepted only from a registered, unrevoked board (checked again with each
//! read); a line is cut at [`LINE_MAX`]; a board has a budget of lines ([`BURST`], refilled at
//! [`PER_SECOND`]), past which its connection is closed with one line saying so. What a line
//! says cannot name another board: the certificate decides whose history it lands in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::boot;
use super::guard::{Take, BURST, PER_SECOND};
use super::log;
use super::shared::Shared;
use super::verdict::Outcome;
use crate::store::history::{ConsoleLine, Record};
use crate::types::{BoardName, Fingerprint};

/// Longest line kept, in bytes (iPXE sends at most 127 characters after its syslog prefix).
pub(crate) const LINE_MAX: usize = 512;
/// A console connection without a line for this long is closed: a board that handed over to
/// its kernel never closes its own.
const IDLE: Duration = Duration::from_secs(600);

/// A line as iPXE's syslog console sends it (`<PRI>[HOST ]ipxe: TEXT`): its severity and text.
pub(crate) fn parse(raw: &[u8]) -> (Option<u8>, String) {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let mut severity = None;
    let mut rest = raw;
    if let Some(r) = raw.strip_prefix(b"<") {
        if let Some(end) = r.iter().take(4).position(|&b| b == b'>') {
            if let Some(pri) = std::str::from_utf8(&r[..end])
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
            {
                severity = Some((pri & 7) as u8);
                rest = &r[end + 1..];
            }
        }
    }
    // iPXE's tag, after the host name when it has one (the `hostname` setting).
    let after_host = rest
        .iter()
        .position(|&b| b == b' ')
        .map_or(rest, |sp| &rest[sp + 1..]);
    if let Some(text) = rest
        .strip_prefix(b"ipxe: ")
        .or_else(|| after_host.strip_prefix(b"ipxe: "))
    {
        rest = text;
    }
    (severity, String::from_utf8_lossy(rest).into_owned())
}

/// One board's console connection, after the TLS handshake.
pub(crate) async fn serve<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    fingerprint: Option<Fingerprint>,
    shared: Arc<Shared>,
) {
    let Some(fp) = fingerprint else {
        shared.metrics.console_connection("no-certificate");
        log::tls_failure(peer, "console without a client certificate: closed");
        return;
    };
    let name = match admitted(&fp, peer, &shared) {
        Some(n) => n,
        None => return,
    };
    shared.metrics.console_connection("accepted");
    let mut line: Vec<u8> = Vec::with_capacity(LINE_MAX);
    let mut long = false;
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        // A board revoked while connected says no more.
        let mut out = Outcome::default();
        if boot::select(
            &fp,
            None,
            None,
            &shared,
            &shared.changes.snapshot(),
            &mut out,
        )
        .is_err()
        {
            shared.metrics.console_connection("revoked-while-connected");
            break;
        }
        for &b in &chunk[..n] {
            if b != b'\n' {
                if line.len() < LINE_MAX {
                    line.push(b);
                } else {
                    long = true;
                }
                continue;
            }
            if !keep(&shared, &name, &line, long) {
                return;
            }
            line.clear();
            long = false;
        }
    }
    if !line.is_empty() {
        keep(&shared, &name, &line, long);
    }
}

/// The board behind a console connection, if it may write; a refusal is logged, counted and
/// put in the board's history.
fn admitted(fp: &Fingerprint, peer: SocketAddr, shared: &Shared) -> Option<BoardName> {
    let mut out = Outcome::default();
    match boot::select(fp, None, None, shared, &shared.changes.snapshot(), &mut out) {
        Ok(board) => Some(board.name.clone()),
        Err(refusal) => {
            shared.metrics.console_connection(refusal.verdict.name());
            let why = format!("console refused: {}", refusal.why);
            log::tls_failure(peer, &why);
            if let Some(board) = out.board.as_deref().and_then(|b| b.parse().ok()) {
                shared.journal.record(
                    board,
                    Record {
                        time: log::now(),
                        peer: Some(peer.to_string()),
                        path: "console".into(),
                        status: refusal.status(),
                        outcome: refusal.verdict.name().to_string(),
                        reason: Some(why),
                        tls: None,
                    },
                );
            }
            None
        }
    }
}

/// Keep one line in the board's history; false once the board's budget is spent (the
/// connection is then closed, with one line saying why).
fn keep(shared: &Shared, board: &BoardName, raw: &[u8], long: bool) -> bool {
    if let Take::Cut { say } = shared.consoles.take(board) {
        shared.metrics.console_cut();
        if !say {
            return false;
        }
        shared.journal.console(
            board.clone(),
            ConsoleLine {
                time: log::now(),
                text: format!(
                    "ipxe-ca: console cut: more than {BURST} lines at once ({PER_SECOND} a second \
                     after that); the rest of this connection is dropped"
                ),
                severity: None,
            },
        );
        return false;
    }
    let (severity, mut text) = parse(raw);
    if long {
        text.push('…');
    }
    let kept = shared.journal.console(
        board.clone(),
        ConsoleLine {
            time: log::now(),
            text,
            severity,
        },
    );
    shared.metrics.console_line(kept);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipxe_syslog_lines_lose_their_prefix_and_keep_their_severity() {
        assert_eq!(
            parse(b"<6>ipxe: Could not boot: Not found (https://ipxe.org/2d0c613b)"),
            (
                Some(6),
                "Could not boot: Not found (https://ipxe.org/2d0c613b)".into()
            )
        );
        assert_eq!(parse(b"<3>node17 ipxe: hello\r"), (Some(3), "hello".into()));
        assert_eq!(
            parse(b"<6>node17.lab ipxe: ipxe: twice"),
            (Some(6), "ipxe: twice".into())
        );
        // A facility beside the severity (user, 1 × 8): the severity alone.
        assert_eq!(parse(b"<14>ipxe: user"), (Some(6), "user".into()));
        assert_eq!(parse(b"<187>ipxe: local7"), (Some(3), "local7".into()));
        // Not iPXE's form: kept whole.
        assert_eq!(parse(b"free text"), (None, "free text".into()));
        assert_eq!(
            parse(b"<6>some words then ipxe: x"),
            (Some(6), "some words then ipxe: x".into())
        );
    }
}
