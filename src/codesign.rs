//! Signed boot files: detached CMS signatures (DER, `NAME.sig` beside `NAME`) made with the
//! code-signing certificate our CA issues, in the form iPXE's `imgverify` checks. With them a
//! kernel or initrd swapped on the wire stops the boot instead of running.
//!
//! iPXE skips signed attributes and checks the signature over the content itself, so the
//! SignerInfo carries none; `openssl cms -verify` accepts that form too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::der::{signed_content_info, SigningKey};
use crate::error::{Error, Result};
use crate::store::state::{self, MODE_PUBLIC};

/// Where `sign` records what it signed, inside the files directory (dot-names are never
/// served).
pub const INDEX_NAME: &str = ".ipxe-ca-signatures.json";

/// A signer: the code-signing certificate (DER), its chain up to the CA, and its key.
pub struct Signer {
    key: SigningKey,
    chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

impl Signer {
    /// A signer from the code-signing certificate and key (PEM) and the CA certificate.
    pub fn new(cert_pem: &[u8], key_pem: &[u8], ca_cert_pem: &[u8]) -> Result<Signer> {
        let cert_der = crate::ca::cert_der_from_bytes(cert_pem)?;
        let ca_der = crate::ca::cert_der_from_bytes(ca_cert_pem)?;
        let key_der = crate::ca::board_key_der(key_pem, false)?;
        Ok(Signer {
            key: SigningKey::new(cert_der, &key_der, "code-signing")?,
            chain: vec![ca_der],
        })
    }

    /// A detached CMS SignedData (DER) over `content`.
    pub fn sign(&self, content: &[u8]) -> Result<Vec<u8>> {
        let chain: Vec<&[u8]> = self.chain.iter().map(Vec::as_slice).collect();
        Ok(signed_content_info(&self.key.detached(&chain, content)?))
    }
}

/// What `sign` recorded of a file when it signed it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signed {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// SHA-256 of the content signed.
    pub sha256: String,
}

/// The state of one file's signature.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SigStatus {
    /// Signed, and unchanged since.
    Current,
    /// Changed since it was signed: `imgverify` will refuse it.
    Stale,
    /// Never signed.
    Missing,
}

/// One file and its signature state.
#[derive(Clone, Debug, Serialize)]
pub struct FileStatus {
    /// Path relative to the files directory.
    pub path: String,
    /// Its signature state.
    pub status: SigStatus,
    /// An EFI executable, checked against the farm's Secure Boot certificate: whether it
    /// carries that key's signature (false: firmware with Secure Boot on refuses it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
}

/// The record of signed files, kept in the files directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Index {
    /// Relative path → what was signed.
    pub files: BTreeMap<String, Signed>,
}

impl Index {
    /// Read the index of `files_root` (empty when there is none yet).
    pub fn load(files_root: &Path) -> Result<Index> {
        let p = files_root.join(INDEX_NAME);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Parse {
                path: p,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(Error::io("cannot read", p, e)),
        }
    }

    fn save(&self, files_root: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::invalid(e.to_string()))?;
        state::write_atomic(&files_root.join(INDEX_NAME), &json, MODE_PUBLIC)
    }

    /// The state of `rel`'s signature, from a stat of the file and its `.sig`.
    pub fn status(&self, files_root: &Path, rel: &str) -> SigStatus {
        let Some(rec) = self.files.get(rel) else {
            return SigStatus::Missing;
        };
        let file = files_root.join(rel);
        let sig = files_root.join(format!("{rel}.sig"));
        match (stat(&file), sig.is_file()) {
            (Some((size, mtime)), true) if size == rec.size && mtime == rec.mtime_ns => {
                SigStatus::Current
            }
            (_, false) => SigStatus::Missing,
            _ => SigStatus::Stale,
        }
    }
}

fn stat(p: &Path) -> Option<(u64, i128)> {
    let m = std::fs::metadata(p).ok()?;
    let t = m.modified().ok()?;
    let ns = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
    Some((m.len(), ns))
}

