//! `ipxe-ca build`: per-board iPXE images. Two routes:
//! - `make`: iPXE's own build with our CA as the only trusted root and the board's certificate
//!   and key compiled in (what real boards need: only a build can pin the trusted CA);
//! - `prebuilt`: a FAT image around a prebuilt `ipxe.efi` whose script sets the board's
//!   certificate and key at run time; the CA must then come from the UEFI firmware.

pub mod doctor;
pub mod image;
mod make;
mod prebuilt;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::board::{Board, Status};
use crate::error::{Error, Result};
use crate::render::{self, Context};
use crate::store::registry::Registry;
use crate::store::state::{self, OutDir, MODE_SECRET};
use crate::types::Arch;
use crate::types::BoardName;

/// The embed script compiled into images (written to `ipxe-scripts/embed.ipxe` at `init`).
pub const EMBED_TEMPLATE: &str = include_str!("../../ipxe-scripts/embed.ipxe");

pub use image::IsoTool;
pub use make::{IpxeTree, TreeFeatures};

/// Image kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// BIOS: a Linux-kernel-format iPXE (`bin/ipxe.lkrn`).
    Lkrn,
    /// BIOS: a CD image.
    Iso,
    /// BIOS: a USB disk image.
    Usb,
    /// UEFI: `ipxe.efi`.
    Efi,
    /// UEFI: a CD image.
    EfiIso,
    /// BIOS and UEFI, CD and USB stick: genfsimg of the lkrn and the EFI binary.
    Hybrid,
    /// Prebuilt mode: a FAT image with a prebuilt `ipxe.efi` and the board's `autoexec.ipxe`.
    EfiUsb,
}

impl FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "lkrn" => Target::Lkrn,
            "iso" => Target::Iso,
            "usb" => Target::Usb,
            "efi" => Target::Efi,
            "efi-iso" => Target::EfiIso,
            "hybrid" => Target::Hybrid,
            "efi-usb" => Target::EfiUsb,
            _ => {
                return Err(Error::invalid(format!(
                    "unknown target {s:?}: use lkrn, iso, usb, efi, efi-iso, hybrid (from source) or efi-usb (prebuilt iPXE)"
                )))
            }
        })
    }
}

impl Target {
    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Target::Lkrn => "lkrn",
            Target::Iso => "iso",
            Target::Usb => "usb",
            Target::Efi => "efi",
            Target::EfiIso => "efi-iso",
            Target::Hybrid => "hybrid",
            Target::EfiUsb => "efi-usb",
        }
    }

    /// Output file name for a board.
    pub fn file_name(self, board: &BoardName) -> String {
        let ext = match self {
            Target::Lkrn => "lkrn",
            Target::Iso | Target::EfiIso | Target::Hybrid => "iso",
            Target::Usb => "usb",
            Target::Efi => "efi",
            Target::EfiUsb => "img",
        };
        format!("{board}-{}.{ext}", self.name())
    }
}

/// Where the images come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An iPXE source tree (`DIR` or `DIR/src`), built with `make`.
    Tree(PathBuf),
    /// A directory holding a prebuilt `ipxe-amd64.efi` or `ipxe.efi` (e.g. Debian's /usr/lib/ipxe).
    Prebuilt(PathBuf),
}

/// What `build` is asked to do.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Image source.
    pub source: Source,
    /// Targets per board.
    pub targets: Vec<Target>,
    /// Output root; images go to `OUT/BOARD/`.
    pub out: OutDir,
    /// Parallel builds, each in its own copy of the tree.
    pub jobs: usize,
    /// iPXE `DEBUG=` value, passed through.
    pub debug: Option<String>,
    /// NTP server for the embed script (boards without a real-time clock).
    pub ntp_server: Option<String>,
    /// `make -j` inside each build.
    pub make_jobs: usize,
    /// Compile the board's key into the iPXE binary for every target (a relink per board)
    /// instead of one shared binary plus a per-board `autoexec.ipxe`.
    pub embed_key: bool,
    /// The farm's Secure Boot key, loaded by `build`: every EFI binary is signed with it.
    pub(crate) secure_boot: Option<std::sync::Arc<crate::secure_boot::Signer>>,
}

