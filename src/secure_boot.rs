//! UEFI Secure Boot under the farm's own keys: a db key in the state dir, and Authenticode
//! signatures (what `sbsign` writes) on the EFI executables ipxe-ca builds and on EFI kernels,
//! which the firmware checks before it runs them.
//!
//! An Authenticode signature is a PKCS#7 SignedData over an `SpcIndirectDataContent` that
//! holds the SHA-256 of the PE image (its headers and sections, without the checksum, the
//! certificate-table entry and the table itself), appended to the image in a
//! `WIN_CERTIFICATE`. Adding one leaves the image's hash unchanged, so a kernel may carry its
//! distribution's signature and ours.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::der_tlv;
use crate::der::{algorithm, seq, signed_content_info, tlv, SigningKey, OID_RSA, OID_SHA256};
use crate::error::{Error, Result};
use crate::store::cached::{Cached, Look};
use crate::store::state::{self, Key, StateDir, MODE_PUBLIC};
use crate::types::Fingerprint;

/// 1.3.6.1.4.1.311.2.1.4: SPC_INDIRECT_DATA.
const OID_SPC_INDIRECT_DATA: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x04];
/// 1.3.6.1.4.1.311.2.1.15: SPC_PE_IMAGE_DATA.
const OID_SPC_PE_IMAGE_DATA: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x01, 0x0f];
/// 1.2.840.113549.1.9.3: contentType.
const OID_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
/// 1.2.840.113549.1.9.4: messageDigest.
const OID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];

/// `WIN_CERT_REVISION_2_0`, `WIN_CERT_TYPE_PKCS_SIGNED_DATA`.
const WIN_CERT_REVISION: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS: u16 = 0x0002;

/// EFI_GLOBAL_VARIABLE 8be4df61-93ca-11d2-aa0d-00e098032b8c (PK, KEK), on-disk form.
const EFI_GLOBAL_VARIABLE: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];
/// EFI_IMAGE_SECURITY_DATABASE_GUID d719b2cb-3d3a-4596-a3bc-dad00e67656f (db).
const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = [
    0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f,
];
/// EFI_CERT_TYPE_PKCS7_GUID 4aafd29d-68df-49ee-8aa9-347d375665a7.
const EFI_CERT_TYPE_PKCS7: [u8; 16] = [
    0x9d, 0xd2, 0xaf, 0x4a, 0xdf, 0x68, 0xee, 0x49, 0x8a, 0xa9, 0x34, 0x7d, 0x37, 0x56, 0x65, 0xa7,
];
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS.
pub const AUTH_ATTRIBUTES: u32 = 0x27;
/// `WIN_CERT_TYPE_EFI_GUID`.
const WIN_CERT_TYPE_EFI_GUID: u16 = 0x0ef1;

/// Where a PE image keeps what its Authenticode hash skips.
#[derive(Debug, Clone, Copy)]
struct Layout {
    checksum: usize,
    cert_dir: usize,
    headers_end: usize,
    /// The certificate table: (file offset, size); size 0 when unsigned.
    cert_table: (usize, usize),
}

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?))
}

/// Whether `head` (a file's first bytes) starts a PE image: an EFI executable or an EFI-stub
/// kernel.
pub fn is_pe_header(head: &[u8]) -> bool {
    pe_machine(head).is_some()
}

/// The machine a PE image is for (its COFF header's `Machine`: 0x8664 x86_64, 0xaa64 arm64),
/// read from the file's first bytes; None when they do not start a PE image.
pub fn pe_machine(head: &[u8]) -> Option<u16> {
    let pe = u32_at(head, 0x3c)? as usize;
    if head.get(0..2) != Some(b"MZ") || head.get(pe..pe + 4) != Some(b"PE\0\0") {
        return None;
    }
    u16_at(head, pe + 4)
}

