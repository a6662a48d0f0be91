//! Each board's recent boots and refusals, kept beside it (`boards/NAME/history.jsonl`), and
//! what its own console said (`boards/NAME/console.jsonl`, sent by iPXE over TLS), so that
//! "why didn't board 17 boot?" has an answer without grepping logs or watching its screen.
//!
//! One JSON line per request or console line, appended with a single write; a line torn by a
//! crash is skipped when read. Each file is bounded: past twice its bound it is rewritten
//! atomically with the newest lines. The server appends from one writer thread, in batches, so
//! requests never wait on disk, and keeps each board's files open between appends. The two
//! files are bounded apart: a board that floods its console cannot push the server's view of
//! its boots out.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::state::{self, StateDir, MODE_SECRET};
use crate::types::BoardName;

/// Records kept per board (at least; at most twice as many between compactions).
pub const KEEP: usize = 200;
/// Console lines kept per board (a boot prints a few dozen).
pub const KEEP_CONSOLE: usize = 500;

/// Which of a board's two journals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Log {
    /// The server's view: one record per request.
    Requests,
    /// The board's console.
    Console,
}

impl Log {
    fn path(self, state: &StateDir, board: &BoardName) -> std::path::PathBuf {
        match self {
            Log::Requests => state.board_history(board),
            Log::Console => state.board_console(board),
        }
    }

    fn keep(self) -> usize {
        match self {
            Log::Requests => KEEP,
            Log::Console => KEEP_CONSOLE,
        }
    }
}

/// How a TLS connection was made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFacts {
    /// `TLSv1_2` or `TLSv1_3`.
    pub version: Option<String>,
    /// The cipher suite.
    pub suite: Option<String>,
    /// The key-exchange group.
    pub group: Option<String>,
    /// Whether the session was resumed.
    pub resumed: bool,
}

/// One request a board made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// RFC 3339.
    pub time: String,
    /// The peer's address (the proxy's, behind nginx).
    pub peer: Option<String>,
    /// What was asked for (one-time tokens shortened).
    pub path: String,
    /// HTTP status.
    pub status: u16,
    /// `served`, `revoked`, `mac-mismatch`, … (see `serve`'s metrics).
    pub outcome: String,
    /// Why it was refused, in the words the board's console showed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How it connected (HTTPS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFacts>,
}

/// One line the board's console printed, as its iPXE sent it over TLS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsoleLine {
    /// RFC 3339, when the server received it.
    pub time: String,
    /// The line, without iPXE's syslog prefix; control characters are kept as sent (the
    /// printers neutralise them).
    pub text: String,
    /// Syslog severity (6: informational, iPXE's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
}

/// One entry of a board's history: what the server saw or what the board printed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum Entry {
    /// A request the server answered.
    Server(Record),
    /// A line of the board's console.
    Board(ConsoleLine),
}

impl Entry {
    /// When it happened (RFC 3339).
    pub fn time(&self) -> &str {
        match self {
            Entry::Server(r) => &r.time,
            Entry::Board(l) => &l.time,
        }
    }
}

/// The newest `n` records of a board, oldest first (none: never seen).
pub fn read(state: &StateDir, board: &BoardName, n: usize) -> Result<Vec<Record>> {
    newest(&state.board_history(board), n)
}

/// The newest `n` lines the board's console sent, oldest first.
pub fn console(state: &StateDir, board: &BoardName, n: usize) -> Result<Vec<ConsoleLine>> {
    newest(&state.board_console(board), n)
}

/// The newest `n` entries of both journals, interleaved by time, oldest first: the board's
/// console lines between the requests they came with.
pub fn interleaved(state: &StateDir, board: &BoardName, n: usize) -> Result<Vec<Entry>> {
    let mut all: Vec<(i128, Entry)> = read(state, board, n)?
        .into_iter()
        .map(Entry::Server)
        .chain(console(state, board, n)?.into_iter().map(Entry::Board))
        .map(|e| (nanos(e.time()), e))
        .collect();
    // Stable: at one instant the request comes before what the board printed about it.
    all.sort_by_key(|(t, _)| *t);
    let from = all.len().saturating_sub(n);
    Ok(all.drain(from..).map(|(_, e)| e).collect())
}

