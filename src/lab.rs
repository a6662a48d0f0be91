//! The operations an operator runs on a state dir: init, enroll, sign, register, revoke, list.
//! Each writing operation holds the state lock from validation to the last write.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use time::OffsetDateTime;

use crate::board::{Board, BoardView, Origin, PreviousCert, Status};
use crate::ca::{self, Ca, CertInfo, KeySize, Reason, Revoked};
use crate::config::Config;
use crate::error::{Error, NameFix, Result};
pub use crate::health::Expiry;
use crate::health::{check_names_cover, crl_facts};
use crate::registry::Registry;
use crate::state::{self, StateDir, MODE_PUBLIC, MODE_SECRET};
use crate::types::{Arch, BoardName, KeyValue, Mac, ProfileName, San};

pub use crate::ipxe_build::EMBED_TEMPLATE;
/// The default profile (written to `profiles/default.ipxe`).
pub const DEFAULT_PROFILE: &str = include_str!("../ipxe-scripts/default.ipxe");
const STATE_GITIGNORE: &str = include_str!("../ipxe-scripts/state.gitignore");

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

/// `n` RSA-2048 keys, generated on all cores.
fn generate_keys(n: usize) -> Result<Vec<rcgen::KeyPair>> {
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
struct NewCert<'a> {
    info: CertInfo,
    origin: Origin,
    cert_pem: &'a str,
    key_pem: Option<&'a str>,
}