fn parse(d: &[u8]) -> Result<(Layout, Vec<(usize, usize)>)> {
    let bad = |why: &str| Error::invalid(format!("not a PE image ({why})"));
    if d.get(0..2) != Some(b"MZ") {
        return Err(bad("no MZ header"));
    }
    let pe = u32_at(d, 0x3c).ok_or_else(|| bad("truncated"))? as usize;
    if d.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(bad("no PE signature"));
    }
    let sections = u16_at(d, pe + 6).ok_or_else(|| bad("truncated"))? as usize;
    let opt_size = u16_at(d, pe + 20).ok_or_else(|| bad("truncated"))? as usize;
    let opt = pe + 24;
    let dirs = match u16_at(d, opt).ok_or_else(|| bad("truncated"))? {
        0x10b => opt + 96,
        0x20b => opt + 112,
        _ => return Err(bad("unknown optional header")),
    };
    let count = u32_at(d, dirs - 4).ok_or_else(|| bad("truncated"))? as usize;
    if count < 5 || dirs + 5 * 8 > opt + opt_size {
        return Err(bad("no certificate table entry"));
    }
    let cert_dir = dirs + 4 * 8;
    let table_off = u32_at(d, cert_dir).ok_or_else(|| bad("truncated"))? as usize;
    let table_size = u32_at(d, cert_dir + 4).ok_or_else(|| bad("truncated"))? as usize;
    let headers_end = u32_at(d, opt + 60).ok_or_else(|| bad("truncated"))? as usize;
    if headers_end > d.len() || cert_dir + 8 > headers_end {
        return Err(bad("headers out of bounds"));
    }
    if table_size > 0 && table_off.checked_add(table_size) != Some(d.len()) {
        return Err(bad("the certificate table is not at the end of the file"));
    }
    let table = opt + opt_size;
    let mut raw = Vec::new();
    for i in 0..sections {
        let s = table + i * 40;
        let size = u32_at(d, s + 16).ok_or_else(|| bad("truncated section table"))? as usize;
        let off = u32_at(d, s + 20).ok_or_else(|| bad("truncated section table"))? as usize;
        if size > 0 {
            if off.checked_add(size).is_none_or(|end| end > d.len()) {
                return Err(bad("a section lies outside the file"));
            }
            raw.push((off, size));
        }
    }
    raw.sort();
    Ok((
        Layout {
            checksum: opt + 64,
            cert_dir,
            headers_end,
            cert_table: (table_off, table_size),
        },
        raw,
    ))
}

/// The Authenticode SHA-256 of a PE image, as the firmware computes it.
pub fn image_hash(d: &[u8]) -> Result<[u8; 32]> {
    let (l, sections) = parse(d)?;
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    h.update(&d[..l.checksum]);
    h.update(&d[l.checksum + 4..l.cert_dir]);
    h.update(&d[l.cert_dir + 8..l.headers_end]);
    let mut hashed = l.headers_end;
    for (off, size) in sections {
        h.update(&d[off..off + size]);
        hashed += size;
    }
    let end = d.len() - l.cert_table.1;
    if end > hashed {
        h.update(&d[hashed..end]);
    }
    let digest = h.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Ok(out)
}

/// The PE checksum (the Windows loader's algorithm; the firmware ignores it, tools show it).
fn pe_checksum(d: &[u8], at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in d.chunks(2).enumerate() {
        if i * 2 == at || i * 2 == at + 2 {
            continue;
        }
        let w = match chunk {
            [a, b] => u16::from_le_bytes([*a, *b]),
            [a] => u16::from(*a),
            _ => 0,
        };
        sum += u64::from(w);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(d.len() as u32)
}

/// A Secure Boot db key and its certificate: what signs EFI executables for boards whose
/// firmware trusts the certificate.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secure_boot::Signer({})", self.key.subject)
    }
}

impl Signer {
    /// A signer from a certificate (PEM or DER) and its RSA key (PEM, unencrypted).
    pub fn new(cert: &[u8], key_pem: &[u8]) -> Result<Signer> {
        let cert_der = crate::ca::cert_der_from_bytes(cert)?;
        if String::from_utf8_lossy(key_pem).contains("ENCRYPTED") {
            return Err(Error::invalid(
                "the Secure Boot key is encrypted: give it unencrypted (openssl pkey -in KEY -out PLAIN.key)",
            ));
        }
        let key_der = crate::ca::board_key_der(key_pem, false)?;
        Ok(Signer {
            key: SigningKey::new(cert_der, &key_der, "Secure Boot")?,
        })
    }

    /// The db key in `state`, if the farm has one (None: images are not signed).
    pub fn load(state: &StateDir) -> Result<Option<Signer>> {
        let (cert, key) = (state.secure_boot_cert(), state.key_file(Key::SecureBootDb));
        if !cert.exists() && !key.exists() {
            return Ok(None);
        }
        Signer::new(&state::read(&cert)?, &state::read(&key)?).map(Some)
    }

