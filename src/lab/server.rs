//! The server certificates and where the boards are pointed (`server-cert`, `config`).

use super::*;

impl Lab {
    pub(super) fn save_server(
        &self,
        rsa: &ca::Issued,
        ecdsa: &ca::Issued,
        ca_pem: &str,
    ) -> Result<()> {
        let s = &self.state;
        for (issued, cert, key) in [
            (rsa, s.server_cert(), Key::ServerRsa),
            (ecdsa, s.server_ecdsa_cert(), Key::ServerEcdsa),
        ] {
            s.write_key(key, issued.key_pem.as_bytes())?;
            // Leaf first, then the CA: the server sends the whole chain.
            let chain = format!("{}{ca_pem}", issued.cert.cert_pem);
            state::write_atomic(&cert, chain.as_bytes(), MODE_PUBLIC)?;
        }
        Ok(())
    }

    /// Issue new server certificates (RSA and ECDSA) for `sans`, or for the names of the
    /// current one: rotation before expiry, a new name, or the ECDSA pair for state dirs made
    /// before it existed. A running `serve` picks them up at its next start.
    pub fn renew_server(&self, sans: Option<Vec<San>>) -> Result<Vec<San>> {
        let ca = self.ca()?;
        let sans = match sans {
            Some(v) if !v.is_empty() => v,
            _ => ca::cert_sans(&ca::cert_der_from_bytes(&state::read(
                &self.state.server_cert(),
            )?)?)?,
        };
        if sans.is_empty() {
            return Err(Error::invalid(
                "the current server certificate names no SAN: give the names boards reach the server by",
            ));
        }
        let config = Config::load(&self.state)?;
        check_names_cover(&sans, &config, NameFix::ServerCert)?;
        // The size `init --key-size` chose, as the current server key has it.
        let key_size = state::read(&self.state.server_cert())
            .ok()
            .and_then(|pem| ca::cert_der_from_bytes(&pem).ok())
            .and_then(|der| ca::rsa_key_size(&der))
            .unwrap_or(KeySize::Rsa2048);
        let rsa = ca.issue_server(&sans, key_size, days::SERVER)?;
        let ecdsa = ca.issue_server_ecdsa(&sans, days::SERVER)?;
        let _lock = self.state.lock()?;
        self.save_server(&rsa, &ecdsa, &ca::cert_pem(ca.cert_der()))?;
        Ok(sans)
    }

    /// Point the boards at other URLs (`config.toml`), checked as `init` checks them and, for
    /// the server URL, against the names of both server certificates; `console`: where they
    /// send their console (`HOST:PORT` or `off`). `None` keeps a setting.
    pub fn configure(
        &self,
        server_url: Option<&str>,
        files_url: Option<&str>,
        console: Option<&str>,
    ) -> Result<Configured> {
        let _lock = self.state.lock()?;
        let before = Config::load(&self.state)?;
        let mut after = before.clone();
        if let Some(u) = server_url {
            after.server_url = crate::store::config::check_url(u, "https", "the server URL")?;
        }
        if let Some(u) = files_url {
            after.files_url = crate::store::config::check_url(u, "http", "the files URL")?;
        }
        if let Some(c) = console {
            crate::store::config::check_console(c)?;
            after.console = Some(c.to_string());
        }
        if after.server_url != before.server_url {
            crate::health::server_certs_name(&self.state, &after, NameFix::ServerUrl)?;
        }
        if after != before {
            after.save(&self.state)?;
        }
        Ok(Configured { before, after })
    }

    /// What is wrong, in words, when a server certificate does not name `config`'s server
    /// host ([`crate::health::server_name_problem`]).
    pub fn server_name_problem(&self, config: &Config) -> Option<Error> {
        crate::health::server_name_problem(&self.state, config)
    }
}
