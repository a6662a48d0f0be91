//! A board's life: enroll, sign, register, set, renew, revoke.

use super::*;

/// `n` RSA-2048 keys, generated on all cores.
pub(super) fn generate_keys(n: usize) -> Result<Vec<rcgen::KeyPair>> {
    let workers = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1)
        .min(n.max(1));
    let per = n.div_ceil(workers.max(1));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let count = per.min(n.saturating_sub(w * per));
                s.spawn(move || {
                    (0..count)
                        .map(|_| ca::generate_key(KeySize::Rsa2048))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut keys = Vec::with_capacity(n);
        for h in handles {
            keys.extend(
                h.join()
                    .map_err(|_| Error::crypto("key generation", "worker panicked"))??,
            );
        }
        Ok(keys)
    })
}

fn to_map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

/// A certificate about to be registered.
pub(super) struct NewCert<'a> {
    info: CertInfo,
    origin: Origin,
    cert_pem: &'a str,
    key_pem: Option<&'a str>,
}

impl Lab {
    /// Check a board name is free and its options are sound, before any key is made.
    pub(super) fn precheck(&self, name: &BoardName, opts: &BoardOptions) -> Result<ProfileName> {
        if !self.state.has_ca() {
            return Err(Error::NoCa(self.state.root().to_path_buf()));
        }
        if self.registry.exists(name) {
            if !opts.replace {
                return Err(Error::BoardExists(name.to_string()));
            }
            if self.registry.get(name)?.status != Status::Revoked {
                return Err(Error::invalid(format!(
                    "board {name:?} is active: only a revoked board's name can be taken again; revoke it first"
                )));
            }
        }
        let profile = opts.profile.clone().unwrap_or_default();
        self.require_profile(&profile)?;
        Ok(profile)
    }

    /// iPXE checks the server certificate's name, not its key usage: a board whose name (or
    /// a certificate name) is one the server certificates carry could, with its stolen key,
    /// play the server to every board. Such names are refused.
    pub(super) fn refuse_server_names(&self, name: &BoardName, cert_pem: &str) -> Result<()> {
        let server: Vec<San> = if self.state.server_cert().exists() {
            crate::health::server_cert_names(&self.state)?
                .into_iter()
                .flat_map(|(_, sans)| sans)
                .collect()
        } else {
            Vec::new()
        };
        let own = ca::cert_der_from_bytes(cert_pem.as_bytes())
            .and_then(|der| ca::cert_sans(&der))
            .unwrap_or_default();
        let names = std::iter::once(name.as_str().to_string()).chain(
            own.iter()
                .map(|s| s.url_host().trim_matches(['[', ']']).to_string()),
        );
        for n in names {
            if let Some(s) = server.iter().find(|s| s.covers(&n)) {
                return Err(Error::invalid(format!(
                    "{n:?} is a name of the server (its certificates carry {}): iPXE would take \
                     this board's certificate for the server's, so its key could serve every \
                     board; choose a name the server certificates do not carry",
                    s.url_host()
                )));
            }
        }
        Ok(())
    }

    pub(super) fn require_profile(&self, profile: &ProfileName) -> Result<()> {
        let p = self.state.profile(profile);
        if !p.exists() {
            return Err(Error::invalid(format!(
                "profile \"{profile}\" does not exist: create {} first",
                p.display()
            )));
        }
        Ok(())
    }

    pub(super) fn register_issued(
        &self,
        name: &BoardName,
        opts: &BoardOptions,
        profile: ProfileName,
        new: NewCert<'_>,
    ) -> Result<Board> {
        self.refuse_server_names(name, new.cert_pem)?;
        let info = &new.info;
        if let Some(other) = self.registry.by_fingerprint(&info.fingerprint_sha256)? {
            return Err(Error::invalid(format!(
                "this certificate is already registered as board {:?}",
                other.name.as_str()
            )));
        }
        if self.registry.serial_taken(&info.serial) {
            return Err(Error::invalid(format!(
                "serial {} is already used by another board",
                info.serial
            )));
        }
        let secrets = to_map(&opts.secrets);
        let NewCert {
            info,
            origin,
            cert_pem,
            key_pem,
        } = new;
        let board = Board {
            name: name.clone(),
            serial: info.serial,
            fingerprint_sha1: info.fingerprint_sha1,
            fingerprint_sha256: info.fingerprint_sha256,
            mac: opts.mac,
            profile,
            arch: opts.arch.unwrap_or_default(),
            not_before: info.not_before,
            not_after: info.not_after,
            status: Status::Active,
            origin,
            revocation: Default::default(),
            secret_names: secrets.keys().cloned().collect(),
            vars: to_map(&opts.vars),
            previous: Vec::new(),
        };
        if opts.replace && self.registry.exists(name) {
            let old = self.registry.get(name)?;
            let mut board = board;
            board.previous = old.previous.clone();
            board
                .previous
                .push(old.retired(OffsetDateTime::now_utc(), true));
            self.registry.save_secrets(name, &secrets)?;
            self.registry.replace_cert(&board, cert_pem, key_pem)?;
            return Ok(board);
        }
        self.registry.add(&board, cert_pem, key_pem, &secrets)?;
        Ok(board)
    }

