//! Real iPXE, built from its own source by `ipxe-ca build` (v2.0.0; v1.21.1 behind nginx), every
//! target booted in QEMU against `ipxe-ca serve`. No CA comes from the firmware: the CA pinned
//! in the binary is the only trust. scripts/test.sh unpacks the sources from ../shared/ipxe into
//! a cache and sets IPXE_SRC / IPXE_SRC_LEGACY; the built trees stay there between runs.

use std::path::{Path, PathBuf};

use crate::qemu::{self, Firmware, Machine, Medium};
use crate::util::{free_port, path_without, s, start_nginx, tool, Lab, Server};

/// The tree named by `var`, or a loud skip.
pub fn tree(var: &str, test: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if Path::new(&p).join("src/Makefile").is_file() => Some(PathBuf::from(p)),
        other => {
            eprintln!(
                "\n==== SKIPPED {test}: {var} is {other:?}, not an iPXE tree. scripts/test.sh unpacks \
../shared/ipxe/*.tar.xz and sets it; without the source this real-iPXE test cannot run. ====\n"
            );
            None
        }
    }
}

const STAGES: [&str; 4] = ["iPXE", "ipxe-ca: board", "REAL-PROFILE", "REAL-FILES-OK"];

/// Fails a boot early: the board's console says something went wrong.
const TROUBLE: [&str; 3] = [
    "ipxe-ca: cannot fetch",
    "ipxe-ca: the boot script",
    "REAL-FILES-FAILED",
];

/// A lab whose server the guest reaches at 10.0.2.2, with a profile that fetches a file
/// through `{{ files_url }}/NAME` and powers off.
fn real_lab(https: u16, http: u16) -> Lab {
    let lab = Lab::for_guest(https, http, true);
    std::fs::write(
        lab.path("profiles/default.ipxe"),
        "#!ipxe\necho REAL-PROFILE {{ board.name }}\nimgfetch --name probe {{ files_url }}/probe.txt || goto nofile\necho REAL-FILES-OK {{ board.name }}\npoweroff\n:nofile\necho REAL-FILES-FAILED\npoweroff\n",
    )
    .unwrap();
    std::fs::write(lab.path("files/probe.txt"), "probe\n").unwrap();
    lab
}

fn build(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["build", "--json"];
    a.extend_from_slice(args);
    let o = lab.run(&a);
    assert!(
        o.status.success(),
        "ipxe-ca {a:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Each board's BIOS `.lkrn`, built from the tree `src` into `out/NAME/NAME-lkrn.lkrn`.
pub(crate) fn build_lkrn(lab: &Lab, src: &Path, out: &Path, boards: &[&str]) {
    let mut args = boards.to_vec();
    args.extend(["--ipxe-src", s(src), "--out", s(out), "--target", "lkrn"]);
    build(lab, &args);
}

fn machine(firmware: Firmware, medium: Medium) -> Machine {
    Machine {
        firmware,
        medium,
        siglist: None,
        rtc: None,
        vars: None,
    }
}

/// Boot and require the board's own script and the file fetch through `files_url`.
fn boots_to_its_script(name: &str, board: &str, m: &Machine) {
    let run = qemu::boot(
        name,
        m,
        &format!("REAL-FILES-OK {board}"),
        &TROUBLE,
        &STAGES,
    );
    assert!(
        run.serial.contains(&format!("REAL-PROFILE {board}")),
        "{name}: not the board's own script:\n{}",
        run.serial
    );
}

/// 200s for `path` attributed to `board` in the access log.
fn served(srv: &Server, board: &str, path: &str) -> usize {
    srv.output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["board"] == board
                && l["status"] == 200
                && l["path"].as_str().is_some_and(|p| p.starts_with(path))
        })
        .count()
}

/// A FAT stick with a bare `ipxe.efi` as the UEFI boot loader.
fn efi_stick(efi: &Path) -> PathBuf {
    let img = efi.with_extension("stick.img");
    let (ok, o) = tool("truncate", &["-s", "8M", s(&img)]);
    assert!(ok, "{o}");
    for args in [
        vec!["mformat", "-i", s(&img), "::"],
        vec!["mmd", "-i", s(&img), "::/EFI", "::/EFI/BOOT"],
        vec!["mcopy", "-i", s(&img), s(efi), "::/EFI/BOOT/BOOTX64.EFI"],
    ] {
        let (ok, o) = tool(args[0], &args[1..]);
        assert!(ok, "{o}");
    }
    img
}

