//! Prebuilt mode: a FAT image (mtools) with a prebuilt `ipxe.efi` as `EFI/BOOT/BOOTX64.EFI` and
//! an `autoexec.ipxe` that sets the board's certificate and key, then runs the embed script.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use super::{finish_manifest, run, siglist, write_output, BuildOptions, Manifest, Target};
use crate::error::{Error, Result};
use crate::registry::Board;
use crate::state;
use crate::Lab;

/// Said with every prebuilt image: without it a prebuilt iPXE trusts public CAs instead of ours.
pub const TRUST_NOTE: &str = "prebuilt iPXE cannot pin our CA: the firmware must supply it as \
UEFI TlsCaCertificate (QEMU: -fw_cfg name=etc/edk2/https/cacerts,file=ca.siglist); otherwise \
iPXE trusts public CAs, not ours. Real boards that need a pinned CA need `build --ipxe-src`.";

pub(crate) fn find_efi(dir: &Path) -> Result<PathBuf> {
    if dir.is_file() {
        return Ok(dir.to_path_buf());
    }
    for name in ["ipxe-amd64.efi", "ipxe.efi", "bin-x86_64-efi/ipxe.efi"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::invalid(format!(
        "no ipxe-amd64.efi or ipxe.efi in {}: point --prebuilt at Debian's /usr/lib/ipxe (package ipxe, Debian 13 or later for HTTPS)",
        dir.display()
    )))
}

/// The board's `autoexec.ipxe`: its certificate and key as hex, then the embed script.
pub fn autoexec_script(lab: &Lab, board: &Board, ntp_server: Option<&str>) -> Result<String> {
    let reg = lab.registry();
    let key_path = super::held_key(lab, board)?;
    let cert_der = crate::ca::cert_der_from_bytes(&state::read(&reg.cert_path(&board.name))?)?;
    let key_der = PrivateKeyDer::from_pem_slice(&state::read(&key_path)?)
        .map_err(|e| Error::crypto(format!("cannot read key of {}", board.name), e))?;
    let embed = super::embed_script(lab, board, ntp_server)?;
    let body = embed.strip_prefix("#!ipxe").unwrap_or(&embed);
    Ok(format!(
        "#!ipxe\n# Board {}: certificate and key for mutual TLS (treat this file as secret).\nset cert:hexraw {}\nset privkey:hexraw {}\n{}",
        board.name,
        hex::encode(&cert_der),
        hex::encode(key_der.secret_der()),
        body.trim_start_matches('\n')
    ))
}

/// Bytes of FAT image needed for `payload` bytes of files, in whole MiB with room to spare.
fn image_size(payload: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    (payload + payload / 8 + MIB).div_ceil(MIB).max(2) * MIB
}

pub(crate) fn build_board(
    lab: &Lab,
    board: &Board,
    efi: &Path,
    opts: &BuildOptions,
) -> Result<Manifest> {
    let started = Instant::now();
    let dir = opts.out.join(board.name.as_str());
    state::create_dir_private(&dir)?;
    let script = autoexec_script(lab, board, opts.ntp_server.as_deref())?;
    let efi_len = std::fs::metadata(efi)
        .map_err(|e| Error::io("cannot read", efi, e))?
        .len();
    let tmp = dir.join(".staging");
    state::create_dir_private(&tmp)?;
    let result = (|| {
        let script_path = tmp.join("autoexec.ipxe");
        write_output(&script_path, script.as_bytes())?;
        let img_tmp = tmp.join("image.img");
        let size = image_size(efi_len + script.len() as u64);
        write_output(&img_tmp, &[])?;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img_tmp)
            .map_err(|e| Error::io("cannot open", &img_tmp, e))?;
        f.set_len(size)
            .map_err(|e| Error::io("cannot size", &img_tmp, e))?;
        drop(f);
        let sectors = (size / 512).to_string();
        let img = img_tmp.as_os_str();
        run(
            Command::new("mformat")
                .arg("-i")
                .arg(img)
                .args(["-T", &sectors, "-h", "64", "-s", "32", "-v", "IPXECA", "::"]),
            "formatting the FAT image (package mtools)",
        )?;
        run(
            Command::new("mmd")
                .arg("-i")
                .arg(img)
                .args(["::/EFI", "::/EFI/BOOT"]),
            "creating EFI/BOOT",
        )?;
        run(
            Command::new("mcopy")
                .arg("-i")
                .arg(img)
                .arg(efi)
                .arg("::/EFI/BOOT/BOOTX64.EFI"),
            "copying the EFI binary",
        )?;
        run(
            Command::new("mcopy")
                .arg("-i")
                .arg(img)
                .arg(&script_path)
                .arg("::/autoexec.ipxe"),
            "copying autoexec.ipxe",
        )?;
        let out = dir.join(Target::EfiUsb.file_name(&board.name));
        std::fs::rename(&img_tmp, &out)
            .map_err(|e| Error::io("cannot move image into", &out, e))?;
        // The CA certificate only: building never needs the CA key.
        let ca = crate::ca::cert_der_from_bytes(&state::read(&lab.state().ca_cert())?)?;
        let siglist = siglist::x509_siglist(&[&ca]);
        let sl = dir.join("ca.siglist");
        state::write_atomic(&sl, &siglist, state::MODE_PUBLIC)?;
        finish_manifest(
            board,
            &dir,
            "prebuilt",
            None,
            vec![(Target::EfiUsb, out)],
            started,
            vec![TRUST_NOTE.to_string()],
        )
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