    pub(super) fn issue_unique<T: AsRef<ca::Signed>>(
        &self,
        mut issue: impl FnMut() -> Result<T>,
    ) -> Result<(T, CertInfo)> {
        // 127-bit random serials collide essentially never; the loop makes "unique" a guarantee.
        for _ in 0..8 {
            let issued = issue()?;
            let info = ca::cert_info(&issued.as_ref().cert_der)?;
            if !self.registry.serial_taken(&info.serial) {
                return Ok((issued, info));
            }
        }
        Err(Error::crypto(
            "cannot issue certificate",
            "no unused serial found",
        ))
    }

    /// Enroll several boards with the same options. Keys are generated in parallel on every
    /// core before the lock is taken (key generation is most of the cost); then each board is
    /// issued and registered under the lock. Names are all checked first.
    pub fn enroll_many(&self, names: &[BoardName], opts: &BoardOptions) -> Result<Vec<Board>> {
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            if !seen.insert(n) {
                return Err(Error::invalid(format!("board {n:?} is named twice")));
            }
        }
        if names.len() > 1 && opts.mac.is_some() {
            return Err(Error::invalid(
                "a MAC names one board: enroll boards with MACs one at a time",
            ));
        }
        for n in names {
            self.precheck(n, opts)?;
        }
        let keys = generate_keys(names.len())?;
        let _lock = self.state.lock()?;
        let mut profile = ProfileName::default();
        for n in names {
            profile = self.precheck(n, opts)?;
        }
        let ca = self.ca()?;
        let days = opts.days.unwrap_or(days::BOARD);
        let mut out = Vec::with_capacity(names.len());
        for (name, key) in names.iter().zip(keys) {
            let (issued, info) =
                self.issue_unique(|| ca.issue_client(name.as_str(), &key, days))?;
            let new = NewCert {
                info,
                origin: Origin::Enrolled,
                cert_pem: &issued.cert.cert_pem,
                key_pem: Some(&issued.key_pem),
            };
            out.push(self.register_issued(name, opts, profile.clone(), new)?);
        }
        Ok(out)
    }

    /// Sign a board's own CSR (PEM or DER), registered.
    pub fn sign(&self, name: &BoardName, csr: &[u8], opts: &BoardOptions) -> Result<Board> {
        let _lock = self.state.lock()?;
        let profile = self.precheck(name, opts)?;
        let ca = self.ca()?;
        let days = opts.days.unwrap_or(days::BOARD);
        let (issued, info) = self.issue_unique(|| ca.sign_csr(csr, name.as_str(), days))?;
        let new = NewCert {
            info,
            origin: Origin::Signed,
            cert_pem: &issued.cert_pem,
            key_pem: None,
        };
        self.register_issued(name, opts, profile, new)
    }

    /// Adopt an existing certificate issued by our CA.
    pub fn register(&self, name: &BoardName, cert: &[u8], opts: &BoardOptions) -> Result<Board> {
        let _lock = self.state.lock()?;
        let profile = self.precheck(name, opts)?;
        let ca = self.ca()?;
        let der = ca::cert_der_from_bytes(cert)?;
        let info = ca.verify_issued(&der)?;
        let pem = ca::cert_pem(&der);
        let new = NewCert {
            info,
            origin: Origin::Registered,
            cert_pem: &pem,
            key_pem: None,
        };
        self.register_issued(name, opts, profile, new)
    }

    /// Change a board's MAC, profile, variables or secrets; the server sees it on the next boot.
    pub fn update(&self, name: &BoardName, u: &BoardUpdate) -> Result<Board> {
        let _lock = self.state.lock()?;
        let mut board = self.registry.get(name)?;
        if let Some(a) = u.arch {
            board.arch = a;
        }
        if let Some(p) = &u.profile {
            self.require_profile(p)?;
            board.profile = p.clone();
        }
        if u.clear_mac {
            board.mac = None;
        }
        if let Some(m) = u.mac {
            board.mac = Some(m);
        }
        for k in &u.unset_vars {
            if board.vars.remove(k).is_none() {
                return Err(Error::invalid(format!("board {name} has no var {k:?}")));
            }
        }
        board.vars.extend(to_map(&u.vars));
        let mut secrets = self.registry.secrets(name)?;
        for k in &u.unset_secrets {
            if secrets.remove(k).is_none() {
                return Err(Error::invalid(format!("board {name} has no secret {k:?}")));
            }
        }
        secrets.extend(to_map(&u.secrets));
        board.secret_names = secrets.keys().cloned().collect();
        self.registry.save_secrets(name, &secrets)?;
        self.registry.save(&board)?;
        Ok(board)
    }

    /// Mark a board revoked and publish a new CRL.
    pub fn revoke(&self, name: &BoardName, reason: Reason) -> Result<Board> {
        let _lock = self.state.lock()?;
        let ca = self.ca()?;
        let mut board = self.registry.get(name)?;
        if board.status == Status::Revoked {
            return Err(Error::invalid(format!("board {name:?} is already revoked")));
        }
        board.revoke(reason, OffsetDateTime::now_utc());
        // The CRL is made (and every other board read) before anything is written: a registry
        // that cannot be read fails the revoke with nothing changed, never half-done.
        let crl = self.make_crl(&ca, Some(&board))?;
        // The registry is what the server checks on every request: update it first.
        self.registry.save(&board)?;
        self.write_crl(&crl)?;
        Ok(board)
    }

    /// A new certificate for each board (same name, MAC, profile, variables and secrets; a
    /// new serial; the same key unless `new_key`). The old certificate stays accepted until
    /// [`Lab::revoke_previous`] (or at once with `revoke_old`), so that a board keeps booting
    /// until its new image is in place. Rebuild the boards' images afterwards.
    pub fn renew(&self, names: &[BoardName], opts: &RenewOptions) -> Result<Vec<Board>> {
        let keys = if opts.new_key {
            generate_keys(names.len())?
        } else {
            Vec::new()
        };
        let _lock = self.state.lock()?;
        let ca = self.ca()?;
        let mut boards = Vec::new();
        for n in names {
            let b = self.registry.get(n)?;
            if b.status == Status::Revoked {
                return Err(Error::RenewRevoked(n.to_string()));
            }
            boards.push(b);
        }
        let days = opts.days.unwrap_or(days::BOARD);
        let now = OffsetDateTime::now_utc();
        let mut keys = keys.into_iter();
        let mut done = Vec::new();
        for mut board in boards {
            let name = board.name.clone();
            let (cert_pem, key_pem, origin, info) = match keys.next() {
                Some(key) => {
                    let (issued, info) =
                        self.issue_unique(|| ca.issue_client(name.as_str(), &key, days))?;
                    (
                        issued.cert.cert_pem,
                        Some(issued.key_pem),
                        Origin::Enrolled,
                        info,
                    )
                }
                None => {
                    let old = ca::cert_der_from_bytes(&self.registry.cert_pem(&name)?)?;
                    let (signed, info) =
                        self.issue_unique(|| ca.reissue(&old, name.as_str(), days))?;
                    let key = self
                        .registry
                        .key_pem(&name)
                        .ok()
                        .flatten()
                        .and_then(|k| String::from_utf8(k).ok());
                    (signed.cert_pem, key, board.origin, info)
                }
            };
            board.renewed(info, origin, now, opts.revoke_old);
            let crl = opts
                .revoke_old
                .then(|| self.make_crl(&ca, Some(&board)))
                .transpose()?;
            self.registry
                .replace_cert(&board, &cert_pem, key_pem.as_deref())?;
            if let Some(crl) = crl {
                self.write_crl(&crl)?;
            }
            done.push(board);
        }
        Ok(done)
    }

    /// End the grace period of a board's previous certificates: revoked, in the CRL, refused.
    /// Run it once the board boots from its new image.
    pub fn revoke_previous(&self, name: &BoardName) -> Result<Board> {
        let _lock = self.state.lock()?;
        let ca = self.ca()?;
        let mut board = self.registry.get(name)?;
        let now = OffsetDateTime::now_utc();
        if !board.end_grace(now) {
            return Err(Error::invalid(format!(
                "board {name} has no previous certificate still accepted (nothing to revoke)"
            )));
        }
        let crl = self.make_crl(&ca, Some(&board))?;
        self.registry.save(&board)?;
        self.write_crl(&crl)?;
        Ok(board)
    }
}
