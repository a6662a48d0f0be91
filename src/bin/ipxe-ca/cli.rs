//! The command line: clap types, parsed into the library's options in one place.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ipxe_ca::ca::{KeySize, Reason};
use std::time::Duration;

use ipxe_ca::ipxe_build::{BuildOptions, Source, Target};
use ipxe_ca::lab::{self, BoardOptions, BoardUpdate, InitOptions};
use ipxe_ca::server::{ConsoleListen, Front, ServeOptions};
use ipxe_ca::types::{Arch, BoardName, KeyValue, Mac, ProfileName, San};
use ipxe_ca::Lab;

/// `serve --max-connections` by default (per listener).
const MAX_CONNECTIONS: usize = 1024;

/// Boot a farm of boards securely over the network with iPXE: a private CA, per-board
/// client certificates and images, and the mTLS server that gives each board its own script.
#[derive(Parser, Debug)]
#[command(name = "ipxe-ca", version = env!("IPXE_CA_VERSION"), about, max_term_width = 100)]
pub struct Cli {
    /// State directory holding the CA, the registry, profiles and files.
    #[arg(long, global = true, env = "IPXE_CA_DIR", default_value = "./ipxe-ca")]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the private CA and a separate server certificate (or adopt an existing CA).
    Init(InitArgs),
    /// Make a new key and client certificate for a board and register it.
    Enroll(EnrollArgs),
    /// Sign a board's own CSR (its key never leaves the board) and register it.
    Sign(SignArgs),
    /// Register a board whose certificate our CA issued before ipxe-ca existed.
    Register(RegisterArgs),
    /// New certificates for boards (same name, MAC, profile, vars, secrets); the old one stays
    /// accepted until `revoke --previous` (or `--revoke-old`). Rebuild their images after.
    Renew(RenewArgs),
    /// Change a board's MAC, profile, vars or secrets (effective on its next boot).
    Set(SetArgs),
    /// Revoke a board: the server refuses it at once and the CRL lists it.
    Revoke(RevokeArgs),
    /// Re-sign the CRL (ca/crl.pem) now; do it before it expires (yearly) if nginx reads it.
    Crl,
    /// Check the registry (board files, folders, index, certificates, CRL) and config.toml
    /// for what a crash or a hand edit left; `--repair` fixes what is safe to fix.
    Check(CheckArgs),
    /// Issue new server certificates (RSA and ECDSA P-256): rotation, new names, or the ECDSA
    /// pair for state dirs made before it. A running `serve` picks them up within a second.
    ServerCert(ServerCertArgs),
    /// Show or change the URLs boards are pointed at (config.toml). A new files URL is in the
    /// next script `serve` sends; a new server URL must be named by the server certificates,
    /// and the boards' images rebuilt, since each image has it compiled in.
    Config(ConfigArgs),
    /// Sign boot files (NAME.sig beside NAME, for iPXE's imgverify); run it after adding or
    /// changing files. Unchanged files keep their signature.
    SignFiles(SignFilesArgs),
    /// UEFI Secure Boot: the farm's db key, which `build` and `sign-files` then sign every
    /// EFI executable with, so that firmware trusting it runs them.
    SecureBoot(SecureBootArgs),
    /// List the registered boards.
    List(ListArgs),
    /// Show one board.
    Show(ShowArgs),
    /// A board's recent boots and refusals, as `serve` saw them (newest last).
    History(HistoryArgs),
    /// Serve each board its own script over mutual TLS, and boot files over HTTP.
    Serve(ServeArgs),
    /// Build per-board iPXE images (iPXE's make, or a prebuilt iPXE for UEFI).
    Build(BuildArgs),
    /// Write a board's image to a USB stick safely, then read it back to verify.
    Flash(FlashArgs),
    /// Check that the tools the image build needs are installed.
    Doctor(DoctorArgs),
    /// Print an nginx server block that fronts `serve --behind-proxy` (for iPXE older than 2024).
    NginxConfig(NginxArgs),
    /// Print the shell completion script, e.g. `ipxe-ca completions bash >
    /// /etc/bash_completion.d/ipxe-ca`.
    Completions(CompletionsArgs),
    /// Write the man pages (ipxe-ca.1 and one per command) into DIR; for packagers.
    #[command(hide = true)]
    Manpages(ManpagesArgs),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Where to write them (created if missing).
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// HTTPS (mutual TLS) listen address for boot scripts [default: 0.0.0.0:8443].
    #[arg(long)]
    pub https: Option<SocketAddr>,
    /// Plain-HTTP listen address for boot files (and, behind a proxy, the scripts)
    /// [default: 0.0.0.0:8080].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Where boards send their console over TLS [default: the --https address with
    /// config.toml's console port, 6514 unless `ipxe-ca config --console` says otherwise; a
    /// default port in use is a warning].
    #[arg(long, value_name = "ADDR", conflicts_with = "no_console")]
    pub console: Option<SocketAddr>,
    /// Do not receive the boards' consoles.
    #[arg(long)]
    pub no_console: bool,
    /// Directory served under /files/ (default: DIR/files). Opened by this path per request:
    /// a symlink pointed at a new folder serves it at once, once it is checked for key
    /// material.
    #[arg(long)]
    pub files: Option<PathBuf>,
    /// Serve scripts on plain HTTP behind a TLS-terminating proxy (see nginx-config).
    #[arg(long)]
    pub behind_proxy: bool,
    /// Address of a proxy whose X-SSL-Client-* headers are trusted (repeatable).
    #[arg(long = "trusted-proxy", requires = "behind_proxy")]
    pub trusted_proxies: Vec<IpAddr>,
    /// Seconds a one-time secret URL stays valid (1 to 86400).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub one_time_ttl: u64,
    /// Maximum concurrent connections per listener that have proved themselves (a quarter of
    /// them for clients without a certificate); as many again may wait unproven (before the
    /// TLS handshake or the first request), where a newcomer closes the oldest.
    #[arg(long, default_value_t = MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Maximum concurrent connections from one address (an IPv6 host: its /64) per listener
    /// (a board makes one); a trusted proxy's proved connections are not capped.
    #[arg(long, default_value_t = 32)]
    pub max_per_ip: usize,
    /// Seconds allowed for a TLS handshake or a request's headers (1 to 3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// TLS sessions kept for resumption, about 2 KiB each (the board's certificate chain
    /// included). iPXE resumes a session only while another of its connections is open, and at
    /// most --max-connections are: the default, twice that, keeps each such session through
    /// the churn of a farm booting at once.
    #[arg(long, default_value_t = 2 * MAX_CONNECTIONS)]
    pub tls_sessions: usize,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9469; keep it off
    /// the boards' network).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Threads running the event loop (default: one per CPU). 1 spends the least CPU per boot
    /// on a host shared with other work; more serve bigger bursts.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Boards to build.
    #[arg(value_parser = parse::<BoardName>, required_unless_present_any = ["all", "stale"])]
    pub boards: Vec<BoardName>,
    /// Build every active board.
    #[arg(long, conflicts_with = "boards")]
    pub all: bool,
    /// Build the active boards whose image is missing or older than their certificate
    /// (after `renew`).
    #[arg(long, conflicts_with_all = ["boards", "all"])]
    pub stale: bool,
    /// iPXE source tree (a checkout or its src/), built with make.
    #[arg(
        long,
        required_unless_present = "prebuilt",
        conflicts_with = "prebuilt"
    )]
    pub ipxe_src: Option<PathBuf>,
    /// Directory with a prebuilt ipxe-amd64.efi (e.g. Debian 13's /usr/lib/ipxe): target efi-usb.
    #[arg(long)]
    pub prebuilt: Option<PathBuf>,
    /// lkrn, iso, usb, efi, efi-iso, hybrid (default) with --ipxe-src; efi-usb with --prebuilt.
    #[arg(long = "target", value_parser = parse::<Target>)]
    pub targets: Vec<Target>,
    /// Output directory; images go to OUT/BOARD/ (default: DIR/out).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Boards built in parallel, each in its own copy of the iPXE tree.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// make -j inside each build (default: cores / jobs).
    #[arg(long)]
    pub make_jobs: Option<usize>,
    /// iPXE DEBUG= setting, e.g. tls,x509 (for diagnosing a board).
    #[arg(long)]
    pub debug: Option<String>,
    /// NTP server the embed script syncs with before HTTPS (boards without a real-time clock).
    #[arg(long)]
    pub ntp: Option<String>,
    /// Compile each board's key into its iPXE binary for every target (a relink per board)
    /// instead of one shared, CA-pinned binary plus the board's autoexec.ipxe on the medium.
    #[arg(long)]
    pub embed_key: bool,
    /// Print the manifests as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FlashArgs {
    /// List candidate devices (removable or USB-attached disks) and exit.
    #[arg(long, conflicts_with_all = ["source", "device"])]
    pub list: bool,
    /// A board name (its newest hybrid/usb image) or an image file.
    #[arg(required_unless_present = "list")]
    pub source: Option<String>,
    /// The whole-disk device, e.g. /dev/sdb.
    #[arg(required_unless_present = "list")]
    pub device: Option<PathBuf>,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Allow a disk that is neither removable nor USB-attached (e.g. a loop device or SD slot).
    #[arg(long)]
    pub allow_non_removable: bool,
    /// Skip reading the stick back.
    #[arg(long, conflicts_with = "verify_only")]
    pub no_verify: bool,
    /// Only compare the device with the image (checks a stick written earlier).
    #[arg(long)]
    pub verify_only: bool,
    /// Where built images are (default: DIR/out).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// sysfs root to discover devices in (for tests).
    #[arg(long, env = "IPXE_CA_SYSFS", default_value = "/sys", hide = true)]
    pub sysfs: PathBuf,
    /// Machine-readable output (with --list).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Also check this iPXE source tree (what it supports, how ipxe-ca builds it).
    #[arg(long)]
    pub ipxe_src: Option<PathBuf>,
    /// Check what these targets need (default: hybrid, or efi-usb with --prebuilt).
    #[arg(long = "target", value_parser = parse::<Target>)]
    pub targets: Vec<Target>,
    /// Check the prebuilt route (no compiler needed).
    #[arg(long)]
    pub prebuilt: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Remove leftovers of interrupted commands, rewrite the index, re-sign an incomplete CRL.
    #[arg(long)]
    pub repair: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Where boards reach `serve`'s mutual-TLS port (https://HOST[:PORT]).
    #[arg(long)]
    pub server_url: Option<String>,
    /// Where boards fetch plain-HTTP boot files (http://HOST[:PORT]).
    #[arg(long)]
    pub files_url: Option<String>,
    /// Where boards send their console over TLS (HOST:PORT), or `off`; images built after
    /// the change carry it [default: the server URL's host, port 6514].
    #[arg(long)]
    pub console: Option<String>,
    /// Print the settings (before and after) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServerCertArgs {
    /// Names boards reach the server by (default: those of the current certificate).
    #[arg(long = "san", value_parser = parse::<San>)]
    pub sans: Vec<San>,
}

