//! The `--ipxe-src` routes. Both run iPXE's own `make` with a named local config that enables
//! HTTPS, one build per tree at a time:
//! - **farm** (default for iso, efi-iso, hybrid, efi-usb): one compile per farm with our CA
//!   pinned (`TRUST`) and no board material; each board's image then carries a small
//!   `autoexec.ipxe` that sets its certificate and key at run time. A fraction of a second
//!   per board.
//! - **compile** (lkrn, usb, efi, or `--embed-key`): the board's certificate, key and script
//!   compiled into the binary, a relink of several seconds per board.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::image::{self, IsoTool, Media};
use super::{finish_manifest, run, BoardResult, BuildOptions, Manifest, Target};
use crate::board::Board;
use crate::error::{Error, Result};
use crate::store::registry::Registry;
use crate::store::state::{self, OutDir, MODE_PUBLIC, MODE_SECRET};
use crate::types::Arch;

/// Name of our local configuration: `config/local/ipxe-ca/` (`make CONFIG=ipxe-ca`).
pub const CONFIG_NAME: &str = "ipxe-ca";

/// What our scripts need from iPXE, enabled without touching iPXE's own files.
const GENERAL_H: &str = "/* Written by ipxe-ca (make CONFIG=ipxe-ca); edits are overwritten. */\n\
#define DOWNLOAD_PROTO_HTTPS\t/* BIOS builds leave HTTPS out by default */\n\
#define NTP_CMD\t\t\t/* boards without a real-time clock */\n\
#define IMAGE_TRUST_CMD\t\t/* imgverify */\n\
#define POWEROFF_CMD\t\t/* poweroff */\n";

/// Headless boards (and QEMU) show the BIOS console on COM1 too; UEFI firmware mirrors its
/// own console already, so only BIOS builds get it. The console over TLS to `serve` (the
/// `syslogs` setting the embed script sets) is in iPXE 2.0's UEFI builds by default, in no
/// BIOS build and in no build of older trees.
const CONSOLE_H: &str = "/* Written by ipxe-ca (make CONFIG=ipxe-ca); edits are overwritten. */\n\
#if defined ( PLATFORM_pcbios )\n\
#define CONSOLE_SERIAL\t\t/* headless boards and QEMU: the console on COM1 too */\n\
#endif\n\
#define CONSOLE_SYSLOGS\t\t/* the console over TLS to ipxe-ca serve (history) */\n";

/// What a tree's source supports, read from the source itself.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct TreeFeatures {
    /// TLS with ECDHE (iPXE from 2024-01-30): what `ipxe-ca serve` (rustls) needs.
    pub ecdhe: bool,
    /// Parses PKCS#8 private keys (iPXE from 2023-06); older trees get PKCS#1 keys.
    pub pkcs8_keys: bool,
    /// Built with `NO_WERROR=1`: older trees do not compile warning-free with today's gcc.
    pub no_werror: bool,
}

