//! Whether the state directory changed since a moment, told by inotify instead of a `stat` per
//! file per request. A boot script looks at five files (the index entry, the board file, its
//! secrets, the CRL and the profile); with their folders watched, one `read` of the inotify
//! descriptor per request says whether any of them can have changed.
//!
//! The kernel queues an event while the writer's rename or write runs, before it returns. A
//! request that drains the queue itself before it trusts a cache therefore sees every change
//! made before it arrived: a revoke still takes effect on the next request. A background
//! reader would not do: between the queueing and its wake-up, a revoked board could still be
//! served.
//!
//! A watch follows its folder, not its path. So the folders between a watched one and the
//! state root are watched too (a parent moved aside drops every watch below it), and each
//! request compares the root's own identity with one `stat` (a restore that moves the whole
//! state folder, or a symlink to it pointed elsewhere, raises no event in any watched folder).
//!
//! Where inotify cannot be trusted (a file system shared over the network, where another
//! machine's writes raise no event here, or no inotify at all), every check stays a `stat`.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};

/// Changes under watched folders, counted as a generation number.
pub struct Changes {
    inner: Option<Mutex<Inner>>,
}

struct Inner {
    fd: OwnedFd,
    generation: u64,
    /// The state folder, by the path every read goes through, and what it named when the
    /// watches were set (device, inode).
    root: PathBuf,
    root_id: Option<(u64, u64)>,
    by_dir: HashMap<PathBuf, i32>,
    by_wd: HashMap<i32, PathBuf>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("inotify", &self.inner.is_some())
            .finish()
    }
}

/// What one request knows of changes: taken once, before any cache is consulted.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    changes: &'a Changes,
    generation: Option<u64>,
}

/// A cached value's claim to be current: the generation it was read at, when its folders were
/// watched by then. `Token::default()` claims nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Token(Option<u64>);

/// Events that can change what a file in a watched folder says, or the folder itself.
fn mask() -> WatchFlags {
    WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
}

/// File systems whose every change, whoever makes it, raises an inotify event here.
fn local(dir: &Path) -> bool {
    // Not overlayfs: a write to a layer's own folder (from the host, say) raises no event on
    // the merged inode, while a `stat` through the overlay sees it.
    const LOCAL: [i64; 8] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x8584_58f6, // ramfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
        0xCA45_1A4E, // bcachefs
    ];
    // `f_type` is a C long or int, depending on the architecture.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::statfs(dir).is_ok_and(|s| LOCAL.contains(&(s.f_type as i64)))
}

impl Changes {
    /// Watching on, where the kernel has inotify, for files under `root` (the state folder,
    /// by the path every read goes through).
    pub fn new(root: &Path) -> Changes {
        let inner = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC)
            .ok()
            .map(|fd| {
                Mutex::new(Inner {
                    fd,
                    generation: 0,
                    root: root.to_path_buf(),
                    root_id: crate::store::state::identity(root),
                    by_dir: HashMap::new(),
                    by_wd: HashMap::new(),
                })
            });
        Changes { inner }
    }

    /// Watching off: every check is a `stat`.
    pub fn off() -> Changes {
        Changes { inner: None }
    }

    fn inner(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Drain the events queued so far; the generation after them.
    pub fn snapshot(&self) -> Snapshot<'_> {
        let generation = self.inner().map(|mut inner| inner.drain());
        Snapshot {
            changes: self,
            generation,
        }
    }
}

impl Inner {
    fn drain(&mut self) -> u64 {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut changed = false;
        let mut gone = Vec::new();
        {
            let mut reader = inotify::Reader::new(&self.fd, &mut buf);
            loop {
                let ev = match reader.next() {
                    Ok(ev) => ev,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => {
                        // Cannot tell what was missed: nothing cached is current.
                        changed = true;
                        break;
                    }
                };
                let flags = ev.events();
                if flags
                    .intersects(ReadFlags::IGNORED | ReadFlags::DELETE_SELF | ReadFlags::MOVE_SELF)
                {
                    // The folder is gone or elsewhere: its path needs a new watch.
                    gone.push(ev.wd());
                    changed = true;
                } else if !ev
                    .file_name()
                    .is_some_and(|n| crate::store::state::StateDir::is_history_file(n.to_bytes()))
                {
                    // Anything but the history writer's appends (beside a board's secrets,
                    // and nothing a request reads); a lost event (QUEUE_OVERFLOW) has no
                    // name, so it ends every claim too.
                    changed = true;
                }
            }
        }
        for wd in gone {
            if let Some(dir) = self.by_wd.get(&wd).cloned() {
                // The folders below it are elsewhere too, or gone.
                self.unwatch_under(&dir);
            }
        }
        let root_id = crate::store::state::identity(&self.root);
        if root_id.is_none() || root_id != self.root_id {
            // Another folder (or none) under the root's path: every watch follows the old one.
            let root = self.root.clone();
            self.unwatch_under(&root);
            self.root_id = root_id;
            changed = true;
        }
        if changed {
            self.generation += 1;
        }
        self.generation
    }

