//! `/files/PATH`: boot files over plain HTTP, streamed, with single-range support.
//! Paths are checked segment by segment and again after resolving symlinks, so nothing
//! outside the files root (and nothing of the state dir's keys) is ever served.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE,
};
use hyper::{Method, Request, Response, StatusCode};

use super::metrics::FileReads;
use super::response::{full, Body};
use super::verdict::Outcome;
use crate::store::state::StateDir;

/// Boot files without a current signature are served, but never silently: imgverify on the
/// boards will refuse them.
pub(crate) fn warn_unsigned(files_root: &std::path::Path) {
    use crate::codesign::SigStatus;
    match crate::codesign::check(files_root, None) {
        Ok(report) => {
            for (status, what) in [
                (SigStatus::Missing, "no signature"),
                (SigStatus::Stale, "a stale signature (changed since signed)"),
            ] {
                let names: Vec<&str> = report
                    .iter()
                    .filter(|f| f.status == status)
                    .map(|f| f.path.as_str())
                    .collect();
                if !names.is_empty() {
                    super::log::say(&format!(
                        "ipxe-ca: warning: {} boot file(s) with {what}: {}; boards that verify \
(imgverify) will refuse them: run `ipxe-ca sign-files`",
                        names.len(),
                        names.join(", ")
                    ));
                }
            }
        }
        Err(e) => super::log::say(&format!(
            "ipxe-ca: warning: cannot check boot file signatures: {e}"
        )),
    }
}

/// Decode `%XX` escapes; `None` for malformed escapes or non-UTF-8 results.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The relative path a request names, or why it is refused.
fn request_path(raw: &str) -> Result<String, (StatusCode, &'static str)> {
    const BAD: (StatusCode, &str) = (StatusCode::BAD_REQUEST, "bad path");
    let decoded = percent_decode(raw).ok_or(BAD)?;
    if decoded.contains(['\0', '\\']) {
        return Err(BAD);
    }
    // An empty path or a leading '/' is an empty segment.
    if decoded
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(BAD);
    }
    // Dot-names are ipxe-ca's bookkeeping (signature index, build staging), never boot files.
    if decoded.split('/').any(|seg| seg.starts_with('.')) {
        return Err((StatusCode::FORBIDDEN, "dot-names are never served"));
    }
    let name = decoded.rsplit('/').next().unwrap_or_default();
    if crate::store::state::is_secret_name(name) {
        return Err((StatusCode::FORBIDDEN, "key material is never served"));
    }
    Ok(decoded)
}

/// The boot files folder by the path `serve` was given, which a symlink may point elsewhere
/// while it runs (a rollout of new kernels): each request opens it by that path, and a folder
/// it has not named before is judged, by the descriptor opened, before anything in it is
/// served.
pub(crate) struct FilesRoot {
    given: PathBuf,
    state: PathBuf,
    checked: std::sync::Mutex<Checked>,
    /// Which EFI executables the firmware of a Secure Boot farm would refuse.
    secure_boot: crate::secure_boot::Seen,
}

/// Device and inode: what a folder is, whatever path names it.
type Id = (u64, u64);

/// A folder the given path named, with its verdict.
#[derive(Clone)]
struct Checked {
    id: Id,
    /// Its real path when it was judged (for messages and the signature index).
    root: PathBuf,
    /// The threads that open files beneath it, confined to it by the kernel. None: it holds
    /// or sits among key material, and nothing in it is served.
    opener: Option<std::sync::Arc<super::sandbox::Opener>>,
}

impl Checked {
    /// Say which boot files have no current signature, read on the folder's own threads (the
    /// only ones the kernel lets read it).
    fn warn_unsigned(&self) {
        if let Some(o) = &self.opener {
            let root = self.root.clone();
            if let Err(e) = o.run(move || warn_unsigned(&root)) {
                super::log::say(&format!(
                    "ipxe-ca: warning: cannot check boot file signatures: {e}"
                ));
            }
        }
    }
}

impl FilesRoot {
    /// Say which boot files have no current signature (at start).
    pub(crate) fn warn_unsigned(&self) {
        self.lock().clone().warn_unsigned();
    }

