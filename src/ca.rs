//! Keys, the CA, server and board certificates, CSRs, the CRL and fingerprints.
//! Knows nothing of what a board means: it takes names and returns PEM.

use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevocationReason, RevokedCertParams, RsaKeySize, SanType, SerialNumber,
    PKCS_RSA_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use crate::error::{Error, Result};
use crate::types::{Fingerprint, San, Serial};

/// OID of rsaEncryption: iPXE before v2.0 speaks only RSA, so every key we accept is RSA.
const OID_RSA: &str = "1.2.840.113549.1.1.1";

/// How far back certificates start, so that boards whose clocks run a little behind accept them.
const BACKDATE: Duration = Duration::hours(1);

/// RSA key sizes we generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySize {
    /// 2048 bits: the default, fast on small boards.
    Rsa2048,
    /// 3072 bits.
    Rsa3072,
    /// 4096 bits.
    Rsa4096,
}

impl FromStr for KeySize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "2048" => Ok(KeySize::Rsa2048),
            "3072" => Ok(KeySize::Rsa3072),
            "4096" => Ok(KeySize::Rsa4096),
            _ => Err(Error::invalid(format!(
                "invalid key size {s:?}: use 2048, 3072 or 4096 (RSA; iPXE needs RSA)"
            ))),
        }
    }
}

/// A new RSA key pair.
pub fn generate_key(size: KeySize) -> Result<KeyPair> {
    let s = match size {
        KeySize::Rsa2048 => RsaKeySize::_2048,
        KeySize::Rsa3072 => RsaKeySize::_3072,
        KeySize::Rsa4096 => RsaKeySize::_4096,
    };
    KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, s)
        .map_err(|e| Error::crypto("cannot generate RSA key", e))
}

/// Load an RSA private key from PEM (PKCS#1 or PKCS#8). Encrypted keys are refused with advice.
pub fn load_key(pem: &[u8], what: &str) -> Result<KeyPair> {
    if pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(Error::invalid(format!(
            "{what} is encrypted: decrypt it first, e.g. `openssl pkey -in KEY -out KEY.plain`"
        )));
    }
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| Error::crypto(format!("cannot read {what} as a PEM private key"), e))?;
    KeyPair::from_der_and_sign_algo(&der, &PKCS_RSA_SHA256).map_err(|_| {
        Error::invalid(format!(
            "{what} is not an RSA private key: iPXE before v2.0 supports only RSA, so ipxe-ca uses RSA throughout"
        ))
    })
}

/// A random positive serial of 127 bits (RFC 5280 wants at least 64 bits of entropy).
pub fn random_serial() -> Result<Vec<u8>> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::crypto("random serial", "RNG failure"))?;
    b[0] &= 0x7f;
    if b[0] == 0 {
        b[0] = 1;
    }
    Ok(b.to_vec())
}

/// The size of a certificate's RSA key, when it is one of ours (to re-issue it the same).
pub fn rsa_key_size(der: &[u8]) -> Option<KeySize> {
    use x509_parser::public_key::PublicKey;
    let (_, c) = X509Certificate::from_der(der).ok()?;
    match c.public_key().parsed().ok()? {
        PublicKey::RSA(rsa) => match rsa.key_size() {
            2048 => Some(KeySize::Rsa2048),
            3072 => Some(KeySize::Rsa3072),
            4096 => Some(KeySize::Rsa4096),
            _ => None,
        },
        _ => None,
    }
}

/// The subject alternative names of a certificate (to re-issue it with the same names).
pub fn cert_sans(der: &[u8]) -> Result<Vec<San>> {
    use x509_parser::extensions::GeneralName;
    let (_, c) =
        X509Certificate::from_der(der).map_err(|e| Error::crypto("cannot parse certificate", e))?;
    let mut out = Vec::new();
    if let Ok(Some(ext)) = c.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => out.push(San::Dns(d.to_string())),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => out.push(San::Ip(std::net::IpAddr::from(
                        <[u8; 4]>::try_from(*b).unwrap_or_default(),
                    ))),
                    16 => out.push(San::Ip(std::net::IpAddr::from(
                        <[u8; 16]>::try_from(*b).unwrap_or_default(),
                    ))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(out)
}

/// Facts about a certificate, read from its DER.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// Serial.
    pub serial: Serial,
    /// SHA-1 fingerprint (nginx's `$ssl_client_fingerprint`).
    pub fingerprint_sha1: Fingerprint,
    /// SHA-256 fingerprint.
    pub fingerprint_sha256: Fingerprint,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
}

