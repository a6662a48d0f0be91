//! What an operator needs on day 30: boot history, metrics, renewal, packaging.

use std::process::Command;
use std::time::Duration;

use crate::util::{curl_plain, free_port, metric, wait_for, Lab};

#[test]
fn history_and_metrics_say_why_a_board_did_not_boot() {
    let lab = Lab::init();
    lab.enroll("h1", &["--mac", "52:54:00:00:00:01"]);
    lab.enroll("h2", &[]);
    lab.enroll("quiet", &[]);
    lab.ok(&["revoke", "h2"]);
    let mport = free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let srv = lab.serve(&["--metrics", &maddr]);
    crate::common::wait_port(mport, Duration::from_secs(10)).unwrap();

    assert_eq!(lab.curl_as(Some("h1"), &srv.url("/boot.ipxe")).0, 200);
    let (code, _) = lab.curl_as(Some("h1"), &srv.url("/ipxe/52:54:00:00:00:99"));
    assert_eq!(code, 403);
    assert_eq!(lab.curl_as(Some("h2"), &srv.url("/boot.ipxe")).0, 403);
    assert_eq!(lab.curl_as(None, &srv.url("/boot.ipxe")).0, 403);

    // history: written by a background thread; wait for it, do not sleep.
    let h1: serde_json::Value = wait_for("h1's history", Duration::from_secs(10), || {
        let v: serde_json::Value =
            serde_json::from_str(&lab.ok(&["history", "h1", "--json"])).ok()?;
        (v.as_array()?.len() == 2).then_some(v)
    });
    assert_eq!(h1[0]["outcome"], "served", "{h1}");
    assert_eq!(h1[0]["status"], 200);
    assert!(
        h1[0]["tls"]["suite"].as_str().unwrap().starts_with("TLS"),
        "{h1}"
    );
    assert_eq!(h1[1]["outcome"], "mac-mismatch", "{h1}");
    assert!(
        h1[1]["reason"].as_str().unwrap().contains("MAC mismatch"),
        "{h1}"
    );
    let h2 = wait_for("h2's history", Duration::from_secs(10), || {
        let t = lab.ok(&["history", "h2"]);
        t.contains("revoked").then_some(t)
    });
    assert!(h2.contains("403") && h2.contains("is revoked"), "{h2}");
    assert!(lab
        .ok(&["history", "quiet"])
        .contains("no request recorded"));
    assert!(lab.fails(&["history", "nobody"]).contains("no board named"));

    // list: LAST SEEN, in the table and in JSON.
    let table = lab.ok(&["list"]);
    assert!(table.contains("LAST SEEN"), "{table}");
    let quiet = table.lines().find(|l| l.starts_with("quiet")).unwrap();
    assert!(quiet.contains("never"), "{table}");
    let list: serde_json::Value = serde_json::from_str(&lab.ok(&["list", "--json"])).unwrap();
    let b = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(b("h1")["last_outcome"], "mac-mismatch");
    assert!(b("h1")["last_seen"].as_str().unwrap().starts_with("20"));
    assert_eq!(b("quiet")["last_seen"], serde_json::Value::Null);

    // Files (at the plain port's root and under /files/), a secret over plain HTTP (refused)
    // and an unknown path over HTTPS, each counted under its own route.
    std::fs::write(lab.path("files/vmlinuz"), vec![7u8; 1000]).unwrap();
    assert_eq!(curl_plain(&srv.http_url("/vmlinuz")).0, 200);
    assert_eq!(curl_plain(&srv.http_url("/files/vmlinuz")).0, 200);
    assert_eq!(curl_plain(&srv.http_url("/secret/abcdef")).0, 403);
    assert_eq!(lab.curl_as(Some("h1"), &srv.url("/nope")).0, 404);
    assert_eq!(curl_plain(&srv.http_url("/")).0, 404);

    // metrics: on their own listener only, with the counts of what just happened.
    let (code, text) = curl_plain(&format!("http://{maddr}/metrics"));
    assert_eq!(code, 200, "{text}");
    let boot = |o: &str| {
        metric(
            &text,
            &format!("ipxe_ca_requests_total{{route=\"boot\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(boot("served"), 1.0);
    assert_eq!(boot("mac-mismatch"), 1.0);
    assert_eq!(boot("revoked"), 1.0);
    assert_eq!(boot("no-certificate"), 1.0);
    assert_eq!(boot("template-error"), 0.0);
    let tls: f64 = text
        .lines()
        .filter(|l| l.starts_with("ipxe_ca_tls_handshakes_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(tls, 5.0, "{text}");
    let req = |route: &str, o: &str| {
        metric(
            &text,
            &format!("ipxe_ca_requests_total{{route=\"{route}\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(req("files", "served"), 2.0, "{text}");
    assert_eq!(metric(&text, "ipxe_ca_file_sent_bytes_total"), 2000.0);
    assert_eq!(req("secret", "refused"), 1.0, "{text}");
    assert_eq!(req("other", "not-found"), 2.0, "{text}");
    for kind in ["board", "server", "ca", "codesign", "crl"] {
        let secs = metric(
            &text,
            &format!("ipxe_ca_expiry_remaining_seconds{{kind=\"{kind}\"}}"),
        );
        assert!(secs > 300.0 * 86400.0, "{kind}: {secs}");
    }
    // The open-connection gauge counts a connection while it is open and forgets it after.
    let gauge = || {
        let (_, text) = curl_plain(&format!("http://{maddr}/metrics"));
        metric(&text, "ipxe_ca_open_connections{listener=\"http\"}")
    };
    let idle = std::net::TcpStream::connect(("127.0.0.1", srv.http)).unwrap();
    crate::util::wait_for(
        "the open connection counted",
        Duration::from_secs(10),
        || (gauge() >= 1.0).then_some(()),
    );
    drop(idle);
    crate::util::wait_for(
        "the closed connection forgotten",
        Duration::from_secs(10),
        || (gauge() == 0.0).then_some(()),
    );
    // Prometheus' own checker accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed (apt-get install prometheus)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = promtool.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // The boards' ports do not serve metrics.
    let (_, on_http) = curl_plain(&srv.http_url("/metrics"));
    assert!(!on_http.contains("ipxe_ca_"), "{on_http}");
    // The writer appends in batches and rests between them: what was queued when SIGTERM came
    // is written before serve exits (two requests, so that the second lands in a rest).
    let mut srv = srv;
    assert_eq!(lab.curl_as(Some("quiet"), &srv.url("/boot.ipxe")).0, 200);
    assert_eq!(lab.curl_as(Some("quiet"), &srv.url("/boot.ipxe")).0, 200);
    assert!(srv.terminate().success());
    let last = lab.ok(&["history", "quiet", "--json"]);
    let last: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last.as_array().map(Vec::len), Some(2), "{last}");
}

fn serial_of(cert: &str) -> String {
    crate::util::openssl(&["x509", "-in", cert, "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase()
}

fn crl_text(lab: &Lab) -> String {
    crate::util::openssl(&[
        "crl",
        "-in",
        crate::util::s(&lab.path("ca/crl.pem")),
        "-noout",
        "-text",
    ])
    .to_lowercase()
}

#[test]
fn renew_keeps_the_board_booting_until_the_old_certificate_is_revoked() {
    let lab = Lab::init();
    lab.enroll(
        "r1",
        &[
            "--mac",
            "52:54:00:00:00:11",
            "--var",
            "cmdline=R1-MARK",
            "--secret",
            "s=R1-SECRET",
        ],
    );
    // The old image's certificate and key, as a flashed stick holds them.
    let old = lab.tmp.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::copy(lab.path("boards/r1/cert.pem"), old.join("cert.pem")).unwrap();
    std::fs::copy(lab.path("keys/boards/r1.key"), old.join("key.pem")).unwrap();
    let old_cert = crate::util::s(&old.join("cert.pem")).to_string();
    let old_serial = serial_of(&old_cert);
    let out: serde_json::Value = serde_json::from_str(&lab.ok(&["renew", "r1", "--json"])).unwrap();
    let new_serial = out[0]["serial"].as_str().unwrap().to_string();
    assert_ne!(new_serial, old_serial);
    assert_eq!(out[0]["mac"], "52:54:00:00:00:11");
    assert_eq!(out[0]["secrets"][0], "s");
    // Same key (no --new-key): the key file did not change.
    assert_eq!(
        std::fs::read(old.join("key.pem")).unwrap(),
        std::fs::read(lab.path("keys/boards/r1.key")).unwrap()
    );
    crate::util::verify_strict(
        "sslclient",
        crate::util::s(&lab.path("ca/ca.crt")),
        crate::util::s(&lab.path("boards/r1/cert.pem")),
    );
    assert!(lab
        .ok(&["list"])
        .lines()
        .any(|l| l.starts_with("r1") && l.contains("renewed")));

    let srv = lab.serve(&[]);
    let curl_old = |path: &str| {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
            .arg(lab.path("ca/ca.crt"))
            .args(["--cert", &old_cert, "--key"])
            .arg(old.join("key.pem"))
            .arg(srv.url(path))
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = t.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.to_string())
    };
    // Grace: the old stick still boots, with the board's own script.
    let (code, body) = curl_old("/boot.ipxe");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("ipxe-ca: r1") && body.contains("R1-MARK"),
        "{body}"
    );
    assert_eq!(lab.curl_as(Some("r1"), &srv.url("/boot.ipxe")).0, 200);

    // The new image is in place: the old certificate goes.
    lab.ok(&["revoke", "--previous", "r1"]);
    let (code, body) = curl_old("/boot.ipxe");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("old certificate") && !body.contains("R1-MARK"),
        "{body}"
    );
    assert_eq!(lab.curl_as(Some("r1"), &srv.url("/boot.ipxe")).0, 200);
    let crl = crl_text(&lab);
    assert!(
        crl.contains(&old_serial) && !crl.contains(&new_serial),
        "{crl}"
    );
    assert!(lab
        .fails(&["revoke", "--previous", "r1"])
        .contains("nothing to revoke"));
    let show: serde_json::Value = serde_json::from_str(&lab.ok(&["show", "r1", "--json"])).unwrap();
    assert_eq!(show["status"], "active");
    assert!(
        show["previous"][0].as_str().unwrap().contains("revoked"),
        "{show}"
    );

    // --new-key --revoke-old: a new key, and the old certificate refused at once.
    lab.enroll("r2", &[]);
    let r2_old_key = std::fs::read(lab.path("keys/boards/r2.key")).unwrap();
    let r2_old = serial_of(crate::util::s(&lab.path("boards/r2/cert.pem")));
    lab.ok(&["renew", "r2", "--new-key", "--revoke-old"]);
    assert_ne!(
        std::fs::read(lab.path("keys/boards/r2.key")).unwrap(),
        r2_old_key
    );
    assert!(crl_text(&lab).contains(&r2_old));
    assert_eq!(lab.curl_as(Some("r2"), &srv.url("/boot.ipxe")).0, 200);
    assert_eq!(lab.ok(&["check"]).trim(), "registry consistent");
}

#[test]
fn a_revoked_name_is_re_enrolled_only_on_purpose() {
    let lab = Lab::init();
    lab.enroll("x1", &[]);
    let e = lab.fails(&["enroll", "x1"]);
    assert!(
        e.contains("already registered") && e.contains("--replace"),
        "{e}"
    );
    let e = lab.fails(&["enroll", "x1", "--replace"]);
    assert!(e.contains("is active"), "{e}");
    let old_serial = serial_of(crate::util::s(&lab.path("boards/x1/cert.pem")));
    let old = lab.tmp.path().join("x1-old.pem");
    std::fs::copy(lab.path("boards/x1/cert.pem"), &old).unwrap();
    lab.ok(&["revoke", "x1", "--reason", "key-compromise"]);
    let renewed = lab.fails(&["renew", "x1"]);
    assert!(renewed.contains("revoked"), "{renewed}");
    lab.ok(&["enroll", "x1", "--replace"]);
    let show: serde_json::Value = serde_json::from_str(&lab.ok(&["show", "x1", "--json"])).unwrap();
    assert_eq!(show["status"], "active");
    assert_ne!(show["serial"].as_str().unwrap(), old_serial);
    // The old certificate stays revoked: in the CRL (with its reason), refused by the server.
    let crl = crl_text(&lab);
    assert!(
        crl.contains(&old_serial) && crl.contains("key compromise"),
        "{crl}"
    );
    let srv = lab.serve(&[]);
    assert_eq!(lab.curl_as(Some("x1"), &srv.url("/boot.ipxe")).0, 200);
    assert_eq!(lab.ok(&["check"]).trim(), "registry consistent");
    let _ = old;
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/ipxe-ca.service"
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The unit names the installed binary; verify it against the one under test.
    let bin = crate::util::bin();
    let path = tmp.path().join("ipxe-ca.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/ipxe-ca", crate::util::s(&bin)),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is needed (apt-get install systemd)");
    let err = String::from_utf8_lossy(&o.stderr);
    // verify exits 0 on an unknown key: any word on stderr is a finding.
    assert!(o.status.success() && err.trim().is_empty(), "{err}");
    // Exposure at most 2.5 of 10 ("OK"): dedicated user, read-only system, no capabilities.
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=25"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    for must in [
        "User=ipxe-ca",
        "StateDirectory=ipxe-ca",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "CapabilityBoundingSet=\n",
        "CPUSchedulingPolicy=batch\n",
    ] {
        assert!(unit.contains(must), "{must}");
    }
}

/// The serial of the certificate `serve` presents to a client offering `args` (openssl
/// s_client, no client certificate).
fn served_serial(port: u16, args: &[&str]) -> Option<String> {
    use std::io::Write;
    use std::process::Stdio;
    let o = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let mut x = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    x.stdin.take()?.write_all(&o.stdout).ok()?;
    let out = x.wait_with_output().ok()?;
    // The same form as serial_of gives for a file.
    let text = String::from_utf8_lossy(&out.stdout);
    let serial = text.trim().strip_prefix("serial=")?;
    Some(serial.to_lowercase())
}

#[test]
fn server_cert_rotation_takes_effect_without_restart_or_dropped_connections() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;
    let lab = Lab::init();
    lab.enroll("r1", &[]);
    let srv = lab.serve(&["--timeout", "60"]);
    let rsa_only = ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"];
    let (rsa0, ec0) = (
        serial_of(crate::util::s(&lab.path("server/server.crt"))),
        serial_of(crate::util::s(&lab.path("server/server-ecdsa.crt"))),
    );
    assert_eq!(served_serial(srv.https, &rsa_only).as_deref(), Some(&*rsa0));
    assert_eq!(served_serial(srv.https, &[]).as_deref(), Some(&*ec0));

    // A board's connection, handshake done, request not yet sent.
    let mut held = Command::new("timeout")
        .args(["60", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{}", srv.https))
        .arg("-CAfile")
        .arg(lab.path("ca/ca.crt"))
        .arg("-cert")
        .arg(lab.path("boards/r1/cert.pem"))
        .arg("-key")
        .arg(lab.path("keys/boards/r1.key"))
        .arg("-ign_eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(held.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("Verify return code") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "s_client ended early"
        );
    }

    // After more than the one second between looks at the files (an idle server), the next
    // connection must still notice the rotation.
    std::thread::sleep(Duration::from_millis(1200));
    let said = lab.ok(&["server-cert", "--san", "localhost", "--san", "127.0.0.1"]);
    assert!(said.contains("picks them up"), "{said}");
    let (rsa1, ec1) = (
        serial_of(crate::util::s(&lab.path("server/server.crt"))),
        serial_of(crate::util::s(&lab.path("server/server-ecdsa.crt"))),
    );
    assert_ne!(rsa0, rsa1);
    assert_ne!(ec0, ec1);
    wait_for("the new RSA certificate", Duration::from_secs(10), || {
        (served_serial(srv.https, &rsa_only)? == rsa1).then_some(())
    });
    wait_for("the new ECDSA certificate", Duration::from_secs(10), || {
        (served_serial(srv.https, &[])? == ec1).then_some(())
    });
    assert!(srv.output().contains("reloaded the server certificates"));

    // The connection opened before the rotation still gets its script.
    held.stdin
        .take()
        .unwrap()
        .write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let _ = held.wait();
    assert!(
        rest.contains("HTTP/1.1 200") && rest.contains("#!ipxe"),
        "{rest}"
    );

    // A broken key (a rotation half done by hand) is not loaded: the last good pair stays.
    let good_key = std::fs::read(lab.path("server/server.key")).unwrap();
    std::fs::write(lab.path("server/server.key"), "not a key\n").unwrap();
    wait_for(
        "the warning about the broken key",
        Duration::from_secs(10),
        || {
            let _ = served_serial(srv.https, &rsa_only);
            srv.output()
                .contains("kept the previous server certificates")
                .then_some(())
        },
    );
    assert_eq!(served_serial(srv.https, &rsa_only).as_deref(), Some(&*rsa1));
    assert_eq!(lab.curl_as(Some("r1"), &srv.url("/boot.ipxe")).0, 200);

    // The CA bundle too: a board of another CA fails the handshake until that CA is added to
    // ca/ca.crt; then it completes and the registry answers (403: not registered here).
    std::fs::write(lab.path("server/server.key"), &good_key).unwrap();
    let other = Lab::init();
    other.enroll("stranger", &[]);
    let stranger = |lab: &Lab| {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
            .arg(lab.path("ca/ca.crt"))
            .arg("--cert")
            .arg(other.path("boards/stranger/cert.pem"))
            .arg("--key")
            .arg(other.path("keys/boards/stranger.key"))
            .arg(srv.url("/boot.ipxe"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let before = stranger(&lab);
    assert!(before.ends_with("000"), "{before}");
    let ours = std::fs::read(lab.path("ca/ca.crt")).unwrap();
    let mut bundle = ours.clone();
    bundle.extend(std::fs::read(other.path("ca/ca.crt")).unwrap());
    std::fs::write(lab.path("ca/ca.crt"), bundle).unwrap();
    let after = wait_for("the new CA bundle", Duration::from_secs(10), || {
        let t = stranger(&lab);
        t.ends_with("403").then_some(t)
    });
    assert!(after.contains("not registered"), "{after}");
    assert_eq!(lab.curl_as(Some("r1"), &srv.url("/boot.ipxe")).0, 200);
    // And out again: serve remembers chains it verified (a board's second boot skips the
    // chain check), but never across a CA bundle change.
    std::fs::write(lab.path("ca/ca.crt"), &ours).unwrap();
    wait_for(
        "the CA removed from the bundle",
        Duration::from_secs(10),
        || stranger(&lab).ends_with("000").then_some(()),
    );
    assert_eq!(lab.curl_as(Some("r1"), &srv.url("/boot.ipxe")).0, 200);
}

/// Purges the package if a test installed it and then failed.
struct Installed;
impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "ipxe-ca"]).output();
    }
}

fn run(prog: &str, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("DEB_COMPRESSION", "gzip")
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{prog} {args:?} failed: {text}");
    text
}

fn processes_of(exe: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path().join("exe"))
                .map(|p| p.to_string_lossy().starts_with(exe))
                .unwrap_or(false)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn the_deb_package_lints_clean_installs_with_apt_and_removes() {
    assert!(
        rustix::process::geteuid().is_root(),
        "installing a .deb needs root (CI runs as root): run the suite as root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("deb");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/deb.sh");
    let bin = crate::util::bin();
    let built = run(script, &[crate::util::s(&bin), crate::util::s(&out)]);
    let deb = built.lines().last().unwrap().trim().to_string();
    assert!(
        deb.ends_with("_amd64.deb") || deb.ends_with(".deb"),
        "{built}"
    );

    // lintian: no error and no warning.
    let o = Command::new("lintian")
        .args(["--fail-on", "error,warning", &deb])
        .output()
        .expect("lintian is needed (apt-get install lintian)");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "lintian: {text}");
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{text}"
    );

    // Every asset `cargo deb` would install (Cargo.toml) is in the package.
    let listing = run("dpkg-deb", &["-c", &deb]);
    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap(),
    )
    .unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    assert!(assets.len() >= 6);
    for a in assets {
        let (src, dest) = (a[0].as_str().unwrap(), a[1].as_str().unwrap());
        let name = src.rsplit('/').next().unwrap();
        let want = if dest.ends_with('/') {
            format!("./{dest}{}", name.replace("*", ""))
        } else {
            format!("./{dest}")
        };
        let want = want.trim_end_matches(".1.gz");
        assert!(
            listing.contains(want),
            "{want} (asset {src}) not in:\n{listing}"
        );
    }
    // Generated assets left for cargo-deb where Cargo.toml looks for them.
    assert!(out.join("assets/man/ipxe-ca.1.gz").exists());

    // apt installs it (dependencies from the archive), starts nothing, and removes it.
    let _guard = Installed;
    run("apt-get", &["install", "-y", "-q", &deb]);
    let version = run("/usr/bin/ipxe-ca", &["--version"]);
    assert_eq!(version, run(crate::util::s(&bin), &["--version"]));
    assert!(version.contains("(git "), "{version}");
    assert!(run("getent", &["passwd", "ipxe-ca"]).contains("/var/lib/ipxe-ca"));
    assert!(std::path::Path::new("/lib/systemd/system/ipxe-ca.service").exists());
    let man = run("zcat", &["/usr/share/man/man1/ipxe-ca-enroll.1.gz"]);
    assert!(man.contains(".TH ipxe-ca-enroll 1"), "{man}");
    let complete = run(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/ipxe-ca && complete -p ipxe-ca",
        ],
    );
    assert!(complete.contains("ipxe-ca"), "{complete}");
    assert!(
        processes_of("/usr/bin/ipxe-ca").is_empty(),
        "the package started ipxe-ca"
    );
    run("apt-get", &["remove", "--purge", "-y", "-q", "ipxe-ca"]);
    assert!(!std::path::Path::new("/usr/bin/ipxe-ca").exists());
    assert!(!std::path::Path::new("/lib/systemd/system/ipxe-ca.service").exists());
    assert!(Command::new("dpkg")
        .args(["-s", "ipxe-ca"])
        .output()
        .map(|o| !o.status.success())
        .unwrap());
}

