//! Boot media assembled from iPXE binaries: a FAT image (UEFI stick, or the ESP inside an ISO)
//! and ISO images that boot as a CD and, written raw, as a USB stick under BIOS and UEFI.
//!
//! ipxe-ca assembles these itself instead of calling iPXE's `util/genfsimg`: with
//! `SOURCE_DATE_EPOCH` set, genfsimg passes xorriso-only flags to Debian's genisoimage, falls
//! through to xorrisofs and then leaves out the MBR, so the image never boots from a stick.
//! Both routes here give an MBR (isolinux's) plus a GPT with the EFI partition.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::run;
use crate::error::{Error, Result};
use crate::secure_boot::Signer;
use crate::store::state::{self, MODE_SECRET};
use crate::types::Arch;

/// The ISO mastering tool in use: chosen by what is installed, xorriso first because its
/// output is byte-for-byte reproducible (isohybrid writes random GPT GUIDs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsoTool {
    /// `xorrisofs` with isolinux's MBR and a GPT (`-isohybrid-gpt-basdat`).
    Xorriso,
    /// `genisoimage`, then `isohybrid --uefi` for the MBR and GPT.
    Genisoimage,
}

/// Where Debian and others keep a syslinux file.
fn syslinux_file(name: &str) -> Option<PathBuf> {
    [
        "/usr/lib/ISOLINUX",
        "/usr/lib/syslinux/modules/bios",
        "/usr/lib/syslinux/mbr",
        "/usr/lib/syslinux",
        "/usr/share/syslinux",
    ]
    .iter()
    .map(|d| Path::new(d).join(name))
    .find(|p| p.is_file())
}

/// A program on PATH.
pub(crate) fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// The ISO tool this machine offers, if any (both routes also need isolinux).
pub fn iso_tool() -> Option<IsoTool> {
    if on_path("xorrisofs") && syslinux_file("isohdpfx.bin").is_some() {
        Some(IsoTool::Xorriso)
    } else if on_path("genisoimage") && on_path("isohybrid") {
        Some(IsoTool::Genisoimage)
    } else {
        None
    }
}

/// What goes on the medium.
pub(crate) struct Media<'a> {
    /// The BIOS iPXE (`ipxe.lkrn`), booted by isolinux.
    pub lkrn: Option<&'a Path>,
    /// The UEFI iPXE, as `EFI/BOOT/BOOTX64.EFI`.
    pub efi: Option<&'a Path>,
    /// `autoexec.ipxe`: run by an iPXE that has no embedded script.
    pub script: Option<&'a [u8]>,
    /// Every timestamp in the image (reproducible builds).
    pub epoch: i64,
    /// Signs the EFI binary for Secure Boot.
    pub secure_boot: Option<&'a Signer>,
}

/// Write `data` to `path` (0600) with its mtime at `epoch`.
fn put(path: &Path, data: &[u8], epoch: i64) -> Result<()> {
    state::write_atomic(path, data, MODE_SECRET)?;
    touch(path, epoch)
}

fn touch(path: &Path, epoch: i64) -> Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch.max(0) as u64);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .map_err(|e| Error::io("cannot set the time of", path, e))
}

fn touch_dir(path: &Path, epoch: i64) -> Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(epoch.max(0) as u64);
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(t))
        .map_err(|e| Error::io("cannot set the time of", path, e))
}