    /// Keep `cert` and `key` as the farm's db key (key 0600 in `keys/`): `build` and
    /// `sign-files` sign with it from now on.
    pub fn adopt(state: &StateDir, cert: &[u8], key_pem: &[u8]) -> Result<Signer> {
        let signer = Signer::new(cert, key_pem)?;
        let _lock = state.lock()?;
        state.write_key(Key::SecureBootDb, key_pem)?;
        state::write_atomic(
            &state.secure_boot_cert(),
            crate::ca::cert_pem(&signer.key.cert_der).as_bytes(),
            MODE_PUBLIC,
        )?;
        Ok(signer)
    }

    /// The certificate's subject, for manifests and messages.
    pub fn subject(&self) -> &str {
        &self.key.subject
    }

    /// The SHA-256 fingerprint of the certificate (lowercase hex).
    pub fn fingerprint(&self) -> String {
        Fingerprint::sha256(&self.key.cert_der).to_string()
    }

    /// `image` with this key's Authenticode signature added (after any it carries).
    pub fn sign(&self, image: &[u8]) -> Result<Vec<u8>> {
        let (layout, _) = parse(image)?;
        let mut out = image.to_vec();
        let (table_off, table_size) = match layout.cert_table {
            (_, 0) => {
                // The table starts 8-aligned; the padding is part of what is hashed.
                out.resize(out.len().next_multiple_of(8), 0);
                (out.len(), 0)
            }
            t => t,
        };
        let hash = image_hash(&out)?;
        let pkcs7 = self.pkcs7(&hash)?;
        let mut entry = Vec::with_capacity(pkcs7.len() + 16);
        entry.extend_from_slice(&((8 + pkcs7.len()) as u32).to_le_bytes());
        entry.extend_from_slice(&WIN_CERT_REVISION.to_le_bytes());
        entry.extend_from_slice(&WIN_CERT_TYPE_PKCS.to_le_bytes());
        entry.extend_from_slice(&pkcs7);
        entry.resize(entry.len().next_multiple_of(8), 0);
        out.extend_from_slice(&entry);
        let size = u32::try_from(table_size + entry.len())
            .map_err(|_| Error::invalid("the certificate table grew too large"))?;
        let off = u32::try_from(table_off)
            .map_err(|_| Error::invalid("the image is too large to sign"))?;
        out[layout.cert_dir..layout.cert_dir + 4].copy_from_slice(&off.to_le_bytes());
        out[layout.cert_dir + 4..layout.cert_dir + 8].copy_from_slice(&size.to_le_bytes());
        let sum = pe_checksum(&out, layout.checksum);
        out[layout.checksum..layout.checksum + 4].copy_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    /// The PKCS#7 SignedData over an `SpcIndirectDataContent` naming `hash`.
    fn pkcs7(&self, hash: &[u8; 32]) -> Result<Vec<u8>> {
        // SpcPeImageData: no flags, the file link "<<<Obsolete>>>" in UTF-16BE, as signtool
        // and sbsign write it.
        let obsolete: Vec<u8> = "<<<Obsolete>>>"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        let pe_image_data = seq(&[
            &[0x03, 0x01, 0x00],
            &tlv(0xa0, &tlv(0xa2, &tlv(0x80, &obsolete))),
        ]);
        let indirect = seq(&[
            &seq(&[&tlv(0x06, OID_SPC_PE_IMAGE_DATA), &pe_image_data]),
            &seq(&[&algorithm(OID_SHA256), &tlv(0x04, hash)]),
        ]);
        // The signed digest is of the content's value, without its SEQUENCE header.
        let (_, value, _) =
            der_tlv(&indirect).ok_or_else(|| Error::invalid("internal: SpcIndirectDataContent"))?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value);
        let attrs = [
            seq(&[
                &tlv(0x06, OID_CONTENT_TYPE),
                &tlv(0x31, &tlv(0x06, OID_SPC_INDIRECT_DATA)),
            ]),
            seq(&[
                &tlv(0x06, OID_MESSAGE_DIGEST),
                &tlv(0x31, &tlv(0x04, digest.as_ref())),
            ]),
        ]
        .concat();
        let sig = self.key.sign(&tlv(0x31, &attrs))?;
        let signer_info = seq(&[
            &tlv(0x02, &[1]),
            &self.key.signer_id(),
            &algorithm(OID_SHA256),
            &tlv(0xa0, &attrs),
            &algorithm(OID_RSA),
            &tlv(0x04, &sig),
        ]);
        let signed_data = seq(&[
            &tlv(0x02, &[1]),
            &tlv(0x31, &algorithm(OID_SHA256)),
            &seq(&[&tlv(0x06, OID_SPC_INDIRECT_DATA), &tlv(0xa0, &indirect)]),
            &tlv(0xa0, &self.key.cert_der),
            &tlv(0x31, &signer_info),
        ]);
        Ok(signed_content_info(&signed_data))
    }