/// The README's first command on the embedded defaults: `scripts/quickstart.sh` builds, makes
/// the lab (`$IPXE_CA_DIR`, else `./lab`), enrolls board1 and serves; the README's curl then
/// gets board1's script. Run again, it keeps the lab.
#[test]
fn the_readme_quick_start_serves_board1_and_keeps_its_lab_when_run_again() {
    // Its state dir is not made yet: quickstart.sh makes it.
    let lab = Lab::new();
    let tmp = &lab.tmp;
    let s = crate::util::s;
    let start = |log: &str| {
        let (https, http) = (free_port(), free_port());
        let out = std::fs::File::create(tmp.path().join(log)).unwrap();
        let child = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/quickstart.sh"
        ))
        .args(["--https", &format!("127.0.0.1:{https}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .env("IPXE_CA_DIR", &lab.dir)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
        let mut child = crate::common::Proc(child);
        // The first run builds the release binary: minutes on a cold checkout.
        let end = std::time::Instant::now() + Duration::from_secs(1200);
        while crate::common::wait_port(https, Duration::from_secs(1)).is_err() {
            let log = std::fs::read_to_string(tmp.path().join(log)).unwrap_or_default();
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "quickstart.sh ended: {log}"
            );
            assert!(std::time::Instant::now() < end, "not serving yet: {log}");
        }
        (child, https)
    };
    // The README's curl: the CA, board1's certificate and key.
    let readme_curl = |https: u16| {
        lab.curl_as(
            Some("board1"),
            &format!("https://127.0.0.1:{https}/boot.ipxe"),
        )
    };
    let first = {
        let _cores = crate::qemu::no_boots_meanwhile();
        start("first.log")
    };
    let (code, script) = readme_curl(first.1);
    assert!(
        code == 200 && script.starts_with("#!ipxe"),
        "{code} {script}"
    );
    let log = std::fs::read_to_string(tmp.path().join("first.log")).unwrap();
    assert!(
        log.contains(&format!("try: curl --cacert {}", s(&lab.path("ca/ca.crt")))),
        "{log}"
    );
    drop(first);
    let ca = std::fs::read(lab.path("ca/ca.crt")).unwrap();
    let cert = std::fs::read(lab.path("boards/board1/cert.pem")).unwrap();
    let again = start("again.log");
    assert_eq!(readme_curl(again.1).0, 200);
    assert_eq!(
        std::fs::read(lab.path("ca/ca.crt")).unwrap(),
        ca,
        "a new CA"
    );
    assert_eq!(
        std::fs::read(lab.path("boards/board1/cert.pem")).unwrap(),
        cert,
        "board1 enrolled again"
    );
}

