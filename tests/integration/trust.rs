//! Trust that reaches the kernel: signed boot files (checked by openssl cms, as iPXE's
//! imgverify checks them) and boot files over mutual TLS for enrolled boards only.

use std::os::unix::fs::PermissionsExt;

use crate::util::{openssl, s, tool, write_random, Lab};

pub(crate) fn cms_verifies(lab: &Lab, file: &str) -> bool {
    let f = lab.path(&format!("files/{file}"));
    let sig = lab.path(&format!("files/{file}.sig"));
    tool(
        "openssl",
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            s(&sig),
            "-content",
            s(&f),
            "-CAfile",
            s(&lab.path("ca/ca.crt")),
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
    )
    .0
}

#[test]
fn boot_files_are_signed_for_imgverify_and_stale_signatures_are_visible() {
    let lab = Lab::init();
    // The signer: issued by our CA, its own key (0600), digitalSignature + codeSigning only.
    let cs = lab.path("codesign/codesign.crt");
    let text = openssl(&["x509", "-in", s(&cs), "-noout", "-text"]);
    assert!(text.contains("Code Signing"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(!text.contains("TLS Web"), "{text}");
    let v = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        "any",
        "-CAfile",
        s(&lab.path("ca/ca.crt")),
        s(&cs),
    ]);
    assert!(v.contains(": OK"), "{v}");
    let key = lab.path("keys/codesign.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_ne!(
        std::fs::read(&key).unwrap(),
        std::fs::read(lab.path("keys/ca.key")).unwrap()
    );

    write_random(&lab.path("files/vmlinuz"), 3 << 20);
    std::fs::write(lab.path("files/initrd.img"), b"initrd v1").unwrap();
    std::fs::create_dir_all(lab.path("files/sub")).unwrap();
    std::fs::write(lab.path("files/sub/extra.cfg"), b"extra").unwrap();
    let out = lab.ok(&["sign-files"]);
    assert_eq!(out.matches("signed ").count(), 3, "{out}");
    for f in ["vmlinuz", "initrd.img", "sub/extra.cfg"] {
        assert!(cms_verifies(&lab, f), "{f}: openssl cms -verify fails");
    }
    // Unchanged files are skipped; a changed file's old signature fails, and is reported.
    let again = lab.ok(&["sign-files"]);
    assert_eq!(again.matches("unchanged").count(), 3, "{again}");
    std::fs::write(lab.path("files/initrd.img"), b"initrd v2 (tampered)").unwrap();
    assert!(!cms_verifies(&lab, "initrd.img"));
    let err = lab.fails(&["sign-files", "--check"]);
    assert!(err.contains("1 of 3 boot files"), "{err}");
    let report: serde_json::Value = serde_json::from_str(
        &String::from_utf8(lab.run(&["sign-files", "--check", "--json"]).stdout).unwrap(),
    )
    .unwrap();
    let stale: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "stale")
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(stale, ["initrd.img"]);
    // serve says so at start and in the log of the request; the file is still served.
    let srv = lab.serve(&[]);
    let (ok, body) = tool(
        "curl",
        &["-sf", "--max-time", "10", &srv.http_url("/initrd.img")],
    );
    assert!(ok && body.contains("tampered"));
    let log = srv.output();
    assert!(
        log.contains("stale signature") && log.contains("initrd.img"),
        "{log}"
    );
    assert!(log.contains("changed since it was signed"), "{log}");
    // A new file without a signature is reported as missing.
    std::fs::write(lab.path("files/new.img"), b"new").unwrap();
    let err = lab.fails(&["sign-files", "--check"]);
    assert!(err.contains("2 of 4"), "{err}");
    // Signing the stale one makes everything current again.
    lab.ok(&["sign-files"]);
    lab.ok(&["sign-files", "--check"]);
    assert!(cms_verifies(&lab, "initrd.img"));
    // The bookkeeping is never served.
    let (_, code) = tool(
        "curl",
        &[
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &srv.http_url("/.ipxe-ca-signatures.json"),
        ],
    );
    assert_eq!(code, "403");
}

