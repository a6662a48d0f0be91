//! The one door to the state directory: fixed paths, the lock, atomic writes and file modes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::types::{BoardName, ProfileName};

/// The state directory. Every path ipxe-ca reads or writes comes from here, so operators can
/// point nginx, backups and git at fixed names.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

/// The private keys and secrets of the farm itself (a board's key is the registry's): named
/// by role, so that nothing outside the store spells where one lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// The CA's: signs every certificate and the CRL. `serve` never needs it.
    Ca,
    /// The RSA server certificate's, for iPXE before 2.0.
    ServerRsa,
    /// The ECDSA P-256 server certificate's, for clients that offer ECDSA.
    ServerEcdsa,
    /// The boot-file signer's (`imgverify`).
    CodeSigning,
    /// The Secure Boot db key that signs EFI executables.
    SecureBootDb,
    /// The Secure Boot KEK key, which signed the db update.
    SecureBootKek,
    /// The Secure Boot platform key, which signed the KEK update.
    SecureBootPk,
    /// What nginx sends to prove it is the proxy.
    ProxySecret,
}

/// Written into every build output folder: it holds board keys, so it is never served.
pub const OUT_MARKER: &str = ".ipxe-ca-images";
const BOARD_FILE_EXT: &str = ".toml";
/// A board key's name in the old layout, and in a build's staging folder.
const BOARD_KEY: &str = "key.pem";
const BOARD_SECRETS: &str = "secrets.toml";
const BOARD_HISTORY: &str = "history.jsonl";
const BOARD_CONSOLE: &str = "console.jsonl";
/// The state dir's boot files folder: the one place inside it that is served.
const FILES_DIR: &str = "files";

/// Mode for private keys and secrets.
pub const MODE_SECRET: u32 = 0o600;
/// Mode for public material (certificates, templates, registry entries).
pub const MODE_PUBLIC: u32 = 0o644;