/// `openssl x509 -checkhost`: whether openssl, as an independent checker, takes `cert` for
/// `host`.
fn openssl_takes(cert: &std::path::Path, host: &str) -> bool {
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(cert)
        .args(["-checkhost", host])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("match certificate"), "{out}");
    !out.contains("NOT match")
}

/// Boards moved to another server or files mirror: `config` changes the URLs, and refuses a
/// server URL the server certificates do not name (every board would then refuse the server),
/// saying what to do and changing nothing; `init` and `server-cert` refuse the same mismatch.
/// openssl's own host check agrees with each verdict.
#[test]
fn config_points_boards_elsewhere_only_where_the_server_certificates_name_it() {
    let lab = Lab::init();
    let shown = lab.ok(&["config"]);
    assert!(
        shown.contains("server_url = https://127.0.0.1:8443\n")
            && shown.contains("files_url = http://127.0.0.1:8080\n"),
        "{shown}"
    );
    let json: serde_json::Value = serde_json::from_str(&lab.ok(&["config", "--json"])).unwrap();
    assert_eq!(json["after"]["server_url"], "https://127.0.0.1:8443");
    assert_eq!(json["before"], json["after"]);

    // A name the certificates lack, or a wrong scheme: refused, nothing changed.
    let (rsa, ecdsa) = (
        lab.path("server/server.crt"),
        lab.path("server/server-ecdsa.crt"),
    );
    let before = lab.snapshot();
    assert!(!openssl_takes(&rsa, "boot.farm.lab"));
    let e = lab.fails(&["config", "--server-url", "https://boot.farm.lab:8443"]);
    assert!(
        e.contains("boards reach the server as boot.farm.lab")
            && e.contains("ipxe-ca server-cert --san boot.farm.lab"),
        "{e}"
    );
    let e = lab.fails(&["config", "--files-url", "ftp://mirror.lab"]);
    assert!(e.contains("must start with http://"), "{e}");
    assert_eq!(before, lab.snapshot());

    // Another files mirror: taken (trailing slash trimmed), live for `serve`.
    let out = lab.ok(&["config", "--files-url", "http://mirror.lab:9090/"]);
    assert!(
        out.contains("files_url = http://mirror.lab:9090\n") && out.contains("next boot script"),
        "{out}"
    );
    let text = std::fs::read_to_string(lab.path("etc/config.toml")).unwrap();
    assert!(
        text.contains("files_url = \"http://mirror.lab:9090\""),
        "{text}"
    );

    // New certificate names that leave out the server URL's host: refused, nothing changed.
    let before = lab.snapshot();
    let e = lab.fails(&["server-cert", "--san", "DNS:boot.farm.lab"]);
    assert!(
        e.contains("boards reach the server as 127.0.0.1") && e.contains("--san 127.0.0.1"),
        "{e}"
    );
    assert_eq!(before, lab.snapshot());

    // A move: certificates with both names, then the URL, then the old name can go.
    lab.ok(&[
        "server-cert",
        "--san",
        "IP:127.0.0.1",
        "--san",
        "DNS:boot.farm.lab",
    ]);
    assert!(openssl_takes(&rsa, "boot.farm.lab") && openssl_takes(&ecdsa, "boot.farm.lab"));
    let out = lab.ok(&["config", "--server-url", "https://boot.farm.lab:9443"]);
    assert!(
        out.contains("server_url = https://boot.farm.lab:9443\n") && out.contains("rebuild"),
        "{out}"
    );
    lab.ok(&["server-cert", "--san", "DNS:*.farm.lab"]);
    assert!(openssl_takes(&rsa, "BOOT.farm.lab"));
    // A wildcard stands for one label, for openssl as for ipxe-ca.
    assert!(!openssl_takes(&rsa, "a.boot.farm.lab"));
    let before = lab.snapshot();
    let e = lab.fails(&["config", "--server-url", "https://a.boot.farm.lab"]);
    assert!(e.contains("DNS:*.farm.lab"), "{e}");
    assert_eq!(before, lab.snapshot());

    // The same mistakes made by hand in config.toml: `check` names them and fails.
    let check = || {
        let o = lab.run(&["check"]);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    lab.ok(&["check"]);
    let config = lab.path("etc/config.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace("https://boot.farm.lab:9443", "https://elsewhere.lab"),
    )
    .unwrap();
    let e = check();
    assert!(
        e.contains("server-name-mismatch") && e.contains("server-cert --san elsewhere.lab"),
        "{e}"
    );
    // `serve` says so at start.
    let srv = lab.serve(&[]);
    let said = crate::util::wait_for("the name warning", Duration::from_secs(10), || {
        let out = srv.output();
        out.contains("boards reach the server as elsewhere.lab")
            .then_some(out)
    });
    assert!(said.contains("ipxe-ca: warning: "), "{said}");
    drop(srv);
    std::fs::write(
        &config,
        good.replace("https://boot.farm.lab:9443", "http://boot.farm.lab"),
    )
    .unwrap();
    let e = check();
    assert!(e.contains("bad-config") && e.contains("https://"), "{e}");
    std::fs::write(&config, &good).unwrap();
    lab.ok(&["check"]);

    // `init` with a server URL its names do not cover: refused before anything is written.
    let fresh = Lab::new();
    let e = fresh.fails(&[
        "init",
        "--san",
        "DNS:boot.lab",
        "--server-url",
        "https://10.0.0.5:8443",
    ]);
    assert!(e.contains("add `--san 10.0.0.5`"), "{e}");
    assert!(!fresh.path("ca").exists() && !fresh.path("etc/config.toml").exists());
}
