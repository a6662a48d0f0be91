//! The `make` route: stage inputs under content-addressed names, enable HTTPS through a named
//! local config, and run iPXE's own build, one build per tree at a time.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use super::{finish_manifest, run, BoardResult, BuildOptions, Manifest, Target};
use crate::error::{Error, Result};
use crate::registry::Board;
use crate::state::{self, MODE_PUBLIC, MODE_SECRET};
use crate::Lab;

/// Name of our local configuration: `config/local/ipxe-ca/` (`make CONFIG=ipxe-ca`).
pub const CONFIG_NAME: &str = "ipxe-ca";

/// What our scripts need from iPXE, enabled without touching iPXE's own files.
const GENERAL_H: &str = "/* Written by ipxe-ca (make CONFIG=ipxe-ca); edits are overwritten. */\n\
#define DOWNLOAD_PROTO_HTTPS\t/* BIOS builds leave HTTPS out by default */\n\
#define NTP_CMD\t\t\t/* boards without a real-time clock */\n\
#define IMAGE_TRUST_CMD\t\t/* imgverify */\n\
#define POWEROFF_CMD\t\t/* poweroff */\n";

/// An iPXE source tree (the directory holding iPXE's `Makefile`, i.e. `ipxe/src`).
#[derive(Clone, Debug)]
pub struct IpxeTree {
    /// `…/src`
    pub src: PathBuf,
    /// The git commit, when the tree is a git checkout.
    pub commit: Option<String>,
}

impl IpxeTree {
    /// Open `dir` (an iPXE checkout or its `src`).
    pub fn open(dir: &Path) -> Result<IpxeTree> {
        let dir =
            std::fs::canonicalize(dir).map_err(|e| Error::io("cannot open iPXE tree", dir, e))?;
        let src = if dir.join("src/Makefile").is_file() {
            dir.join("src")
        } else if dir.join("Makefile").is_file() {
            dir
        } else {
            return Err(Error::invalid(format!(
                "{} is not an iPXE source tree (no Makefile in it or in src/)",
                dir.display()
            )));
        };
        check_make_path(&src)?;
        let commit = Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|c| !c.is_empty());
        Ok(IpxeTree { src, commit })
    }

    /// Whether the tree's TLS speaks ECDHE (iPXE from 2024-01-30): `None` if unknown.
    pub fn has_ecdhe(&self) -> Option<bool> {
        let tls = std::fs::read_to_string(self.src.join("net/tls.c")).ok()?;
        Some(tls.to_ascii_lowercase().contains("ecdhe"))
    }

    fn ensure_config(&self) -> Result<()> {
        let p = self
            .src
            .join("config/local")
            .join(CONFIG_NAME)
            .join("general.h");
        // Rewriting an unchanged header would rebuild everything: compare first.
        if std::fs::read_to_string(&p).ok().as_deref() != Some(GENERAL_H) {
            state::write_atomic(&p, GENERAL_H.as_bytes(), MODE_PUBLIC)?;
        }
        Ok(())
    }

    /// Exclusive use of the tree: two builds in one tree corrupt each other.
    fn lock(&self) -> Result<File> {
        let p = self.src.join(".ipxe-ca-build.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io("cannot open", &p, e))?;
        f.lock().map_err(|e| Error::io("cannot lock", &p, e))?;
        Ok(f)
    }
}

/// iPXE's make variables are comma-separated lists: paths must not hold commas or spaces.
fn check_make_path(p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if s.contains([',', ' ', '\t', '\n', '$', '#', '\'', '"']) {
        return Err(Error::invalid(format!(
            "{s}: iPXE's build cannot take paths with commas, spaces, quotes, '$' or '#'; use another directory"
        )));
    }
    Ok(())
}

/// Copy `content` to `dir/PREFIX-HASH.EXT` (content-addressed, so a changed CA is a new
/// path and iPXE's TRUST handling cannot reuse a stale object).
fn stage(dir: &Path, prefix: &str, ext: &str, content: &[u8], mode: u32) -> Result<PathBuf> {
    let h = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
    let p = dir.join(format!("{prefix}-{}.{ext}", &hex::encode(h.as_ref())[..16]));
    if !p.exists() {
        state::write_atomic(&p, content, mode)?;
    }
    Ok(p)
}

