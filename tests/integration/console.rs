//! The boards' own consoles at the server: lines sent over TLS with a board's certificate land
//! in that board's history, interleaved with the server's view. Clients here are openssl
//! s_client (speaking as iPXE's syslogs console does) and real iPXE in QEMU.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::qemu::{self, Firmware, Machine, Medium};
use crate::util::{free_port, metric, s, tool, wait_for, Lab, Server};

/// Send `text` to the console listener as a client with this certificate and key (None: no
/// certificate), as iPXE does: TLS, the server verified against the farm CA. Returns
/// openssl's output.
fn send(lab: &Lab, srv: &Server, id: Option<(&Path, &Path)>, text: &str) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", srv.console))
        .args(["-CAfile", s(&lab.path("ca/ca.crt")), "-verify_return_error"])
        .args(["-servername", "localhost"]);
    if let Some((cert, key)) = id {
        cmd.args(["-cert", s(cert), "-key", s(key)]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is needed (apt-get install openssl)");
    // A refused client is closed by the server: writing may then fail, which is the point.
    let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
    let o = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn board_id(lab: &Lab, b: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        lab.path(&format!("boards/{b}/cert.pem")),
        lab.path(&format!("keys/boards/{b}.key")),
    )
}

fn history(lab: &Lab, b: &str) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&lab.ok(&["history", b, "-n", "1000", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// What the board's console said, in order.
fn console_lines(lab: &Lab, b: &str) -> Vec<String> {
    history(lab, b)
        .iter()
        .filter(|e| e["source"] == "board")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

fn scrape(port: u16) -> String {
    let (ok, text) = tool("curl", &["-s", &format!("http://127.0.0.1:{port}/metrics")]);
    assert!(ok, "{text}");
    text
}

#[test]
fn console_lines_land_only_in_the_history_of_the_board_whose_certificate_sent_them() {
    let lab = Lab::init();
    for b in ["c1", "c2", "c3"] {
        lab.enroll(b, &[]);
    }
    lab.ok(&["revoke", "c3"]);
    let mport = free_port();
    let srv = lab.serve(&["--metrics", &format!("127.0.0.1:{mport}")]);
    crate::common::wait_port(mport, Duration::from_secs(10)).unwrap();
    let (c1, c1k) = board_id(&lab, "c1");
    assert_eq!(lab.curl_as(Some("c1"), &srv.url("/boot.ipxe")).0, 200);
    // As iPXE sends them: syslog priority, host name, tag; one claims to be another board.
    send(
        &lab,
        &srv,
        Some((&c1, &c1k)),
        "<6>ipxe: http://10.0.2.2/vmlinuz... Not found (https://ipxe.org/2d0c613b)\n\
         <6>c2 ipxe: I am c2, honest\n\
         <3>ipxe: \x1b]0;owned\x07bell\n",
    );
    // A line longer than 512 bytes: its first 512 kept (the 9 of `<6>ipxe: ` among them).
    send(
        &lab,
        &srv,
        Some((&c1, &c1k)),
        &format!("<6>ipxe: {}\n", "x".repeat(600)),
    );
    let lines = wait_for("c1's console lines", Duration::from_secs(10), || {
        let l = console_lines(&lab, "c1");
        (l.len() == 4).then_some(l)
    });
    assert_eq!(lines[3], format!("{}…", "x".repeat(512 - 9)));
    assert_eq!(
        lines[0],
        "http://10.0.2.2/vmlinuz... Not found (https://ipxe.org/2d0c613b)"
    );
    assert_eq!(lines[1], "I am c2, honest");
    // Interleaved with the server's view, after the request that came first; the error code in
    // words.
    let h = history(&lab, "c1");
    assert_eq!(h[0]["source"], "server", "{h:?}");
    assert_eq!(h[0]["path"], "/boot.ipxe", "{h:?}");
    assert_eq!(h[1]["errors"][0]["code"], "2d0c613b", "{h:?}");
    let words = h[1]["errors"][0]["meaning"].as_str().unwrap();
    assert!(
        words.starts_with("Not found (in iPXE's httpcore)"),
        "{words}"
    );
    let text = lab.ok(&["history", "c1"]);
    assert!(text.contains("board> I am c2, honest"), "{text}");
    assert!(text.contains("2d0c613b: Not found"), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    assert!(
        console_lines(&lab, "c2").is_empty(),
        "a line landed under the name it claimed"
    );

    // Revoked, unknown to this CA, or without a certificate: nothing lands anywhere.
    let (c3, c3k) = board_id(&lab, "c3");
    send(
        &lab,
        &srv,
        Some((&c3, &c3k)),
        "<6>ipxe: from a revoked board\n",
    );
    let other = lab.tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (ok, o) = tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=c2",
            "-days",
            "30",
            "-keyout",
            s(&other.join("k.pem")),
            "-out",
            s(&other.join("c.pem")),
        ],
    );
    assert!(ok, "{o}");
    send(
        &lab,
        &srv,
        Some((&other.join("c.pem"), &other.join("k.pem"))),
        "<6>ipxe: from another CA\n",
    );
    send(&lab, &srv, None, "<6>ipxe: from nobody\n");
    let refused = wait_for("c3's refusal", Duration::from_secs(10), || {
        history(&lab, "c3")
            .into_iter()
            .find(|e| e["path"] == "console")
    });
    assert_eq!(refused["outcome"], "revoked", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("console refused: board c3 is revoked"),
        "{refused}"
    );
    let m = scrape(mport);
    assert_eq!(
        metric(
            &m,
            "ipxe_ca_console_connections_total{outcome=\"accepted\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(&m, "ipxe_ca_console_connections_total{outcome=\"revoked\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "ipxe_ca_console_connections_total{outcome=\"no-certificate\"}"
        ),
        1.0
    );
    assert!(
        metric(
            &m,
            "ipxe_ca_tls_handshake_failures_total{reason=\"bad-certificate\"}"
        ) >= 1.0
    );
    assert_eq!(metric(&m, "ipxe_ca_console_lines_total"), 4.0);
    for b in ["c2", "c3"] {
        assert!(
            console_lines(&lab, b).is_empty(),
            "{b}: {:?}",
            console_lines(&lab, b)
        );
    }

    // A flood: cut at the board's budget, the connection closed; another board's boot and
    // lines unaffected meanwhile.
    let flood: String = (0..5000).map(|i| format!("<6>ipxe: flood {i}\n")).collect();
    let (c2, c2k) = board_id(&lab, "c2");
    std::thread::scope(|sc| {
        sc.spawn(|| send(&lab, &srv, Some((&c1, &c1k)), &flood));
        for i in 0..5 {
            assert_eq!(lab.curl_as(Some("c2"), &srv.url("/boot.ipxe")).0, 200);
            send(
                &lab,
                &srv,
                Some((&c2, &c2k)),
                &format!("<6>ipxe: c2 line {i}\n"),
            );
        }
    });
    let c1_lines = wait_for("the cut", Duration::from_secs(10), || {
        let l = console_lines(&lab, "c1");
        l.iter()
            .any(|t| t.starts_with("ipxe-ca: console cut"))
            .then_some(l)
    });
    let floods = c1_lines.iter().filter(|t| t.starts_with("flood ")).count();
    assert!(
        (190..=210).contains(&floods),
        "{floods} flood lines kept (the budget is 200 at once, minus the 4 sent before)"
    );
    assert_eq!(c1_lines.last().unwrap().split(':').next(), Some("ipxe-ca"));
    let c2_lines = wait_for("c2's lines", Duration::from_secs(10), || {
        let l = console_lines(&lab, "c2");
        (l.len() == 5).then_some(l)
    });
    assert_eq!(
        c2_lines,
        (0..5).map(|i| format!("c2 line {i}")).collect::<Vec<_>>()
    );
    assert_eq!(metric(&scrape(mport), "ipxe_ca_console_cut_total"), 1.0);
}

/// A lab the QEMU guest reaches at 10.0.2.2 whose images send their console to this test's
/// own listener, `profile` as its default profile, serving; boards are enrolled (name, extra
/// `enroll` arguments) and their BIOS `.lkrn` built from `src` into `out/`.
struct GuestFarm {
    lab: Lab,
    srv: Server,
    out: std::path::PathBuf,
}

fn guest_farm(src: &Path, profile: (&str, &str), boards: &[(&str, &[&str])]) -> GuestFarm {
    let (https, http, console) = (free_port(), free_port(), free_port());
    let lab = Lab::for_guest(https, http, true);
    lab.ok(&["config", "--console", &format!("10.0.2.2:{console}")]);
    std::fs::write(lab.path(&format!("profiles/{}.ipxe", profile.0)), profile.1).unwrap();
    for (b, extra) in boards {
        lab.enroll(b, extra);
    }
    let srv = lab.serve_on(https, http, &["--console", &format!("127.0.0.1:{console}")]);
    let out = lab.tmp.path().join("out");
    let names: Vec<&str> = boards.iter().map(|(b, _)| *b).collect();
    crate::real_ipxe::build_lkrn(&lab, src, &out, &names);
    GuestFarm { lab, srv, out }
}

/// The board's `.lkrn` (built into `out`) under SeaBIOS.
fn lkrn(out: &Path, b: &str) -> Machine {
    Machine {
        firmware: Firmware::SeaBios,
        medium: Medium::Kernel(out.join(format!("{b}/{b}-lkrn.lkrn"))),
        siglist: None,
        rtc: None,
        vars: None,
    }
}

#[test]
fn a_real_ipxe_board_reports_its_missing_kernel_in_its_history() {
    let Some(src) = crate::real_ipxe::tree("IPXE_SRC", "a_real_ipxe_board_reports") else {
        return;
    };
    // An operator's profile whose kernel is missing: the script fails, the image's embed
    // script says so and retries. QEMU runs on a moment after that (the console lines are on
    // their way) and is stopped: nothing reads its screen for the verdict, the history has it.
    let farm = guest_farm(
        &src,
        (
            "default",
            "#!ipxe\nkernel {{ files_url }}/no-such-kernel\nboot\n",
        ),
        &[("nokernel", &[]), ("gone", &[])],
    );
    let GuestFarm { lab, srv, out } = farm;
    let lkrn = |b: &str| lkrn(&out, b);
    qemu::boot_then(
        "console-nokernel",
        &lkrn("nokernel"),
        "ipxe-ca: retrying",
        &["ipxe-ca: cannot fetch"],
        &["iPXE", "ipxe-ca: board"],
        Duration::from_secs(3),
    );
    let h = wait_for("the board's own line", Duration::from_secs(10), || {
        let h = history(&lab, "nokernel");
        h.iter()
            .any(|e| {
                e["source"] == "board"
                    && e["text"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("no-such-kernel")
            })
            .then_some(h)
    });
    let line = h
        .iter()
        .find(|e| e["source"] == "board" && e["text"].as_str().unwrap().contains("no-such-kernel"))
        .unwrap();
    let words = line["errors"][0]["meaning"].as_str().unwrap_or_default();
    eprintln!("the board said: {line}");
    assert!(words.starts_with("Not found"), "{line}\n{}", srv.output());
    // After the server's view of the script it came with.
    let at = |f: &dyn Fn(&serde_json::Value) -> bool| h.iter().position(f);
    let script =
        at(&|e| e["source"] == "server" && e["path"].as_str().unwrap().starts_with("/boot.ipxe"));
    let said = at(&|e| e == line);
    assert!(script.is_some() && script < said, "{h:?}");
    let text = lab.ok(&["history", "nokernel"]);
    assert!(
        text.contains("board> ") && text.contains("Not found"),
        "{text}"
    );

    // Revoked after its image was built: its iPXE connects its console (the server's
    // certificate is good) and is turned away; not one of its lines is kept.
    lab.ok(&["revoke", "gone"]);
    qemu::boot_then(
        "console-revoked",
        &lkrn("gone"),
        "ipxe-ca: retrying",
        &["REAL-PROFILE"],
        &["iPXE", "ipxe-ca: board"],
        Duration::from_secs(3),
    );
    let refused = wait_for("the console's refusal", Duration::from_secs(10), || {
        history(&lab, "gone")
            .into_iter()
            .find(|e| e["path"] == "console")
    });
    assert_eq!(refused["outcome"], "revoked", "{refused}");
    assert!(
        console_lines(&lab, "gone").is_empty(),
        "{:?}",
        history(&lab, "gone")
    );
}

#[test]
fn a_real_ipxe_board_flooding_its_console_is_cut_and_other_boards_boot_on() {
    let Some(src) = crate::real_ipxe::tree("IPXE_SRC", "a_real_ipxe_board_flooding") else {
        return;
    };
    // A script printing 600 lines in bursts of 50 a second (what iPXE's TCP window lets
    // through: it drops console lines itself while the window is shut), then a moment.
    let farm = guest_farm(
        &src,
        (
            "flood",
            "#!ipxe\n{% for i in range(600) %}echo flood {{ i }}\n{% if i % 50 == 49 %}sleep 1\n{% endif %}{% endfor %}sleep 2\necho FLOOD-DONE\npoweroff\n",
        ),
        &[("flood", &["--profile", "flood"]), ("quiet", &[])],
    );
    let GuestFarm { lab, srv, out } = farm;
    let (quiet, quiet_key) = board_id(&lab, "quiet");
    let done = std::sync::atomic::AtomicBool::new(false);
    let rounds = std::thread::scope(|sc| {
        sc.spawn(|| {
            qemu::boot(
                "console-flood",
                &lkrn(&out, "flood"),
                "FLOOD-DONE",
                &["ipxe-ca: cannot fetch"],
                &["iPXE", "flood 0"],
            );
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        // Meanwhile another board boots and writes, four times a second (within its own
        // budget).
        let mut i = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(lab.curl_as(Some("quiet"), &srv.url("/boot.ipxe")).0, 200);
            send(
                &lab,
                &srv,
                Some((&quiet, &quiet_key)),
                &format!("<6>ipxe: quiet {i}\n"),
            );
            i += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
        i
    });
    let lines = wait_for("the cut", Duration::from_secs(10), || {
        let l = console_lines(&lab, "flood");
        l.iter()
            .any(|t| t.starts_with("ipxe-ca: console cut"))
            .then_some(l)
    });
    let floods = lines.iter().filter(|t| t.starts_with("flood ")).count();
    // The budget: 200 at once and 2 a second after (a few seconds of refill), less the
    // lines before.
    assert!(
        (180..=240).contains(&floods),
        "{floods} of 600 flood lines kept, not the board's budget: {lines:?}"
    );
    assert!(!lines.iter().any(|t| t == "flood 599"), "{lines:?}");
    let cuts = lines
        .iter()
        .filter(|t| t.starts_with("ipxe-ca: console cut"))
        .count();
    assert_eq!(cuts, 1, "{lines:?}");
    let quiet_lines = wait_for("quiet's lines", Duration::from_secs(10), || {
        let l = console_lines(&lab, "quiet");
        (l.len() == rounds).then_some(l)
    });
    assert_eq!(
        quiet_lines.last().unwrap(),
        &format!("quiet {}", rounds - 1)
    );
    eprintln!("another board booted and wrote {rounds} times during the flood");
}

#[test]
fn the_error_table_is_what_ipxe_own_source_says() {
    let tarballs = [
        "../shared/ipxe/ipxe-2.0.0.tar.xz",
        "../shared/ipxe/ipxe-1.21.1.tar.xz",
    ];
    if let Some(missing) = tarballs.iter().find(|t| !Path::new(t).is_file()) {
        eprintln!(
            "\n==== SKIPPED the_error_table_is_what_ipxe_own_source_says: {missing} is missing; \
             the table cannot be checked against iPXE's source ====\n"
        );
        return;
    }
    let o = Command::new("python3")
        .arg("scripts/ipxe-errors.py")
        .args(tarballs)
        .output()
        .expect("python3 is needed (apt-get install python3)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = std::fs::read_to_string("src/ipxe_error/table.rs").unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout) == ours,
        "src/ipxe_error/table.rs differs from what scripts/ipxe-errors.py writes from iPXE's source: run it"
    );
}
