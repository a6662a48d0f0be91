//! Prebuilt mode: a FAT image (mtools) with a prebuilt `ipxe.efi` as `EFI/BOOT/BOOTX64.EFI` and
//! an `autoexec.ipxe` that sets the board's certificate and key, then runs the embed script.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{finish_manifest, image, BuildOptions, Manifest, Target};
use crate::board::Board;
use crate::error::{Error, Result};
use crate::siglist;
use crate::store::registry::Registry;
use crate::store::state;
use crate::types::Arch;

/// Said with every prebuilt image: without it a prebuilt iPXE trusts public CAs instead of ours.
pub const TRUST_NOTE: &str = "prebuilt iPXE cannot pin our CA: the firmware must supply it as \
UEFI TlsCaCertificate (QEMU: -fw_cfg name=etc/edk2/https/cacerts,file=ca.siglist); otherwise \
iPXE trusts public CAs, not ours. Real boards that need a pinned CA need `build --ipxe-src`.";

/// The prebuilt iPXE for `arch` in `dir` (Debian's /usr/lib/ipxe names them
/// `ipxe-amd64.efi` and `ipxe-arm64.efi`), or `dir` itself when it is that binary.
pub(crate) fn find_efi(dir: &Path, arch: Arch) -> Result<PathBuf> {
    let names: &[&str] = match arch {
        Arch::X86_64 => &["ipxe-amd64.efi", "ipxe.efi", "bin-x86_64-efi/ipxe.efi"],
        Arch::Arm64 => &["ipxe-arm64.efi", "bin-arm64-efi/ipxe.efi"],
    };
    let found = match dir.is_file() {
        true => Some(dir.to_path_buf()),
        false => names.iter().map(|n| dir.join(n)).find(|p| p.is_file()),
    };
    let Some(efi) = found else {
        return Err(Error::invalid(format!(
            "no {} in {}: use Debian's /usr/lib/ipxe (package ipxe, Debian 13 or later for \
             HTTPS and arm64)",
            names.join(" or "),
            dir.display()
        )));
    };
    match efi_arch(&efi)? {
        Some(a) if a == arch => Ok(efi),
        other => Err(Error::invalid(format!(
            "{} is an EFI binary for {}, not for {arch} boards",
            efi.display(),
            other.map_or("another architecture".to_string(), |a| a.to_string())
        ))),
    }
}

/// The architecture an EFI binary runs on (its PE header's machine), if it is one we build.
pub(crate) fn efi_arch(efi: &Path) -> Result<Option<Arch>> {
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(efi)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .map_err(|e| Error::io("cannot read", efi, e))?;
    let machine = crate::secure_boot::pe_machine(&head);
    Ok(match machine {
        Some(0x8664) => Some(Arch::X86_64),
        Some(0xaa64) => Some(Arch::Arm64),
        _ => None,
    })
}

/// Whether an iPXE binary has the command `name` built in: iPXE keeps each command's name as
/// a string of its own (`"\0ntp\0"`), which an uncompressed EFI binary shows as it is.
/// Debian 13's `ipxe-amd64.efi` has no `ntp` (nor `imgverify`); a tree built with NTP_CMD has.
pub(crate) fn has_command(efi: &Path, name: &str) -> Result<bool> {
    let bytes = state::read(efi)?;
    let needle = [&[0u8][..], name.as_bytes(), &[0u8][..]].concat();
    Ok(bytes.windows(needle.len()).any(|w| w == needle.as_slice()))
}

/// A prebuilt iPXE asked to set the board's clock from `server` must have the `ntp` command:
/// otherwise every board would stop at `ntp: command not found`, before its first HTTPS
/// request.
pub(crate) fn require_ntp(efi: &Path, server: &str) -> Result<()> {
    if has_command(efi, "ntp")? {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{} has no `ntp` command, so boards could not set their clock from {server}: build \
         from an iPXE source tree (ipxe-ca enables NTP there), or build without an NTP server",
        efi.display()
    )))
}

pub(crate) fn build_board(
    registry: &Registry,
    board: &Board,
    efi: &Path,
    opts: &BuildOptions,
) -> Result<Manifest> {
    let started = Instant::now();
    let dir = opts.out.board_dir(&board.name);
    state::create_dir_private(&dir)?;
    // Debian 13's prebuilt iPXE (2025) reads PKCS#8 keys.
    let script = super::autoexec_script(registry, board, opts.ntp_server.as_deref(), false, false)?;
    let out = dir.join(Target::EfiUsb.file_name(&board.name));
    let tmp = dir.join(format!(".{}.tmp", Target::EfiUsb.file_name(&board.name)));
    let epoch = board.not_before.unix_timestamp().max(0);
    let sb = opts.secure_boot.as_deref();
    image::fat_image(&tmp, efi, board.arch, Some(script.as_bytes()), epoch, sb)?;
    std::fs::rename(&tmp, &out).map_err(|e| Error::io("cannot move image into", &out, e))?;
    // The CA certificate only: building never needs the CA key.
    let ca = crate::ca::cert_der_from_bytes(&state::read(&registry.state().ca_cert())?)?;
    let siglist = siglist::x509_siglist(&[&ca]);
    let sl = dir.join("ca.siglist");
    state::write_atomic(&sl, &siglist, state::MODE_PUBLIC)?;
    let mut m = finish_manifest(
        board,
        "prebuilt",
        None,
        vec![(Target::EfiUsb, out)],
        started,
        vec![TRUST_NOTE.to_string()],
        sb,
    )?;
    for t in &mut m.targets {
        t.route = Some("prebuilt".to_string());
    }
    m.save(&opts.out)?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of a PE image for `machine`.
    fn pe(machine: u16) -> Vec<u8> {
        let mut d = vec![0u8; 512];
        d[0..2].copy_from_slice(b"MZ");
        d[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        d[0x80..0x84].copy_from_slice(b"PE\0\0");
        d[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
        d
    }

    #[test]
    fn each_architecture_gets_its_own_prebuilt_binary_and_no_other() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("ipxe-amd64.efi"), pe(0x8664)).unwrap();
        std::fs::write(t.path().join("ipxe-arm64.efi"), pe(0xaa64)).unwrap();
        assert_eq!(
            find_efi(t.path(), Arch::X86_64).unwrap(),
            t.path().join("ipxe-amd64.efi")
        );
        assert_eq!(
            find_efi(t.path(), Arch::Arm64).unwrap(),
            t.path().join("ipxe-arm64.efi")
        );
        // A binary named for one architecture but built for another is refused.
        let wrong = t.path().join("ipxe-arm64.efi");
        std::fs::write(&wrong, pe(0x8664)).unwrap();
        let e = find_efi(t.path(), Arch::Arm64).unwrap_err().to_string();
        assert!(e.contains("for x86_64, not for arm64"), "{e}");
        assert_eq!(efi_arch(&wrong).unwrap(), Some(Arch::X86_64));
        std::fs::write(&wrong, b"not an EFI binary").unwrap();
        assert_eq!(efi_arch(&wrong).unwrap(), None);
        let e = find_efi(&wrong, Arch::Arm64).unwrap_err().to_string();
        assert!(e.contains("another architecture"), "{e}");
    }
}