impl Source {
    /// What `build` makes from this source unless told otherwise: the hybrid image (BIOS and
    /// UEFI, stick and CD) from a tree, the UEFI stick from a prebuilt iPXE.
    pub fn default_target(&self) -> Target {
        match self {
            Source::Tree(_) => Target::Hybrid,
            Source::Prebuilt(_) => Target::EfiUsb,
        }
    }
}

impl BuildOptions {
    /// Build `targets` (none: the source's default) into `out`, one board at a time, with
    /// `make -j` on every core.
    pub fn new(source: Source, targets: Vec<Target>, out: impl Into<PathBuf>) -> BuildOptions {
        let targets = if targets.is_empty() {
            vec![source.default_target()]
        } else {
            targets
        };
        BuildOptions {
            source,
            targets,
            out: OutDir::new(out),
            jobs: 1,
            debug: None,
            ntp_server: None,
            make_jobs: cores(),
            embed_key: false,
            secure_boot: None,
        }
    }

    /// `jobs` boards at once; `make -j` shares the cores among them unless `make_jobs` says.
    pub fn with_jobs(mut self, jobs: usize, make_jobs: Option<usize>) -> BuildOptions {
        self.jobs = jobs.max(1);
        self.make_jobs = make_jobs.unwrap_or((cores() / self.jobs).max(1)).max(1);
        self
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// How one image was made (for its manifest entry).
pub(crate) struct TargetRoute {
    pub route: &'static str,
    pub iso_tool: Option<IsoTool>,
}

/// One image in a manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetOutput {
    /// Target name.
    pub target: Target,
    /// File name inside the board's folder.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file.
    pub sha256: String,
    /// `farm` (shared iPXE binary + the board's autoexec.ipxe), `compile` (the board's key
    /// compiled in) or `prebuilt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The ISO mastering tool, for ISO images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso_tool: Option<IsoTool>,
    /// For `farm` images: the shared binaries (make goal, SHA-256) every board's image holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<(String, String)>,
}

/// `OUT/BOARD/manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// Board name.
    pub board: String,
    /// SHA-256 of the board's certificate.
    pub fingerprint: String,
    /// Certificate serial.
    pub serial: crate::types::Serial,
    /// `make` or `prebuilt`.
    pub mode: String,
    /// Git commit of the iPXE tree, when it is a git checkout.
    pub ipxe_commit: Option<String>,
    /// The images.
    pub targets: Vec<TargetOutput>,
    /// Seconds the build took.
    pub duration_s: f64,
    /// RFC 3339.
    pub built_at: String,
    /// What the operator must know (e.g. where the trusted CA must come from).
    pub notes: Vec<String>,
    /// The Secure Boot key that signed the EFI binaries (subject and SHA-256 of its
    /// certificate); absent when they are unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<String>,
}

/// Run a program with an explicit argument vector; on failure the error carries the tail of
/// its output.
pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| Error::Command {
        program: program.clone(),
        detail: format!("{what}: cannot start it: {e} (`ipxe-ca doctor` lists what is missing)"),
    })?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        return Err(Error::Command {
            program,
            detail: format!("{what} ({}):\n{tail}", out.status),
        });
    }
    Ok(text)
}

/// The embed script for a board, rendered from `ipxe-scripts/embed.ipxe`.
/// `imgverify`: the image's iPXE has the command (built from source with our config).
pub fn embed_script(
    registry: &Registry,
    board: &Board,
    ntp_server: Option<&str>,
    imgverify: bool,
) -> Result<String> {
    let config = crate::store::config::Config::load(registry.state())?;
    let path = registry.state().embed_script();
    let source = if path.exists() {
        state::read_to_string(&path)?
    } else {
        EMBED_TEMPLATE.to_string()
    };
    let mut ctx = Context::for_board(board, &config, Default::default(), imgverify);
    ctx.ntp_server = ntp_server.map(str::to_string);
    render::render("embed.ipxe", &source, &ctx, &[])
}

/// The board's private key, which every image embeds: only enrolled boards have one here.
pub(crate) fn held_key(registry: &Registry, board: &Board) -> Result<Vec<u8>> {
    registry.key_pem(&board.name)?.ok_or_else(|| {
        Error::invalid(format!(
            "ipxe-ca does not hold the key of board {} (it was signed from a CSR or registered): an image needs the key",
            board.name
        ))
    })
}

