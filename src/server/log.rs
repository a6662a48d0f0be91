//! The access log: one JSON line per request on stdout. Secret values never reach it.

use std::net::SocketAddr;

use serde::Serialize;

/// What operators grep for when a board will not boot: how it connected.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub(crate) struct TlsSession {
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: Option<&'static str>,
    /// e.g. `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`.
    pub suite: Option<&'static str>,
    /// Key-exchange group, e.g. `X25519`.
    pub group: Option<&'static str>,
    /// Whether the session was resumed (no signature, no key exchange).
    pub resumed: bool,
}

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
    pub tls: Option<TlsSession>,
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

/// How a line reaches stdout, by what stdout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// A regular file or /dev/null: written by the request's own thread (one `write`), which
    /// costs no hand-off to another thread and no wake-up.
    Direct,
    /// A socket (systemd's journal): sent by the request's thread without waiting; when the
    /// socket is full, the line goes to the writer thread instead.
    Send,
    /// A pipe or a terminal, which may block: through the writer thread.
    Thread,
}

fn route_of_stdout() -> Route {
    route_of(std::io::stdout())
}

fn route_of(fd: impl rustix::fd::AsFd) -> Route {
    use rustix::fs::FileType;
    let Ok(st) = rustix::fs::fstat(fd) else {
        return Route::Thread;
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Route::Direct,
        FileType::CharacterDevice
            if rustix::fs::major(st.st_rdev) == 1 && rustix::fs::minor(st.st_rdev) == 3 =>
        {
            Route::Direct
        }
        FileType::Socket => Route::Send,
        _ => Route::Thread,
    }
}

struct Sink {
    route: Route,
    tx: std::sync::mpsc::SyncSender<String>,
    /// (lines queued for the writer thread, lines it wrote or dropped)
    progress: std::sync::Mutex<(u64, u64)>,
    done: std::sync::Condvar,
    stuck: std::sync::atomic::AtomicBool,
    broken: std::sync::atomic::AtomicBool,
    dropped: std::sync::atomic::AtomicU64,
}

/// Stdout is gone (`serve | tee` with tee gone): say so once; lines are dropped from now on.
fn mark_broken(s: &Sink) {
    if !s.broken.swap(true, std::sync::atomic::Ordering::Relaxed) {
        let _ = writeln_stderr("ipxe-ca: the access log (stdout) is broken; lines are dropped");
    }
}

/// A stdout that blocks (a full pipe) never holds a request for more than [`WAIT`] (once), and
/// a broken one never panics; lines are dropped and counted instead.
fn sink() -> &'static Sink {
    static SINK: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();
    SINK.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                use std::io::Write;
                let mut out = std::io::stdout();
                while let Ok(text) = rx.recv() {
                    let s = sink();
                    if !s.broken.load(std::sync::atomic::Ordering::Relaxed)
                        && out
                            .write_all(text.as_bytes())
                            .and_then(|_| out.flush())
                            .is_err()
                    {
                        mark_broken(s);
                    }
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
            route: route_of_stdout(),
            tx,
            progress: std::sync::Mutex::new((0, 0)),
            done: std::sync::Condvar::new(),
            stuck: std::sync::atomic::AtomicBool::new(spawned.is_err()),
            broken: std::sync::atomic::AtomicBool::new(false),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    })
}

fn writeln_stderr(msg: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{msg}")
}

/// Server messages wait here for their writer thread.
const MESSAGES: usize = 1024;

struct Messages {
    /// A regular file or /dev/null never blocks: written by the caller, in order.
    direct: bool,
    tx: std::sync::mpsc::SyncSender<String>,
    /// (messages queued, messages written or lost to a broken stderr)
    progress: std::sync::Mutex<(u64, u64)>,
    done: std::sync::Condvar,
    dropped: std::sync::atomic::AtomicU64,
}

fn messages() -> &'static Messages {
    static M: std::sync::OnceLock<Messages> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(MESSAGES);
        let _ = std::thread::Builder::new()
            .name("server-messages".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    let m = messages();
                    let lost = m.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
                    if lost > 0 {
                        let _ = writeln_stderr(&format!(
                            "ipxe-ca: stderr was behind; {lost} message(s) dropped"
                        ));
                    }
                    let _ = writeln_stderr(&msg);
                    let mut p = m.progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.1 += 1;
                    m.done.notify_all();
                }
            });
        Messages {
            direct: route_of(std::io::stderr()) == Route::Direct,
            tx,
            progress: std::sync::Mutex::new((0, 0)),
            done: std::sync::Condvar::new(),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    })
}

/// A server message on stderr. It never blocks the caller (an event-loop thread): to a file it
/// is written at once, to anything else by a writer thread, and when stderr stalls (a pipe
/// nobody reads) messages beyond the queue are dropped and counted, never waited for.
pub(crate) fn say(msg: &str) {
    let m = messages();
    if m.direct {
        let _ = writeln_stderr(msg);
        return;
    }
    let mut p = m.progress.lock().unwrap_or_else(|e| e.into_inner());
    if m.tx.try_send(msg.to_string()).is_ok() {
        p.0 += 1;
    } else {
        m.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Wait up to `limit` for the messages said so far to reach stderr (before the process
/// exits).
pub(crate) fn flush_messages(limit: std::time::Duration) {
    let m = messages();
    let p = m.progress.lock().unwrap_or_else(|e| e.into_inner());
    let want = p.0;
    let _ = m.done.wait_timeout_while(p, limit, |p| p.1 < want);
}

/// Write what can be written of `text` to stdout now, from this thread: the bytes written.
/// None: stdout is broken.
fn write_now(route: Route, text: &[u8]) -> Option<usize> {
    use rustix::io::Errno;
    let fd = std::io::stdout();
    let mut done = 0;
    while done < text.len() {
        let r = match route {
            Route::Direct => rustix::io::write(&fd, &text[done..]),
            Route::Send => rustix::net::send(
                &fd,
                &text[done..],
                rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
            ),
            Route::Thread => return Some(0),
        };
        match r {
            Ok(0) => return Some(done),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Some(done),
            Err(_) => return None,
        }
    }
    Some(done)
}

fn emit(mut line: String) {
    use std::sync::atomic::Ordering;
    let s = sink();
    if s.broken.load(Ordering::Relaxed) {
        return;
    }
    line.push('\n');
    let mut p = s.progress.lock().unwrap_or_else(|e| e.into_inner());
    // Written here unless the writer thread still has lines to write (they come first); on
    // the thread's route `write_now` writes nothing.
    if p.1 >= p.0 {
        match write_now(s.route, line.as_bytes()) {
            None => {
                drop(p);
                mark_broken(s);
                return;
            }
            Some(n) if n == line.len() => return,
            Some(n) => {
                line.drain(..n);
            }
        }
    }
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