/// A state dir with its registry.
#[derive(Clone, Debug)]
pub struct Lab {
    state: StateDir,
    registry: Registry,
}

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
        if !self.state.ca_cert().exists() || !self.state.ca_key().exists() {
            return Err(Error::NoCa(self.state.root().to_path_buf()));
        }
        Ca::load(
            &state::read(&self.state.ca_cert())?,
            &state::read(&self.state.ca_key())?,
        )
    }

    fn save_server(&self, rsa: &ca::Issued, ecdsa: &ca::Issued, ca_pem: &str) -> Result<()> {
        let s = &self.state;
        for (issued, cert, key) in [
            (rsa, s.server_cert(), s.server_key()),
            (ecdsa, s.server_ecdsa_cert(), s.server_ecdsa_key()),
        ] {
            state::write_atomic(&key, issued.key_pem.as_bytes(), MODE_SECRET)?;
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
            after.server_url = crate::config::check_url(u, "https", "the server URL")?;
        }
        if let Some(u) = files_url {
            after.files_url = crate::config::check_url(u, "http", "the files URL")?;
        }
        if let Some(c) = console {
            crate::config::check_console(c)?;
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

    /// What expires within `days`, soonest first ([`crate::health::expiring`]).
    pub fn expiring(&self, days: u32) -> Result<Vec<Expiry>> {
        crate::health::expiring(&self.registry, days)
    }

    /// What is wrong, in words, when a server certificate does not name `config`'s server
    /// host ([`crate::health::server_name_problem`]).
    pub fn server_name_problem(&self, config: &Config) -> Option<Error> {
        crate::health::server_name_problem(&self.state, config)
    }

    /// Every inconsistency between board files, folders, index, certificates and CRL; with
    /// `repair`, fixed where that is safe (under the state lock) and checked again.
    pub fn check(&self, repair: bool) -> Result<Vec<crate::registry::Problem>> {
        let problems = self.check_all()?;
        if !repair || problems.iter().all(|p| !p.repairable) {
            return Ok(problems);
        }
        let _lock = self.state.lock()?;
        let problems = self.check_all()?;
        self.registry.repair(&problems)?;
        if problems.iter().any(|p| p.kind == "crl-incomplete") {
            self.publish_crl(&self.ca()?)?;
        }
        self.check_all()
    }

    /// With a Secure Boot key: boot files in DIR/files that its firmware would refuse, and
    /// board images in DIR/out built before the key (or with another one).
    pub fn secure_boot_problems(&self) -> Vec<crate::registry::Problem> {
        let Ok(Some(trust)) = crate::secure_boot::Trust::load(&self.state) else {
            return Vec::new();
        };
        let problem = |kind, path, detail: String| crate::registry::Problem {
            kind,
            path,
            detail,
            repairable: false,
            host: None,
        };
        let mut out = Vec::new();
        let files = self.state.files_dir();
        for f in crate::codesign::check(&files, Some(&trust)).unwrap_or_default() {
            if f.secure_boot == Some(false) {
                out.push(problem(
                    "secure-boot-unsigned",
                    files.join(&f.path),
                    "an EFI executable without the farm's Secure Boot signature: firmware with \
                     Secure Boot on refuses it (sign-files signs it)"
                        .into(),
                ));
            }
        }
        let built = crate::state::OutDir::new(self.state.out_dir());
        let fp = trust.fingerprint();
        for b in self
            .registry
            .list_readable()
            .map(|l| l.0)
            .unwrap_or_default()
        {
            let Ok(m) = crate::ipxe_build::Manifest::load(&built, &b.name) else {
                continue;
            };
            if !m.secure_boot.as_deref().is_some_and(|s| s.contains(&fp)) {
                out.push(problem(
                    "image-not-signed",
                    built.manifest(&b.name),
                    format!(
                        "board {}'s images were built without the farm's Secure Boot key: \
                         its firmware refuses them; build them again",
                        b.name
                    ),
                ));
            }
        }
        out
    }

    fn check_all(&self) -> Result<Vec<crate::registry::Problem>> {
        let mut problems = self.registry.check()?;
        problems.extend(self.secure_boot_problems());
        let listed = crl_facts(&self.state.crl())
            .map(|f| f.serials)
            .unwrap_or_default();
        // One unreadable board (reported above) must not hide the others' gaps.
        let (boards, _) = self.registry.list_readable().unwrap_or_default();
        for b in boards {
            if b.status == Status::Revoked && !listed.contains(&b.serial) {
                problems.push(crate::registry::Problem {
                    kind: "crl-incomplete",
                    path: self.state.crl(),
                    detail: format!(
                        "revoked board {} (serial {}) is not in the CRL",
                        b.name, b.serial
                    ),
                    repairable: true,
                    host: None,
                });
            }
        }
        problems.extend(self.config_problem());
        Ok(problems)
    }

    /// A hand edit of `config.toml` that `config` would have refused: a URL `init` would not
    /// take, or a server host the server certificates do not name.
    fn config_problem(&self) -> Option<crate::registry::Problem> {
        let path = self.state.config();
        let problem = |kind, detail: String, host| crate::registry::Problem {
            kind,
            path: path.clone(),
            detail,
            repairable: false,
            host,
        };
        let config = match Config::load(&self.state).and_then(Config::checked) {
            Ok(c) => c,
            Err(e) => return Some(problem("bad-config", e.to_string(), None)),
        };
        self.server_name_problem(&config).map(|e| {
            let host = config.server_host().to_string();
            problem("server-name-mismatch", e.to_string(), Some(host))
        })
    }

    /// The secret nginx sends with every proxied request (`X-IPXE-CA-Proxy-Secret`), made on
    /// first use: trusting a peer address alone would let any local user pose as nginx.
    pub fn proxy_secret(&self) -> Result<String> {
        let p = self.state.proxy_secret();
        if !p.exists() {
            let _lock = self.state.lock()?;
            if !p.exists() {
                let mut raw = [0u8; 32];
                aws_lc_rs::rand::fill(&mut raw)
                    .map_err(|_| Error::crypto("cannot make the proxy secret", "no randomness"))?;
                state::write_atomic(&p, hex::encode(raw).as_bytes(), MODE_SECRET)?;
            }
        }
        let s = state::read_to_string(&p)?.trim().to_string();
        if s.len() < 32 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Parse {
                path: p,
                detail: "expected at least 32 hex digits; delete it and run `ipxe-ca nginx-config` again".into(),
            });
        }
        Ok(s)
    }

    fn save_codesign(&self, issued: &ca::Issued) -> Result<()> {
        state::write_atomic(
            &self.state.codesign_key(),
            issued.key_pem.as_bytes(),
            MODE_SECRET,
        )?;
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
        if !s.codesign_cert().exists() || !s.codesign_key().exists() {
            let ca = self.ca()?;
            let _lock = s.lock()?;
            if !s.codesign_cert().exists() || !s.codesign_key().exists() {
                self.save_codesign(&ca.issue_codesign(KeySize::Rsa2048, days::CODESIGN)?)?;
                created = true;
            }
        }
        let signer = crate::codesign::Signer::new(
            &state::read(&s.codesign_cert())?,
            &state::read(&s.codesign_key())?,
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
            config.server_url = crate::config::check_url(u, "https", "the server URL")?;
        }
        if let Some(u) = &opts.files_url {
            config.files_url = crate::config::check_url(u, "http", "the files URL")?;
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
        state::write_atomic(&self.state.ca_key(), &ca_key, MODE_SECRET)?;
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

    fn write_templates(&self) -> Result<()> {
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
        state::create_dir_private(&s.boards_dir())?;
        state::create_dir_private(&s.board_keys_dir())
    }

    /// Check a board name is free and its options are sound, before any key is made.
    fn precheck(&self, name: &BoardName, opts: &BoardOptions) -> Result<ProfileName> {
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
    fn refuse_server_names(&self, name: &BoardName, cert_pem: &str) -> Result<()> {
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

    fn require_profile(&self, profile: &ProfileName) -> Result<()> {
        let p = self.state.profile(profile);
        if !p.exists() {
            return Err(Error::invalid(format!(
                "profile \"{profile}\" does not exist: create {} first",
                p.display()
            )));
        }
        Ok(())
    }

    fn register_issued(
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
            revoked_at: None,
            revocation_reason: None,
            secret_names: secrets.keys().cloned().collect(),
            vars: to_map(&opts.vars),
            previous: Vec::new(),
        };
        if opts.replace && self.registry.exists(name) {
            let old = self.registry.get(name)?;
            let mut board = board;
            board.previous = old.previous.clone();
            board.previous.push(PreviousCert {
                serial: old.serial,
                fingerprint_sha1: old.fingerprint_sha1,
                fingerprint_sha256: old.fingerprint_sha256,
                not_after: old.not_after,
                replaced_at: OffsetDateTime::now_utc(),
                status: Status::Revoked,
                revoked_at: old.revoked_at,
                revocation_reason: old.revocation_reason,
            });
            self.registry.save_secrets(name, &secrets)?;
            self.registry.replace_cert(&board, cert_pem, key_pem)?;
            return Ok(board);
        }
        self.registry.add(&board, cert_pem, key_pem, &secrets)?;
        Ok(board)
    }

    fn issue_unique<T: AsRef<ca::Signed>>(
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
        board.status = Status::Revoked;
        board.revoked_at = Some(OffsetDateTime::now_utc());
        board.revocation_reason = Some(reason);
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
                return Err(Error::invalid(format!(
                    "board {n} is revoked: a revoked board is not renewed; enroll it again deliberately (enroll --replace)"
                )));
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
                    let old =
                        ca::cert_der_from_bytes(&state::read(&self.state.board_cert(&name))?)?;
                    let (signed, info) =
                        self.issue_unique(|| ca.reissue(&old, name.as_str(), days))?;
                    let key = state::read_to_string(&self.state.board_key(&name)).ok();
                    (signed.cert_pem, key, board.origin, info)
                }
            };
            board.previous.push(PreviousCert {
                serial: board.serial.clone(),
                fingerprint_sha1: board.fingerprint_sha1.clone(),
                fingerprint_sha256: board.fingerprint_sha256.clone(),
                not_after: board.not_after,
                replaced_at: now,
                status: if opts.revoke_old {
                    Status::Revoked
                } else {
                    Status::Active
                },
                revoked_at: opts.revoke_old.then_some(now),
                revocation_reason: opts.revoke_old.then_some(Reason::Superseded),
            });
            board.serial = info.serial;
            board.fingerprint_sha1 = info.fingerprint_sha1;
            board.fingerprint_sha256 = info.fingerprint_sha256;
            board.not_before = info.not_before;
            board.not_after = info.not_after;
            board.origin = origin;
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
        let mut any = false;
        for p in board
            .previous
            .iter_mut()
            .filter(|p| p.status == Status::Active)
        {
            p.status = Status::Revoked;
            p.revoked_at = Some(now);
            p.revocation_reason = Some(Reason::Superseded);
            any = true;
        }
        if !any {
            return Err(Error::invalid(format!(
                "board {name} has no previous certificate still accepted (nothing to revoke)"
            )));
        }
        let crl = self.make_crl(&ca, Some(&board))?;
        self.registry.save(&board)?;
        self.write_crl(&crl)?;
        Ok(board)
    }

    /// Re-sign the CRL now (it is valid for [`days::CRL`] days; nginx refuses every client
    /// once its `ssl_crl` has expired). Returns its next-update time.
    pub fn refresh_crl(&self) -> Result<OffsetDateTime> {
        let _lock = self.state.lock()?;
        let ca = self.ca()?;
        self.publish_crl(&ca)
    }

    /// Sign and write a CRL listing every revoked board. Callers hold the lock.
    fn publish_crl(&self, ca: &Ca) -> Result<OffsetDateTime> {
        let crl = self.make_crl(ca, None)?;
        self.write_crl(&crl)
    }

    /// A signed CRL of every revoked board, with `also` (about to be saved) among them.
    ///
    /// A board file that cannot be read must not block a revoke (a stolen stick cannot wait
    /// for a repair) nor drop its revoked serials: the CRL in force is carried over whole
    /// beside what the readable boards say.
    fn make_crl(&self, ca: &Ca, also: Option<&Board>) -> Result<(String, u64)> {
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
        for b in boards {
            for p in b.previous.iter().filter(|p| p.status == Status::Revoked) {
                revoked.push(Revoked {
                    serial: p.serial.clone(),
                    when: p.revoked_at.unwrap_or(p.replaced_at),
                    reason: p.revocation_reason.unwrap_or(Reason::Superseded),
                });
            }
            if b.status == Status::Revoked {
                revoked.push(Revoked {
                    serial: b.serial,
                    when: b.revoked_at.unwrap_or(b.not_before),
                    reason: b.revocation_reason.unwrap_or(Reason::Unspecified),
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        revoked.retain(|r| seen.insert(r.serial.clone()));
        let number = self.next_crl_number()?;
        Ok((ca.crl(&revoked, number, days::CRL)?, number))
    }

    fn write_crl(&self, (crl, number): &(String, u64)) -> Result<OffsetDateTime> {
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
    fn next_crl_number(&self) -> Result<u64> {
        let current = match self.state.read_crl_number() {
            Ok(n) => n,
            Err(e) => crl_facts(&self.state.crl())
                .and_then(|f| f.number)
                .ok_or(e)?,
        };
        Ok(current + 1)
    }

    /// Every board, sorted by name; refused where there is no CA (a mistyped state dir
    /// should not look like an empty farm).
    pub fn boards(&self) -> Result<Vec<Board>> {
        self.state.require_ca()?;
        self.registry.list()
    }

    /// The board's newest `n` requests as `serve` recorded them, oldest first.
    pub fn history(&self, name: &BoardName, n: usize) -> Result<Vec<crate::history::Shown>> {
        self.registry.get(name)?;
        Ok(crate::history::interleaved(&self.state, name, n)?
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
