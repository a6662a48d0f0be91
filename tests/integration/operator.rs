//! What the operator's commands do with what boards and hand edits bring: nothing a request
//! carries drives the terminal, nothing a repair touches is deleted.

use crate::util::{s, Lab};

/// A board's request data (`?mac=` with an escape sequence) reaches `history` as text, never
/// as bytes that retitle or repaint the operator's terminal.
#[test]
fn terminal_escapes_in_request_data_never_reach_the_operator() {
    let lab = Lab::init();
    lab.enroll("b1", &["--mac", "52:54:00:12:34:56"]);
    let srv = lab.serve(&[]);
    let (code, _) = lab.curl_as(
        Some("b1"),
        &srv.url("/boot.ipxe?mac=%1b%5d0%3bPWNED%07%1b%5b2J"),
    );
    assert_ne!(code, 200);
    let out = crate::util::wait_for(
        "the refusal in the history",
        std::time::Duration::from_secs(10),
        || {
            let out = lab.ok(&["history", "b1"]);
            out.contains("PWNED").then_some(out)
        },
    );
    assert!(
        !out.bytes().any(|b| b == 0x1b || b == 0x07),
        "raw control bytes in `history`: {out:?}"
    );
    assert!(out.contains("\\u{1b}]0;PWNED"), "shown as an escape: {out}");
}

/// The bytes of the quarantine entry whose name ends with `what` (`file` inside it, if a
/// folder).
fn quarantined(lab: &Lab, what: &str, file: &str) -> Vec<u8> {
    let entry = std::fs::read_dir(lab.path("quarantine"))
        .expect("a quarantine folder")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(what))
        .unwrap_or_else(|| panic!("nothing named *{what} in the quarantine folder"));
    match file {
        "" => std::fs::read(entry.path()).unwrap(),
        f => std::fs::read(entry.path().join(f)).unwrap(),
    }
}

/// A folder that looks like a leftover (a copy made by hand, a board file moved aside) may
/// hold the only copy of a key: `check --repair` and `enroll` move it aside and say where.
#[test]
fn repairs_and_enrolls_move_leftovers_aside_and_never_delete_a_key() {
    let lab = Lab::init();
    lab.enroll("b2", &["--secret", "s=ONLY-COPY"]);
    lab.enroll("b3", &[]);
    let secrets2 = std::fs::read(lab.path("boards/b2/secrets.toml")).unwrap();
    let key3 = std::fs::read(lab.path("keys/boards/b3.key")).unwrap();
    let o = std::process::Command::new("cp")
        .args([
            "-a",
            s(&lab.path("boards/b2")),
            s(&lab.path("boards/b2.bak")),
        ])
        .status()
        .unwrap();
    assert!(o.success());
    let o = lab.run(&["check", "--repair"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("moved") && err.contains("quarantine"), "{err}");
    assert!(!lab.path("boards/b2.bak").exists());
    assert_eq!(
        quarantined(&lab, "boards-b2.bak", "secrets.toml"),
        secrets2,
        "the copy's secrets are kept"
    );
    // A board file moved aside, then the name enrolled again: the old folder is set aside.
    std::fs::rename(lab.path("boards/b3.toml"), lab.tmp.path().join("b3.toml")).unwrap();
    let o = lab.run(&["enroll", "b3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("quarantine"), "{err}");
    assert_eq!(
        quarantined(&lab, "keys-boards-b3.key", ""),
        key3,
        "the old key is kept"
    );
    assert!(quarantined(&lab, "boards-b3", "cert.pem").starts_with(b"-----BEGIN"));
    assert_ne!(std::fs::read(lab.path("keys/boards/b3.key")).unwrap(), key3);
    // The quarantine folder is private, and never served.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.path("quarantine"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    // A key without a board (a board file removed by hand): named by `check`, set aside by
    // `check --repair`, never deleted.
    let key2 = std::fs::read(lab.path("keys/boards/b2.key")).unwrap();
    std::fs::remove_file(lab.path("boards/b2.toml")).unwrap();
    let o = lab.run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !o.status.success() && out.contains("orphan-key") && out.contains("b2.key"),
        "{out}"
    );
    lab.ok(&["check", "--repair"]);
    assert!(!lab.path("keys/boards/b2.key").exists());
    assert_eq!(quarantined(&lab, "keys-boards-b2.key", ""), key2);
}

/// iPXE checks the server certificate's name, not its key usage: a board named like the
/// server (or like what a wildcard of it covers) is refused, and nothing is written.
#[test]
fn a_board_named_like_the_server_is_refused() {
    let lab = Lab::init();
    let before = lab.snapshot();
    for name in ["localhost", "10.0.2.2", "127.0.0.1"] {
        let err = lab.fails(&["enroll", name]);
        assert!(err.contains("is a name of the server"), "{name}: {err}");
    }
    assert_eq!(before, lab.snapshot(), "a refused enroll wrote something");
    lab.enroll("localhost2", &[]);
    let wild = Lab::new();
    wild.ok(&["init", "--san", "DNS:boot.lab", "--san", "DNS:*.farm.lab"]);
    let err = wild.fails(&["enroll", "b7.farm.lab"]);
    assert!(err.contains("*.farm.lab"), "{err}");
    // openssl agrees that the server's wildcard would have matched this board's name.
    let out = crate::util::openssl(&[
        "x509",
        "-in",
        s(&wild.path("server/server.crt")),
        "-noout",
        "-checkhost",
        "b7.farm.lab",
    ]);
    assert!(out.contains("does match"), "{out}");
    wild.enroll("b7", &[]);
}

/// `--secret-file KEY=VALUE` by mistake: the error names the key, never the value.
#[test]
fn a_secret_given_where_a_secret_file_was_expected_is_not_echoed() {
    let lab = Lab::init();
    let err = lab.fails(&["enroll", "b1", "--secret-file", "token=TOPSECRET-VALUE"]);
    assert!(!err.contains("TOPSECRET"), "{err}");
    assert!(err.contains("token") && err.contains("KEY=PATH"), "{err}");
}

/// `nginx-config --out` writes the block 0600 from the start (it holds the proxy secret).
#[test]
fn nginx_config_out_is_never_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::init();
    let out = lab.tmp.path().join("ipxe-ca.conf");
    let printed = lab.ok(&["nginx-config", "--out", s(&out)]);
    assert!(printed.is_empty(), "{printed}");
    let secret = std::fs::read_to_string(lab.path("server/proxy.secret")).unwrap();
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .contains(secret.trim()));
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

fn serial(lab: &Lab, board: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&lab.ok(&["show", board, "--json"])).unwrap();
    v["serial"]
        .as_str()
        .unwrap()
        .trim_start_matches('0')
        .to_uppercase()
}