/// Parse one certificate's DER.
pub fn cert_info(der: &[u8]) -> Result<CertInfo> {
    let (_, c) =
        X509Certificate::from_der(der).map_err(|e| Error::crypto("cannot parse certificate", e))?;
    let common_name = c
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertInfo {
        serial: Serial::from_der_bytes(c.tbs_certificate.raw_serial()),
        fingerprint_sha1: Fingerprint::sha1(der),
        fingerprint_sha256: Fingerprint::sha256(der),
        not_before: c.validity().not_before.to_datetime(),
        not_after: c.validity().not_after.to_datetime(),
        common_name,
    })
}

/// Whether input given as "PEM or DER" is PEM (DER never contains this marker as text).
fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// The first certificate of a PEM or DER input, as DER.
pub fn cert_der_from_bytes(bytes: &[u8]) -> Result<Vec<u8>> {
    if is_pem(bytes) {
        CertificateDer::from_pem_slice(bytes)
            .map(|c| c.to_vec())
            .map_err(|e| Error::crypto("cannot read PEM certificate", e))
    } else {
        Ok(bytes.to_vec())
    }
}

/// PEM text of a DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A newly issued certificate whose key someone else holds (a signed CSR).
#[derive(Debug)]
pub struct Signed {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// The certificate in DER.
    pub cert_der: Vec<u8>,
}

/// A newly issued certificate with the key we generated for it.
#[derive(Debug)]
pub struct Issued {
    /// The certificate.
    pub cert: Signed,
    /// The private key in PKCS#8 PEM.
    pub key_pem: String,
}

impl Issued {
    fn new(cert: Signed, key: &KeyPair) -> Issued {
        Issued {
            cert,
            key_pem: key.serialize_pem(),
        }
    }
}

impl AsRef<Signed> for Signed {
    fn as_ref(&self) -> &Signed {
        self
    }
}

impl AsRef<Signed> for Issued {
    fn as_ref(&self) -> &Signed {
        &self.cert
    }
}

/// One revoked certificate for the CRL.
#[derive(Clone, Debug)]
pub struct Revoked {
    /// Its serial.
    pub serial: Serial,
    /// When it was revoked.
    pub when: OffsetDateTime,
    /// Why.
    pub reason: Reason,
}

/// What a CRL says: the one reader of CRLs, for `serve`, `check`, `crl` and expiry.
#[derive(Clone, Debug)]
pub struct CrlFacts {
    /// The revoked serials.
    pub serials: std::collections::HashSet<Serial>,
    /// Each revoked certificate as listed (kept when a board file cannot be read).
    pub entries: Vec<Revoked>,
    /// When its issuer promises the next one.
    pub next_update: Option<OffsetDateTime>,
    /// Its crlNumber: a newer CRL has a higher one.
    pub number: Option<x509_parser::num_bigint::BigUint>,
}

impl CrlFacts {
    /// The crlNumber where it fits 64 bits (every CRL ipxe-ca writes).
    pub fn number_u64(&self) -> Option<u64> {
        self.number.as_ref().and_then(|n| u64::try_from(n).ok())
    }
}

