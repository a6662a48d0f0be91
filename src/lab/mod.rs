//! The operations an operator runs on a state dir: init, enroll, sign, register, revoke, list.
//! Each writing operation holds the state lock from validation to the last write.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;

use crate::board::{Board, BoardView, Origin, Status};
use crate::ca::{self, Ca, CertInfo, KeySize, Reason, Revoked};
use crate::error::{Error, NameFix, Result};
pub use crate::health::Expiry;
use crate::health::{check_names_cover, crl_facts};
use crate::store::config::Config;
use crate::store::registry::Registry;
use crate::store::state::{self, Key, StateDir, MODE_PUBLIC};
use crate::types::{Arch, BoardName, KeyValue, Mac, ProfileName, San};

pub use crate::ipxe_build::EMBED_TEMPLATE;
/// The default profile (written to `profiles/default.ipxe`).
pub const DEFAULT_PROFILE: &str = include_str!("../../ipxe-scripts/default.ipxe");
const STATE_GITIGNORE: &str = include_str!("../../ipxe-scripts/state.gitignore");

/// Defaults for validity, in days.
pub mod days {
    /// The CA: 10 years.
    pub const CA: u32 = 3650;
    /// The server: 824 days from issue (it starts at `ca::BOARDS_CLOCK_FLOOR`, for boards
    /// whose clock is years behind: iPXE checks no maximum lifetime).
    pub const SERVER: u32 = 824;
    /// The boot-file signer: 3 years, like the boards that check its signatures.
    pub const CODESIGN: u32 = 1095;
    /// Boards: 3 years, roughly a board's service life between reflashes.
    pub const BOARD: u32 = 1095;
    /// The CRL is re-signed on every revoke and by `ipxe-ca crl`; this is how long a copy stays
    /// valid. A year: nginx refuses every client once its CRL has expired, and labs are quiet.
    pub const CRL: u32 = 365;
}

/// What `init` needs.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The CA's common name.
    pub name: String,
    /// The server certificate's names; the first decides the default URLs. Empty: [`default_sans`].
    pub sans: Vec<San>,
    /// Overrides the server URL in config.toml.
    pub server_url: Option<String>,
    /// Overrides the files URL in config.toml.
    pub files_url: Option<String>,
    /// RSA size for the CA and server keys.
    pub key_size: KeySize,
    /// CA validity.
    pub days: u32,
    /// Replace an existing CA.
    pub force: bool,
    /// Adopt an existing CA (certificate, key) instead of creating one.
    pub from_ca: Option<(PathBuf, PathBuf)>,
}

impl Default for InitOptions {
    /// A new 10-year RSA-2048 CA named "ipxe-ca boot CA"; the server is reached as localhost.
    fn default() -> Self {
        InitOptions {
            name: "ipxe-ca boot CA".into(),
            sans: Vec::new(),
            server_url: None,
            files_url: None,
            key_size: KeySize::Rsa2048,
            days: days::CA,
            force: false,
            from_ca: None,
        }
    }
}

/// The server names `init` uses when given none: enough for a first boot on this host.
pub fn default_sans() -> Vec<San> {
    vec![San::Dns("localhost".into()), San::Ip([127, 0, 0, 1].into())]
}

/// What `configure` changed: the settings before and after.
#[derive(Clone, Debug, Serialize)]
pub struct Configured {
    /// The settings before.
    pub before: Config,
    /// The settings now in `config.toml`.
    pub after: Config,
}

/// What `init` made.
#[derive(Clone, Debug)]
pub struct Initialized {
    /// The URLs boards use.
    pub config: Config,
    /// The server certificate's names.
    pub sans: Vec<San>,
    /// Whether an existing CA was adopted (instead of created).
    pub adopted: bool,
}

