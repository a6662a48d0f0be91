//! UEFI Secure Boot under the farm's own keys: a db key in the state dir, and Authenticode
//! signatures (what `sbsign` writes) on the EFI executables ipxe-ca builds and on EFI kernels,
//! which the firmware checks before it runs them.
//!
//! An Authenticode signature is a PKCS#7 SignedData over an `SpcIndirectDataContent` that
//! holds the SHA-256 of the PE image (its headers and sections, without the checksum, the
//! certificate-table entry and the table itself), appended to the image in a
//! `WIN_CERTIFICATE`. Adding one leaves the image's hash unchanged, so a kernel may carry its
//! distribution's signature and ours.

use std::path::Path;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::der_tlv;
use crate::der::{algorithm, rsa_spki, seq, tlv, OID_RSA, OID_SHA256, OID_SIGNED_DATA};
use crate::error::{Error, Result};
use crate::state::{self, StateDir, MODE_PUBLIC, MODE_SECRET};

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
    let pe = u32_at(head, 0x3c).map(|o| o as usize);
    head.get(0..2) == Some(b"MZ") && pe.is_some_and(|o| head.get(o..o + 4) == Some(b"PE\0\0"))
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
    cert_der: Vec<u8>,
    key: aws_lc_rs::rsa::KeyPair,
    issuer_raw: Vec<u8>,
    serial_raw: Vec<u8>,
    subject: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secure_boot::Signer({})", self.subject)
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
        let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(&key_der)
            .map_err(|e| Error::crypto("cannot load the Secure Boot key (RSA expected)", e))?;
        let (_, c) = X509Certificate::from_der(&cert_der)
            .map_err(|e| Error::crypto("cannot parse the Secure Boot certificate", e))?;
        if c.public_key().raw != rsa_spki(&key)?.as_slice() {
            return Err(Error::invalid(
                "the Secure Boot key does not belong to the certificate given with it",
            ));
        }
        Ok(Signer {
            issuer_raw: c.issuer().as_raw().to_vec(),
            serial_raw: c.tbs_certificate.raw_serial().to_vec(),
            subject: c.subject().to_string(),
            cert_der,
            key,
        })
    }

    /// The db key in `state`, if the farm has one (None: images are not signed).
    pub fn load(state: &StateDir) -> Result<Option<Signer>> {
        let (cert, key) = (state.secure_boot_cert(), state.secure_boot_key());
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
        state::write_atomic(&state.secure_boot_key(), key_pem, MODE_SECRET)?;
        state::write_atomic(
            &state.secure_boot_cert(),
            crate::ca::cert_pem(&signer.cert_der).as_bytes(),
            MODE_PUBLIC,
        )?;
        Ok(signer)
    }

    /// The certificate's subject, for manifests and messages.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The SHA-256 fingerprint of the certificate (lowercase hex).
    pub fn fingerprint(&self) -> String {
        hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &self.cert_der,
        ))
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
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &rng,
                &tlv(0x31, &attrs),
                &mut sig,
            )
            .map_err(|e| Error::crypto("cannot sign for Secure Boot", e))?;
        let signer_info = seq(&[
            &tlv(0x02, &[1]),
            &seq(&[&self.issuer_raw, &tlv(0x02, &self.serial_raw)]),
            &algorithm(OID_SHA256),
            &tlv(0xa0, &attrs),
            &algorithm(OID_RSA),
            &tlv(0x04, &sig),
        ]);
        let signed_data = seq(&[
            &tlv(0x02, &[1]),
            &tlv(0x31, &algorithm(OID_SHA256)),
            &seq(&[&tlv(0x06, OID_SPC_INDIRECT_DATA), &tlv(0xa0, &indirect)]),
            &tlv(0xa0, &self.cert_der),
            &tlv(0x31, &signer_info),
        ]);
        Ok(seq(&[
            &tlv(0x06, OID_SIGNED_DATA),
            &tlv(0xa0, &signed_data),
        ]))
    }

    /// Whether `image` carries this key's signature over its current contents.
    pub fn has_signed(&self, image: &[u8]) -> bool {
        self.trust().has_signed(image)
    }

    /// What checks this key's signatures.
    pub fn trust(&self) -> Trust {
        Trust {
            cert_der: self.cert_der.clone(),
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

/// Sign the EFI executable at `path` in place (atomically, keeping its mode).
pub fn sign_file(signer: &Signer, path: &Path, mode: u32) -> Result<()> {
    let signed = signer.sign(&state::read(path)?)?;
    state::write_atomic(path, &signed, mode)
}
