//! The CA, enrollment, the registry and revocation, judged by the openssl CLI.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::util::{
    openssl, openssl_fingerprint, rsa_csr, s, sign_with_openssl, tool, verify_strict, Lab,
};

fn der_of(pem_path: &std::path::Path) -> Vec<u8> {
    let text = std::fs::read(pem_path).unwrap();
    pem::parse(text).unwrap().into_contents()
}

#[test]
fn init_makes_ca_and_separate_server_cert_that_openssl_accepts() {
    let lab = Lab::init();
    let ca = lab.path("ca/ca.crt");
    let server = lab.path("server/server.crt");
    verify_strict("sslserver", s(&ca), s(&server));
    let text = openssl(&["x509", "-in", s(&ca), "-noout", "-text"]);
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("Subject Key Identifier"), "{text}");
    let stext = openssl(&["x509", "-in", s(&server), "-noout", "-text"]);
    assert!(stext.contains("IP Address:10.0.2.2"), "{stext}");
    assert!(stext.contains("TLS Web Server Authentication"), "{stext}");
    assert!(stext.contains("Authority Key Identifier"), "{stext}");
    assert!(!stext.contains("OCSP"), "{stext}");
    // The server key is not the CA key.
    let ca_mod = openssl(&[
        "rsa",
        "-in",
        s(&lab.path("keys/ca.key")),
        "-noout",
        "-modulus",
    ]);
    let srv_mod = openssl(&[
        "rsa",
        "-in",
        s(&lab.path("server/server.key")),
        "-noout",
        "-modulus",
    ]);
    assert_ne!(ca_mod, srv_mod);
    // The served chain is leaf + CA.
    let chain = std::fs::read_to_string(&server).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    // Key modes.
    for k in ["keys/ca.key", "server/server.key"] {
        let m = std::fs::metadata(lab.path(k)).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600, "{k}");
    }
    for d in ["ca", "server", "."] {
        let m = std::fs::metadata(lab.path(d)).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o700, "{d}");
    }
    let out = openssl(&[
        "crl",
        "-in",
        s(&lab.path("ca/crl.pem")),
        "-CAfile",
        s(&ca),
        "-noout",
        "-verify",
    ]);
    assert!(out.contains("verify OK"), "{out}");
    let config = std::fs::read_to_string(lab.path("etc/config.toml")).unwrap();
    assert!(config.contains("https://127.0.0.1:8443"), "{config}");
    assert!(lab.path("profiles/default.ipxe").exists());
    assert!(lab.path("ipxe-scripts/embed.ipxe").exists());
}