/// Read a CRL (PEM); with `issuer` (a CA certificate, DER), only one that it signed.
pub fn read_crl(pem: &[u8], issuer: Option<&[u8]>) -> Result<CrlFacts> {
    use rustls_pki_types::CertificateRevocationListDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    use x509_parser::x509::ReasonCode;
    let der = CertificateRevocationListDer::from_pem_slice(pem)
        .map_err(|e| Error::crypto("cannot read the CRL", e))?;
    let (_, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| Error::crypto("cannot parse the CRL", e))?;
    if let Some(ca) = issuer {
        let (_, ca) =
            X509Certificate::from_der(ca).map_err(|e| Error::crypto("CA certificate", e))?;
        crl.verify_signature(ca.public_key())
            .map_err(|_| Error::crypto("the CRL", "not signed by our CA"))?;
    }
    let entries: Vec<Revoked> = crl
        .iter_revoked_certificates()
        .map(|r| Revoked {
            serial: Serial::from_der_bytes(r.raw_serial()),
            when: r.revocation_date.to_datetime(),
            reason: match r.reason_code().map(|(_, c)| c) {
                Some(ReasonCode::KeyCompromise) => Reason::KeyCompromise,
                Some(ReasonCode::AffiliationChanged) => Reason::AffiliationChanged,
                Some(ReasonCode::Superseded) => Reason::Superseded,
                Some(ReasonCode::CessationOfOperation) => Reason::CessationOfOperation,
                _ => Reason::Unspecified,
            },
        })
        .collect();
    Ok(CrlFacts {
        serials: entries.iter().map(|e| e.serial.clone()).collect(),
        entries,
        next_update: crl.next_update().map(|t| t.to_datetime()),
        number: crl.crl_number().cloned(),
    })
}

/// CRL reason codes an operator is likely to need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No particular reason.
    Unspecified,
    /// The board's key may have leaked (a stick was lost).
    KeyCompromise,
    /// The board moved to another role or owner.
    AffiliationChanged,
    /// A new certificate replaces this one.
    Superseded,
    /// The board was retired.
    CessationOfOperation,
}

impl FromStr for Reason {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "unspecified" => Reason::Unspecified,
            "key-compromise" => Reason::KeyCompromise,
            "affiliation-changed" => Reason::AffiliationChanged,
            "superseded" => Reason::Superseded,
            "cessation-of-operation" => Reason::CessationOfOperation,
            _ => {
                return Err(Error::invalid(format!(
                "invalid reason {s:?}: use unspecified, key-compromise, affiliation-changed, superseded or cessation-of-operation"
            )))
            }
        })
    }
}

impl Reason {
    fn rcgen(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }
}

/// Where the certificates a board checks (the CA, the server's, the code signer's) start:
/// the Unix epoch. A board without a real-time-clock battery wakes at its firmware's build
/// date or at 1970, years behind; iPXE allows 12.5 h. Starting there gives no one anything
/// (the end date and the signature are what protect), and every such board can boot. Board
/// certificates are checked by the server, whose clock is right: they start an hour back.
pub const BOARDS_CLOCK_FLOOR: OffsetDateTime = time::macros::datetime!(1970-01-01 0:00 UTC);

/// Who checks a certificate's dates, and so where it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CheckedBy {
    /// The boards, whose clocks may be years behind.
    Boards,
    /// The server (or nginx), whose clock is right.
    Server,
}

fn validity(params: &mut CertificateParams, days: u32, by: CheckedBy) -> Result<()> {
    if days == 0 || days > 36500 {
        return Err(Error::invalid(format!(
            "invalid validity of {days} days: use 1 to 36500"
        )));
    }
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .map_err(|e| Error::crypto("clock", e))?;
    params.not_before = match by {
        CheckedBy::Boards => BOARDS_CLOCK_FLOOR,
        CheckedBy::Server => now - BACKDATE,
    };
    params.not_after = now + Duration::days(i64::from(days));
    Ok(())
}

/// Create a self-signed CA. Returns the certificate and its key (PEM).
pub fn create_ca(name: &str, size: KeySize, days: u32) -> Result<Issued> {
    if name.trim().is_empty() || name.len() > 64 {
        return Err(Error::invalid("CA name must be 1 to 64 characters"));
    }
    let key = generate_key(size)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    validity(&mut params, days, CheckedBy::Boards)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| Error::crypto("cannot create CA certificate", e))?;
    Ok(Issued::new(
        Signed {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
        },
        &key,
    ))
}