/// Boards to build: the named ones (each must be active), or every active board.
/// Active boards whose image in `out` is missing or was built for an older certificate
/// (after `renew`): what must be rebuilt and flashed.
pub fn stale_boards(registry: &Registry, out: &OutDir) -> Result<Vec<Board>> {
    Ok(registry
        .list()?
        .into_iter()
        .filter(|b| b.status == Status::Active)
        .filter(|b| Manifest::load(out, &b.name).map_or(true, |m| b.image_is_stale(&m.fingerprint)))
        .collect())
}

pub fn select_boards(registry: &Registry, names: &[BoardName], all: bool) -> Result<Vec<Board>> {
    let boards = if all {
        registry
            .list()?
            .into_iter()
            .filter(|b| b.status == Status::Active)
            .collect()
    } else {
        let mut v = Vec::new();
        for n in names {
            let b = registry.get(n)?;
            if b.status == Status::Revoked {
                return Err(Error::invalid(format!(
                    "board {n} is revoked: its image would be refused anyway; enroll a new board"
                )));
            }
            v.push(b);
        }
        v
    };
    if boards.is_empty() {
        return Err(Error::invalid(
            "no boards to build: name some, or build every active board",
        ));
    }
    Ok(boards)
}

/// Result of one board's build.
pub type BoardResult = std::result::Result<Manifest, (String, Error)>;

/// A build run at a glance: what was built, the notes the operator must read (once each),
/// the boards that failed.
#[derive(Debug)]
pub struct Summary<'a> {
    /// Manifests of the boards built.
    pub manifests: Vec<&'a Manifest>,
    /// Distinct notes, sorted.
    pub notes: Vec<&'a String>,
    /// Boards that failed.
    pub failed: Vec<&'a str>,
}

impl<'a> Summary<'a> {
    /// Summarise `results`.
    pub fn of(results: &'a [BoardResult]) -> Summary<'a> {
        let manifests: Vec<&Manifest> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut notes: Vec<&String> = manifests.iter().flat_map(|m| m.notes.iter()).collect();
        notes.sort();
        notes.dedup();
        let failed = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|(b, _)| b.as_str()))
            .collect();
        Summary {
            manifests,
            notes,
            failed,
        }
    }
}

/// Build images for `boards`. `on_done` is called as each board finishes (for progress).
pub fn build(
    registry: &Registry,
    boards: &[Board],
    opts: &BuildOptions,
    on_done: &(dyn Fn(&BoardResult) + Sync),
) -> Result<Vec<BoardResult>> {
    // Images hold their boards' keys: never where boot files are served from.
    let files = registry.state().files_dir();
    let out_abs = std::path::absolute(opts.out.root())
        .map_err(|e| Error::io("cannot resolve", opts.out.root(), e))?;
    let files_abs = std::fs::canonicalize(&files).unwrap_or(files);
    if out_abs.starts_with(&files_abs) {
        return Err(Error::invalid(format!(
            "the output directory {} is inside the files directory {}: images hold their boards' keys and everything there is served; build elsewhere",
            opts.out.root().display(),
            files_abs.display()
        )));
    }
    let arm64 = boards.iter().any(|b| b.arch == Arch::Arm64);
    doctor::preflight(
        &opts.targets,
        matches!(opts.source, Source::Prebuilt(_)),
        arm64,
    )?;
    let opts = &BuildOptions {
        secure_boot: crate::secure_boot::Signer::load(registry.state())?.map(std::sync::Arc::new),
        ..opts.clone()
    };
    let arches: std::collections::BTreeSet<Arch> = boards.iter().map(|b| b.arch).collect();
    if let Source::Prebuilt(dir) = &opts.source {
        // Every architecture's binary found (and of the right machine) before any image.
        for a in &arches {
            let efi = prebuilt::find_efi(dir, *a)?;
            if let Some(ntp) = &opts.ntp_server {
                prebuilt::require_ntp(&efi, ntp)?;
            }
        }
    }
    state::create_dir_private(opts.out.root())?;
    state::write_if_absent(
        &opts.out.marker(),
        b"ipxe-ca build output: every image holds its board's private key; never serve this folder\n",
        state::MODE_PUBLIC,
    )?;
    match &opts.source {
        Source::Prebuilt(dir) => {
            for t in &opts.targets {
                if *t != Target::EfiUsb {
                    return Err(Error::invalid(format!(
                        "target {} needs an iPXE source tree; a prebuilt iPXE makes efi-usb only",
                        t.name()
                    )));
                }
            }
            let mut results = Vec::new();
            for b in boards {
                let efi = prebuilt::find_efi(dir, b.arch)?;
                let r = prebuilt::build_board(registry, b, &efi, opts)
                    .map_err(|e| (b.name.to_string(), e));
                on_done(&r);
                results.push(r);
            }
            Ok(results)
        }
        Source::Tree(dir) => {
            make::check_targets(&opts.targets, boards)?;
            let tree = IpxeTree::open(dir)?;
            make::build_all(registry, &tree, boards, opts, on_done)
        }
    }
}