/// An iPXE source tree (the directory holding iPXE's `Makefile`, i.e. `ipxe/src`).
#[derive(Clone, Debug)]
pub struct IpxeTree {
    /// `…/src`
    pub src: PathBuf,
    /// The git commit, when the tree is a git checkout.
    pub commit: Option<String>,
    /// What the source supports.
    pub features: TreeFeatures,
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
        if !src.join("net/tls.c").is_file() {
            return Err(Error::invalid(format!(
                "{} has no net/tls.c: give an iPXE checkout or its src/",
                src.display()
            )));
        }
        let commit = Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|c| !c.is_empty());
        let features = detect(&src);
        Ok(IpxeTree {
            src,
            commit,
            features,
        })
    }

    /// Whether the tree's TLS speaks ECDHE (iPXE from 2024-01-30).
    pub fn has_ecdhe(&self) -> bool {
        self.features.ecdhe
    }

    fn ensure_config(&self) -> Result<()> {
        let dir = self.src.join("config/local").join(CONFIG_NAME);
        for (name, text) in [("general.h", GENERAL_H), ("console.h", CONSOLE_H)] {
            let p = dir.join(name);
            // Rewriting an unchanged header would rebuild everything: compare first.
            if std::fs::read_to_string(&p).ok().as_deref() != Some(text) {
                state::write_atomic(&p, text.as_bytes(), MODE_PUBLIC)?;
            }
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

fn detect(src: &Path) -> TreeFeatures {
    let read = |rel: &str| std::fs::read_to_string(src.join(rel)).unwrap_or_default();
    let ecdhe = read("net/tls.c").to_ascii_lowercase().contains("ecdhe");
    // PKCS#8 support (2023-06) made rsa.c step into privateKeyInfo.
    let pkcs8_keys = read("crypto/rsa.c").contains("privateKeyInfo");
    TreeFeatures {
        ecdhe,
        pkcs8_keys,
        // Trees from before ECDHE predate gcc 12's array-bounds checks and fail under -Werror.
        no_werror: !ecdhe,
    }
}

/// iPXE's make variables are comma-separated lists and its recipes run in a shell: paths
/// must stay within a safe alphabet.
fn check_make_path(p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    let ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+@%=:".contains(c));
    if !ok {
        return Err(Error::invalid(format!(
            "{s}: iPXE's build takes only paths of letters, digits and /._-+@%=: (no spaces, commas, quotes or shell characters); use another directory"
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

/// The UEFI iPXE of `arch`, as iPXE's make names it.
fn efi_goal(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "bin-x86_64-efi/ipxe.efi",
        Arch::Arm64 => "bin-arm64-efi/ipxe.efi",
    }
}

fn bin_path(t: Target, arch: Arch) -> &'static str {
    match t {
        Target::Lkrn => "bin/ipxe.lkrn",
        Target::Usb => "bin/ipxe.usb",
        Target::Efi => efi_goal(arch),
        Target::Iso | Target::EfiIso | Target::Hybrid | Target::EfiUsb => "",
    }
}

/// The binaries an assembled image for an `arch` board is made of.
fn parts(t: Target, arch: Arch) -> Vec<&'static str> {
    match t {
        Target::Iso | Target::Lkrn => vec!["bin/ipxe.lkrn"],
        Target::EfiIso | Target::EfiUsb | Target::Efi => vec![efi_goal(arch)],
        Target::Hybrid => vec!["bin/ipxe.lkrn", efi_goal(arch)],
        Target::Usb => vec!["bin/ipxe.usb"],
    }
}

/// Refuse targets an arm64 board cannot boot (BIOS, and the CD images built around isolinux),
/// saying what to use instead.
pub(crate) fn check_targets(targets: &[Target], boards: &[Board]) -> Result<()> {
    let Some(b) = boards.iter().find(|b| b.arch == Arch::Arm64) else {
        return Ok(());
    };
    match targets
        .iter()
        .find(|t| !matches!(t, Target::Efi | Target::EfiUsb))
    {
        Some(t) => Err(Error::TargetNotForArch {
            board: b.name.to_string(),
            target: t.name().to_string(),
        }),
        None => Ok(()),
    }
}

/// Whether `t` is made by relinking iPXE per board (the key inside the binary).
fn compiled_per_board(t: Target, embed_key: bool) -> bool {
    embed_key || matches!(t, Target::Lkrn | Target::Usb | Target::Efi)
}

/// What one `make` is given.
struct MakeInputs<'a> {
    goals: Vec<&'a str>,
    trust: &'a Path,
    cert: String,
    embed: Option<&'a Path>,
    privkey: Option<&'a Path>,
    /// A wrapper for `openssl` that writes PKCS#1 keys (trees without PKCS#8 support).
    openssl: Option<&'a Path>,
    epoch: i64,
}

/// Run iPXE's make, one invocation per BIN directory as iPXE recommends. The caller holds
/// the tree lock.
fn make(tree: &IpxeTree, inp: &MakeInputs, opts: &BuildOptions, what: &str) -> Result<()> {
    tree.ensure_config()?;
    let path = |p: Option<&Path>| p.map(|p| p.display().to_string()).unwrap_or_default();
    for bin in ["bin/", "bin-x86_64-efi/", "bin-arm64-efi/"] {
        let these: Vec<&str> = inp
            .goals
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
            // Always given, even empty: make would otherwise take them from the environment.
            .arg(format!("EMBED={}", path(inp.embed)))
            .arg(format!("TRUST={}", inp.trust.display()))
            .arg(format!("CERT={}", inp.cert))
            .arg(format!("PRIVKEY={}", path(inp.privkey)))
            .arg(format!("CONFIG={CONFIG_NAME}"))
            .env("SOURCE_DATE_EPOCH", inp.epoch.to_string());
        if tree.features.no_werror {
            cmd.arg("NO_WERROR=1");
        }
        if bin == "bin-arm64-efi/" && std::env::consts::ARCH != "aarch64" {
            // Debian's cross compiler (package gcc-aarch64-linux-gnu).
            cmd.arg(format!("CROSS={ARM64_CROSS}"));
        }
        if let Some(o) = inp.openssl {
            cmd.arg(format!("OPENSSL={}", o.display()));
        }
        if let Some(d) = &opts.debug {
            cmd.arg(format!("DEBUG={d}"));
        }
        let result = run(&mut cmd, &format!("building {} {what}", these.join(" ")));
        // The board's key is now in this folder (privkey.o, .private_key.der, blib.a, the
        // images): whatever the umask made of it, only the tree's owner may enter.
        let dir = tree.src.join(bin.trim_end_matches('/'));
        if dir.is_dir() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io("cannot make private", &dir, e))?;
        }
        result?;
    }
    Ok(())
}

/// The cross toolchain's prefix for arm64 binaries on another host.
pub(crate) const ARM64_CROSS: &str = "aarch64-linux-gnu-";

/// `openssl` as iPXE's Makefile calls it, but `openssl rsa` writes PKCS#1 (`-traditional`):
/// OpenSSL 3 writes PKCS#8, which iPXE before 2023-06 cannot read ("could not find
/// certificate corresponding to private key").
const OPENSSL_PKCS1: &str = "#!/bin/sh\n\
# Written by ipxe-ca for an iPXE tree that reads only PKCS#1 RSA keys.\n\
if [ \"$1\" = rsa ]; then exec openssl \"$@\" -traditional; fi\n\
exec openssl \"$@\"\n";

fn openssl_wrapper(stage_dir: &Path) -> Result<PathBuf> {
    let p = stage_dir.join("openssl-pkcs1");
    if std::fs::read_to_string(&p).ok().as_deref() != Some(OPENSSL_PKCS1) {
        state::write_atomic(&p, OPENSSL_PKCS1.as_bytes(), 0o700)?;
    }
    Ok(p)
}

/// The one compile of a farm: our CA pinned and sent as the chain's root, nothing per board.
pub(crate) struct Shared {
    /// `bin/ipxe.lkrn` → its copy in staging.
    files: Vec<(&'static str, PathBuf)>,
    /// SHA-256 of each shared binary, for the manifests.
    pub sha256: Vec<(String, String)>,
}

fn farm_compile(
    registry: &Registry,
    tree: &IpxeTree,
    goals: Vec<&'static str>,
    opts: &BuildOptions,
    stage_dir: &Path,
    run_dir: &Path,
) -> Result<Shared> {
    let ca_pem = state::read(&registry.state().ca_cert())?;
    let ca = stage(stage_dir, "ca", "crt", &ca_pem, MODE_PUBLIC)?;
    let epoch = crate::ca::cert_info(&crate::ca::cert_der_from_bytes(&ca_pem)?)?
        .not_before
        .unix_timestamp();
    let _guard = tree.lock()?;
    make(
        tree,
        &MakeInputs {
            goals: goals.clone(),
            trust: &ca,
            cert: ca.display().to_string(),
            embed: None,
            privkey: None,
            openssl: None,
            epoch,
        },
        opts,
        "(shared by every board: our CA pinned, no board material)",
    )?;
    let files = copy_out(tree, goals, run_dir, MODE_PUBLIC)?;
    let sha256 = files
        .iter()
        .map(|(g, p)| Ok((g.to_string(), crate::digest::sha256_file(p)?)))
        .collect::<Result<_>>()?;
    Ok(Shared { files, sha256 })
}

/// Copy built goals out of the tree (the next build there overwrites them).
fn copy_out(
    tree: &IpxeTree,
    goals: Vec<&'static str>,
    dir: &Path,
    mode: u32,
) -> Result<Vec<(&'static str, PathBuf)>> {
    goals
        .into_iter()
        .map(|g| {
            let dest = dir.join(g.replace('/', "-"));
            state::write_atomic(&dest, &state::read(&tree.src.join(g))?, mode)?;
            Ok((g, dest))
        })
        .collect()
}

/// What every board of one build shares.
struct Job<'a> {
    registry: &'a Registry,
    opts: &'a BuildOptions,
    shared: Option<&'a Shared>,
    stage_dir: &'a Path,
    run_dir: &'a Path,
    features: TreeFeatures,
}

/// One board: its compiled binaries (if any target needs them), then its assembled images.
fn build_board(job: &Job, tree: Option<&IpxeTree>, board: &Board) -> Result<Manifest> {
    let Job {
        registry,
        opts,
        shared,
        stage_dir,
        run_dir,
        features,
    } = *job;
    let started = Instant::now();
    let epoch = board.not_before.unix_timestamp().max(0);
    let dir = opts.out.board_dir(&board.name);
    state::create_dir_private(&dir)?;
    let own = run_dir.join(format!("board-{}", board.name));
    state::create_dir_private(&own)?;
    let result = (|| {
        let compiled = compile_board(
            registry, tree, board, opts, stage_dir, &own, features, epoch,
        )?;
        let script = super::autoexec_script(
            registry,
            board,
            opts.ntp_server.as_deref(),
            !features.pkcs8_keys,
            true,
        )?;
        let mut outputs = Vec::new();
        let mut routes = Vec::new();
        let sb = opts.secure_boot.as_deref();
        for t in &opts.targets {
            let dest = dir.join(t.file_name(&board.name));
            let per_board = compiled_per_board(*t, opts.embed_key);
            // Compiled binaries carry their own script; shared ones get the board's script.
            let (bins, script): (&[(&str, PathBuf)], Option<&[u8]>) = if per_board {
                (&compiled, None)
            } else {
                (
                    shared.map(|s| s.files.as_slice()).unwrap_or_default(),
                    Some(script.as_bytes()),
                )
            };
            let part = |g: &str| {
                bins.iter()
                    .find(|(x, _)| *x == g)
                    .map(|(_, p)| p.clone())
                    .ok_or_else(|| Error::invalid(format!("internal: {g} was not built")))
            };
            let tmp = own.join(t.file_name(&board.name));
            let mut tool: Option<IsoTool> = None;
            match t {
                Target::Lkrn | Target::Usb => state::write_atomic(
                    &tmp,
                    &state::read(&part(bin_path(*t, board.arch))?)?,
                    MODE_SECRET,
                )?,
                Target::Efi => state::write_atomic(
                    &tmp,
                    &image::efi_binary(&part(bin_path(*t, board.arch))?, sb)?,
                    MODE_SECRET,
                )?,
                Target::EfiUsb => image::fat_image(
                    &tmp,
                    &part(efi_goal(board.arch))?,
                    board.arch,
                    script,
                    epoch,
                    sb,
                )?,
                Target::Iso | Target::EfiIso | Target::Hybrid => {
                    let lkrn = matches!(t, Target::Iso | Target::Hybrid)
                        .then(|| part("bin/ipxe.lkrn"))
                        .transpose()?;
                    let efi = matches!(t, Target::EfiIso | Target::Hybrid)
                        .then(|| part(efi_goal(board.arch)))
                        .transpose()?;
                    tool = Some(image::iso_image(
                        &tmp,
                        &Media {
                            lkrn: lkrn.as_deref(),
                            efi: efi.as_deref(),
                            script,
                            epoch,
                            secure_boot: sb,
                        },
                    )?);
                }
            }
            std::fs::rename(&tmp, &dest)
                .map_err(|e| Error::io("cannot move image to", &dest, e))?;
            outputs.push((*t, dest));
            routes.push(super::TargetRoute {
                route: if per_board { "compile" } else { "farm" },
                iso_tool: tool,
            });
        }
        let mut notes = Vec::new();
        if !features.ecdhe {
            notes.push(ECDHE_WARNING.to_string());
        }
        let mut m = finish_manifest(
            board,
            "make",
            tree.and_then(|t| t.commit.clone()),
            outputs,
            started,
            notes,
            sb,
        )?;
        for (o, r) in m.targets.iter_mut().zip(routes) {
            o.route = Some(r.route.to_string());
            o.iso_tool = r.iso_tool;
            if r.route == "farm" {
                o.shared = shared.map(|s| s.sha256.clone()).unwrap_or_default();
            }
        }
        m.save(&opts.out)?;
        Ok(m)
    })();
    // Nothing of the board (key, script) stays in staging.
    let _ = std::fs::remove_dir_all(&own);
    result
}

/// The board's own binaries, when a target needs its key compiled in.
#[allow(clippy::too_many_arguments)]
fn compile_board(
    registry: &Registry,
    tree: Option<&IpxeTree>,
    board: &Board,
    opts: &BuildOptions,
    stage_dir: &Path,
    own: &Path,
    features: TreeFeatures,
    epoch: i64,
) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut goals: Vec<&'static str> = opts
        .targets
        .iter()
        .filter(|t| compiled_per_board(**t, opts.embed_key))
        .flat_map(|t| parts(*t, board.arch))
        .collect();
    goals.sort_unstable();
    goals.dedup();
    if goals.is_empty() {
        return Ok(Vec::new());
    }
    let tree = tree.ok_or_else(|| Error::invalid("internal: no tree for a compiled target"))?;
    let key_pem = super::held_key(registry, board)?;
    let ca = stage(
        stage_dir,
        "ca",
        "crt",
        &state::read(&registry.state().ca_cert())?,
        MODE_PUBLIC,
    )?;
    let cert = stage(
        own,
        "cert",
        "crt",
        &registry.cert_pem(&board.name)?,
        MODE_PUBLIC,
    )?;
    let key = stage(own, "key", "pem", &key_pem, MODE_SECRET)?;
    let script = super::embed_script(registry, board, opts.ntp_server.as_deref(), true)?;
    let embed = stage(own, "embed", "ipxe", script.as_bytes(), MODE_SECRET)?;
    let wrapper = (!features.pkcs8_keys)
        .then(|| openssl_wrapper(stage_dir))
        .transpose()?;
    let _guard = tree.lock()?;
    make(
        tree,
        &MakeInputs {
            goals: goals.clone(),
            trust: &ca,
            cert: format!("{},{}", ca.display(), cert.display()),
            embed: Some(&embed),
            privkey: Some(&key),
            openssl: wrapper.as_deref(),
            epoch,
        },
        opts,
        &format!("for board {}", board.name),
    )?;
    copy_out(tree, goals, own, MODE_SECRET)
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
            // Copied under the origin's lock, so the copy starts from a finished build.
            let _guard = tree.lock()?;
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
            features: tree.features,
        });
    }
    Ok(v)
}