#[test]
fn real_ipxe_every_target_boots_with_the_ca_pinned_and_its_own_script() {
    let Some(src) = tree("IPXE_SRC", "real_ipxe_every_target_boots") else {
        return;
    };
    let (https, http) = (free_port(), free_port());
    let lab = real_lab(https, http);
    lab.enroll("b1", &[]);
    lab.enroll("b2", &[]);
    let srv = lab.serve_on(https, http, &[]);
    let out = lab.tmp.path().join("out");
    let ms = build(
        &lab,
        &[
            "--all",
            "--ipxe-src",
            s(&src),
            "--out",
            s(&out),
            "--target",
            "lkrn",
            "--target",
            "iso",
            "--target",
            "usb",
            "--target",
            "efi",
            "--target",
            "hybrid",
            "--target",
            "efi-usb",
        ],
    );
    // One compile for the farm: every board's hybrid holds the same shared binaries; the
    // per-board compiles differ.
    let target = |m: &serde_json::Value, t: &str| {
        m["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["target"] == t)
            .unwrap()
            .clone()
    };
    let (h1, h2) = (target(&ms[0], "hybrid"), target(&ms[1], "hybrid"));
    assert_eq!(h1["route"], "farm");
    assert_eq!(h1["shared"], h2["shared"]);
    assert_ne!(h1["sha256"], h2["sha256"]);
    assert_eq!(target(&ms[0], "lkrn")["route"], "compile");
    assert_ne!(
        target(&ms[0], "lkrn")["sha256"],
        target(&ms[1], "lkrn")["sha256"]
    );
    let d = out.join("b1");
    let f = |n: &str| d.join(n);
    let boots = [
        (
            "lkrn-seabios",
            machine(Firmware::SeaBios, Medium::Kernel(f("b1-lkrn.lkrn"))),
        ),
        (
            "iso-cd-seabios",
            machine(Firmware::SeaBios, Medium::Cdrom(f("b1-iso.iso"))),
        ),
        (
            "usb-stick-seabios",
            machine(Firmware::SeaBios, Medium::Stick(f("b1-usb.usb"))),
        ),
        (
            "efi-ovmf",
            machine(Firmware::Ovmf, Medium::Stick(efi_stick(&f("b1-efi.efi")))),
        ),
        (
            "hybrid-stick-ovmf",
            machine(Firmware::Ovmf, Medium::Stick(f("b1-hybrid.iso"))),
        ),
        (
            "hybrid-stick-seabios",
            machine(Firmware::SeaBios, Medium::Stick(f("b1-hybrid.iso"))),
        ),
        (
            "hybrid-cd-seabios",
            machine(Firmware::SeaBios, Medium::Cdrom(f("b1-hybrid.iso"))),
        ),
        (
            "efi-usb-ovmf",
            machine(Firmware::Ovmf, Medium::Stick(f("b1-efi-usb.img"))),
        ),
    ];
    for (name, m) in &boots {
        boots_to_its_script(name, "b1", m);
    }
    // Another board's farm image authenticates as that board, not as b1.
    boots_to_its_script(
        "b2-hybrid-stick-seabios",
        "b2",
        &machine(
            Firmware::SeaBios,
            Medium::Stick(out.join("b2/b2-hybrid.iso")),
        ),
    );
    assert_eq!(
        served(&srv, "b1", "/boot.ipxe"),
        boots.len(),
        "{}",
        srv.output()
    );
    assert_eq!(served(&srv, "b2", "/boot.ipxe"), 1);
    // iPXE 2.0 offers ECDSA: every board negotiated it with the ECDSA server certificate.
    let suites: std::collections::BTreeSet<String> = srv
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/boot.ipxe"))
        })
        .map(|l| format!("{} {}", l["tls"]["version"], l["tls"]["suite"]))
        .collect();
    assert_eq!(
        suites.into_iter().collect::<Vec<_>>(),
        ["\"TLSv1_2\" \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\""],
        "{}",
        srv.output()
    );
    // `{{ files_url }}/probe.txt` fetched files/probe.txt each time.
    let probes = srv
        .output()
        .lines()
        .filter(|l| l.contains("\"path\":\"/probe.txt\"") && l.contains("\"status\":200"))
        .count();
    assert_eq!(probes, boots.len() + 1, "{}", srv.output());

    // Without xorriso the hybrid is mastered by genisoimage + isohybrid, and boots the same.
    let out2 = lab.tmp.path().join("out-genisoimage");
    let path = path_without(
        lab.tmp.path(),
        &["xorriso", "xorrisofs", "osirrox", "xorrecord"],
    );
    let o = lab
        .cmd(&[
            "build",
            "b1",
            "--json",
            "--ipxe-src",
            s(&src),
            "--out",
            s(&out2),
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m[0]["targets"][0]["iso_tool"], "genisoimage", "{m}");
    assert_eq!(target(&ms[0], "hybrid")["iso_tool"], "xorriso");
    let hybrid2 = out2.join("b1/b1-hybrid.iso");
    boots_to_its_script(
        "genisoimage-hybrid-stick-ovmf",
        "b1",
        &machine(Firmware::Ovmf, Medium::Stick(hybrid2.clone())),
    );
    boots_to_its_script(
        "genisoimage-hybrid-stick-seabios",
        "b1",
        &machine(Firmware::SeaBios, Medium::Stick(hybrid2)),
    );
}