/// Write an image or manifest for a board: 0600 in a 0700 folder (images hold the board's key).
pub(crate) fn write_output(path: &Path, data: &[u8]) -> Result<()> {
    state::write_atomic(path, data, MODE_SECRET)
}

pub(crate) fn finish_manifest(
    board: &Board,
    mode: &str,
    ipxe_commit: Option<String>,
    targets: Vec<(Target, PathBuf)>,
    started: Instant,
    notes: Vec<String>,
    secure_boot: Option<&crate::secure_boot::Signer>,
) -> Result<Manifest> {
    let mut outs = Vec::new();
    for (t, p) in targets {
        let meta = std::fs::metadata(&p).map_err(|e| Error::io("cannot stat", &p, e))?;
        outs.push(TargetOutput {
            target: t,
            file: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            size: meta.len(),
            sha256: crate::digest::sha256_file(&p)?,
            route: None,
            iso_tool: None,
            shared: Vec::new(),
        });
    }
    let m = Manifest {
        board: board.name.to_string(),
        fingerprint: board.fingerprint_sha256.to_string(),
        serial: board.serial.clone(),
        mode: mode.to_string(),
        ipxe_commit,
        targets: outs,
        duration_s: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        built_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        notes,
        secure_boot: secure_boot.map(|s| format!("{} (SHA-256 {})", s.subject(), s.fingerprint())),
    };
    Ok(m)
}

impl Manifest {
    /// The manifest of `board`'s newest build in `out`.
    pub fn load(out: &OutDir, board: &BoardName) -> Result<Manifest> {
        let path = out.manifest(board);
        let text = std::fs::read(&path).map_err(|e| {
            Error::io(
                "no image built for this board (run `ipxe-ca build` first, or name the output directory)",
                &path,
                e,
            )
        })?;
        serde_json::from_slice(&text).map_err(|e| Error::Parse {
            path,
            detail: e.to_string(),
        })
    }

    /// Write it to `OUT/BOARD/manifest.json` (0600, beside the images).
    pub fn save(&self, out: &OutDir) -> Result<()> {
        let board: BoardName = self.board.parse()?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::invalid(e.to_string()))?;
        write_output(&out.manifest(&board), &json)
    }

    /// The image to put on a stick (hybrid, else usb, else efi-usb) and its SHA-256.
    pub fn stick_image(&self, out: &OutDir) -> Result<(PathBuf, String)> {
        let board: BoardName = self.board.parse()?;
        for want in [Target::Hybrid, Target::Usb, Target::EfiUsb] {
            if let Some(t) = self.targets.iter().find(|t| t.target == want) {
                return Ok((out.board_dir(&board).join(&t.file), t.sha256.clone()));
            }
        }
        Err(Error::invalid(format!(
            "the manifest {} has no image for a stick (hybrid, usb or efi-usb): build one with target hybrid",
            out.manifest(&board).display()
        )))
    }
}

/// What to write to a stick, given a board name or an image file: a registered board's
/// newest stick image (with the SHA-256 its manifest records) wins over a file of the same
/// name in the current directory.
pub fn stick_source(
    registry: &Registry,
    out: &OutDir,
    source: &str,
) -> Result<(PathBuf, Option<String>)> {
    let board = source
        .parse::<BoardName>()
        .ok()
        .filter(|b| registry.exists(b));
    match board {
        Some(b) => {
            let (img, sha) = Manifest::load(out, &b)?.stick_image(out)?;
            Ok((img, Some(sha)))
        }
        None if Path::new(source).is_file() => Ok((PathBuf::from(source), None)),
        None => {
            let b: BoardName = source.parse()?;
            let (img, sha) = Manifest::load(out, &b)?.stick_image(out)?;
            Ok((img, Some(sha)))
        }
    }
}