impl StateDir {
    /// A state dir at `root` (nothing is created until something is written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ca/ca.crt`
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca/ca.crt")
    }
    /// `keys/ca.key`
    pub(in crate::store) fn ca_key(&self) -> PathBuf {
        self.root.join("keys/ca.key")
    }
    /// `ca/crl.pem`
    pub fn crl(&self) -> PathBuf {
        self.root.join("ca/crl.pem")
    }
    /// `ca/crlnumber`: the CRL sequence number, one decimal line.
    pub fn crl_number(&self) -> PathBuf {
        self.root.join("ca/crlnumber")
    }
    /// `server/server.crt`
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server/server.crt")
    }
    /// `server/server.key`
    pub(in crate::store) fn server_key(&self) -> PathBuf {
        self.root.join("server/server.key")
    }
    /// `server/server-ecdsa.crt`: the ECDSA P-256 chain, chosen for clients that offer ECDSA.
    pub fn server_ecdsa_cert(&self) -> PathBuf {
        self.root.join("server/server-ecdsa.crt")
    }
    /// `server/server-ecdsa.key`
    pub(in crate::store) fn server_ecdsa_key(&self) -> PathBuf {
        self.root.join("server/server-ecdsa.key")
    }
    /// `server/proxy.secret`: what nginx sends to prove it is the proxy (`nginx-config`).
    pub(in crate::store) fn proxy_secret(&self) -> PathBuf {
        self.root.join("server/proxy.secret")
    }
    /// `codesign/codesign.crt`: the signer of boot files (issued by the CA, codeSigning).
    pub fn codesign_cert(&self) -> PathBuf {
        self.root.join("codesign/codesign.crt")
    }
    /// `keys/codesign.key`
    pub(in crate::store) fn codesign_key(&self) -> PathBuf {
        self.root.join("keys/codesign.key")
    }
    /// `etc/config.toml`
    pub fn config(&self) -> PathBuf {
        self.root.join("etc/config.toml")
    }
    /// `boards/`
    pub(in crate::store) fn boards_dir(&self) -> PathBuf {
        self.root.join("boards")
    }
    /// `boards/NAME.toml`: the public registry entry.
    pub(in crate::store) fn board_file(&self, name: &BoardName) -> PathBuf {
        self.root
            .join("boards")
            .join(format!("{name}{BOARD_FILE_EXT}"))
    }
    /// `boards/NAME/`: the board's certificate, secrets, history and console log.
    pub(in crate::store) fn board_dir(&self, name: &BoardName) -> PathBuf {
        self.root.join("boards").join(name.as_str())
    }
    /// Whether `file` (a name inside `boards/`) is a board file, and whose.
    pub fn board_of_file(file: &str) -> Option<BoardName> {
        file.strip_suffix(BOARD_FILE_EXT)?.parse().ok()
    }
    /// `boards/NAME/cert.pem`
    pub(in crate::store) fn board_cert(&self, name: &BoardName) -> PathBuf {
        self.board_dir(name).join("cert.pem")
    }
    /// `keys/boards/NAME.key` (enrolled boards only; 0600).
    pub(in crate::store) fn board_key(&self, name: &BoardName) -> PathBuf {
        self.board_keys_dir().join(format!("{name}.key"))
    }

    /// `keys/`: every private key `serve` never needs (the CA's, the code signer's, the
    /// boards'), in a folder of their own so that the kernel can keep `serve` out of it.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// `keys/boards/`: one `NAME.key` per board whose key ipxe-ca made.
    pub(in crate::store) fn board_keys_dir(&self) -> PathBuf {
        self.keys_dir().join("boards")
    }

    /// `secure-boot/db.crt`: the certificate boards' firmware trusts in its db (Secure Boot).
    pub fn secure_boot_cert(&self) -> PathBuf {
        self.secure_boot_file("db", "crt")
    }

    /// `secure-boot/`: what an operator enrolls in a board's firmware.
    pub fn secure_boot_dir(&self) -> PathBuf {
        self.root.join("secure-boot")
    }

    /// `secure-boot/VAR.EXT`: one Secure Boot variable's certificate (`crt`, `cer`),
    /// signature list (`esl`) or authenticated update (`auth`).
    pub fn secure_boot_file(&self, var: &str, ext: &str) -> PathBuf {
        self.secure_boot_dir().join(format!("{var}.{ext}"))
    }

    /// `keys/secure-boot/db.key`: the key that signs EFI executables for Secure Boot (PK and
    /// KEK keys beside it, when `secure-boot init` made them).
    pub(in crate::store) fn secure_boot_key(&self) -> PathBuf {
        self.keys_dir().join("secure-boot/db.key")
    }

    /// Where `key` lives: for a program that reads it itself (nginx), confinement and
    /// messages. ipxe-ca reads and writes keys with [`StateDir::read_key`] and
    /// [`StateDir::write_key`].
    pub fn key_file(&self, key: Key) -> PathBuf {
        match key {
            Key::Ca => self.ca_key(),
            Key::ServerRsa => self.server_key(),
            Key::ServerEcdsa => self.server_ecdsa_key(),
            Key::CodeSigning => self.codesign_key(),
            Key::SecureBootDb => self.secure_boot_key(),
            Key::SecureBootKek => self.keys_dir().join("secure-boot/KEK.key"),
            Key::SecureBootPk => self.keys_dir().join("secure-boot/PK.key"),
            Key::ProxySecret => self.proxy_secret(),
        }
    }

    /// Whether the state dir holds `key`.
    pub fn has_key(&self, key: Key) -> bool {
        self.key_file(key).exists()
    }

    /// `key`'s bytes (PEM, or the proxy secret's hex).
    pub fn read_key(&self, key: Key) -> Result<Vec<u8>> {
        read(&self.key_file(key))
    }

    /// Keep `key` (0600, its folder 0700), atomically.
    pub fn write_key(&self, key: Key, data: &[u8]) -> Result<()> {
        write_atomic(&self.key_file(key), data, MODE_SECRET)
    }

    /// The folders `serve` reads (and, for `boards/`, writes history into): everything it
    /// serves from the state dir or reloads while running, and nothing else.
    pub fn served_dirs(&self) -> Vec<PathBuf> {
        [
            "ca",
            "codesign",
            "secure-boot",
            "server",
            "boards",
            "index",
            "profiles",
            "secrets",
            "etc",
        ]
        .iter()
        .map(|d| self.root.join(d))
        .collect()
    }

    /// The one served folder `serve` writes in: each board's history and console log.
    pub fn journal_dir(&self) -> PathBuf {
        self.boards_dir()
    }

    /// The folders a board's boot script is rendered from (its entry, its folder with its
    /// secrets, the profiles, `config.toml`'s): a change in any makes a kept script stale.
    pub fn script_inputs(&self, name: &BoardName) -> [PathBuf; 4] {
        [
            self.boards_dir(),
            self.board_dir(name),
            self.profiles_dir(),
            self.root.clone(),
        ]
    }

    /// Create the folders boards are kept in (0700: keys live there).
    pub fn create_board_folders(&self) -> Result<()> {
        create_dir_private(&self.boards_dir())?;
        create_dir_private(&self.board_keys_dir())
    }

    /// `boards/NAME/secrets.toml` (0600).
    pub(in crate::store) fn board_secrets(&self, name: &BoardName) -> PathBuf {
        self.board_dir(name).join(BOARD_SECRETS)
    }
    /// `boards/NAME/history.jsonl`: the board's recent boots and refusals, bounded.
    pub(in crate::store) fn board_history(&self, name: &BoardName) -> PathBuf {
        self.board_dir(name).join(BOARD_HISTORY)
    }
    /// `boards/NAME/console.jsonl`: what the board's own console said, bounded.
    pub(in crate::store) fn board_console(&self, name: &BoardName) -> PathBuf {
        self.board_dir(name).join(BOARD_CONSOLE)
    }
    /// Whether a file name in a board's folder is its history or console log, or a rewrite of
    /// one in progress ([`write_atomic`]'s temporary name): what the history writer touches
    /// and nothing else reads while serving.
    pub fn is_history_file(name: &[u8]) -> bool {
        [BOARD_HISTORY, BOARD_CONSOLE].iter().any(|h| {
            let h = h.as_bytes();
            name == h
                || name
                    .strip_prefix(b".")
                    .and_then(|n| n.strip_prefix(h))
                    .is_some_and(|n| n.starts_with(b".tmp"))
        })
    }
    /// `index/KIND/`: one tiny file per fingerprint or serial naming the board.
    pub(in crate::store) fn index_dir(&self, kind: &str) -> PathBuf {
        self.root.join("index").join(kind)
    }
    /// `index/KIND/VALUE`
    pub(in crate::store) fn index_file(&self, kind: &str, value: &str) -> PathBuf {
        self.index_dir(kind).join(value)
    }
    /// `profiles/`
    pub fn profiles_dir(&self) -> PathBuf {
        self.root.join("profiles")
    }
    /// `profiles/NAME.ipxe`: a board's boot script template.
    pub fn profile(&self, name: &ProfileName) -> PathBuf {
        self.profiles_dir().join(format!("{name}.ipxe"))
    }
    /// `secrets/`: one-time secret templates.
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    /// `secrets/NAME`: a one-time secret template (`name` checked by `validate_name`).
    pub fn secret_template(&self, name: &str) -> Result<PathBuf> {
        crate::types::validate_name(name, "secret template name")?;
        Ok(self.secrets_dir().join(name))
    }
    /// `ipxe-scripts/embed.ipxe`: the script compiled into images.
    pub fn embed_script(&self) -> PathBuf {
        self.root.join("ipxe-scripts/embed.ipxe")
    }
    /// `.gitignore`: keeps keys and secrets out of a git-tracked state dir.
    pub fn gitignore(&self) -> PathBuf {
        self.root.join(".gitignore")
    }
    /// `cache/ipxe-trees/`: private copies of iPXE trees, built once per farm.
    pub fn ipxe_trees(&self) -> PathBuf {
        self.root.join("cache/ipxe-trees")
    }
    /// `files/`: default root of the plain-HTTP boot files.
    pub fn files_dir(&self) -> PathBuf {
        self.root.join(FILES_DIR)
    }
    /// `out/`: default output of `build`.
    pub fn out_dir(&self) -> PathBuf {
        self.root.join("out")
    }

    /// Take the exclusive lock that serialises every command that writes state.
    /// It is released when the guard drops (or the process dies).
    pub fn lock(&self) -> Result<StateLock> {
        create_dir_private(&self.root)?;
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(MODE_SECRET)
            .open(&path)
            .map_err(|e| Error::io("cannot open lock file", &path, e))?;
        file.lock()
            .map_err(|e| Error::io("cannot lock", &path, e))?;
        Ok(StateLock { _file: file })
    }

    /// Bring a state dir written by an older ipxe-ca to today's layout: private keys into
    /// `keys/` (`ca/ca.key`, `codesign/codesign.key`, `boards/NAME/key.pem`) and
    /// `config.toml` into `etc/`, so that `serve` can be confined to the folders it reads.
    /// Returns what moved (nothing, and no lock taken, for a current state dir). A move
    /// interrupted half-way is finished by the next call.
    pub fn upgrade_layout(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let old_config = self.root.join("config.toml");
        let current = !self.root.join("ca").exists() || self.board_keys_dir().is_dir();
        if current && !old_config.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.lock()?;
        let mut moved = Vec::new();
        let mut mv = |from: PathBuf, to: PathBuf| -> Result<()> {
            if fs::symlink_metadata(&from).is_err() || fs::symlink_metadata(&to).is_ok() {
                return Ok(());
            }
            if let Some(dir) = to.parent() {
                create_dir_private(dir)?;
            }
            fs::rename(&from, &to).map_err(|e| Error::io("cannot move", &from, e))?;
            moved.push((from, to));
            Ok(())
        };
        if !self.board_keys_dir().is_dir() {
            // Into a folder of their own first, named `boards` once every key is in: a state
            // dir with `keys/boards/` has no board key left in `boards/`.
            let partial = self.keys_dir().join(".boards.partial");
            create_dir_private(&partial)?;
            if let Ok(rd) = fs::read_dir(self.boards_dir()) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Ok(board) = name.parse::<BoardName>() {
                        mv(
                            e.path().join(BOARD_KEY),
                            partial.join(format!("{board}.key")),
                        )?;
                    }
                }
            }
            mv(self.root.join("ca/ca.key"), self.ca_key())?;
            mv(self.root.join("codesign/codesign.key"), self.codesign_key())?;
            fs::rename(&partial, self.board_keys_dir())
                .map_err(|e| Error::io("cannot move", &partial, e))?;
        }
        mv(old_config, self.config())?;
        if let Ok(d) = File::open(&self.root) {
            let _ = d.sync_all();
        }
        Ok(moved)
    }

    /// Whether a CA exists here.
    pub fn has_ca(&self) -> bool {
        self.ca_cert().exists() || self.ca_key().exists()
    }

    /// The state dir, refusing one without a CA (what every command but `init` needs).
    pub fn require_ca(&self) -> Result<()> {
        if self.has_ca() {
            Ok(())
        } else {
            Err(Error::NoCa(self.root.clone()))
        }
    }

    /// The CRL's sequence number; an error if the file is missing or broken (a CRL number
    /// must only ever grow, so it is never guessed).
    pub fn read_crl_number(&self) -> Result<u64> {
        let p = self.crl_number();
        let text = read_to_string(&p)?;
        text.trim().parse::<u64>().map_err(|_| Error::Parse {
            path: p,
            detail: format!("expected one decimal number, found {:?}", text.trim()),
        })
    }

    /// `quarantine/`: what a repair or an enroll moved aside instead of deleting it (a
    /// leftover folder may hold a key that is the only copy).
    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// Move `path` (inside the state dir) into `quarantine/`, under a name that says when and
    /// what it was; returns where it went. Nothing is deleted.
    pub fn quarantine(&self, path: &Path) -> Result<PathBuf> {
        let q = self.quarantine_dir();
        create_dir_private(&q)?;
        let what = path
            .strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('/', "-");
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        for n in 0..1000 {
            let dest = match n {
                0 => q.join(format!("{stamp}-{what}")),
                n => q.join(format!("{stamp}-{what}.{n}")),
            };
            if fs::symlink_metadata(&dest).is_ok() {
                continue;
            }
            fs::rename(path, &dest)
                .map_err(|e| Error::io("cannot move to the quarantine folder", path, e))?;
            return Ok(dest);
        }
        Err(Error::invalid(format!(
            "{}: too many entries of that name in the quarantine folder; empty it",
            q.display()
        )))
    }

    /// The name of the files folder inside the state dir (`files`): the one folder in it whose
    /// contents are served.
    pub fn files_name() -> &'static str {
        FILES_DIR
    }

    /// Whether a file with this device and inode has another name in the state dir outside
    /// `files/` (a hard link to a key, a secret, the proxy secret or a record). Walks the
    /// state dir: meant for the rare file with more than one link.
    pub fn has_link_to(&self, id: (u64, u64)) -> bool {
        fn walk(dir: &Path, id: (u64, u64), depth: usize, skip: Option<&str>) -> bool {
            let Ok(rd) = fs::read_dir(dir) else {
                return false;
            };
            for e in rd.flatten() {
                if skip.is_some_and(|s| e.file_name() == s) {
                    continue;
                }
                let Ok(m) = fs::symlink_metadata(e.path()) else {
                    continue;
                };
                if m.is_file() && identity_of(&m) == id {
                    return true;
                }
                if m.is_dir() && depth > 0 && walk(&e.path(), id, depth - 1, None) {
                    return true;
                }
            }
            false
        }
        walk(&self.root, id, 4, Some(FILES_DIR))
    }
}