    /// Drop the watches of `dir` and of every folder below it.
    fn unwatch_under(&mut self, dir: &Path) {
        let below: Vec<PathBuf> = self
            .by_dir
            .keys()
            .filter(|d| d.starts_with(dir))
            .cloned()
            .collect();
        for d in below {
            if let Some(wd) = self.by_dir.remove(&d) {
                self.by_wd.remove(&wd);
                // A moved folder keeps its watch: drop it (gone already for a deleted one).
                let _ = inotify::remove_watch(&self.fd, wd);
            }
        }
    }

    fn watch(&mut self, dir: &Path) -> bool {
        if self.by_dir.contains_key(dir) {
            return true;
        }
        // The folders between it and the root first: a change of any of them after this
        // raises an event.
        if let Some(parent) = dir.parent() {
            if parent != self.root && parent.starts_with(&self.root) && !self.watch(parent) {
                return false;
            }
        }
        if !local(dir) {
            return false;
        }
        match inotify::add_watch(&self.fd, dir, mask()) {
            Ok(wd) => {
                // The same folder by another path (or a path reused): one entry per watch.
                if let Some(old) = self.by_wd.insert(wd, dir.to_path_buf()) {
                    self.by_dir.remove(&old);
                }
                self.by_dir.insert(dir.to_path_buf(), wd);
                true
            }
            Err(_) => false,
        }
    }
}

