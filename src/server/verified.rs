//! Board certificates already verified against our CA, remembered for the server's lifetime:
//! a board presents the same certificate on every boot, so only its first boot pays for
//! checking the chain (an RSA verification, parsing, path building). The proof that the board
//! holds the key (its CertificateVerify) is checked on every handshake, and revocation on every
//! request (`routes`), so neither depends on this.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

/// Chains remembered at most (32 bytes of digest and 16 of validity each); past it the memory
/// starts over rather than grow.
const CAP: usize = 100_000;

/// A [`ClientCertVerifier`] that remembers which exact chains (by SHA-256 of their DER)
/// `inner` accepted and when all their certificates are valid. A new verifier (a reloaded CA bundle) starts
/// empty, so a certificate is only ever remembered against the roots that accepted it.
#[derive(Debug)]
pub(crate) struct Remembering {
    inner: Arc<dyn ClientCertVerifier>,
    seen: Mutex<HashMap<[u8; 32], (u64, u64)>>,
}

impl Remembering {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        Remembering {
            inner,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (u64, u64)>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The chain as presented: the board's certificate, then what it sent along (OpenSSL and
/// iPXE send our CA too).
fn digest(end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for der in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
        // Length-prefixed, so that no two chains hash the same bytes.
        ctx.update(&(der.len() as u64).to_be_bytes());
        ctx.update(der);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// When every certificate of the chain is valid, in Unix seconds (latest notBefore, earliest
/// notAfter).
fn validity(end_entity: &[u8], intermediates: &[CertificateDer<'_>]) -> Option<(u64, u64)> {
    let mut window = (0u64, u64::MAX);
    for der in std::iter::once(end_entity).chain(intermediates.iter().map(|c| c.as_ref())) {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let v = cert.validity();
        window.0 = window.0.max(u64::try_from(v.not_before.timestamp()).ok()?);
        window.1 = window.1.min(u64::try_from(v.not_after.timestamp()).ok()?);
    }
    Some(window)
}

impl ClientCertVerifier for Remembering {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = digest(end_entity, intermediates);
        let t = now.as_secs();
        if let Some((nb, na)) = self.seen().get(&key).copied() {
            if nb <= t && t <= na {
                return Ok(ClientCertVerified::assertion());
            }
        }
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(v) = validity(end_entity, intermediates) {
            let mut seen = self.seen();
            if seen.len() >= CAP {
                seen.clear();
            }
            seen.insert(key, v);
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The real WebPKI verifier, counting the chains it is asked to verify.
    #[derive(Debug)]
    struct Counting(Arc<dyn ClientCertVerifier>, AtomicUsize);

    impl ClientCertVerifier for Counting {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            self.0.root_hint_subjects()
        }
        fn verify_client_cert(
            &self,
            ee: &CertificateDer<'_>,
            im: &[CertificateDer<'_>],
            now: UnixTime,
        ) -> Result<ClientCertVerified, rustls::Error> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.verify_client_cert(ee, im, now)
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls12_signature(m, c, d)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.0.verify_tls13_signature(m, c, d)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_verify_schemes()
        }
    }

    fn ca_and_board(days: i64) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let (ca, mut boards) = ca_and_boards(days, 1);
        (ca, boards.remove(0))
    }

    /// A CA and `n` boards it signed, valid for `days`.
    fn ca_and_boards(
        days: i64,
        n: usize,
    ) -> (CertificateDer<'static>, Vec<CertificateDer<'static>>) {
        use rcgen::{CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::new()).unwrap();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(2);
        p.not_after = now + time::Duration::days(1000);
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(p, ca_key);
        let boards = (0..n)
            .map(|_| {
                let mut b = CertificateParams::new(Vec::new()).unwrap();
                b.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
                b.not_before = now - time::Duration::days(1);
                b.not_after = now + time::Duration::days(days);
                let board = b.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap();
                board.der().clone()
            })
            .collect();
        (ca.der().clone(), boards)
    }

    fn verifier(ca: &CertificateDer<'static>) -> (Remembering, Arc<Counting>) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let counting = Arc::new(Counting(webpki, AtomicUsize::new(0)));
        (Remembering::new(counting.clone()), counting)
    }

    /// Many boards are remembered at once, not only the last one seen.
    #[test]
    fn every_board_of_a_farm_is_remembered() {
        let (ca, boards) = ca_and_boards(30, 3);
        let (v, counting) = verifier(&ca);
        let now = UnixTime::now();
        for _ in 0..2 {
            for b in &boards {
                v.verify_client_cert(b, &[], now).unwrap();
            }
        }
        assert_eq!(
            counting.1.load(Ordering::SeqCst),
            3,
            "each board verified once"
        );
    }

    /// What rustls asks of the verifier besides the chain is the inner verifier's answer.
    #[test]
    fn everything_but_the_chain_is_the_inner_verifiers() {
        let (ca, _) = ca_and_board(30);
        let (v, counting) = verifier(&ca);
        assert_eq!(v.offer_client_auth(), counting.0.offer_client_auth());
        assert_eq!(
            v.client_auth_mandatory(),
            counting.0.client_auth_mandatory()
        );
        let names = |v: &dyn ClientCertVerifier| {
            v.root_hint_subjects()
                .iter()
                .map(|n| n.as_ref().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&v), names(counting.0.as_ref()));
        assert!(
            !v.root_hint_subjects().is_empty(),
            "the CA is named to clients"
        );
        assert_eq!(
            v.supported_verify_schemes(),
            counting.0.supported_verify_schemes()
        );
        assert!(!v.supported_verify_schemes().is_empty());
        assert_eq!(
            v.requires_raw_public_keys(),
            counting.0.requires_raw_public_keys()
        );
    }

    #[test]
    fn a_board_seen_before_skips_the_chain_but_never_its_expiry_or_another_ca() {
        let (ca, board) = ca_and_board(30);
        let (v, counting) = verifier(&ca);
        let now = UnixTime::now();
        v.verify_client_cert(&board, &[], now).unwrap();
        v.verify_client_cert(&board, &[], now).unwrap();
        assert_eq!(
            counting.1.load(Ordering::SeqCst),
            1,
            "the second boot is remembered"
        );
        // Past its notAfter, remembered or not, the certificate is refused.
        let later =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() + 40 * 86_400));
        assert!(v.verify_client_cert(&board, &[], later).is_err());
        assert_eq!(counting.1.load(Ordering::SeqCst), 2, "expired: asked again");
        // A certificate from another CA is refused, every time.
        let (_, foreign) = ca_and_board(30);
        for _ in 0..2 {
            assert!(v.verify_client_cert(&foreign, &[], now).is_err());
        }
        assert_eq!(
            counting.1.load(Ordering::SeqCst),
            4,
            "refusals are not remembered"
        );
        // The same certificate with our CA sent along (what OpenSSL and iPXE send) is another
        // chain: verified once, then remembered too.
        for _ in 0..2 {
            v.verify_client_cert(&board, std::slice::from_ref(&ca), now)
                .unwrap();
        }
        assert_eq!(counting.1.load(Ordering::SeqCst), 5);
        // A chain is remembered only while every certificate in it is valid: the CA sent along
        // expires before the board here.
        let (short_ca, long_board) = ca_and_board(3650);
        let (v, counting) = verifier(&short_ca);
        let ca_end = validity(short_ca.as_ref(), &[]).unwrap().1;
        let board_end = validity(long_board.as_ref(), &[]).unwrap().1;
        assert!(ca_end < board_end, "{ca_end} {board_end}");
        let at = |s: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s));
        v.verify_client_cert(&long_board, std::slice::from_ref(&short_ca), now)
            .unwrap();
        let _ = v.verify_client_cert(&long_board, std::slice::from_ref(&short_ca), at(ca_end + 1));
        assert_eq!(
            counting.1.load(Ordering::SeqCst),
            2,
            "past the CA's end: asked again"
        );
    }
}