#[test]
fn signing_refuses_bad_input_and_changes_nothing() {
    let lab = Lab::init();
    std::fs::write(lab.path("files/vmlinuz"), b"kernel").unwrap();
    // Key material in the files directory: refused, nothing signed.
    std::fs::copy(
        lab.path("boards/../keys/ca.key"),
        lab.path("files/leaked.pem"),
    )
    .unwrap();
    let before = lab.snapshot();
    let err = lab.fails(&["sign-files"]);
    assert!(
        err.contains("leaked.pem") && err.contains("private key material"),
        "{err}"
    );
    assert_eq!(
        before,
        lab.snapshot(),
        "a refused signing changed the state dir"
    );
    std::fs::remove_file(lab.path("files/leaked.pem")).unwrap();
    // A file that does not exist, and one outside the files directory.
    let err = lab.fails(&["sign-files", "files/nope.img"]);
    assert!(err.contains("nope.img"), "{err}");
    let outside = lab.tmp.path().join("outside.img");
    std::fs::write(&outside, b"x").unwrap();
    let err = lab.fails(&["sign-files", s(&outside)]);
    assert!(err.contains("not under the files directory"), "{err}");
    // Inside it, but nothing a board boots: a signature, a dot-name, a folder.
    std::fs::write(lab.path("files/old.sig"), b"x").unwrap();
    std::fs::write(lab.path("files/.notes"), b"x").unwrap();
    std::fs::create_dir(lab.path("files/sub")).unwrap();
    for p in ["old.sig", ".notes", "sub"] {
        let err = lab.fails(&["sign-files", p]);
        assert!(err.contains("not a boot file"), "{p}: {err}");
    }
    assert!(!lab.path("files/vmlinuz.sig").exists());
    assert!(!lab.path("files/old.sig.sig").exists());
    // A state dir from before signed files: the first sign-files creates the signer.
    std::fs::remove_dir_all(lab.path("codesign")).unwrap();
    let o = lab.run(&["sign-files", "vmlinuz"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("created the code-signing certificate"));
    assert!(cms_verifies(&lab, "vmlinuz"));
}

#[test]
fn boot_files_over_mutual_tls_are_for_enrolled_boards_only() {
    let lab = Lab::init();
    lab.enroll("fa", &[]);
    lab.enroll("fb", &[]);
    write_random(&lab.path("files/vmlinuz"), 1 << 20);
    let want = std::fs::read(lab.path("files/vmlinuz")).unwrap();
    let srv = lab.serve(&[]);
    let url = srv.url("/files/vmlinuz");
    let (code, _) = lab.curl_as(Some("fa"), &url);
    assert_eq!(code, 200);
    // Byte-exact, and ranges work over TLS as on the plain port.
    let got = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", "--cacert"])
        .arg(lab.path("ca/ca.crt"))
        .arg("--cert")
        .arg(lab.path("boards/fa/cert.pem"))
        .arg("--key")
        .arg(lab.path("keys/boards/fa.key"))
        .args(["-r", "100-199", &url])
        .output()
        .unwrap();
    assert!(got.status.success());
    assert_eq!(got.stdout, &want[100..200]);
    // No certificate: no file. A revoked board: no file.
    let (code, body) = lab.curl_as(None, &url);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no client certificate"), "{body}");
    // Nor by the plain port's other spelling (files at the root) on the HTTPS port.
    let (code, body) = lab.curl_as(None, &srv.url("/vmlinuz"));
    assert_eq!(code, 404, "{body}");
    assert!(!body.as_bytes().starts_with(&want[..64]));
    lab.ok(&["revoke", "fb"]);
    let (code, body) = lab.curl_as(Some("fb"), &url);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("revoked"), "{body}");
    // The no-escape rules hold on this route too.
    let (code, _) = lab.curl_as(Some("fa"), &srv.url("/files/..%2fca%2fca.key"));
    assert!(code == 400 || code == 403, "{code}");
    let log = srv.output();
    assert!(
        log.contains("\"board\":\"fa\"") && log.contains("/files/vmlinuz"),
        "{log}"
    );
}

#[test]
fn the_default_profile_fetches_over_mutual_tls_and_verifies_where_the_board_can() {
    let lab = Lab::init();
    lab.enroll("dp", &["--var", "cmdline=quiet"]);
    let srv = lab.serve(&[]);
    let (code, can) = lab.curl_as(Some("dp"), &srv.url("/boot.ipxe?imgverify=1"));
    assert_eq!(code, 200, "{can}");
    let secure = "https://127.0.0.1:8443/files";
    assert!(
        can.contains(&format!(
            "kernel --name vmlinuz {secure}/vmlinuz initrd=initrd.img quiet"
        )),
        "{can}"
    );
    assert!(
        can.contains(&format!("initrd --name initrd.img {secure}/initrd.img")),
        "{can}"
    );
    assert!(
        can.contains(&format!(
            "imgverify vmlinuz {secure}/vmlinuz.sig || goto bad_kernel"
        )),
        "{can}"
    );
    assert!(
        can.contains(&format!(
            "imgverify initrd.img {secure}/initrd.img.sig || goto bad_initrd"
        )),
        "{can}"
    );
    let boot_at = can.find("\nboot\n").unwrap();
    assert!(can.find("imgverify initrd.img").unwrap() < boot_at, "{can}");
    // A board whose iPXE cannot verify still fetches over mutual TLS, never plain HTTP.
    let (code, cannot) = lab.curl_as(Some("dp"), &srv.url("/boot.ipxe"));
    assert_eq!(code, 200);
    assert!(!cannot.contains("\nimgverify "), "{cannot}");
    assert!(cannot.contains(&format!("{secure}/vmlinuz")), "{cannot}");
    // The access log keeps the query: it tells which board could verify.
    let log = srv.output();
    assert!(log.contains("\"path\":\"/boot.ipxe?imgverify=1\""), "{log}");
    assert!(!cannot.contains("http://"), "{cannot}");
}