    /// Check the folder `given` names now; one that holds key material is an error, as is
    /// none at all.
    pub(crate) fn new(given: &Path, state: &Path) -> crate::error::Result<FilesRoot> {
        let missing = |e| {
            crate::error::Error::io(
                "files directory missing (create it, or serve another one)",
                given,
                e,
            )
        };
        let dir = open_dir(given).map_err(missing)?;
        let checked = Self::check(&dir, state).map_err(missing)?;
        if checked.opener.is_none() {
            return Err(crate::error::Error::FilesHoldKeys(checked.root.clone()));
        }
        if let Some(o) = &checked.opener {
            super::log::say(&confinement_note(o, &checked.root));
        }
        Ok(FilesRoot {
            given: given.to_path_buf(),
            state: state.to_path_buf(),
            checked: std::sync::Mutex::new(checked),
            secure_boot: crate::secure_boot::Seen::new(&StateDir::new(state)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Checked> {
        self.checked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Judge the folder `dir` is (never a path, which may name another folder by now).
    fn check(dir: &std::fs::File, state: &Path) -> std::io::Result<Checked> {
        let id = id_of(dir)?;
        let root = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .unwrap_or_else(|_| PathBuf::from("(files directory)"));
        let marks = StateMarks::read(state, true)?;
        let refused = marks.around.contains(&id) || refusal(dir, &marks)?.is_some();
        let opener = if refused {
            None
        } else {
            Some(std::sync::Arc::new(super::sandbox::Opener::confined_to(
                dir,
            )?))
        };
        Ok(Checked { id, root, opener })
    }

    /// The folder to open a request's file beneath, now. A folder not seen before is checked
    /// first (and said in the log).
    fn open(&self) -> std::io::Result<(std::fs::File, Checked)> {
        let dir = open_dir(&self.given)?;
        let id = id_of(&dir)?;
        let known = self.lock().clone();
        if known.id == id {
            return Ok((dir, known));
        }
        let checked = Self::check(&dir, &self.state)?;
        let first = {
            let mut cur = self.lock();
            let first = cur.id != checked.id;
            *cur = checked.clone();
            first
        };
        // Said once per folder, outside the lock: the signature check reads every file.
        if first {
            super::log::say(&match &checked.opener {
                None => format!(
                    "ipxe-ca: {} now names {}, which holds key material: no boot file is \
                     served from it (point it at a folder of boot files only)",
                    self.given.display(),
                    checked.root.display()
                ),
                Some(o) => format!(
                    "ipxe-ca: boot files are now served from {}; {}",
                    checked.root.display(),
                    confinement_note(o, &checked.root)
                ),
            });
            checked.warn_unsigned();
        }
        Ok((dir, checked))
    }
}

fn confinement_note(o: &super::sandbox::Opener, root: &Path) -> String {
    if o.confined {
        format!(
            "ipxe-ca: boot files are opened by threads the kernel confines to {} (Landlock)",
            root.display()
        )
    } else {
        "ipxe-ca: warning: this kernel has no Landlock: boot files are opened without the \
         kernel's confinement (the checks by descriptor still apply)"
            .to_string()
    }
}

/// A folder by path, whatever it names now; a FIFO or other non-folder is refused without
/// blocking.
fn open_dir(p: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    Ok(std::fs::File::from(rustix::fs::open(
        p,
        flags,
        Mode::empty(),
    )?))
}

fn id_of(fd: impl rustix::fd::AsFd) -> std::io::Result<Id> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// What the state dir is now, by device and inode.
struct StateMarks {
    root: Id,
    /// Its `files` folder: the one place inside it that is served.
    files: Option<Id>,
    /// The state root and every folder above it (a files root that is one of them holds it).
    around: Vec<Id>,
}

impl StateMarks {
    fn read(state: &Path, around: bool) -> std::io::Result<StateMarks> {
        use rustix::fs::{AtFlags, FileType, Mode, OFlags};
        let fd = rustix::fs::open(
            state,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let root = id_of(&fd)?;
        let files = rustix::fs::statat(&fd, StateDir::files_name(), AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .filter(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            .map(|st| (st.st_dev, st.st_ino));
        let mut ids = vec![root];
        if around {
            let mut cur = fd;
            for _ in 0..MAX_DEPTH {
                let up = parent(&cur)?;
                let id = id_of(&up)?;
                if ids.last() == Some(&id) {
                    break;
                }
                ids.push(id);
                cur = up;
            }
        }
        Ok(StateMarks {
            root,
            files,
            around: ids,
        })
    }
}

/// Folders deeper than this are refused rather than walked.
const MAX_DEPTH: usize = 256;

fn parent(fd: impl rustix::fd::AsFd) -> std::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(fd, "..", flags, Mode::empty())?)
}

/// Why nothing beneath the folder `dir` is served, walking up from it by descriptor: it lies
/// in a build's output (a marker on the way up), or inside the state dir anywhere but its
/// `files` folder. None: it may be served from.
fn refusal(
    dir: impl rustix::fd::AsFd,
    state: &StateMarks,
) -> std::io::Result<Option<&'static str>> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let mut cur = rustix::fs::openat(
        dir,
        ".",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut below: Option<Id> = None;
    for _ in 0..MAX_DEPTH {
        let id = id_of(&cur)?;
        if rustix::fs::statat(
            &cur,
            crate::store::state::OUT_MARKER,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .is_ok()
        {
            return Ok(Some("a build's images"));
        }
        if id == state.root && (below.is_none() || below != state.files) {
            return Ok(Some("the state dir"));
        }
        let up = parent(&cur)?;
        if id_of(&up)? == id {
            return Ok(None); // the file system's root
        }
        below = Some(id);
        cur = up;
    }
    Ok(Some("too deep to check"))
}

/// Open `rel` beneath the folder `dir` so that what was checked is what is read (a name
/// checked and then opened again can be swapped for a symlink in between), with the folder the
/// file really lies in. The kernel resolves the folders and refuses anything that leaves
/// `dir`; a symlinked file (`vmlinuz -> vmlinuz-6.1`) is followed here, one link at a time and
/// beneath `dir` too, so that its real folder is known.
pub(crate) fn open_beneath(
    dir: &std::fs::File,
    rel: &str,
) -> std::io::Result<(std::fs::File, rustix::fd::OwnedFd)> {
    use rustix::fs::OFlags;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let refuse = |e: rustix::io::Errno| std::io::Error::from(e);
    let mut path = rel.to_string();
    for _ in 0..MAX_LINKS {
        let (head, base) = path.rsplit_once('/').unwrap_or((".", path.as_str()));
        if matches!(base, "" | "." | "..") {
            return Err(refuse(rustix::io::Errno::XDEV));
        }
        let (parent, beneath) = open_folder_beneath(dir, head)?;
        match rustix::fs::readlinkat(&parent, base, Vec::new()) {
            Ok(target) => {
                // Without openat2 no symlink is followed at all.
                let target = target
                    .into_string()
                    .map_err(|_| refuse(rustix::io::Errno::LOOP))?;
                if !beneath {
                    return Err(refuse(rustix::io::Errno::LOOP));
                }
                if target.starts_with('/') {
                    return Err(refuse(rustix::io::Errno::XDEV));
                }
                path = if head == "." {
                    target
                } else {
                    format!("{head}/{target}")
                };
            }
            Err(_) => {
                let fd = rustix::fs::openat(
                    &parent,
                    base,
                    flags | OFlags::NOFOLLOW,
                    rustix::fs::Mode::empty(),
                )?;
                return Ok((std::fs::File::from(fd), parent));
            }
        }
    }
    Err(refuse(rustix::io::Errno::LOOP))
}

/// Symlinks followed for one request before it is refused.
const MAX_LINKS: usize = 8;

/// The folder `rel` names beneath `dir`, and whether the kernel could confine the walk
/// (`openat2`; false: each component opened without following any symlink).
fn open_folder_beneath(
    dir: &std::fs::File,
    rel: &str,
) -> std::io::Result<(rustix::fd::OwnedFd, bool)> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match rustix::fs::openat2(
        dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok((fd, true)),
        Err(rustix::io::Errno::NOSYS) => Ok((open_each_component(dir, rel, flags)?, false)),
        Err(e) => Err(e.into()),
    }
}

/// What a failed open tells the board: the kernel's refusals to leave the files dir are
/// 403s that say so, anything else a 404.
fn open_refusal(e: &std::io::Error) -> (StatusCode, &'static str) {
    match rustix::io::Errno::from_io_error(e) {
        Some(rustix::io::Errno::LOOP) => {
            (StatusCode::FORBIDDEN, "symbolic links are never followed")
        }
        Some(rustix::io::Errno::XDEV) => (StatusCode::FORBIDDEN, "outside the files directory"),
        _ => (StatusCode::NOT_FOUND, "not found"),
    }
}

/// `open_beneath` for kernels before 5.6 (or behind a seccomp filter that hides `openat2`):
/// one component at a time, no symlink followed at all. `rel` has no `..` (`request_path`).
fn open_each_component(
    dir: &std::fs::File,
    rel: &str,
    flags: rustix::fs::OFlags,
) -> rustix::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let flags = flags | OFlags::NOFOLLOW;
    let dir_flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = rustix::fs::openat(dir, ".", dir_flags, Mode::empty())?;
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let f = if i + 1 == parts.len() {
            flags
        } else {
            dir_flags
        };
        cur = rustix::fs::openat(&cur, *part, f, Mode::empty())?;
    }
    Ok(cur)
}

/// Key material is never served, whatever it is called or linked as: a private key by its
/// content, or a file with another name in the state dir (a hard link to a key, a secret or
/// the proxy secret).
fn is_key_material(file: &std::fs::File, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; 64 * 1024];
    let n = file.read_at(&mut head, 0).unwrap_or(0);
    crate::codesign::looks_like_key(&head[..n], meta.len())
}

/// A file that has another name inside the state dir (outside its `files` folder).
fn linked_into_state(meta: &std::fs::Metadata, state_root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.nlink() > 1
        && StateDir::new(state_root).has_link_to(crate::store::state::identity_of(meta))
}

/// What the log says of a boot file (or its `.sig`) served without a current signature.
fn signature_note(root: &Path, rel: &str) -> Option<String> {
    use crate::codesign::{Index, SigStatus};
    let file = rel.strip_suffix(".sig").unwrap_or(rel);
    let status = Index::load(root)
        .map(|i| i.status(root, file))
        .unwrap_or(SigStatus::Missing);
    match status {
        SigStatus::Current => None,
        SigStatus::Stale => Some(format!(
            "{file} changed since it was signed: imgverify refuses it (ipxe-ca sign-files)"
        )),
        SigStatus::Missing => Some(format!("{file} has no signature (ipxe-ca sign-files)")),
    }
}

/// Parse a single `bytes=` range against a length: `Ok(None)` means the whole file.
fn parse_range(h: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // Multiple ranges: answer with the whole file, which RFC 9110 allows.
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.checked_sub(1).ok_or(())?)
        }
        (s, "") => (s.parse().map_err(|_| ())?, len.checked_sub(1).ok_or(())?),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            (s, e.min(len.saturating_sub(1)))
        }
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn refuse(status: StatusCode, why: &str, out: &mut Outcome) -> Response<Body> {
    out.note = Some(why.to_string());
    let body = format!("{why}\n");
    out.bytes = body.len() as u64;
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r
}

