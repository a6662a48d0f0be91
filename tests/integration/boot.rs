//! End to end: OVMF → Debian 13's prebuilt iPXE → mutual TLS to `ipxe-ca serve` → the board's
//! own script → kernel and initrd over HTTP → Linux prints a marker and its command line.
//! QEMU runs under software emulation, one boot at a time, each with a hard timeout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::qemu::{self, Boot, Firmware, Machine, Medium, OVMF};
use crate::util::{free_port, s, tool, Lab};

pub const MARKER: &str = "IPXE-CA-E2E-KERNEL-UP";
pub const SECRET: &str = "SECRET-E2E-5a17c0de";

/// Debian 13's iPXE and a Debian cloud kernel, fetched by scripts/test.sh.
pub fn assets() -> PathBuf {
    let dir = std::env::var_os("IPXE_CA_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ipxe-ca-test")
        });
    for need in ["ipxe/usr/lib/ipxe/ipxe-amd64.efi", "vmlinuz"] {
        assert!(
            dir.join(need).is_file(),
            "{} is missing: run scripts/test.sh (it fetches Debian 13's ipxe and a cloud kernel)",
            dir.join(need).display()
        );
    }
    for (prog, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("mcopy", "mtools"),
    ] {
        assert!(
            tool("which", &[prog]).0,
            "{prog} is missing: apt-get install {pkg} (scripts/test.sh does)"
        );
    }
    assert!(
        Path::new(OVMF).is_file(),
        "{OVMF} is missing: apt-get install ovmf (scripts/test.sh does)"
    );
    assert!(
        Path::new("/bin/busybox").is_file(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    dir
}

/// Debian 13's /usr/lib/ipxe, as fetched by scripts/test.sh.
pub fn prebuilt_dir() -> PathBuf {
    assets().join("ipxe/usr/lib/ipxe")
}

/// A busybox initramfs whose /init prints the marker and /proc/cmdline, then powers off.
pub fn initramfs(dir: &Path) -> PathBuf {
    initramfs_for(dir, Path::new("/bin/busybox"), "ttyS0", "initrd.img")
}

/// The same with another busybox (another architecture's) writing to `tty`, as `out` in `dir`.
pub fn initramfs_for(dir: &Path, busybox: &Path, tty: &str, out: &str) -> PathBuf {
    let root = dir.join(format!("initramfs-{out}"));
    for d in ["bin", "proc", "dev", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let init = root.join("init");
    std::fs::write(
        &init,
        format!(
            "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n/bin/busybox mount -t proc proc /proc\nexec >/dev/{tty} 2>&1\necho {MARKER}\necho \"CMDLINE: $(/bin/busybox cat /proc/cmdline)\"\n/bin/busybox poweroff -f\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join(out);
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    cpio.stdin
        .take()
        .unwrap()
        .write_all(b".\n./init\n./bin\n./bin/busybox\n./bin/sh\n./proc\n./dev\n./sys\n")
        .unwrap();
    assert!(cpio.wait().unwrap().success());
    out
}

/// A lab whose server is reachable from the guest at 10.0.2.2, serving kernel and initrd.
pub struct BootLab {
    pub lab: Lab,
    pub https: u16,
    pub http: u16,
}

pub fn boot_lab() -> BootLab {
    let assets = assets();
    let (https, http) = (free_port(), free_port());
    let lab = Lab::for_guest(https, http, true);
    std::fs::copy(assets.join("vmlinuz"), lab.path("files/vmlinuz")).unwrap();
    let initrd = initramfs(lab.tmp.path());
    std::fs::copy(initrd, lab.path("files/initrd.img")).unwrap();
    std::fs::write(
        lab.path("profiles/linux.ipxe"),
        "#!ipxe\necho ipxe-ca-profile: board {{ board.name }}\nkernel {{ secure_files_url }}/vmlinuz initrd=initrd.img console=ttyS0 panic=-1 s3_key={{ secrets.s3_key }}\ninitrd --name initrd.img {{ secure_files_url }}/initrd.img\nboot\n",
    )
    .unwrap();
    BootLab { lab, https, http }
}

impl BootLab {
    pub fn enroll(&self, name: &str) {
        self.lab.enroll(
            name,
            &[
                "--profile",
                "linux",
                "--secret",
                &format!("s3_key={SECRET}"),
            ],
        );
    }

    /// Build the board's prebuilt UEFI image; returns (image, ca.siglist).
    pub fn build(&self, lab: &Lab, board: &str) -> (PathBuf, PathBuf) {
        let out = self.lab.tmp.path().join(format!("out-{board}"));
        let o = lab.run(&[
            "build",
            board,
            "--prebuilt",
            s(&assets().join("ipxe/usr/lib/ipxe")),
            "--target",
            "efi-usb",
            "--out",
            s(&out),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("TlsCaCertificate"),
            "the CA caveat must be said: {err}"
        );
        (
            out.join(board).join(format!("{board}-efi-usb.img")),
            out.join(board).join("ca.siglist"),
        )
    }
}

/// Boot a prebuilt image under OVMF with our CA from the firmware.
fn boot(name: &str, image: &Path, siglist: &Path, stop_at: &str, abort_on: &[&str]) -> Boot {
    boot_at(name, image, siglist, None, stop_at, abort_on)
}

/// The same with the board's clock starting at `rtc` (None: now).
fn boot_at(
    name: &str,
    image: &Path,
    siglist: &Path,
    rtc: Option<&'static str>,
    stop_at: &str,
    abort_on: &[&str],
) -> Boot {
    qemu::boot(
        name,
        &Machine {
            firmware: Firmware::Ovmf,
            medium: Medium::Stick(image.to_path_buf()),
            siglist: Some(siglist.to_path_buf()),
            rtc,
            vars: None,
        },
        stop_at,
        abort_on,
        &STAGES,
    )
}

pub const STAGES: [&str; 5] = [
    "iPXE",
    "ipxe-ca: board",
    "ipxe-ca-profile:",
    "Linux version",
    MARKER,
];

#[test]
fn a_board_boots_linux_with_its_secret_over_mutual_tls() {
    let b = boot_lab();
    b.enroll("e2e-board");
    let srv = b.lab.serve_on(b.https, b.http, &[]);
    let (img, siglist) = b.build(&b.lab, "e2e-board");
    let run = boot(
        "main",
        &img,
        &siglist,
        "CMDLINE:",
        &["ipxe-ca: cannot fetch", "Kernel panic"],
    );
    let serial = &run.serial;
    assert!(
        serial.contains(MARKER),
        "the kernel did not start:\n{serial}"
    );
    let cmdline = serial.lines().find(|l| l.contains("CMDLINE:")).unwrap();
    assert!(cmdline.contains(&format!("s3_key={SECRET}")), "{cmdline}");
    let log = srv.output();
    let fp = b.lab.ok(&["show", "e2e-board", "--json"]);
    let fp: serde_json::Value = serde_json::from_str(&fp).unwrap();
    let fp = fp["fingerprint_sha1"].as_str().unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let boot_line = lines
        .iter()
        .position(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/boot.ipxe"))
                && l["status"] == 200
        })
        .unwrap_or_else(|| panic!("no 200 for /boot.ipxe in the log:\n{log}"));
    assert_eq!(lines[boot_line]["board"], "e2e-board");
    // Debian 13's iPXE (2025) verifies only RSA: it gets the RSA certificate.
    assert_eq!(
        lines[boot_line]["tls"]["suite"], "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "{log}"
    );
    assert_eq!(lines[boot_line]["fingerprint"], fp);
    let after = &lines[boot_line..];
    for f in ["/files/vmlinuz", "/files/initrd.img"] {
        assert!(
            after
                .iter()
                .any(|l| l["path"] == f && l["status"] == 200 && l["board"] == "e2e-board"),
            "{f} not downloaded over mutual TLS after the script:\n{log}"
        );
    }
    assert!(!log.contains(SECRET), "the secret leaked into the log");
    eprintln!("boot [main] took {:.1}s", run.seconds);
}

/// A board without a real-time-clock battery wakes years behind (here 2019, as QEMU's
/// `-rtc base=` sets it): the certificates it checks (the CA's, the server's) start before any
/// such date, so it still fetches its script over mutual TLS and boots Linux.
#[test]
fn a_board_whose_clock_reads_2019_boots_linux() {
    let b = boot_lab();
    b.enroll("old-clock");
    let _srv = b.lab.serve_on(b.https, b.http, &[]);
    let (img, siglist) = b.build(&b.lab, "old-clock");
    let run = boot_at(
        "old-clock",
        &img,
        &siglist,
        Some("2019-06-01T00:00:00"),
        "CMDLINE:",
        &["ipxe-ca: cannot fetch", "Kernel panic", "Permission denied"],
    );
    assert!(
        run.serial.contains(MARKER),
        "a board whose clock reads 2019 did not reach the kernel:\n{}",
        run.serial
    );
    eprintln!("boot [old-clock] took {:.1}s", run.seconds);
}

/// A board whose clock runs years ahead (past the server certificate's end) cannot check the
/// server, and its console says that its clock is the likely cause and what to do.
#[test]
fn a_board_whose_clock_is_years_ahead_says_its_clock_is_the_likely_cause() {
    let b = boot_lab();
    b.enroll("future");
    let _srv = b.lab.serve_on(b.https, b.http, &[]);
    let (img, siglist) = b.build(&b.lab, "future");
    let run = boot_at(
        "future-clock",
        &img,
        &siglist,
        Some("2040-06-01T00:00:00"),
        "its clock is likely wrong",
        &["ipxe-ca-profile:", MARKER],
    );
    assert!(
        run.serial.contains("0x216e48f") && run.serial.contains("set the date in its firmware"),
        "{}",
        run.serial
    );
}

/// A boot that must fail: iPXE reports it cannot fetch its script; no kernel, no secret.
fn assert_refused(name: &str, run: &Boot, log: &str, why: &str) {
    assert!(
        !run.serial.contains(MARKER) && !run.serial.contains("Linux version"),
        "{name}: a kernel started:\n{}",
        run.serial
    );
    assert!(
        !run.serial.contains(SECRET),
        "{name}: the secret reached the board"
    );
    assert!(
        !run.serial.contains("ipxe-ca-profile:"),
        "{name}: the board got its script"
    );
    assert!(
        log.contains(why),
        "{name}: the server log does not say {why:?}:\n{log}"
    );
    let served = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/boot.ipxe"))
                && l["status"] == 200
        });
    assert!(!served, "{name}: a script was served:\n{log}");
}

#[test]
fn boots_that_must_fail_fail_with_the_reason_in_the_log() {
    let b = boot_lab();
    let srv = b.lab.serve_on(b.https, b.http, &[]);

    // 1. Revoked after its image was built.
    b.enroll("revoked-board");
    let (img, siglist) = b.build(&b.lab, "revoked-board");
    b.lab
        .ok(&["revoke", "revoked-board", "--reason", "key-compromise"]);
    let run = boot(
        "revoked",
        &img,
        &siglist,
        "ipxe-ca: cannot fetch",
        &[MARKER],
    );
    assert_refused(
        "revoked",
        &run,
        &srv.output(),
        "board revoked-board is revoked",
    );

    // 2. A board of another CA (its own init in another state dir), pointed at our server.
    let other = Lab::new();
    other.ok(&[
        "init",
        "--san",
        "IP:10.0.2.2",
        "--server-url",
        &format!("https://10.0.2.2:{}", b.https),
    ]);
    other.enroll("foreign-board", &["--secret", "s3_key=nothing"]);
    let (img, _) = b.build(&other, "foreign-board");
    let ours = b.lab.tmp.path().join("ours.siglist");
    std::fs::copy(&siglist, &ours).unwrap();
    let before = srv.output().matches("tls_handshake_failed").count();
    let run = boot(
        "foreign-ca",
        &img,
        &ours,
        "ipxe-ca: cannot fetch",
        &[MARKER],
    );
    let log = srv.output();
    assert_refused("foreign-ca", &run, &log, "tls_handshake_failed");
    assert!(
        log.matches("tls_handshake_failed").count() > before,
        "{log}"
    );

    // 3. An image whose script sets no client certificate.
    b.enroll("certless-board");
    let (img, siglist) = b.build(&b.lab, "certless-board");
    let script = b.lab.tmp.path().join("autoexec.ipxe");
    let (ok, text) = tool("mtype", &["-i", s(&img), "::/autoexec.ipxe"]);
    assert!(ok, "{text}");
    let stripped: String = text
        .lines()
        .filter(|l| !l.starts_with("set cert") && !l.starts_with("set privkey"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(stripped.contains("imgfetch --name boot.ipxe https://"));
    std::fs::write(&script, stripped).unwrap();
    let (ok, out) = tool(
        "mcopy",
        &["-o", "-i", s(&img), s(&script), "::/autoexec.ipxe"],
    );
    assert!(ok, "{out}");
    let run = boot(
        "no-cert",
        &img,
        &siglist,
        "ipxe-ca: cannot fetch",
        &[MARKER],
    );
    assert_refused(
        "no-cert",
        &run,
        &srv.output(),
        "no client certificate was presented",
    );
}