#[test]
fn real_ipxe_refusals_and_a_failing_script_say_what_failed() {
    let Some(src) = tree("IPXE_SRC", "real_ipxe_refusals") else {
        return;
    };
    let (https, http) = (free_port(), free_port());
    let lab = real_lab(https, http);
    std::fs::write(
        lab.path("profiles/broken.ipxe"),
        "#!ipxe\necho REAL-PROFILE {{ board.name }}\nkernel {{ files_url }}/no-such-kernel\nboot\n",
    )
    .unwrap();
    lab.enroll("gone", &[]);
    lab.enroll("broken", &["--profile", "broken"]);
    let srv = lab.serve_on(https, http, &[]);
    let out = lab.tmp.path().join("out");
    build_lkrn(&lab, &src, &out, &["gone", "broken"]);
    // Revoked after its image was built: the server refuses it, no script runs.
    lab.ok(&["revoke", "gone"]);
    let run = qemu::boot(
        "revoked-lkrn",
        &machine(
            Firmware::SeaBios,
            Medium::Kernel(out.join("gone/gone-lkrn.lkrn")),
        ),
        "ipxe-ca: cannot fetch the boot script",
        &["REAL-PROFILE"],
        &STAGES,
    );
    assert!(!run.serial.contains("REAL-PROFILE"), "{}", run.serial);
    let log = srv.output();
    assert!(log.contains("board gone is revoked"), "{log}");
    assert_eq!(served(&srv, "gone", "/boot.ipxe"), 0, "{log}");
    // The script was fetched, then its kernel was missing: the console blames the script,
    // not the fetch, and names the error.
    let run = qemu::boot(
        "failing-script-lkrn",
        &machine(
            Firmware::SeaBios,
            Medium::Kernel(out.join("broken/broken-lkrn.lkrn")),
        ),
        "ipxe-ca: retrying",
        &["ipxe-ca: cannot fetch"],
        &STAGES,
    );
    let line = run
        .serial
        .lines()
        .find(|l| l.contains("ipxe-ca: the boot script from"))
        .unwrap_or_else(|| panic!("no script-failure line:\n{}", run.serial));
    assert!(
        line.contains("failed (0x") && line.contains("https://ipxe.org/"),
        "{line}"
    );
    assert!(
        run.serial.contains("no-such-kernel"),
        "iPXE names the failing URL:\n{}",
        run.serial
    );
    assert_eq!(served(&srv, "broken", "/boot.ipxe"), 1);
}

/// A TCP relay from a new loopback port to `to`, for as long as the test runs: a second
/// address of the same server. Returns the port and a count of relayed connections.
fn relay(to: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::net::{Shutdown, TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = count.clone();
    std::thread::spawn(move || {
        for a in l.incoming().flatten() {
            let Ok(b) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for (mut from, mut into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(Shutdown::Write);
                });
            }
        }
    });
    (port, count)
}

/// iPXE 2.0 resumes a TLS session only on a connection opened while another of the session
/// (same server name, CA and key) is open: its script's connection stays pooled for 10 s, so
/// a fetch from a second address of the server (another port) right after joins the session.
#[test]
fn real_ipxe_resumes_its_session_on_a_second_connection_and_the_log_says_so() {
    let Some(src) = tree("IPXE_SRC", "real_ipxe_resumes") else {
        return;
    };
    let (https, http) = (free_port(), free_port());
    let lab = real_lab(https, http);
    let (second, relayed) = relay(https);
    std::fs::write(
        lab.path("profiles/default.ipxe"),
        format!(
            "#!ipxe\necho REAL-PROFILE {{{{ board.name }}}}\nimgfetch --name again https://10.0.2.2:{second}/boot.ipxe || goto fail\necho REAL-FILES-OK {{{{ board.name }}}}\npoweroff\n:fail\necho REAL-FILES-FAILED\npoweroff\n"
        ),
    )
    .unwrap();
    lab.enroll("b1", &[]);
    let srv = lab.serve_on(https, http, &[]);
    let out = lab.tmp.path().join("out");
    build_lkrn(&lab, &src, &out, &["b1"]);
    boots_to_its_script(
        "resume-lkrn",
        "b1",
        &machine(
            Firmware::SeaBios,
            Medium::Kernel(out.join("b1/b1-lkrn.lkrn")),
        ),
    );
    assert_eq!(
        relayed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second fetch went through the second address"
    );
    let fetches: Vec<(String, bool)> = srv
        .output()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| {
            l["board"] == "b1"
                && l["status"] == 200
                && l["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/boot.ipxe"))
        })
        .map(|l| {
            (
                l["tls"]["suite"].as_str().unwrap_or_default().to_string(),
                l["tls"]["resumed"] == true,
            )
        })
        .collect();
    let ecdsa = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string();
    assert_eq!(
        fetches,
        [(ecdsa.clone(), false), (ecdsa, true)],
        "a full handshake, then the second connection resumed:\n{}",
        srv.output()
    );
}

