//! `init`: a new state dir (CA, server certificates, code signer, templates), and the keys
//! and secrets it made that other verbs use.

use super::*;

impl Lab {
    /// The secret nginx sends with every proxied request (`X-IPXE-CA-Proxy-Secret`), made on
    /// first use: trusting a peer address alone would let any local user pose as nginx.
    pub fn proxy_secret(&self) -> Result<String> {
        let key = Key::ProxySecret;
        if !self.state.has_key(key) {
            let _lock = self.state.lock()?;
            if !self.state.has_key(key) {
                let mut raw = [0u8; 32];
                aws_lc_rs::rand::fill(&mut raw)
                    .map_err(|_| Error::crypto("cannot make the proxy secret", "no randomness"))?;
                self.state.write_key(key, hex::encode(raw).as_bytes())?;
            }
        }
        let s = String::from_utf8_lossy(&self.state.read_key(key)?)
            .trim()
            .to_string();
        if s.len() < 32 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Parse {
                path: self.state.key_file(key),
                detail: "expected at least 32 hex digits; delete it and run `ipxe-ca nginx-config` again".into(),
            });
        }
        Ok(s)
    }

    pub(super) fn save_codesign(&self, issued: &ca::Issued) -> Result<()> {
        self.state
            .write_key(Key::CodeSigning, issued.key_pem.as_bytes())?;
        state::write_atomic(
            &self.state.codesign_cert(),
            issued.cert.cert_pem.as_bytes(),
            MODE_PUBLIC,
        )
    }

    /// The signer of boot files. State dirs made before signing existed get their
    /// code-signing certificate here, once (`created` says so).
    pub fn signer(&self) -> Result<(crate::codesign::Signer, bool)> {
        let s = &self.state;
        let mut created = false;
        if !s.codesign_cert().exists() || !s.has_key(Key::CodeSigning) {
            let ca = self.ca()?;
            let _lock = s.lock()?;
            if !s.codesign_cert().exists() || !s.has_key(Key::CodeSigning) {
                self.save_codesign(&ca.issue_codesign(KeySize::Rsa2048, days::CODESIGN)?)?;
                created = true;
            }
        }
        let signer = crate::codesign::Signer::new(
            &state::read(&s.codesign_cert())?,
            &s.read_key(Key::CodeSigning)?,
            &state::read(&s.ca_cert())?,
        )?;
        Ok((signer, created))
    }

    /// Create (or adopt) the CA, the separate server certificate, config and templates.
    pub fn init(&self, opts: &InitOptions) -> Result<Initialized> {
        let sans = if opts.sans.is_empty() {
            default_sans()
        } else {
            opts.sans.clone()
        };
        let first = &sans[0];
        let mut config = Config::from_san(first);
        if let Some(u) = &opts.server_url {
            config.server_url = crate::store::config::check_url(u, "https", "the server URL")?;
        }
        if let Some(u) = &opts.files_url {
            config.files_url = crate::store::config::check_url(u, "http", "the files URL")?;
        }
        if self.state.has_ca() && !opts.force {
            return Err(Error::CaExists(self.state.root().to_path_buf()));
        }
        check_names_cover(&sans, &config, NameFix::Init)?;
        // Everything is made and validated before the state dir is touched.
        let (ca_cert, ca_key) = match &opts.from_ca {
            Some((cert, key)) => (state::read(cert)?, state::read(key)?),
            None => {
                let issued = ca::create_ca(&opts.name, opts.key_size, opts.days)?;
                (
                    issued.cert.cert_pem.into_bytes(),
                    issued.key_pem.into_bytes(),
                )
            }
        };
        // Validate everything before writing anything.
        let ca = Ca::load(&ca_cert, &ca_key)?;
        let server = ca.issue_server(&sans, opts.key_size, days::SERVER)?;
        let server_ecdsa = ca.issue_server_ecdsa(&sans, days::SERVER)?;
        let crl = ca.crl(&[], 1, days::CRL)?;
        let codesign = ca.issue_codesign(opts.key_size, days::CODESIGN)?;

        let _lock = self.state.lock()?;
        if self.state.has_ca() && !opts.force {
            return Err(Error::CaExists(self.state.root().to_path_buf()));
        }
        let ca_pem = ca::cert_pem(ca.cert_der());
        self.state.write_key(Key::Ca, &ca_key)?;
        state::write_atomic(&self.state.ca_cert(), ca_pem.as_bytes(), MODE_PUBLIC)?;
        state::write_atomic(&self.state.crl(), crl.as_bytes(), MODE_PUBLIC)?;
        state::write_atomic(&self.state.crl_number(), b"1\n", MODE_PUBLIC)?;
        self.save_server(&server, &server_ecdsa, &ca_pem)?;
        self.save_codesign(&codesign)?;
        config.save(&self.state)?;
        self.write_templates()?;
        Ok(Initialized {
            config,
            sans,
            adopted: opts.from_ca.is_some(),
        })
    }

    pub(super) fn write_templates(&self) -> Result<()> {
        let s = &self.state;
        state::write_if_absent(&s.embed_script(), EMBED_TEMPLATE.as_bytes(), MODE_PUBLIC)?;
        state::write_if_absent(
            &s.profile(&ProfileName::default()),
            DEFAULT_PROFILE.as_bytes(),
            MODE_PUBLIC,
        )?;
        state::write_if_absent(&s.gitignore(), STATE_GITIGNORE.as_bytes(), MODE_PUBLIC)?;
        state::create_dir_private(&s.secrets_dir())?;
        state::create_dir_private(&s.files_dir())?;
        s.create_board_folders()
    }
}