/// What a leaf certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leaf {
    Server,
    ServerEcdsa,
    Client,
    CodeSigning,
}

/// A loaded CA able to issue certificates and CRLs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    subject_raw: Vec<u8>,
    key_id: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("issuer", &self.issuer).finish()
    }
}

impl Ca {
    /// Load a CA from its certificate and key (ours, or one made with the openssl CLI).
    /// Checks that the key matches the certificate and that the certificate is a CA.
    pub fn load(cert_pem: &[u8], key_pem: &[u8]) -> Result<Ca> {
        let cert_der = cert_der_from_bytes(cert_pem)?;
        let key = load_key(key_pem, "the CA key")?;
        let (_, x509) = X509Certificate::from_der(&cert_der)
            .map_err(|e| Error::crypto("cannot parse CA certificate", e))?;
        if !x509.is_ca() {
            return Err(Error::invalid(
                "the CA certificate is not a CA (basicConstraints CA:TRUE missing)",
            ));
        }
        if x509.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(Error::invalid(
                "the CA key does not belong to the CA certificate",
            ));
        }
        let subject_raw = x509.subject().as_raw().to_vec();
        let key_id = x509
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
                _ => None,
            })
            .unwrap_or_else(|| CertificateParams::default().key_identifier(&key));
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)
            .map_err(|e| Error::crypto("cannot use CA certificate", e))?;
        Ok(Ca {
            issuer,
            cert_der,
            subject_raw,
            key_id,
        })
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    fn leaf_params(&self, cn: &str, days: u32, kind: Leaf) -> Result<CertificateParams> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        let (usages, eku) = match kind {
            Leaf::Server => (
                vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyEncipherment,
                ],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            // An ECDSA key signs; it never enciphers a key (RSA key exchange).
            Leaf::ServerEcdsa => (
                vec![KeyUsagePurpose::DigitalSignature],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            Leaf::Client => (
                vec![KeyUsagePurpose::DigitalSignature],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            // What iPXE's imgverify demands of a signer.
            Leaf::CodeSigning => (
                vec![KeyUsagePurpose::DigitalSignature],
                ExtendedKeyUsagePurpose::CodeSigning,
            ),
        };
        params.key_usages = usages;
        params.extended_key_usages = vec![eku];
        let by = match kind {
            Leaf::Client => CheckedBy::Server,
            Leaf::Server | Leaf::ServerEcdsa | Leaf::CodeSigning => CheckedBy::Boards,
        };
        validity(&mut params, days, by)?;
        Ok(params)
    }

    /// Check that a certificate we just made names the CA with its exact subject bytes:
    /// iPXE compares them byte for byte.
    fn check_issuer_bytes(&self, der: &[u8]) -> Result<()> {
        let (_, c) = X509Certificate::from_der(der)
            .map_err(|e| Error::crypto("cannot parse issued certificate", e))?;
        if c.issuer().as_raw() != self.subject_raw.as_slice() {
            return Err(Error::crypto(
                "cannot issue certificate",
                "the CA's subject name cannot be reproduced byte for byte (iPXE would reject the chain); re-create the CA with `ipxe-ca init`, replacing this one",
            ));
        }
        Ok(())
    }

    fn finish(&self, cert: rcgen::Certificate) -> Result<Signed> {
        let der = cert.der().to_vec();
        self.check_issuer_bytes(&der)?;
        Ok(Signed {
            cert_pem: cert.pem(),
            cert_der: der,
        })
    }

    /// The server certificate: separate RSA key, serverAuth, the given SANs.
    pub fn issue_server(&self, sans: &[San], size: KeySize, days: u32) -> Result<Issued> {
        self.issue_server_with(sans, generate_key(size)?, Leaf::Server, days)
    }

    /// The ECDSA P-256 server certificate, same SANs: iPXE 2.0 verifies ECDSA, and an ECDSA
    /// signature costs the server a fraction of an RSA one on every handshake.
    pub fn issue_server_ecdsa(&self, sans: &[San], days: u32) -> Result<Issued> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::crypto("cannot generate ECDSA key", e))?;
        self.issue_server_with(sans, key, Leaf::ServerEcdsa, days)
    }

    fn issue_server_with(
        &self,
        sans: &[San],
        key: KeyPair,
        kind: Leaf,
        days: u32,
    ) -> Result<Issued> {
        let first = sans
            .first()
            .ok_or_else(|| Error::invalid("the server certificate needs at least one SAN"))?;
        let cn = match first {
            San::Dns(d) => d.clone(),
            San::Ip(a) => a.to_string(),
        };
        let mut params = self.leaf_params(&cn, days, kind)?;
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s {
                San::Dns(d) => d
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e| Error::crypto(format!("SAN {s}"), e)),
                San::Ip(a) => Ok(SanType::IpAddress(*a)),
            })
            .collect::<Result<_>>()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::crypto("cannot sign server certificate", e))?;
        Ok(Issued::new(self.finish(cert)?, &key))
    }

    /// The signer of boot files: its own key (never the CA's), digitalSignature + codeSigning,
    /// as iPXE's `imgverify` requires.
    pub fn issue_codesign(&self, size: KeySize, days: u32) -> Result<Issued> {
        let params = self.leaf_params("ipxe-ca boot file signer", days, Leaf::CodeSigning)?;
        let key = generate_key(size)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| Error::crypto("cannot sign the code-signing certificate", e))?;
        Ok(Issued::new(self.finish(cert)?, &key))
    }

    /// A board certificate for `key` (made by [`generate_key`]): clientAuth, CN=board.
    pub fn issue_client(&self, cn: &str, key: &KeyPair, days: u32) -> Result<Issued> {
        let params = self.leaf_params(cn, days, Leaf::Client)?;
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|e| Error::crypto("cannot sign board certificate", e))?;
        Ok(Issued::new(self.finish(cert)?, key))
    }

    /// Sign an external CSR (PEM or DER) for a board. Only the CSR's public key is used:
    /// subject, extensions and validity are ours, never the requester's.
    pub fn sign_csr(&self, csr: &[u8], cn: &str, days: u32) -> Result<Signed> {
        let der = if is_pem(csr) {
            pem::parse(csr)
                .map_err(|e| Error::invalid(format!("the CSR is not valid PEM: {e}")))?
                .into_contents()
        } else {
            csr.to_vec()
        };
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der)
                .map_err(|_| {
                    Error::invalid(
                        "the CSR cannot be parsed: expected a PKCS#10 request in PEM or DER (`openssl req -new`)",
                    )
                })?;
        req.verify_signature().map_err(|_| {
            Error::invalid("the CSR's signature does not verify: it was altered or is not self-signed by its key")
        })?;
        let spki = &req.certification_request_info.subject_pki;
        if spki.algorithm.algorithm.to_id_string() != OID_RSA {
            return Err(Error::invalid(
                "the CSR's key is not RSA: iPXE before v2.0 supports only RSA client keys; make the key with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`",
            ));
        }
        let public = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| Error::crypto("cannot use the CSR's public key", e))?;
        let params = self.leaf_params(cn, days, Leaf::Client)?;
        let cert = params
            .signed_by(&public, &self.issuer)
            .map_err(|e| Error::crypto("cannot sign CSR", e))?;
        self.finish(cert)
    }

    /// A new board certificate for the key of `old` (a certificate of ours): renewal without
    /// touching the board's key, whoever holds it.
    pub fn reissue(&self, old: &[u8], cn: &str, days: u32) -> Result<Signed> {
        let (_, c) = X509Certificate::from_der(old)
            .map_err(|e| Error::crypto("cannot parse the board's certificate", e))?;
        let public = rcgen::SubjectPublicKeyInfo::from_der(c.public_key().raw)
            .map_err(|e| Error::crypto("cannot use the board's public key", e))?;
        let params = self.leaf_params(cn, days, Leaf::Client)?;
        let cert = params
            .signed_by(&public, &self.issuer)
            .map_err(|e| Error::crypto("cannot sign board certificate", e))?;
        self.finish(cert)
    }

    /// Verify that `der` was issued by this CA (signature and issuer name); used to adopt
    /// certificates of boards flashed before ipxe-ca.
    pub fn verify_issued(&self, der: &[u8]) -> Result<CertInfo> {
        let (_, c) = X509Certificate::from_der(der).map_err(|_| {
            Error::invalid("the certificate cannot be parsed (expected PEM or DER X.509)")
        })?;
        let (_, ca) = X509Certificate::from_der(&self.cert_der)
            .map_err(|e| Error::crypto("cannot parse CA certificate", e))?;
        if c.issuer().as_raw() != self.subject_raw.as_slice()
            || c.verify_signature(Some(ca.public_key())).is_err()
        {
            return Err(Error::invalid(format!(
                "the certificate was not issued by this CA (issuer: {}): only certificates signed by ca/ca.crt can be registered",
                c.issuer()
            )));
        }
        if c.is_ca() {
            return Err(Error::invalid(
                "the certificate is a CA certificate, not a board certificate",
            ));
        }
        cert_info(der)
    }

    /// A CRL listing `revoked`, signed by the CA, with the CA's own key identifier
    /// so that openssl and nginx find it.
    pub fn crl(&self, revoked: &[Revoked], number: u64, days: u32) -> Result<String> {
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(|e| Error::crypto("clock", e))?;
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                let serial = hex::decode(r.serial.as_str()).map_err(|_| {
                    Error::invalid(format!("bad serial {:?} in registry", r.serial.as_str()))
                })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: r.when.replace_nanosecond(0).unwrap_or(r.when),
                    reason_code: Some(r.reason.rcgen()),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + Duration::days(i64::from(days.max(1))),
            crl_number: SerialNumber::from_slice(
                &number.max(1).to_be_bytes()[number.max(1).leading_zeros() as usize / 8..],
            ),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(self.key_id.clone()),
        };
        params
            .signed_by(&self.issuer)
            .and_then(|c| c.pem())
            .map_err(|e| Error::crypto("cannot sign CRL", e))
    }
}