/// Files a board may boot: every regular file under the root except signatures and
/// dot-names (which are never served), and every symlink to one that stays beneath the root
/// (`vmlinuz -> vmlinuz-6.1` is served as `vmlinuz`, so `vmlinuz.sig` must exist too).
pub fn boot_files(files_root: &Path) -> Result<Vec<String>> {
    fn links_inside(root: &Path, p: &Path) -> bool {
        let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        std::fs::canonicalize(p).is_ok_and(|real| real.starts_with(&real_root) && real.is_file())
    }
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))?;
        for e in rd {
            let e = e.map_err(|e| Error::io("cannot list", dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let p = e.path();
            let ft = e.file_type().map_err(|e| Error::io("cannot stat", &p, e))?;
            if ft.is_dir() {
                walk(root, &p, out)?;
            } else if (ft.is_file() || (ft.is_symlink() && links_inside(root, &p)))
                && !name.ends_with(".sig")
            {
                if let Ok(rel) = p.strip_prefix(root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if files_root.is_dir() {
        walk(files_root, files_root, &mut out)?;
    }
    out.sort();
    Ok(out)
}

/// Whether every boot file of a `check` report can pass `imgverify`.
pub fn verdict(report: &[FileStatus]) -> Result<()> {
    let bad = report
        .iter()
        .filter(|f| f.status != SigStatus::Current)
        .count();
    let refused = report
        .iter()
        .filter(|f| f.secure_boot == Some(false))
        .count();
    match (bad, refused) {
        (0, 0) => Ok(()),
        (0, n) => Err(Error::invalid(format!(
            "{n} EFI executable(s) lack the farm's Secure Boot signature: firmware with Secure \
             Boot on refuses them; run `ipxe-ca sign-files`"
        ))),
        (bad, _) => Err(Error::invalid(format!(
            "{bad} of {} boot files have no current signature: run `ipxe-ca sign-files`",
            report.len()
        ))),
    }
}

/// Every boot file with the state of its signature; with the farm's Secure Boot certificate,
/// whether each EFI executable carries its signature too.
pub fn check(
    files_root: &Path,
    secure_boot: Option<&crate::secure_boot::Trust>,
) -> Result<Vec<FileStatus>> {
    let index = Index::load(files_root)?;
    boot_files(files_root)?
        .into_iter()
        .map(|path| {
            let secure_boot = match secure_boot {
                Some(t) => {
                    let file = files_root.join(&path);
                    match crate::secure_boot::is_pe_header(&read_head(&file)?) {
                        true => Some(t.has_signed(&state::read(&file)?)),
                        false => None,
                    }
                }
                None => None,
            };
            Ok(FileStatus {
                status: index.status(files_root, &path),
                path,
                secure_boot,
            })
        })
        .collect()
}

/// What `sign` did to one file.
#[derive(Clone, Debug, Serialize)]
pub struct SignOutcome {
    /// Path relative to the files directory.
    pub path: String,
    /// `signed`, or `unchanged` when its signature was current.
    pub action: &'static str,
    /// An EFI executable that now carries the Secure Boot key's signature (false: not an
    /// EFI executable, or the farm has no Secure Boot key).
    pub secure_boot: bool,
}

/// Sign `paths` (relative to, or inside, `files_root`; all boot files when empty), skipping
/// files whose signature is current unless `force`. With a Secure Boot key, EFI executables
/// (EFI-stub kernels) get its Authenticode signature first, which the detached signature then
/// covers.
pub fn sign_files(
    signer: &Signer,
    secure_boot: Option<&crate::secure_boot::Signer>,
    files_root: &Path,
    paths: &[PathBuf],
    force: bool,
) -> Result<Vec<SignOutcome>> {
    let root = std::fs::canonicalize(files_root)
        .map_err(|e| Error::io("cannot open the files directory", files_root, e))?;
    let rels: Vec<String> = if paths.is_empty() {
        boot_files(&root)?
    } else {
        paths
            .iter()
            .map(|p| relative(&root, p))
            .collect::<Result<_>>()?
    };
    // Refuse before signing anything: bad input changes nothing.
    for rel in &rels {
        let file = root.join(rel);
        let head = read_head(&file)?;
        let len = std::fs::metadata(&file)
            .map_err(|e| Error::io("cannot read", &file, e))?
            .len();
        if looks_like_key(&head, len) {
            return Err(Error::invalid(format!(
                "{}: this is private key material, not a boot file; move it out of the files directory (everything there is served)",
                file.display()
            )));
        }
    }
    let mut index = Index::load(&root)?;
    let mut out = Vec::new();
    for rel in rels {
        let file = root.join(&rel);
        let efi = secure_boot.is_some() && crate::secure_boot::is_pe_header(&read_head(&file)?);
        // What is signed below, read once with the stat taken before it.
        let mut read = None;
        let needs_sb = match secure_boot {
            Some(sb) if efi => {
                let before = stat(&file);
                let data = state::read(&file)?;
                let needs = !sb.has_signed(&data);
                read = Some((before, data));
                needs
            }
            _ => false,
        };
        if !force && !needs_sb && index.status(&root, &rel) == SigStatus::Current {
            out.push(SignOutcome {
                path: rel,
                action: "unchanged",
                secure_boot: efi,
            });
            continue;
        }
        if let (Some(sb), true) = (secure_boot, needs_sb) {
            // In place, where a link leads (a `vmlinuz -> vmlinuz-6.1` stays a link).
            use std::os::unix::fs::PermissionsExt;
            let real =
                std::fs::canonicalize(&file).map_err(|e| Error::io("cannot resolve", &file, e))?;
            let mode = std::fs::metadata(&real)
                .map_err(|e| Error::io("cannot read", &real, e))?
                .permissions()
                .mode();
            let Some((_, data)) = read.take() else {
                return Err(Error::invalid("internal: an EFI file to sign was not read"));
            };
            state::write_atomic(&real, &sb.sign(&data)?, mode & 0o7777)?;
        }
        // A file just signed for Secure Boot is read back: its signature is for what is there.
        let (before, data) = match read {
            Some(r) => r,
            None => (stat(&file), state::read(&file)?),
        };
        let sig = signer.sign(&data)?;
        // A file rewritten while we read it would get a signature for neither version.
        let (size, mtime_ns) = match (before, stat(&file)) {
            (Some(a), Some(b)) if a == b && a.0 == data.len() as u64 => a,
            _ => {
                return Err(Error::invalid(format!(
                    "{} changed while it was being signed: sign again once it is complete",
                    file.display()
                )))
            }
        };
        state::write_atomic(&root.join(format!("{rel}.sig")), &sig, MODE_PUBLIC)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data);
        index.files.insert(
            rel.clone(),
            Signed {
                size,
                mtime_ns,
                sha256: hex::encode(digest.as_ref()),
            },
        );
        out.push(SignOutcome {
            path: rel,
            action: "signed",
            secure_boot: efi,
        });
    }
    index.save(&root)?;
    Ok(out)
}

/// `p` as a path relative to `root`, refusing anything outside it or not a boot file.
fn relative(root: &Path, p: &Path) -> Result<String> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else if p.exists() {
        std::env::current_dir()
            .map_err(|e| Error::io("cannot read the current directory", ".", e))?
            .join(p)
    } else {
        root.join(p)
    };
    let real = std::fs::canonicalize(&abs).map_err(|e| Error::io("cannot sign", &abs, e))?;
    let rel = real.strip_prefix(root).map_err(|_| {
        Error::invalid(format!(
            "{} is not under the files directory {}: only served files are signed",
            p.display(),
            root.display()
        ))
    })?;
    let rel = rel.to_string_lossy().into_owned();
    if !real.is_file() || rel.ends_with(".sig") || rel.split('/').any(|s| s.starts_with('.')) {
        return Err(Error::invalid(format!(
            "{}: not a boot file (a regular file, not a .sig, not a dot-name)",
            p.display()
        )));
    }
    Ok(rel)
}

fn read_head(p: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut buf))
        .map_err(|e| Error::io("cannot read", p, e))?;
    Ok(buf)
}

