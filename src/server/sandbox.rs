//! The kernel keeps `serve` out of what it does not need (Landlock), so that a path the checks
//! got wrong, a link an operator did not mean, or a bug in the request path cannot open a key.
//!
//! Two layers. The whole process, from before its first request, reads only the state
//! folders it serves and reloads (`StateDir::served_dirs`: certificates, the CRL, the
//! registry, profiles, secrets, settings) and writes only board history; `keys/` (the CA's,
//! the code signer's and the boards' keys) and build output are out of its reach. Boot files
//! are opened by threads confined to their files folder alone. A files folder can change while
//! `serve` runs (a link pointed at a new folder of kernels), and a confined thread can only
//! narrow its rights: so one thread, the broker, stays unconfined and does a single thing,
//! starting the threads for a folder the checks accepted, which confine themselves first.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Threads confined to one folder, running the jobs that open files beneath it.
pub(crate) struct Opener {
    tx: Mutex<mpsc::Sender<Job>>,
    /// Whether the kernel enforces the confinement (false: Landlock is unavailable here).
    pub(crate) confined: bool,
}

/// Threads per folder: an open that waits on slow storage does not hold every other one.
const THREADS: usize = 2;

impl Opener {
    /// Threads that can read only beneath `dir` (the descriptor that was checked, so the rule
    /// is about what was judged, not about a path that may name something else by now).
    pub(crate) fn confined_to(dir: &std::fs::File) -> std::io::Result<Opener> {
        match BROKER.get() {
            Some(b) => b.start(dir),
            None => Self::start(dir),
        }
    }

    fn start(dir: &std::fs::File) -> std::io::Result<Opener> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel();
        for i in 0..THREADS {
            let (rx, ready, dir) = (rx.clone(), ready_tx.clone(), dir.try_clone()?);
            std::thread::Builder::new()
                .name(format!("ipxe-ca-files-{i}"))
                .spawn(move || {
                    let confined = confine(&dir);
                    drop(dir);
                    let _ = ready.send(confined);
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                            rx.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the folder was replaced: its threads end
                        }
                    }
                })?;
        }
        let mut confined = true;
        for _ in 0..THREADS {
            confined &= ready_rx.recv().map_err(std::io::Error::other)?;
        }
        Ok(Opener {
            tx: Mutex::new(tx),
            confined,
        })
    }

    /// Run `f` on a confined thread and wait for its answer.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| std::io::Error::other("the files threads are gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("a files thread failed"))
    }
}

type Request = (std::fs::File, mpsc::SyncSender<std::io::Result<Opener>>);

/// The one unconfined thread of a confined `serve`: it starts a folder's opener threads.
struct Broker {
    tx: Mutex<mpsc::Sender<Request>>,
}

static BROKER: std::sync::OnceLock<Broker> = std::sync::OnceLock::new();

impl Broker {
    fn spawn() -> std::io::Result<Broker> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("ipxe-ca-broker".into())
            .spawn(move || {
                for (dir, reply) in rx {
                    let _ = reply.send(Opener::start(&dir));
                }
            })?;
        Ok(Broker { tx: Mutex::new(tx) })
    }

    fn start(&self, dir: &std::fs::File) -> std::io::Result<Opener> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((dir.try_clone()?, tx))
            .map_err(|_| std::io::Error::other("the broker thread is gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the broker thread failed"))?
    }
}

/// A served folder by path, and what it was when the rules were made (device, inode).
pub(crate) type Folder = (std::path::PathBuf, (u64, u64));

/// How `serve` is confined, for its log.
pub(crate) enum Confinement {
    /// Enforced by the kernel.
    Enforced,
    /// The kernel enforces part of it (an older Landlock ABI).
    Partial,
    /// Not enforced: no Landlock here, or it failed (the reason).
    None(String),
}

/// Confine the calling thread, and every thread it starts from now on, to the state folders
/// `serve` uses (see the module's note); start the broker first. Call it before the runtime
/// starts its threads. Also returns the folders the rules name: the kernel's rules hold
/// them by inode, so a folder replaced later (a state dir restored from a copy) is out of
/// reach, which `replaced` notices.
pub(crate) fn confine_serve(state: &crate::store::state::StateDir) -> (Confinement, Vec<Folder>) {
    let folders: Vec<Folder> = state
        .served_dirs()
        .into_iter()
        .filter_map(|d| {
            let st = rustix::fs::stat(&d).ok()?;
            Some((d, (st.st_dev, st.st_ino)))
        })
        .collect();
    (confine_to(state), folders)
}