fn bin_path(t: Target) -> &'static str {
    match t {
        Target::Lkrn => "bin/ipxe.lkrn",
        Target::Iso => "bin/ipxe.iso",
        Target::Usb => "bin/ipxe.usb",
        Target::Efi => "bin-x86_64-efi/ipxe.efi",
        Target::EfiIso => "bin-x86_64-efi/ipxe.iso",
        Target::Hybrid | Target::EfiUsb => "",
    }
}

/// One board in one tree.
fn build_board(
    lab: &Lab,
    tree: &IpxeTree,
    board: &Board,
    opts: &BuildOptions,
    stage_dir: &Path,
) -> Result<Manifest> {
    let started = Instant::now();
    let reg = lab.registry();
    let key_path = super::held_key(lab, board)?;
    let ca = stage(
        stage_dir,
        "ca",
        "crt",
        &state::read(&lab.state().ca_cert())?,
        MODE_PUBLIC,
    )?;
    let cert = stage(
        stage_dir,
        "cert",
        "crt",
        &state::read(&reg.cert_path(&board.name))?,
        MODE_PUBLIC,
    )?;
    let key = stage(
        stage_dir,
        "key",
        "pem",
        &state::read(&key_path)?,
        MODE_SECRET,
    )?;
    let script = super::embed_script(lab, board, opts.ntp_server.as_deref())?;
    let embed = stage(stage_dir, "embed", "ipxe", script.as_bytes(), MODE_PUBLIC)?;

    let _guard = tree.lock()?;
    tree.ensure_config()?;
    let mut goals: Vec<&str> = Vec::new();
    for t in &opts.targets {
        match t {
            Target::Hybrid => goals.extend(["bin/ipxe.lkrn", "bin-x86_64-efi/ipxe.efi"]),
            other => goals.push(bin_path(*other)),
        }
    }
    goals.sort_unstable();
    goals.dedup();
    let epoch = board.not_before.unix_timestamp().max(0).to_string();
    // One make per BIN directory, as iPXE recommends.
    for bin in ["bin/", "bin-x86_64-efi/"] {
        let these: Vec<&str> = goals
            .iter()
            .copied()
            .filter(|g| g.starts_with(bin))
            .collect();
        if these.is_empty() {
            continue;
        }
        let mut cmd = Command::new("make");
        cmd.current_dir(&tree.src)
            .arg(format!("-j{}", opts.make_jobs.max(1)))
            .args(&these)
            .arg(format!("EMBED={}", embed.display()))
            .arg(format!("TRUST={}", ca.display()))
            .arg(format!("CERT={},{}", ca.display(), cert.display()))
            .arg(format!("PRIVKEY={}", key.display()))
            .arg(format!("CONFIG={CONFIG_NAME}"))
            .env("SOURCE_DATE_EPOCH", &epoch);
        if let Some(d) = &opts.debug {
            cmd.arg(format!("DEBUG={d}"));
        }
        run(
            &mut cmd,
            &format!("building {} for board {}", these.join(" "), board.name),
        )?;
    }
    let dir = opts.out.join(board.name.as_str());
    state::create_dir_private(&dir)?;
    let mut outputs = Vec::new();
    for t in &opts.targets {
        let dest = dir.join(t.file_name(&board.name));
        if *t == Target::Hybrid {
            let tmp = stage_dir.join(format!("{}-hybrid.iso", board.name));
            run(
                Command::new(tree.src.join("util/genfsimg"))
                    .current_dir(&tree.src)
                    .arg("-o")
                    .arg(&tmp)
                    .args(["bin/ipxe.lkrn", "bin-x86_64-efi/ipxe.efi"])
                    .env("SOURCE_DATE_EPOCH", &epoch),
                &format!(
                    "building the hybrid image for board {} (genfsimg)",
                    board.name
                ),
            )?;
            let data = state::read(&tmp)?;
            let _ = std::fs::remove_file(&tmp);
            super::write_output(&dest, &data)?;
        } else {
            let built = tree.src.join(bin_path(*t));
            super::write_output(&dest, &state::read(&built)?)?;
        }
        outputs.push((*t, dest));
    }
    let mut notes = Vec::new();
    if tree.has_ecdhe() == Some(false) {
        notes.push(ECDHE_WARNING.to_string());
    }
    finish_manifest(
        board,
        &dir,
        "make",
        tree.commit.clone(),
        outputs,
        started,
        notes,
    )
}

