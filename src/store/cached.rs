//! Values read from state files and read again only when a file changed: the one way `serve`
//! follows edits (config, CRL, server certificates, Secure Boot key, templates, secrets)
//! without a restart and without a read per request.
//!
//! A file's version is its device, inode, mtime and size (`state::FileVersion`): every write
//! through ipxe-ca is a rename, and an edit in place changes mtime or size. Where the watcher
//! vouches that a file's folder did not change, not even a `stat` is made.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::state::{self, FileVersion};
use crate::store::watch::{Snapshot, Token};

/// How a look decides whether the files may have changed.
#[derive(Clone, Copy, Debug)]
pub enum Look<'a> {
    /// `stat` them, unless the watcher's snapshot vouches for their folders.
    Watched(&'a Snapshot<'a>),
    /// `stat` them at most once per period (where no snapshot is at hand).
    Every(Duration),
}

/// What one look did.
#[derive(Debug)]
pub enum Change<E> {
    /// Nothing new: the value in force stands.
    Same,
    /// A changed file gave a new value, now in force.
    Taken,
    /// A changed file was refused (why): the value in force stays. Each version of the files
    /// is judged once, so a refusal is heard once, not on every request.
    Kept(E),
}

/// One value parsed from one or more files, kept while they are unchanged; a bad edit keeps
/// the last good value.
pub struct Cached<T> {
    paths: Vec<PathBuf>,
    slot: Mutex<Slot<T>>,
}

struct Slot<T> {
    seen: Vec<Option<FileVersion>>,
    token: Token,
    checked: Instant,
    value: Arc<T>,
}

impl<T> std::fmt::Debug for Cached<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("paths", &self.paths)
            .finish()
    }
}

fn versions(paths: &[PathBuf]) -> Vec<Option<FileVersion>> {
    paths.iter().map(|p| state::file_version(p)).collect()
}

impl<T> Cached<T> {
    /// The value `read` gives now, as of the files at `paths` (their versions are taken first:
    /// an edit during the read is seen at the next look).
    pub fn new<E>(paths: Vec<PathBuf>, read: impl FnOnce() -> Result<T, E>) -> Result<Self, E> {
        let seen = versions(&paths);
        let value = Arc::new(read()?);
        Ok(Cached {
            paths,
            slot: Mutex::new(Slot {
                seen,
                token: Token::default(),
                checked: Instant::now(),
                value,
            }),
        })
    }

    fn slot(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value in force, without looking at the files.
    pub fn in_force(&self) -> Arc<T> {
        self.slot().value.clone()
    }

    /// The value now. When a file changed since the last look, `reload` is given the value in
    /// force and answers with a new one (`Ok(Some)`), the same (`Ok(None)`) or a refusal.
    pub fn get<E>(
        &self,
        look: Look<'_>,
        reload: impl FnOnce(&T) -> Result<Option<T>, E>,
    ) -> (Arc<T>, Change<E>) {
        let mut slot = self.slot();
        match look {
            Look::Watched(at) => {
                if at.current(slot.token) {
                    return (slot.value.clone(), Change::Same);
                }
                let dirs: Vec<&Path> = self
                    .paths
                    .iter()
                    .map(|p| p.parent().unwrap_or(Path::new(".")))
                    .collect();
                slot.token = at.token(&dirs);
            }
            Look::Every(period) => {
                if slot.checked.elapsed() < period {
                    return (slot.value.clone(), Change::Same);
                }
                slot.checked = Instant::now();
            }
        }
        let now = versions(&self.paths);
        if now == slot.seen {
            return (slot.value.clone(), Change::Same);
        }
        slot.seen = now;
        let change = match reload(&slot.value) {
            Ok(Some(v)) => {
                slot.value = Arc::new(v);
                Change::Taken
            }
            Ok(None) => Change::Same,
            Err(e) => Change::Kept(e),
        };
        (slot.value.clone(), change)
    }
}

/// Values parsed from one file each (a board's secrets, a template), by key, each kept while
/// its file is unchanged. Bounded: past `limit` entries it starts again.
pub struct PerFile<K, T> {
    limit: usize,
    map: Mutex<HashMap<K, Entry<T>>>,
}

struct Entry<T> {
    version: Option<FileVersion>,
    token: Token,
    value: T,
}

impl<K, T> std::fmt::Debug for PerFile<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerFile")
            .field("limit", &self.limit)
            .finish()
    }
}