/// The first served folder that is no longer the one confined to, once one is (checked
/// every second; a `stat` is not confined).
pub(crate) async fn replaced(folders: Vec<Folder>) -> std::path::PathBuf {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        for (path, id) in &folders {
            let now = rustix::fs::stat(path).map(|st| (st.st_dev, st.st_ino)).ok();
            if now != Some(*id) {
                return path.clone();
            }
        }
    }
}

fn confine_to(state: &crate::store::state::StateDir) -> Confinement {
    use landlock::{
        Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus, ABI,
    };
    if BROKER.get().is_none() {
        match Broker::spawn() {
            Ok(b) => {
                let _ = BROKER.set(b);
            }
            Err(e) => return Confinement::None(format!("cannot start the broker thread: {e}")),
        }
    }
    let abi = ABI::V5;
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    let history = read
        | AccessFs::WriteFile
        | AccessFs::MakeReg
        | AccessFs::RemoveFile
        | AccessFs::Truncate
        | AccessFs::MakeDir;
    let mut rules = vec![
        ("/".into(), AccessFs::ReadDir.into()),
        ("/proc".into(), read),
    ];
    for dir in state.served_dirs() {
        let access = match dir == state.journal_dir() {
            true => history,
            false => read,
        };
        if dir.is_dir() {
            rules.push((dir, access));
        }
    }
    let status = (|| {
        let mut r = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .create()?;
        for (path, access) in rules {
            // A folder gone since it was listed: nothing to grant.
            if let Ok(fd) = PathFd::new(&path) {
                r = r.add_rule(PathBeneath::new(fd, access))?;
            }
        }
        r.restrict_self()
    })();
    match status.map(|s| s.ruleset) {
        Ok(RulesetStatus::FullyEnforced) => Confinement::Enforced,
        Ok(RulesetStatus::PartiallyEnforced) => Confinement::Partial,
        Ok(RulesetStatus::NotEnforced) => Confinement::None("this kernel has no Landlock".into()),
        Err(e) => Confinement::None(e.to_string()),
    }
}

