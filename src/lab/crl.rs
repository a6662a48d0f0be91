//! The CRL: made from the registry on every revoke, and re-signed by `crl`.

use super::*;

impl Lab {
    /// Re-sign the CRL now (it is valid for [`days::CRL`] days; nginx refuses every client
    /// once its `ssl_crl` has expired). Returns its next-update time.
    pub fn refresh_crl(&self) -> Result<OffsetDateTime> {
        let _lock = self.state.lock()?;
        let ca = self.ca()?;
        self.publish_crl(&ca)
    }

    /// Sign and write a CRL listing every revoked board. Callers hold the lock.
    pub(super) fn publish_crl(&self, ca: &Ca) -> Result<OffsetDateTime> {
        let crl = self.make_crl(ca, None)?;
        self.write_crl(&crl)
    }

    /// A signed CRL of every revoked board, with `also` (about to be saved) among them.
    ///
    /// A board file that cannot be read must not block a revoke (a stolen stick cannot wait
    /// for a repair) nor drop its revoked serials: the CRL in force is carried over whole
    /// beside what the readable boards say.
    pub(super) fn make_crl(&self, ca: &Ca, also: Option<&Board>) -> Result<(String, u64)> {
        let (mut boards, unreadable) = self.registry.list_readable()?;
        if let Some(b) = also {
            boards.retain(|x| x.name != b.name);
            boards.push(b.clone());
        }
        let mut revoked: Vec<Revoked> = Vec::new();
        if !unreadable.is_empty() {
            let Some(facts) = crl_facts(&self.state.crl()) else {
                return Err(Error::invalid(format!(
                    "{} cannot be read and there is no readable CRL to keep its revoked \
                     certificates from: run `ipxe-ca check`, mend the file, then try again",
                    unreadable[0].display()
                )));
            };
            revoked.extend(facts.entries);
        }
        for b in &boards {
            revoked.extend(b.revoked_certs());
        }
        let mut seen = std::collections::HashSet::new();
        revoked.retain(|r| seen.insert(r.serial.clone()));
        let number = self.next_crl_number()?;
        Ok((ca.crl(&revoked, number, days::CRL)?, number))
    }

    pub(super) fn write_crl(&self, (crl, number): &(String, u64)) -> Result<OffsetDateTime> {
        state::write_atomic(&self.state.crl(), crl.as_bytes(), MODE_PUBLIC)?;
        state::write_atomic(
            &self.state.crl_number(),
            format!("{number}\n").as_bytes(),
            MODE_PUBLIC,
        )?;
        Ok(OffsetDateTime::now_utc() + time::Duration::days(i64::from(days::CRL)))
    }

    /// One more than the CRL in force: from `ca/crlnumber`, or from the CRL itself when that
    /// file is gone. Never guessed: a CRL number that went backwards would make nginx and
    /// `serve` keep the older list.
    pub(super) fn next_crl_number(&self) -> Result<u64> {
        let current = match self.state.read_crl_number() {
            Ok(n) => n,
            Err(e) => crl_facts(&self.state.crl())
                .and_then(|f| f.number_u64())
                .ok_or(e)?,
        };
        Ok(current + 1)
    }
}
