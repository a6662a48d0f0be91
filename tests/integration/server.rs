//! `ipxe-ca serve` with real clients: curl, openssl s_client and a real nginx in front.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{
    bin, free_port, s, serve_traced, sign_with_openssl, start_nginx, stop_traced, tool,
    write_random, Lab,
};

/// A lab with boards a and b, each with its own secret in its boot script.
fn two_boards() -> Lab {
    let lab = Lab::init();
    lab.enroll(
        "board-a",
        &[
            "--mac",
            "52:54:00:00:00:0a",
            "--secret",
            "s3_key=SECRET-AAA-1111",
        ],
    );
    lab.enroll("board-b", &["--secret", "s3_key=SECRET-BBB-2222"]);
    std::fs::write(
        lab.path("profiles/default.ipxe"),
        "#!ipxe\necho board {{ board.name }} sha1 {{ board.fingerprint_sha1 }}\nkernel {{ files_url }}/files/vmlinuz s3={{ secrets.s3_key }}\nboot\n",
    )
    .unwrap();
    lab
}

#[test]
fn each_board_gets_its_own_script_and_strangers_get_nothing() {
    let lab = two_boards();
    let srv = lab.serve(&[]);
    let (code, a) = lab.curl_as(Some("board-a"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 200, "{a}");
    assert!(
        a.starts_with("#!ipxe") && a.contains("board board-a") && a.contains("s3=SECRET-AAA-1111"),
        "{a}"
    );
    assert!(!a.contains("BBB"));
    let (code, b) = lab.curl_as(Some("board-b"), &srv.url("/boot/ipxe"));
    assert_eq!(code, 200, "{b}");
    assert!(
        b.contains("board board-b") && b.contains("s3=SECRET-BBB-2222"),
        "{b}"
    );
    // The registered MAC must match when the request names one.
    let (code, _) = lab.curl_as(
        Some("board-a"),
        &srv.url("/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A0a"),
    );
    assert_eq!(code, 200);
    let (code, _) = lab.curl_as(Some("board-a"), &srv.url("/ipxe/52:54:00:00:00:0a"));
    assert_eq!(code, 200);
    let (code, body) = lab.curl_as(
        Some("board-a"),
        &srv.url("/boot.ipxe?mac=52:54:00:00:00:0b"),
    );
    assert_eq!(code, 403);
    assert!(!body.contains("SECRET"), "{body}");
    // No certificate: 403 with a script that says why.
    let (code, none) = lab.curl_as(None, &srv.url("/boot.ipxe"));
    assert_eq!(code, 403);
    assert!(
        none.starts_with("#!ipxe\necho ") && none.contains("no client certificate"),
        "{none}"
    );
    assert!(!none.contains("SECRET"));
    // A valid certificate of our CA that was never registered: 403, logged as such.
    let d = lab.tmp.path();
    let (key, csr, crt) = (
        d.join("stray.key"),
        d.join("stray.csr"),
        d.join("stray.crt"),
    );
    crate::util::rsa_csr(s(&key), "/CN=stray", s(&csr), &[]);
    let ext = d.join("client.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    sign_with_openssl(&lab, s(&csr), s(&crt), &["-extfile", s(&ext)]);
    let (_, out) = tool(
        "curl",
        &[
            "-s",
            "-w",
            "\n%{http_code}",
            "--cacert",
            s(&lab.path("ca/ca.crt")),
            "--cert",
            s(&crt),
            "--key",
            s(&key),
            &srv.url("/boot.ipxe"),
        ],
    );
    assert!(
        out.ends_with("403") && out.contains("not registered") && !out.contains("SECRET"),
        "{out}"
    );
    // A certificate from another CA: the handshake fails, nothing is served.
    let other = Lab::init();
    other.enroll("intruder", &[]);
    let o = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "--cacert",
            s(&lab.path("ca/ca.crt")),
        ])
        .args([
            "--cert",
            s(&other.path("boards/intruder/cert.pem")),
            "--key",
            s(&other.path("keys/boards/intruder.key")),
        ])
        .arg(srv.url("/boot.ipxe"))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("SECRET"));
    assert!(
        !o.status.success(),
        "the handshake must fail for a foreign certificate"
    );
    // What iPXE speaks: TLS 1.2 ECDHE-RSA-AES128-GCM-SHA256 with a client certificate.
    let o = Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "-connect",
            &format!("127.0.0.1:{}", srv.https),
        ])
        .args([
            "-CAfile",
            s(&lab.path("ca/ca.crt")),
            "-cert",
            s(&lab.path("boards/board-a/cert.pem")),
            "-key",
            s(&lab.path("keys/boards/board-a.key")),
        ])
        .args(["-verify_return_error", "-showcerts"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("Cipher is ECDHE-RSA-AES128-GCM-SHA256"),
        "{out}"
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert_eq!(
        out.matches("BEGIN CERTIFICATE").count(),
        2,
        "the server sends leaf + CA"
    );
    // The log names the board and never a secret value.
    let log = srv.output();
    assert!(log.contains("\"board\":\"board-a\""), "{log}");
    assert!(log.contains("MAC mismatch"), "{log}");
    assert!(log.contains("tls_handshake_failed"), "{log}");
    assert!(!log.contains("SECRET-"), "secret in log: {log}");
}

#[test]
fn revoke_and_enroll_take_effect_without_restart() {
    let lab = two_boards();
    let srv = lab.serve(&[]);
    assert_eq!(lab.curl_as(Some("board-a"), &srv.url("/boot.ipxe")).0, 200);
    lab.ok(&["revoke", "board-a"]);
    // The very next request, with no wait and no retry, is refused ("within one second"
    // without a timed assertion: nothing in the server polls or caches).
    let (code, body) = lab.curl_as(Some("board-a"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.starts_with("#!ipxe") && body.contains("board-a is revoked"),
        "{body}"
    );
    // The CRL is checked too, not only the registry: a registry entry set back to active by
    // hand does not bring a revoked certificate back.
    let entry = lab.path("boards/board-a.toml");
    let text = std::fs::read_to_string(&entry).unwrap();
    std::fs::write(
        &entry,
        text.replace("status = \"revoked\"", "status = \"active\""),
    )
    .unwrap();
    let (code, body) = lab.curl_as(Some("board-a"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("SECRET"), "{body}");
    // board-b is unaffected; a board enrolled now is served at once.
    assert_eq!(lab.curl_as(Some("board-b"), &srv.url("/boot.ipxe")).0, 200);
    lab.enroll("board-c", &["--secret", "s3_key=SECRET-CCC"]);
    let (code, c) = lab.curl_as(Some("board-c"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 200, "{c}");
    assert!(c.contains("SECRET-CCC"));
    // `set` changes a board's secret, MAC and profile for its next boot.
    lab.ok(&[
        "set",
        "board-b",
        "--secret",
        "s3_key=SECRET-BBB-ROTATED",
        "--mac",
        "52:54:00:00:00:0b",
    ]);
    let (code, b) = lab.curl_as(
        Some("board-b"),
        &srv.url("/boot.ipxe?mac=52:54:00:00:00:0b"),
    );
    assert_eq!(code, 200, "{b}");
    assert!(
        b.contains("SECRET-BBB-ROTATED") && !b.contains("SECRET-BBB-2222"),
        "{b}"
    );
    assert_eq!(
        lab.curl_as(
            Some("board-b"),
            &srv.url("/boot.ipxe?mac=52:54:00:00:00:0c")
        )
        .0,
        403
    );
    let before = lab.snapshot();
    let e = lab.fails(&["set", "board-b", "--unset-secret", "nosuch"]);
    assert!(e.contains("no secret"), "{e}");
    let e = lab.fails(&["set", "board-b", "--profile", "nosuch"]);
    assert!(e.contains("does not exist"), "{e}");
    assert_eq!(before, lab.snapshot());
    let shown = lab.ok(&["show", "board-b", "--json"]);
    assert!(
        !shown.contains("ROTATED") && shown.contains("s3_key"),
        "{shown}"
    );
    // A profile edit is live too.
    std::fs::write(
        lab.path("profiles/default.ipxe"),
        "#!ipxe\necho edited {{ board.name }}\n",
    )
    .unwrap();
    assert!(lab
        .curl_as(Some("board-c"), &srv.url("/boot.ipxe"))
        .1
        .contains("edited board-c"));
    assert!(srv.output().contains("reloaded CRL"), "{}", srv.output());
}

/// inotify tells `serve` when the registry, secrets, CRL or profiles change, so that a boot
/// script costs no `stat` of them while nothing does; every change is still in the very next
/// script. strace counts the `stat`s of each file over 23 boots.
#[test]
fn boot_scripts_look_at_no_registry_file_until_one_changes() {
    let lab = two_boards();
    let (strace, https, trace) =
        serve_traced(&lab, Stdio::null(), "stats", "trace=statx,newfstatat");
    let url = format!("https://127.0.0.1:{https}/boot.ipxe");
    let boot = || {
        let (code, body) = lab.curl_as(Some("board-b"), &url);
        assert_eq!(code, 200, "{body}");
        body
    };
    for _ in 0..10 {
        assert!(boot().contains("s3=SECRET-BBB-2222"));
    }
    lab.ok(&["set", "board-b", "--secret", "s3_key=SECRET-BBB-NEW"]);
    assert!(boot().contains("s3=SECRET-BBB-NEW"));
    std::fs::write(
        lab.path("profiles/default.ipxe"),
        "#!ipxe\necho edited {{ board.name }} {{ secrets.s3_key }}\n",
    )
    .unwrap();
    assert!(boot().contains("edited board-b SECRET-BBB-NEW"));
    for _ in 0..10 {
        assert!(boot().contains("edited board-b"));
    }
    lab.ok(&["revoke", "board-b"]);
    let (code, body) = lab.curl_as(Some("board-b"), &url);
    assert_eq!(code, 403, "{body}");
    let lines = stop_traced(strace, &trace);
    let sha1 = lab.ok(&["show", "board-b", "--json"]);
    let sha1: serde_json::Value = serde_json::from_str(&sha1).unwrap();
    let sha1 = sha1["fingerprint_sha1"].as_str().unwrap().to_string();
    for file in [
        format!("index/sha1/{sha1}"),
        "boards/board-b.toml".to_string(),
        "boards/board-b/secrets.toml".to_string(),
        "ca/crl.pem".to_string(),
        "profiles/default.ipxe".to_string(),
    ] {
        let looked = lines
            .iter()
            .filter(|l| l.contains(&format!("/{file}\"")))
            .count();
        // At start-up (the CRL twice), at the first boot and after each of the three changes,
        // at most; a `stat` per boot would be 23.
        assert!(
            (1..=6).contains(&looked),
            "{file} looked at {looked} times over 23 boots"
        );
    }
}

/// A running `serve` keeps no stale answer when the state directory is put back from a copy,
/// as a restore from backup does it (the old folder moved aside, the copy moved in), or when a
/// symlink naming it is pointed at another one: the kernel confines `serve` to the folders it
/// started with, so it stops and says why (its service manager starts it again), and started
/// again it answers from the new state: a board revoked there is refused.
#[test]
fn a_state_dir_replaced_under_a_running_serve_is_what_it_answers_from() {
    let lab = two_boards();
    let live = lab.tmp.path().join("live");
    std::fs::rename(&lab.dir, &live).unwrap();
    std::os::unix::fs::symlink(&live, &lab.dir).unwrap();
    let mut srv = lab.serve(&[]);
    let url = srv.url("/boot.ipxe");
    for board in ["board-a", "board-b"] {
        let (code, body) = lab.curl_as(Some(board), &url);
        assert_eq!(code, 200, "{board}: {body}");
    }
    let stopped = |srv: &mut crate::util::Server| {
        let st = srv
            .exited()
            .expect("serve went on with folders it cannot read");
        assert!(
            !st.success(),
            "a stop for a restart is a failure to a service manager"
        );
        let log = srv.output();
        assert!(
            log.contains("was replaced while serve ran")
                && log.contains("start `ipxe-ca serve` again"),
            "{log}"
        );
    };
    // A copy of the state in which board-b is revoked and every folder is new.
    let copy = |name: &str, revoke: &str| {
        let to = lab.tmp.path().join(name);
        let (ok, out) = tool("cp", &["-a", s(&live), s(&to)]);
        assert!(ok, "{out}");
        let o = Command::new(bin())
            .arg("--dir")
            .arg(&to)
            .args(["revoke", revoke])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        to
    };
    // Restored in place: the live folder moved aside, the copy moved in.
    let restored = copy("restored", "board-b");
    std::fs::rename(&live, lab.tmp.path().join("live.old")).unwrap();
    std::fs::rename(&restored, &live).unwrap();
    stopped(&mut srv);
    let srv = lab.serve(&[]);
    let url = srv.url("/boot.ipxe");
    let (code, body) = lab.curl_as(Some("board-b"), &url);
    assert_eq!(code, 403, "a board revoked in the restored state: {body}");
    let (code, body) = lab.curl_as(Some("board-a"), &url);
    assert_eq!(code, 200, "{body}");
    // The symlink the server was started with, pointed at another copy (board-a revoked
    // there) the way deployment tools swap one: a new link renamed over the old.
    let other = copy("other", "board-a");
    let link = lab.tmp.path().join("state.new");
    std::os::unix::fs::symlink(&other, &link).unwrap();
    std::fs::rename(&link, &lab.dir).unwrap();
    let mut srv = srv;
    stopped(&mut srv);
    let srv = lab.serve(&[]);
    let (code, body) = lab.curl_as(Some("board-a"), &srv.url("/boot.ipxe"));
    assert_eq!(
        code, 403,
        "a board revoked behind the swapped symlink: {body}"
    );
}

#[test]
fn one_time_urls_answer_once_and_expire() {
    let lab = Lab::init();
    lab.enroll("b1", &["--secret", "aws_secret=SECRET-OTP-42"]);
    std::fs::write(
        lab.path("secrets/creds"),
        "AWS_SECRET={{ secrets.aws_secret }}\nBOARD={{ board.name }}\n",
    )
    .unwrap();
    std::fs::write(
        lab.path("profiles/default.ipxe"),
        "#!ipxe\nkernel http://x/vmlinuz creds={{ one_time_url(\"creds\") }}\n",
    )
    .unwrap();
    let maddr = format!("127.0.0.1:{}", crate::util::free_port());
    let srv = lab.serve(&["--one-time-ttl", "2", "--metrics", &maddr]);
    let url_of = |script: &str| script.split("creds=").nth(1).unwrap().trim().to_string();
    let (code, script) = lab.curl_as(Some("b1"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 200, "{script}");
    assert!(
        !script.contains("SECRET-OTP"),
        "the script holds only the URL: {script}"
    );
    let url = url_of(&script);
    assert!(url.starts_with("https://127.0.0.1:8443/secret/"), "{url}");
    let url = url.replace("127.0.0.1:8443", &format!("127.0.0.1:{}", srv.https));
    // Never over plain HTTP (and a refused attempt does not use it up).
    let plain = url.replace(
        &format!("https://127.0.0.1:{}", srv.https),
        &format!("http://127.0.0.1:{}", srv.http),
    );
    let (_, out) = tool("curl", &["-s", "-w", "\n%{http_code}", &plain]);
    assert!(out.ends_with("403") && !out.contains("SECRET"), "{out}");
    // The booted OS fetches it without a client certificate, once.
    let (code, body) = lab.curl_as(None, &url);
    assert_eq!(
        (code, body.as_str()),
        (200, "AWS_SECRET=SECRET-OTP-42\nBOARD=b1\n")
    );
    let (code, body) = lab.curl_as(None, &url);
    assert_eq!(code, 404);
    assert!(!body.contains("SECRET"));
    // The fetch is in the board's history (the token names its board; a used token names
    // none), the token is not.
    let token = url.rsplit_once("/secret/").unwrap().1.to_string();
    let h = crate::util::wait_for("b1's history", Duration::from_secs(10), || {
        let h: serde_json::Value =
            serde_json::from_str(&lab.ok(&["history", "b1", "--json"])).ok()?;
        let secret: Vec<serde_json::Value> = h
            .as_array()?
            .iter()
            .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/secret/"))
            .cloned()
            .collect();
        (!secret.is_empty()).then_some(secret)
    });
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["status"], 200, "{h:?}");
    assert!(!serde_json::to_string(&h).unwrap().contains(&token));
    // Unused, it expires with its TTL.
    let (_, script) = lab.curl_as(Some("b1"), &srv.url("/boot.ipxe"));
    let url = url_of(&script).replace("127.0.0.1:8443", &format!("127.0.0.1:{}", srv.https));
    // The server's purge (every TTL here) says when it has expired: no sleep guesses it. The
    // deadline itself is checked with a fake clock in one_time's unit tests.
    let metrics = format!("http://{maddr}/metrics");
    crate::util::wait_for("the unused URL to expire", Duration::from_secs(15), || {
        let (_, text) = crate::util::curl_plain(&metrics);
        let expired = text
            .lines()
            .any(|l| l.starts_with("ipxe_ca_one_time_urls_expired_total "))
            .then(|| crate::util::metric(&text, "ipxe_ca_one_time_urls_expired_total "))?;
        (expired >= 1.0).then_some(())
    });
    assert_eq!(lab.curl_as(None, &url).0, 404);
    assert!(!srv.output().contains("SECRET-OTP"), "{}", srv.output());
}

#[test]
fn template_errors_give_500_and_the_server_stays_up() {
    let lab = two_boards();
    std::fs::write(lab.path("profiles/broken.ipxe"), "#!ipxe\n{% if %}\n").unwrap();
    std::fs::write(
        lab.path("profiles/typo.ipxe"),
        "#!ipxe\nkernel {{ varz.kernel }}\n",
    )
    .unwrap();
    lab.enroll("brk", &["--profile", "broken"]);
    lab.enroll("typo", &["--profile", "typo"]);
    let srv = lab.serve(&[]);
    for b in ["brk", "typo"] {
        let (code, body) = lab.curl_as(Some(b), &srv.url("/boot.ipxe"));
        assert_eq!(code, 500, "{b}: {body}");
        assert!(body.starts_with("#!ipxe\necho "), "{body}");
    }
    assert_eq!(lab.curl_as(Some("board-a"), &srv.url("/boot.ipxe")).0, 200);
    assert!(
        srv.output().contains("cannot render profile"),
        "{}",
        srv.output()
    );
}

fn sha256sum(path: &std::path::Path) -> String {
    let (ok, out) = tool("sha256sum", &[s(path)]);
    assert!(ok);
    out.split_whitespace().next().unwrap().to_string()
}

#[test]
fn metrics_say_whether_boot_files_come_from_memory_or_from_storage() {
    let lab = Lab::init();
    let files = lab.path("files");
    std::fs::create_dir_all(&files).unwrap();
    let kernel = files.join("vmlinuz");
    write_random(&kernel, 4 << 20);
    let maddr = format!("127.0.0.1:{}", free_port());
    let srv = lab.serve(&["--metrics", &maddr]);
    let reads = |from: &str| {
        let (_, text) = crate::util::curl_plain(&format!("http://{maddr}/metrics"));
        crate::util::metric(
            &text,
            &format!("ipxe_ca_file_reads_total{{from=\"{from}\"}} "),
        )
    };
    let got = lab.tmp.path().join("got");
    let download = || {
        let (ok, out) = tool(
            "curl",
            &["-sf", "-o", s(&got), &srv.http_url("/files/vmlinuz")],
        );
        assert!(ok, "{out}");
        assert_eq!(sha256sum(&got), sha256sum(&kernel));
    };
    // Out of the page cache: the first frames come from storage.
    // (A RWF_NOWAIT miss starts readahead before it gives up, and a fast VM disk can finish
    // it before the read looks again, which then succeeds: a few tries, one of which must
    // miss. See the files unit test.)
    for _ in 0..5 {
        crate::util::evict(&kernel);
        download();
        if reads("storage") >= 1.0 {
            break;
        }
    }
    let storage = reads("storage");
    assert!(
        storage >= 1.0,
        "five downloads after an eviction, none from storage"
    );
    // That download left it in memory: the next one is read from the page cache, all 16
    // frames of 256 KiB.
    let cached = reads("page_cache");
    download();
    assert_eq!(reads("page_cache") - cached, 16.0);
    assert_eq!(reads("storage"), storage);
    assert_eq!(reads("unchecked"), 0.0, "ext4 says what it has cached");
}

#[test]
fn files_stream_large_files_honour_ranges_and_never_escape() {
    let lab = Lab::init();
    let files = lab.path("files");
    std::fs::create_dir_all(files.join("sub")).unwrap();
    let big = files.join("sub/big.img");
    write_random(&big, 64 << 20);
    std::fs::write(files.join("small.txt"), b"0123456789abcdefghij").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", files.join("passwd-link")).unwrap();
    std::os::unix::fs::symlink("../keys/ca.key", files.join("key-link")).unwrap();
    std::os::unix::fs::symlink("small.txt", files.join("inside-link")).unwrap();
    let srv = lab.serve(&[]);
    let got = lab.tmp.path().join("got.img");
    let (ok, out) = tool(
        "curl",
        &["-sf", "-o", s(&got), &srv.http_url("/files/sub/big.img")],
    );
    assert!(ok, "{out}");
    assert_eq!(sha256sum(&got), sha256sum(&big));
    std::fs::remove_file(&got).unwrap();
    // A range across many frames, from an offset that is no frame boundary (a resumed
    // download).
    let (from, to) = (1_000_003usize, 9_000_001usize);
    let (ok, out) = tool(
        "curl",
        &[
            "-sf",
            "-r",
            &format!("{from}-{to}"),
            "-o",
            s(&got),
            &srv.http_url("/files/sub/big.img"),
        ],
    );
    assert!(ok, "{out}");
    assert!(
        std::fs::read(&got).unwrap() == std::fs::read(&big).unwrap()[from..=to],
        "bytes {from}-{to} of big.img"
    );
    std::fs::remove_file(&got).unwrap();
    // A file sent whole leaves the connection open for the next request (iPXE fetches the
    // kernel and initrd on one connection): the second fetch makes no new connection.
    let url = srv.http_url("/files/small.txt");
    let (ok, out) = tool(
        "curl",
        &[
            "-sf",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{num_connects},",
            &url,
            &url,
        ],
    );
    assert!(ok && out == "1,0,", "{out}");
    let (ok, out) = tool(
        "curl",
        &["-sf", "-r", "3-7", &srv.http_url("/files/small.txt")],
    );
    assert!(ok);
    assert_eq!(out, "34567");
    let (_, out) = tool(
        "curl",
        &["-si", "-r", "10-", &srv.http_url("/files/small.txt")],
    );
    assert!(
        out.contains("206 Partial Content")
            && out.contains("content-range: bytes 10-19/20")
            && out.ends_with("abcdefghij"),
        "{out}"
    );
    let (_, out) = tool(
        "curl",
        &["-si", "-r", "100-", &srv.http_url("/files/small.txt")],
    );
    assert!(out.contains("416") && out.contains("bytes */20"), "{out}");
    let (_, out) = tool("curl", &["-sI", &srv.http_url("/files/sub/big.img")]);
    assert!(
        out.contains("content-length: 67108864") && out.contains("accept-ranges: bytes"),
        "{out}"
    );
    let (ok, out) = tool("curl", &["-sf", &srv.http_url("/files/inside-link")]);
    assert!(ok && out == "0123456789abcdefghij", "{out}");
    for bad in [
        "/files/../keys/ca.key",
        "/files/..%2fca%2fca.key",
        "/files/%2e%2e/keys/ca.key",
        "/files/sub/../../keys/ca.key",
        "/files//etc/passwd",
        "/files/%2fetc%2fpasswd",
        "/files/passwd-link",
        "/files/key-link",
        "/files/sub/%00",
    ] {
        let (_, out) = tool(
            "curl",
            &[
                "-s",
                "--path-as-is",
                "-w",
                "\n%{http_code}",
                &srv.http_url(bad),
            ],
        );
        let (body, code) = out.rsplit_once('\n').unwrap();
        let code: u16 = code.parse().unwrap();
        assert!((400..500).contains(&code), "{bad}: {code}");
        assert!(
            !body.contains("PRIVATE KEY") && !body.contains("root:"),
            "{bad}: {body}"
        );
    }
}

#[test]
fn sigterm_lets_a_running_download_finish() {
    let lab = Lab::init();
    let big = lab.path("files/big.img");
    write_random(&big, 4 << 20);
    let mut srv = lab.serve(&[]);
    let got = lab.tmp.path().join("got.img");
    let mut dl = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "30",
            "--limit-rate",
            "4M",
            "-o",
            s(&got),
            &srv.http_url("/files/big.img"),
        ])
        .spawn()
        .unwrap();
    // SIGTERM once the download is under way (its first bytes are on disk), not after a guess.
    crate::util::wait_for("the download to start", Duration::from_secs(10), || {
        (std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0) > 0).then_some(())
    });
    let status = srv.terminate();
    assert!(status.success(), "{status}");
    assert!(dl.wait().unwrap().success());
    assert_eq!(sha256sum(&got), sha256sum(&big));
    assert!(srv.output().contains("shutting down"));
}

/// Kills a helper process even when the test panics.
#[test]
fn nginx_in_front_gives_the_same_answers_and_untrusted_headers_are_ignored() {
    let lab = two_boards();
    let srv = lab.serve(&["--behind-proxy", "--trusted-proxy", "127.0.0.1"]);
    let port = free_port();
    let ng = start_nginx(&lab, port, srv.http);
    let base = format!("https://127.0.0.1:{port}");
    let (code, a) = lab.curl_as(Some("board-a"), &format!("{base}/boot.ipxe"));
    let (code_b, b) = lab.curl_as(Some("board-b"), &format!("{base}/boot.ipxe"));
    let (code_none, none) = lab.curl_as(None, &format!("{base}/boot.ipxe"));
    // TLS 1.2 with RSA key exchange and AES-CBC, as iPXE before 2024 speaks it.
    let o = Command::new("openssl")
        .args([
            "s_client",
            "-tls1_2",
            "-cipher",
            "AES128-SHA",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "-cert",
            s(&lab.path("boards/board-a/cert.pem")),
            "-key",
            s(&lab.path("keys/boards/board-a.key")),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let legacy = String::from_utf8_lossy(&o.stdout).into_owned();
    // The same headers sent directly from an untrusted address are ignored.
    let fp = lab.enroll("probe", &[])["fingerprint_sha1"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, direct) = tool(
        "curl",
        &[
            "-s",
            "--interface",
            "127.0.0.2",
            "-w",
            "\n%{http_code}",
            "-H",
            "X-SSL-Client-Verify: SUCCESS",
            "-H",
            &format!("X-SSL-Client-Fingerprint: {fp}"),
            &format!("http://127.0.0.1:{}/boot.ipxe", srv.http),
        ],
    );
    drop(ng);
    assert_eq!(code, 200, "{a}");
    assert!(
        a.contains("board board-a") && a.contains("SECRET-AAA-1111"),
        "{a}"
    );
    assert_eq!(code_b, 200);
    assert!(b.contains("SECRET-BBB-2222"), "{b}");
    assert_eq!(code_none, 403);
    assert!(
        none.starts_with("#!ipxe") && !none.contains("SECRET"),
        "{none}"
    );
    assert!(legacy.contains("Cipher is AES128-SHA"), "{legacy}");
    assert!(direct.ends_with("403"), "{direct}");
    assert!(direct.contains("not a --trusted-proxy"), "{direct}");
    let log = srv.output();
    assert!(log.contains("\"board\":\"board-a\""), "{log}");
    assert!(!log.contains("SECRET-"), "{log}");
}

#[test]
fn proxy_headers_from_a_trusted_peer_are_checked_against_the_registry() {
    let lab = two_boards();
    let srv = lab.serve(&["--behind-proxy", "--trusted-proxy", "127.0.0.1"]);
    // What nginx sends with each request (the block `nginx-config` writes).
    let secret = std::fs::read_to_string(lab.path("server/proxy.secret")).unwrap();
    let a: serde_json::Value =
        serde_json::from_str(&lab.ok(&["show", "board-a", "--json"])).unwrap();
    let fp = a["fingerprint_sha1"].as_str().unwrap();
    // nginx prints the serial in upper case.
    let serial = a["serial"].as_str().unwrap().to_uppercase();
    let ask = |verify: &str, serial: &str| {
        let (_, out) = tool(
            "curl",
            &[
                "-s",
                "-w",
                "\n%{http_code}",
                "-H",
                &format!("X-SSL-Client-Verify: {verify}"),
                "-H",
                &format!("X-SSL-Client-Fingerprint: {fp}"),
                "-H",
                &format!("X-SSL-Client-Serial: {serial}"),
                "-H",
                &format!("X-IPXE-CA-Proxy-Secret: {}", secret.trim()),
                &srv.http_url("/boot.ipxe"),
            ],
        );
        out
    };
    let ok = ask("SUCCESS", &serial);
    assert!(
        ok.ends_with("200") && ok.contains("SECRET-AAA-1111"),
        "{ok}"
    );
    let wrong_serial = ask("SUCCESS", "0BADC0DE");
    assert!(
        wrong_serial.ends_with("403") && wrong_serial.contains("serial does not match"),
        "{wrong_serial}"
    );
    let failed = ask("FAILED:certificate revoked", &serial);
    assert!(
        failed.ends_with("403") && failed.contains("could not verify"),
        "{failed}"
    );
    for out in [&wrong_serial, &failed] {
        assert!(!out.contains("SECRET"), "{out}");
    }
    // Boot files at the plain port's root are plain HTTP for anyone, the proxy's address
    // included (boards behind the same NAT fetch `{{ files_url }}/…` from there); under
    // /files/ a trusted proxy's request must name an enrolled board.
    std::fs::write(lab.path("files/probe.txt"), "probe\n").unwrap();
    let get = |path: &str| {
        let (_, out) = tool("curl", &["-s", "-w", "\n%{http_code}", &srv.http_url(path)]);
        out
    };
    assert_eq!(get("/probe.txt"), "probe\n\n200");
    let files = get("/files/probe.txt");
    assert!(
        files.ends_with("403") && !files.contains("probe\n\n"),
        "{files}"
    );
}

#[test]
fn oversized_and_slow_headers_are_cut_off() {
    use std::io::{Read, Write};
    let lab = Lab::init();
    std::fs::write(lab.path("files/f.txt"), b"x").unwrap();
    let srv = lab.serve(&["--timeout", "1"]);
    // A 32 KiB header: refused (431), not buffered without bound.
    let big = format!("X-Big: {}", "a".repeat(32 * 1024));
    let (_, out) = tool(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &big,
            &srv.http_url("/files/f.txt"),
        ],
    );
    assert!(
        out == "431" || out == "000",
        "oversized header answered with {out}"
    );
    // Headers that never finish: the connection is closed after the header timeout.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", srv.http)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /files/f.txt HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let r = c.read_to_end(&mut buf);
    assert!(r.is_ok(), "the server kept a half-sent request open: {r:?}");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

/// `openssl s_client` over TLS 1.2 with only `cipher`, as board `b`, sending one request;
/// optionally saving or reusing the session. Returns everything it printed.
fn s_client(lab: &Lab, port: u16, cipher: &str, b: &str, path: &str, sess: &[&str]) -> String {
    use std::io::Write;
    let mut c = Command::new("timeout")
        .args([
            "10", "openssl", "s_client", "-tls1_2", "-cipher", cipher, "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(lab.path("ca/ca.crt"))
        .arg("-cert")
        .arg(lab.path(&format!("boards/{b}/cert.pem")))
        .arg("-key")
        .arg(lab.path(&format!("keys/boards/{b}.key")))
        .args(sess)
        .arg("-ign_eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// `openssl x509 -text` of a certificate in the state dir.
fn x509_text(lab: &Lab, rel: &str) -> String {
    crate::util::openssl(&["x509", "-in", s(&lab.path(rel)), "-noout", "-text"])
}

fn log_lines(srv: &crate::util::Server) -> Vec<serde_json::Value> {
    srv.output()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn ecdsa_for_clients_that_offer_it_rsa_for_the_rest_and_the_log_says_which() {
    let lab = two_boards();
    for cert in ["server/server.crt", "server/server-ecdsa.crt"] {
        crate::util::verify_strict("sslserver", s(&lab.path("ca/ca.crt")), s(&lab.path(cert)));
    }
    let text = x509_text(&lab, "server/server-ecdsa.crt");
    assert!(
        text.contains("id-ecPublicKey") && text.contains("P-256"),
        "{text}"
    );
    assert!(
        text.contains("IP Address:127.0.0.1"),
        "same SANs as the RSA one: {text}"
    );
    let srv = lab.serve(&[]);
    let rsa = s_client(
        &lab,
        srv.https,
        "ECDHE-RSA-AES128-GCM-SHA256",
        "board-a",
        "/boot.ipxe",
        &[],
    );
    assert!(
        rsa.contains("Cipher is ECDHE-RSA-AES128-GCM-SHA256"),
        "{rsa}"
    );
    assert!(rsa.contains("200 OK") && rsa.contains("#!ipxe"), "{rsa}");
    let ec = s_client(
        &lab,
        srv.https,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "board-a",
        "/boot.ipxe",
        &[],
    );
    assert!(
        ec.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256"),
        "{ec}"
    );
    assert!(ec.contains("Peer signature type: ECDSA"), "{ec}");
    assert!(ec.contains("200 OK"), "{ec}");
    let suites: Vec<String> = log_lines(&srv)
        .iter()
        .filter(|l| l["path"] == "/boot.ipxe")
        .map(|l| l["tls"]["suite"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        suites,
        [
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
        ]
    );
    assert!(log_lines(&srv)
        .iter()
        .all(|l| l["tls"].is_null() || l["tls"]["version"] == "TLSv1_2"));
    // Durations are milliseconds: a script on loopback takes more than nothing and far less
    // than a second.
    for l in log_lines(&srv).iter().filter(|l| l["path"] == "/boot.ipxe") {
        let ms = l["duration_ms"].as_f64().unwrap();
        assert!(ms > 0.0 && ms < 1000.0, "{l}");
    }
    // A client with only the suites old iPXE has (RSA key exchange, CBC) is refused, and the
    // log tells the operator what to do about it.
    let old = s_client(
        &lab,
        srv.https,
        "AES128-SHA256:AES128-SHA",
        "board-a",
        "/",
        &[],
    );
    assert!(!old.contains("200 OK"), "{old}");
    // (The line comes after the alert that ends s_client, and the port check at start-up left
    // a handshake failure of its own: wait for this one.)
    let said = crate::util::wait_for("the handshake failure", Duration::from_secs(10), || {
        let out = srv.output();
        out.contains("no TLS 1.2 ECDHE suite").then_some(out)
    });
    assert!(
        said.contains("no TLS 1.2 ECDHE suite") && said.contains("nginx-config"),
        "{said}"
    );
}

#[test]
fn sessions_resume_and_a_revoked_board_is_refused_on_a_resumed_session() {
    let lab = two_boards();
    let srv = lab.serve(&[]);
    let sess = lab.tmp.path().join("sess.pem");
    let cipher = "ECDHE-ECDSA-AES128-GCM-SHA256";
    let first = s_client(
        &lab,
        srv.https,
        cipher,
        "board-a",
        "/boot.ipxe",
        &["-sess_out", s(&sess)],
    );
    assert!(first.contains("200 OK"), "{first}");
    let again = s_client(
        &lab,
        srv.https,
        cipher,
        "board-a",
        "/boot.ipxe",
        &["-sess_in", s(&sess)],
    );
    assert!(again.contains("Reused, TLSv1.2"), "{again}");
    assert!(again.contains("200 OK"), "{again}");
    // Revocation is checked per request, not per handshake: a resumed session does not help.
    lab.ok(&["revoke", "board-a"]);
    let revoked = s_client(
        &lab,
        srv.https,
        cipher,
        "board-a",
        "/boot.ipxe",
        &["-sess_in", s(&sess)],
    );
    assert!(revoked.contains("Reused, TLSv1.2"), "{revoked}");
    assert!(
        revoked.contains("403") && revoked.contains("is revoked"),
        "{revoked}"
    );
    let resumed: Vec<(bool, u64)> = log_lines(&srv)
        .iter()
        .filter(|l| l["path"] == "/boot.ipxe")
        .map(|l| (l["tls"]["resumed"] == true, l["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(resumed, [(false, 200), (true, 200), (true, 403)]);
}

#[test]
fn tls_sessions_sets_how_many_sessions_are_kept_for_resumption() {
    let lab = two_boards();
    let cipher = "ECDHE-ECDSA-AES128-GCM-SHA256";
    // board-a's session, then board-b's: is board-a's still there to resume?
    let resumes_after_another = |kept: &str| {
        let srv = lab.serve(&["--tls-sessions", kept]);
        let sess = lab.tmp.path().join(format!("sess-{kept}.pem"));
        let hs =
            |b: &str, extra: &[&str]| s_client(&lab, srv.https, cipher, b, "/boot.ipxe", extra);
        assert!(hs("board-a", &["-sess_out", s(&sess)]).contains("200 OK"));
        assert!(hs("board-b", &[]).contains("200 OK"));
        let again = hs("board-a", &["-sess_in", s(&sess)]);
        assert!(again.contains("200 OK"), "{again}");
        again.contains("Reused, TLSv1.2")
    };
    assert!(
        !resumes_after_another("1"),
        "one session kept: board-b's replaced it"
    );
    assert!(resumes_after_another("2"));
}

#[test]
fn server_cert_adds_ecdsa_to_an_old_state_dir_and_keeps_its_names() {
    let lab = two_boards();
    std::fs::remove_file(lab.path("server/server-ecdsa.crt")).unwrap();
    std::fs::remove_file(lab.path("server/server-ecdsa.key")).unwrap();
    let srv = lab.serve(&[]);
    let rsa_only = s_client(
        &lab,
        srv.https,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "board-a",
        "/boot.ipxe",
        &[],
    );
    assert!(!rsa_only.contains("Cipher is ECDHE-ECDSA"), "{rsa_only}");
    assert!(
        srv.output().contains("run `ipxe-ca server-cert`"),
        "{}",
        srv.output()
    );
    drop(srv);
    let out = lab.ok(&["server-cert"]);
    assert!(out.contains("127.0.0.1"), "{out}");
    let text = x509_text(&lab, "server/server-ecdsa.crt");
    assert!(
        text.contains("IP Address:127.0.0.1") && text.contains("DNS:localhost"),
        "{text}"
    );
    let key = lab.path("server/server-ecdsa.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let srv = lab.serve(&[]);
    let ec = s_client(
        &lab,
        srv.https,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "board-a",
        "/boot.ipxe",
        &[],
    );
    assert!(
        ec.contains("Cipher is ECDHE-ECDSA-AES128-GCM-SHA256") && ec.contains("200 OK"),
        "{ec}"
    );
}

/// Names of the threads of a running process, once they are settled: a thread just created
/// carries its creator's name until it sets its own (the access log's writer, started by an
/// event loop at the first line, shows as one for a moment).
fn thread_names(pid: u32) -> Vec<String> {
    let mut last = thread_names_now(pid);
    for _ in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = thread_names_now(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn thread_names_now(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let comm = t.unwrap().path().join("comm");
            std::fs::read_to_string(comm).unwrap().trim().to_string()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn workers_sets_the_event_loop_threads_and_every_count_serves() {
    let lab = two_boards();
    for (n, want) in [("1", 1), ("3", 3)] {
        let srv = lab.serve(&["--workers", n]);
        // The event loops are named apart from the blocking pool's threads.
        let names = thread_names(srv.child.id());
        let loops = names.iter().filter(|t| *t == "ipxe-ca-loop").count();
        assert_eq!(loops, want, "--workers {n}: {names:?}");
        for b in ["board-a", "board-b", "board-a"] {
            let (code, body) = lab.curl_as(Some(b), &srv.url("/boot.ipxe"));
            assert_eq!(code, 200, "--workers {n}: {body}");
        }
        // A boot file is read on the blocking pool: its threads are not named as loops.
        std::fs::write(lab.path("files/w.txt"), "w").unwrap();
        let (code, _) = crate::util::curl_plain(&srv.http_url("/w.txt"));
        assert_eq!(code, 200);
        let names = thread_names(srv.child.id());
        let loops = names.iter().filter(|t| *t == "ipxe-ca-loop").count();
        assert_eq!(loops, want, "--workers {n}, after a file: {names:?}");
        assert!(names.iter().any(|t| t == "tokio-rt-worker"), "{names:?}");
    }
    let out = Command::new(crate::util::bin())
        .args(["--dir", s(&lab.dir), "serve", "--workers", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--workers"), "{err}");
}

/// `config.toml` is live like the registry: boards pointed at another files server by an
/// edit get the new URL in their next script, with no restart; an edit `init` would refuse
/// keeps the URLs in force and the log says why.
#[test]
fn a_config_toml_edit_is_in_the_next_script() {
    let lab = two_boards();
    let srv = lab.serve(&[]);
    let script = || {
        let (code, body) = lab.curl_as(Some("board-b"), &srv.url("/boot.ipxe"));
        assert_eq!(code, 200, "{body}");
        body
    };
    let config = lab.path("etc/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let with_files_url = |url: &str| {
        let mut out: String = text
            .lines()
            .map(|l| match l.starts_with("files_url") {
                true => format!("files_url = \"{url}\""),
                false => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        out.push('\n');
        out
    };
    assert!(!script().contains("mirror.lab"));
    std::fs::write(&config, with_files_url("http://mirror.lab:9090")).unwrap();
    let b = script();
    assert!(
        b.contains("kernel http://mirror.lab:9090/files/vmlinuz"),
        "{b}"
    );
    // A mistyped scheme: the boards keep the URL in force.
    std::fs::write(&config, with_files_url("htp://mirror2.lab")).unwrap();
    let b = script();
    assert!(
        b.contains("kernel http://mirror.lab:9090/files/vmlinuz"),
        "{b}"
    );
    let log = srv.output();
    assert!(
        log.contains("kept the previous settings") && log.contains("htp://mirror2.lab"),
        "{log}"
    );
    // Mended, by a rename as `init` writes it: taken.
    let tmp = lab.path("etc/config.toml.new");
    std::fs::write(&tmp, with_files_url("http://mirror2.lab")).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    let b = script();
    assert!(b.contains("kernel http://mirror2.lab/files/vmlinuz"), "{b}");
    assert!(srv.output().contains("files_url http://mirror2.lab"));
    // A server host the certificates do not name: taken (the operator's to mend) and said,
    // as at start and by `check`.
    let tmp = lab.path("etc/config.toml.new");
    let moved =
        with_files_url("http://mirror2.lab").replace("127.0.0.1:8443", "elsewhere.lab:8443");
    assert!(moved.contains("https://elsewhere.lab:8443"), "{moved}");
    std::fs::write(&tmp, moved).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    assert_eq!(lab.curl_as(Some("board-b"), &srv.url("/boot.ipxe")).0, 200);
    let log = srv.output();
    assert!(
        log.contains("server_url https://elsewhere.lab:8443")
            && log.contains("warning: ")
            && log.contains("boards reach the server as elsewhere.lab"),
        "{log}"
    );
}
