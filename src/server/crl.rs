//! The CRL as the server uses it: the set of revoked serials, reloaded when `revoke` or `crl`
//! rewrites `ca/crl.pem` (one `stat` per check), accepted only with a valid CA signature.

use std::collections::HashSet;

use x509_parser::num_bigint::BigUint;

use crate::error::{Error, Result};
use crate::store::cached::{Cached, Change, Look};
use crate::store::state::{self, StateDir};
use crate::types::Serial;

/// Revoked serials.
pub(crate) struct RevokedSerials {
    state: StateDir,
    ca_der: Vec<u8>,
    current: Cached<Loaded>,
}

/// A verified CRL: its number and serials.
struct Loaded {
    number: Option<BigUint>,
    serials: HashSet<Serial>,
}

/// Read and verify the CRL.
fn load(state: &StateDir, ca_der: &[u8]) -> Result<Loaded> {
    let path = state.crl();
    let facts = crate::ca::read_crl(&state::read(&path)?, Some(ca_der))
        .map_err(|e| Error::crypto(format!("{}", path.display()), e))?;
    Ok(Loaded {
        number: facts.number,
        serials: facts.serials,
    })
}

impl RevokedSerials {
    pub(crate) fn new(state: &StateDir) -> Result<RevokedSerials> {
        let ca_der = crate::ca::cert_der_from_bytes(&state::read(&state.ca_cert())?)?;
        // No CRL yet (a state dir from before CRLs) means nothing revoked at start.
        let current = Cached::new(vec![state.crl()], || {
            if state.crl().exists() {
                load(state, &ca_der)
            } else {
                Ok(Loaded {
                    number: None,
                    serials: HashSet::new(),
                })
            }
        })?;
        Ok(RevokedSerials {
            current,
            state: state.clone(),
            ca_der,
        })
    }

    /// Whether the CRL lists `serial`. A CRL that changed on disk is reloaded first. One that
    /// is missing, does not verify, or is older (a lower crlNumber) than the one in force is
    /// refused: the previous one stays, and the log says so once per version of the file.
    pub(crate) fn contains(&self, serial: &Serial, at: &crate::store::watch::Snapshot) -> bool {
        // The path only when something changed: joining it costs an allocation per boot.
        let path = || self.state.crl();
        let (crl, change) = self.current.get(Look::Watched(at), |cur| {
            let path = path();
            if !path.exists() {
                return Err(format!(
                    "ipxe-ca: {} is gone: keeping the CRL in force (run `ipxe-ca crl` to write it again)",
                    path.display()
                ));
            }
            let l = load(&self.state, &self.ca_der)
                .map_err(|e| format!("ipxe-ca: keeping the CRL in force: {e}"))?;
            if l.number < cur.number {
                return Err(format!(
                    "ipxe-ca: {} is older than the CRL in force (crlNumber {:?} < {:?}): keeping the newer one",
                    path.display(),
                    l.number,
                    cur.number
                ));
            }
            Ok(Some(l))
        });
        match change {
            Change::Same => {}
            Change::Taken => super::log::say(&format!(
                "ipxe-ca: reloaded CRL {} ({} revoked)",
                path().display(),
                crl.serials.len()
            )),
            Change::Kept(why) => super::log::say(&why),
        }
        crl.serials.contains(serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_is_read_verified_and_dated() {
        let t = tempfile::tempdir().unwrap();
        let state = StateDir::new(t.path());
        let issued = crate::ca::create_ca("t", crate::ca::KeySize::Rsa2048, 30).unwrap();
        let ca = crate::ca::Ca::load(issued.cert.cert_pem.as_bytes(), issued.key_pem.as_bytes())
            .unwrap();
        let revoked = crate::ca::Revoked {
            serial: "0badc0de".parse().unwrap(),
            when: time::OffsetDateTime::now_utc(),
            reason: crate::ca::Reason::KeyCompromise,
        };
        let crl = ca.crl(&[revoked], 1, 5).unwrap();
        state::write_atomic(&state.crl(), crl.as_bytes(), 0o644).unwrap();
        state::write_atomic(&state.ca_cert(), issued.cert.cert_pem.as_bytes(), 0o644).unwrap();
        let set = RevokedSerials::new(&state).unwrap();
        let changes = crate::store::watch::Changes::new(state.root());
        let now = changes.snapshot();
        assert!(set.contains(&"0badc0de".parse().unwrap(), &now));
        assert!(!set.contains(&"0badc0df".parse().unwrap(), &now));
        // A CRL signed by another CA is refused.
        let other = crate::ca::create_ca("o", crate::ca::KeySize::Rsa2048, 30).unwrap();
        let other =
            crate::ca::Ca::load(other.cert.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap();
        state::write_atomic(
            &state.crl(),
            other.crl(&[], 2, 5).unwrap().as_bytes(),
            0o644,
        )
        .unwrap();
        assert!(load(&state, &set.ca_der).is_err());
    }
}
