//! The board registry: one small TOML file per board (diff-friendly, git-friendly), the board's
//! certificate, key and secrets beside it, and index files so that lookups never scan.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use serde::Serialize;

use crate::board::Board;
use crate::error::{Error, Result};
use crate::store::cached::PerFile;
use crate::store::state::{self, StateDir, MODE_PUBLIC, MODE_SECRET};
use crate::store::watch::{Snapshot, Token};
use crate::types::{BoardName, Fingerprint, Serial};

/// Read-only and write access to boards. Writers must hold the state lock.
#[derive(Clone, Debug)]
pub struct Registry {
    state: StateDir,
    /// What was moved to the quarantine folder, and from where, for the operator to hear of.
    moved: std::sync::Arc<std::sync::Mutex<Vec<(PathBuf, PathBuf)>>>,
}

impl Registry {
    /// The registry of a state dir.
    pub fn new(state: StateDir) -> Self {
        Registry {
            state,
            moved: Default::default(),
        }
    }

    /// The state dir this registry lives in.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The board's certificate (PEM) as last issued.
    pub fn cert_pem(&self, name: &BoardName) -> Result<Vec<u8>> {
        state::read(&self.state.board_cert(name))
    }

    /// Where the board's certificate lives: for messages and `list --expiring`, and for
    /// nothing else to read behind the registry's back.
    pub fn cert_file(&self, name: &BoardName) -> PathBuf {
        self.state.board_cert(name)
    }

    /// The board's private key (PEM) when ipxe-ca holds it: enrolled here, not signed from a
    /// CSR or registered with a key that never left the board.
    pub fn key_pem(&self, name: &BoardName) -> Result<Option<Vec<u8>>> {
        match fs::read(self.state.board_key(name)) {
            Ok(k) => Ok(Some(k)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", self.state.board_key(name), e)),
        }
    }

    /// Move a leftover aside (never deleted: it may hold the only copy of a key).
    fn set_aside(&self, path: &std::path::Path) -> Result<()> {
        let to = self.state.quarantine(path)?;
        self.moved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((path.to_path_buf(), to));
        Ok(())
    }

    /// (from, to) of everything moved to the quarantine folder since the last call.
    pub fn take_moved(&self) -> Vec<(PathBuf, PathBuf)> {
        std::mem::take(&mut *self.moved.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// What the state dir holds beside a board's entry (paths of its certificate and key, its
    /// last request), for its view.
    pub fn stored(&self, name: &BoardName) -> crate::board::Stored {
        let key = self.state.board_key(name);
        crate::board::Stored {
            cert: self.state.board_cert(name),
            key: key.exists().then_some(key),
            last: crate::store::history::last(&self.state, name).map(|r| (r.time, r.outcome)),
        }
    }

    /// Whether a board of that name exists.
    pub fn exists(&self, name: &BoardName) -> bool {
        self.state.board_file(name).exists()
    }

    /// Whether a certificate serial is already used by a board.
    pub fn serial_taken(&self, serial: &Serial) -> bool {
        // An index entry counts only if it names a board that really has this serial: an
        // entry left by a crash must not block the serial forever.
        fs::read_to_string(self.state.index_file("serial", serial.as_str()))
            .ok()
            .and_then(|n| n.trim().parse::<BoardName>().ok())
            .and_then(|n| self.get(&n).ok())
            .is_some_and(|b| &b.serial == serial || b.previous.iter().any(|p| &p.serial == serial))
    }

    /// Load one board.
    pub fn get(&self, name: &BoardName) -> Result<Board> {
        let path = self.state.board_file(name);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoBoard(name.to_string()))
            }
            Err(e) => return Err(Error::io("cannot read", path, e)),
        };
        state::parse_toml(&path, &text)
    }

