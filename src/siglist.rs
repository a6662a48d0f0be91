//! EFI_SIGNATURE_LIST of X.509 certificates: how QEMU/OVMF (`-fw_cfg
//! name=etc/edk2/https/cacerts`) and UEFI's `TlsCaCertificate` carry trusted CAs.

/// EFI_CERT_X509_GUID a5c059a1-94e4-4aa7-87b5-ab155c2bf072, in its on-disk (mixed-endian) form.
const EFI_CERT_X509: [u8; 16] = [
    0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72,
];

/// Owner GUID recorded with each certificate (any value works; this one is ipxe-ca's).
const OWNER: [u8; 16] = *b"ipxe-ca-owner-id";

/// One signature list per certificate: type GUID, list size, header size 0, signature size,
/// then owner GUID and DER. What `TlsCaCertificate` holds, and what Secure Boot's PK, KEK and
/// db variables hold.
pub fn x509_siglist(certs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for der in certs {
        let sig_size = 16 + der.len() as u32;
        let list_size = 28 + sig_size;
        out.extend_from_slice(&EFI_CERT_X509);
        out.extend_from_slice(&list_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&sig_size.to_le_bytes());
        out.extend_from_slice(&OWNER);
        out.extend_from_slice(der);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        let l = super::x509_siglist(&[&[1, 2, 3]]);
        assert_eq!(l.len(), 28 + 16 + 3);
        assert_eq!(u32::from_le_bytes(l[16..20].try_into().unwrap()), 47);
        assert_eq!(u32::from_le_bytes(l[24..28].try_into().unwrap()), 19);
        assert_eq!(&l[44..], &[1, 2, 3]);
    }
}