/// Said when the tree predates ECDHE.
pub const ECDHE_WARNING: &str =
    "this iPXE tree has no ECDHE (older than 2024-01-30): `ipxe-ca serve` \
(rustls) cannot talk to it; put nginx in front (`ipxe-ca nginx-config`, `serve --behind-proxy`)";

/// Trees for `jobs` parallel builds: the tree itself plus copies under `cache`, refreshed when
/// the source's commit changes. A copy of a built tree stays incremental (cp -a keeps mtimes).
fn trees(tree: &IpxeTree, jobs: usize, cache: &Path) -> Result<Vec<IpxeTree>> {
    let mut v = vec![tree.clone()];
    let id = hex::encode(
        &aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            tree.src.to_string_lossy().as_bytes(),
        )
        .as_ref()[..6],
    );
    let stamp_value = format!(
        "{}\n{}\n",
        tree.src.display(),
        tree.commit.as_deref().unwrap_or("unknown")
    );
    for k in 1..jobs {
        let root = cache.join(format!("{id}-{k}"));
        let src = root.join("src");
        let stamp = root.join("origin");
        let fresh = std::fs::read_to_string(&stamp).ok().as_deref() == Some(stamp_value.as_str())
            && src.join("Makefile").is_file();
        if !fresh {
            let _ = std::fs::remove_dir_all(&root);
            state::create_dir_private(&root)?;
            let root =
                std::fs::canonicalize(&root).map_err(|e| Error::io("cannot resolve", &root, e))?;
            let src = root.join("src");
            run(
                Command::new("cp").arg("-a").arg(&tree.src).arg(&src),
                "copying the iPXE tree for a parallel build",
            )?;
            state::write_atomic(&stamp, stamp_value.as_bytes(), MODE_PUBLIC)?;
        }
        let src = std::fs::canonicalize(&src).map_err(|e| Error::io("cannot resolve", &src, e))?;
        check_make_path(&src)?;
        v.push(IpxeTree {
            src,
            commit: tree.commit.clone(),
        });
    }
    Ok(v)
}

pub(crate) fn build_all(
    lab: &Lab,
    tree: &IpxeTree,
    boards: &[Board],
    opts: &BuildOptions,
    on_done: &(dyn Fn(&BoardResult) + Sync),
) -> Result<Vec<BoardResult>> {
    let out =
        std::fs::canonicalize(&opts.out).map_err(|e| Error::io("cannot resolve", &opts.out, e))?;
    let stage_dir = out.join(".stage");
    check_make_path(&stage_dir)?;
    state::create_dir_private(&stage_dir)?;
    let opts = BuildOptions {
        out,
        ..opts.clone()
    };
    let jobs = opts.jobs.clamp(1, boards.len().max(1));
    let trees = trees(tree, jobs, &lab.state().root().join("cache/ipxe-trees"))?;
    let queue: Mutex<VecDeque<&Board>> = Mutex::new(boards.iter().collect());
    let results: Mutex<Vec<BoardResult>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in &trees {
            let (queue, results, opts, stage_dir) = (&queue, &results, &opts, &stage_dir);
            s.spawn(move || loop {
                let next = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => None,
                };
                let Some(board) = next else { break };
                let r = build_board(lab, t, board, opts, stage_dir)
                    .map_err(|e| (board.name.to_string(), e));
                on_done(&r);
                if let Ok(mut v) = results.lock() {
                    v.push(r);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by(|a, b| {
        let name = |r: &BoardResult| match r {
            Ok(m) => m.board.clone(),
            Err((n, _)) => n.clone(),
        };
        name(a).cmp(&name(b))
    });
    Ok(results)
}
