//! Hostile network, hostile input (issue 12): each test reproduces a finding against the real
//! binary and fails on the code before its fix.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{bin, free_port, s, Lab};

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
fn issue12_8_no_request_path_reaches_a_panic() {
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
fn issue12_8_durations_are_bounded_when_parsed() {
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
fn issue12_6_board_names_never_collide_with_registry_files_and_revoke_keeps_the_crl_true() {
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
fn issue12_5_a_broken_stdout_never_stops_serving() {
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
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", https)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
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
}
