//! The openssl CLI as an independent checker and as the prototype's way of issuing.

use std::path::PathBuf;

use super::{tool, Lab};
use crate::common::s;

/// Run openssl and require success.
pub fn openssl(args: &[&str]) -> String {
    let (ok, out) = tool("openssl", args);
    assert!(ok, "openssl {args:?} failed: {out}");
    out
}

/// A new RSA-2048 key and a CSR for `subj`, made by the openssl CLI (`extra` goes last,
/// e.g. `-outform DER` or `-addext …`).
pub fn rsa_csr(key: &str, subj: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-subj", subj, "-out", out,
    ];
    args.extend_from_slice(extra);
    openssl(&args);
}

/// A board certificate our CA signed with the openssl CLI, as before ipxe-ca existed: key, CSR
/// and certificate `NAME.{key,csr,crt}` in the lab's temp dir (`extra` goes to `x509 -req`).
pub fn openssl_signed_cert(lab: &Lab, name: &str, extra: &[&str]) -> PathBuf {
    let d = lab.tmp.path();
    let (key, csr, crt) = (
        d.join(format!("{name}.key")),
        d.join(format!("{name}.csr")),
        d.join(format!("{name}.crt")),
    );
    rsa_csr(s(&key), &format!("/CN={name}"), s(&csr), &[]);
    sign_with_openssl(lab, s(&csr), s(&crt), extra);
    crt
}

/// The certificate's fingerprint as openssl computes it, in the registry's form (lowercase hex).
pub fn openssl_fingerprint(cert: &std::path::Path, digest: &str) -> String {
    let out = openssl(&["x509", "-in", s(cert), "-noout", "-fingerprint", digest]);
    out.trim()
        .split('=')
        .nth(1)
        .unwrap()
        .replace(':', "")
        .to_lowercase()
}

/// `openssl verify -x509_strict -purpose PURPOSE`: the certificate must verify against the CA.
pub fn verify_strict(purpose: &str, ca: &str, cert: &str) {
    let out = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        ca,
        cert,
    ]);
    assert!(out.contains(": OK"), "{out}");
}

/// Issue a certificate for `csr` with the lab's CA using the openssl CLI, as the prototype did.
pub fn sign_with_openssl(lab: &Lab, csr: &str, out: &str, extra: &[&str]) {
    let (ca, key) = (lab.path("ca/ca.crt"), lab.path("keys/ca.key"));
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        s(&ca),
        "-CAkey",
        s(&key),
        "-days",
        "30",
        "-out",
        out,
    ];
    args.extend_from_slice(extra);
    openssl(&args);
}