/// Confine this thread to reading beneath `dir`: every other file system access is refused by
/// the kernel. False where the kernel has no Landlock (the thread then runs unconfined).
fn confine(dir: &std::fs::File) -> bool {
    use landlock::{
        Access, AccessFs, PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
    };
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rule(PathBeneath::new(dir, AccessFs::from_read(abi))))
        .and_then(|r| r.restrict_self());
    matches!(
        status.map(|s| s.ruleset),
        Ok(RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::Key;

    /// A thread confined as `serve` is reads and reloads what it serves, writes history, and
    /// cannot open a key, build output, or anything outside the state dir, by any path.
    #[test]
    fn a_confined_serve_reads_what_it_serves_and_no_key() {
        let t = tempfile::tempdir().unwrap();
        let state = crate::store::state::StateDir::new(t.path().join("state"));
        let w = |p: std::path::PathBuf, data: &str| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        let root = state.root().to_path_buf();
        w(state.ca_cert(), "CERT");
        w(state.key_file(Key::Ca), "CA-KEY");
        w(state.key_file(Key::CodeSigning), "SIGNER-KEY");
        w(root.join("boards/b/cert.pem"), "BOARD-CERT");
        w(root.join("keys/boards/b.key"), "BOARD-KEY");
        w(state.config(), "CONFIG");
        w(state.secure_boot_cert(), "DB-CERT");
        w(state.key_file(Key::SecureBootDb), "DB-KEY");
        w(root.join("out/b/autoexec.ipxe"), "IMAGE");
        w(t.path().join("elsewhere"), "ELSEWHERE");
        // A link from a served folder to a key: the kernel judges where it leads.
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        std::os::unix::fs::symlink(state.key_file(Key::Ca), root.join("profiles/leak.ipxe"))
            .unwrap();
        let (state2, t2) = (state.clone(), t.path().to_path_buf());
        let seen = std::thread::spawn(move || {
            let (confined, _) = confine_serve(&state2);
            let read = |p: std::path::PathBuf| std::fs::read_to_string(p).map_err(|e| e.kind());
            let r = state2.root().to_path_buf();
            // History as the journal writes it: appended (created first), compacted by a
            // rewrite renamed over it, truncated, and for a board whose folder is gone, the
            // folder made again.
            let history = (|| {
                let h = r.join("boards/b/history.jsonl");
                std::fs::write(&h, "{}\n")?;
                crate::store::state::write_atomic(&h, b"{}\n", 0o600)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&h)?;
                crate::store::state::write_atomic(
                    &r.join("boards/new/history.jsonl"),
                    b"{}\n",
                    0o600,
                )
                .map_err(|e| std::io::Error::other(e.to_string()))
            })();
            (
                matches!(confined, Confinement::Enforced),
                [
                    read(state2.ca_cert()),
                    read(r.join("boards/b/cert.pem")),
                    read(state2.config()),
                    read(state2.secure_boot_cert()),
                ],
                [
                    read(state2.key_file(Key::Ca)),
                    read(state2.key_file(Key::CodeSigning)),
                    read(state2.key_file(Key::SecureBootDb)),
                    read(r.join("keys/boards/b.key")),
                    read(r.join("out/b/autoexec.ipxe")),
                    read(t2.join("elsewhere")),
                    read(r.join("profiles/leak.ipxe")),
                    read(r.join("profiles/../keys/ca.key")),
                ],
                history.map_err(|e| e.kind()),
            )
        })
        .join()
        .unwrap();
        assert!(seen.0, "this kernel has Landlock (ABI 7 here)");
        assert_eq!(
            seen.1,
            [
                Ok("CERT".into()),
                Ok("BOARD-CERT".into()),
                Ok("CONFIG".into()),
                Ok("DB-CERT".into())
            ]
        );
        for r in seen.2 {
            assert_eq!(r, Err(std::io::ErrorKind::PermissionDenied));
        }
        assert_eq!(seen.3, Ok(()));
        // This thread is not confined: the key is there.
        assert_eq!(
            std::fs::read_to_string(state.key_file(Key::Ca)).unwrap(),
            "CA-KEY"
        );
    }

    /// The files code holding the wrong descriptor (the state's `ca/` where the files folder
    /// should be) opens a name it accepts: the kernel refuses it all the same.
    #[test]
    fn a_confined_thread_cannot_read_the_ca_key_even_by_a_descriptor_the_checks_accept() {
        let t = tempfile::tempdir().unwrap();
        let (files, ca) = (t.path().join("files"), t.path().join("state/ca"));
        std::fs::create_dir_all(&files).unwrap();
        std::fs::create_dir_all(&ca).unwrap();
        std::fs::write(files.join("vmlinuz"), "KERNEL").unwrap();
        std::fs::write(ca.join("ca.key"), "-----BEGIN PRIVATE KEY-----").unwrap();
        let opener = Opener::confined_to(&std::fs::File::open(&files).unwrap()).unwrap();
        assert!(opener.confined, "this kernel has Landlock (ABI 7 here)");
        let wrong = std::fs::File::open(&ca).unwrap();
        let read = |dir: std::fs::File, name: &'static str| {
            move || {
                super::super::files::open_beneath(&dir, name)
                    .and_then(|(mut f, _)| {
                        let mut s = String::new();
                        std::io::Read::read_to_string(&mut f, &mut s).map(|_| s)
                    })
                    .map_err(|e| e.kind())
            }
        };
        // Unconfined, the same call reads the key: the refusal below is the kernel's.
        assert!(read(wrong.try_clone().unwrap(), "ca.key")().is_ok());
        assert_eq!(
            opener.run(read(wrong, "ca.key")).unwrap(),
            Err(std::io::ErrorKind::PermissionDenied)
        );
        let key = ca.join("ca.key");
        assert_eq!(
            opener
                .run(move || std::fs::read(key).map_err(|e| e.kind()))
                .unwrap(),
            Err(std::io::ErrorKind::PermissionDenied),
            "nor by path"
        );
        let good = std::fs::File::open(&files).unwrap();
        assert_eq!(
            opener.run(read(good, "vmlinuz")).unwrap().as_deref(),
            Ok("KERNEL")
        );
    }
}