/// Private keys, whatever the file is called: PEM, DER (PKCS#8, encrypted PKCS#8, PKCS#1,
/// SEC1), or an iPXE script that sets one (`set privkey:hexraw …`, as a build's
/// `autoexec.ipxe` does). `data` is the file's head, `len` the whole file's length.
/// `serve` runs it on every file it opens: searched with SIMD, not byte by byte (64 KiB took
/// longer to scan than to read).
pub fn looks_like_key(data: &[u8], len: u64) -> bool {
    use memchr::memmem;
    memmem::find(data, b"PRIVATE KEY-----").is_some()
        || memmem::find_iter(data, b"privkey")
            .any(|i| matches!(data.get(i + 7), Some(b':' | b' ' | b'\t')))
        || is_der_key(data, len)
}

/// A whole file that is one DER private key structure (keys are small: all of it is in the
/// head). Certificates, CRLs and CMS signatures have other shapes.
fn is_der_key(data: &[u8], len: u64) -> bool {
    use crate::ca::der_tlv;
    if len != data.len() as u64 {
        return false;
    }
    let Some((0x30, body, [])) = der_tlv(data) else {
        return false;
    };
    match der_tlv(body) {
        // PKCS#8 (v1, v2), PKCS#1 RSAPrivateKey, SEC1 ECPrivateKey: a version first.
        Some((0x02, [0 | 1], after)) => matches!(der_tlv(after), Some((0x30 | 0x02 | 0x04, _, _))),
        // Encrypted PKCS#8: the algorithm, then the encrypted key, and nothing else.
        Some((0x30, alg, after)) => {
            alg.first() == Some(&0x06) && matches!(der_tlv(after), Some((0x04, _, [])))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openssl(args: &[&str]) -> Vec<u8> {
        let o = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    }

    /// A record for `rel` as `sign` would leave it: its size and mtime now.
    fn recorded(root: &Path, rel: &str) -> Index {
        let (size, mtime_ns) = stat(&root.join(rel)).unwrap();
        let mut index = Index::default();
        index.files.insert(
            rel.into(),
            Signed {
                size,
                mtime_ns,
                sha256: String::new(),
            },
        );
        index
    }

    #[test]
    fn a_signature_is_current_only_while_file_and_sig_are_as_signed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::write(root.join("vmlinuz"), b"kernel one").unwrap();
        std::fs::write(root.join("vmlinuz.sig"), b"sig").unwrap();
        let index = recorded(root, "vmlinuz");
        assert_eq!(index.status(root, "vmlinuz"), SigStatus::Current);
        assert_eq!(index.status(root, "initrd"), SigStatus::Missing);
        // Same size, new bytes and a new mtime: stale, not current.
        let f = std::fs::File::options()
            .write(true)
            .open(root.join("vmlinuz"))
            .unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(index.status(root, "vmlinuz"), SigStatus::Stale);
        // The record still matches, but the .sig is gone: missing.
        let index = recorded(root, "vmlinuz");
        std::fs::remove_file(root.join("vmlinuz.sig")).unwrap();
        assert_eq!(index.status(root, "vmlinuz"), SigStatus::Missing);
    }

    #[test]
    fn an_index_that_cannot_be_read_is_an_error_not_an_empty_one() {
        let t = tempfile::tempdir().unwrap();
        assert!(Index::load(t.path()).unwrap().files.is_empty());
        std::fs::create_dir(t.path().join(INDEX_NAME)).unwrap();
        assert!(Index::load(t.path()).is_err());
    }

    #[test]
    fn boot_files_are_regular_files_and_links_to_files_beneath_the_root() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("files");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, b"not served").unwrap();
        std::fs::write(root.join("vmlinuz-6.1"), b"k").unwrap();
        std::fs::write(root.join("sub/initrd"), b"i").unwrap();
        std::fs::write(root.join("vmlinuz-6.1.sig"), b"s").unwrap();
        std::fs::write(root.join(".hidden"), b"h").unwrap();
        symlink("vmlinuz-6.1", root.join("vmlinuz")).unwrap();
        symlink(&outside, root.join("escape")).unwrap();
        symlink("sub", root.join("folder-link")).unwrap();
        symlink("nowhere", root.join("dangling")).unwrap();
        assert_eq!(
            boot_files(&root).unwrap(),
            ["sub/initrd", "vmlinuz", "vmlinuz-6.1"]
        );
    }

    /// Keys in every form openssl writes are key material by content; certificates, CRL-like
    /// DER, CMS signatures and boot files are not.
    #[test]
    fn private_keys_are_recognised_in_any_form_and_nothing_else_is() {
        let t = tempfile::tempdir().unwrap();
        let key = t.path().join("k.pem");
        let k = key.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            k,
        ]);
        let ec = t.path().join("ec.pem");
        let e = ec.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            e,
        ]);
        let is_key = |d: &[u8]| looks_like_key(d, d.len() as u64);
        for (what, der) in [
            ("PKCS#8", openssl(&["pkey", "-in", k, "-outform", "DER"])),
            (
                "PKCS#1",
                openssl(&["rsa", "-in", k, "-traditional", "-outform", "DER"]),
            ),
            ("SEC1", openssl(&["ec", "-in", e, "-outform", "DER"])),
            ("EC PKCS#8", openssl(&["pkey", "-in", e, "-outform", "DER"])),
            (
                "encrypted PKCS#8",
                openssl(&[
                    "pkcs8", "-topk8", "-in", k, "-outform", "DER", "-passout", "pass:x",
                ]),
            ),
        ] {
            assert!(is_key(&der), "{what}");
            // Only the whole file is a key: a kernel that starts with such bytes is not.
            assert!(
                !looks_like_key(&der, der.len() as u64 + 1),
                "{what} as a prefix"
            );
            let mut longer = der.clone();
            longer.push(0);
            assert!(!is_key(&longer), "{what} with a byte after it");
        }
        assert!(is_key(&std::fs::read(&key).unwrap()), "PEM");
        assert!(is_key(b"#!ipxe\nset privkey:hexraw 3082\n"));
        // Anywhere in the head, also at its very end; "privkey" alone at the end is no setting.
        let mut head = vec![b'x'; 64 * 1024 - 16];
        head.extend_from_slice(b"PRIVATE KEY-----");
        assert!(is_key(&head));
        let mut head = vec![b'x'; 64 * 1024 - 8];
        head.extend_from_slice(b"privkey\t");
        assert!(is_key(&head));
        head.pop();
        assert!(!is_key(&head));
        assert!(!is_key(b"privkeys are elsewhere"));
        assert!(is_key(b"#!ipxe\nset privkey 3082\n"));
        let cert = t.path().join("c.pem");
        openssl(&[
            "req",
            "-x509",
            "-key",
            k,
            "-subj",
            "/CN=x",
            "-days",
            "1",
            "-out",
            cert.to_str().unwrap(),
        ]);
        let cert_der = openssl(&["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"]);
        for (what, data) in [
            ("a certificate in DER", cert_der.clone()),
            ("a certificate in PEM", std::fs::read(&cert).unwrap()),
            ("a boot script", b"#!ipxe\nkernel vmlinuz\nboot\n".to_vec()),
            ("a kernel", vec![0x4d, 0x5a, 0x90, 0x00, 0x03]),
            ("a lone SEQUENCE", vec![0x30, 0x00]),
            (
                "a version and nothing else",
                vec![0x30, 0x03, 0x02, 0x01, 0x00],
            ),
            (
                "version 2",
                vec![0x30, 0x06, 0x02, 0x01, 0x02, 0x04, 0x01, 0x00],
            ),
        ] {
            assert!(!is_key(&data), "{what}");
        }
        assert!(
            is_key(&[0x30, 0x06, 0x02, 0x01, 0x01, 0x04, 0x01, 0x00]),
            "SEC1 shape"
        );
        assert!(
            is_key(&[0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]),
            "PKCS#1 shape"
        );
        assert!(
            is_key(&[0x30, 0x07, 0x30, 0x01, 0x06, 0x04, 0x02, 0x00, 0x00]),
            "encrypted shape"
        );
        assert!(
            !is_key(&[0x30, 0x07, 0x30, 0x01, 0x02, 0x04, 0x02, 0x00, 0x00]),
            "no OID"
        );
        assert!(
            !is_key(&[0x30, 0x08, 0x30, 0x01, 0x06, 0x04, 0x01, 0x00, 0x05, 0x00]),
            "trailing"
        );
    }
}