#[test]
fn real_ipxe_legacy_boots_through_the_generated_nginx_and_not_straight_at_serve() {
    let Some(src) = tree("IPXE_SRC_LEGACY", "real_ipxe_legacy") else {
        return;
    };
    let (nginx_port, http) = (free_port(), free_port());
    let lab = real_lab(nginx_port, http);
    lab.enroll("old", &[]);
    let srv = lab.serve_on(
        free_port(),
        http,
        &["--behind-proxy", "--trusted-proxy", "127.0.0.1"],
    );
    let _ng = start_nginx(&lab, nginx_port, http);
    let doctor = lab.ok(&[
        "doctor",
        "--ipxe-src",
        s(&src),
        "--target",
        "lkrn",
        "--json",
    ]);
    let d: serde_json::Value = serde_json::from_str(&doctor).unwrap();
    assert_eq!(d["tree"]["ecdhe"], false, "{d}");
    assert_eq!(d["tree"]["pkcs8_keys"], false, "{d}");
    assert_eq!(d["tree"]["no_werror"], true, "{d}");
    let out = lab.tmp.path().join("out");
    build_lkrn(&lab, &src, &out, &["old"]);
    boots_to_its_script(
        "legacy-lkrn-via-nginx",
        "old",
        &machine(
            Firmware::SeaBios,
            Medium::Kernel(out.join("old/old-lkrn.lkrn")),
        ),
    );
    assert_eq!(served(&srv, "old", "/boot.ipxe"), 1, "{}", srv.output());

    // The same board pointed straight at `serve` (rustls: ECDHE only) is refused, and the
    // log says why in words an operator can act on.
    let (https2, http2) = (free_port(), free_port());
    let direct = lab.serve_on(https2, http2, &[]);
    let cfg = std::fs::read_to_string(lab.path("etc/config.toml")).unwrap();
    std::fs::write(
        lab.path("etc/config.toml"),
        cfg.replace(
            &format!("https://10.0.2.2:{nginx_port}"),
            &format!("https://10.0.2.2:{https2}"),
        ),
    )
    .unwrap();
    let out2 = lab.tmp.path().join("out-direct");
    build_lkrn(&lab, &src, &out2, &["old"]);
    let run = qemu::boot(
        "legacy-lkrn-direct",
        &machine(
            Firmware::SeaBios,
            Medium::Kernel(out2.join("old/old-lkrn.lkrn")),
        ),
        "ipxe-ca: cannot fetch the boot script",
        &["REAL-PROFILE"],
        &STAGES,
    );
    assert!(!run.serial.contains("REAL-PROFILE"));
    let log = direct.output();
    assert!(
        log.contains("tls_handshake_failed") && log.contains("nginx-config"),
        "{log}"
    );
}