#[derive(Args, Debug)]
pub struct SignFilesArgs {
    /// Files to sign (default: every boot file in the files directory).
    pub paths: Vec<PathBuf>,
    /// The files directory (default: DIR/files; the one `serve --files` serves).
    #[arg(long)]
    pub files: Option<PathBuf>,
    /// Sign again even when a signature is current.
    #[arg(long)]
    pub force: bool,
    /// Only report missing and stale signatures; exit status 1 if there are any.
    #[arg(long)]
    pub check: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SecureBootArgs {
    #[command(subcommand)]
    pub action: SecureBootAction,
}

#[derive(Subcommand, Debug)]
pub enum SecureBootAction {
    /// Make new PK, KEK and db keys, and the files to enroll them in each board's firmware
    /// (DIR/secure-boot/: .cer, .esl, and .auth signed for setup mode or an existing PK).
    Init {
        /// Replace the db key the boards trust (every board must enroll the new keys).
        #[arg(long)]
        replace: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Take a db key the boards' firmware already trusts (an operator's own Secure Boot
    /// keys): RSA, PEM, unencrypted.
    Adopt {
        /// The private key (kept 0600 in DIR/keys/secure-boot/).
        #[arg(long)]
        key: PathBuf,
        /// Its certificate, as enrolled in the firmware's db (PEM or DER).
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct NginxArgs {
    /// What nginx listens on (default: the port of the configured server URL).
    #[arg(long)]
    pub listen: Option<String>,
    /// Where `ipxe-ca serve --behind-proxy` listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub upstream: SocketAddr,
    /// Write the block to this file, created 0600 (it holds the proxy secret), instead of
    /// stdout: `> file; chmod 600 file` leaves the secret readable until the chmod.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The CA's common name [default: ipxe-ca boot CA].
    #[arg(long)]
    pub name: Option<String>,
    /// A name the server is reached by, `DNS:host` or `IP:addr` (repeatable). The first one
    /// sets the default URLs. Default: DNS:localhost and IP:127.0.0.1.
    #[arg(long = "san", value_parser = parse::<San>)]
    pub sans: Vec<San>,
    /// URL boards fetch their script from (default https://FIRST-SAN:8443).
    #[arg(long)]
    pub server_url: Option<String>,
    /// URL boards fetch kernels and initrds from (default http://FIRST-SAN:8080).
    #[arg(long)]
    pub files_url: Option<String>,
    /// RSA key size for the CA and the server (iPXE needs RSA) [default: 2048].
    #[arg(long, value_parser = parse::<KeySize>)]
    pub key_size: Option<KeySize>,
    /// CA validity in days [default: 3650].
    #[arg(long)]
    pub days: Option<u32>,
    /// Replace an existing CA: every board enrolled with the old one stops booting.
    #[arg(long)]
    pub force: bool,
    /// Adopt this CA certificate (e.g. the prototype's openssl CA) instead of creating one.
    #[arg(long, requires = "from_key")]
    pub from_ca: Option<PathBuf>,
    /// The adopted CA's private key.
    #[arg(long, requires = "from_ca")]
    pub from_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BoardArgs {
    /// The board's MAC; requests naming another MAC are refused.
    #[arg(long, value_parser = parse::<Mac>)]
    pub mac: Option<Mac>,
    /// Profile its boot script comes from (profiles/NAME.ipxe).
    #[arg(long, value_parser = parse::<ProfileName>)]
    pub profile: Option<ProfileName>,
    /// Its CPU architecture: x86_64 (default) or arm64. Chooses the iPXE its image holds;
    /// templates see it as board.arch.
    #[arg(long, value_parser = parse::<Arch>)]
    pub arch: Option<Arch>,
    /// Template variable KEY=VALUE for its profile (repeatable).
    #[arg(long = "var", value_parser = parse::<KeyValue>)]
    pub vars: Vec<KeyValue>,
    /// Secret KEY=VALUE, available to templates as secrets.KEY, never printed (repeatable).
    /// Other local users can read command lines: prefer --secret-file or --secrets-from.
    // Parsed by SecretInput::read, not clap: clap would repeat a malformed value (a secret).
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    #[command(flatten)]
    pub secret_input: SecretInput,
    /// Take the name of a revoked board (re-enrolling it deliberately; never an active one).
    #[arg(long)]
    pub replace: bool,
    /// Print the registered board as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Secrets that never appear on a command line.
#[derive(Args, Debug, Clone)]
pub struct SecretInput {
    /// Secret KEY from the content of file PATH (KEY=PATH, repeatable).
    #[arg(long = "secret-file")]
    pub secret_files: Vec<String>,
    /// Secrets as KEY=VALUE lines from a file, or from stdin with `-`.
    #[arg(long = "secrets-from")]
    pub secrets_from: Option<PathBuf>,
}

impl SecretInput {
    /// Every secret: those of --secret (`cli`), then these. No error repeats a value.
    pub fn read(&self, cli: &[String]) -> Result<Vec<KeyValue>> {
        let mut secrets = Vec::new();
        for (i, kv) in cli.iter().enumerate() {
            secrets.push(kv.parse::<KeyValue>().map_err(|_| {
                anyhow::anyhow!(
                    "--secret number {}: expected KEY=VALUE with KEY of letters, digits and '_' (the value is not repeated here)",
                    i + 1
                )
            })?);
        }
        for spec in &self.secret_files {
            secrets.push(ipxe_ca::types::key_from_file(spec).context("--secret-file")?);
        }
        if let Some(p) = &self.secrets_from {
            let text = if p.as_os_str() == "-" {
                let mut t = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                    .context("cannot read secrets from stdin")?;
                t
            } else {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?
            };
            secrets.extend(
                ipxe_ca::types::parse_key_values(&text)
                    .with_context(|| format!("--secrets-from {}", p.display()))?,
            );
        }
        Ok(secrets)
    }
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// Board names (a-z, 0-9, '.', '_', '-'); several at once use every core.
    #[arg(value_parser = parse::<BoardName>, required = true)]
    pub boards: Vec<BoardName>,
    /// Certificate validity in days.
    #[arg(long, default_value_t = lab::days::BOARD)]
    pub days: u32,
    #[command(flatten)]
    pub common: BoardArgs,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    pub board: BoardName,
    /// The CSR, PEM or DER. Only its public key is used; the extensions are ours.
    #[arg(long)]
    pub csr: PathBuf,
    /// Certificate validity in days.
    #[arg(long, default_value_t = lab::days::BOARD)]
    pub days: u32,
    #[command(flatten)]
    pub common: BoardArgs,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    pub board: BoardName,
    /// The board's existing certificate, PEM or DER, issued by this CA.
    #[arg(long)]
    pub cert: PathBuf,
    #[command(flatten)]
    pub common: BoardArgs,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    pub board: BoardName,
    /// New MAC.
    #[arg(long, value_parser = parse::<Mac>, conflicts_with = "no_mac")]
    pub mac: Option<Mac>,
    /// Forget the MAC (requests naming any MAC are then accepted).
    #[arg(long)]
    pub no_mac: bool,
    /// New profile.
    #[arg(long, value_parser = parse::<ProfileName>)]
    pub profile: Option<ProfileName>,
    /// New CPU architecture, x86_64 or arm64 (build its image again).
    #[arg(long, value_parser = parse::<Arch>)]
    pub arch: Option<Arch>,
    /// Add or change a template variable KEY=VALUE (repeatable).
    #[arg(long = "var", value_parser = parse::<KeyValue>)]
    pub vars: Vec<KeyValue>,
    /// Remove a template variable (repeatable).
    #[arg(long = "unset-var")]
    pub unset_vars: Vec<String>,
    /// Add or change a secret KEY=VALUE (repeatable; never printed). Other local users can
    /// read command lines: prefer --secret-file or --secrets-from.
    // Parsed by SecretInput::read, not clap: clap would repeat a malformed value (a secret).
    #[arg(long = "secret")]
    pub secrets: Vec<String>,
    #[command(flatten)]
    pub secret_input: SecretInput,
    /// Remove a secret (repeatable).
    #[arg(long = "unset-secret")]
    pub unset_secrets: Vec<String>,
    /// Print the board as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RenewArgs {
    /// Boards to renew.
    #[arg(value_parser = parse::<BoardName>, required = true)]
    pub boards: Vec<BoardName>,
    /// A new key too (needed when the old key may be compromised).
    #[arg(long)]
    pub new_key: bool,
    /// Certificate validity in days.
    #[arg(long)]
    pub days: Option<u32>,
    /// Revoke the old certificate now (boards booting old images are refused at once).
    #[arg(long)]
    pub revoke_old: bool,
    /// Print the boards as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    pub board: BoardName,
    /// Revoke only the certificates `renew` replaced (the board's new image is in place).
    #[arg(long)]
    pub previous: bool,
    /// unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation.
    #[arg(long, default_value = "unspecified", value_parser = parse::<Reason>)]
    pub reason: Reason,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Instead of the boards: everything that expires within DAYS (boards, server and
    /// code-signing certificates, the CA, the CRL's next update); exit status 1 if anything
    /// does, for cron and CI.
    #[arg(long, value_name = "DAYS")]
    pub expiring: Option<u32>,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    pub board: BoardName,
    /// How many of the newest requests.
    #[arg(short = 'n', long, default_value_t = 20)]
    pub count: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    pub board: BoardName,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn parse<T: std::str::FromStr<Err = ipxe_ca::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: ipxe_ca::Error| e.to_string())
}

/// The library's options for a new board, from the shared board flags.
pub fn board_options(c: &BoardArgs, days: Option<u32>) -> Result<BoardOptions> {
    Ok(BoardOptions {
        mac: c.mac,
        profile: c.profile.clone(),
        arch: c.arch,
        days,
        vars: c.vars.clone(),
        secrets: c.secret_input.read(&c.secrets)?,
        replace: c.replace,
    })
}

impl InitArgs {
    /// What was given over the library's defaults (`InitOptions::default`).
    pub fn options(self) -> InitOptions {
        let d = InitOptions::default();
        InitOptions {
            name: self.name.unwrap_or(d.name),
            sans: self.sans,
            server_url: self.server_url,
            files_url: self.files_url,
            key_size: self.key_size.unwrap_or(d.key_size),
            days: self.days.unwrap_or(d.days),
            force: self.force,
            from_ca: self.from_ca.zip(self.from_key),
        }
    }
}

impl SetArgs {
    pub fn update(&self) -> Result<BoardUpdate> {
        Ok(BoardUpdate {
            mac: self.mac,
            clear_mac: self.no_mac,
            profile: self.profile.clone(),
            arch: self.arch,
            vars: self.vars.clone(),
            unset_vars: self.unset_vars.clone(),
            secrets: self.secret_input.read(&self.secrets)?,
            unset_secrets: self.unset_secrets.clone(),
        })
    }
}

impl ServeArgs {
    pub fn options(self, lab: &Lab) -> Result<ServeOptions> {
        let front = if self.behind_proxy {
            let secret = lab.proxy_secret().context("cannot read the proxy secret")?;
            Front::Proxy {
                trusted: self.trusted_proxies,
                secret,
            }
        } else {
            Front::Mtls {
                https: self.https.unwrap_or_else(ipxe_ca::server::default_https),
            }
        };
        Ok(ServeOptions {
            front,
            http: self.http.unwrap_or_else(ipxe_ca::server::default_http),
            console: match (self.no_console, self.console) {
                (true, _) => ConsoleListen::Off,
                (false, Some(a)) => ConsoleListen::At(a),
                (false, None) => ConsoleListen::Default,
            },
            files: self.files.unwrap_or_else(|| lab.state().files_dir()),
            one_time_ttl: Duration::from_secs(self.one_time_ttl),
            max_connections: self.max_connections,
            max_per_ip: self.max_per_ip,
            timeout: Duration::from_secs(self.timeout),
            tls_sessions: self.tls_sessions,
            metrics: self.metrics,
            workers: self.workers.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                usize::from,
            ),
        })
    }
}

impl BuildArgs {
    pub fn options(&self, lab: &Lab) -> Result<BuildOptions> {
        let source = match (&self.ipxe_src, &self.prebuilt) {
            (Some(src), _) => Source::Tree(src.clone()),
            (None, Some(dir)) => Source::Prebuilt(dir.clone()),
            (None, None) => anyhow::bail!("give --ipxe-src DIR or --prebuilt DIR"),
        };
        let out = self.out.clone().unwrap_or_else(|| lab.state().out_dir());
        let mut opts = BuildOptions::new(source, self.targets.clone(), out)
            .with_jobs(self.jobs, self.make_jobs);
        opts.debug = self.debug.clone();
        opts.ntp_server = self.ntp.clone();
        opts.embed_key = self.embed_key;
        Ok(opts)
    }
}

impl RenewArgs {
    pub fn options(&self) -> lab::RenewOptions {
        lab::RenewOptions {
            new_key: self.new_key,
            days: self.days,
            revoke_old: self.revoke_old,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The defaults live in the library; the help text names them, and must say what they are.
    #[test]
    fn help_names_the_library_defaults_and_unset_flags_take_them() {
        let cli = Cli::try_parse_from(["ipxe-ca", "init"]).unwrap();
        let Command::Init(a) = cli.command else {
            panic!("not init")
        };
        let (got, want) = (a.options(), InitOptions::default());
        assert_eq!(
            (got.name.as_str(), got.days),
            (want.name.as_str(), want.days)
        );
        assert_eq!(got.key_size, want.key_size);
        let mut cmd = Cli::command();
        let init = cmd
            .find_subcommand_mut("init")
            .unwrap()
            .render_help()
            .to_string();
        let init = init.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            init.contains(&format!("[default: {}]", want.name)),
            "{init}"
        );
        assert!(
            init.contains(&format!("[default: {}]", want.days)),
            "{init}"
        );
        assert_eq!(want.key_size, ipxe_ca::ca::KeySize::Rsa2048);
        assert!(init.contains("[default: 2048]"), "{init}");
        let serve = cmd
            .find_subcommand_mut("serve")
            .unwrap()
            .render_help()
            .to_string();
        let serve = serve.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(serve.contains(&format!("[default: {}]", ipxe_ca::server::default_https())));
        assert!(serve.contains(&format!("[default: {}]", ipxe_ca::server::default_http())));
    }
}