/// A frame of a file sent over TLS. rustls gathers the records of several frames for one write
/// (`tls::SEND_BUFFER`), so a bigger frame would only hold more memory per download: at 256
/// KiB, 256 full boots at once peaked at 117 MB against 46 MB at 64 KiB, for the same CPU.
const TLS_FRAME: usize = 64 * 1024;
/// Over plain HTTP a frame is what one write hands the socket: bigger writes, fewer of them
/// (1.5× nginx's `sendfile` rate at this size, 1.1× at 64 KiB).
const PLAIN_FRAME: usize = 256 * 1024;

/// Frame buffers that hyper has finished with, for the next frames of the same response: a
/// kernel goes out through two or three buffers instead of an allocation (and 64 page faults)
/// per frame.
#[derive(Clone)]
struct Spare {
    bufs: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    frame: usize,
}

impl Spare {
    fn new(frame: usize) -> Spare {
        Spare {
            bufs: Default::default(),
            frame,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.bufs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_else(|| vec![0; self.frame])
    }
}

/// A frame's bytes, returned to its response's [`Spare`] when hyper drops them.
struct Sent {
    buf: Vec<u8>,
    len: usize,
    spare: Spare,
}

impl AsRef<[u8]> for Sent {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        let mut spare = self.spare.lock();
        if spare.len() < 2 {
            spare.push(std::mem::take(&mut self.buf));
        }
    }
}