    /// Whether `image` carries this key's signature over its current contents.
    pub fn has_signed(&self, image: &[u8]) -> bool {
        self.trust().has_signed(image)
    }

    /// What checks this key's signatures.
    pub fn trust(&self) -> Trust {
        Trust {
            cert_der: self.key.cert_der.clone(),
        }
    }
}

/// The db certificate alone: enough to tell whether an image carries its signature (what
/// `sign-files --check` needs; no key).
#[derive(Clone, Debug)]
pub struct Trust {
    cert_der: Vec<u8>,
}

impl Trust {
    /// The farm's db certificate, if it has a Secure Boot key.
    pub fn load(state: &StateDir) -> Result<Option<Trust>> {
        let cert = state.secure_boot_cert();
        if !cert.exists() {
            return Ok(None);
        }
        Ok(Some(Trust {
            cert_der: crate::ca::cert_der_from_bytes(&state::read(&cert)?)?,
        }))
    }

    /// The SHA-256 fingerprint of the certificate (lowercase hex), as manifests name it.
    pub fn fingerprint(&self) -> String {
        Fingerprint::sha256(&self.cert_der).to_string()
    }

    /// Whether `image` carries a signature by this certificate's key over its current
    /// contents, the signature checked: what firmware with this certificate in its db runs.
    pub fn has_signed(&self, image: &[u8]) -> bool {
        let Ok(hash) = image_hash(image) else {
            return false;
        };
        signatures(image)
            .iter()
            .any(|p| verifies(p, &self.cert_der, &hash).unwrap_or(false))
    }
}

/// Whether the PKCS#7 blob `p` is a signature by `cert_der`'s key over an
/// `SpcIndirectDataContent` naming `hash`.
fn verifies(p: &[u8], cert_der: &[u8], hash: &[u8; 32]) -> Option<bool> {
    // ContentInfo { OID, [0] { SignedData } }
    let (_, ci, _) = der_tlv(p)?;
    let (_, _oid, rest) = der_tlv(ci)?;
    let (_, sd_wrap, _) = der_tlv(rest)?;
    let (_, sd, _) = der_tlv(sd_wrap)?;
    let (_, _version, rest) = der_tlv(sd)?;
    let (_, _algs, rest) = der_tlv(rest)?;
    let (_, encap, mut rest) = der_tlv(rest)?;
    let (_, _ctype, econtent) = der_tlv(encap)?;
    let (_, indirect_full, _) = der_tlv(econtent)?;
    // The signed digest is of the content's value, the image hash at its end.
    let (_, indirect, _) = der_tlv(indirect_full)?;
    if !indirect.ends_with(hash) {
        return Some(false);
    }
    let mut signer_infos = None;
    while !rest.is_empty() {
        let (tag, v, r) = der_tlv(rest)?;
        if tag == 0x31 {
            signer_infos = Some(v);
        }
        rest = r;
    }
    let (_, si, _) = der_tlv(signer_infos?)?;
    let (_, _v, r) = der_tlv(si)?;
    let (_, _sid, r) = der_tlv(r)?;
    let (_, _digest_alg, r) = der_tlv(r)?;
    let (tag, attrs, r) = der_tlv(r)?;
    if tag != 0xa0 {
        return Some(false);
    }
    let (_, _sig_alg, r) = der_tlv(r)?;
    let (_, sig, _) = der_tlv(r)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, indirect);
    if !attrs
        .windows(digest.as_ref().len())
        .any(|w| w == digest.as_ref())
    {
        return Some(false);
    }
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        cert.public_key().subject_public_key.data.as_ref(),
    );
    Some(key.verify(&tlv(0x31, attrs), sig).is_ok())
}

