//! A mixed farm: an x86_64 board and an arm64 board (QEMU `virt`, AAVMF), one profile that
//! picks each board's kernel by `board.arch`, one `build --all` through the prebuilt route
//! (Debian 13's ipxe-amd64.efi and ipxe-arm64.efi), each booting its own Linux over mutual TLS.

use std::path::Path;

use crate::boot::{assets, initramfs_for, prebuilt_dir, MARKER, SECRET};
use crate::qemu::{self, Firmware, Machine, Medium};
use crate::util::{free_port, s, tool, Lab};

/// The arm64 kernel and busybox scripts/test.sh fetched beside the x86 ones.
fn arm64_assets() -> std::path::PathBuf {
    let dir = assets().join("arm64");
    for need in ["vmlinuz", "busybox"] {
        assert!(
            dir.join(need).is_file(),
            "{} is missing: run scripts/test.sh (it fetches Debian's arm64 cloud kernel and busybox)",
            dir.join(need).display()
        );
    }
    dir
}

/// The names in a stick image's EFI/BOOT folder.
fn efi_boot_files(img: &Path) -> String {
    let (ok, out) = tool("mdir", &["-b", "-i", s(img), "::/EFI/BOOT"]);
    assert!(ok, "{out}");
    out
}

#[test]
fn a_mixed_farm_builds_each_board_its_own_image_and_each_boots_its_own_kernel() {
    let arm = arm64_assets();
    let (https, http) = (free_port(), free_port());
    let lab = Lab::for_guest(https, http, true);
    for (a, kernel, busybox, tty) in [
        (
            "x86_64",
            assets().join("vmlinuz"),
            Path::new("/bin/busybox").to_path_buf(),
            "ttyS0",
        ),
        ("arm64", arm.join("vmlinuz"), arm.join("busybox"), "ttyAMA0"),
    ] {
        let d = lab.path(&format!("files/{a}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(kernel, d.join("vmlinuz")).unwrap();
        let rd = initramfs_for(lab.tmp.path(), &busybox, tty, &format!("initrd-{a}.img"));
        std::fs::copy(rd, d.join("initrd.img")).unwrap();
    }
    std::fs::write(
        lab.path("profiles/mixed.ipxe"),
        "#!ipxe\necho ipxe-ca-profile: board {{ board.name }} {{ board.arch }}\nkernel {{ secure_files_url }}/{{ board.arch }}/vmlinuz initrd=initrd.img console={{ vars.console }} panic=-1 s3_key={{ secrets.s3_key }}\ninitrd --name initrd.img {{ secure_files_url }}/{{ board.arch }}/initrd.img\nboot\n",
    )
    .unwrap();
    let secret = format!("s3_key={SECRET}");
    lab.enroll(
        "pc",
        &[
            "--profile",
            "mixed",
            "--var",
            "console=ttyS0",
            "--secret",
            &secret,
        ],
    );
    lab.enroll(
        "sbc",
        &[
            "--profile",
            "mixed",
            "--arch",
            "arm64",
            "--var",
            "console=ttyAMA0",
            "--secret",
            &secret,
        ],
    );
    let shown: serde_json::Value =
        serde_json::from_str(&lab.ok(&["show", "sbc", "--json"])).unwrap();
    assert_eq!(shown["arch"], "arm64");
    let list = lab.ok(&["list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("sbc") && l.contains(" arm64 ")),
        "{list}"
    );
    // A BIOS or isolinux target means nothing to an arm64 board: refused, saying what to use.
    for t in ["hybrid", "lkrn", "efi-iso"] {
        let err = lab.fails(&["build", "sbc", "--ipxe-src", "/nonexistent", "--target", t]);
        assert!(
            err.contains("sbc is arm64") && err.contains("--target efi-usb"),
            "{t}: {err}"
        );
    }

    let out = lab.tmp.path().join("out");
    let o = lab.run(&[
        "build",
        "--all",
        "--prebuilt",
        s(&prebuilt_dir()),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (pc_img, sbc_img) = (
        out.join("pc/pc-efi-usb.img"),
        out.join("sbc/sbc-efi-usb.img"),
    );
    assert!(efi_boot_files(&pc_img).contains("BOOTX64.EFI"));
    assert!(efi_boot_files(&sbc_img).contains("BOOTAA64.EFI"));
    let srv = lab.serve_on(https, http, &[]);
    let stages = [
        "iPXE",
        "ipxe-ca: board",
        "ipxe-ca-profile:",
        "Linux version",
        MARKER,
    ];
    for (name, firmware, img) in [
        ("mixed-pc", Firmware::Ovmf, &pc_img),
        ("mixed-sbc-arm64", Firmware::Aavmf, &sbc_img),
    ] {
        let run = qemu::boot(
            name,
            &Machine {
                firmware,
                medium: Medium::Stick(img.clone()),
                siglist: Some(img.with_file_name("ca.siglist")),
                rtc: None,
                vars: None,
            },
            "CMDLINE:",
            &["ipxe-ca: cannot fetch", "Kernel panic", "Could not boot"],
            &stages,
        );
        assert!(
            run.serial.contains(MARKER) && run.serial.contains(SECRET),
            "{name}:\n{}",
            run.serial
        );
    }
    let log = srv.output();
    for (board, path) in [
        ("pc", "/files/x86_64/vmlinuz"),
        ("sbc", "/files/arm64/vmlinuz"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("\"board\":\"{board}\""))
                    && l.contains(&format!("\"path\":\"{path}\""))
                    && l.contains("\"status\":200")),
            "{board} did not fetch {path} over mutual TLS:\n{log}"
        );
    }
}

/// An architecture ipxe-ca does not know is refused with the ones it does, and changes nothing.
#[test]
fn an_unknown_architecture_is_refused_and_set_changes_it() {
    let lab = Lab::init();
    let before = lab.snapshot();
    let err = lab.fails(&["enroll", "x", "--arch", "riscv"]);
    assert!(err.contains("x86_64") && err.contains("arm64"), "{err}");
    assert_eq!(before, lab.snapshot());
    lab.enroll("b", &[]);
    let shown: serde_json::Value = serde_json::from_str(&lab.ok(&["show", "b", "--json"])).unwrap();
    assert_eq!(shown["arch"], "x86_64");
    // The default leaves the board file as it was; a change is written.
    assert!(!std::fs::read_to_string(lab.path("boards/b.toml"))
        .unwrap()
        .contains("arch"));
    lab.ok(&["set", "b", "--arch", "aarch64"]);
    let shown: serde_json::Value = serde_json::from_str(&lab.ok(&["show", "b", "--json"])).unwrap();
    assert_eq!(shown["arch"], "arm64");
    // With an arm64 board, doctor and build name the cross compiler when it is missing.
    let no_cross = crate::util::path_without(lab.tmp.path(), &["aarch64-linux-gnu-gcc"]);
    let o = lab
        .cmd(&["doctor", "--target", "efi-usb"])
        .env("PATH", &no_cross)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && said.contains("gcc-aarch64-linux-gnu"),
        "{said}"
    );
    let o = lab
        .cmd(&[
            "build",
            "b",
            "--ipxe-src",
            "/nonexistent",
            "--target",
            "efi-usb",
        ])
        .env("PATH", &no_cross)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("gcc-aarch64-linux-gnu"),
        "{err}"
    );
    assert!(!lab.path("out/b").exists());
}

/// The source route for a mixed farm: iPXE compiled once per architecture (arm64 cross-built
/// with Debian's gcc-aarch64-linux-gnu) with the CA pinned, each board's stick around its
/// architecture's binary; the arm64 stick boots Linux under AAVMF with no CA from the firmware.
#[test]
fn source_built_arm64_images_pin_the_ca_and_boot_linux() {
    let arm = arm64_assets();
    let Some(src) = crate::real_ipxe::tree("IPXE_SRC", "source_built_arm64_images") else {
        return;
    };
    let (https, http) = (free_port(), free_port());
    let lab = Lab::for_guest(https, http, false);
    std::fs::copy(arm.join("vmlinuz"), lab.path("files/vmlinuz")).unwrap();
    let rd = initramfs_for(
        lab.tmp.path(),
        &arm.join("busybox"),
        "ttyAMA0",
        "initrd-arm64.img",
    );
    std::fs::copy(rd, lab.path("files/initrd.img")).unwrap();
    lab.ok(&["sign-files"]);
    // The default profile of `init`: kernel and initrd over mutual TLS, checked by imgverify.
    lab.enroll(
        "sbc",
        &[
            "--arch",
            "arm64",
            "--var",
            "cmdline=console=ttyAMA0 panic=-1",
        ],
    );
    lab.enroll("pc", &[]);
    let out = lab.tmp.path().join("out");
    let o = lab.run(&[
        "build",
        "--all",
        "--ipxe-src",
        s(&src),
        "--target",
        "efi-usb",
        "--out",
        s(&out),
        "--json",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let manifests: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let shared = |board: &str| {
        manifests
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["board"] == board)
            .map(|m| m["targets"][0]["shared"].to_string())
            .unwrap()
    };
    assert!(
        shared("sbc").contains("bin-arm64-efi/ipxe.efi"),
        "{manifests}"
    );
    assert!(
        shared("pc").contains("bin-x86_64-efi/ipxe.efi"),
        "{manifests}"
    );
    let (sbc_img, pc_img) = (
        out.join("sbc/sbc-efi-usb.img"),
        out.join("pc/pc-efi-usb.img"),
    );
    assert!(efi_boot_files(&sbc_img).contains("BOOTAA64.EFI"));
    assert!(efi_boot_files(&pc_img).contains("BOOTX64.EFI"));
    let _srv = lab.serve_on(https, http, &[]);
    let run = qemu::boot(
        "arm64-source-linux",
        &Machine {
            firmware: Firmware::Aavmf,
            medium: Medium::Stick(sbc_img),
            siglist: None,
            rtc: None,
            vars: None,
        },
        "CMDLINE:",
        &[
            "ipxe-ca: cannot fetch",
            "SIGNATURE CHECK FAILED",
            "Kernel panic",
            "Could not boot",
        ],
        &["iPXE", "ipxe-ca: board", "Linux version", MARKER],
    );
    assert!(run.serial.contains(MARKER), "{}", run.serial);
}