/// The board key as iPXE reads it: DER, PKCS#8 (iPXE from 2023-06) or PKCS#1 (`pkcs1`: older
/// iPXE parses only `RSAPrivateKey`).
pub fn board_key_der(key_pem: &[u8], pkcs1: bool) -> Result<Vec<u8>> {
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::crypto("cannot read the board's key", e))?;
    match (key, pkcs1) {
        (PrivateKeyDer::Pkcs8(k), true) => pkcs8_to_pkcs1(k.secret_pkcs8_der()),
        (PrivateKeyDer::Pkcs1(k), true) => Ok(k.secret_pkcs1_der().to_vec()),
        (k, _) => Ok(k.secret_der().to_vec()),
    }
}

/// One DER TLV: (tag, contents, rest).
pub(crate) fn der_tlv(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = d.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`.
fn pkcs8_to_pkcs1(der: &[u8]) -> Result<Vec<u8>> {
    let bad = || {
        Error::crypto(
            "cannot convert the board's key to PKCS#1",
            "not an RSA PKCS#8 key",
        )
    };
    let (tag, info, _) = der_tlv(der).ok_or_else(bad)?;
    let (t1, _version, rest) = der_tlv(info).ok_or_else(bad)?;
    let (t2, alg, rest) = der_tlv(rest).ok_or_else(bad)?;
    let (t3, key, _) = der_tlv(rest).ok_or_else(bad)?;
    // rsaEncryption 1.2.840.113549.1.1.1
    const RSA_OID: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    if tag != 0x30 || t1 != 0x02 || t2 != 0x30 || t3 != 0x04 || !alg.starts_with(RSA_OID) {
        return Err(bad());
    }
    Ok(key.to_vec())
}

#[cfg(test)]
mod pkcs1_tests {
    use super::*;

    #[test]
    fn pkcs8_board_key_becomes_the_same_key_in_pkcs1() {
        let key = generate_key(KeySize::Rsa2048).unwrap();
        let pem = key.serialize_pem();
        let p8 = board_key_der(pem.as_bytes(), false).unwrap();
        let p1 = board_key_der(pem.as_bytes(), true).unwrap();
        assert_ne!(p8, p1);
        // PKCS#1 is the OCTET STRING's content at the end of the PKCS#8 structure.
        assert!(p8.ends_with(&p1));
        assert_eq!(p1[0], 0x30);
        let again = aws_lc_rs::rsa::KeyPair::from_der(&p1).unwrap();
        assert_eq!(
            aws_lc_rs::signature::KeyPair::public_key(&again).as_ref(),
            aws_lc_rs::signature::KeyPair::public_key(
                &aws_lc_rs::rsa::KeyPair::from_pkcs8(&p8).unwrap()
            )
            .as_ref()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sizes_parse_exactly_the_three_we_offer() {
        assert_eq!("2048".parse::<KeySize>().ok(), Some(KeySize::Rsa2048));
        assert_eq!("3072".parse::<KeySize>().ok(), Some(KeySize::Rsa3072));
        assert_eq!("4096".parse::<KeySize>().ok(), Some(KeySize::Rsa4096));
        for bad in ["1024", "2047", "", "4096 "] {
            assert!(bad.parse::<KeySize>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serials_are_positive_minimal_and_random_in_every_byte() {
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..256 {
            let s = random_serial().unwrap();
            assert_eq!(s.len(), 16);
            // Positive as a DER INTEGER (top bit clear), minimal (no leading zero byte).
            assert!(s[0] < 0x80 && s[0] != 0, "{s:02x?}");
            firsts.insert(s[0]);
        }
        // The first byte keeps its entropy (not forced to one value).
        assert!(firsts.len() > 32, "{firsts:?}");
    }

    #[test]
    fn every_revocation_reason_parses() {
        for (s, r) in [
            ("unspecified", Reason::Unspecified),
            ("key-compromise", Reason::KeyCompromise),
            ("affiliation-changed", Reason::AffiliationChanged),
            ("superseded", Reason::Superseded),
            ("cessation-of-operation", Reason::CessationOfOperation),
        ] {
            assert_eq!(s.parse::<Reason>().ok(), Some(r), "{s}");
        }
        assert!("lost".parse::<Reason>().is_err());
    }

    #[test]
    fn sans_are_read_back_for_reissue_ipv4_ipv6_and_dns() {
        let mut p = rcgen::CertificateParams::new(vec!["boot.example".to_string()]).unwrap();
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("10.0.2.2".parse().unwrap()));
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress("fd00::2".parse().unwrap()));
        let cert = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
        let sans = cert_sans(cert.der()).unwrap();
        assert_eq!(
            sans,
            vec![
                San::Dns("boot.example".into()),
                San::Ip("10.0.2.2".parse().unwrap()),
                San::Ip("fd00::2".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn ca_names_and_validity_have_exact_bounds() {
        assert!(create_ca("", KeySize::Rsa2048, 30).is_err());
        assert!(create_ca("   ", KeySize::Rsa2048, 30).is_err());
        assert!(create_ca(&"x".repeat(65), KeySize::Rsa2048, 30).is_err());
        for days in [0, 36501] {
            assert!(create_ca("ok", KeySize::Rsa2048, days).is_err(), "{days}");
        }
        // The bounds themselves are allowed.
        assert!(create_ca(&"x".repeat(64), KeySize::Rsa2048, 36500).is_ok());
        assert!(create_ca("x", KeySize::Rsa2048, 1).is_ok());
    }

    #[test]
    fn der_lengths_outside_what_a_key_uses_are_refused() {
        let body = vec![0u8; 300];
        let tlv = |head: &[u8]| {
            let mut d = head.to_vec();
            d.extend_from_slice(&body);
            d
        };
        // Short form, and long form in 1 to 4 bytes, are read.
        assert_eq!(der_tlv(&tlv(&[0x04, 0x7f])).unwrap().1.len(), 0x7f);
        assert_eq!(der_tlv(&tlv(&[0x04, 0x81, 0x80])).unwrap().1.len(), 0x80);
        assert_eq!(
            der_tlv(&tlv(&[0x04, 0x84, 0, 0, 1, 0x2c])).unwrap().1.len(),
            300
        );
        // 0x80 is BER's indefinite length, not 128; more than 4 length bytes; fewer length
        // bytes than announced.
        assert!(der_tlv(&tlv(&[0x04, 0x80])).is_none());
        assert!(der_tlv(&tlv(&[0x04, 0x85, 0, 0, 0, 1, 0])).is_none());
        assert!(der_tlv(&[0x04, 0x82, 0x01]).is_none());
        assert!(der_tlv(&[0x04, 0x81]).is_none());
        // Exactly the announced length bytes and no contents: an empty value, not an error.
        assert_eq!(der_tlv(&[0x04, 0x81, 0x00]), Some((0x04, &[][..], &[][..])));
    }

    #[test]
    fn only_an_rsa_pkcs8_key_is_converted_to_pkcs1() {
        let rsa = generate_key(KeySize::Rsa2048).unwrap().serialize_der();
        let pkcs1 = pkcs8_to_pkcs1(&rsa).unwrap();
        assert_eq!(
            der_tlv(&pkcs1).unwrap().0,
            0x30,
            "RSAPrivateKey is a SEQUENCE"
        );
        // Where the four tags of PrivateKeyInfo are: SEQUENCE { INTEGER, SEQUENCE, OCTET STRING }.
        let (_, info, _) = der_tlv(&rsa).unwrap();
        let head = rsa.len() - info.len();
        let (_, _, after_version) = der_tlv(info).unwrap();
        let (_, _, after_alg) = der_tlv(after_version).unwrap();
        let tags = [
            0,
            head,
            head + info.len() - after_version.len(),
            head + info.len() - after_alg.len(),
        ];
        assert_eq!(tags.map(|at| rsa[at]), [0x30, 0x02, 0x30, 0x04]);
        // Each wrong tag alone is refused.
        for at in tags {
            let mut bad = rsa.clone();
            bad[at] ^= 0x01;
            assert!(pkcs8_to_pkcs1(&bad).is_err(), "tag at {at}");
        }
        // So is a key of another algorithm (P-256), whose tags are all right.
        let ec = KeyPair::generate().unwrap().serialize_der();
        assert!(pkcs8_to_pkcs1(&ec).is_err());
    }

    #[test]
    fn crl_numbers_are_written_whole_and_minimal() {
        use x509_parser::num_bigint::BigUint;
        let issued = create_ca("Numbers", KeySize::Rsa2048, 30).unwrap();
        let ca = Ca::load(issued.cert.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
        for n in [1u64, 2, 255, 256, 65_536, u64::MAX >> 1] {
            let pem = ca.crl(&[], n, 7).unwrap();
            let der = ::pem::parse(pem.as_bytes()).unwrap().into_contents();
            let (_, crl) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
            assert_eq!(crl.crl_number(), Some(&BigUint::from(n)), "CRL number {n}");
            // The extension's INTEGER carries no leading zero byte (DER), except to keep
            // the number positive.
            let ext = crl
                .extensions()
                .iter()
                .find(|e| e.oid == x509_parser::oid_registry::OID_X509_EXT_CRL_NUMBER)
                .unwrap();
            let (tag, int, _) = der_tlv(ext.value).unwrap();
            assert_eq!(tag, 0x02);
            assert!(
                int[0] != 0 || int.get(1).is_some_and(|b| b & 0x80 != 0),
                "{n}: {int:02x?}"
            );
        }
    }

    #[test]
    fn a_ca_prints_its_issuer_never_its_key() {
        let issued = create_ca("Printed", KeySize::Rsa2048, 30).unwrap();
        let ca = Ca::load(issued.cert.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
        let shown = format!("{ca:?}");
        assert!(
            shown.starts_with("Ca") && shown.contains("issuer"),
            "{shown}"
        );
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }
}