#[test]
fn init_refuses_to_replace_a_ca_without_force() {
    let lab = Lab::init();
    let before = lab.snapshot();
    let err = lab.fails(&["init", "--san", "IP:127.0.0.1"]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(before, lab.snapshot());
    lab.ok(&["init", "--san", "IP:127.0.0.1", "--force"]);
    assert_ne!(
        before.get(std::path::Path::new("ca/ca.crt")),
        lab.snapshot().get(std::path::Path::new("ca/ca.crt"))
    );
}

#[test]
fn enrolled_board_verifies_and_fingerprints_match_openssl() {
    let lab = Lab::init();
    let j = lab.enroll(
        "board-1",
        &[
            "--mac",
            "52-54-00-AB-CD-EF",
            "--var",
            "role=worker",
            "--secret",
            "s3_key=TOPSECRET",
        ],
    );
    let cert = lab.path("boards/board-1/cert.pem");
    verify_strict("sslclient", s(&lab.path("ca/ca.crt")), s(&cert));
    let fp = openssl_fingerprint(&cert, "-sha1");
    assert_eq!(j["fingerprint_sha1"], fp);
    assert_eq!(
        j["fingerprint_sha256"],
        openssl_fingerprint(&cert, "-sha256")
    );
    let serial = openssl(&["x509", "-in", s(&cert), "-noout", "-serial"]);
    assert_eq!(
        j["serial"],
        serial.trim().trim_start_matches("serial=").to_lowercase()
    );
    assert!(
        j["serial"].as_str().unwrap().len() >= 16,
        "at least 64 bits"
    );
    assert_eq!(j["mac"], "52:54:00:ab:cd:ef");
    assert_eq!(j["profile"], "default");
    assert_eq!(j["status"], "active");
    assert_eq!(j["vars"]["role"], "worker");
    assert_eq!(j["secrets"], serde_json::json!(["s3_key"]));
    assert!(
        j["key"]
            .as_str()
            .unwrap()
            .ends_with("keys/boards/board-1.key"),
        "{j}"
    );
    let text = openssl(&["x509", "-in", s(&cert), "-noout", "-text"]);
    assert!(
        text.contains("CN = board-1") || text.contains("CN=board-1"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("Authority Information Access"), "{text}");
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    // Validity: starts slightly in the past, about three years.
    let nb = time::OffsetDateTime::parse(
        j["not_before"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let na = time::OffsetDateTime::parse(
        j["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert!(nb < now - time::Duration::minutes(30));
    assert!((na - now).whole_days() >= 1090);
    // The key is 0600 and openssl reads it; the secret value is never printed.
    let k = lab.path("keys/boards/board-1.key");
    assert_eq!(
        std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
        0o600
    );
    openssl(&["rsa", "-in", s(&k), "-check", "-noout"]);
    let listing = lab.ok(&["list", "--json"]) + &lab.ok(&["show", "board-1"]) + &lab.ok(&["list"]);
    assert!(!listing.contains("TOPSECRET"));
    let list: serde_json::Value = serde_json::from_str(&lab.ok(&["list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // The table flags certificates that expire within 30 days.
    lab.enroll("short-lived", &["--days", "10"]);
    let table = lab.ok(&["list"]);
    let line = |n: &str| {
        table
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap()
            .to_string()
    };
    assert!(line("short-lived").contains("expiring"), "{table}");
    assert!(line("board-1").contains("active"), "{table}");
    assert_eq!(list[0]["fingerprint_sha1"], fp);
}

#[test]
fn revoked_board_is_in_a_crl_that_openssl_verifies() {
    let lab = Lab::init();
    lab.enroll("keep", &[]);
    lab.enroll("gone", &[]);
    lab.ok(&["revoke", "gone", "--reason", "key-compromise"]);
    let ca = lab.path("ca/ca.crt");
    let crl = lab.path("ca/crl.pem");
    let out = openssl(&[
        "crl",
        "-in",
        s(&crl),
        "-CAfile",
        s(&ca),
        "-noout",
        "-verify",
    ]);
    assert!(out.contains("verify OK"), "{out}");
    let (ok, out) = crl_check(s(&ca), s(&crl), s(&lab.path("boards/gone/cert.pem")));
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = crl_check(s(&ca), s(&crl), s(&lab.path("boards/keep/cert.pem")));
    assert!(ok, "{out}");
    let text = openssl(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(text.contains("Key Compromise"), "{text}");
    let j: serde_json::Value = serde_json::from_str(&lab.ok(&["show", "gone", "--json"])).unwrap();
    assert_eq!(j["status"], "revoked");
    let err = lab.fails(&["revoke", "gone"]);
    assert!(err.contains("already revoked"), "{err}");
    // `crl` re-signs: a higher CRL number, the same revoked serial, a year of validity.
    let number = |t: &str| {
        t.lines()
            .skip_while(|l| !l.contains("X509v3 CRL Number"))
            .nth(1)
            .unwrap()
            .trim()
            .to_string()
    };
    let before = number(&text);
    let out = lab.ok(&["crl"]);
    assert!(out.contains("valid until"), "{out}");
    let again = openssl(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert_ne!(number(&again), before);
    let gone_serial = openssl(&[
        "x509",
        "-in",
        s(&lab.path("boards/gone/cert.pem")),
        "-noout",
        "-serial",
    ]);
    assert!(
        again.to_lowercase().contains(
            &gone_serial
                .trim()
                .trim_start_matches("serial=")
                .to_lowercase()
        ),
        "{again}"
    );
    let out = openssl(&[
        "crl",
        "-in",
        s(&crl),
        "-CAfile",
        s(&ca),
        "-noout",
        "-verify",
        "-nextupdate",
    ]);
    let year = (time::OffsetDateTime::now_utc() + time::Duration::days(364))
        .year()
        .to_string();
    assert!(out.contains("verify OK") && out.contains(&year), "{out}");
}

/// What `openssl x509 -fingerprint` prints, in nginx's form: lowercase hex, no colons.
/// `openssl verify -crl_check`: (verified, output).
fn crl_check(ca: &str, crl: &str, cert: &str) -> (bool, String) {
    tool(
        "openssl",
        &["verify", "-crl_check", "-CAfile", ca, "-CRLfile", crl, cert],
    )
}

/// A CA made by the openssl CLI with PrintableString names, as the prototype's was.
fn openssl_ca(
    dir: &std::path::Path,
    traditional_key: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let cnf = dir.join("ca.cnf");
    std::fs::write(
        &cnf,
        "[req]\ndistinguished_name=dn\nstring_mask=default\nprompt=no\n[dn]\nC=DE\nO=Proto Lab\nOU=Boot\nCN=Prototype Boot CA\n[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
    )
    .unwrap();
    let key = dir.join("proto-ca.key");
    let cert = dir.join("proto-ca.crt");
    if traditional_key {
        openssl(&["genrsa", "-traditional", "-out", s(&key), "2048"]);
    } else {
        openssl(&["genpkey", "-algorithm", "RSA", "-out", s(&key)]);
    }
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        s(&key),
        "-config",
        s(&cnf),
        "-extensions",
        "v3",
        "-days",
        "365",
        "-out",
        s(&cert),
    ]);
    (cert, key)
}

/// `init` adopting a CA made elsewhere.
fn adopt<'a>(cert: &'a std::path::Path, key: &'a std::path::Path) -> [&'a str; 7] {
    [
        "init",
        "--san",
        "IP:127.0.0.1",
        "--from-ca",
        s(cert),
        "--from-key",
        s(key),
    ]
}

#[test]
fn adopted_openssl_ca_keeps_its_subject_bytes_in_every_leaf() {
    for traditional in [true, false] {
        let lab = Lab::new();
        let (cert, key) = openssl_ca(lab.tmp.path(), traditional);
        let names = openssl(&[
            "x509",
            "-in",
            s(&cert),
            "-noout",
            "-subject",
            "-nameopt",
            "multiline,show_type",
        ]);
        assert!(
            names.contains("PRINTABLESTRING"),
            "fixture must use PrintableString: {names}"
        );
        lab.ok(&adopt(&cert, &key));
        lab.enroll("old-board", &[]);
        let ca_der = der_of(&lab.path("ca/ca.crt"));
        assert_eq!(
            ca_der,
            der_of(&cert),
            "the adopted CA certificate is kept as is"
        );
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        for leaf in ["boards/old-board/cert.pem", "server/server.crt"] {
            let der = der_of(&lab.path(leaf));
            let (_, c) = X509Certificate::from_der(&der).unwrap();
            assert_eq!(
                c.issuer().as_raw(),
                ca.subject().as_raw(),
                "{leaf}: issuer bytes"
            );
        }
        verify_strict(
            "sslclient",
            s(&cert),
            s(&lab.path("boards/old-board/cert.pem")),
        );
        verify_strict("sslserver", s(&cert), s(&lab.path("server/server.crt")));
        lab.ok(&["revoke", "old-board"]);
        let crl = lab.path("ca/crl.pem");
        let (ok, out) = crl_check(s(&cert), s(&crl), s(&lab.path("boards/old-board/cert.pem")));
        assert!(
            !ok && out.contains("certificate revoked"),
            "the CRL's AKI must match the adopted CA: {out}"
        );
    }
}

/// rcgen keeps one value per attribute type in a name: a CA named with two domainComponents
/// (or two OUs) would be written back without one of them, and every leaf would name an
/// issuer iPXE cannot match to the CA. `init` must refuse such a CA before writing anything.
#[test]
fn adopted_ca_whose_name_cannot_be_reproduced_is_refused_before_any_write() {
    let lab = Lab::new();
    let d = lab.tmp.path();
    let (key, cert) = (d.join("dc-ca.key"), d.join("dc-ca.crt"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        s(&key),
        "-out",
        s(&cert),
        "-days",
        "30",
        "-subj",
        "/DC=org/DC=example/CN=Directory CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    let before = lab.snapshot();
    let err = lab.fails(&adopt(&cert, &key));
    assert!(
        err.contains("cannot be reproduced byte for byte") && err.contains("ipxe-ca init"),
        "{err}"
    );
    assert_eq!(lab.snapshot(), before, "nothing written");
}

#[test]
fn csr_asking_for_ca_true_gets_a_client_certificate() {
    let lab = Lab::init();
    let d = lab.tmp.path();
    let key = d.join("b.key");
    let csr = d.join("b.csr");
    rsa_csr(
        s(&key),
        "/CN=evil/O=Other",
        s(&csr),
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=keyCertSign",
            "-addext",
            "subjectKeyIdentifier=hash",
        ],
    );
    let j: serde_json::Value =
        serde_json::from_str(&lab.ok(&["sign", "csr-board", "--csr", s(&csr), "--json"])).unwrap();
    assert!(j["key"].is_null(), "we never held the key");
    let cert = lab.path("boards/csr-board/cert.pem");
    let text = openssl(&["x509", "-in", s(&cert), "-noout", "-text"]);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("CA:TRUE"), "{text}");
    assert!(!text.contains("Certificate Sign"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("Subject: CN = csr-board"), "{text}");
    verify_strict("sslclient", s(&lab.path("ca/ca.crt")), s(&cert));
    // The certificate carries the CSR's key.
    let a = openssl(&["x509", "-in", s(&cert), "-noout", "-pubkey"]);
    let b = openssl(&["pkey", "-in", s(&key), "-pubout"]);
    assert_eq!(a, b);
    // DER CSRs work too.
    let der = d.join("b2.der");
    rsa_csr(s(&d.join("b2.key")), "/CN=x", s(&der), &["-outform", "DER"]);
    lab.ok(&["sign", "der-board", "--csr", s(&der)]);
}

#[test]
fn non_rsa_and_garbage_csrs_are_refused_without_changes() {
    let lab = Lab::init();
    let d = lab.tmp.path();
    let csr = d.join("ec.csr");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        s(&d.join("ec.key")),
        "-subj",
        "/CN=ec",
        "-out",
        s(&csr),
    ]);
    let before = lab.snapshot();
    let err = lab.fails(&["sign", "ec-board", "--csr", s(&csr)]);
    assert!(err.contains("RSA"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let garbage = d.join("garbage.csr");
    std::fs::write(&garbage, b"this is not a CSR").unwrap();
    let err = lab.fails(&["sign", "g-board", "--csr", s(&garbage)]);
    assert!(err.contains("CSR"), "{err}");
    // A CSR whose signature does not verify (one byte of the signature flipped).
    let good = d.join("good.der");
    rsa_csr(s(&d.join("g.key")), "/CN=x", s(&good), &["-outform", "DER"]);
    let mut bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    let bad = d.join("bad.der");
    std::fs::write(&bad, bytes).unwrap();
    let err = lab.fails(&["sign", "b-board", "--csr", s(&bad)]);
    assert!(err.contains("signature"), "{err}");
    assert_eq!(before, lab.snapshot());
}

#[test]
fn register_adopts_our_certificates_and_refuses_others() {
    let lab = Lab::init();
    let d = lab.tmp.path();
    // A board certificate issued by our CA with the openssl CLI, before ipxe-ca existed.
    let key = d.join("old.key");
    let csr = d.join("old.csr");
    let crt = d.join("old.crt");
    rsa_csr(s(&key), "/CN=legacy", s(&csr), &[]);
    sign_with_openssl(&lab, s(&csr), s(&crt), &[]);
    let j: serde_json::Value = serde_json::from_str(&lab.ok(&[
        "register",
        "legacy",
        "--cert",
        s(&crt),
        "--mac",
        "aa:bb:cc:dd:ee:ff",
        "--json",
    ]))
    .unwrap();
    assert_eq!(j["fingerprint_sha1"], openssl_fingerprint(&crt, "-sha1"));
    assert!(j["key"].is_null());
    assert_eq!(j["origin"], "registered");
    // The same certificate twice is refused.
    let err = lab.fails(&["register", "legacy2", "--cert", s(&crt)]);
    assert!(err.contains("already registered"), "{err}");
    // A certificate from another CA is refused.
    let other = Lab::init();
    other.enroll("foreign", &[]);
    let before = lab.snapshot();
    let err = lab.fails(&[
        "register",
        "foreign",
        "--cert",
        s(&other.path("boards/foreign/cert.pem")),
    ]);
    assert!(err.contains("not issued by this CA"), "{err}");
    assert_eq!(before, lab.snapshot());
}

#[test]
fn twenty_concurrent_enrolls_give_twenty_distinct_boards() {
    let lab = Lab::init();
    let children: Vec<_> = (0..20)
        .map(|i| {
            lab.cmd(&["enroll", &format!("par-{i:02}"), "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let list: serde_json::Value = serde_json::from_str(&lab.ok(&["list", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 20);
    let serials: BTreeSet<_> = list
        .iter()
        .map(|b| b["serial"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(serials.len(), 20);
    let fps: BTreeSet<_> = list
        .iter()
        .map(|b| b["fingerprint_sha1"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fps.len(), 20);
    // No temp files left behind.
    for e in std::fs::read_dir(lab.path("boards")).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(!n.contains(".tmp"), "{n}");
    }
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let lab = Lab::init();
    lab.enroll("dup", &[]);
    let before = lab.snapshot();
    let cases: &[(&[&str], &str)] = &[
        (&["enroll", "../x"], "invalid board name"),
        (&["enroll", "Upper"], "invalid board name"),
        (
            &["enroll", "ok", "--mac", "52:54:00:zz:00:01"],
            "invalid MAC",
        ),
        (&["enroll", "ok", "--mac", "52:54:00"], "invalid MAC"),
        (&["enroll", "dup"], "already registered"),
        (
            &["enroll", "ok", "--profile", "nosuch"],
            "profile \"nosuch\" does not exist",
        ),
        (&["enroll", "ok", "--var", "bad key=1"], "invalid key"),
        (
            &["sign", "ok", "--csr", "/nonexistent.csr"],
            "cannot read CSR",
        ),
        (&["show", "nosuch"], "no board named"),
        (&["revoke", "nosuch"], "no board named"),
        (&["revoke", "dup", "--reason", "bored"], "invalid reason"),
    ];
    for (args, expect) in cases {
        let err = lab.fails(args);
        assert!(err.contains(expect), "{args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{args:?}: one line expected: {err}"
        );
        assert_eq!(before, lab.snapshot(), "{args:?} changed the state dir");
    }
    // A failed init leaves no state dir behind.
    let fresh = Lab::new();
    let bogus = fresh.tmp.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let err = fresh.fails(&["init", "--from-ca", s(&bogus), "--from-key", s(&bogus)]);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        !fresh.dir.exists(),
        "a failed init created {}",
        fresh.dir.display()
    );
    // Without a CA, enroll says what to do, and a mistyped state dir is no empty farm.
    let empty = Lab::new();
    let err = empty.fails(&["enroll", "b"]);
    assert!(err.contains("ipxe-ca init"), "{err}");
    let err = empty.fails(&["list"]);
    assert!(err.contains("ipxe-ca init"), "{err}");
    assert!(!empty.dir.exists(), "list created {}", empty.dir.display());
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let lab = Lab::new();
    let v = lab.ok(&["--version"]);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert!(
        v.starts_with(&format!("ipxe-ca {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    match head {
        Some(h) => assert!(v.contains(&format!("git {h}")), "{v}"),
        None => assert!(v.contains("not built from a git checkout"), "{v}"),
    }
}

#[test]
fn list_expiring_names_what_runs_out_and_exits_1_for_cron() {
    let lab = Lab::init();
    lab.enroll("short", &["--days", "10"]);
    lab.enroll("long", &[]);
    lab.enroll("gone", &["--days", "3"]);
    lab.ok(&["revoke", "gone"]);
    // Nothing within 5 days (the revoked board does not count): exit 0.
    let o = lab.run(&["list", "--expiring", "5", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0, "{v}");
    // Within 30 days: the short board, and exit status 1.
    let o = lab.run(&["list", "--expiring", "30", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let what: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(what, ["board short"], "{v}");
    assert!(v[0]["days_left"].as_i64().unwrap() <= 10);
    // Within 400 days the CRL's next update (365) comes in too; the server certificates
    // (824 days) and the CA (10 years) do not.
    let o = lab.run(&["list", "--expiring", "400", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let what: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap().to_string())
        .collect();
    assert!(what.iter().any(|w| w.starts_with("CRL")), "{what:?}");
    assert!(
        !what
            .iter()
            .any(|w| w.contains("server") || w.starts_with("CA")),
        "{what:?}"
    );
    let o = lab.run(&["list", "--expiring", "900"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("RSA server certificate") && text.contains("ECDSA server certificate"),
        "{text}"
    );
    // serve says it at start (and daily after), for what runs out within 30 days only.
    let srv = lab.serve(&[]);
    let said = crate::util::wait_for(
        "the expiry warning",
        std::time::Duration::from_secs(10),
        || {
            let out = srv.output();
            out.contains("renew it before").then_some(out)
        },
    );
    assert!(said.contains("board short expires in"), "{said}");
    assert!(
        !said.contains("board long") && !said.contains("CRL"),
        "{said}"
    );
}
