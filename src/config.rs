//! `config.toml`: the URLs boards are pointed at, used by `serve` and `build`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::state::{self, StateDir, MODE_PUBLIC};
use crate::types::San;

/// Port of the HTTPS (mTLS) listener unless configured otherwise.
pub const DEFAULT_HTTPS_PORT: u16 = 8443;
/// Port of the plain-HTTP files listener unless configured otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// Settings written by `init` and read by the other commands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the mTLS server as boards reach it (`https://HOST:PORT`).
    pub server_url: String,
    /// Base URL of the plain-HTTP files server as boards reach it (`http://HOST:PORT`).
    pub files_url: String,
}

impl Config {
    /// Defaults derived from the server certificate's first SAN.
    pub fn from_san(san: &San) -> Config {
        let host = san.url_host();
        Config {
            server_url: format!("https://{host}:{DEFAULT_HTTPS_PORT}"),
            files_url: format!("http://{host}:{DEFAULT_HTTP_PORT}"),
        }
    }

    /// Read `config.toml`.
    pub fn load(state: &StateDir) -> Result<Config> {
        let path = state.config();
        if !path.exists() {
            return Err(Error::NoCa(state.root().to_path_buf()));
        }
        let text = state::read_to_string(&path)?;
        state::parse_toml(&path, &text)
    }

    /// Write `config.toml` atomically.
    pub fn save(&self, state: &StateDir) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::invalid(e.to_string()))?;
        state::write_atomic(&state.config(), text.as_bytes(), MODE_PUBLIC)
    }
}

impl Config {
    /// The port of the server URL (443 when it names none): where a proxy in front listens.
    pub fn server_port(&self) -> u16 {
        let authority = self
            .server_url
            .split_once("://")
            .map_or(self.server_url.as_str(), |(_, r)| r);
        let authority = authority.split('/').next().unwrap_or_default();
        // The part after the last ':' is a port only outside an IPv6 literal's brackets.
        match authority.rsplit_once(':') {
            Some((_, p)) if !p.contains(']') => p.parse().unwrap_or(443),
            _ => 443,
        }
    }
}

/// Check that a URL has the scheme we expect and no trailing slash issues.
pub fn check_url(url: &str, scheme: &str, what: &str) -> Result<String> {
    let rest = url
        .strip_prefix(&format!("{scheme}://"))
        .ok_or_else(|| Error::invalid(format!("{what} {url:?} must start with {scheme}://")))?;
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Err(Error::invalid(format!("{what} {url:?} has no valid host")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_port_comes_from_the_url() {
        let port = |u: &str| {
            Config {
                server_url: u.into(),
                files_url: String::new(),
            }
            .server_port()
        };
        assert_eq!(port("https://boot.lab:8443"), 8443);
        assert_eq!(port("https://boot.lab"), 443);
        assert_eq!(port("https://boot.lab:9443/x"), 9443);
        assert_eq!(port("https://[fd00::1]"), 443);
        assert_eq!(port("https://[fd00::1]:8443"), 8443);
    }
}