/// Options shared by `enroll`, `sign` and `register`.
#[derive(Clone, Debug, Default)]
pub struct BoardOptions {
    /// The board's MAC.
    pub mac: Option<Mac>,
    /// Its profile (default `default`).
    pub profile: Option<ProfileName>,
    /// Its CPU architecture (default x86_64).
    pub arch: Option<Arch>,
    /// Certificate validity (enroll, sign).
    pub days: Option<u32>,
    /// Template variables.
    pub vars: Vec<KeyValue>,
    /// Secret template variables.
    pub secrets: Vec<KeyValue>,
    /// Take the name of a revoked board (its old certificates stay revoked, in the CRL and in
    /// its history). An active board's name is never taken.
    pub replace: bool,
}

/// What `renew` does.
#[derive(Clone, Debug, Default)]
pub struct RenewOptions {
    /// A new key too (the board's image must then be rebuilt before the old one is revoked).
    pub new_key: bool,
    /// Validity of the new certificate (default: [`days::BOARD`]).
    pub days: Option<u32>,
    /// Revoke the old certificate at once instead of after a grace period.
    pub revoke_old: bool,
}

/// Changes to a registered board (`ipxe-ca set`).
#[derive(Clone, Debug, Default)]
pub struct BoardUpdate {
    /// New MAC.
    pub mac: Option<Mac>,
    /// Forget the MAC.
    pub clear_mac: bool,
    /// New profile.
    pub profile: Option<ProfileName>,
    /// New CPU architecture (its image must be built again).
    pub arch: Option<Arch>,
    /// Variables to add or change.
    pub vars: Vec<KeyValue>,
    /// Variables to remove.
    pub unset_vars: Vec<String>,
    /// Secrets to add or change.
    pub secrets: Vec<KeyValue>,
    /// Secrets to remove.
    pub unset_secrets: Vec<String>,
}

/// A state dir with its registry.
#[derive(Clone, Debug)]
pub struct Lab {
    state: StateDir,
    registry: Registry,
}

mod boards;
mod crl;
mod health;
mod init;
mod server;

impl Lab {
    /// (from, to) of everything this lab moved to the quarantine folder since the last call
    /// (leftovers an enroll or `check --repair` set aside): the operator should hear where.
    pub fn moved_aside(&self) -> Vec<(PathBuf, PathBuf)> {
        self.registry.take_moved()
    }

    /// The lab at `dir` (it may not be initialised yet).
    pub fn open(dir: impl Into<PathBuf>) -> Lab {
        let state = StateDir::new(dir);
        Lab {
            registry: Registry::new(state.clone()),
            state,
        }
    }

    /// The state dir.
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// The board registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Load the CA for signing.
    pub fn ca(&self) -> Result<Ca> {
        if !self.state.ca_cert().exists() || !self.state.has_key(Key::Ca) {
            return Err(Error::NoCa(self.state.root().to_path_buf()));
        }
        Ca::load(
            &state::read(&self.state.ca_cert())?,
            &self.state.read_key(Key::Ca)?,
        )
    }

    /// Every board, sorted by name; refused where there is no CA (a mistyped state dir
    /// should not look like an empty farm).
    pub fn boards(&self) -> Result<Vec<Board>> {
        self.state.require_ca()?;
        self.registry.list()
    }

