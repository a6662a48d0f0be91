//! Property tests for every parser that sees outside input (names, MACs, SANs, key=value,
//! fingerprints, PEM/DER certificates, CSRs, registry TOML). Each takes arbitrary input without
//! panicking, and what it accepts reads back as itself. `PROPTEST_CASES=N` runs more cases.

use proptest::prelude::*;
use rcgen::PublicKeyData;
use x509_parser::prelude::FromDer;

use crate::types::{BoardName, Fingerprint, KeyValue, Mac, San};

proptest! {
    #[test]
    fn board_names_accept_exactly_the_safe_alphabet(s in "\\PC{0,80}") {
        match s.parse::<BoardName>() {
            Ok(n) => {
                prop_assert_eq!(n.as_str(), s.as_str());
                prop_assert!(!s.is_empty() && s.len() <= 63);
                prop_assert!(s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)));
                prop_assert!(!s.starts_with(['.', '_', '-']));
                prop_assert!(!s.ends_with(".toml"));
                prop_assert!(!s.contains('/') && s != "." && s != "..");
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn board_names_from_the_alphabet_round_trip(s in "[a-z0-9][a-z0-9._-]{0,62}") {
        if !s.ends_with(".toml") {
            let n: BoardName = s.parse().unwrap();
            prop_assert_eq!(n.to_string(), s);
        }
    }

    #[test]
    fn macs_parse_any_text_and_round_trip(s in "\\PC{0,40}", b in proptest::array::uniform6(any::<u8>())) {
        let _ = s.parse::<Mac>();
        let text = b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":");
        let m: Mac = text.parse().unwrap();
        prop_assert_eq!(m.to_string(), text.clone());
        let upper: Mac = text.to_uppercase().replace(':', "-").parse().unwrap();
        prop_assert_eq!(upper, m);
    }

    #[test]
    fn sans_parse_any_text_and_round_trip(s in "\\PC{0,80}", ip in any::<std::net::Ipv4Addr>()) {
        if let Ok(san) = s.parse::<San>() {
            let again: San = san.to_string().parse().unwrap();
            prop_assert_eq!(again.to_string(), san.to_string());
        }
        let san: San = format!("IP:{ip}").parse().unwrap();
        prop_assert_eq!(san.to_string(), format!("IP:{ip}"));
    }

    #[test]
    fn key_values_never_echo_a_rejected_value(s in "\\PC{0,80}") {
        match s.parse::<KeyValue>() {
            Ok(kv) => prop_assert_eq!(format!("{}={}", kv.key, kv.value), s),
            Err(e) => {
                let msg = e.to_string();
                // The text after the first '=' may be a secret.
                if let Some((k, v)) = s.split_once('=') {
                    // The key is named in the message; the value never is.
                    if v.len() >= 4 && !k.contains(v) {
                        prop_assert!(!msg.contains(v), "{}", msg);
                    }
                } else if s.len() >= 4 {
                    prop_assert!(!msg.contains(&s), "{}", msg);
                }
            }
        }
    }

    #[test]
    fn secret_lines_never_echo_a_rejected_line(s in "\\PC{0,200}") {
        if let Err(e) = crate::types::parse_key_values(&s) {
            for line in s.lines().filter(|l| l.trim().len() >= 4) {
                prop_assert!(!e.to_string().contains(line.trim()));
            }
        }
    }

    #[test]
    fn fingerprints_parse_any_text(s in "\\PC{0,100}", b in proptest::collection::vec(any::<u8>(), 20)) {
        let _ = s.parse::<Fingerprint>();
        let hex = hex::encode(&b);
        let fp: Fingerprint = hex.to_uppercase().parse().unwrap();
        prop_assert_eq!(fp.as_str(), hex.as_str());
        let colons = b.iter().map(|x| format!("{x:02X}")).collect::<Vec<_>>().join(":");
        prop_assert_eq!(colons.parse::<Fingerprint>().unwrap(), fp);
    }

    #[test]
    fn certificate_input_of_any_bytes_is_an_error_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(der) = crate::ca::cert_der_from_bytes(&b) {
            let _ = crate::ca::cert_info(&der);
            let _ = crate::ca::cert_sans(&der);
        }
        let mut pem = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        pem.extend_from_slice(&b);
        pem.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
        if let Ok(der) = crate::ca::cert_der_from_bytes(&pem) {
            let _ = crate::ca::cert_info(&der);
        }
        let _ = crate::ca::board_key_der(&pem, true);
    }

    #[test]
    fn registry_toml_of_any_text_is_an_error_not_a_panic(s in "\\PC{0,400}") {
        let _ = toml::from_str::<crate::board::Board>(&s);
        let _ = toml::from_str::<crate::store::config::Config>(&s);
    }
}

/// CSRs: a CA is made once (RSA key generation is slow). A mutated CSR is refused cleanly, or,
/// where the change does not touch what was signed (the parser is lenient about the outer
/// tag), signed for the very key that signed the request: never for another key.
#[test]
fn mutated_csrs_are_refused_not_signed() {
    use proptest::test_runner::{Config, TestRunner};
    let issued = crate::ca::create_ca("prop", crate::ca::KeySize::Rsa2048, 30).unwrap();
    let ca =
        crate::ca::Ca::load(issued.cert.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
    let key = crate::ca::generate_key(crate::ca::KeySize::Rsa2048).unwrap();
    let csr = rcgen::CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let der = csr.der().to_vec();
    assert!(ca.sign_csr(&der, "x", 30).is_ok());
    let mut runner = TestRunner::new(Config::default());
    runner
        .run(&(0..der.len(), any::<u8>()), |(i, byte)| {
            let mut bad = der.clone();
            prop_assume!(bad[i] != byte);
            bad[i] = byte;
            if let Ok(issued) = ca.sign_csr(&bad, "x", 30) {
                let (_, c) =
                    x509_parser::prelude::X509Certificate::from_der(&issued.cert_der).unwrap();
                let spki = key.subject_public_key_info();
                prop_assert_eq!(c.public_key().raw, spki.as_slice());
            }
            Ok(())
        })
        .unwrap();
}
