//! Boot files are opened by threads the kernel confines to the files folder (Landlock): even a
//! descriptor or path the checks got wrong cannot open the CA key, a board key or a secret.
//!
//! The confinement is per thread, not per process: `serve` itself must go on reading
//! `config.toml`, the CRL and the server keys, which the state dir keeps beside `ca/ca.key`,
//! and a Landlock rule can only grant a whole folder. Only these threads open files by a
//! request's path, so they are the ones confined.

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