/// The board's `autoexec.ipxe` for an iPXE without its key compiled in: its certificate and
/// key as hex (iPXE uses a run-time key only when none was built in), then the embed script.
/// `pkcs1`: the key as PKCS#1, for iPXE older than 2023-06.
pub fn autoexec_script(
    registry: &Registry,
    board: &Board,
    ntp_server: Option<&str>,
    pkcs1: bool,
    imgverify: bool,
) -> Result<String> {
    let key_pem = held_key(registry, board)?;
    let cert_der = crate::ca::cert_der_from_bytes(&registry.cert_pem(&board.name)?)?;
    let key_der = crate::ca::board_key_der(&key_pem, pkcs1)?;
    let embed = embed_script(registry, board, ntp_server, imgverify)?;
    let body = embed.strip_prefix("#!ipxe").unwrap_or(&embed);
    Ok(format!(
        "#!ipxe\n# Board {}: certificate and key for mutual TLS (treat this file as secret).\nset cert:hexraw {}\nset privkey:hexraw {}\n{}",
        board.name,
        hex::encode(&cert_der),
        hex::encode(&key_der),
        body.trim_start_matches('\n')
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{BoardOptions, InitOptions, Lab, RenewOptions};

    /// A farm in a temp dir with the boards `names` enrolled (the submodules' tests use it too).
    pub(super) fn farm(names: &[&str]) -> (tempfile::TempDir, Lab, Vec<Board>) {
        let t = tempfile::tempdir().unwrap();
        let lab = Lab::open(t.path().join("s"));
        lab.init(&InitOptions::default()).unwrap();
        let names: Vec<BoardName> = names.iter().map(|n| n.parse().unwrap()).collect();
        let boards = lab.enroll_many(&names, &BoardOptions::default()).unwrap();
        (t, lab, boards)
    }

    fn built(b: &Board, out: &OutDir) {
        Manifest {
            board: b.name.to_string(),
            fingerprint: b.fingerprint_sha256.to_string(),
            serial: b.serial.clone(),
            mode: "prebuilt".into(),
            ipxe_commit: None,
            targets: Vec::new(),
            duration_s: 0.0,
            built_at: String::new(),
            notes: Vec::new(),
            secure_boot: None,
        }
        .save(out)
        .unwrap();
    }

    #[test]
    fn stale_boards_are_the_active_ones_without_an_image_of_their_certificate() {
        let (t, lab, boards) = farm(&["a", "b", "c"]);
        let names: Vec<BoardName> = boards.iter().map(|b| b.name.clone()).collect();
        let out = OutDir::new(t.path().join("out"));
        let stale = || -> Vec<String> {
            stale_boards(lab.registry(), &out)
                .unwrap()
                .iter()
                .map(|b| b.name.to_string())
                .collect()
        };
        assert_eq!(stale(), ["a", "b", "c"], "nothing built yet");
        built(&boards[0], &out);
        built(&boards[1], &out);
        assert_eq!(stale(), ["c"]);
        // b renewed: its image holds the certificate it had.
        lab.renew(&names[1..2], &RenewOptions::default()).unwrap();
        assert_eq!(stale(), ["b", "c"]);
        // c revoked: no image is wanted for it.
        lab.revoke(&names[2], crate::ca::Reason::Unspecified)
            .unwrap();
        assert_eq!(stale(), ["b"]);
    }

    #[test]
    fn a_manifest_records_each_image_and_the_time_to_the_millisecond() {
        let (t, _lab, mut boards) = farm(&["m1"]);
        let board = boards.remove(0);
        let img = t.path().join("m1-efi-usb.img");
        std::fs::write(&img, b"an image").unwrap();
        let started = Instant::now() - std::time::Duration::from_millis(1234);
        let m = finish_manifest(
            &board,
            "prebuilt",
            None,
            vec![(Target::EfiUsb, img.clone())],
            started,
            Vec::new(),
            None,
        )
        .unwrap();
        assert!(
            (1.234..1.5).contains(&m.duration_s),
            "{} s for a build started 1.234 s ago",
            m.duration_s
        );
        let ms = m.duration_s * 1000.0;
        assert!((ms - ms.round()).abs() < 1e-6, "{} s", m.duration_s);
        assert_eq!(m.targets[0].file, "m1-efi-usb.img");
        assert_eq!(m.targets[0].size, 8);
        assert_eq!(
            m.targets[0].sha256,
            crate::digest::sha256_file(&img).unwrap()
        );
        assert_eq!(m.fingerprint, board.fingerprint_sha256.to_string());
    }

    #[test]
    fn the_stick_image_is_the_hybrid_else_usb_else_efi_usb() {
        let out = OutDir::new("/out");
        let image = |target: Target, file: &str| TargetOutput {
            target,
            file: file.into(),
            size: 1,
            sha256: format!("sha-of-{file}"),
            route: None,
            iso_tool: None,
            shared: Vec::new(),
        };
        let mut m = Manifest {
            board: "b1".into(),
            fingerprint: String::new(),
            serial: "01".parse().unwrap(),
            mode: "make".into(),
            ipxe_commit: None,
            targets: vec![
                image(Target::Iso, "b1.iso"),
                image(Target::EfiUsb, "b1-efi.img"),
            ],
            duration_s: 0.0,
            built_at: String::new(),
            notes: Vec::new(),
            secure_boot: None,
        };
        let pick = |m: &Manifest| m.stick_image(&out).unwrap();
        assert_eq!(
            pick(&m),
            ("/out/b1/b1-efi.img".into(), "sha-of-b1-efi.img".into())
        );
        m.targets.push(image(Target::Usb, "b1.usb"));
        assert_eq!(pick(&m).0, PathBuf::from("/out/b1/b1.usb"));
        m.targets.push(image(Target::Hybrid, "b1.img"));
        assert_eq!(pick(&m), ("/out/b1/b1.img".into(), "sha-of-b1.img".into()));
        m.targets = vec![image(Target::Iso, "b1.iso")];
        assert!(m.stick_image(&out).is_err());
    }

    #[test]
    fn a_stick_is_written_from_a_boards_newest_image_or_from_a_file() {
        let (t, lab, mut boards) = farm(&["st"]);
        let board = boards.remove(0);
        let name = board.name.clone();
        let out = OutDir::new(t.path().join("out"));
        // Registered, nothing built: an error that says so.
        assert!(stick_source(lab.registry(), &out, "st").is_err());
        let img = out.board_dir(&name).join("st-efi-usb.img");
        std::fs::create_dir_all(img.parent().unwrap()).unwrap();
        std::fs::write(&img, b"image").unwrap();
        let m = finish_manifest(
            &board,
            "prebuilt",
            None,
            vec![(Target::EfiUsb, img.clone())],
            Instant::now(),
            Vec::new(),
            None,
        )
        .unwrap();
        m.save(&out).unwrap();
        let (path, sha) = stick_source(lab.registry(), &out, "st").unwrap();
        assert_eq!(path, img);
        assert_eq!(sha.as_deref(), Some(m.targets[0].sha256.as_str()));
        // A file that names no board: itself, with nothing to check it against.
        let file = t.path().join("any.img");
        std::fs::write(&file, b"x").unwrap();
        let (path, sha) = stick_source(lab.registry(), &out, file.to_str().unwrap()).unwrap();
        assert_eq!((path, sha), (file, None));
        // Neither a board nor a file.
        assert!(stick_source(lab.registry(), &out, "nothing-here").is_err());
    }

    #[test]
    fn boards_built_at_once_share_the_cores_and_make_gets_at_least_one() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let opts = BuildOptions::new(Source::Prebuilt("/nowhere".into()), Vec::new(), "/out");
        assert_eq!(opts.make_jobs, cores, "one board: make -j on every core");
        for jobs in 1..=4 {
            let o = opts.clone().with_jobs(jobs, None);
            assert_eq!(o.jobs, jobs);
            assert!(o.make_jobs >= 1, "{jobs}: {}", o.make_jobs);
            assert!(
                o.jobs * o.make_jobs <= cores.max(jobs),
                "{jobs} boards x make -j{} on {cores} cores",
                o.make_jobs
            );
        }
        assert_eq!(opts.clone().with_jobs(1, None).make_jobs, cores);
        assert_eq!(opts.clone().with_jobs(0, Some(3)).make_jobs, 3);
        assert_eq!(opts.with_jobs(0, None).jobs, 1);
    }
}