/// File names that are key material or secrets wherever they are found.
pub fn is_secret_name(name: &str) -> bool {
    name.ends_with(".key") || name == BOARD_KEY || name == BOARD_SECRETS
}

/// A build's output directory (`build --out`, default `DIR/out`): one folder per board.
#[derive(Clone, Debug)]
pub struct OutDir {
    root: PathBuf,
}

impl OutDir {
    /// The output directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        OutDir { root: root.into() }
    }
    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `OUT/BOARD/`: the board's images (0700: they hold its key).
    pub fn board_dir(&self, name: &BoardName) -> PathBuf {
        self.root.join(name.as_str())
    }
    /// `OUT/BOARD/manifest.json`: what was built, from what, with which hashes.
    pub fn manifest(&self, name: &BoardName) -> PathBuf {
        self.board_dir(name).join("manifest.json")
    }
    /// `OUT/.ipxe-ca-images`: says "build output, holds keys" to `serve`.
    pub fn marker(&self) -> PathBuf {
        self.root.join(OUT_MARKER)
    }
    /// `OUT/.stage/`: per-run staging of a build, removed after it.
    pub fn stage(&self) -> PathBuf {
        self.root.join(".stage")
    }
}

/// Held while a command modifies the state dir.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Create a directory (and missing parents) with mode 0700; existing ones are left as they are.
pub fn create_dir_private(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("cannot create directory", dir, e))
}