    /// Find a board by the SHA-1 or SHA-256 fingerprint of its certificate: two small
    /// file reads, no scan.
    pub fn by_fingerprint(&self, fp: &Fingerprint) -> Result<Option<Board>> {
        let idx = self.state.index_file(fp.digest().name(), fp.as_str());
        let name = match fs::read_to_string(&idx) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", idx, e)),
        };
        let name: BoardName = name.trim().parse()?;
        match self.get(&name) {
            Ok(b) if b.presented(fp).is_some() => Ok(Some(b)),
            Ok(_) | Err(Error::NoBoard(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// All boards, sorted by name.
    pub fn list(&self) -> Result<Vec<Board>> {
        let dir = self.state.boards_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("cannot list", dir, e)),
        };
        let mut boards = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot list", &dir, e))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(StateDir::board_of_file) else {
                continue;
            };
            boards.push(self.get(&name)?);
        }
        boards.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(boards)
    }

    /// Every board that can be read, and the board files that cannot.
    pub fn list_readable(&self) -> Result<(Vec<Board>, Vec<PathBuf>)> {
        let dir = self.state.boards_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(Error::io("cannot list", dir, e)),
        };
        let (mut boards, mut bad) = (Vec::new(), Vec::new());
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("cannot list", &dir, e))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(StateDir::board_of_file) else {
                continue;
            };
            match self.get(&name) {
                Ok(b) => boards.push(b),
                Err(_) => bad.push(self.state.board_file(&name)),
            }
        }
        boards.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((boards, bad))
    }

    /// The board's secret values (for rendering its script only).
    pub fn secrets(&self, name: &BoardName) -> Result<BTreeMap<String, String>> {
        let path = self.state.board_secrets(name);
        match fs::read_to_string(&path) {
            Ok(t) => state::parse_toml(&path, &t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::io("cannot read", path, e)),
        }
    }

    /// Add a new board with its certificate, optional key and secrets. The board file is
    /// written last: until then the board does not exist, so a failure leaves nothing usable.
    pub fn add(
        &self,
        board: &Board,
        cert_pem: &str,
        key_pem: Option<&str>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<()> {
        if self.exists(&board.name) {
            return Err(Error::BoardExists(board.name.to_string()));
        }
        // A folder without a board file is what a crash mid-enroll leaves (or a board file
        // moved aside): start clean, so a new board never inherits an old one's key or
        // secrets, and set the folder aside, since its key may be the only copy.
        for left in [
            self.state.board_dir(&board.name),
            self.state.board_key(&board.name),
        ] {
            if fs::symlink_metadata(&left).is_ok() {
                self.set_aside(&left)?;
            }
        }
        let result = (|| {
            let dir = self.state.board_dir(&board.name);
            state::create_dir_private(&dir)?;
            state::write_atomic(
                &self.state.board_cert(&board.name),
                cert_pem.as_bytes(),
                MODE_PUBLIC,
            )?;
            if let Some(k) = key_pem {
                state::write_atomic(
                    &self.state.board_key(&board.name),
                    k.as_bytes(),
                    MODE_SECRET,
                )?;
            }
            if !secrets.is_empty() {
                let text = toml::to_string(secrets).map_err(|e| Error::invalid(e.to_string()))?;
                state::write_atomic(
                    &self.state.board_secrets(&board.name),
                    text.as_bytes(),
                    MODE_SECRET,
                )?;
            }
            let name = board.name.as_str().as_bytes();
            for (kind, value) in index_values(board) {
                state::write_atomic(&self.state.index_file(kind, value), name, MODE_PUBLIC)?;
            }
            self.save(board)
        })();
        if result.is_err() {
            self.remove_files(board);
        }
        result
    }

    fn remove_files(&self, board: &Board) {
        let _ = fs::remove_file(self.state.board_file(&board.name));
        let _ = fs::remove_dir_all(self.state.board_dir(&board.name));
        let _ = fs::remove_file(self.state.board_key(&board.name));
        for (kind, value) in index_values(board) {
            let _ = fs::remove_file(self.state.index_file(kind, value));
        }
    }

    /// Give a board a new certificate (and key, if `key_pem`): the files first, then its index
    /// entries, the board file last (the source of truth). The caller holds the lock.
    pub fn replace_cert(&self, board: &Board, cert_pem: &str, key_pem: Option<&str>) -> Result<()> {
        let name = &board.name;
        state::create_dir_private(&self.state.board_dir(name))?;
        state::write_atomic(
            &self.state.board_cert(name),
            cert_pem.as_bytes(),
            MODE_PUBLIC,
        )?;
        match key_pem {
            Some(k) => state::write_atomic(&self.state.board_key(name), k.as_bytes(), MODE_SECRET)?,
            None => {
                let _ = fs::remove_file(self.state.board_key(name));
            }
        }
        for (kind, value) in index_values(board) {
            state::write_atomic(
                &self.state.index_file(kind, value),
                name.as_str().as_bytes(),
                MODE_PUBLIC,
            )?;
        }
        self.save(board)
    }

    /// Replace a board's secrets (0600; the file goes away when there are none).
    pub fn save_secrets(&self, name: &BoardName, secrets: &BTreeMap<String, String>) -> Result<()> {
        let path = self.state.board_secrets(name);
        if secrets.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io("cannot remove", path, e))
                }
                _ => Ok(()),
            };
        }
        let text = toml::to_string(secrets).map_err(|e| Error::invalid(e.to_string()))?;
        state::write_atomic(&path, text.as_bytes(), MODE_SECRET)
    }

    /// Write a board's registry entry atomically.
    pub fn save(&self, board: &Board) -> Result<()> {
        let text = toml::to_string(board).map_err(|e| Error::invalid(e.to_string()))?;
        state::write_atomic(
            &self.state.board_file(&board.name),
            text.as_bytes(),
            MODE_PUBLIC,
        )
    }
}