/// An entry with the iPXE error codes it names, in words.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Shown {
    /// The entry itself.
    #[serde(flatten)]
    pub entry: Entry,
    /// iPXE error codes in the line (or the refusal's reason), explained.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<crate::ipxe_error::Explained>,
}

impl From<Entry> for Shown {
    fn from(entry: Entry) -> Shown {
        let errors = match &entry {
            Entry::Board(l) => crate::ipxe_error::explain_line(&l.text),
            Entry::Server(r) => r
                .reason
                .as_deref()
                .map(crate::ipxe_error::explain_line)
                .unwrap_or_default(),
        };
        Shown { entry, errors }
    }
}

/// An RFC 3339 time as nanoseconds (the text does not sort: fractions vary in length).
fn nanos(time: &str) -> i128 {
    time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .map_or(0, |t| t.unix_timestamp_nanos())
}

/// The newest `n` whole lines of a journal (a torn one skipped).
fn newest<T: serde::de::DeserializeOwned>(path: &std::path::Path, n: usize) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let mut all: Vec<T> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let from = all.len().saturating_sub(n);
    Ok(all.drain(from..).collect())
}

/// The board's newest record.
pub fn last(state: &StateDir, board: &BoardName) -> Option<Record> {
    read(state, board, 1).ok()?.pop()
}

/// Appends records for the server, off the request path.
pub struct Journal {
    tx: std::sync::mpsc::SyncSender<Msg>,
}

// Boxing the record would cost an allocation per request to shrink the rare Flush.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Record(BoardName, Record),
    Console(BoardName, ConsoleLine),
    /// Answered once everything queued before it is on disk.
    Flush(std::sync::mpsc::SyncSender<()>),
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

/// Records waiting for the writer; a full queue drops records rather than stall boards.
const QUEUE: usize = 4096;

/// The writer rests this long after each batch. Meanwhile a request's record is a queue push
/// that wakes no thread (a wake per request cost more than the append), and a board that
/// boots and fetches files gets one append for all its lines.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

impl Journal {
    /// Start the writer thread for `state`. `on_error` hears of a failed write (once per
    /// board until one succeeds).
    pub fn start(state: StateDir, on_error: fn(&str)) -> Journal {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("board-history".into())
            .spawn(move || {
                let mut open = Appenders::default();
                let mut root = state::identity(state.root());
                let mut failing: std::collections::HashSet<BoardName> = Default::default();
                while let Ok(first) = rx.recv() {
                    // Per board and journal, in arrival order, as JSON lines.
                    let mut boards: Vec<(Key, Vec<Vec<u8>>)> = Vec::new();
                    let mut slot: HashMap<Key, usize> = HashMap::new();
                    let mut flushes = Vec::new();
                    for msg in std::iter::once(first).chain(rx.try_iter()) {
                        let (key, line) = match msg {
                            Msg::Record(board, rec) => ((board, Log::Requests), json_line(&rec)),
                            Msg::Console(board, l) => ((board, Log::Console), json_line(&l)),
                            Msg::Flush(done) => {
                                flushes.push(done);
                                continue;
                            }
                        };
                        let Some(line) = line else { continue };
                        match slot.get(&key) {
                            Some(&i) => boards[i].1.push(line),
                            None => {
                                slot.insert(key.clone(), boards.len());
                                boards.push((key, vec![line]));
                            }
                        }
                    }
                    // The state folder put back from a copy (or a symlink to it pointed
                    // elsewhere): the open files are the old folder's.
                    let now = state::identity(state.root());
                    if now != root {
                        open.open.clear();
                        root = now;
                    }
                    for ((board, log), lines) in boards {
                        match append(&state, &board, log, &lines, &mut open) {
                            Ok(()) => {
                                failing.remove(&board);
                            }
                            Err(e) => {
                                if failing.insert(board) {
                                    on_error(&format!("ipxe-ca: cannot record board history: {e}"));
                                }
                            }
                        }
                    }
                    let flushed = !flushes.is_empty();
                    for done in flushes {
                        let _ = done.send(());
                    }
                    if !flushed {
                        std::thread::sleep(PAUSE);
                    }
                }
            });
        if spawned.is_err() {
            on_error("ipxe-ca: cannot start the board-history writer; history is not kept");
        }
        Journal { tx }
    }