/// `YYYYMMDDhhmmss00`, the date format of xorriso's `--set_all_file_dates`.
fn iso_date(epoch: i64) -> Result<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch)
        .map_err(|e| Error::invalid(format!("bad build time {epoch}: {e}")))?;
    Ok(format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

fn copy_in(from: &Path, to: &Path, epoch: i64) -> Result<()> {
    put(to, &state::read(from)?, epoch)
}

/// An EFI binary as it goes on a medium: signed for Secure Boot when the farm has a key.
pub(crate) fn efi_binary(efi: &Path, secure_boot: Option<&Signer>) -> Result<Vec<u8>> {
    let data = state::read(efi)?;
    match secure_boot {
        Some(sb) => sb.sign(&data),
        None => Ok(data),
    }
}

/// Bytes of FAT image for `payload` bytes of files: whole MiB with room to spare.
fn fat_size(payload: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    (payload + payload / 8 + MIB).div_ceil(MIB).max(2) * MIB
}

fn mtools(prog: &str, epoch: i64) -> Command {
    let mut c = Command::new(prog);
    c.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("MTOOLS_SKIP_CHECK", "1");
    c
}

/// A FAT image holding `EFI/BOOT/BOOTX64.EFI` (or the arm64 `BOOTAA64.EFI`) and, if given, `/autoexec.ipxe`: a UEFI stick
/// on its own, or the EFI System Partition inside an ISO.
/// With a Secure Boot key, the EFI binary carries its signature.
pub(crate) fn fat_image(
    out: &Path,
    efi: &Path,
    arch: Arch,
    script: Option<&[u8]>,
    epoch: i64,
    secure_boot: Option<&Signer>,
) -> Result<()> {
    let work = out.with_extension("parts");
    state::create_dir_private(&work)?;
    let boot_file = arch.efi_boot_file();
    let result = (|| {
        let efi_copy = work.join(boot_file);
        put(&efi_copy, &efi_binary(efi, secure_boot)?, epoch)?;
        let payload = std::fs::metadata(&efi_copy)
            .map_err(|e| Error::io("cannot stat", &efi_copy, e))?
            .len()
            + script.map_or(0, |s| s.len() as u64);
        let size = fat_size(payload);
        put(out, &[], epoch)?;
        std::fs::File::options()
            .write(true)
            .open(out)
            .and_then(|f| f.set_len(size))
            .map_err(|e| Error::io("cannot size", out, e))?;
        let sectors = (size / 512).to_string();
        // A fixed volume serial keeps the image reproducible.
        let serial = format!("{:08x}", epoch.rem_euclid(1 << 32));
        run(
            mtools("mformat", epoch).arg("-i").arg(out).args([
                "-T", &sectors, "-h", "64", "-s", "32", "-N", &serial, "-v", "IPXECA", "::",
            ]),
            "formatting the FAT image (package mtools)",
        )?;
        run(
            mtools("mmd", epoch)
                .arg("-i")
                .arg(out)
                .args(["::/EFI", "::/EFI/BOOT"]),
            "creating EFI/BOOT in the FAT image",
        )?;
        run(
            mtools("mcopy", epoch)
                .args(["-m", "-i"])
                .arg(out)
                .arg(&efi_copy)
                .arg(format!("::/EFI/BOOT/{boot_file}")),
            "copying the EFI binary into the FAT image",
        )?;
        if let Some(s) = script {
            let p = work.join("autoexec.ipxe");
            put(&p, s, epoch)?;
            run(
                mtools("mcopy", epoch)
                    .args(["-m", "-i"])
                    .arg(out)
                    .arg(&p)
                    .arg("::/autoexec.ipxe"),
                "copying autoexec.ipxe into the FAT image",
            )?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

/// An ISO image: isolinux → `ipxe.lkrn` for BIOS (with `autoexec.ipxe` as its initrd) and an
/// El Torito EFI image for UEFI; MBR + GPT so that it boots when written raw to a stick.
pub(crate) fn iso_image(out: &Path, media: &Media) -> Result<IsoTool> {
    let tool = iso_tool().ok_or_else(|| {
        Error::invalid(
            "an ISO image needs xorriso, or genisoimage plus isohybrid \
(apt-get install xorriso isolinux syslinux-common; `ipxe-ca doctor` checks)",
        )
    })?;
    let need = |name: &str| {
        syslinux_file(name).ok_or_else(|| {
            Error::invalid(format!(
                "{name} not found: apt-get install isolinux syslinux-common"
            ))
        })
    };
    let isolinux = need("isolinux.bin")?;
    let ldlinux = need("ldlinux.c32")?;
    let work = out.with_extension("parts");
    let root = work.join("iso");
    state::create_dir_private(&root)?;
    let epoch = media.epoch;
    let result = (|| {
        // isohybrid and xorriso's MBR both need the isolinux boot record, even for UEFI only.
        copy_in(&isolinux, &root.join("isolinux.bin"), epoch)?;
        copy_in(&ldlinux, &root.join("ldlinux.c32"), epoch)?;
        let mut cfg = String::from("SAY iPXE (ipxe-ca)\n");
        if let Some(lkrn) = media.lkrn {
            copy_in(lkrn, &root.join("ipxe.lkrn"), epoch)?;
            cfg.push_str("DEFAULT ipxe\nLABEL ipxe\n KERNEL ipxe.lkrn\n");
            if let Some(s) = media.script {
                put(&root.join("autoexec.ipxe"), s, epoch)?;
                cfg.push_str(" APPEND initrd=autoexec.ipxe\n");
            }
        }
        put(&root.join("isolinux.cfg"), cfg.as_bytes(), epoch)?;
        if let Some(efi) = media.efi {
            fat_image(
                &root.join("esp.img"),
                efi,
                Arch::X86_64,
                media.script,
                epoch,
                media.secure_boot,
            )?;
        }
        // Everything in the tree is ours and private: the tools need to read it, nothing else.
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700));
        let mut args: Vec<String> = vec![
            "-quiet".into(),
            "-volid".into(),
            "IPXE".into(),
            "-J".into(),
            "-R".into(),
            "-l".into(),
        ];
        // Directories get their time too: genisoimage records the root's mtime.
        touch_dir(&root, epoch)?;
        if tool == IsoTool::Xorriso {
            // xorriso reads SOURCE_DATE_EPOCH for the volume, these for every file and dir.
            let date = iso_date(epoch)?;
            args.push("--set_all_file_dates".into());
            args.push(date.clone());
            args.push(format!("--modification-date={date}"));
            let mbr = need("isohdpfx.bin")?;
            args.push("-isohybrid-mbr".into());
            args.push(mbr.to_string_lossy().into_owned());
        }
        args.extend(
            [
                "-c",
                "boot.cat",
                "-b",
                "isolinux.bin",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
            ]
            .map(String::from),
        );
        if media.efi.is_some() {
            args.extend(["-eltorito-alt-boot", "-e", "esp.img", "-no-emul-boot"].map(String::from));
            if tool == IsoTool::Xorriso {
                args.push("-isohybrid-gpt-basdat".into());
            }
        }
        let prog = match tool {
            IsoTool::Xorriso => "xorrisofs",
            IsoTool::Genisoimage => "genisoimage",
        };
        run(
            Command::new(prog)
                .args(&args)
                .arg("-o")
                .arg(out)
                .arg(&root)
                .env("SOURCE_DATE_EPOCH", epoch.to_string()),
            "mastering the ISO image",
        )?;
        if tool == IsoTool::Genisoimage {
            let mut c = Command::new("isohybrid");
            if media.efi.is_some() {
                c.arg("--uefi");
            }
            c.args(["--id", &format!("{}", epoch.rem_euclid(1 << 32))])
                .arg(out);
            run(
                &mut c,
                "making the ISO bootable from a USB stick (isohybrid)",
            )?;
        }
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(MODE_SECRET))
            .map_err(|e| Error::io("cannot set mode on", out, e))?;
        check_hybrid(out)?;
        Ok(tool)
    })();
    let _ = std::fs::remove_dir_all(&work);
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

/// An image a stick can boot carries an MBR boot signature (isohybrid's, or xorriso's).
pub fn check_hybrid(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 520];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| Error::io("cannot read", path, e))?;
    if head[510..512] != [0x55, 0xaa] {
        return Err(Error::invalid(format!(
            "{} has no MBR boot signature: it would not boot from a USB stick",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stick_image_needs_an_mbr_boot_signature() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("img");
        let mut data = vec![0u8; 4096];
        std::fs::write(&p, &data).unwrap();
        let e = check_hybrid(&p).unwrap_err().to_string();
        assert!(e.contains("no MBR boot signature"), "{e}");
        data[510..512].copy_from_slice(&[0x55, 0xaa]);
        std::fs::write(&p, &data).unwrap();
        assert!(check_hybrid(&p).is_ok());
        std::fs::write(&p, &data[..100]).unwrap();
        assert!(check_hybrid(&p).is_err(), "a file too short to hold one");
    }

    #[test]
    fn staged_files_and_folders_carry_the_builds_time() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("autoexec.ipxe");
        put(&f, b"#!ipxe\n", 1_700_000_000).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mtime(), 1_700_000_000);
        touch_dir(t.path(), 1_600_000_000).unwrap();
        assert_eq!(std::fs::metadata(t.path()).unwrap().mtime(), 1_600_000_000);
        assert!(touch(&t.path().join("missing"), 1).is_err());
    }

    #[test]
    fn fat_size_leaves_room_and_rounds_to_mib() {
        assert_eq!(fat_size(0), 2 << 20);
        let s = fat_size(1_200_000);
        assert!(s >= 1_200_000 + (1 << 20) && s.is_multiple_of(1 << 20));
        // An eighth more for the file system, and a MiB.
        assert_eq!(fat_size(8 << 20), 10 << 20);
        assert_eq!(fat_size(64 << 20), (64 + 8 + 1) << 20);
    }
}
