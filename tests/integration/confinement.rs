//! `serve` reads only what it serves and reloads: the kernel (Landlock) keeps every key it
//! does not need out of its reach, whatever path leads there.

use crate::util::Lab;

/// The CA key, wherever the state dir keeps it.
fn ca_key(lab: &Lab) -> std::path::PathBuf {
    lab.path("keys/ca.key")
}

/// A profile or a secret template that is a link to the CA key (a careless `ln -s`, or a
/// local user who can write there): a board's script never carries the key.
#[test]
fn a_profile_or_secret_linked_to_the_ca_key_never_serves_it() {
    let lab = Lab::init();
    let key = std::fs::read_to_string(ca_key(&lab)).unwrap();
    let body = key
        .lines()
        .find(|l| !l.starts_with("-----"))
        .unwrap()
        .to_string();
    std::os::unix::fs::symlink(ca_key(&lab), lab.path("profiles/leak.ipxe")).unwrap();
    std::fs::create_dir_all(lab.path("secrets")).unwrap();
    std::os::unix::fs::symlink(ca_key(&lab), lab.path("secrets/leak")).unwrap();
    std::fs::write(
        lab.path("profiles/chain.ipxe"),
        "#!ipxe\nchain {{ one_time_url(\"leak\") }}\n",
    )
    .unwrap();
    lab.enroll("p", &["--profile", "leak"]);
    lab.enroll("s", &["--profile", "chain"]);
    let srv = lab.serve(&[]);
    let (_, script) = lab.curl_as(Some("p"), &srv.url("/boot.ipxe"));
    assert!(!script.contains(&body), "the CA key was served: {script}");
    // The board that asks is told nothing of why; the operator's log says.
    let (_, script) = lab.curl_as(Some("s"), &srv.url("/boot.ipxe"));
    assert!(!script.contains(&body), "the CA key was served: {script}");
    if let Some(url) = script.lines().find_map(|l| l.strip_prefix("chain ")) {
        let (_, secret) = lab.curl_as(None, url.trim());
        assert!(!secret.contains(&body), "the CA key was served: {secret}");
    }
    let log = srv.output();
    // Where it listens, as bound.
    assert!(
        log.contains(&format!(
            "serving boot scripts on https://127.0.0.1:{} (mutual TLS)",
            srv.https
        )) && log.contains(&format!(
            "boot files on http://127.0.0.1:{}/files/",
            srv.http
        )),
        "{log}"
    );
    assert!(
        log.contains("confined by the kernel (Landlock): reads only ca/")
            && log.contains("profiles/leak.ipxe: Permission denied")
            && log.contains("secrets/leak: Permission denied"),
        "{log}"
    );
    assert!(!log.contains(&body), "the CA key reached the log: {log}");
}

/// A state dir written before keys had a folder of their own (and one whose move was cut
/// short): the first command moves every key into `keys/` (0600 in 0700) and `config.toml`
/// into `etc/`, says so once, and everything works as before.
#[test]
fn an_older_state_dir_has_its_keys_moved_out_of_serves_reach() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::init();
    lab.enroll("old", &[]);
    lab.enroll("half", &[]);
    let mv = |from: &str, to: &str| std::fs::rename(lab.path(from), lab.path(to)).unwrap();
    mv("keys/ca.key", "ca/ca.key");
    mv("keys/codesign.key", "codesign/codesign.key");
    mv("keys/boards/old.key", "boards/old/key.pem");
    mv("etc/config.toml", "config.toml");
    // Cut short: one board key already in the folder the move fills first.
    mv("keys/boards", "keys/.boards.partial");
    std::fs::remove_dir(lab.path("etc")).unwrap();
    let ca_key = std::fs::read(lab.path("ca/ca.key")).unwrap();

    let o = lab.run(&["list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("moved 3 private key(s) into") && err.contains("config.toml to"),
        "{err}"
    );
    assert_eq!(std::fs::read(lab.path("keys/ca.key")).unwrap(), ca_key);
    for (p, mode) in [
        ("keys", 0o700),
        ("keys/boards", 0o700),
        ("keys/ca.key", 0o600),
        ("keys/codesign.key", 0o600),
        ("keys/boards/old.key", 0o600),
        ("keys/boards/half.key", 0o600),
    ] {
        let m = std::fs::metadata(lab.path(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{p}");
    }
    for gone in [
        "ca/ca.key",
        "codesign/codesign.key",
        "boards/old/key.pem",
        "config.toml",
    ] {
        assert!(!lab.path(gone).exists(), "{gone} is still there");
    }
    assert!(lab.path("etc/config.toml").exists());
    let o = lab.run(&["list"]);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("moved"));
    // The CA signs from its new place; both boards boot with their keys.
    lab.enroll("new", &[]);
    let srv = lab.serve(&[]);
    for b in ["old", "half", "new"] {
        assert_eq!(lab.curl_as(Some(b), &srv.url("/boot.ipxe")).0, 200, "{b}");
    }
}