    /// Queue a record for `board` (dropped if the writer is far behind).
    pub fn record(&self, board: BoardName, rec: Record) {
        let _ = self.tx.try_send(Msg::Record(board, rec));
    }

    /// Queue a line of `board`'s console; false when it was dropped (the writer far behind).
    pub fn console(&self, board: BoardName, line: ConsoleLine) -> bool {
        self.tx.try_send(Msg::Console(board, line)).is_ok()
    }

    /// Wait until every record queued so far is written (at shutdown), `limit` at most.
    pub fn flush(&self, limit: std::time::Duration) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }
}

/// One of a board's journals.
type Key = (BoardName, Log);

/// A value as one JSON line (without its newline).
fn json_line<T: Serialize>(v: &T) -> Option<Vec<u8>> {
    serde_json::to_vec(v).ok()
}

/// The writer's open journal files, with the number of lines each holds: a board's next
/// append is an `fstat` and a write, not a path lookup, an open and a close.
pub(crate) struct Appenders {
    open: HashMap<(BoardName, Log), Appender>,
    limit: usize,
}

impl Default for Appenders {
    fn default() -> Self {
        Appenders {
            open: HashMap::new(),
            limit: open_max(),
        }
    }
}

struct Appender {
    file: std::fs::File,
    lines: usize,
}

/// Files kept open at most; past that they are all closed and opened again as boards append
/// (a farm has fewer boards). Never more than a quarter of the process's open-file limit: the
/// boards' connections need the rest.
const OPEN_MAX: usize = 4096;

fn open_max() -> usize {
    open_max_for(rustix::process::getrlimit(rustix::process::Resource::Nofile).current)
}

/// For an open-file limit (None: unlimited).
fn open_max_for(limit: Option<u64>) -> usize {
    let quarter = limit.map_or(usize::MAX, |l| usize::try_from(l / 4).unwrap_or(usize::MAX));
    OPEN_MAX.min(quarter).max(1)
}

impl Appenders {
    /// The open file of `board`'s history, unless it is no longer the one at its path: the
    /// board's folder was removed, or another writer compacted the file (replaced by a rename:
    /// the old file has no link left). The path is not looked at: a file renamed away by hand
    /// gets the lines until the next compaction (the writer closes them all when the state
    /// folder itself is replaced).
    fn current(&mut self, key: &(BoardName, Log)) -> Option<&mut Appender> {
        use std::os::unix::fs::MetadataExt;
        let gone = match self.open.get(key) {
            None => return None,
            Some(a) => a.file.metadata().map_or(true, |m| m.nlink() == 0),
        };
        if gone {
            self.open.remove(key);
            return None;
        }
        self.open.get_mut(key)
    }

    fn keep(&mut self, key: (BoardName, Log), file: std::fs::File, lines: usize) {
        if self.open.len() >= self.limit {
            self.open.clear();
        }
        self.open.insert(key, Appender { file, lines });
    }
}

