//! Secure Boot under the farm's own key, end to end: OVMF with Secure Boot on, its db holding
//! Debian's snakeoil test certificate (as a farm's boards hold the farm's), the matching key
//! adopted by `ipxe-ca secure-boot adopt`. sbsigntool's `sbverify` checks our signatures
//! independently; the firmware has the last word.

use std::path::{Path, PathBuf};

use crate::boot::{boot_lab, MARKER, SECRET, STAGES};
use crate::qemu::{self, Boot, Firmware, Machine, Medium};
use crate::util::{openssl, s, tool, Lab};

const SNAKEOIL_KEY: &str = "/usr/share/ovmf/PkKek-1-snakeoil.key";
const SNAKEOIL_CERT: &str = "/usr/share/ovmf/PkKek-1-snakeoil.pem";

/// The snakeoil db key, decrypted (passphrase `snakeoil`), adopted as the farm's.
fn adopt(lab: &Lab) {
    let key = lab.tmp.path().join("db.key");
    openssl(&[
        "pkey",
        "-in",
        SNAKEOIL_KEY,
        "-passin",
        "pass:snakeoil",
        "-out",
        s(&key),
    ]);
    let out = lab.ok(&[
        "secure-boot",
        "adopt",
        "--key",
        s(&key),
        "--cert",
        SNAKEOIL_CERT,
    ]);
    assert!(out.contains("SnakeOil"), "{out}");
}

/// `sbverify --cert` with the db certificate: (verified, what it said).
fn sbverify(file: &Path) -> (bool, String) {
    tool("sbverify", &["--cert", SNAKEOIL_CERT, s(file)])
}

/// The EFI binary on a stick image.
fn bootx64(img: &Path) -> PathBuf {
    let out = img.with_extension("BOOTX64.EFI");
    let _ = std::fs::remove_file(&out);
    let (ok, err) = tool("mcopy", &["-i", s(img), "::/EFI/BOOT/BOOTX64.EFI", s(&out)]);
    assert!(ok, "{err}");
    out
}

fn boot(name: &str, img: &Path, siglist: &Path, stop_at: &str, abort_on: &[&str]) -> Boot {
    qemu::boot(
        name,
        &Machine {
            firmware: Firmware::OvmfSecureBoot,
            medium: Medium::Stick(img.to_path_buf()),
            siglist: Some(siglist.to_path_buf()),
            rtc: None,
        },
        stop_at,
        abort_on,
        &STAGES,
    )
}

/// Firmware with Secure Boot on runs the stick's iPXE and the kernel only once the farm's key
/// has signed them: before `secure-boot adopt` the stick never starts; after it, a kernel
/// signed by its distribution alone is refused at hand-off; signed by `sign-files`, Linux
/// starts with the board's secret.
#[test]
fn under_secure_boot_only_what_the_farm_signed_runs() {
    let b = boot_lab();
    b.enroll("sb");
    let _srv = b.lab.serve_on(b.https, b.http, &[]);

    let (img, siglist) = b.build(&b.lab, "sb");
    assert!(!sbverify(&bootx64(&img)).0, "signed without a key?");
    let run = boot(
        "sb-unsigned-ipxe",
        &img,
        &siglist,
        "Access Denied",
        &["iPXE initialising"],
    );
    assert!(!run.serial.contains("ipxe-ca: board"), "{}", run.serial);

    adopt(&b.lab);
    let (img, siglist) = b.build(&b.lab, "sb");
    let (ok, said) = sbverify(&bootx64(&img));
    assert!(ok, "sbverify refuses the stick's iPXE: {said}");
    let manifest = std::fs::read_to_string(img.with_file_name("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"secure_boot\"") && manifest.contains("SnakeOil"),
        "{manifest}"
    );
    // Debian's kernel carries Debian's signature only: `sign-files --check` says the
    // firmware will refuse it, and it does, when iPXE hands over.
    let o = b.lab.run(&["sign-files", "--check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && out.contains("vmlinuz (Secure Boot: not signed by the farm's key"),
        "{out}"
    );
    let run = boot(
        "sb-distribution-kernel",
        &img,
        &siglist,
        "7f04818f",
        &[MARKER],
    );
    assert!(run.serial.contains("ipxe-ca-profile:"), "{}", run.serial);

    let out = b.lab.ok(&["sign-files"]);
    assert!(out.contains("vmlinuz (and for Secure Boot)"), "{out}");
    let kernel = b.lab.path("files/vmlinuz");
    let (ok, said) = sbverify(&kernel);
    assert!(ok, "sbverify refuses the kernel: {said}");
    let (_, list) = tool("sbverify", &["--list", s(&kernel)]);
    assert!(
        list.contains("Debian") && list.contains("SnakeOil"),
        "the distribution's signature is kept beside the farm's: {list}"
    );
    b.lab.ok(&["sign-files", "--check"]);
    let run = boot(
        "sb-signed",
        &img,
        &siglist,
        "CMDLINE:",
        &["7f04818f", "Kernel panic", "Access Denied"],
    );
    assert!(
        run.serial.contains(MARKER) && run.serial.contains(SECRET),
        "{}",
        run.serial
    );
}

/// A key the certificate does not belong to, or an encrypted one, is refused and nothing is
/// written.
#[test]
fn a_secure_boot_key_that_cannot_sign_is_refused_and_changes_nothing() {
    let lab = Lab::init();
    let before = lab.snapshot();
    let err = lab.fails(&[
        "secure-boot",
        "adopt",
        "--key",
        SNAKEOIL_KEY,
        "--cert",
        SNAKEOIL_CERT,
    ]);
    assert!(
        err.contains("encrypted") && err.contains("openssl pkey"),
        "{err}"
    );
    let other = lab.tmp.path().join("other.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        s(&other),
    ]);
    let err = lab.fails(&[
        "secure-boot",
        "adopt",
        "--key",
        s(&other),
        "--cert",
        SNAKEOIL_CERT,
    ]);
    assert!(err.contains("does not belong"), "{err}");
    assert_eq!(before, lab.snapshot());
}