/// Reads `buf.len()` bytes (or fewer) at `offset`: straight from the page cache on the event
/// loop when the bytes are there (`RWF_NOWAIT`, as nginx reads a cached file), on the blocking
/// pool otherwise. `nowait` turns false for good on a file system that cannot say.
async fn read_frame(
    file: &std::sync::Arc<std::fs::File>,
    mut buf: Vec<u8>,
    offset: u64,
    nowait: &mut bool,
    reads: &FileReads,
) -> std::io::Result<(Vec<u8>, usize)> {
    use rustix::io::{Errno, ReadWriteFlags};
    use std::sync::atomic::Ordering::Relaxed;
    let counter = if *nowait {
        let got = rustix::io::preadv2(
            &**file,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            offset,
            ReadWriteFlags::NOWAIT,
        );
        match got {
            // 0 is the end of the file: nothing cached is EAGAIN.
            Ok(n) => {
                reads.page_cache.fetch_add(1, Relaxed);
                return Ok((buf, n));
            }
            Err(Errno::AGAIN) => &reads.storage,
            Err(Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                *nowait = false;
                &reads.unchecked
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        &reads.unchecked
    };
    counter.fetch_add(1, Relaxed);
    let file = file.clone();
    tokio::task::spawn_blocking(move || {
        let n = std::os::unix::fs::FileExt::read_at(&*file, &mut buf, offset)?;
        Ok((buf, n))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// `count` bytes of `file` from `start` as hyper frames, read straight into buffers that are
/// handed back once sent (tokio's `File` would read into a buffer of its own and copy, one
/// more pass over every byte of a kernel or initrd).
fn frames(
    file: std::fs::File,
    start: u64,
    count: u64,
    frame: usize,
    reads: std::sync::Arc<FileReads>,
) -> Body {
    let file = std::sync::Arc::new(file);
    let spare = Spare::new(frame);
    let chunks = futures_util::stream::try_unfold(
        (start, count, true),
        move |(offset, left, mut nowait)| {
            let (file, spare, reads) = (file.clone(), spare.clone(), reads.clone());
            async move {
                if left == 0 {
                    return Ok(None);
                }
                let mut buf = spare.take();
                // A shorter buffer (the end of an earlier read) is zeroed only where it grows.
                buf.resize(left.min(frame as u64) as usize, 0);
                let (buf, len) = read_frame(&file, buf, offset, &mut nowait, &reads).await?;
                if len == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was being sent",
                    ));
                }
                let frame = bytes::Bytes::from_owner(Sent { buf, len, spare });
                Ok(Some((
                    Frame::data(frame),
                    (offset + len as u64, left - len as u64, nowait),
                )))
            }
        },
    );
    StreamBody::new(chunks).boxed()
}

/// `tls`: the response goes out through rustls (smaller frames, see [`TLS_FRAME`]).
pub(crate) async fn serve(
    raw: &str,
    req: &Request<Incoming>,
    tls: bool,
    (files, reads): (&std::sync::Arc<FilesRoot>, &std::sync::Arc<FileReads>),
    out: &mut Outcome,
) -> Response<Body> {
    let method = req.method();
    if method != Method::GET && method != Method::HEAD {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "use GET or HEAD", out);
    }
    let rel = match request_path(raw) {
        Ok(p) => p,
        Err((status, why)) => return refuse(status, why, out),
    };
    let files = files.clone();
    // The checks read the file's head, the signature index and stat the folders: the
    // blocking pool's work too.
    let opened = tokio::task::spawn_blocking(move || {
        let (dir, root) = files.open()?;
        let Some(opener) = root.opener.clone() else {
            return Ok(None);
        };
        let state = files.state.clone();
        let trust = files.secure_boot.trust(&StateDir::new(&files.state));
        let files2 = files.clone();
        // Opened, and judged by what was opened, on a thread the kernel confines to the folder
        // (which is also the only one that can read its signature index).
        let (f, m, secret, note) = opener.run(move || {
            let (f, parent) = open_beneath(&dir, &rel)?;
            let m = f.metadata()?;
            let secret = m.is_file()
                && (is_key_material(&f, &m)
                    || StateMarks::read(&state, false)
                        .and_then(|marks| refusal(&parent, &marks))
                        .map_or(true, |r| r.is_some()));
            let mut note = (m.is_file() && !secret)
                .then(|| signature_note(&root.root, &rel))
                .flatten();
            if let Some(t) = trust.filter(|_| m.is_file() && !secret) {
                if files2.secure_boot.refused(&t, &f, &m) {
                    let sb = format!(
                        "{rel} is not signed by the farm's Secure Boot key: firmware with \
                         Secure Boot on refuses it (ipxe-ca sign-files)"
                    );
                    note = Some(note.map_or(sb.clone(), |n| format!("{n}; {sb}")));
                }
            }
            Ok::<_, std::io::Error>((f, m, secret, note))
        })??;
        // The state dir is walked here: the confined thread cannot list it.
        let secret = secret || (m.is_file() && linked_into_state(&m, &files.state));
        Ok::<_, std::io::Error>(Some((f, m, secret, note)))
    })
    .await;
    let (std_file, meta, secret, note) = match opened {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "the files directory holds key material",
                out,
            )
        }
        Ok(Err(e)) => {
            let (status, why) = open_refusal(&e);
            return refuse(status, why, out);
        }
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "open failed", out),
    };
    if !meta.is_file() {
        return refuse(StatusCode::NOT_FOUND, "not a file", out);
    }
    if secret {
        return refuse(StatusCode::FORBIDDEN, "key material is never served", out);
    }
    out.note = note;
    let len = meta.len();
    let range = match req.headers().get(RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(h) => match parse_range(h, len) {
            Ok(r) => r,
            Err(()) => {
                let mut r = refuse(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range not satisfiable",
                    out,
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(CONTENT_RANGE, v);
                }
                return r;
            }
        },
    };
    let (start, count, status) = match range {
        Some((s, e)) => (s, e - s + 1, StatusCode::PARTIAL_CONTENT),
        None => (0, len, StatusCode::OK),
    };
    let body = if method == Method::HEAD {
        full(bytes::Bytes::new())
    } else {
        out.bytes = count;
        let frame = if tls { TLS_FRAME } else { PLAIN_FRAME };
        frames(std_file, start, count, frame, reads.clone())
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(count));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{len}", start, start + count - 1))
        {
            h.insert(CONTENT_RANGE, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=5-1", 100), Err(()));
        assert_eq!(parse_range("bytes=5-5", 100), Ok(Some((5, 5))), "one byte");
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
    }

    proptest::proptest! {
        #[test]
        fn ranges_of_any_header_stay_inside_the_file(h in "\\PC{0,40}", len in 0u64..1_000_000) {
            if let Ok(Some((a, b))) = parse_range(&h, len) {
                proptest::prop_assert!(a <= b && b < len);
            }
        }

        #[test]
        fn percent_decoding_inverts_encoding(s in "\\PC{0,60}") {
            let enc: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
            proptest::prop_assert_eq!(percent_decode(&enc), Some(s.clone()));
            let _ = percent_decode(&s);
        }

        #[test]
        fn accepted_request_paths_stay_beneath_the_root(raw in "[a-zA-Z0-9./%_-]{0,60}") {
            if let Ok(p) = request_path(&raw) {
                proptest::prop_assert!(!p.starts_with('/'));
                proptest::prop_assert!(p.split('/').all(|seg| !seg.is_empty() && !seg.starts_with('.')));
                proptest::prop_assert!(!p.contains('\0') && !p.contains('\\'));
            }
        }
    }

    /// A files dir with `a/b/c.txt`, a FIFO, and symlinks inside it.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/b/c.txt"), "inside").unwrap();
        std::os::unix::fs::symlink("b", t.path().join("a/link")).unwrap();
        std::os::unix::fs::symlink("b/c.txt", t.path().join("a/file-link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        t
    }

    #[test]
    fn a_fifo_in_the_files_dir_never_blocks_the_open() {
        let t = tree();
        let root = t.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        // Without O_NONBLOCK this open waits for a writer forever (a blocking-pool thread
        // lost per request).
        std::thread::spawn(move || {
            let _ = tx.send(
                open_beneath(&std::fs::File::open(&root).unwrap(), "pipe")
                    .map(|(f, _)| f.metadata().unwrap()),
            );
        });
        let meta = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("open of a FIFO blocked")
            .unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
    }

    #[test]
    fn without_openat2_each_component_is_opened_and_no_symlink_is_followed() {
        use std::io::Read;
        let t = tree();
        let dir = std::fs::File::open(t.path()).unwrap();
        let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
        let mut text = String::new();
        std::fs::File::from(open_each_component(&dir, "a/b/c.txt", flags).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "inside");
        for linked in ["a/link/c.txt", "a/file-link"] {
            let e = open_each_component(&dir, linked, flags).unwrap_err();
            assert!(
                [rustix::io::Errno::LOOP, rustix::io::Errno::NOTDIR].contains(&e),
                "{linked}: {e}"
            );
        }
        assert!(open_each_component(&dir, "a/b/missing", flags).is_err());
    }

    /// Each folder judged by descriptor: the state dir's own `files` (and below) is served,
    /// any other folder of the state dir, the state dir itself and what holds it are not, nor
    /// anything at or below a build's marker; a folder elsewhere is.
    #[test]
    fn folders_are_judged_by_what_they_are_not_by_their_path() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("srv/state");
        for d in ["files/sub", "secrets", "boards/b1", "quarantine"] {
            std::fs::create_dir_all(state.join(d)).unwrap();
        }
        let elsewhere = t.path().join("boot/images/b1");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(
            t.path()
                .join("boot/images")
                .join(crate::store::state::OUT_MARKER),
            "",
        )
        .unwrap();
        std::fs::create_dir_all(t.path().join("kernels")).unwrap();
        let marks = StateMarks::read(&state, true).unwrap();
        let judge = |rel: &str| {
            let dir = open_dir(&t.path().join(rel)).unwrap();
            let id = id_of(&dir).unwrap();
            (marks.around.contains(&id), refusal(&dir, &marks).unwrap())
        };
        assert_eq!(judge("srv/state/files"), (false, None));
        assert_eq!(judge("srv/state/files/sub"), (false, None));
        assert_eq!(judge("kernels"), (false, None));
        for rel in [
            "srv/state/secrets",
            "srv/state/boards/b1",
            "srv/state/quarantine",
        ] {
            assert_eq!(judge(rel), (false, Some("the state dir")), "{rel}");
        }
        assert!(judge("srv/state").0, "the state dir itself");
        assert!(judge("srv").0, "what holds it");
        assert!(judge("").0, "and above");
        assert_eq!(judge("boot/images"), (false, Some("a build's images")));
        assert_eq!(judge("boot/images/b1"), (false, Some("a build's images")));
        assert_eq!(
            judge("boot"),
            (false, None),
            "the marker counts at and below its folder"
        );
        // Without a files folder, nothing of the state dir is served.
        std::fs::rename(state.join("files"), t.path().join("moved")).unwrap();
        let marks = StateMarks::read(&state, false).unwrap();
        assert_eq!(marks.files, None);
        let dir = open_dir(&state.join("secrets")).unwrap();
        assert_eq!(refusal(&dir, &marks).unwrap(), Some("the state dir"));
        let dir = open_dir(&t.path().join("moved/sub")).unwrap();
        assert_eq!(
            refusal(&dir, &marks).unwrap(),
            None,
            "moved out, it is any folder"
        );
    }

    /// A symlinked file is followed beneath the root, one link at a time, to its real folder.
    #[test]
    fn a_symlinked_file_is_opened_with_the_folder_it_really_lies_in() {
        let t = tree();
        std::fs::create_dir_all(t.path().join("img")).unwrap();
        std::fs::write(t.path().join("img/k.img"), "IMG").unwrap();
        std::os::unix::fs::symlink("../img/k.img", t.path().join("a/k")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", t.path().join("a/out")).unwrap();
        std::os::unix::fs::symlink("loop2", t.path().join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", t.path().join("loop2")).unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        let (mut f, parent) = open_beneath(&root, "a/k").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut f, &mut text).unwrap();
        assert_eq!(text, "IMG");
        let img = std::fs::metadata(t.path().join("img")).unwrap();
        assert_eq!(
            id_of(&parent).unwrap(),
            crate::store::state::identity_of(&img)
        );
        let (_, parent) = open_beneath(&root, "a/file-link").unwrap();
        let b = std::fs::metadata(t.path().join("a/b")).unwrap();
        assert_eq!(
            id_of(&parent).unwrap(),
            crate::store::state::identity_of(&b)
        );
        let errno =
            |rel: &str| rustix::io::Errno::from_io_error(&open_beneath(&root, rel).unwrap_err());
        assert_eq!(errno("abs"), Some(rustix::io::Errno::XDEV));
        assert_eq!(errno("a/out"), Some(rustix::io::Errno::XDEV));
        assert_eq!(errno("loop1"), Some(rustix::io::Errno::LOOP));
    }

    #[test]
    fn refused_opens_say_why() {
        let e = |n: rustix::io::Errno| {
            open_refusal(&std::io::Error::from_raw_os_error(n.raw_os_error()))
        };
        assert_eq!(
            e(rustix::io::Errno::LOOP),
            (StatusCode::FORBIDDEN, "symbolic links are never followed")
        );
        assert_eq!(
            e(rustix::io::Errno::XDEV),
            (StatusCode::FORBIDDEN, "outside the files directory")
        );
        assert_eq!(
            e(rustix::io::Errno::NOENT),
            (StatusCode::NOT_FOUND, "not found")
        );
        // What the kernel answers for each way out (openat2 with RESOLVE_BENEATH; without it,
        // each component without following links).
        let t = tree();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", t.path().join("a/up")).unwrap();
        for link in ["abs", "a/up"] {
            let err = open_beneath(&std::fs::File::open(t.path()).unwrap(), link).unwrap_err();
            assert_eq!(
                open_refusal(&err).1,
                "outside the files directory",
                "{link}: {err}"
            );
        }
        let dir = std::fs::File::open(t.path()).unwrap();
        let err = open_each_component(&dir, "a/file-link", rustix::fs::OFlags::RDONLY).unwrap_err();
        assert_eq!(
            open_refusal(&err.into()).1,
            "symbolic links are never followed"
        );
    }

    #[test]
    fn paths_that_escape_or_smuggle_are_bad_requests() {
        for raw in [
            "",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a/../b",
            "a%00b",
            "a%5Cb",
            "a%5cb",
            "a\\b",
        ] {
            assert_eq!(
                request_path(raw).map_err(|e| e.0),
                Err(StatusCode::BAD_REQUEST),
                "{raw:?}"
            );
        }
        assert_eq!(
            request_path("a/.sigs").map_err(|e| e.0),
            Err(StatusCode::FORBIDDEN)
        );
        assert_eq!(request_path("boot/vmlinuz").as_deref(), Ok("boot/vmlinuz"));
    }

    /// A temp dir on the disk the crate is on (the page cache of a real file system; `/tmp`
    /// may be a tmpfs).
    fn disk_dir() -> tempfile::TempDir {
        let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&target).unwrap();
        tempfile::tempdir_in(target).unwrap()
    }

    /// The body of `frames` as bytes, or its error.
    async fn collect(body: Body) -> std::io::Result<Vec<u8>> {
        let mut body = body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(std::io::Error::other)?;
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    /// Threads of this process called `name`: a current-thread runtime's blocking pool, when
    /// the runtime was built with that name.
    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == name)
            .count()
    }

    fn counted(n: &std::sync::atomic::AtomicU64) -> u64 {
        n.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn a_cached_file_goes_out_from_the_event_loop_without_the_blocking_pool() {
        let t = disk_dir();
        let path = t.path().join("vmlinuz");
        let data = pattern(TLS_FRAME * 3 + 1000);
        std::fs::write(&path, &data).unwrap();
        // Read once: in the page cache now.
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Every thread of this runtime is a blocking-pool thread (a current-thread runtime
        // polls on the caller's thread) and has this name.
        let name = "nowait-frames";
        let rt = tokio::runtime::Builder::new_current_thread()
            .thread_name(name)
            .build()
            .unwrap();
        let start = 1000u64;
        let reads = std::sync::Arc::new(FileReads::default());
        let got = rt
            .block_on(collect(frames(
                std::fs::File::open(&path).unwrap(),
                start,
                data.len() as u64 - start,
                TLS_FRAME,
                reads.clone(),
            )))
            .unwrap();
        assert!(
            got == data[start as usize..],
            "the bytes from the offset on"
        );
        let pool = threads_named(name);
        assert_eq!(pool, 0, "blocking-pool threads started: {pool}");
        assert_eq!(
            counted(&reads.page_cache),
            3,
            "three frames, for the metrics"
        );
        assert_eq!(counted(&reads.storage), 0);
    }

    #[test]
    fn a_file_out_of_the_page_cache_is_read_on_the_blocking_pool() {
        let t = disk_dir();
        let path = t.path().join("initrd.img");
        let data = pattern(4 * 64 * 1024 + 3);
        std::fs::write(&path, &data).unwrap();
        let resident = || {
            let out = std::process::Command::new("fincore")
                .args(["--bytes", "--noheadings", "--output", "RES"])
                .arg(&path)
                .output()
                .expect("fincore (util-linux) is needed");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        // Clean pages leave the page cache, and a RWF_NOWAIT read then answers EAGAIN. The
        // kernel may keep a page it is busy with (ask until util-linux's `fincore`, which does
        // not read the file, finds none resident). And a RWF_NOWAIT miss is not free of I/O:
        // it starts readahead before it gives up (mm/filemap.c, `filemap_get_pages`: only
        // IOCB_NOIO, which user space cannot ask for, skips it), and a VM disk backed by the
        // host's cache can finish that before the read looks again, which then succeeds (here
        // 9 of 200 reads, each of which /proc/self/io showed reading the disk). So a few
        // tries, one of which must miss.
        for attempt in 0..5 {
            let file = std::fs::File::open(&path).unwrap();
            file.sync_all().unwrap();
            for _ in 0..50 {
                rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
                if resident() == "0" {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert_eq!(resident(), "0", "the page cache keeps {}", path.display());
            let name = format!("miss-frames-{attempt}");
            let rt = tokio::runtime::Builder::new_current_thread()
                .thread_name(&name)
                .build()
                .unwrap();
            let reads = std::sync::Arc::new(FileReads::default());
            let got = rt
                .block_on(collect(frames(
                    file,
                    0,
                    data.len() as u64,
                    64 * 1024,
                    reads.clone(),
                )))
                .unwrap();
            assert!(got == data);
            if counted(&reads.storage) > 0 {
                // The metrics counted reads from storage: they went to the blocking pool.
                assert!(
                    threads_named(&name) > 0,
                    "no read went to the blocking pool"
                );
                return;
            }
        }
        panic!("five reads of an evicted file, and the metrics never counted one from storage");
    }

    #[test]
    fn without_nowait_reads_go_to_the_blocking_pool_and_a_shrunk_file_is_an_error() {
        let t = disk_dir();
        let path = t.path().join("initrd");
        let data = pattern(PLAIN_FRAME + 10);
        std::fs::write(&path, &data).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let file = std::sync::Arc::new(std::fs::File::open(&path).unwrap());
        let mut nowait = false;
        let reads = FileReads::default();
        let (buf, n) = rt
            .block_on(read_frame(
                &file,
                vec![0; 100],
                PLAIN_FRAME as u64,
                &mut nowait,
                &reads,
            ))
            .unwrap();
        assert_eq!(
            (counted(&reads.unchecked), counted(&reads.storage)),
            (1, 0),
            "a file system that cannot say is no page-cache miss"
        );
        assert_eq!(
            &buf[..n],
            &data[PLAIN_FRAME..],
            "10 bytes from the blocking pool"
        );
        // The body promised more than the file holds: the connection must fail, not hang or
        // pad.
        let err = rt
            .block_on(collect(frames(
                std::fs::File::open(&path).unwrap(),
                0,
                data.len() as u64 + 5,
                PLAIN_FRAME,
                Default::default(),
            )))
            .unwrap_err();
        assert!(err.to_string().contains("shrank"), "{err}");
    }

    #[test]
    fn frames_are_as_long_as_asked_and_the_last_one_is_the_rest() {
        let t = disk_dir();
        let path = t.path().join("kernel");
        let data = pattern(3 * 1000 + 7);
        std::fs::write(&path, &data).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut body = frames(
            std::fs::File::open(&path).unwrap(),
            0,
            3007,
            1000,
            Default::default(),
        );
        let mut sizes = Vec::new();
        let mut got = Vec::new();
        rt.block_on(async {
            while let Some(frame) = body.frame().await {
                let data = frame.unwrap().into_data().unwrap();
                sizes.push(data.len());
                got.extend_from_slice(&data);
            }
        });
        assert_eq!(sizes, [1000, 1000, 1000, 7]);
        assert!(got == data);
        // Over TLS a frame is no bigger than what rustls gathers for one write.
        const { assert!(TLS_FRAME <= super::super::tls::SEND_BUFFER / 2 && TLS_FRAME >= 16 << 10) };
        const { assert!(PLAIN_FRAME >= TLS_FRAME) };
    }

    #[test]
    fn a_frame_hands_its_buffer_back_when_its_last_copy_is_dropped() {
        let spare = Spare::new(100);
        let mut buf = spare.take();
        assert_eq!(buf.len(), 100, "a new buffer, all of it initialised");
        buf[..3].copy_from_slice(b"abc");
        let at = buf.as_ptr();
        let frame = bytes::Bytes::from_owner(Sent {
            buf,
            len: 3,
            spare: spare.clone(),
        });
        assert_eq!(&frame[..], b"abc");
        let copy = frame.clone();
        drop(frame);
        assert!(spare.lock().is_empty(), "a copy is still out");
        drop(copy);
        let again = spare.take();
        assert_eq!(again.as_ptr(), at, "the same buffer, for the next frame");
        // At most two wait: more would be memory that no frame of this response needs.
        for _ in 0..4 {
            drop(bytes::Bytes::from_owner(Sent {
                buf: vec![0; 8],
                len: 8,
                spare: spare.clone(),
            }));
        }
        assert_eq!(spare.lock().len(), 2);
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2e%2E/b").as_deref(), Some("a../b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
    }
}