/// Append JSON `lines` (each without its newline) to one of the board's journals in one write.
fn append(
    state: &StateDir,
    board: &BoardName,
    log: Log,
    lines: &[Vec<u8>],
    open: &mut Appenders,
) -> Result<()> {
    let path = log.path(state, board);
    let keep = log.keep();
    let key = (board.clone(), log);
    let open_file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(MODE_SECRET)
            .open(&path)
    };
    let joined = |lines: &[Vec<u8>]| -> Vec<u8> {
        let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    };
    if let Some(a) = open.current(&key) {
        if a.lines + lines.len() <= 2 * keep {
            // One write of whole lines: a crash tears at most the last one.
            a.file
                .write_all(&joined(lines))
                .map_err(|e| Error::io("cannot append to", &path, e))?;
            a.lines += lines.len();
            return Ok(());
        }
    }
    // A board removed (or never written) has no folder: nothing to keep.
    if !state.board_file(board).exists() {
        open.open.remove(&key);
        return Ok(());
    }
    let mut text = Vec::new();
    // The file as read to count its lines, kept for a compaction right after.
    let mut read = None;
    let count = match open.open.remove(&key) {
        Some(a) => a.lines,
        None => {
            let old = std::fs::read(&path).unwrap_or_default();
            // Half a line left by a crash: end it, so that it does not swallow this one.
            if old.last().is_some_and(|b| *b != b'\n') {
                text.push(b'\n');
            }
            let n = old.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
            read = Some(old);
            n
        }
    };
    if count + lines.len() > 2 * keep {
        // Rewrite with the newest `keep`, atomically: a crash leaves the old or the new file.
        let old = match read {
            Some(old) => old,
            None => std::fs::read(&path).unwrap_or_default(),
        };
        let mut all: Vec<&[u8]> = old
            .split(|b| *b == b'\n')
            .filter(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok())
            .collect();
        all.extend(lines.iter().map(Vec::as_slice));
        let newest: Vec<Vec<u8>> = all[all.len().saturating_sub(keep)..]
            .iter()
            .map(|l| l.to_vec())
            .collect();
        state::write_atomic(&path, &joined(&newest), MODE_SECRET)?;
        let f = open_file().map_err(|e| Error::io("cannot open", &path, e))?;
        open.keep(key, f, newest.len());
        return Ok(());
    }
    text.extend(joined(lines));
    // The board's folder is made only when it is missing, not checked per append.
    let opened = match open_file() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            state::create_dir_private(&state.board_dir(board))?;
            open_file()
        }
        other => other,
    };
    let mut f = opened.map_err(|e| Error::io("cannot open", &path, e))?;
    // One write of whole lines: a crash tears at most the last one.
    f.write_all(&text)
        .map_err(|e| Error::io("cannot append to", &path, e))?;
    open.keep(key, f, count + lines.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dir with a board file for b1 (and no folder for it yet).
    fn one_board() -> (tempfile::TempDir, StateDir, BoardName) {
        let t = tempfile::tempdir().unwrap();
        let state = StateDir::new(t.path());
        let b: BoardName = "b1".parse().unwrap();
        state::write_atomic(&state.board_file(&b), b"x", 0o644).unwrap();
        (t, state, b)
    }

    /// Append requests' records, as the writer does.
    fn put(state: &StateDir, b: &BoardName, recs: &[Record], open: &mut Appenders) -> Result<()> {
        let lines: Vec<Vec<u8>> = recs.iter().filter_map(json_line).collect();
        append(state, b, Log::Requests, &lines, open)
    }

    fn rec(i: usize) -> Record {
        Record {
            time: format!("t{i}"),
            peer: None,
            path: "/boot.ipxe".into(),
            status: 200,
            outcome: "served".into(),
            reason: None,
            tls: None,
        }
    }

    #[test]
    fn the_journal_is_bounded_keeps_the_newest_and_skips_a_torn_line() {
        let (_t, state, b) = one_board();
        let mut lines = Appenders::default();
        for i in 0..2 * KEEP + 5 {
            put(&state, &b, &[rec(i)], &mut lines).unwrap();
        }
        let all = read(&state, &b, usize::MAX).unwrap();
        assert!(all.len() >= KEEP && all.len() <= 2 * KEEP, "{}", all.len());
        assert_eq!(all.last().unwrap().time, format!("t{}", 2 * KEEP + 4));
        let first: usize = all[0].time[1..].parse().unwrap();
        assert_eq!(first + all.len(), 2 * KEEP + 5, "contiguous, newest kept");
        // A crash mid-append leaves half a line: it is skipped, the rest still reads.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(state.board_history(&b))
            .unwrap();
        f.write_all(b"{\"time\":\"torn").unwrap();
        assert_eq!(last(&state, &b).unwrap().time, format!("t{}", 2 * KEEP + 4));
        // A new writer (a restarted server) ends the torn line before appending.
        put(&state, &b, &[rec(9999)], &mut Appenders::default()).unwrap();
        assert_eq!(last(&state, &b).unwrap().time, "t9999");
        let before = read(&state, &b, usize::MAX).unwrap();
        assert_eq!(before[before.len() - 2].time, format!("t{}", 2 * KEEP + 4));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.board_history(&b))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_journal_is_compacted_exactly_past_twice_keep_also_after_a_restart() {
        let (_t, state, b) = one_board();
        let len = || read(&state, &b, usize::MAX).unwrap().len();
        let mut lines = Appenders::default();
        for i in 0..2 * KEEP {
            put(&state, &b, &[rec(i)], &mut lines).unwrap();
        }
        assert_eq!(len(), 2 * KEEP, "compacted too early");
        put(&state, &b, &[rec(2 * KEEP)], &mut lines).unwrap();
        assert_eq!(len(), KEEP, "not compacted past 2 × KEEP");
        // A restarted writer counts the lines in the file: one short of the bound, one more
        // fits, the next compacts.
        let more = KEEP - 1;
        for i in 0..more {
            put(&state, &b, &[rec(1000 + i)], &mut lines).unwrap();
        }
        assert_eq!(len(), 2 * KEEP - 1);
        let mut restarted = Appenders::default();
        put(&state, &b, &[rec(5000)], &mut restarted).unwrap();
        assert_eq!(len(), 2 * KEEP, "a restart miscounted the file");
        put(&state, &b, &[rec(5001)], &mut restarted).unwrap();
        assert_eq!(len(), KEEP);
        assert_eq!(last(&state, &b).unwrap().time, "t5001");
    }

    #[test]
    fn an_open_history_file_is_kept_and_dropped_when_its_path_holds_another() {
        use std::os::unix::io::AsRawFd;
        let (_t, state, b) = one_board();
        let times = || -> Vec<String> {
            read(&state, &b, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|r| r.time)
                .collect()
        };
        let mut open = Appenders::default();
        put(&state, &b, &[rec(1)], &mut open).unwrap();
        let fd = open.open[&(b.clone(), Log::Requests)].file.as_raw_fd();
        put(&state, &b, &[rec(2)], &mut open).unwrap();
        assert_eq!(
            open.open[&(b.clone(), Log::Requests)].file.as_raw_fd(),
            fd,
            "opened again"
        );
        assert_eq!(times(), ["t1", "t2"]);
        // The folder removed (and the board still registered): a new file, not the deleted one.
        std::fs::remove_dir_all(state.board_dir(&b)).unwrap();
        put(&state, &b, &[rec(3)], &mut open).unwrap();
        assert_eq!(times(), ["t3"]);
        // Another writer replaced the file: the next line goes to the new one.
        state::write_atomic(&state.board_history(&b), b"", MODE_SECRET).unwrap();
        put(&state, &b, &[rec(4)], &mut open).unwrap();
        assert_eq!(times(), ["t4"]);
        // The board gone altogether: nothing is written, no folder made.
        std::fs::remove_dir_all(state.board_dir(&b)).unwrap();
        std::fs::remove_file(state.board_file(&b)).unwrap();
        put(&state, &b, &[rec(5)], &mut open).unwrap();
        assert!(!state.board_dir(&b).exists());
        assert!(open.open.is_empty());
        // At the limit, the open files are closed and the newest kept.
        let mut few = Appenders {
            open: HashMap::new(),
            limit: 2,
        };
        let names: Vec<BoardName> = ["c1", "c2", "c3"].map(|n| n.parse().unwrap()).to_vec();
        for (i, n) in names.iter().enumerate() {
            state::write_atomic(&state.board_file(n), b"x", 0o644).unwrap();
            put(&state, n, &[rec(6)], &mut few).unwrap();
            assert_eq!(few.open.len(), [1, 2, 1][i], "after {n}");
        }
        assert_eq!(
            few.open.keys().collect::<Vec<_>>(),
            [&(names[2].clone(), Log::Requests)]
        );
    }

    #[test]
    fn the_open_file_takes_lines_up_to_the_bound_without_the_path_being_looked_at() {
        let (_t, state, b) = one_board();
        let mut open = Appenders::default();
        for i in 0..2 * KEEP - 1 {
            put(&state, &b, &[rec(i)], &mut open).unwrap();
        }
        // Renamed away (as nothing but a compaction does): still one link, still written.
        let moved = state.board_dir(&b).join("moved.jsonl");
        std::fs::rename(state.board_history(&b), &moved).unwrap();
        put(&state, &b, &[rec(9999)], &mut open).unwrap();
        assert!(
            !state.board_history(&b).exists(),
            "the path was opened again"
        );
        let text = std::fs::read_to_string(&moved).unwrap();
        assert_eq!(text.lines().count(), 2 * KEEP);
        assert!(text.lines().last().unwrap().contains("t9999"), "{text}");
        // Past the bound the path is read again and compacted into a new file.
        put(&state, &b, &[rec(10_000)], &mut open).unwrap();
        assert_eq!(last(&state, &b).unwrap().time, "t10000");
    }

    #[test]
    fn open_history_files_leave_three_quarters_of_the_fd_limit_to_connections() {
        for (limit, want) in [
            (None, OPEN_MAX),
            (Some(1_048_576), OPEN_MAX),
            (Some(4 * OPEN_MAX as u64), OPEN_MAX),
            (Some(4 * OPEN_MAX as u64 - 4), OPEN_MAX - 1),
            (Some(1024), 256),
            (Some(3), 1),
        ] {
            assert_eq!(open_max_for(limit), want, "{limit:?}");
        }
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        assert_eq!(open_max(), open_max_for(limit));
        assert_eq!(Appenders::default().limit, open_max());
    }

    #[test]
    fn a_state_folder_put_back_from_a_copy_gets_the_next_lines() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("state");
        let state = StateDir::new(&root);
        let b: BoardName = "b1".parse().unwrap();
        state::write_atomic(&state.board_file(&b), b"x", 0o644).unwrap();
        let j = Journal::start(state.clone(), |e| panic!("{e}"));
        let wait = || j.flush(std::time::Duration::from_secs(10));
        j.record(b.clone(), rec(1));
        wait();
        // A restore: the live folder moved aside, a copy moved in.
        let copy = t.path().join("copy");
        let cp = std::process::Command::new("cp")
            .arg("-a")
            .args([&root, &copy])
            .status()
            .unwrap();
        assert!(cp.success());
        std::fs::rename(&root, t.path().join("old")).unwrap();
        std::fs::rename(&copy, &root).unwrap();
        j.record(b.clone(), rec(2));
        wait();
        let times: Vec<String> = read(&state, &b, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.time)
            .collect();
        assert_eq!(times, ["t1", "t2"]);
    }

    #[test]
    fn the_writer_batches_keeps_order_and_flush_waits_for_it() {
        let (_t, state, b) = one_board();
        let j = Journal::start(state.clone(), |e| panic!("{e}"));
        for i in 0..50 {
            j.record(b.clone(), rec(i));
        }
        j.flush(std::time::Duration::from_secs(10));
        let times: Vec<String> = read(&state, &b, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| r.time)
            .collect();
        assert_eq!(times, (0..50).map(|i| format!("t{i}")).collect::<Vec<_>>());
        // One batch larger than the bound: the newest KEEP, in order.
        let recs: Vec<Record> = (100..100 + 2 * KEEP + 1).map(rec).collect();
        put(&state, &b, &recs, &mut Appenders::default()).unwrap();
        let all = read(&state, &b, usize::MAX).unwrap();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].time, format!("t{}", 100 + KEEP + 1));
        assert_eq!(all[KEEP - 1].time, format!("t{}", 100 + 2 * KEEP));
    }
}
