//! The few DER structures ipxe-ca writes itself (CMS and Authenticode signatures), built
//! from tag-length-value pieces.

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, Result};

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
pub(crate) const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
pub(crate) const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// One DER element: tag, length in the fewest bytes, content.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A SEQUENCE of elements already encoded.
pub(crate) fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// An AlgorithmIdentifier with NULL parameters.
pub(crate) fn algorithm(oid: &[u8]) -> Vec<u8> {
    seq(&[&tlv(0x06, oid), &[0x05, 0x00]])
}

/// The SubjectPublicKeyInfo of an RSA key, to compare with a certificate's.
fn rsa_spki(key: &aws_lc_rs::rsa::KeyPair) -> Result<Vec<u8>> {
    use aws_lc_rs::signature::KeyPair;
    // SubjectPublicKeyInfo = SEQUENCE { rsaEncryption NULL, BIT STRING { RSAPublicKey } }.
    let pk = key.public_key().as_ref();
    let mut bits = vec![0u8];
    bits.extend_from_slice(pk);
    Ok(seq(&[&algorithm(OID_RSA), &tlv(0x03, &bits)]))
}

/// A SignedData over detached content, without signed attributes (the signature is over the
/// content itself): what iPXE's `imgverify` and UEFI's authenticated variables check.
fn detached_signed_data(certs: &[&[u8]], sid: &[u8], sig: &[u8]) -> Vec<u8> {
    let signer_info = seq(&[
        &tlv(0x02, &[1]),
        sid,
        &algorithm(OID_SHA256),
        &algorithm(OID_RSA),
        &tlv(0x04, sig),
    ]);
    seq(&[
        &tlv(0x02, &[1]),
        &tlv(0x31, &algorithm(OID_SHA256)),
        &seq(&[&tlv(0x06, OID_DATA)]),
        &tlv(0xa0, &certs.concat()),
        &tlv(0x31, &signer_info),
    ])
}

/// A ContentInfo around a SignedData.
pub(crate) fn signed_content_info(signed_data: &[u8]) -> Vec<u8> {
    seq(&[&tlv(0x06, OID_SIGNED_DATA), &tlv(0xa0, signed_data)])
}

/// An RSA key with the certificate it belongs to: what signs a SignedData and names itself in
/// it (issuer and serial). The boot-file signer, the Secure Boot db key and the PK/KEK keys
/// that sign variable updates are each one.
pub(crate) struct SigningKey {
    pub(crate) cert_der: Vec<u8>,
    key: aws_lc_rs::rsa::KeyPair,
    issuer_raw: Vec<u8>,
    serial_raw: Vec<u8>,
    pub(crate) subject: String,
}

impl SigningKey {
    /// The key (PKCS#8 DER) and its certificate, refused unless they belong together; `what`
    /// names the key in errors ("code-signing", "Secure Boot").
    pub(crate) fn new(cert_der: Vec<u8>, key_pkcs8: &[u8], what: &str) -> Result<SigningKey> {
        let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(key_pkcs8)
            .map_err(|e| Error::crypto(format!("cannot load the {what} key (RSA expected)"), e))?;
        let (_, c) = X509Certificate::from_der(&cert_der)
            .map_err(|e| Error::crypto(format!("cannot parse the {what} certificate"), e))?;
        if c.public_key().raw != rsa_spki(&key)?.as_slice() {
            return Err(Error::invalid(format!(
                "the {what} key does not belong to the certificate given with it"
            )));
        }
        Ok(SigningKey {
            issuer_raw: c.issuer().as_raw().to_vec(),
            serial_raw: c.tbs_certificate.raw_serial().to_vec(),
            subject: c.subject().to_string(),
            cert_der,
            key,
        })
    }

    /// An RSA PKCS#1 v1.5 signature over SHA-256 of `data`.
    pub(crate) fn sign(&self, data: &[u8]) -> Result<Vec<u8>> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &rng,
                data,
                &mut sig,
            )
            .map_err(|e| Error::crypto("cannot sign", e))?;
        Ok(sig)
    }

    /// `SignerIdentifier` as issuer and serial, for a SignerInfo.
    pub(crate) fn signer_id(&self) -> Vec<u8> {
        seq(&[&self.issuer_raw, &tlv(0x02, &self.serial_raw)])
    }

    /// A SignedData over detached `content` (no signed attributes), carrying this key's
    /// certificate and then `chain`.
    pub(crate) fn detached(&self, chain: &[&[u8]], content: &[u8]) -> Result<Vec<u8>> {
        let mut certs: Vec<&[u8]> = vec![&self.cert_der];
        certs.extend_from_slice(chain);
        Ok(detached_signed_data(
            &certs,
            &self.signer_id(),
            &self.sign(content)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lengths_are_encoded_in_the_fewest_bytes() {
        assert_eq!(tlv(0x04, &[0; 5])[..2], [0x04, 5]);
        assert_eq!(tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }
}
