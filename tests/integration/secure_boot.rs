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
            // An empty path: no CA from the firmware (the image pins its own).
            siglist: (!siglist.as_os_str().is_empty()).then(|| siglist.to_path_buf()),
            rtc: None,
            vars: None,
        },
        stop_at,
        abort_on,
        &STAGES,
    )
}

/// The farm's db key is picked up by `build` on its own: the same `build` line before and
/// after `secure-boot adopt` gives an unsigned, then a signed iPXE that `sbverify` accepts,
/// and the manifest names the key (without a QEMU boot: the firmware's word is below).
#[test]
fn build_signs_for_secure_boot_once_the_farm_has_a_db_key() {
    let lab = Lab::init();
    lab.enroll("sk", &[]);
    let out = lab.tmp.path().join("out");
    let build = || {
        let o = lab.build_efi_usb("sk", &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let img = out.join("sk/sk-efi-usb.img");
        let manifest = std::fs::read_to_string(out.join("sk/manifest.json")).unwrap();
        (sbverify(&bootx64(&img)), manifest)
    };
    let ((signed, _), manifest) = build();
    assert!(!signed, "signed without a key?");
    assert!(!manifest.contains("\"secure_boot\""), "{manifest}");
    adopt(&lab);
    let ((signed, said), manifest) = build();
    assert!(signed, "sbverify refuses the stick's iPXE: {said}");
    assert!(
        manifest.contains("\"secure_boot\"") && manifest.contains("SnakeOil"),
        "{manifest}"
    );
}

/// Firmware with Secure Boot on runs the stick's iPXE and the kernel only once the farm's key
/// has signed them: before `secure-boot adopt` the stick never starts; after it, a kernel
/// signed by its distribution alone is refused at hand-off; signed by `sign-files`, Linux
/// starts with the board's secret.
#[test]
fn under_secure_boot_only_what_the_farm_signed_runs() {
    let b = boot_lab();
    b.enroll("sb");
    let srv = b.lab.serve_on(b.https, b.http, &[]);

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
    // The console shows the firmware's refusal; the server log and the board's history say
    // which file and why.
    assert!(run.serial.contains("7f04818f"), "{}", run.serial);
    let why = "vmlinuz is not signed by the farm's Secure Boot key";
    assert!(srv.output().contains(why), "{}", srv.output());
    let history = b.lab.ok(&["history", "sb"]);
    assert!(history.contains(why), "{history}");

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

/// The source route under Secure Boot: iPXE built from its own source with the CA pinned (no
/// CA from the firmware), every EFI binary `build` writes signed so that `sbverify` accepts it,
/// and the stick booting Linux with kernel and initrd checked by `imgverify` as well.
#[test]
fn source_built_images_are_signed_for_secure_boot_and_boot_linux_with_the_ca_pinned() {
    use crate::boot::{assets, initramfs};
    let Some(src) =
        crate::real_ipxe::tree("IPXE_SRC", "source_built_images_are_signed_for_secure_boot")
    else {
        return;
    };
    let (https, http) = (crate::util::free_port(), crate::util::free_port());
    let lab = Lab::for_guest(https, http, false);
    std::fs::copy(assets().join("vmlinuz"), lab.path("files/vmlinuz")).unwrap();
    std::fs::copy(initramfs(lab.tmp.path()), lab.path("files/initrd.img")).unwrap();
    // Signed for imgverify before the farm had a Secure Boot key.
    lab.ok(&["sign-files"]);
    adopt(&lab);
    lab.enroll(
        "sbsrc",
        &[
            "--var",
            "cmdline=console=ttyS0 panic=-1",
            "--secret",
            &format!("s3_key={SECRET}"),
        ],
    );
    let _srv = lab.serve_on(https, http, &[]);
    let out = lab.tmp.path().join("out");
    let o = lab.run(&[
        "build",
        "sbsrc",
        "--ipxe-src",
        s(&src),
        "--out",
        s(&out),
        "--target",
        "efi",
        "--target",
        "efi-usb",
        "--target",
        "efi-iso",
        "--target",
        "hybrid",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = out.join("sbsrc");
    let mut binaries = vec![
        dir.join("sbsrc-efi.efi"),
        bootx64(&dir.join("sbsrc-efi-usb.img")),
    ];
    for iso in ["sbsrc-efi-iso.iso", "sbsrc-hybrid.iso"] {
        let esp = dir.join(format!("{iso}.esp.img"));
        let (ok, said) = tool(
            "xorriso",
            &[
                "-osirrox",
                "on",
                "-indev",
                s(&dir.join(iso)),
                "-extract",
                "/esp.img",
                s(&esp),
            ],
        );
        assert!(ok, "{said}");
        binaries.push(bootx64(&esp));
    }
    for b in &binaries {
        let (ok, said) = sbverify(b);
        assert!(ok, "{}: {said}", b.display());
    }
    // imgverify passes; the firmware refuses the kernel the farm's key did not sign.
    let refused = boot(
        "sb-source-kernel-unsigned",
        &dir.join("sbsrc-efi-usb.img"),
        &PathBuf::new(),
        "7f04818f",
        &["Access Denied", "SIGNATURE CHECK FAILED", MARKER],
    );
    assert!(
        refused.serial.contains("ipxe-ca: board sbsrc"),
        "{}",
        refused.serial
    );
    let out = lab.ok(&["sign-files"]);
    assert!(out.contains("vmlinuz (and for Secure Boot)"), "{out}");
    let run = boot(
        "sb-source-linux",
        &dir.join("sbsrc-efi-usb.img"),
        &PathBuf::new(),
        "CMDLINE:",
        &[
            "Access Denied",
            "7f04818f",
            "SIGNATURE CHECK FAILED",
            "ipxe-ca: cannot fetch",
            "Kernel panic",
        ],
    );
    assert!(run.serial.contains(MARKER), "{}", run.serial);
}

/// A db key adopted after images were built and kernels signed: `check` and `doctor` name
/// every image and EFI executable the firmware would now refuse, until they are built and
/// signed again.
#[test]
fn check_and_doctor_name_what_secure_boot_would_refuse() {
    let lab = Lab::init();
    lab.enroll("old", &[]);
    let prebuilt = crate::boot::prebuilt_dir();
    let build = || {
        let o = lab.run(&[
            "build",
            "old",
            "--prebuilt",
            s(&prebuilt),
            "--target",
            "efi-usb",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    build();
    std::fs::copy(prebuilt.join("ipxe-amd64.efi"), lab.path("files/chain.efi")).unwrap();
    lab.ok(&["sign-files"]);
    lab.ok(&["check"]);
    adopt(&lab);
    let o = lab.run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("image-not-signed") && out.contains("board old's images"),
        "{out}"
    );
    assert!(
        out.contains("secure-boot-unsigned") && out.contains("chain.efi"),
        "{out}"
    );
    let o = lab.run(&["doctor", "--prebuilt", "--target", "efi-usb"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("chain.efi") && err.contains("without the farm's Secure Boot signature"),
        "{err}"
    );
    build();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(lab.path(p)).unwrap().permissions().mode();
    std::fs::set_permissions(
        lab.path("files/chain.efi"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    // A file that is no EFI executable gets its detached signature and nothing else.
    let initrd = b"not an EFI executable".repeat(100);
    std::fs::write(lab.path("files/initrd-sb"), &initrd).unwrap();
    let out = lab.ok(&["sign-files", "--json"]);
    let done: serde_json::Value = serde_json::from_str(&out).unwrap();
    let row = |p: &str| {
        done.as_array()
            .unwrap()
            .iter()
            .find(|d| d["path"] == p)
            .unwrap_or_else(|| panic!("{p} in {out}"))
            .clone()
    };
    assert_eq!(row("chain.efi")["secure_boot"], true, "{out}");
    // Signed in place for Secure Boot, with the mode it had.
    assert_eq!(mode("files/chain.efi"), 0o100640);
    assert_eq!(row("initrd-sb")["secure_boot"], false, "{out}");
    assert_eq!(row("initrd-sb")["action"], "signed", "{out}");
    assert_eq!(std::fs::read(lab.path("files/initrd-sb")).unwrap(), initrd);
    assert!(crate::trust::cms_verifies(&lab, "initrd-sb"));
    lab.ok(&["check"]);
}

/// An initramfs whose /init enrolls `vars` (name, payload: attributes then the `.auth` file)
/// through efivarfs, as `efi-updatevar` does, says what the firmware answered, then powers off.
fn enroller(dir: &Path, vars: &[(String, Vec<u8>)]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("enroller");
    for d in ["bin", "proc", "dev", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    // efivarfs is a module in Debian's cloud kernel: taken from the same package.
    let deb = std::fs::read_dir(crate::boot::assets().join("debs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("linux-image"))
        .expect("the kernel package scripts/test.sh fetched");
    let x = dir.join("kernel-deb");
    let (ok, said) = tool("dpkg-deb", &["-x", s(&deb), s(&x)]);
    assert!(ok, "{said}");
    let (_, found) = tool("find", &[s(&x), "-name", "efivarfs.ko*"]);
    let ko = PathBuf::from(
        found
            .lines()
            .next()
            .expect("efivarfs.ko in the kernel package"),
    );
    assert!(
        ko.extension().is_some_and(|e| e == "ko"),
        "compressed module: {ko:?}"
    );
    std::fs::copy(&ko, root.join("efivarfs.ko")).unwrap();
    let mut script = String::from(
        "#!/bin/busybox sh\nB=/bin/busybox\n$B mount -t devtmpfs dev /dev\n$B mount -t proc proc /proc\n\
         $B mount -t sysfs sys /sys\nexec >/dev/ttyS0 2>&1\n$B insmod /efivarfs.ko\n\
         $B mount -t efivarfs efivarfs /sys/firmware/efi/efivars || echo NO-EFIVARFS\n",
    );
    let mut names = vec![];
    for (name, payload) in vars {
        std::fs::write(root.join(format!("{name}.var")), payload).unwrap();
        script.push_str(&format!(
            "$B dd if=/{name}.var of=/sys/firmware/efi/efivars/{name} bs=65536 2>/dev/null \
             && echo ENROLLED-{name} || echo ENROLL-FAILED-{name}\n"
        ));
        names.push(format!("./{name}.var"));
    }
    script.push_str("echo ENROLLMENT-DONE\n$B poweroff -f\n");
    let init = root.join("init");
    std::fs::write(&init, script).unwrap();
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("enroller.img");
    let list = [
        vec![
            ".",
            "./init",
            "./bin",
            "./bin/busybox",
            "./proc",
            "./dev",
            "./sys",
            "./efivarfs.ko",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>(),
        names,
    ]
    .concat()
    .join("\n");
    let mut cpio = std::process::Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    use std::io::Write;
    cpio.stdin
        .take()
        .unwrap()
        .write_all(format!("{list}\n").as_bytes())
        .unwrap();
    assert!(cpio.wait().unwrap().success());
    out
}

/// `secure-boot init`: firmware in setup mode takes the `.auth` files it wrote (db and KEK,
/// then PK, which ends setup mode), and from then on runs the board's image and kernel signed
/// by ipxe-ca and refuses an image signed by another key (the snakeoil one).
#[test]
fn secure_boot_init_keys_enrolled_in_fresh_firmware_boot_only_the_farms_images() {
    let b = boot_lab();
    b.enroll("own");
    let out = b.lab.ok(&["secure-boot", "init"]);
    assert!(out.contains("ipxe-ca Secure Boot db"), "{out}");
    let err = b.lab.fails(&["secure-boot", "init"]);
    assert!(err.contains("already holds a Secure Boot db key"), "{err}");
    let sb = b.lab.path("secure-boot");
    for f in ["PK", "KEK", "db"] {
        for ext in ["crt", "cer", "esl", "auth"] {
            assert!(sb.join(format!("{f}.{ext}")).is_file(), "{f}.{ext}");
        }
        let key = b.lab.path(&format!("keys/secure-boot/{f}.key"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}.key");
    }
    // openssl reads the certificates, DER and PEM alike.
    let der = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        s(&sb.join("db.cer")),
        "-noout",
        "-subject",
    ]);
    assert!(der.contains("ipxe-ca Secure Boot db"), "{der}");

    // Fresh variables (setup mode), enrolled from Linux through efivarfs.
    let vars = b.lab.tmp.path().join("own-vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let payloads: Vec<(String, Vec<u8>)> = [
        ("db", "d719b2cb-3d3a-4596-a3bc-dad00e67656f"),
        ("KEK", "8be4df61-93ca-11d2-aa0d-00e098032b8c"),
        ("PK", "8be4df61-93ca-11d2-aa0d-00e098032b8c"),
    ]
    .iter()
    .map(|(name, guid)| {
        let mut p = 0x27u32.to_le_bytes().to_vec();
        p.extend(std::fs::read(sb.join(format!("{name}.auth"))).unwrap());
        (format!("{name}-{guid}"), p)
    })
    .collect();
    let initrd = enroller(b.lab.tmp.path(), &payloads);
    let run = qemu::boot(
        "sb-enroll",
        &Machine {
            firmware: Firmware::OvmfSecureBoot,
            medium: Medium::Linux(
                crate::boot::assets().join("vmlinuz"),
                initrd,
                "console=ttyS0 panic=-1".into(),
            ),
            siglist: None,
            rtc: None,
            vars: Some(vars.clone()),
        },
        "ENROLLMENT-DONE",
        &["Kernel panic", "NO-EFIVARFS"],
        &["Linux version", "ENROLLED-db", "ENROLLED-PK"],
    );
    for (name, _) in &payloads {
        assert!(
            run.serial.contains(&format!("ENROLLED-{name}")),
            "the firmware refused {name}:\n{}",
            run.serial
        );
    }

    let _srv = b.lab.serve_on(b.https, b.http, &[]);
    b.lab.ok(&["sign-files"]);
    let (img, siglist) = b.build(&b.lab, "own");
    let machine = |img: &Path| Machine {
        firmware: Firmware::OvmfSecureBoot,
        medium: Medium::Stick(img.to_path_buf()),
        siglist: Some(siglist.clone()),
        rtc: None,
        vars: Some(vars.clone()),
    };
    // An image signed by another key (the snakeoil one) is not the farm's: refused. (First:
    // a boot stopped once Linux runs may leave the variables mid-write.)
    let other = Lab::init();
    adopt(&other);
    other.enroll("stranger", &[]);
    let out = other.tmp.path().join("out");
    let o = other.build_efi_usb("stranger", &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = qemu::boot(
        "sb-own-keys-stranger",
        &machine(&out.join("stranger/stranger-efi-usb.img")),
        "Access Denied",
        &["iPXE initialising"],
        &STAGES,
    );
    assert!(!run.serial.contains("ipxe-ca: board"), "{}", run.serial);
    let run = qemu::boot(
        "sb-own-keys",
        &machine(&img),
        "CMDLINE:",
        &["Access Denied", "7f04818f", "Kernel panic"],
        &STAGES,
    );
    assert!(run.serial.contains(MARKER), "{}", run.serial);
}
