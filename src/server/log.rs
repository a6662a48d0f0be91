//! The access log: one JSON line per request on stdout. Secret values never reach it.

use std::net::SocketAddr;

use serde::Serialize;

/// One request as logged.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Entry {
    pub time: String,
    pub peer: Option<String>,
    /// `served`, `revoked`, `mac-mismatch`, … (the metrics' outcome label).
    pub outcome: &'static str,
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

/// Lines wait here for the writer thread; a full queue drops lines rather than stall requests.
const QUEUE: usize = 8192;
/// How long a request waits for its line to reach stdout, so that the log is in order with
/// the responses even on a loaded machine; a stdout stuck for that long turns the wait off
/// (requests no longer wait at all) until it catches up.
const WAIT: std::time::Duration = std::time::Duration::from_secs(1);

struct Sink {
    tx: std::sync::mpsc::SyncSender<String>,
    /// (lines queued, lines written or dropped by the writer)
    progress: std::sync::Mutex<(u64, u64)>,
    done: std::sync::Condvar,
    stuck: std::sync::atomic::AtomicBool,
    dropped: std::sync::atomic::AtomicU64,
}

/// The log goes through one thread: a slow or blocked stdout (a full pipe) never holds a
/// request for more than [`WAIT`] (once), and a broken one (`serve | tee` with tee gone) never
/// panics; lines are dropped and counted instead.
fn sink() -> &'static Sink {
    static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();
    SINK.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let mut broken = false;
                while let Ok(line) = rx.recv() {
                    if !broken && writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        // Keep draining so senders never block; say it once.
                        broken = true;
                        let _ = writeln_stderr(
                            "ipxe-ca: the access log (stdout) is broken; lines are dropped",
                        );
                    }
                    let s = sink();
                    let mut p = s.progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.1 += 1;
                    if p.1 >= p.0 {
                        s.stuck.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    s.done.notify_all();
                }
            });
        if spawned.is_err() {
            let _ =
                writeln_stderr("ipxe-ca: cannot start the access-log thread; lines are dropped");
        }
        Sink {
            tx,
            progress: std::sync::Mutex::new((0, 0)),
            done: std::sync::Condvar::new(),
            stuck: std::sync::atomic::AtomicBool::new(spawned.is_err()),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    })
}

fn writeln_stderr(msg: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{msg}")
}

/// A server message on stderr that never panics (a closed stderr is ignored).
pub(crate) fn say(msg: &str) {
    let _ = writeln_stderr(msg);
}

fn emit(line: String) {
    use std::sync::atomic::Ordering;
    let s = sink();
    let mut p = s.progress.lock().unwrap_or_else(|e| e.into_inner());
    if s.tx.try_send(line).is_err() {
        drop(p);
        let n = s.dropped.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() {
            say(&format!(
                "ipxe-ca: access log behind; {} line(s) dropped so far",
                n + 1
            ));
        }
        return;
    }
    p.0 += 1;
    let mine = p.0;
    if s.stuck.load(Ordering::Relaxed) {
        return;
    }
    let (p, timeout) = s
        .done
        .wait_timeout_while(p, WAIT, |p| p.1 < mine)
        .unwrap_or_else(|e| e.into_inner());
    drop(p);
    if timeout.timed_out() {
        s.stuck.store(true, Ordering::Relaxed);
    }
}

pub(crate) fn write(e: &Entry) {
    if let Ok(line) = serde_json::to_string(e) {
        emit(line);
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
        emit(line);
    }
}