/// The serials `openssl crl` reads from the CRL in force.
fn crl_serials(lab: &Lab) -> Vec<String> {
    let text = crate::util::openssl(&["crl", "-in", s(&lab.path("ca/crl.pem")), "-noout", "-text"]);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(|s| s.trim().trim_start_matches('0').to_uppercase())
        .collect()
}

/// Every revoked board stays in the CRL (two revokes in a row, read back by openssl); a board
/// file that cannot be read does not block a revoke, nor drop its own revoked serial; and a
/// CRL that misses a revoked board is what `check` reports.
#[test]
fn every_revoked_board_stays_in_the_crl_and_an_unreadable_board_blocks_no_revoke() {
    let lab = Lab::init();
    for b in ["a", "b", "c", "d"] {
        lab.enroll(b, &[]);
    }
    let (a, b, c, d) = (
        serial(&lab, "a"),
        serial(&lab, "b"),
        serial(&lab, "c"),
        serial(&lab, "d"),
    );
    lab.ok(&["revoke", "a"]);
    let only_a = std::fs::read(lab.path("ca/crl.pem")).unwrap();
    lab.ok(&["revoke", "b"]);
    let listed = crl_serials(&lab);
    assert!(
        listed.contains(&a) && listed.contains(&b),
        "{listed:?} lacks {a} or {b}"
    );
    lab.ok(&["revoke", "c"]);
    // c's board file turns unreadable (a bad hand edit): revoking d still works, and c stays.
    std::fs::write(lab.path("boards/c.toml"), "not = [toml").unwrap();
    lab.ok(&["revoke", "d"]);
    let listed = crl_serials(&lab);
    for (name, s) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
        assert!(listed.contains(s), "{name} ({s}) missing from {listed:?}");
    }
    // An older CRL put back by hand: check says which revoked board it misses.
    std::fs::write(lab.path("ca/crl.pem"), only_a).unwrap();
    let o = lab.run(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success());
    assert!(
        out.contains("crl-incomplete") && out.contains("revoked board b "),
        "{out}"
    );
}

/// A boot file served through a symlink (`vmlinuz -> vmlinuz-6.1`) is signed under the name
/// boards fetch, and `sign-files --check` fails while it is not.
#[test]
fn a_symlinked_boot_file_is_signed_under_its_served_name() {
    let lab = Lab::init();
    let files = lab.path("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("vmlinuz-6.1"), "KERNEL").unwrap();
    lab.ok(&["sign-files"]);
    std::os::unix::fs::symlink("vmlinuz-6.1", files.join("vmlinuz")).unwrap();
    let o = lab.run(&["sign-files", "--check"]);
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("vmlinuz"));
    lab.ok(&["sign-files"]);
    assert!(files.join("vmlinuz.sig").exists());
    lab.ok(&["sign-files", "--check"]);
    // openssl agrees: the signature is of the bytes served as vmlinuz.
    assert!(crate::trust::cms_verifies(&lab, "vmlinuz"));
}

/// New server certificates keep the key size `init --key-size` chose (they were RSA-2048
/// whatever it said).
#[test]
fn server_cert_keeps_the_key_size_init_chose() {
    let lab = Lab::new();
    lab.ok(&["init", "--key-size", "3072", "--san", "IP:127.0.0.1"]);
    let bits = |lab: &Lab| {
        crate::util::openssl(&[
            "x509",
            "-in",
            s(&lab.path("server/server.crt")),
            "-noout",
            "-text",
        ])
        .lines()
        .find_map(|l| l.trim().strip_prefix("Public-Key: (").map(str::to_string))
        .unwrap()
    };
    assert_eq!(bits(&lab), "3072 bit)");
    lab.ok(&[
        "server-cert",
        "--san",
        "IP:127.0.0.1",
        "--san",
        "DNS:boot.lab",
    ]);
    assert_eq!(bits(&lab), "3072 bit)");
}