impl<K: Hash + Eq + Clone, T: Clone> PerFile<K, T> {
    /// An empty cache of at most `limit` entries.
    pub fn new(limit: usize) -> Self {
        PerFile {
            limit,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<K, Entry<T>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many values are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map().len()
    }

    /// The value kept for `key`, without looking at its file.
    #[cfg(test)]
    pub(crate) fn peek(&self, key: &K) -> Option<T> {
        self.map().get(key).map(|e| e.value.clone())
    }

    /// The value for `key`, whose file is `path`: kept while the watcher vouches for its folder
    /// or its version is unchanged, else `read` (given whether the file exists) again.
    pub fn get<E: From<crate::error::Error>>(
        &self,
        key: &K,
        path: &Path,
        at: &Snapshot<'_>,
        read: impl FnOnce(bool) -> Result<T, E>,
    ) -> Result<T, E> {
        let known = self
            .map()
            .get(key)
            .map(|e| (e.version, e.token, e.value.clone()));
        if let Some((_, token, value)) = &known {
            if at.current(*token) {
                return Ok(value.clone());
            }
        }
        let token = at.token(&[path.parent().unwrap_or(Path::new("."))]);
        let version = state::existing_version(path)?;
        let value = match known {
            Some((v, _, value)) if v == version => value,
            _ => read(version.is_some())?,
        };
        let mut map = self.map();
        if map.len() >= self.limit {
            map.clear();
        }
        map.insert(
            key.clone(),
            Entry {
                version,
                token,
                value: value.clone(),
            },
        );
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::watch::tests::dir;
    use crate::store::watch::Changes;

    fn parse(p: &Path) -> Result<u32, String> {
        std::fs::read_to_string(p)
            .map_err(|e| e.to_string())?
            .trim()
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())
    }

    #[test]
    fn an_edit_is_taken_a_bad_one_keeps_the_last_good_value_once_per_version() {
        let t = dir();
        let p = t.path().join("n");
        std::fs::write(&p, "1").unwrap();
        let changes = Changes::new(t.path());
        let c = Cached::new(vec![p.clone()], || parse(&p)).unwrap();
        let look = |c: &Cached<u32>| {
            let at = changes.snapshot();
            let mut calls = 0;
            let (v, ch) = c.get(Look::Watched(&at), |cur| {
                calls += 1;
                parse(&p).map(|n| (n != *cur).then_some(n))
            });
            (*v, ch, calls)
        };
        let (v, ch, calls) = look(&c);
        assert_eq!((v, calls), (1, 0));
        assert!(matches!(ch, Change::Same));
        std::fs::write(&p, "22").unwrap();
        let (v, ch, _) = look(&c);
        assert_eq!(v, 22);
        assert!(matches!(ch, Change::Taken), "{ch:?}");
        std::fs::write(&p, "not a number").unwrap();
        let (v, ch, _) = look(&c);
        assert_eq!(v, 22);
        assert!(matches!(ch, Change::Kept(_)), "{ch:?}");
        // The refused version is not judged again.
        let (v, ch, calls) = look(&c);
        assert_eq!((v, calls), (22, 0));
        assert!(matches!(ch, Change::Same), "{ch:?}");
        // Rewritten with the same value: looked at, nothing new.
        std::fs::write(&p, "022").unwrap();
        let (v, ch, calls) = look(&c);
        assert_eq!((v, calls), (22, 1));
        assert!(matches!(ch, Change::Same), "{ch:?}");
        assert_eq!(*c.in_force(), 22);
    }

    #[test]
    fn a_periodic_look_waits_its_period() {
        let t = dir();
        let p = t.path().join("n");
        std::fs::write(&p, "1").unwrap();
        let c = Cached::new(vec![p.clone()], || parse(&p)).unwrap();
        std::fs::write(&p, "2").unwrap();
        let reload = |_: &u32| parse(&p).map(Some);
        let (v, _) = c.get(Look::Every(Duration::from_secs(3600)), reload);
        assert_eq!(*v, 1, "looked before its period");
        let (v, ch) = c.get(Look::Every(Duration::ZERO), reload);
        assert_eq!(*v, 2);
        assert!(matches!(ch, Change::Taken));
    }

    #[test]
    fn per_file_values_are_read_once_per_version_and_bounded() {
        let t = dir();
        let changes = Changes::off();
        let cache: PerFile<&str, u32> = PerFile::new(2);
        let reads = std::cell::Cell::new(0);
        let get = |k: &'static str| {
            let p = t.path().join(k);
            cache.get(&k, &p, &changes.snapshot(), |exists| {
                reads.set(reads.get() + 1);
                if exists {
                    parse(&p).map_err(crate::error::Error::invalid)
                } else {
                    Ok(0)
                }
            })
        };
        assert_eq!(get("a").unwrap(), 0, "no file");
        std::fs::write(t.path().join("a"), "7").unwrap();
        assert_eq!(get("a").unwrap(), 7);
        assert_eq!(get("a").unwrap(), 7);
        assert_eq!(reads.get(), 2);
        std::fs::write(t.path().join("b"), "8").unwrap();
        std::fs::write(t.path().join("c"), "9").unwrap();
        assert_eq!((get("b").unwrap(), get("c").unwrap()), (8, 9));
        // Two entries at most: "a" was dropped and is read again.
        assert_eq!(get("a").unwrap(), 7);
        assert_eq!(reads.get(), 5);
        std::fs::write(t.path().join("a"), "x").unwrap();
        assert!(get("a").is_err());
    }
}