    /// The board's newest `n` requests as `serve` recorded them, oldest first.
    pub fn history(&self, name: &BoardName, n: usize) -> Result<Vec<crate::store::history::Shown>> {
        self.registry.get(name)?;
        Ok(crate::store::history::interleaved(&self.state, name, n)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The JSON view of a board.
    pub fn view(&self, board: &Board) -> BoardView {
        BoardView::new(
            board,
            self.registry.stored(&board.name),
            OffsetDateTime::now_utc(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A freshly initialised lab in a folder of its own (kept while the TempDir lives).
    fn lab() -> (tempfile::TempDir, Lab, Initialized) {
        let t = tempfile::tempdir().unwrap();
        let lab = Lab::open(t.path().join("s"));
        let init = lab.init(&InitOptions::default()).unwrap();
        (t, lab, init)
    }

    #[test]
    fn a_ca_without_its_key_is_no_ca_to_sign_with() {
        let (t, lab, _) = lab();
        assert!(lab.ca().is_ok());
        // The key taken offline (or never copied): nothing to sign with, said as such.
        std::fs::rename(lab.state().key_file(Key::Ca), t.path().join("offline.key")).unwrap();
        assert!(
            matches!(lab.ca(), Err(Error::NoCa(_))),
            "{:?}",
            lab.ca().err()
        );
    }

    #[test]
    fn keys_are_made_for_exactly_the_boards_asked_for_on_every_core() {
        for n in [0, 1, 3, 5] {
            assert_eq!(boards::generate_keys(n).unwrap().len(), n, "{n} boards");
        }
    }

    #[test]
    fn replace_of_a_name_not_taken_yet_enrolls_it() {
        let (_t, lab, _) = lab();
        let name: BoardName = "new1".parse().unwrap();
        let opts = BoardOptions {
            replace: true,
            ..Default::default()
        };
        // A script that always passes --replace works on a first run too.
        let b = lab.enroll_many(std::slice::from_ref(&name), &opts).unwrap();
        assert_eq!(b[0].name, name);
        assert!(b[0].previous.is_empty());
        assert_eq!(lab.registry().get(&name).unwrap().serial, b[0].serial);
    }

    #[test]
    fn one_mac_for_several_boards_is_refused_and_nothing_is_enrolled() {
        let (_t, lab, _) = lab();
        let names: Vec<BoardName> = ["m1", "m2"].map(|n| n.parse().unwrap()).to_vec();
        let opts = BoardOptions {
            mac: Some("52:54:00:12:34:56".parse().unwrap()),
            ..Default::default()
        };
        let e = lab.enroll_many(&names, &opts).unwrap_err().to_string();
        assert!(e.contains("a MAC names one board"), "{e}");
        assert!(lab.boards().unwrap().is_empty());
        // One board with its MAC is what the option is for.
        lab.enroll_many(&names[..1], &opts).unwrap();
    }

    #[test]
    fn a_re_signed_crl_says_the_next_update_it_carries() {
        let (_t, lab, _) = lab();
        let before = OffsetDateTime::now_utc();
        let next = lab.refresh_crl().unwrap();
        let carried = crl_facts(&lab.state().crl()).unwrap().next_update.unwrap();
        assert!(next > before + time::Duration::days(364), "{next}");
        assert!(
            (next - carried).abs() < time::Duration::minutes(5),
            "{next} vs {carried}"
        );
    }

    #[test]
    fn a_proxy_secret_edited_short_or_not_hex_is_refused() {
        let (_t, lab, _) = lab();
        let made = lab.proxy_secret().unwrap();
        assert_eq!(made.len(), 64);
        let p = lab.state().key_file(Key::ProxySecret);
        for (text, good) in [
            ("0123456789abcdef0123456789abcdef", true),
            ("0123456789abcdef0123456789abcde", false),
            ("0123456789abcdef0123456789abcdez", false),
            ("zz", false),
        ] {
            std::fs::write(&p, text).unwrap();
            assert_eq!(lab.proxy_secret().is_ok(), good, "{text:?}");
        }
    }

    #[test]
    fn the_code_signer_is_made_once_kept_without_the_ca_key_and_remade_when_half_gone() {
        let (t, lab, _) = lab();
        let s = lab.state().clone();
        std::fs::remove_file(s.key_file(Key::CodeSigning)).unwrap();
        assert!(lab.signer().unwrap().1, "a half-gone pair is made again");
        assert!(!lab.signer().unwrap().1, "and then kept");
        // Signing boot files needs the code signer, not the CA key (kept offline).
        std::fs::rename(s.key_file(Key::Ca), t.path().join("offline.key")).unwrap();
        assert!(!lab.signer().unwrap().1);
        std::fs::rename(t.path().join("offline.key"), s.key_file(Key::Ca)).unwrap();
        std::fs::remove_file(s.codesign_cert()).unwrap();
        assert!(lab.signer().unwrap().1);
    }

    #[test]
    fn server_certificates_renewed_with_no_names_keep_the_current_ones() {
        let (_t, lab, init) = lab();
        assert_eq!(lab.renew_server(Some(Vec::new())).unwrap(), init.sans);
        assert_eq!(lab.renew_server(None).unwrap(), init.sans);
    }
}
