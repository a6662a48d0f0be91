//! Hostile network, hostile input: each test reproduces a finding against the real
//! binary and fails on the code before its fix.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{bin, free_port, s, serve_traced, stop_traced, Lab};

/// The calls that write the access log and TLS records.
const LOG_CALLS: &str = "trace=write,writev,sendto";

/// Send raw bytes as a request; return what came back (empty if the connection died).
fn raw(port: u16, req: &[u8]) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn no_request_path_reaches_a_panic() {
    let lab = Lab::init();
    let srv = lab.serve(&[]);
    // 'é' straddles the sixth byte the log keeps of a one-time token.
    let r = raw(
        srv.http,
        "GET /secret/aaaaa\u{e9}zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 4"), "{r:?}");
    let r = raw(
        srv.http,
        b"GET /secret/aaaaa%C3%A9zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 4"), "{r:?}");
    let out = srv.output();
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn durations_are_bounded_when_parsed() {
    let lab = Lab::init();
    for (flag, value) in [
        ("--one-time-ttl", "18446744073709551615"),
        ("--timeout", "18446744073709551615"),
        ("--one-time-ttl", "0"),
    ] {
        // Accepted, serve would run: `timeout` ends it, and the test fails on its message.
        let o = Command::new("timeout")
            .arg("5")
            .arg(bin())
            .arg("--dir")
            .arg(&lab.dir)
            .args([
                "serve",
                "--https",
                &format!("127.0.0.1:{}", free_port()),
                "--http",
                &format!("127.0.0.1:{}", free_port()),
                flag,
                value,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{flag} {value} accepted");
        assert!(err.contains(flag) && !err.contains("panicked"), "{err}");
    }
}

#[test]
fn board_names_never_collide_with_registry_files_and_revoke_keeps_the_crl_true() {
    let lab = Lab::init();
    lab.enroll("a", &[]);
    let err = lab.fails(&["enroll", "a.toml"]);
    assert!(err.contains(".toml"), "{err}");
    // A registry damaged by hand (or by an older ipxe-ca): revoke must not mark the board and
    // then fail without a CRL that lists it.
    std::fs::create_dir_all(lab.path("boards/junk.toml")).unwrap();
    let before = lab.snapshot();
    let o = lab.run(&["revoke", "a"]);
    if o.status.success() {
        let crl =
            crate::util::openssl(&["crl", "-in", s(&lab.path("ca/crl.pem")), "-noout", "-text"]);
        let serial = lab.ok(&["show", "a", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&serial).unwrap();
        let serial = v["serial"].as_str().unwrap().to_uppercase();
        assert!(crl.contains(&serial), "revoked but not in the CRL:\n{crl}");
    } else {
        assert_eq!(
            before,
            lab.snapshot(),
            "a failed revoke changed the state dir"
        );
    }
}

#[test]
fn a_broken_stdout_never_stops_serving() {
    let lab = Lab::init();
    lab.enroll("p1", &[]);
    let (https, http) = (free_port(), free_port());
    let mut child = Command::new(bin())
        .arg("--dir")
        .arg(&lab.dir)
        .args(["serve", "--https", &format!("127.0.0.1:{https}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Like `serve | tee log` with tee gone: the reading end of stdout is closed.
    drop(child.stdout.take());
    crate::common::wait_port(https, Duration::from_secs(10)).unwrap();
    for _ in 0..3 {
        let (code, body) = lab.curl_as(Some("p1"), &format!("https://127.0.0.1:{https}/boot.ipxe"));
        assert_eq!(code, 200, "{body}");
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.matches("the access log (stdout) is broken").count(),
        1,
        "said once: {err}"
    );
}

/// The threads that wrote requests' access-log lines to stdout with `call`, and those that wrote TLS
/// records (`writev`): the log's writers must be among the servers of requests.
fn log_writers(trace: &[String], call: &str) -> (Vec<String>, Vec<String>) {
    let tid = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    let logged: Vec<String> = trace
        .iter()
        .filter(|l| l.contains(&format!("{call}(1, \"{{\\\"time\\\"")) && l.contains("outcome"))
        .map(|l| tid(l))
        .collect();
    let served: Vec<String> = trace
        .iter()
        .filter(|l| l.contains(" writev("))
        .map(|l| tid(l))
        .collect();
    (logged, served)
}

/// A boot's access-log line costs no hand-off to another thread when stdout cannot block for
/// long: to a file it is written, to a socket (the journal's) it is sent without waiting, by
/// the thread that served the request. A log socket that fills up hands lines to the writer
/// thread instead: boards keep booting, and every line arrives whole and in order once the
/// reader catches up.
#[test]
fn access_log_lines_are_written_by_the_serving_thread_and_a_full_log_socket_never_stops_serving() {
    let lab = Lab::init();
    lab.enroll("p1", &[]);
    let boot = |https: u16| {
        let (code, body) = lab.curl_as(Some("p1"), &format!("https://127.0.0.1:{https}/boot.ipxe"));
        assert_eq!(code, 200, "{body}");
    };

    // A regular file.
    let out = lab.tmp.path().join("access.log");
    let (strace, https, trace) = serve_traced(
        &lab,
        Stdio::from(std::fs::File::create(&out).unwrap()),
        "file",
        LOG_CALLS,
    );
    for _ in 0..3 {
        boot(https);
    }
    let (logged, served) = log_writers(&stop_traced(strace, &trace), "write");
    assert_eq!(
        logged.len(),
        3,
        "three lines written to the file: {logged:?}"
    );
    assert!(
        logged.iter().all(|t| served.contains(t)),
        "access-log lines written by threads {logged:?}, requests served by {served:?}"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.matches("\"outcome\":\"served\"").count(), 3, "{text}");

    // /dev/null: the serving thread too. Any other character device (a terminal, which can
    // block; /dev/zero stands for it here) goes through the writer thread.
    for (dev, direct) in [("/dev/null", true), ("/dev/zero", false)] {
        let out = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
        let (strace, https, trace) = serve_traced(&lab, Stdio::from(out), &dev[5..], LOG_CALLS);
        boot(https);
        boot(https);
        let lines = stop_traced(strace, &trace);
        let (logged, served) = log_writers(&lines, "write");
        assert_eq!(logged.len(), 2, "{dev}: {logged:?}");
        assert!(
            logged.iter().all(|t| served.contains(t) == direct),
            "{dev}: lines written by {logged:?}, requests served by {served:?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("write(1, \"\", 0)")),
            "{dev}: empty writes"
        );
    }

    // A socket with a small buffer, as the journal's stream.
    let (theirs, mut ours) = std::os::unix::net::UnixStream::pair().unwrap();
    rustix::net::sockopt::set_socket_send_buffer_size(&theirs, 4096).unwrap();
    let (strace, https, trace) = serve_traced(
        &lab,
        Stdio::from(std::os::fd::OwnedFd::from(theirs)),
        "socket",
        LOG_CALLS,
    );
    for _ in 0..3 {
        boot(https);
    }
    // Nobody reads the socket now: it fills up, and boards still boot. Long lines (a long
    // User-Agent) do not fit whole: part of one is sent, the writer thread sends the rest.
    let agent = "iPXE/".to_string() + &"x".repeat(6000);
    for _ in 0..40 {
        let url = format!("https://127.0.0.1:{https}/boot.ipxe");
        let (code, body) = lab.curl_as_with(Some("p1"), &url, &["-A", &agent]);
        assert_eq!(code, 200, "{body}");
    }
    let reader = std::thread::spawn(move || {
        ours.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        let served = |t: &[u8]| String::from_utf8_lossy(t).matches("\"outcome\"").count();
        while served(&text) < 43 || text.last() != Some(&b'\n') {
            match ours.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8(text).unwrap()
    });
    let text = reader.join().unwrap();
    let lines = stop_traced(strace, &trace);
    let (logged, served) = log_writers(&lines, "sendto");
    assert!(
        logged.len() >= 3 && logged.iter().all(|t| served.contains(t)),
        "access-log lines sent by threads {logged:?}, requests served by {served:?}"
    );
    let (queued, _) = log_writers(&lines, "write");
    assert!(
        !queued.is_empty() && queued.iter().all(|t| !served.contains(t)),
        "the full socket's lines were not handed to the writer thread: {queued:?}"
    );
    // The port check before the boots left a line of its own (a handshake that never was).
    let times: Vec<String> = text
        .lines()
        .filter(|l| !l.contains("\"event\":\"tls_handshake_failed\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| {
                let start: String = l.chars().take(200).collect();
                panic!("torn line ({} bytes) {start:?}…: {e}", l.len())
            });
            assert_eq!(v["outcome"], "served", "{l}");
            v["time"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(times.len(), 43, "{text}");
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {times:?}"
    );
}

/// GET `path` on the plain port; the whole response.
fn get(port: u16, path: &str) -> String {
    raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn no_race_or_link_serves_key_material() {
    let lab = Lab::init();
    std::fs::write(lab.path("files/x"), b"just a kernel\n").unwrap();
    let srv = lab.serve(&[]);
    // Someone who can write the files dir swaps x between a file and a symlink to the CA key
    // while boards fetch it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, files) = (stop.clone(), lab.path("files"));
        std::thread::spawn(move || {
            let (x, tmp_file, tmp_link) = (files.join("x"), files.join("x.f"), files.join("x.l"));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::write(&tmp_file, b"just a kernel\n");
                let _ = std::fs::rename(&tmp_file, &x);
                let _ = std::os::unix::fs::symlink("../keys/ca.key", &tmp_link);
                let _ = std::fs::rename(&tmp_link, &x);
            }
        })
    };
    let mut leaks = 0;
    let mut served = 0;
    for _ in 0..3000 {
        let r = get(srv.http, "/x");
        if r.contains("PRIVATE KEY") {
            leaks += 1;
        }
        if r.contains("just a kernel") {
            served += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(
        leaks, 0,
        "the CA key was served {leaks} times ({served} good answers)"
    );
    assert!(served > 0, "the plain file was never served");
    // A hard link to a key is key material whatever its name; so is any PEM private key.
    std::fs::hard_link(lab.path("keys/ca.key"), lab.path("files/harmless.img")).unwrap();
    let r = get(srv.http, "/harmless.img");
    assert!(
        r.starts_with("HTTP/1.1 403") && !r.contains("PRIVATE KEY"),
        "{r}"
    );
    std::fs::copy(lab.path("server/server.key"), lab.path("files/copy.bin")).unwrap();
    let r = get(srv.http, "/copy.bin");
    assert!(
        r.starts_with("HTTP/1.1 403") && !r.contains("PRIVATE KEY"),
        "{r}"
    );
    // Secrets are no PEM: only the link itself gives them away.
    lab.enroll("linked", &["--secret", "s3=TOPSECRET-LINKED"]);
    std::fs::hard_link(
        lab.path("boards/linked/secrets.toml"),
        lab.path("files/notes.txt"),
    )
    .unwrap();
    let r = get(srv.http, "/notes.txt");
    assert!(
        r.starts_with("HTTP/1.1 403") && !r.contains("TOPSECRET"),
        "{r}"
    );
    // Nor a copy of it: `secrets.toml` is never served by that name, wherever it lies.
    std::fs::create_dir_all(lab.path("files/sub")).unwrap();
    std::fs::copy(
        lab.path("boards/linked/secrets.toml"),
        lab.path("files/sub/secrets.toml"),
    )
    .unwrap();
    let r = get(srv.http, "/sub/secrets.toml");
    assert!(
        r.starts_with("HTTP/1.1 403") && !r.contains("TOPSECRET"),
        "{r}"
    );
    // Two names for one boot file (`vmlinuz` linked to `vmlinuz-6.1`) are still served.
    std::fs::write(lab.path("files/vmlinuz-6.1"), "KERNEL-BYTES").unwrap();
    std::fs::hard_link(lab.path("files/vmlinuz-6.1"), lab.path("files/vmlinuz")).unwrap();
    let r = get(srv.http, "/vmlinuz");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("KERNEL-BYTES"),
        "{r}"
    );
}

#[test]
fn a_files_dir_that_holds_keys_or_images_is_refused() {
    let lab = Lab::init();
    lab.enroll("k1", &[]);
    // The state dir itself, or a board folder: keys inside.
    for files in [lab.dir.clone(), lab.path("boards")] {
        // Accepted, serve would run: `timeout` ends it, and the test fails on its message.
        let o = Command::new("timeout")
            .arg("5")
            .arg(bin())
            .arg("--dir")
            .arg(&lab.dir)
            .args([
                "serve",
                "--https",
                &format!("127.0.0.1:{}", free_port()),
                "--http",
                &format!("127.0.0.1:{}", free_port()),
                "--files",
                s(&files),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "serve accepted --files {}",
            files.display()
        );
        assert!(err.contains("key material"), "{err}");
    }
    // Build output holds every board's key: never inside the files dir, never served from.
    let err = lab.fails(&[
        "build",
        "k1",
        "--prebuilt",
        s(&lab.tmp.path().join("nowhere")),
        "--out",
        s(&lab.path("files/images")),
    ]);
    assert!(err.contains("files directory"), "{err}");
    // Images copied (or built) into a subfolder of a custom files root: still never served.
    let custom = lab.tmp.path().join("srv");
    std::fs::create_dir_all(custom.join("images/k1")).unwrap();
    std::fs::write(custom.join("images/.ipxe-ca-images"), b"").unwrap();
    std::fs::write(custom.join("images/k1/k1.img"), b"autoexec with a key").unwrap();
    std::fs::write(custom.join("vmlinuz"), b"kernel").unwrap();
    let srv = lab.serve(&["--files", s(&custom)]);
    assert!(get(srv.http, "/vmlinuz").starts_with("HTTP/1.1 200"));
    let r = get(srv.http, "/images/k1/k1.img");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
}

/// Boot files rolled out by pointing a symlink at a new folder (as deployment tools do, and as
/// the prototype's nginx followed) are served at once; pointed at key material, the folder is
/// refused as it is at start.
#[test]
fn a_files_symlink_pointed_elsewhere_serves_the_new_folder_and_never_key_material() {
    let lab = Lab::init();
    lab.enroll("k1", &[]);
    let (one, two) = (lab.tmp.path().join("r1"), lab.tmp.path().join("r2"));
    for (d, kernel) in [(&one, "KERNEL-ONE"), (&two, "KERNEL-TWO")] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("vmlinuz"), kernel).unwrap();
    }
    let current = lab.tmp.path().join("current");
    std::os::unix::fs::symlink(&one, &current).unwrap();
    let srv = lab.serve(&["--files", s(&current)]);
    // A new link renamed over the old one.
    let point_at = |to: &std::path::Path| {
        let link = lab.tmp.path().join("current.new");
        std::os::unix::fs::symlink(to, &link).unwrap();
        std::fs::rename(&link, &current).unwrap();
    };
    let r = get(srv.http, "/vmlinuz");
    assert!(r.ends_with("KERNEL-ONE"), "{r}");
    point_at(&two);
    let r = get(srv.http, "/vmlinuz");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("KERNEL-TWO"),
        "{r}"
    );
    // A board's folder: its certificate is no key, but the folder holds one.
    point_at(&lab.path("boards/k1"));
    for file in ["/cert.pem", "/key.pem"] {
        let r = get(srv.http, file);
        assert!(r.starts_with("HTTP/1.1 403"), "{file}: {r}");
    }
    let log = srv.output();
    assert!(
        log.contains("holds key material: no boot file is served from it"),
        "{log}"
    );
    point_at(&two);
    let r = get(srv.http, "/vmlinuz");
    assert!(r.ends_with("KERNEL-TWO"), "{r}");
    // Build output copied into a subfolder stays refused when the folder itself is moved and
    // the link follows it (the same folder: not checked again, looked at as opened).
    std::fs::create_dir_all(two.join("images/k1")).unwrap();
    std::fs::write(two.join("images/.ipxe-ca-images"), b"").unwrap();
    std::fs::write(two.join("images/k1/k1.img"), b"autoexec with a key").unwrap();
    let r = get(srv.http, "/images/k1/k1.img");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let moved = lab.tmp.path().join("r2.moved");
    std::fs::rename(&two, &moved).unwrap();
    point_at(&moved);
    let r = get(srv.http, "/images/k1/k1.img");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
}

#[test]
fn a_local_process_cannot_impersonate_the_proxy() {
    let lab = Lab::init();
    lab.enroll("px", &["--var", "cmdline=s3_key=SECRET-PX-42"]);
    // nginx-config first: it holds the shared secret nginx sends on every request.
    let block = lab.ok(&["nginx-config", "--upstream", "127.0.0.1:1"]);
    let srv = lab.serve(&["--behind-proxy", "--trusted-proxy", "127.0.0.1"]);
    let v: serde_json::Value = serde_json::from_str(&lab.ok(&["show", "px", "--json"])).unwrap();
    let fp = v["fingerprint_sha1"].as_str().unwrap().to_string();
    let serial = v["serial"].as_str().unwrap().to_uppercase();
    let forged = |extra: &str| {
        let req = format!(
            "GET /boot.ipxe HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-SSL-Client-Verify: SUCCESS\r\nX-SSL-Client-Fingerprint: {fp}\r\nX-SSL-Client-Serial: {serial}\r\n{extra}\r\n"
        );
        raw(srv.http, req.as_bytes())
    };
    // Any local user (the certificate's fingerprint is not secret) without nginx's secret.
    let r = forged("");
    assert!(
        r.starts_with("HTTP/1.1 403") && !r.contains("SECRET-PX-42"),
        "{r}"
    );
    assert!(r.contains("no proxy secret"), "{r}");
    let r = forged("X-IPXE-CA-Proxy-Secret: guessed\r\n");
    assert!(
        r.starts_with("HTTP/1.1 403") && !r.contains("SECRET-PX-42"),
        "{r}"
    );
    assert!(r.contains("wrong proxy secret"), "{r}");
    // With the secret of the generated config, as nginx sends it: the board's script.
    let secret = block
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("proxy_set_header X-IPXE-CA-Proxy-Secret ")
        })
        .expect("nginx-config sends a proxy secret")
        .trim_end_matches(';')
        .trim_matches('"')
        .to_string();
    // Wrong secrets of the right length: one byte off, and two bytes off by the same bit (a
    // comparison that XORs the differences together would take that one).
    let flip = |s: &str, at: &[usize]| {
        let mut b = s.as_bytes().to_vec();
        for &i in at {
            b[i] ^= 0x01;
        }
        String::from_utf8(b).unwrap()
    };
    for wrong in [flip(&secret, &[0]), flip(&secret, &[1, 2])] {
        assert_eq!(wrong.len(), secret.len());
        let r = forged(&format!("X-IPXE-CA-Proxy-Secret: {wrong}\r\n"));
        assert!(
            r.starts_with("HTTP/1.1 403") && !r.contains("SECRET-PX-42"),
            "{r}"
        );
    }
    let good = format!("X-IPXE-CA-Proxy-Secret: {secret}\r\n");
    let r = forged(&good);
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("SECRET-PX-42"),
        "{r}"
    );
    // A repeated client-certificate header is refused, whichever copy a parser would take.
    let r = forged(&format!(
        "{good}X-SSL-Client-Fingerprint: 0000000000000000000000000000000000000000\r\n"
    ));
    assert!(
        r.starts_with("HTTP/1.1 4") && !r.contains("SECRET-PX-42"),
        "{r}"
    );
    assert!(
        !srv.output().contains(&secret),
        "the proxy secret reached the log"
    );
}

#[test]
fn one_time_urls_do_not_pile_up() {
    let lab = Lab::init();
    std::fs::write(
        lab.path("profiles/ot.ipxe"),
        "#!ipxe\nchain {{ one_time_url(\"creds\") }}\n",
    )
    .unwrap();
    std::fs::write(
        lab.path("secrets/creds"),
        "#!ipxe\necho creds for {{ board.name }}\n",
    )
    .unwrap();
    lab.enroll("ot", &["--profile", "ot"]);
    let srv = lab.serve(&[]);
    let token = |body: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix("chain "))
            .unwrap_or_else(|| panic!("{body}"))
            .rsplit_once("/secret/")
            .unwrap()
            .1
            .to_string()
    };
    // One certificate asking again and again holds one outstanding URL, not thousands.
    let (_, first) = lab.curl_as(Some("ot"), &srv.url("/boot.ipxe"));
    let (_, second) = lab.curl_as(Some("ot"), &srv.url("/boot.ipxe"));
    let (old, new) = (token(&first), token(&second));
    let (code, _) = lab.curl_as(None, &srv.url(&format!("/secret/{old}")));
    assert_eq!(code, 404, "a replaced one-time URL still answered");
    let (code, body) = lab.curl_as(None, &srv.url(&format!("/secret/{new}")));
    assert_eq!(code, 200);
    assert!(body.contains("creds for ot"), "{body}");
}