/// The PKCS#7 blobs in an image's certificate table.
pub fn signatures(image: &[u8]) -> Vec<Vec<u8>> {
    let Ok((l, _)) = parse(image) else {
        return Vec::new();
    };
    let (mut at, end) = (l.cert_table.0, l.cert_table.0 + l.cert_table.1);
    let mut out = Vec::new();
    while at + 8 <= end {
        let Some(len) = u32_at(image, at).map(|n| n as usize) else {
            break;
        };
        if len < 8 || at + len > end {
            break;
        }
        if u16_at(image, at + 6) == Some(WIN_CERT_TYPE_PKCS) {
            out.push(image[at + 8..at + len].to_vec());
        }
        at += len.next_multiple_of(8);
    }
    out
}

/// What `serve` knows of Secure Boot: the db certificate (read again when it changes) and,
/// per version of a boot file, whether it carries that key's signature (hashing a kernel
/// costs milliseconds: once per version, not per request).
pub(crate) struct Seen {
    trust: Cached<Option<std::sync::Arc<Trust>>>,
    signed: std::sync::Mutex<std::collections::HashMap<state::FileVersion, bool>>,
}

impl Seen {
    /// The farm's db certificate in `st` as it is now.
    pub(crate) fn new(st: &StateDir) -> Seen {
        let read = || {
            Ok::<_, std::convert::Infallible>(
                Trust::load(st).ok().flatten().map(std::sync::Arc::new),
            )
        };
        Seen {
            trust: match Cached::new(vec![st.secure_boot_cert()], read) {
                Ok(c) => c,
                Err(e) => match e {},
            },
            signed: Default::default(),
        }
    }

    /// The farm's db certificate now (a `stat` per look), if it has one; one that does not
    /// parse counts as none until it changes.
    pub(crate) fn trust(&self, st: &StateDir) -> Option<std::sync::Arc<Trust>> {
        let read = || {
            Ok::<_, Error>(Some(
                Trust::load(st).ok().flatten().map(std::sync::Arc::new),
            ))
        };
        let (trust, _) = self
            .trust
            .get(Look::Every(std::time::Duration::ZERO), |_| read());
        Option::clone(&trust)
    }

    /// Whether the EFI executable `file` (of metadata `meta`) lacks `trust`'s signature;
    /// false for anything that is not an EFI executable.
    pub(crate) fn refused(
        &self,
        trust: &Trust,
        file: &std::fs::File,
        meta: &std::fs::Metadata,
    ) -> bool {
        use std::os::unix::fs::FileExt;
        let version = state::version_of(meta);
        if let Some(known) = self
            .signed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&version)
        {
            return !known;
        }
        let mut head = [0u8; 1024];
        let n = file.read_at(&mut head, 0).unwrap_or(0);
        if !is_pe_header(&head[..n]) {
            return false;
        }
        let mut data = vec![0u8; meta.len() as usize];
        let signed = file.read_exact_at(&mut data, 0).is_ok() && trust.has_signed(&data);
        let mut seen = self.signed.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= 1024 {
            seen.clear();
        }
        seen.insert(version, signed);
        !signed
    }
}

/// The three Secure Boot variables, in the order firmware takes them in user mode: db and
/// KEK first, PK last (setting PK ends setup mode).
pub const VARIABLES: [(&str, &str); 3] = [
    ("db", "d719b2cb-3d3a-4596-a3bc-dad00e67656f"),
    ("KEK", "8be4df61-93ca-11d2-aa0d-00e098032b8c"),
    ("PK", "8be4df61-93ca-11d2-aa0d-00e098032b8c"),
];

/// What `secure-boot init` wrote for an operator to enroll.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Enrollment {
    /// The folder holding them (`DIR/secure-boot`).
    pub dir: std::path::PathBuf,
    /// Per variable (PK, KEK, db): certificate (PEM `.crt`, DER `.cer`), EFI signature list
    /// (`.esl`) and signed authenticated-variable update (`.auth`).
    pub files: Vec<std::path::PathBuf>,
    /// The db certificate's subject and SHA-256: what signs from now on.
    pub db: String,
}

/// A new key and self-signed certificate for one Secure Boot role.
struct Made {
    key: SigningKey,
    key_pem: String,
}

fn make(cn: &str) -> Result<Made> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyUsagePurpose, SerialNumber};
    let key = crate::ca::generate_key(crate::ca::KeySize::Rsa2048)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&crate::ca::random_serial()?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Firmware checks no dates; tools that do see a certificate valid for a board's life.
    params.not_before = crate::ca::BOARDS_CLOCK_FLOOR;
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30 * 365);
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::crypto(format!("cannot make the {cn} certificate"), e))?;
    Ok(Made {
        key: SigningKey::new(cert.der().to_vec(), &key.serialize_der(), "new Secure Boot")?,
        key_pem: key.serialize_pem(),
    })
}

