//! Each board's recent boots and refusals, kept beside it (`boards/NAME/history.jsonl`) so that
//! "why didn't board 17 boot?" has an answer without grepping logs.
//!
//! One JSON line per request, appended with a single write; a line torn by a crash is skipped
//! when read. The file is bounded: past [`KEEP`] × 2 lines it is rewritten atomically with the
//! newest [`KEEP`]. The server appends from one writer thread, in batches, so requests never
//! wait on disk, and keeps each board's file open between appends.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{self, StateDir, MODE_SECRET};
use crate::types::BoardName;

/// Records kept per board (at least; at most twice as many between compactions).
pub const KEEP: usize = 200;

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

/// The newest `n` records of a board, oldest first (none: never seen).
pub fn read(state: &StateDir, board: &BoardName, n: usize) -> Result<Vec<Record>> {
    let path = state.board_history(board);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let all: Vec<Record> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(all[all.len().saturating_sub(n)..].to_vec())
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
                    // Per board, in arrival order.
                    let mut boards: Vec<(BoardName, Vec<Record>)> = Vec::new();
                    let mut slot: HashMap<BoardName, usize> = HashMap::new();
                    let mut flushes = Vec::new();
                    for msg in std::iter::once(first).chain(rx.try_iter()) {
                        match msg {
                            Msg::Record(board, rec) => match slot.get(&board) {
                                Some(&i) => boards[i].1.push(rec),
                                None => {
                                    slot.insert(board.clone(), boards.len());
                                    boards.push((board, vec![rec]));
                                }
                            },
                            Msg::Flush(done) => flushes.push(done),
                        }
                    }
                    // The state folder put back from a copy (or a symlink to it pointed
                    // elsewhere): the open files are the old folder's.
                    let now = state::identity(state.root());
                    if now != root {
                        open.open.clear();
                        root = now;
                    }
                    for (board, recs) in boards {
                        match append(&state, &board, &recs, &mut open) {
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

    /// Wait until every record queued so far is written (at shutdown), `limit` at most.
    pub fn flush(&self, limit: std::time::Duration) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }
}

/// The writer's open history files, with the number of lines each holds: a board's next
/// append is an `fstat` and a write, not a path lookup, an open and a close.
pub(crate) struct Appenders {
    open: HashMap<BoardName, Appender>,
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
    fn current(&mut self, board: &BoardName) -> Option<&mut Appender> {
        use std::os::unix::fs::MetadataExt;
        let gone = match self.open.get(board) {
            None => return None,
            Some(a) => a.file.metadata().map_or(true, |m| m.nlink() == 0),
        };
        if gone {
            self.open.remove(board);
            return None;
        }
        self.open.get_mut(board)
    }

    fn keep(&mut self, board: &BoardName, file: std::fs::File, lines: usize) {
        if self.open.len() >= self.limit {
            self.open.clear();
        }
        self.open.insert(board.clone(), Appender { file, lines });
    }
}

/// Append `recs` to the board's history in one write.
fn append(
    state: &StateDir,
    board: &BoardName,
    recs: &[Record],
    open: &mut Appenders,
) -> Result<()> {
    let path = state.board_history(board);
    let open_file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(MODE_SECRET)
            .open(&path)
    };
    let lines = |recs: &[Record]| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for r in recs {
            out.extend(serde_json::to_vec(r).map_err(|e| Error::invalid(e.to_string()))?);
            out.push(b'\n');
        }
        Ok(out)
    };
    if let Some(a) = open.current(board) {
        if a.lines + recs.len() <= 2 * KEEP {
            let text = lines(recs)?;
            // One write of whole lines: a crash tears at most the last one.
            a.file
                .write_all(&text)
                .map_err(|e| Error::io("cannot append to", &path, e))?;
            a.lines += recs.len();
            return Ok(());
        }
    }
    // A board removed (or never written) has no folder: nothing to keep.
    if !state.board_file(board).exists() {
        open.open.remove(board);
        return Ok(());
    }
    let mut text = Vec::new();
    let count = match open.open.remove(board) {
        Some(a) => a.lines,
        None => {
            let old = std::fs::read(&path).unwrap_or_default();
            // Half a line left by a crash: end it, so that it does not swallow this one.
            if old.last().is_some_and(|b| *b != b'\n') {
                text.push(b'\n');
            }
            old.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count()
        }
    };
    if count + recs.len() > 2 * KEEP {
        // Rewrite with the newest KEEP, atomically: a crash leaves the old or the new file.
        let mut all = read(state, board, KEEP)?;
        all.extend_from_slice(recs);
        let newest = &all[all.len().saturating_sub(KEEP)..];
        state::write_atomic(&path, &lines(newest)?, MODE_SECRET)?;
        let f = open_file().map_err(|e| Error::io("cannot open", &path, e))?;
        open.keep(board, f, newest.len());
        return Ok(());
    }
    text.extend(lines(recs)?);
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
    open.keep(board, f, count + recs.len());
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
            append(&state, &b, &[rec(i)], &mut lines).unwrap();
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
        append(&state, &b, &[rec(9999)], &mut Appenders::default()).unwrap();
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
            append(&state, &b, &[rec(i)], &mut lines).unwrap();
        }
        assert_eq!(len(), 2 * KEEP, "compacted too early");
        append(&state, &b, &[rec(2 * KEEP)], &mut lines).unwrap();
        assert_eq!(len(), KEEP, "not compacted past 2 × KEEP");
        // A restarted writer counts the lines in the file: one short of the bound, one more
        // fits, the next compacts.
        let more = KEEP - 1;
        for i in 0..more {
            append(&state, &b, &[rec(1000 + i)], &mut lines).unwrap();
        }
        assert_eq!(len(), 2 * KEEP - 1);
        let mut restarted = Appenders::default();
        append(&state, &b, &[rec(5000)], &mut restarted).unwrap();
        assert_eq!(len(), 2 * KEEP, "a restart miscounted the file");
        append(&state, &b, &[rec(5001)], &mut restarted).unwrap();
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
        append(&state, &b, &[rec(1)], &mut open).unwrap();
        let fd = open.open[&b].file.as_raw_fd();
        append(&state, &b, &[rec(2)], &mut open).unwrap();
        assert_eq!(open.open[&b].file.as_raw_fd(), fd, "opened again");
        assert_eq!(times(), ["t1", "t2"]);
        // The folder removed (and the board still registered): a new file, not the deleted one.
        std::fs::remove_dir_all(state.board_dir(&b)).unwrap();
        append(&state, &b, &[rec(3)], &mut open).unwrap();
        assert_eq!(times(), ["t3"]);
        // Another writer replaced the file: the next line goes to the new one.
        state::write_atomic(&state.board_history(&b), b"", MODE_SECRET).unwrap();
        append(&state, &b, &[rec(4)], &mut open).unwrap();
        assert_eq!(times(), ["t4"]);
        // The board gone altogether: nothing is written, no folder made.
        std::fs::remove_dir_all(state.board_dir(&b)).unwrap();
        std::fs::remove_file(state.board_file(&b)).unwrap();
        append(&state, &b, &[rec(5)], &mut open).unwrap();
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
            append(&state, n, &[rec(6)], &mut few).unwrap();
            assert_eq!(few.open.len(), [1, 2, 1][i], "after {n}");
        }
        assert_eq!(few.open.keys().collect::<Vec<_>>(), [&names[2]]);
    }

    #[test]
    fn the_open_file_takes_lines_up_to_the_bound_without_the_path_being_looked_at() {
        let (_t, state, b) = one_board();
        let mut open = Appenders::default();
        for i in 0..2 * KEEP - 1 {
            append(&state, &b, &[rec(i)], &mut open).unwrap();
        }
        // Renamed away (as nothing but a compaction does): still one link, still written.
        let moved = state.board_dir(&b).join("moved.jsonl");
        std::fs::rename(state.board_history(&b), &moved).unwrap();
        append(&state, &b, &[rec(9999)], &mut open).unwrap();
        assert!(
            !state.board_history(&b).exists(),
            "the path was opened again"
        );
        let text = std::fs::read_to_string(&moved).unwrap();
        assert_eq!(text.lines().count(), 2 * KEEP);
        assert!(text.lines().last().unwrap().contains("t9999"), "{text}");
        // Past the bound the path is read again and compacted into a new file.
        append(&state, &b, &[rec(10_000)], &mut open).unwrap();
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
        append(&state, &b, &recs, &mut Appenders::default()).unwrap();
        let all = read(&state, &b, usize::MAX).unwrap();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].time, format!("t{}", 100 + KEEP + 1));
        assert_eq!(all[KEEP - 1].time, format!("t{}", 100 + 2 * KEEP));
    }
}