/// Write a file atomically: temp file in the same directory, fsync, rename, fsync the directory.
/// Readers see the old or the new content, never a torn one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::invalid(format!("{} has no parent directory", path.display())))?;
    create_dir_private(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and per call: threads of one process may write the same path.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{file_name}.tmp{}-{seq}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("cannot create", &tmp, e))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("cannot set mode on", &tmp, e))?;
        f.write_all(data)
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        f.sync_all()
            .map_err(|e| Error::io("cannot fsync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename into place", path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write a file only if it does not exist yet (templates an operator may have edited).
pub fn write_if_absent(path: &Path, data: &[u8], mode: u32) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    write_atomic(path, data, mode)?;
    Ok(true)
}

/// Read a file as text, with the path in the error.
pub fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io("cannot read", path, e))
}

/// Read a file as bytes, with the path in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io("cannot read", path, e))
}

/// Which version of a file: a new file, a rename, a rewrite or a truncation all change it.
/// What the server compares to reload a CRL, certificates or a template only when they change.
pub type FileVersion = (u64, u64, Option<std::time::SystemTime>, u64);

/// The version of a file from its metadata.
pub fn version_of(m: &fs::Metadata) -> FileVersion {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.modified().ok(), m.size())
}

/// The version of the file at `path`, if there is one.
pub fn file_version(path: &Path) -> Option<FileVersion> {
    fs::metadata(path).ok().map(|m| version_of(&m))
}

/// The version of the file at `path`; None if there is none. Unlike [`file_version`], a file
/// that cannot be looked at is an error, not a missing file.
pub fn existing_version(path: &Path) -> Result<Option<FileVersion>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(version_of(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// What a path names now (device, inode, through any symlink): whether a folder is still the
/// one a process has open files or watches in. None when nothing is there.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| identity_of(&m))
}

/// The same, of something already opened or looked at.
pub fn identity_of(m: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// A file's text with the version it was read at (the same open file: a rename between the
/// two cannot pair one version with another's bytes). None: there is no such file.
pub fn read_versioned(path: &Path) -> Result<Option<(FileVersion, String)>> {
    use std::io::Read;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| Error::io("cannot read", path, e))?;
    let mut text = String::with_capacity(meta.len() as usize);
    f.read_to_string(&mut text)
        .map_err(|e| Error::io("cannot read", path, e))?;
    Ok(Some((version_of(&meta), text)))
}

/// Parse the TOML text of the file at `path`, with the path in the error.
pub fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| Error::Parse {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("sub/k.pem");
        write_atomic(&p, b"one", MODE_SECRET).unwrap();
        write_atomic(&p, b"two", MODE_SECRET).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dm = fs::metadata(p.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dm & 0o777, 0o700);
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