/// `EFI_TIME` for `t` (UTC, no nanoseconds), as authenticated variables carry it.
fn efi_time(t: time::OffsetDateTime) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..2].copy_from_slice(&(t.year() as u16).to_le_bytes());
    out[2] = u8::from(t.month());
    out[3] = t.day();
    out[4] = t.hour();
    out[5] = t.minute();
    out[6] = t.second();
    out
}

/// An authenticated-variable update (`.auth`: EFI_VARIABLE_AUTHENTICATION_2 then the data)
/// setting `name` to `esl`, signed by `by`.
fn auth(name: &str, guid: &[u8; 16], esl: &[u8], by: &Made, at: [u8; 16]) -> Result<Vec<u8>> {
    let mut signed: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    signed.extend_from_slice(guid);
    signed.extend_from_slice(&AUTH_ATTRIBUTES.to_le_bytes());
    signed.extend_from_slice(&at);
    signed.extend_from_slice(esl);
    // The SignedData itself, not wrapped in a ContentInfo: what UEFI expects there.
    let pkcs7 = by.key.detached(&[], &signed)?;
    let mut out = at.to_vec();
    out.extend_from_slice(&((8 + 16 + pkcs7.len()) as u32).to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_EFI_GUID.to_le_bytes());
    out.extend_from_slice(&EFI_CERT_TYPE_PKCS7);
    out.extend_from_slice(&pkcs7);
    out.extend_from_slice(esl);
    Ok(out)
}

/// New PK, KEK and db keys for boards whose firmware the operator enrolls them in: the keys
/// in `keys/secure-boot/` (0600), and in `secure-boot/` what firmware setup menus,
/// `efi-updatevar` and KeyTool take (`.cer`, `.esl`, `.auth`: PK and KEK signed by PK, db by
/// KEK). The db key then signs. Refused where a db key exists, unless `replace`.
pub fn init(st: &StateDir, replace: bool) -> Result<Enrollment> {
    st.require_ca()?;
    if !replace && (st.has_key(Key::SecureBootDb) || st.secure_boot_cert().exists()) {
        return Err(Error::invalid(format!(
            "{} already holds a Secure Boot db key: boards trust it; replacing it means \
             enrolling new keys in every board",
            st.secure_boot_cert().display()
        )));
    }
    let (pk, kek, db) = (
        make("ipxe-ca Secure Boot PK")?,
        make("ipxe-ca Secure Boot KEK")?,
        make("ipxe-ca Secure Boot db")?,
    );
    let at = efi_time(time::OffsetDateTime::now_utc());
    let esl = |m: &Made| crate::siglist::x509_siglist(&[&m.key.cert_der]);
    let files: Vec<(&str, &Made, Vec<u8>)> = vec![
        (
            "PK",
            &pk,
            auth("PK", &EFI_GLOBAL_VARIABLE, &esl(&pk), &pk, at)?,
        ),
        (
            "KEK",
            &kek,
            auth("KEK", &EFI_GLOBAL_VARIABLE, &esl(&kek), &pk, at)?,
        ),
        (
            "db",
            &db,
            auth("db", &EFI_IMAGE_SECURITY_DATABASE, &esl(&db), &kek, at)?,
        ),
    ];
    let dir = st.secure_boot_dir();
    let _lock = st.lock()?;
    let mut written = Vec::new();
    for (name, m, auth) in &files {
        let key = match *name {
            "PK" => Key::SecureBootPk,
            "KEK" => Key::SecureBootKek,
            _ => Key::SecureBootDb,
        };
        st.write_key(key, m.key_pem.as_bytes())?;
        for (ext, data) in [
            ("crt", crate::ca::cert_pem(&m.key.cert_der).into_bytes()),
            ("cer", m.key.cert_der.clone()),
            ("esl", esl(m)),
            ("auth", auth.clone()),
        ] {
            let p = st.secure_boot_file(name, ext);
            state::write_atomic(&p, &data, MODE_PUBLIC)?;
            written.push(p);
        }
    }
    let signer = Signer::load(st)?
        .ok_or_else(|| Error::invalid("internal: the db key just written is gone"))?;
    Ok(Enrollment {
        dir,
        files: written,
        db: format!("{} (SHA-256 {})", signer.subject(), signer.fingerprint()),
    })
}