/// Boards as `serve` looks them up on every request, parsed once per version of their files.
/// A hit costs nothing while inotify says their folders are unchanged (`watch`), and two
/// `stat`s (the index entry and the board file) otherwise, instead of two reads and a TOML
/// parse; every revoke, renew or edit is still seen on the next request, because each write
/// through ipxe-ca is a rename (a new file) and an edit in place changes mtime or size.
#[derive(Debug)]
pub struct BoardCache {
    registry: Registry,
    limit: usize,
    seen: std::sync::Mutex<std::collections::HashMap<Fingerprint, std::sync::Arc<Cached>>>,
    /// Each board's secrets with the version of `secrets.toml` they were read at (None: no
    /// file). Secret values are in this process's memory for every request anyway.
    secrets: PerFile<BoardName, BTreeMap<String, String>>,
}

#[derive(Clone, Debug)]
struct Cached {
    index: state::FileVersion,
    path: PathBuf,
    board_file: state::FileVersion,
    board: std::sync::Arc<Board>,
    /// Both files as of this generation of their folders.
    token: Token,
}

/// Entries kept at most; past that the cache starts again (a farm has far fewer).
const CACHE_MAX: usize = 100_000;

impl BoardCache {
    /// An empty cache over `registry`.
    pub fn new(registry: Registry) -> Self {
        Self::with_limit(registry, CACHE_MAX)
    }

    fn with_limit(registry: Registry, limit: usize) -> Self {
        BoardCache {
            registry,
            limit,
            seen: Default::default(),
            secrets: PerFile::new(limit),
        }
    }

    /// What [`Registry::secrets`] would answer now, read again only when `secrets.toml`
    /// changed: a request for a board with secrets costs at most a `stat`, not a read and a
    /// parse.
    pub fn secrets(&self, name: &BoardName, now: &Snapshot) -> Result<BTreeMap<String, String>> {
        let path = self.registry.state.board_secrets(name);
        self.secrets.get(name, &path, now, |exists| {
            match exists.then(|| state::read_versioned(&path)) {
                Some(Ok(Some((_, text)))) => state::parse_toml(&path, &text),
                Some(Err(e)) => Err(e),
                None | Some(Ok(None)) => Ok(BTreeMap::new()),
            }
        })
    }