#[test]
fn real_ipxe_boots_linux_only_with_verified_kernel_and_initrd() {
    use crate::boot::{assets, initramfs, MARKER, SECRET};
    let Some(src) = tree("IPXE_SRC", "real_ipxe_boots_linux_verified") else {
        return;
    };
    let (https, http) = (free_port(), free_port());
    let lab = Lab::for_guest(https, http, false);
    std::fs::copy(assets().join("vmlinuz"), lab.path("files/vmlinuz")).unwrap();
    std::fs::copy(initramfs(lab.tmp.path()), lab.path("files/initrd.img")).unwrap();
    lab.ok(&["sign-files"]);
    // The default profile out of `init`: kernel and initrd over mutual TLS, then imgverify.
    lab.enroll(
        "lin",
        &[
            "--var",
            "cmdline=console=ttyS0 panic=-1",
            "--secret",
            &format!("s3_key={SECRET}"),
        ],
    );
    let srv = lab.serve_on(https, http, &[]);
    let out = lab.tmp.path().join("out");
    build(&lab, &["lin", "--ipxe-src", s(&src), "--out", s(&out)]);
    let stick = machine(
        Firmware::SeaBios,
        Medium::Stick(out.join("lin/lin-hybrid.iso")),
    );
    let stages = ["ipxe-ca: board", "ipxe-ca: lin", "Linux version", MARKER];
    let run = qemu::boot(
        "verified-linux-mtls",
        &stick,
        "CMDLINE:",
        &[
            "SIGNATURE CHECK FAILED",
            "ipxe-ca: cannot fetch",
            "Kernel panic",
        ],
        &stages,
    );
    assert!(run.serial.contains(MARKER), "{}", run.serial);
    let log = srv.output();
    for f in [
        "/files/vmlinuz",
        "/files/vmlinuz.sig",
        "/files/initrd.img",
        "/files/initrd.img.sig",
    ] {
        assert!(
            log.lines().any(|l| l.contains(&format!("\"path\":\"{f}\""))
                && l.contains("\"board\":\"lin\"")
                && l.contains("\"status\":200")),
            "{f} not fetched over mutual TLS by lin:\n{log}"
        );
    }
    // One boot, five HTTPS fetches, one TLS handshake: iPXE keeps the connection alive. (iPXE
    // 2.0 resumes a session only while another connection of it is open, so sequential
    // connections would each pay a full handshake; keep-alive is what saves them.)
    let lin: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["board"] == "lin" && l["status"] == 200)
        .collect();
    assert_eq!(lin.len(), 5, "{log}");
    assert!(lin.iter().all(|l| l["peer"] == lin[0]["peer"]), "{log}");
    // The same board with its clock years behind (no RTC battery): the pinned CA, the server
    // certificate and the code signer all start before 2019, so it boots the same way.
    let old_clock = Machine {
        rtc: Some("2019-06-01T00:00:00"),
        ..stick.clone()
    };
    let run = qemu::boot(
        "verified-linux-2019",
        &old_clock,
        "CMDLINE:",
        &[
            "SIGNATURE CHECK FAILED",
            "ipxe-ca: cannot fetch",
            "Kernel panic",
            "Permission denied",
        ],
        &stages,
    );
    assert!(run.serial.contains(MARKER), "{}", run.serial);
    // The same with kernel and initrd over plain HTTP: imgverify alone keeps them honest.
    // (Timings of both boots are printed: what TLS costs a real iPXE for a 14 MB kernel.)
    std::fs::write(
        lab.path("profiles/plain.ipxe"),
        "#!ipxe\necho ipxe-ca: {{ board.name }} plain\nkernel --name vmlinuz {{ files_url }}/vmlinuz initrd=initrd.img console=ttyS0 panic=-1\ninitrd --name initrd.img {{ files_url }}/initrd.img\nimgverify vmlinuz {{ files_url }}/vmlinuz.sig || goto bad\nimgverify initrd.img {{ files_url }}/initrd.img.sig || goto bad\nboot\n:bad\necho ipxe-ca: SIGNATURE CHECK FAILED (${errno})\nexit 1\n",
    )
    .unwrap();
    lab.ok(&["set", "lin", "--profile", "plain"]);
    let run = qemu::boot(
        "verified-linux-plain",
        &stick,
        "CMDLINE:",
        &[
            "SIGNATURE CHECK FAILED",
            "ipxe-ca: cannot fetch",
            "Kernel panic",
        ],
        &stages,
    );
    assert!(run.serial.contains(MARKER));
    // Tampered: the server hands out other bytes than were signed. iPXE refuses before `boot`,
    // names the file, and no kernel starts.
    lab.ok(&["set", "lin", "--profile", "default"]);
    let mut initrd = std::fs::read(lab.path("files/initrd.img")).unwrap();
    initrd.extend_from_slice(b"evil");
    std::fs::write(lab.path("files/initrd.img"), &initrd).unwrap();
    let before = srv.mark();
    let run = qemu::boot(
        "tampered-initrd",
        &stick,
        "ipxe-ca: the boot script from",
        &["Linux version", MARKER],
        &stages,
    );
    assert!(
        run.serial
            .contains("SIGNATURE CHECK FAILED for the initrd initrd.img"),
        "{}",
        run.serial
    );
    assert!(!run.serial.contains("Linux version"));
    let after = srv.output_since(before);
    assert!(
        after
            .iter()
            .any(|l| l.contains("changed since it was signed")),
        "the log does not flag the stale file: {after:?}"
    );
    assert!(
        !after.iter().any(|l| l.contains("/secret/")),
        "a secret left the server after the refusal"
    );
}