#[test]
fn secrets_never_need_the_command_line_and_errors_never_echo_them() {
    let lab = Lab::init();
    std::fs::write(
        lab.path("profiles/sec.ipxe"),
        "#!ipxe\necho {{ secrets.a }} {{ secrets.b }} {{ secrets.c }}\n",
    )
    .unwrap();
    let file = lab.tmp.path().join("a.secret");
    std::fs::write(&file, "FROM-FILE-111\n").unwrap();
    let mut child = lab
        .cmd(&[
            "enroll",
            "sx",
            "--profile",
            "sec",
            "--secret-file",
            &format!("a={}", s(&file)),
            "--secrets-from",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# comment\nb=FROM-STDIN-222\n\nc=x=y\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("FROM-"), "a secret was printed: {out}");
    let srv = lab.serve(&[]);
    let (code, body) = lab.curl_as(Some("sx"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 200);
    assert!(
        body.contains("echo FROM-FILE-111 FROM-STDIN-222 x=y"),
        "{body}"
    );
    // A malformed secret line is refused without repeating it.
    let bad = lab.tmp.path().join("bad.secrets");
    std::fs::write(&bad, "good=1\ns3_key:LEAKED-IN-ERROR-333\n").unwrap();
    let err = lab.fails(&["set", "sx", "--secrets-from", s(&bad)]);
    assert!(err.contains("line 2") && !err.contains("LEAKED"), "{err}");
    let err = lab.fails(&["set", "sx", "--secret", "s3_key:LEAKED-ON-CLI-444"]);
    assert!(!err.contains("LEAKED"), "{err}");
}

/// A TCP connection to 127.0.0.1:`port` from the local address `from` (another "host").
fn connect_from(from: &str, port: u16) -> Option<TcpStream> {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).ok()?;
    let local: std::net::SocketAddr = format!("{from}:0").parse().ok()?;
    bind(&fd, &local).ok()?;
    let remote: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    connect(&fd, &remote).ok()?;
    Some(TcpStream::from(fd))
}

#[test]
fn stalled_readers_and_one_greedy_address_do_not_lock_boards_out() {
    let lab = Lab::init();
    lab.enroll("ok", &[]);
    crate::util::write_random(&lab.path("files/big.img"), 64 << 20);
    std::fs::write(lab.path("files/small.txt"), b"small").unwrap();
    let srv = lab.serve(&[
        "--max-connections",
        "24",
        "--max-per-ip",
        "8",
        "--timeout",
        "2",
    ]);
    // 127.0.0.2 asks for a large file on many connections and never reads the answer.
    let mut held = Vec::new();
    for _ in 0..20 {
        if let Some(mut c) = connect_from("127.0.0.2", srv.http) {
            let _ = c.write_all(b"GET /big.img HTTP/1.1\r\nHost: x\r\n\r\n");
            held.push(c);
        }
    }
    // An enrolled board still gets its script, from another address.
    let (code, body) = lab.curl_as(Some("ok"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 200, "{body}");
    // The stalled downloads are cut off after --timeout without progress, so the greedy
    // address gets answers again (while they held its slots, it got none).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let answered = loop {
        let r = connect_from("127.0.0.2", srv.http).map(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = Vec::new();
            let _ = c.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        if r.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    drop(held);
    assert!(
        answered,
        "stalled downloads still hold every slot of 127.0.0.2"
    );
}

#[test]
fn the_crl_never_goes_backwards() {
    // Each CRL our CA writes has the next number (openssl reads it): 1 at init, then 2, 3.
    let seq = Lab::init();
    let number = |lab: &Lab| {
        let out = crate::util::openssl(&[
            "crl",
            "-in",
            s(&lab.path("ca/crl.pem")),
            "-noout",
            "-crlnumber",
        ]);
        let hex = out
            .trim()
            .rsplit('=')
            .next()
            .unwrap()
            .trim_start_matches("0x");
        u64::from_str_radix(hex, 16).unwrap()
    };
    assert_eq!(number(&seq), 1);
    for (i, b) in ["n1", "n2"].iter().enumerate() {
        seq.enroll(b, &[]);
        seq.ok(&["revoke", b]);
        assert_eq!(number(&seq), 2 + i as u64, "after revoking {b}");
    }
    let lab = Lab::init();
    lab.enroll("r1", &[]);
    let old_crl = std::fs::read(lab.path("ca/crl.pem")).unwrap();
    let active_entry = std::fs::read(lab.path("boards/r1.toml")).unwrap();
    let srv = lab.serve(&[]);
    lab.ok(&["revoke", "r1"]);
    // A registry restored from a backup says active; the CRL still says revoked.
    std::fs::write(lab.path("boards/r1.toml"), &active_entry).unwrap();
    let url = srv.url("/boot.ipxe");
    let (code, _) = lab.curl_as(Some("r1"), &url);
    assert_eq!(code, 403, "the CRL must refuse r1");
    let crl = lab.path("ca/crl.pem");
    // An older, validly signed CRL (lower crlNumber) put back: refused, r1 stays revoked.
    std::fs::write(&crl, &old_crl).unwrap();
    let (code, _) = lab.curl_as(Some("r1"), &url);
    assert_eq!(code, 403, "an older CRL un-revoked r1");
    // A CRL of a look-alike CA (our CA's very names, another key) with a far higher number
    // that lists nothing: its signature fails, so it is refused and r1 stays revoked.
    let ours = std::fs::read_to_string(lab.path("ca/ca.crt")).unwrap();
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ours, key).unwrap();
    let foreign = rcgen::CertificateRevocationListParams {
        this_update: time::OffsetDateTime::now_utc(),
        next_update: time::OffsetDateTime::now_utc() + time::Duration::days(30),
        crl_number: rcgen::SerialNumber::from(1_000_000u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    std::fs::write(&crl, foreign.pem().unwrap()).unwrap();
    for _ in 0..2 {
        let (code, _) = lab.curl_as(Some("r1"), &url);
        assert_eq!(code, 403, "a look-alike CA's CRL un-revoked r1");
    }
    // A deleted CRL is not "nothing revoked".
    std::fs::remove_file(&crl).unwrap();
    let (code, _) = lab.curl_as(Some("r1"), &url);
    assert_eq!(code, 403, "a deleted CRL un-revoked r1");
    // A broken CRL is reported once, not re-parsed and logged on every request.
    std::fs::write(
        &crl,
        b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n",
    )
    .unwrap();
    for _ in 0..3 {
        let (code, _) = lab.curl_as(Some("r1"), &url);
        assert_eq!(code, 403);
    }
    let out = srv.output();
    assert_eq!(
        out.matches("cannot read").count() + out.matches("cannot parse").count(),
        1,
        "{out}"
    );
}

#[test]
fn crash_leftovers_are_never_inherited_and_check_repairs_them() {
    let lab = Lab::init();
    std::fs::write(
        lab.path("profiles/s.ipxe"),
        "#!ipxe\necho secret=[{{ secrets.s3_key | default(\"none\") }}]\n",
    )
    .unwrap();
    // A kill before the board file (the commit point) leaves the board's folder and index.
    lab.enroll(
        "k1",
        &["--profile", "s", "--secret", "s3_key=OLD-OWNER-SECRET"],
    );
    std::fs::remove_file(lab.path("boards/k1.toml")).unwrap();
    let k2 = lab.enroll("k2", &[]);
    let k2_cert = lab.tmp.path().join("k2.pem");
    std::fs::copy(lab.path("boards/k2/cert.pem"), &k2_cert).unwrap();
    std::fs::remove_file(lab.path("boards/k2.toml")).unwrap();
    std::fs::remove_dir_all(lab.path("boards/k2")).unwrap();
    // check sees all of it, and changes nothing without --repair.
    let before = lab.snapshot();
    let o = lab.run(&["check", "--json"]);
    assert!(!o.status.success(), "check found nothing");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"orphan-folder"), "{report}");
    assert!(kinds.contains(&"dangling-index"), "{report}");
    assert_eq!(before, lab.snapshot());
    // Re-enrolling the name starts clean: the old owner's secret is not inherited.
    lab.enroll("k1", &["--profile", "s"]);
    let srv = lab.serve(&[]);
    let (code, body) = lab.curl_as(Some("k1"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 200);
    assert!(body.contains("secret=[none]"), "{body}");
    // The dangling index of k2 does not block adopting its certificate.
    lab.ok(&["register", "k2-again", "--cert", s(&k2_cert)]);
    let _ = k2;
    // --repair leaves a consistent registry.
    std::fs::create_dir_all(lab.path("boards/ghost")).unwrap();
    std::fs::write(
        lab.path("index/sha1/0000000000000000000000000000000000000000"),
        "ghost",
    )
    .unwrap();
    let o = lab.run(&["check", "--repair"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    lab.ok(&["check"]);
    assert!(!lab.path("boards/ghost").exists());
}

#[test]
fn tls_scan_finds_no_weak_protocol_cipher_compression_or_renegotiation() {
    let testssl = ["/usr/bin/testssl", "/usr/bin/testssl.sh"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("testssl.sh is needed: apt-get install testssl.sh (scripts/test.sh does)");
    let lab = Lab::init();
    let srv = lab.serve(&[]);
    let json = lab.tmp.path().join("testssl.json");
    let o = Command::new("timeout")
        .args([
            "240",
            testssl,
            "--quiet",
            "--warnings",
            "off",
            "--color",
            "0",
        ])
        .arg("--add-ca")
        .arg(lab.path("ca/ca.crt"))
        .arg("--jsonfile")
        .arg(&json)
        .args(["-p", "-s", "-R", "-C", "-S"])
        .arg(format!("127.0.0.1:{}", srv.https))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // testssl's exit status counts findings; the JSON is what the assertions read.
    assert!(json.exists(), "{}", String::from_utf8_lossy(&o.stdout));
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let find = |id: &str| -> Vec<String> {
        findings
            .iter()
            .filter(|f| {
                // Per-certificate findings are named "ID <cert#N>".
                f["id"].as_str().is_some_and(|x| {
                    x == id || x.strip_prefix(id).is_some_and(|r| r.starts_with(" <cert#"))
                })
            })
            .map(|f| f["finding"].as_str().unwrap_or("").to_string())
            .collect()
    };
    for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        assert_eq!(find(id), ["not offered"], "{id}");
    }
    assert_eq!(find("TLS1_2"), ["offered"]);
    for id in [
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
        "cipherlist_3DES_IDEA",
        "cipherlist_AVERAGE",
    ] {
        assert_eq!(find(id), ["not offered"], "{id} (CBC and weaker suites)");
    }
    assert_eq!(find("cipherlist_STRONG"), ["offered"]);
    assert_eq!(find("CRIME_TLS"), ["not vulnerable"], "TLS compression");
    assert_eq!(find("secure_client_renego"), ["not vulnerable"]);
    // Both server certificates (RSA and ECDSA), chained to our CA.
    assert_eq!(
        find("certs_countServer").first().map(String::as_str),
        Some("2")
    );
    let chain = find("cert_chain_of_trust");
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert!(chain.iter().all(|c| c.starts_with("passed")), "{chain:?}");
    // Nothing worse than MEDIUM, except two deliberate choices: no CRL/OCSP URLs (iPXE
    // insists on OCSP when a certificate names one; revocation is checked by the server), and
    // a validity period that starts in 1970 (boards without a clock battery wake years behind;
    // see ca::BOARDS_CLOCK_FLOOR). The end is what limits a key's use: it stays within 825
    // days of issue, checked below.
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f["severity"].as_str(), Some("HIGH" | "CRITICAL" | "MEDIUM")))
        .filter(|f| {
            let id = f["id"].as_str().unwrap_or("");
            !id.starts_with("cert_revocation") && !id.starts_with("cert_validityPeriod")
        })
        .map(|f| format!("{} {} {}", f["id"], f["severity"], f["finding"]))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    for cert in ["server/server.crt", "server/server-ecdsa.crt"] {
        let (ok, out) = crate::util::tool(
            "openssl",
            &[
                "x509",
                "-in",
                s(&lab.path(cert)),
                "-noout",
                "-checkend",
                &(825 * 86400).to_string(),
            ],
        );
        assert!(
            !ok && out.contains("will expire"),
            "{cert} lasts beyond 825 days: {out}"
        );
    }
}

/// Peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn soak_every_enrolled_board_boots_through_a_hostile_mix() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let lab = Lab::init();
    for b in ["s1", "s2", "s3"] {
        lab.enroll(b, &[]);
    }
    crate::util::write_random(&lab.path("files/big.img"), 32 << 20);
    // The access log and messages go to one pipe that nobody reads (a stalled log consumer).
    let (mut log_reader, log_writer) = std::io::pipe().unwrap();
    let srv = lab.serve_to(
        free_port(),
        free_port(),
        &["--timeout", "2", "--max-per-ip", "16"],
        log_writer.try_clone().unwrap().into(),
        log_writer.into(),
        lab.tmp.path().join("no-log"),
        lab.tmp.path().join("no-err"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let noise = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    // Idle connections from 64 addresses, 16 each, opened again as the server closes them.
    for port in [srv.https, srv.http] {
        let (stop, noise) = (stop.clone(), noise.clone());
        threads.push(std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                for a in 0..64u8 {
                    if let Some(c) = connect_from(&format!("127.0.4.{a}"), port) {
                        held.push_back(c);
                        noise.fetch_add(1, Ordering::Relaxed);
                    }
                    if held.len() > 64 * 16 {
                        held.pop_front();
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }
    // Garbage bytes at both ports, from 127.0.0.2.
    for port in [srv.https, srv.http] {
        let (stop, noise) = (stop.clone(), noise.clone());
        threads.push(std::thread::spawn(move || {
            let mut x: u64 = 0x2545f4914f6cdd1d ^ port as u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(mut c) = connect_from("127.0.0.2", port) {
                    let junk: Vec<u8> = (0..512)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x as u8
                        })
                        .collect();
                    let _ = c.write_all(&junk);
                    noise.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Stalled downloads and certificate-less TLS clients, from 127.0.0.3.
    {
        let (stop, noise, port) = (stop.clone(), noise.clone(), srv.http);
        threads.push(std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(mut c) = connect_from("127.0.0.3", port) {
                    let _ = c.write_all(b"GET /big.img HTTP/1.1\r\nHost: x\r\n\r\n");
                    held.push(c);
                    noise.fetch_add(1, Ordering::Relaxed);
                }
                if held.len() > 64 {
                    held.remove(0);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    {
        let (stop, noise, url) = (stop.clone(), noise.clone(), srv.url("/boot.ipxe"));
        let ca = lab.path("ca/ca.crt");
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "--max-time",
                        "5",
                        "--interface",
                        "127.0.0.3",
                        "--cacert",
                    ])
                    .arg(&ca)
                    .arg(&url)
                    .status();
                noise.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Meanwhile the boards boot, again and again.
    let start = std::time::Instant::now();
    let mut boots = 0;
    while start.elapsed() < Duration::from_secs(15) {
        for b in ["s1", "s2", "s3"] {
            let (code, body) = lab.curl_as(Some(b), &srv.url("/boot.ipxe"));
            assert_eq!(code, 200, "board {b} was refused during the soak: {body}");
            boots += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let rss_mb = vm_hwm_kib(srv.child.id()) / 1024;
    eprintln!(
        "soak: {boots} board boots, {} hostile connections, server peak RSS {rss_mb} MB",
        noise.load(Ordering::Relaxed)
    );
    assert!(
        noise.load(Ordering::Relaxed) > 100,
        "the hostile mix did not run"
    );
    assert!(rss_mb < 200, "server memory grew to {rss_mb} MB");
    // What reached the pipe before it filled: no panic.
    rustix::io::ioctl_fionbio(&log_reader, true).unwrap();
    let mut out = Vec::new();
    let _ = std::io::Read::read_to_end(&mut log_reader, &mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(!out.contains("panicked"), "{out}");
}

/// Clients without a certificate only ever get a 403 script, from a quarter of the connection
/// slots: with `--max-connections 8`, two of them are answered at once, a third is closed
/// while they hold on, a board boots all the while, and a slot given back serves the next.
#[test]
fn clients_without_a_certificate_get_a_quarter_of_the_slots() {
    use std::io::BufRead;
    let lab = Lab::init();
    lab.enroll("q1", &[]);
    let mport = free_port();
    let srv = lab.serve(&[
        "--max-connections",
        "8",
        "--timeout",
        "60",
        "--metrics",
        &format!("127.0.0.1:{mport}"),
    ]);
    crate::common::wait_port(mport, Duration::from_secs(10)).unwrap();
    // A TLS connection without a certificate that asks once and stays open (keep-alive):
    // the status line it got, and the process holding it.
    let hold = || {
        let mut c = Command::new("timeout")
            .args(["60", "openssl", "s_client", "-connect"])
            .arg(format!("127.0.0.1:{}", srv.https))
            .arg("-CAfile")
            .arg(lab.path("ca/ca.crt"))
            .args(["-ign_eof", "-quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        c.stdin
            .as_mut()
            .unwrap()
            .write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        (line, c, out)
    };
    let (a, mut a_proc, _a_out) = hold();
    let (b, mut b_proc, _b_out) = hold();
    assert!(a.starts_with("HTTP/1.1 403"), "first: {a:?}");
    assert!(
        b.starts_with("HTTP/1.1 403"),
        "second, beside the first: {b:?}"
    );
    // Both held: a third is closed without an answer.
    let (code, body) = lab.curl_as(None, &srv.url("/boot.ipxe"));
    assert_eq!(
        code, 0,
        "a third without a certificate was answered: {body}"
    );
    let metrics = lab
        .curl_as(None, &format!("http://127.0.0.1:{mport}/metrics"))
        .1;
    assert!(
        crate::util::metric(
            &metrics,
            "ipxe_ca_refused_connections_total{reason=\"anonymous-budget\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // Boards are not in that budget.
    let (code, body) = lab.curl_as(Some("q1"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 200, "{body}");
    // One let go (SIGTERM: `timeout` passes it on to s_client): the next is answered.
    let stop = |p: &mut std::process::Child| {
        Command::new("kill")
            .arg(p.id().to_string())
            .status()
            .unwrap();
        p.wait().unwrap();
    };
    stop(&mut a_proc);
    let mut answered = false;
    for _ in 0..50 {
        let (code, _) = lab.curl_as(None, &srv.url("/boot.ipxe"));
        if code == 403 {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered, "a slot given back was not reused");
    stop(&mut b_proc);
}
