//! The few DER structures ipxe-ca writes itself (CMS and Authenticode signatures), built
//! from tag-length-value pieces.

use crate::error::Result;

pub(crate) const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
pub(crate) const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
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
pub(crate) fn rsa_spki(key: &aws_lc_rs::rsa::KeyPair) -> Result<Vec<u8>> {
    use aws_lc_rs::signature::KeyPair;
    // SubjectPublicKeyInfo = SEQUENCE { rsaEncryption NULL, BIT STRING { RSAPublicKey } }.
    let pk = key.public_key().as_ref();
    let mut bits = vec![0u8];
    bits.extend_from_slice(pk);
    Ok(seq(&[&algorithm(OID_RSA), &tlv(0x03, &bits)]))
}

/// A SignedData over detached content, without signed attributes (the signature is over the
/// content itself): what iPXE's `imgverify` and UEFI's authenticated variables check.
pub(crate) fn detached_signed_data(
    certs: &[&[u8]],
    issuer_raw: &[u8],
    serial_raw: &[u8],
    sig: &[u8],
) -> Vec<u8> {
    let sid = seq(&[issuer_raw, &tlv(0x02, serial_raw)]);
    let signer_info = seq(&[
        &tlv(0x02, &[1]),
        &sid,
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
