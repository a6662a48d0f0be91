//! `config.toml`: the URLs boards are pointed at, used by `serve` and `build`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::cached::{Cached, Change, Look};
use crate::store::state::{self, StateDir, MODE_PUBLIC};
use crate::store::watch::Snapshot;
use crate::types::San;

/// Port of the HTTPS (mTLS) listener unless configured otherwise.
pub const DEFAULT_HTTPS_PORT: u16 = 8443;
/// Port of the plain-HTTP files listener unless configured otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Port boards send their console to (syslog over TLS, RFC 5425) unless configured otherwise.
pub const DEFAULT_CONSOLE_PORT: u16 = 6514;

/// Settings written by `init` and read by the other commands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the mTLS server as boards reach it (`https://HOST:PORT`).
    pub server_url: String,
    /// Base URL of the plain-HTTP files server as boards reach it (`http://HOST:PORT`).
    pub files_url: String,
    /// Where boards send their console over TLS, `HOST:PORT`, or `off`. Unset: the server
    /// URL's host, port 6514.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
}

impl Config {
    /// Defaults derived from the server certificate's first SAN.
    pub fn from_san(san: &San) -> Config {
        let host = san.url_host();
        Config {
            server_url: format!("https://{host}:{DEFAULT_HTTPS_PORT}"),
            files_url: format!("http://{host}:{DEFAULT_HTTP_PORT}"),
            console: None,
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
    /// `host[:port]` of the server URL.
    fn server_authority(&self) -> &str {
        let rest = self
            .server_url
            .split_once("://")
            .map_or(self.server_url.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or_default()
    }

    /// The host boards connect to, which the server certificate must name (an IPv6 address
    /// without its brackets).
    pub fn server_host(&self) -> &str {
        let authority = self.server_authority();
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => authority.split(':').next().unwrap_or_default(),
        }
    }

    /// `HOST:PORT` boards send their console to (iPXE's `syslogs` setting); None: off.
    pub fn console_target(&self) -> Option<String> {
        match self.console.as_deref() {
            Some("off") => None,
            Some(t) => Some(t.to_string()),
            None => match self.server_host() {
                v6 if v6.contains(':') => Some(format!("[{v6}]:{DEFAULT_CONSOLE_PORT}")),
                host => Some(format!("{host}:{DEFAULT_CONSOLE_PORT}")),
            },
        }
    }

    /// The port boards send their console to (None: off), where `serve` listens for it.
    pub fn console_port(&self) -> Option<u16> {
        let t = self.console_target()?;
        t.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
    }

    /// The port of the server URL (443 when it names none): where a proxy in front listens.
    pub fn server_port(&self) -> u16 {
        let authority = self.server_authority();
        // After the last ':' of an IPv6 literal without a port comes "…]", which is no number.
        authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(443)
    }
}

impl Config {
    /// The URLs checked as `init` checks them: an edited `config.toml` with a mistyped scheme
    /// would otherwise point every board at nothing.
    pub fn checked(self) -> Result<Config> {
        if let Some(c) = &self.console {
            check_console(c)?;
        }
        Ok(Config {
            server_url: check_url(&self.server_url, "https", "server_url")?,
            files_url: check_url(&self.files_url, "http", "files_url")?,
            console: self.console,
        })
    }
}

/// `config.toml` as `serve` uses it for every script, read again only when the file changed:
/// an edit (boards pointed at another files server, say) is in the very next script, with no
/// restart, as registry and profile edits are. An edit that does not parse, or names a URL
/// `init` would refuse, keeps the settings in force and is said once.
#[derive(Debug)]
pub struct ConfigCache {
    state: StateDir,
    current: Cached<Config>,
}

impl ConfigCache {
    /// The settings as they are now; an error when they cannot be used (nothing to keep yet).
    pub fn load(state: &StateDir) -> Result<ConfigCache> {
        let current = Cached::new(vec![state.config()], || {
            Config::load(state)?
                .checked()
                .map_err(|e| in_file(state, e))
        })?;
        Ok(ConfigCache {
            state: state.clone(),
            current,
        })
    }

    /// The settings in force, as last read (no look at the file).
    pub fn in_force(&self) -> Arc<Config> {
        self.current.in_force()
    }

    /// The settings for this request, and whether they are new since the last request;
    /// `say` hears of an edit taken or refused.
    pub fn get(&self, now: &Snapshot, say: impl Fn(&str)) -> (Arc<Config>, bool) {
        let path = self.state.config();
        let (config, change) =
            self.current
                .get(Look::Watched(now), |cur| -> Result<Option<Config>> {
                    let config = match state::read_versioned(&path) {
                        Ok(Some((_, text))) => state::parse_toml::<Config>(&path, &text)
                            .and_then(|c| c.checked().map_err(|e| in_file(&self.state, e))),
                        Ok(None) => Err(Error::invalid(format!("{} is gone", path.display()))),
                        Err(e) => Err(e),
                    }?;
                    Ok((config != *cur).then_some(config))
                });
        match change {
            Change::Same => (config, false),
            Change::Taken => {
                say(&format!(
                    "ipxe-ca: {} changed: server_url {}, files_url {}",
                    path.display(),
                    config.server_url,
                    config.files_url
                ));
                (config, true)
            }
            Change::Kept(e) => {
                say(&format!(
                    "ipxe-ca: warning: kept the previous settings (server_url {}, files_url {}): {e}",
                    config.server_url, config.files_url
                ));
                (config, false)
            }
        }
    }
}

/// A bad URL, said with the file it is in.
fn in_file(state: &StateDir, e: Error) -> Error {
    Error::Parse {
        path: state.config(),
        detail: e.to_string(),
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

/// A console target is `off` or `HOST:PORT` (a port iPXE can parse, a host without spaces).
pub fn check_console(target: &str) -> Result<()> {
    if target == "off" {
        return Ok(());
    }
    let bad = || {
        Error::invalid(format!(
            "console {target:?} must be HOST:PORT (where boards send their console) or off"
        ))
    };
    let (host, port) = target.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty()
        || host.contains(char::is_whitespace)
        || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `get` of a cache, with what it said.
    fn get(cache: &ConfigCache, ch: &crate::store::watch::Changes) -> (Config, Vec<String>) {
        let said = std::sync::Mutex::new(Vec::new());
        let (c, changed) = cache.get(&ch.snapshot(), |m| said.lock().unwrap().push(m.to_string()));
        let said = said.into_inner().unwrap();
        // "Changed" exactly when the settings in force are new, which is said.
        assert_eq!(
            changed,
            said.iter().any(|m| m.contains(" changed: ")),
            "{said:?}"
        );
        (Config::clone(&c), said)
    }

    #[test]
    fn an_edited_config_is_taken_and_a_bad_edit_keeps_the_last_good_one_said_once() {
        let t = tempfile::tempdir().unwrap();
        let st = StateDir::new(t.path());
        let good = |files: &str| Config {
            server_url: "https://boot.lab:8443".into(),
            files_url: files.into(),
            console: None,
        };
        good("http://boot.lab:8080").save(&st).unwrap();
        // Watched (inotify) and not (a `stat` per request): the same answers.
        for ch in [
            crate::store::watch::Changes::new(t.path()),
            crate::store::watch::Changes::off(),
        ] {
            good("http://boot.lab:8080").save(&st).unwrap();
            let cache = ConfigCache::load(&st).unwrap();
            assert_eq!(get(&cache, &ch), (good("http://boot.lab:8080"), vec![]));
            // An edit in place, not a rename, is seen.
            std::fs::write(
                st.config(),
                "server_url = \"https://boot.lab:8443\"\nfiles_url = \"http://mirror.la:8080\"\n",
            )
            .unwrap();
            let (c, said) = get(&cache, &ch);
            assert_eq!(c, good("http://mirror.la:8080"));
            assert!(
                said[0].contains("files_url http://mirror.la:8080"),
                "{said:?}"
            );
            // A scheme `init` would refuse, then text that does not parse: each kept out and
            // said once, however many requests follow.
            for bad in [
                "server_url = \"https://boot.lab:8443\"\nfiles_url = \"ftp://mirror.lab\"\n",
                "server_url = \"https://boot.lab:8443\"\nfiles_url = \n",
            ] {
                std::fs::write(st.config(), bad).unwrap();
                let (c, said) = get(&cache, &ch);
                assert_eq!(c, good("http://mirror.la:8080"));
                assert_eq!(said.len(), 1, "{said:?}");
                assert!(said[0].contains("kept the previous settings"), "{said:?}");
                assert!(said[0].contains("config.toml"), "{said:?}");
                assert_eq!(get(&cache, &ch), (good("http://mirror.la:8080"), vec![]));
            }
            // Mended: taken, a trailing slash trimmed as `init` trims it.
            std::fs::write(
                st.config(),
                "server_url = \"https://boot.lab:8443\"\nfiles_url = \"http://mirror.lab/\"\n",
            )
            .unwrap();
            assert_eq!(get(&cache, &ch).0, good("http://mirror.lab"));
        }
        // A state whose config names a bad URL does not start serving.
        std::fs::write(
            st.config(),
            "server_url = \"http://x\"\nfiles_url = \"http://x\"\n",
        )
        .unwrap();
        let e = ConfigCache::load(&st).unwrap_err().to_string();
        assert!(e.contains("server_url") && e.contains("https://"), "{e}");
    }

    #[test]
    fn the_console_goes_to_the_server_host_unless_configured() {
        let c = |u: &str, console: Option<&str>| Config {
            server_url: u.into(),
            files_url: String::new(),
            console: console.map(str::to_string),
        };
        let t = c("https://boot.lab:8443", None);
        assert_eq!(t.console_target().as_deref(), Some("boot.lab:6514"));
        assert_eq!(t.console_port(), Some(6514));
        let v6 = c("https://[fd00::1]:8443", None);
        assert_eq!(v6.console_target().as_deref(), Some("[fd00::1]:6514"));
        let set = c("https://boot.lab", Some("logs.lab:7514"));
        assert_eq!(set.console_port(), Some(7514));
        let off = c("https://boot.lab", Some("off"));
        assert_eq!((off.console_target(), off.console_port()), (None, None));
        for bad in ["logs.lab", "logs.lab:0", "logs.lab:x", ":6514", "a b:6514"] {
            let e = check_console(bad).unwrap_err().to_string();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
        // A mistyped edit of config.toml keeps the settings in force, as for the URLs.
        assert!(c("https://boot.lab", Some("nope")).checked().is_err());
    }

    #[test]
    fn server_port_comes_from_the_url() {
        let port = |u: &str| {
            Config {
                server_url: u.into(),
                files_url: String::new(),
                console: None,
            }
            .server_port()
        };
        assert_eq!(port("https://boot.lab:8443"), 8443);
        assert_eq!(port("https://boot.lab"), 443);
        assert_eq!(port("https://boot.lab:9443/x"), 9443);
        assert_eq!(port("https://[fd00::1]"), 443);
        assert_eq!(port("https://[fd00::1]:8443"), 8443);
    }

    #[test]
    fn a_url_needs_its_scheme_and_a_host_without_spaces() {
        assert_eq!(
            check_url("https://boot.lab:8443/", "https", "u").unwrap(),
            "https://boot.lab:8443"
        );
        for bad in [
            "http://boot.lab",
            "https://",
            "https://boot lab",
            "boot.lab",
        ] {
            let e = check_url(bad, "https", "the server URL")
                .unwrap_err()
                .to_string();
            assert!(e.contains("the server URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn server_host_is_what_the_certificate_must_name() {
        let host = |u: &str| {
            Config {
                server_url: u.into(),
                files_url: String::new(),
                console: None,
            }
            .server_host()
            .to_string()
        };
        assert_eq!(host("https://boot.lab:8443"), "boot.lab");
        assert_eq!(host("https://boot.lab"), "boot.lab");
        assert_eq!(host("https://boot.lab/x:1"), "boot.lab");
        assert_eq!(host("https://[fd00::1]:8443"), "fd00::1");
        assert_eq!(host("https://[fd00::1]"), "fd00::1");
        assert_eq!(host("https://10.0.2.2:9443/a"), "10.0.2.2");
    }
}