    /// What [`Registry::by_fingerprint`] would answer now.
    pub fn by_fingerprint(
        &self,
        fp: &Fingerprint,
        now: &Snapshot,
    ) -> Result<Option<std::sync::Arc<Board>>> {
        let st = &self.registry.state;
        let known = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.get(fp).cloned()
        };
        if let Some(c) = &known {
            if now.current(c.token) {
                return Ok(Some(c.board.clone()));
            }
        }
        let idx = st.index_file(fp.digest().name(), fp.as_str());
        let token = now.token(&[&st.index_dir(fp.digest().name()), &st.boards_dir()]);
        // An entry that cannot be looked at is an error, as for `Registry::by_fingerprint`,
        // not an unregistered board.
        let Some(index) = state::existing_version(&idx)? else {
            return Ok(None);
        };
        let unchanged = match known.filter(|c| c.index == index) {
            Some(c) if state::existing_version(&c.path)? == Some(c.board_file) => Some(c),
            _ => None,
        };
        let cached = match unchanged {
            // The same files: only the token is new.
            Some(c) => Cached {
                token,
                ..Cached::clone(&c)
            },
            None => {
                let Some((index, name)) = state::read_versioned(&idx)? else {
                    return Ok(None);
                };
                let name: BoardName = name.trim().parse()?;
                let path = st.board_file(&name);
                let Some((board_file, text)) = state::read_versioned(&path)? else {
                    return Ok(None);
                };
                let board: Board = state::parse_toml(&path, &text)?;
                if board.presented(fp).is_none() {
                    return Ok(None);
                }
                Cached {
                    index,
                    path,
                    board_file,
                    board: std::sync::Arc::new(board),
                    token,
                }
            }
        };
        let board = cached.board.clone();
        insert_bounded(
            &self.seen,
            self.limit,
            fp.clone(),
            std::sync::Arc::new(cached),
        );
        Ok(Some(board))
    }
}

/// Remember `value` under `key`, starting again when `limit` entries are kept.
fn insert_bounded<K: std::hash::Hash + Eq, V>(
    map: &std::sync::Mutex<std::collections::HashMap<K, V>>,
    limit: usize,
    key: K,
    value: V,
) {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= limit {
        map.clear();
    }
    map.insert(key, value);
}

/// One inconsistency between board files, folders and the index.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// `orphan-folder`, `dangling-index`, `missing-index`, `unreadable-board`,
    /// `certificate-mismatch`, `crl-incomplete`, `bad-config` or `server-name-mismatch`.
    pub kind: &'static str,
    /// The file or folder concerned.
    pub path: PathBuf,
    /// What is wrong, in words.
    pub detail: String,
    /// Whether `check --repair` fixes it.
    pub repairable: bool,
    /// The host boards reach the server by, when the server certificates do not name it.
    #[serde(skip)]
    pub host: Option<String>,
}