impl Snapshot<'_> {
    /// Whether something cached with `token` is still what its files say, without looking at
    /// them.
    pub fn current(&self, token: Token) -> bool {
        matches!((self.generation, token.0), (Some(g), Some(t)) if g == t)
    }

    /// The token for a value about to be read from files in `dirs`: call it before the
    /// `stat` or read, so that a change after it raises an event. No claim when a folder
    /// cannot be watched.
    pub fn token(&self, dirs: &[&Path]) -> Token {
        let (Some(g), Some(mut inner)) = (self.generation, self.changes.inner()) else {
            return Token(None);
        };
        if dirs.iter().all(|d| inner.watch(d)) {
            Token(Some(g))
        } else {
            Token(None)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A folder on the disk the tests build on (ext4 here), as the server's state would be.
    pub(crate) fn dir() -> tempfile::TempDir {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/watch-tests");
        std::fs::create_dir_all(&base).unwrap();
        tempfile::tempdir_in(base).unwrap()
    }

    /// Cache a value read from `d` and say whether it is still current after `change`.
    fn survives(d: &Path, change: impl FnOnce()) -> bool {
        let changes = Changes::new(d);
        let token = changes.snapshot().token(&[d]);
        assert!(changes.snapshot().current(token), "nothing changed yet");
        change();
        changes.snapshot().current(token)
    }

    #[test]
    fn every_kind_of_write_ends_the_claim_and_history_appends_do_not() {
        let t = dir();
        let d = t.path().to_path_buf();
        std::fs::write(d.join("b1.toml"), "x").unwrap();
        std::fs::write(d.join("history.jsonl"), "{}\n").unwrap();
        // What ipxe-ca's own writes do: a temp file renamed over the old one.
        assert!(!survives(&d, || crate::store::state::write_atomic(
            &d.join("b1.toml"),
            b"revoked",
            0o644
        )
        .unwrap()));
        // An edit in place, a new file, a removal, a chmod.
        assert!(!survives(&d, || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(d.join("b1.toml"))
                .unwrap();
            f.write_all(b"y").unwrap();
        }));
        assert!(!survives(&d, || std::fs::write(
            d.join("secrets.toml"),
            "s=1"
        )
        .unwrap()));
        assert!(!survives(&d, || std::fs::remove_file(
            d.join("secrets.toml")
        )
        .unwrap()));
        // An empty file made, a file moved in from elsewhere and one moved out: one event each.
        assert!(!survives(&d, || drop(
            std::fs::File::create(d.join("empty")).unwrap()
        )));
        let elsewhere = dir();
        let (outside, inside) = (elsewhere.path().join("b2.toml"), d.join("b2.toml"));
        std::fs::write(&outside, "x").unwrap();
        assert!(!survives(&d, || std::fs::rename(&outside, &inside).unwrap()));
        assert!(!survives(&d, || std::fs::rename(&inside, &outside).unwrap()));
        assert!(!survives(&d, || {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d.join("b1.toml"), std::fs::Permissions::from_mode(0o600))
                .unwrap()
        }));
        // The history writer's appends and compactions leave the claim standing.
        assert!(survives(&d, || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(d.join("history.jsonl"))
                .unwrap();
            f.write_all(b"{}\n").unwrap();
            crate::store::state::write_atomic(&d.join("history.jsonl"), b"{}\n", 0o600).unwrap();
        }));
    }

    #[test]
    fn a_folder_replaced_is_watched_again_by_its_path() {
        let t = dir();
        let d = t.path().join("boards");
        std::fs::create_dir(&d).unwrap();
        let changes = Changes::new(t.path());
        let token = changes.snapshot().token(&[&d]);
        // Moved away and a new folder in its place: the old watch follows the old folder.
        std::fs::rename(&d, t.path().join("old")).unwrap();
        std::fs::create_dir(&d).unwrap();
        assert!(!changes.snapshot().current(token));
        let token = changes.snapshot().token(&[&d]);
        assert!(changes.snapshot().current(token));
        std::fs::write(d.join("b2.toml"), "x").unwrap();
        assert!(
            !changes.snapshot().current(token),
            "a write in the new folder must be heard"
        );
        // Deleted and made again: the same.
        std::fs::remove_file(d.join("b2.toml")).unwrap();
        let token = changes.snapshot().token(&[&d]);
        std::fs::remove_dir(&d).unwrap();
        std::fs::create_dir(&d).unwrap();
        assert!(!changes.snapshot().current(token));
        let token = changes.snapshot().token(&[&d]);
        std::fs::write(d.join("b3.toml"), "x").unwrap();
        assert!(
            !changes.snapshot().current(token),
            "a write in the folder made again must be heard"
        );
    }

    /// Whether a claim on `dir` taken now is ended by a write of a file in it.
    fn heard(changes: &Changes, dir: &Path) -> bool {
        let token = changes.snapshot().token(&[dir]);
        assert!(changes.snapshot().current(token));
        std::fs::write(dir.join("b.toml"), "x").unwrap();
        !changes.snapshot().current(token)
    }

    #[test]
    fn a_parent_moved_aside_ends_the_claims_below_it_and_their_new_folders_are_watched() {
        let t = dir();
        let root = t.path().join("state");
        let board = root.join("boards/b1");
        std::fs::create_dir_all(&board).unwrap();
        let changes = Changes::new(&root);
        let token = changes.snapshot().token(&[&board]);
        // `boards` (not watched for itself) put back from a copy: b1 is another folder now.
        std::fs::rename(root.join("boards"), root.join("boards.old")).unwrap();
        std::fs::create_dir_all(&board).unwrap();
        assert!(!changes.snapshot().current(token));
        assert!(heard(&changes, &board), "the new b1 must be watched");
    }

    #[test]
    fn another_folder_at_the_root_s_path_ends_every_claim() {
        let t = dir();
        let (one, two) = (t.path().join("one"), t.path().join("two"));
        for d in [&one, &two] {
            std::fs::create_dir_all(d.join("ca")).unwrap();
        }
        let root = t.path().join("state");
        std::os::unix::fs::symlink(&one, &root).unwrap();
        let ca = root.join("ca");
        let changes = Changes::new(&root);
        assert!(heard(&changes, &ca));
        // The symlink pointed elsewhere, as deployment tools swap one.
        let token = changes.snapshot().token(&[&ca]);
        let link = t.path().join("state.new");
        std::os::unix::fs::symlink(&two, &link).unwrap();
        std::fs::rename(&link, &root).unwrap();
        assert!(!changes.snapshot().current(token));
        assert!(heard(&changes, &ca), "two/ca must be watched");
        // The root folder itself moved aside and another moved in.
        let token = changes.snapshot().token(&[&ca]);
        std::fs::remove_file(&root).unwrap();
        std::fs::rename(&two, &root).unwrap();
        assert!(
            changes.snapshot().current(token),
            "the same folder, by another way"
        );
        std::fs::rename(&root, t.path().join("two.old")).unwrap();
        std::fs::rename(&one, &root).unwrap();
        assert!(!changes.snapshot().current(token));
        assert!(heard(&changes, &ca));
    }

    #[test]
    fn a_full_event_queue_ends_every_claim() {
        // `enroll` of a thousand boards while `serve` is idle queues more events than the
        // kernel keeps: what was dropped may have been a revoke. Here only history events,
        // which alone would leave the claim standing, overflow the queue.
        let t = dir();
        let d = t.path().to_path_buf();
        let history = d.join("history.jsonl");
        std::fs::write(&history, "{}\n").unwrap();
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let changes = Changes::new(t.path());
        let token = changes.snapshot().token(&[&d]);
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&history)
            .unwrap();
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        // A write and a chmod in turn: the kernel merges only an event equal to the last one.
        for i in 0..limit / 2 + 8 {
            (&f).write_all(b"{}\n").unwrap();
            let mode = if i % 2 == 0 { 0o600 } else { 0o640 };
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        assert!(
            !changes.snapshot().current(token),
            "the overflow was not heard"
        );
        // Drained: a new claim holds again.
        let token = changes.snapshot().token(&[&d]);
        assert!(changes.snapshot().current(token));
    }

    #[test]
    fn no_claim_without_a_watch() {
        let t = dir();
        let missing = t.path().join("no-such-folder");
        let changes = Changes::new(t.path());
        let token = changes.snapshot().token(&[t.path(), &missing]);
        assert_eq!(token, Token::default());
        assert!(!changes.snapshot().current(token));
        // A file system not known to report every change (procfs here, as NFS would be).
        let proc = changes.snapshot().token(&[Path::new("/proc/self")]);
        assert_eq!(proc, Token::default());
        let off = Changes::off();
        let token = off.snapshot().token(&[t.path()]);
        assert!(!off.snapshot().current(token));
    }
}