static RUN_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn build_all(
    registry: &Registry,
    tree: &IpxeTree,
    boards: &[Board],
    opts: &BuildOptions,
    on_done: &(dyn Fn(&BoardResult) + Sync),
) -> Result<Vec<BoardResult>> {
    let out = OutDir::new(
        std::fs::canonicalize(opts.out.root())
            .map_err(|e| Error::io("cannot resolve", opts.out.root(), e))?,
    );
    let stage_dir = out.stage();
    check_make_path(&stage_dir)?;
    state::create_dir_private(&stage_dir)?;
    // Board material of this run lives here and goes when the run ends.
    let run_dir = stage_dir.join(format!(
        "run-{}-{}",
        std::process::id(),
        RUN_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    state::create_dir_private(&run_dir)?;
    let opts = BuildOptions {
        out,
        ..opts.clone()
    };
    let result = (|| {
        // One compile per farm and architecture: each board's binary is shared by its kind.
        let arches: std::collections::BTreeSet<Arch> = boards.iter().map(|b| b.arch).collect();
        let mut farm_goals: Vec<&'static str> = opts
            .targets
            .iter()
            .filter(|t| !compiled_per_board(**t, opts.embed_key))
            .flat_map(|t| arches.iter().flat_map(|a| parts(*t, *a)))
            .collect();
        farm_goals.sort_unstable();
        farm_goals.dedup();
        let compiles = opts
            .targets
            .iter()
            .any(|t| compiled_per_board(*t, opts.embed_key));
        let shared = if farm_goals.is_empty() {
            None
        } else {
            Some(farm_compile(
                registry, tree, farm_goals, &opts, &stage_dir, &run_dir,
            )?)
        };
        // Compiles need a tree each; assembly alone uses every core.
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let workers: Vec<Option<IpxeTree>> = if compiles {
            let jobs = opts.jobs.clamp(1, boards.len().max(1));
            trees(tree, jobs, &registry.state().ipxe_trees())?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; cores.max(opts.jobs).clamp(1, boards.len().max(1))]
        };
        let job = Job {
            registry,
            opts: &opts,
            shared: shared.as_ref(),
            stage_dir: &stage_dir,
            run_dir: &run_dir,
            features: tree.features,
        };
        let queue: Mutex<VecDeque<&Board>> = Mutex::new(boards.iter().collect());
        let results: Mutex<Vec<BoardResult>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in &workers {
                let (queue, results, job) = (&queue, &results, &job);
                s.spawn(move || loop {
                    let next = match queue.lock() {
                        Ok(mut q) => q.pop_front(),
                        Err(_) => None,
                    };
                    let Some(board) = next else { break };
                    let r = build_board(job, t.as_ref(), board)
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
    })();
    let _ = std::fs::remove_dir_all(&run_dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory that looks like an iPXE checkout: `src/Makefile` and `src/net/tls.c`.
    fn tree(tls_c: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("src/net")).unwrap();
        std::fs::create_dir_all(t.path().join("src/crypto")).unwrap();
        std::fs::write(t.path().join("src/Makefile"), "all:\n").unwrap();
        std::fs::write(t.path().join("src/net/tls.c"), tls_c).unwrap();
        t
    }

    #[test]
    fn old_trees_get_an_openssl_that_writes_pkcs1_keys() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let p = openssl_wrapper(t.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), OPENSSL_PKCS1);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A stale one (an older ipxe-ca's) is written again; a current one is left alone.
        std::fs::write(&p, "#!/bin/sh\nexec openssl \"$@\"\n").unwrap();
        let p = openssl_wrapper(t.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), OPENSSL_PKCS1);
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        openssl_wrapper(t.path()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
    }

    #[test]
    fn parallel_builds_reuse_their_tree_copies_until_the_origin_changes() {
        let t = tree("ecdhe");
        let cache = tempfile::tempdir().unwrap();
        let origin = IpxeTree::open(t.path()).unwrap();
        let copies = trees(&origin, 2, cache.path()).unwrap();
        assert_eq!(copies.len(), 2);
        assert_eq!(copies[0].src, origin.src);
        let copy = &copies[1].src;
        assert!(
            copy.join("Makefile").is_file()
                && copy.starts_with(cache.path().canonicalize().unwrap())
        );
        // A build's objects in the copy: kept while the origin is the same tree at the same
        // commit (the copy stays incremental).
        std::fs::write(copy.join("built.o"), "object").unwrap();
        trees(&origin, 2, cache.path()).unwrap();
        assert!(
            copy.join("built.o").exists(),
            "an up-to-date copy was made again"
        );
        // The origin at another commit: copied afresh.
        let moved = IpxeTree {
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            ..origin.clone()
        };
        trees(&moved, 2, cache.path()).unwrap();
        assert!(!copy.join("built.o").exists(), "a stale copy was reused");
        assert!(copy.join("Makefile").is_file());
    }

    #[test]
    fn an_arm64_board_is_built_for_uefi_only() {
        let (_t, _lab, mut boards) = crate::ipxe_build::tests::farm(&["x86", "sbc"]);
        boards[1].arch = Arch::Arm64;
        let (x86, both) = (&boards[..1], &boards[..]);
        assert!(check_targets(&[Target::Usb, Target::Iso], x86).is_ok());
        assert!(check_targets(&[Target::Efi, Target::EfiUsb], both).is_ok());
        for bad in [Target::Usb, Target::Iso, Target::Hybrid, Target::Lkrn] {
            match check_targets(&[Target::EfiUsb, bad], both) {
                Err(Error::TargetNotForArch { board, target }) => {
                    assert_eq!((board.as_str(), target.as_str()), ("sbc", bad.name()))
                }
                other => panic!("{}: {other:?}", bad.name()),
            }
        }
    }

    #[test]
    fn a_tree_says_whether_its_tls_speaks_ecdhe_and_what_it_needs() {
        let new = IpxeTree::open(tree("static int tls_ecdhe_init ( void );").path()).unwrap();
        assert!(new.has_ecdhe());
        assert!(
            !new.features.no_werror,
            "a current tree builds with -Werror"
        );
        let old = IpxeTree::open(tree("/* RSA key exchange only */").path()).unwrap();
        assert!(!old.has_ecdhe());
        assert!(
            old.features.no_werror,
            "an old tree fails under gcc 12's -Werror"
        );
        assert!(old.src.ends_with("src"), "{}", old.src.display());
    }

    #[test]
    fn a_tree_without_tls_or_a_makefile_is_refused_and_a_checkout_names_its_commit() {
        let t = tree("ecdhe");
        std::fs::remove_file(t.path().join("src/net/tls.c")).unwrap();
        let e = IpxeTree::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("no net/tls.c"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = IpxeTree::open(empty.path()).unwrap_err().to_string();
        assert!(e.contains("not an iPXE source tree"), "{e}");
        // make splits its variables at commas and runs recipes in a shell.
        for odd in ["with space", "a,b", "x$(id)"] {
            let t = tree("ecdhe");
            let dir = t.path().join(odd);
            std::fs::rename(t.path().join("src"), &dir).unwrap();
            let e = IpxeTree::open(&dir).unwrap_err().to_string();
            assert!(e.contains(odd), "{odd}: {e}");
        }

        let t = tree("ecdhe");
        assert_eq!(
            IpxeTree::open(t.path()).unwrap().commit,
            None,
            "not a checkout"
        );
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .arg("-C")
                .arg(t.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        git(&["add", "."]);
        git(&["commit", "-q", "-m", "tree"]);
        let commit = IpxeTree::open(t.path()).unwrap().commit.unwrap();
        assert_eq!(commit.len(), 40, "{commit}");
        assert!(commit.chars().all(|c| c.is_ascii_hexdigit()), "{commit}");
    }
}