impl Registry {
    /// Every inconsistency of the registry (the CRL is checked by the caller).
    pub fn check(&self) -> Result<Vec<Problem>> {
        let mut out = Vec::new();
        let dir = self.state.boards_dir();
        let mut boards = Vec::new();
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                if let Some(name) = StateDir::board_of_file(&file) {
                    match self.get(&name) {
                        Ok(b) => boards.push(b),
                        Err(err) => out.push(Problem {
                            kind: "unreadable-board",
                            path,
                            detail: err.to_string(),
                            repairable: false,
                            host: None,
                        }),
                    }
                } else if path.is_dir()
                    && file
                        .parse::<BoardName>()
                        .is_ok_and(|n| !self.state.board_file(&n).exists())
                {
                    out.push(Problem {
                        kind: "orphan-folder",
                        path,
                        detail:
                            "a board folder without a board file (left by an interrupted enroll)"
                                .into(),
                        repairable: true,
                        host: None,
                    });
                }
            }
        }
        if let Ok(rd) = fs::read_dir(self.state.board_keys_dir()) {
            for e in rd.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let board = file
                    .strip_suffix(".key")
                    .and_then(|n| n.parse::<BoardName>().ok());
                if board.is_some_and(|n| !self.state.board_file(&n).exists()) {
                    out.push(Problem {
                        kind: "orphan-key",
                        path: e.path(),
                        detail: "a board key without a board file (left by an interrupted enroll)"
                            .into(),
                        repairable: true,
                        host: None,
                    });
                }
            }
        }
        for b in &boards {
            match fs::read(self.state.board_cert(&b.name))
                .ok()
                .and_then(|pem| crate::ca::cert_der_from_bytes(&pem).ok())
            {
                Some(der) if Fingerprint::sha256(&der) == b.fingerprint_sha256 => {}
                _ => out.push(Problem {
                    kind: "certificate-mismatch",
                    path: self.state.board_cert(&b.name),
                    detail: format!(
                        "board {} has no certificate matching its fingerprint",
                        b.name
                    ),
                    repairable: false,
                    host: None,
                }),
            }
            for (kind, value) in index_values(b) {
                let p = self.state.index_file(kind, value);
                if fs::read_to_string(&p).ok().as_deref().map(str::trim) != Some(b.name.as_str()) {
                    out.push(Problem {
                        kind: "missing-index",
                        path: p,
                        detail: format!("board {} is not found by its {kind}", b.name),
                        repairable: true,
                        host: None,
                    });
                }
            }
        }
        for kind in ["sha1", "sha256", "serial"] {
            let Ok(rd) = fs::read_dir(self.state.index_dir(kind)) else {
                continue;
            };
            for e in rd.flatten() {
                let value = e.file_name().to_string_lossy().into_owned();
                let named = fs::read_to_string(e.path()).unwrap_or_default();
                let ok = boards.iter().any(|b| {
                    b.name.as_str() == named.trim()
                        && index_values(b)
                            .iter()
                            .any(|(k, v)| *k == kind && *v == value)
                });
                if !ok {
                    out.push(Problem {
                        kind: "dangling-index",
                        path: e.path(),
                        detail: format!("names {:?}, which has no such {kind}", named.trim()),
                        repairable: true,
                        host: None,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Fix what `problems` says can be fixed: move orphan folders and dangling index entries
    /// to the quarantine folder (nothing is deleted), write missing index entries. The caller
    /// holds the state lock.
    pub fn repair(&self, problems: &[Problem]) -> Result<()> {
        for p in problems.iter().filter(|p| p.repairable) {
            match p.kind {
                "orphan-folder" | "orphan-key" | "dangling-index" => self.set_aside(&p.path)?,
                _ => {}
            }
        }
        for p in problems.iter().filter(|p| p.kind == "missing-index") {
            // Rewritten from the board files, the source of truth.
            for b in self.list()? {
                for (kind, value) in index_values(&b) {
                    if self.state.index_file(kind, value) == p.path {
                        state::write_atomic(&p.path, b.name.as_str().as_bytes(), MODE_PUBLIC)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The index entries a board has: how it is found by fingerprint and by serial, for its
/// current certificate and its previous ones (so that an old one is refused as revoked, not
/// as unknown, and its serial is never reused).
fn index_values(b: &Board) -> Vec<(&'static str, &str)> {
    let mut v = vec![
        (
            b.fingerprint_sha1.digest().name(),
            b.fingerprint_sha1.as_str(),
        ),
        (
            b.fingerprint_sha256.digest().name(),
            b.fingerprint_sha256.as_str(),
        ),
        ("serial", b.serial.as_str()),
    ];
    for p in &b.previous {
        v.push((
            p.fingerprint_sha1.digest().name(),
            p.fingerprint_sha1.as_str(),
        ));
        v.push((
            p.fingerprint_sha256.digest().name(),
            p.fingerprint_sha256.as_str(),
        ));
        v.push(("serial", p.serial.as_str()));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{BoardOptions, InitOptions, Lab};
    use crate::store::watch::Changes;

    /// A new state dir with these boards enrolled.
    fn lab_with(names: &[&str]) -> (tempfile::TempDir, Lab, Vec<BoardName>, Vec<Board>) {
        let t = tempfile::tempdir().unwrap();
        let lab = Lab::open(t.path().join("s"));
        lab.init(&InitOptions::default()).unwrap();
        let names: Vec<BoardName> = names.iter().map(|n| n.parse().unwrap()).collect();
        let boards = lab.enroll_many(&names, &BoardOptions::default()).unwrap();
        (t, lab, names, boards)
    }

    /// The cache's answer, as text, beside the registry's.
    fn both(
        cache: &BoardCache,
        fp: &Fingerprint,
        ch: &Changes,
    ) -> (Option<String>, Option<String>) {
        let direct = cache.registry.by_fingerprint(fp).unwrap();
        let cached = cache.by_fingerprint(fp, &ch.snapshot()).unwrap();
        let text = |b: &Board| toml::to_string(b).unwrap();
        (cached.as_deref().map(text), direct.as_ref().map(text))
    }

    #[test]
    fn the_board_cache_answers_what_the_registry_answers_after_every_change() {
        // Told of changes by inotify, and by a `stat` per file.
        answers_after_every_change(true);
        answers_after_every_change(false);
    }

    /// `Changes` for `lab`'s state: by inotify, or by a `stat` per file.
    fn changes(lab: &Lab, inotify: bool) -> Changes {
        if inotify {
            Changes::new(lab.state().root())
        } else {
            Changes::off()
        }
    }

    fn answers_after_every_change(inotify: bool) {
        let (_t, lab, names, boards) = lab_with(&["b1"]);
        let ch = &changes(&lab, inotify);
        let (name, board) = (names[0].clone(), &boards[0]);
        let cache = BoardCache::new(lab.registry().clone());
        let (sha1, sha256) = (
            board.fingerprint_sha1.clone(),
            board.fingerprint_sha256.clone(),
        );

        // A hit hands out the board parsed before.
        let first = cache
            .by_fingerprint(&sha1, &ch.snapshot())
            .unwrap()
            .unwrap();
        let again = cache
            .by_fingerprint(&sha1, &ch.snapshot())
            .unwrap()
            .unwrap();
        assert!(std::sync::Arc::ptr_eq(&first, &again), "not cached");
        assert_eq!(first.name, name);
        let (c, d) = both(&cache, &sha256, ch);
        assert!(c.is_some() && c == d);

        // A revoke (a rename of the board file) is seen on the next lookup.
        lab.revoke(&name, crate::ca::Reason::Unspecified).unwrap();
        let revoked = cache
            .by_fingerprint(&sha1, &ch.snapshot())
            .unwrap()
            .unwrap();
        assert_eq!(revoked.status, crate::board::Status::Revoked);
        assert_eq!(both(&cache, &sha1, ch).0, both(&cache, &sha1, ch).1);

        // An edit in place (same file, new size) too.
        let path = lab.state().board_file(&name);
        let text = fs::read_to_string(&path).unwrap();
        let edited = text.replace("status = \"revoked\"", "status = \"active\"");
        assert_ne!(text, edited);
        fs::write(&path, edited).unwrap();
        assert_eq!(
            cache
                .by_fingerprint(&sha1, &ch.snapshot())
                .unwrap()
                .unwrap()
                .status,
            crate::board::Status::Active
        );

        // An index entry that names another board, or none, ends the hit.
        let idx = lab.state().index_file("sha1", sha1.as_str());
        fs::write(&idx, "nosuchboard").unwrap();
        assert_eq!(both(&cache, &sha1, ch), (None, None));
        fs::remove_file(&idx).unwrap();
        assert_eq!(both(&cache, &sha1, ch), (None, None));

        // A fingerprint nobody registered.
        let stranger: Fingerprint = "00".repeat(20).parse().unwrap();
        assert_eq!(both(&cache, &stranger, ch), (None, None));
    }

    #[test]
    fn the_board_cache_reads_secrets_again_only_when_their_file_changes() {
        reads_secrets_again_only_when_their_file_changes(true);
        reads_secrets_again_only_when_their_file_changes(false);
    }

    fn reads_secrets_again_only_when_their_file_changes(inotify: bool) {
        let (_t, lab, names, _) = lab_with(&["b1"]);
        let ch = &changes(&lab, inotify);
        let name = names[0].clone();
        let cache = BoardCache::new(lab.registry().clone());
        let reg = lab.registry();
        let both = || {
            (
                cache.secrets(&name, &ch.snapshot()).unwrap(),
                reg.secrets(&name).unwrap(),
            )
        };
        assert!(both().0.is_empty() && both().1.is_empty());
        let mut values = BTreeMap::new();
        values.insert("s3".to_string(), "AAAA".to_string());
        reg.save_secrets(&name, &values).unwrap();
        let (c, r) = both();
        assert_eq!(
            (c.get("s3"), r.get("s3")),
            (Some(&"AAAA".into()), Some(&"AAAA".into()))
        );
        // Same size, mtime put back: the same version, so the cache keeps what it read (which
        // is how it saves the read); the registry reads the new value.
        let path = lab.state().board_secrets(&name);
        let before = fs::metadata(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap().replace("AAAA", "BBBB");
        fs::write(&path, text).unwrap();
        let f = fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(before.modified().unwrap()).unwrap();
        let (c, r) = both();
        assert_eq!((c["s3"].as_str(), r["s3"].as_str()), ("AAAA", "BBBB"));
        // A new size or mtime: read again.
        fs::write(&path, "s3 = \"CCCCC\"\n").unwrap();
        assert_eq!(cache.secrets(&name, &ch.snapshot()).unwrap()["s3"], "CCCCC");
        // Removed: no secrets. Unreadable or unparsable: an error, not "no secrets".
        reg.save_secrets(&name, &BTreeMap::new()).unwrap();
        assert!(cache.secrets(&name, &ch.snapshot()).unwrap().is_empty());
        fs::write(&path, "s3 = ").unwrap();
        assert!(cache.secrets(&name, &ch.snapshot()).is_err());
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&path, &path).unwrap();
        let err = cache
            .secrets(&name, &ch.snapshot())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("secrets.toml"),
            "{err}"
        );
    }

    #[test]
    fn the_board_cache_reports_unreadable_files_and_stays_bounded() {
        let (_t, lab, names, boards) = lab_with(&["b1", "b2", "b3"]);
        let ch = &changes(&lab, true);
        let cache = BoardCache::with_limit(lab.registry().clone(), 2);
        let fp = |i: usize| boards[i].fingerprint_sha1.clone();
        let first = cache
            .by_fingerprint(&fp(0), &ch.snapshot())
            .unwrap()
            .unwrap();
        cache
            .by_fingerprint(&fp(1), &ch.snapshot())
            .unwrap()
            .unwrap();
        assert_eq!(cache.seen.lock().unwrap().len(), 2);
        // Full: the next board starts it again.
        cache
            .by_fingerprint(&fp(2), &ch.snapshot())
            .unwrap()
            .unwrap();
        assert_eq!(cache.seen.lock().unwrap().len(), 1);
        let again = cache
            .by_fingerprint(&fp(0), &ch.snapshot())
            .unwrap()
            .unwrap();
        assert!(
            !std::sync::Arc::ptr_eq(&first, &again),
            "kept past its limit"
        );
        for n in &names {
            cache.secrets(n, &ch.snapshot()).unwrap();
        }
        assert_eq!(cache.secrets.len(), 1, "secrets kept past the limit");

        // A board file that cannot be read (a symlink loop) is an error, cached or not.
        let path = lab.state().board_file(&names[0]);
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&path, &path).unwrap();
        // (Once known, once new: the two paths through the cache.)
        for cache in [&cache, &BoardCache::new(lab.registry().clone())] {
            let err = cache
                .by_fingerprint(&fp(0), &ch.snapshot())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("cannot read") && err.contains("b1.toml"),
                "{err}"
            );
        }
        assert!(cache.registry.by_fingerprint(&fp(0)).is_err());
        // So is an index entry that cannot be read, not "not registered".
        let idx = lab.state().index_file("sha1", fp(1).as_str());
        fs::remove_file(&idx).unwrap();
        std::os::unix::fs::symlink(&idx, &idx).unwrap();
        let err = cache
            .by_fingerprint(&fp(1), &ch.snapshot())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("index"),
            "{err}"
        );
        assert!(cache.registry.by_fingerprint(&fp(1)).is_err());
    }
}
