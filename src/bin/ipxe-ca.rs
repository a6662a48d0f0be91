//! `ipxe-ca`: parse arguments, call the library, print. Nothing else lives here.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ipxe_ca::ca::{KeySize, Reason};
use ipxe_ca::ipxe_build::{self, BuildOptions, Source, Target};
use ipxe_ca::lab::{self, BoardOptions, InitOptions};
use ipxe_ca::server::{self, ServeOptions};
use ipxe_ca::types::{BoardName, KeyValue, Mac, ProfileName, San};
use ipxe_ca::Lab;
use std::time::Duration;

/// Boot a farm of boards securely over the network with iPXE: a private CA, per-board
/// client certificates and images, and the mTLS server that gives each board its own script.
#[derive(Parser, Debug)]
#[command(name = "ipxe-ca", version = env!("IPXE_CA_VERSION"), about, max_term_width = 100)]
struct Cli {
    /// State directory holding the CA, the registry, profiles and files.
    #[arg(long, global = true, env = "IPXE_CA_DIR", default_value = "./ipxe-ca")]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the private CA and a separate server certificate (or adopt an existing CA).
    Init(InitArgs),
    /// Make a new key and client certificate for a board and register it.
    Enroll(EnrollArgs),
    /// Sign a board's own CSR (its key never leaves the board) and register it.
    Sign(SignArgs),
    /// Register a board whose certificate our CA issued before ipxe-ca existed.
    Register(RegisterArgs),
    /// Change a board's MAC, profile, vars or secrets (effective on its next boot).
    Set(SetArgs),
    /// Revoke a board: the server refuses it at once and the CRL lists it.
    Revoke(RevokeArgs),
    /// Re-sign the CRL (ca/crl.pem) now; do it before it expires (yearly) if nginx reads it.
    Crl,
    /// Check the registry (board files, folders, index, certificates, CRL) for what a crash
    /// or a hand edit left; `--repair` fixes what is safe to fix.
    Check(CheckArgs),
    /// Issue new server certificates (RSA and ECDSA P-256): rotation, new names, or the ECDSA
    /// pair for state dirs made before it. Restart `serve` to use them.
    ServerCert(ServerCertArgs),
    /// Sign boot files (NAME.sig beside NAME, for iPXE's imgverify); run it after adding or
    /// changing files. Unchanged files keep their signature.
    SignFiles(SignFilesArgs),
    /// List the registered boards.
    List(ListArgs),
    /// Show one board.
    Show(ShowArgs),
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
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// HTTPS (mutual TLS) listen address for boot scripts.
    #[arg(long, default_value = "0.0.0.0:8443")]
    https: SocketAddr,
    /// Plain-HTTP listen address for boot files (and, behind a proxy, the scripts).
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: SocketAddr,
    /// Directory served under /files/ (default: DIR/files).
    #[arg(long)]
    files: Option<PathBuf>,
    /// Serve scripts on plain HTTP behind a TLS-terminating proxy (see nginx-config).
    #[arg(long)]
    behind_proxy: bool,
    /// Address of a proxy whose X-SSL-Client-* headers are trusted (repeatable).
    #[arg(long = "trusted-proxy", requires = "behind_proxy")]
    trusted_proxies: Vec<IpAddr>,
    /// Seconds a one-time secret URL stays valid (1 to 86400).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    one_time_ttl: u64,
    /// Maximum concurrent connections per listener (a quarter of them for clients without a
    /// certificate).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Maximum concurrent connections from one address per listener (a board makes one).
    #[arg(long, default_value_t = 32)]
    max_per_ip: usize,
    /// Seconds allowed for a TLS handshake or a request's headers (1 to 3600).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// TLS sessions kept for resumption (a boot makes several HTTPS fetches; about 1 KiB each).
    #[arg(long, default_value_t = 4096)]
    tls_sessions: usize,
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// Boards to build.
    #[arg(value_parser = parse::<BoardName>, required_unless_present = "all")]
    boards: Vec<BoardName>,
    /// Build every active board.
    #[arg(long, conflicts_with = "boards")]
    all: bool,
    /// iPXE source tree (a checkout or its src/), built with make.
    #[arg(
        long,
        required_unless_present = "prebuilt",
        conflicts_with = "prebuilt"
    )]
    ipxe_src: Option<PathBuf>,
    /// Directory with a prebuilt ipxe-amd64.efi (e.g. Debian 13's /usr/lib/ipxe): target efi-usb.
    #[arg(long)]
    prebuilt: Option<PathBuf>,
    /// lkrn, iso, usb, efi, efi-iso, hybrid (default) with --ipxe-src; efi-usb with --prebuilt.
    #[arg(long = "target", value_parser = parse::<Target>)]
    targets: Vec<Target>,
    /// Output directory; images go to OUT/BOARD/ (default: DIR/out).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Boards built in parallel, each in its own copy of the iPXE tree.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// make -j inside each build (default: cores / jobs).
    #[arg(long)]
    make_jobs: Option<usize>,
    /// iPXE DEBUG= setting, e.g. tls,x509 (for diagnosing a board).
    #[arg(long)]
    debug: Option<String>,
    /// NTP server the embed script syncs with before HTTPS (boards without a real-time clock).
    #[arg(long)]
    ntp: Option<String>,
    /// Compile each board's key into its iPXE binary for every target (a relink per board)
    /// instead of one shared, CA-pinned binary plus the board's autoexec.ipxe on the medium.
    #[arg(long)]
    embed_key: bool,
    /// Print the manifests as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct FlashArgs {
    /// List candidate devices (removable or USB-attached disks) and exit.
    #[arg(long, conflicts_with_all = ["source", "device"])]
    list: bool,
    /// A board name (its newest hybrid/usb image) or an image file.
    #[arg(required_unless_present = "list")]
    source: Option<String>,
    /// The whole-disk device, e.g. /dev/sdb.
    #[arg(required_unless_present = "list")]
    device: Option<PathBuf>,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    yes: bool,
    /// Allow a disk that is neither removable nor USB-attached (e.g. a loop device or SD slot).
    #[arg(long)]
    allow_non_removable: bool,
    /// Skip reading the stick back.
    #[arg(long, conflicts_with = "verify_only")]
    no_verify: bool,
    /// Only compare the device with the image (checks a stick written earlier).
    #[arg(long)]
    verify_only: bool,
    /// Where built images are (default: DIR/out).
    #[arg(long)]
    out: Option<PathBuf>,
    /// sysfs root to discover devices in (for tests).
    #[arg(long, env = "IPXE_CA_SYSFS", default_value = "/sys", hide = true)]
    sysfs: PathBuf,
    /// Machine-readable output (with --list).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Also check this iPXE source tree (what it supports, how ipxe-ca builds it).
    #[arg(long)]
    ipxe_src: Option<PathBuf>,
    /// Check what these targets need (default: hybrid, or efi-usb with --prebuilt).
    #[arg(long = "target", value_parser = parse::<Target>)]
    targets: Vec<Target>,
    /// Check the prebuilt route (no compiler needed).
    #[arg(long)]
    prebuilt: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Remove leftovers of interrupted commands, rewrite the index, re-sign an incomplete CRL.
    #[arg(long)]
    repair: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ServerCertArgs {
    /// Names boards reach the server by (default: those of the current certificate).
    #[arg(long = "san", value_parser = parse::<San>)]
    sans: Vec<San>,
}

#[derive(Args, Debug)]
struct SignFilesArgs {
    /// Files to sign (default: every boot file in the files directory).
    paths: Vec<PathBuf>,
    /// The files directory (default: DIR/files; the one `serve --files` serves).
    #[arg(long)]
    files: Option<PathBuf>,
    /// Sign again even when a signature is current.
    #[arg(long)]
    force: bool,
    /// Only report missing and stale signatures; exit status 1 if there are any.
    #[arg(long)]
    check: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct NginxArgs {
    /// What nginx listens on (default: the port of the configured server URL).
    #[arg(long)]
    listen: Option<String>,
    /// Where `ipxe-ca serve --behind-proxy` listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    upstream: SocketAddr,
}

#[derive(Args, Debug)]
struct InitArgs {
    /// The CA's common name.
    #[arg(long, default_value = "ipxe-ca boot CA")]
    name: String,
    /// A name the server is reached by, `DNS:host` or `IP:addr` (repeatable). The first one
    /// sets the default URLs. Default: DNS:localhost and IP:127.0.0.1.
    #[arg(long = "san", value_parser = parse::<San>)]
    sans: Vec<San>,
    /// URL boards fetch their script from (default https://FIRST-SAN:8443).
    #[arg(long)]
    server_url: Option<String>,
    /// URL boards fetch kernels and initrds from (default http://FIRST-SAN:8080).
    #[arg(long)]
    files_url: Option<String>,
    /// RSA key size for the CA and the server (iPXE needs RSA).
    #[arg(long, default_value = "2048", value_parser = parse::<KeySize>)]
    key_size: KeySize,
    /// CA validity in days.
    #[arg(long, default_value_t = lab::days::CA)]
    days: u32,
    /// Replace an existing CA: every board enrolled with the old one stops booting.
    #[arg(long)]
    force: bool,
    /// Adopt this CA certificate (e.g. the prototype's openssl CA) instead of creating one.
    #[arg(long, requires = "from_key")]
    from_ca: Option<PathBuf>,
    /// The adopted CA's private key.
    #[arg(long, requires = "from_ca")]
    from_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BoardArgs {
    /// The board's MAC; requests naming another MAC are refused.
    #[arg(long, value_parser = parse::<Mac>)]
    mac: Option<Mac>,
    /// Profile its boot script comes from (profiles/NAME.ipxe).
    #[arg(long, value_parser = parse::<ProfileName>)]
    profile: Option<ProfileName>,
    /// Template variable KEY=VALUE for its profile (repeatable).
    #[arg(long = "var", value_parser = parse::<KeyValue>)]
    vars: Vec<KeyValue>,
    /// Secret KEY=VALUE, available to templates as secrets.KEY, never printed (repeatable).
    /// Other local users can read command lines: prefer --secret-file or --secrets-from.
    // Parsed by SecretInput::read, not clap: clap would repeat a malformed value (a secret).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    #[command(flatten)]
    secret_input: SecretInput,
    /// Print the registered board as JSON.
    #[arg(long)]
    json: bool,
}

/// Secrets that never appear on a command line.
#[derive(Args, Debug, Clone)]
struct SecretInput {
    /// Secret KEY from the content of file PATH (KEY=PATH, repeatable).
    #[arg(long = "secret-file")]
    secret_files: Vec<String>,
    /// Secrets as KEY=VALUE lines from a file, or from stdin with `-`.
    #[arg(long = "secrets-from")]
    secrets_from: Option<PathBuf>,
}

impl SecretInput {
    /// Every secret: those of --secret (`cli`), then these. No error repeats a value.
    fn read(&self, cli: &[String]) -> Result<Vec<KeyValue>> {
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
struct EnrollArgs {
    /// Board names (a-z, 0-9, '.', '_', '-'); several at once use every core.
    #[arg(value_parser = parse::<BoardName>, required = true)]
    boards: Vec<BoardName>,
    /// Certificate validity in days.
    #[arg(long, default_value_t = lab::days::BOARD)]
    days: u32,
    #[command(flatten)]
    common: BoardArgs,
}

#[derive(Args, Debug)]
struct SignArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    board: BoardName,
    /// The CSR, PEM or DER. Only its public key is used; the extensions are ours.
    #[arg(long)]
    csr: PathBuf,
    /// Certificate validity in days.
    #[arg(long, default_value_t = lab::days::BOARD)]
    days: u32,
    #[command(flatten)]
    common: BoardArgs,
}

#[derive(Args, Debug)]
struct RegisterArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    board: BoardName,
    /// The board's existing certificate, PEM or DER, issued by this CA.
    #[arg(long)]
    cert: PathBuf,
    #[command(flatten)]
    common: BoardArgs,
}

#[derive(Args, Debug)]
struct SetArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    board: BoardName,
    /// New MAC.
    #[arg(long, value_parser = parse::<Mac>, conflicts_with = "no_mac")]
    mac: Option<Mac>,
    /// Forget the MAC (requests naming any MAC are then accepted).
    #[arg(long)]
    no_mac: bool,
    /// New profile.
    #[arg(long, value_parser = parse::<ProfileName>)]
    profile: Option<ProfileName>,
    /// Add or change a template variable KEY=VALUE (repeatable).
    #[arg(long = "var", value_parser = parse::<KeyValue>)]
    vars: Vec<KeyValue>,
    /// Remove a template variable (repeatable).
    #[arg(long = "unset-var")]
    unset_vars: Vec<String>,
    /// Add or change a secret KEY=VALUE (repeatable; never printed). Other local users can
    /// read command lines: prefer --secret-file or --secrets-from.
    // Parsed by SecretInput::read, not clap: clap would repeat a malformed value (a secret).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    #[command(flatten)]
    secret_input: SecretInput,
    /// Remove a secret (repeatable).
    #[arg(long = "unset-secret")]
    unset_secrets: Vec<String>,
    /// Print the board as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    board: BoardName,
    /// unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation.
    #[arg(long, default_value = "unspecified", value_parser = parse::<Reason>)]
    reason: Reason,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Instead of the boards: everything that expires within DAYS (boards, server and
    /// code-signing certificates, the CA, the CRL's next update); exit status 1 if anything
    /// does, for cron and CI.
    #[arg(long, value_name = "DAYS")]
    expiring: Option<u32>,
}

#[derive(Args, Debug)]
struct JsonArg {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct ShowArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    board: BoardName,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

fn parse<T: std::str::FromStr<Err = ipxe_ca::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: ipxe_ca::Error| e.to_string())
}

fn board_options(c: &BoardArgs, days: Option<u32>) -> Result<BoardOptions> {
    Ok(BoardOptions {
        mac: c.mac,
        profile: c.profile.clone(),
        days,
        vars: c.vars.clone(),
        secrets: c.secret_input.read(&c.secrets)?,
    })
}

fn print_board(lab: &Lab, board: &ipxe_ca::registry::Board, json: bool) -> Result<()> {
    let v = lab.view(board);
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(out, "board        {}", v.name)?;
        writeln!(out, "status       {:?}", v.status)?;
        writeln!(out, "serial       {}", v.serial)?;
        writeln!(out, "sha1         {}", v.fingerprint_sha1)?;
        writeln!(out, "sha256       {}", v.fingerprint_sha256)?;
        writeln!(out, "mac          {}", v.mac.as_deref().unwrap_or("-"))?;
        writeln!(out, "profile      {}", v.profile)?;
        writeln!(out, "valid        {} .. {}", v.not_before, v.not_after)?;
        writeln!(out, "cert         {}", v.cert.display())?;
        let key = v.key.as_ref().map(|k| k.display().to_string());
        writeln!(
            out,
            "key          {}",
            key.as_deref().unwrap_or("- (not held)")
        )?;
        for (k, val) in &v.vars {
            writeln!(out, "var          {k}={val}")?;
        }
        for s in &v.secrets {
            writeln!(out, "secret       {s} (value hidden)")?;
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let lab = Lab::open(&cli.dir);
    match cli.command {
        Command::Init(a) => {
            let sans = if a.sans.is_empty() {
                vec![San::Dns("localhost".into()), San::Ip([127, 0, 0, 1].into())]
            } else {
                a.sans
            };
            let from_ca = a.from_ca.zip(a.from_key);
            let adopted = from_ca.is_some();
            let config = lab
                .init(&InitOptions {
                    name: a.name,
                    sans: sans.clone(),
                    server_url: a.server_url,
                    files_url: a.files_url,
                    key_size: a.key_size,
                    days: a.days,
                    force: a.force,
                    from_ca,
                })
                .with_context(|| format!("cannot initialise {}", cli.dir.display()))?;
            let s = lab.state();
            println!(
                "{} CA {}",
                if adopted { "adopted" } else { "created" },
                s.ca_cert().display()
            );
            let names: Vec<String> = sans.iter().map(ToString::to_string).collect();
            println!(
                "server certificate {} ({})",
                s.server_cert().display(),
                names.join(", ")
            );
            println!(
                "server URL {}  files URL {}",
                config.server_url, config.files_url
            );
            println!("next: ipxe-ca --dir {} enroll BOARD", cli.dir.display());
        }
        Command::Enroll(a) => {
            let names: Vec<String> = a.boards.iter().map(ToString::to_string).collect();
            let boards = lab
                .enroll_many(&a.boards, &board_options(&a.common, Some(a.days))?)
                .with_context(|| format!("cannot enroll {}", names.join(" ")))?;
            if a.common.json && boards.len() > 1 {
                let views: Vec<_> = boards.iter().map(|b| lab.view(b)).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                for b in &boards {
                    print_board(&lab, b, a.common.json)?;
                }
            }
        }
        Command::Sign(a) => {
            let csr = std::fs::read(&a.csr)
                .with_context(|| format!("cannot read CSR {}", a.csr.display()))?;
            let b = lab
                .sign(&a.board, &csr, &board_options(&a.common, Some(a.days))?)
                .with_context(|| format!("cannot sign {} for {}", a.csr.display(), a.board))?;
            print_board(&lab, &b, a.common.json)?;
        }
        Command::Register(a) => {
            let cert = std::fs::read(&a.cert)
                .with_context(|| format!("cannot read certificate {}", a.cert.display()))?;
            let b = lab
                .register(&a.board, &cert, &board_options(&a.common, None)?)
                .with_context(|| format!("cannot register {}", a.board))?;
            print_board(&lab, &b, a.common.json)?;
        }
        Command::Set(a) => {
            let update = lab::BoardUpdate {
                mac: a.mac,
                clear_mac: a.no_mac,
                profile: a.profile,
                vars: a.vars,
                unset_vars: a.unset_vars,
                secrets: a.secret_input.read(&a.secrets)?,
                unset_secrets: a.unset_secrets,
            };
            let b = lab
                .update(&a.board, &update)
                .with_context(|| format!("cannot change {}", a.board))?;
            print_board(&lab, &b, a.json)?;
        }
        Command::Revoke(a) => {
            let b = lab
                .revoke(&a.board, a.reason)
                .with_context(|| format!("cannot revoke {}", a.board))?;
            println!(
                "revoked {} (serial {}); CRL {}",
                b.name,
                b.serial,
                lab.state().crl().display()
            );
        }
        Command::Crl => {
            let next = lab.refresh_crl().context("cannot re-sign the CRL")?;
            println!(
                "re-signed {}; valid until {}",
                lab.state().crl().display(),
                next.format(&time::format_description::well_known::Rfc3339)?
            );
        }
        Command::SignFiles(a) => sign_files(&lab, a)?,
        Command::Check(a) => {
            let problems = lab.check(a.repair).context("cannot check the registry")?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&problems)?);
            } else if problems.is_empty() {
                println!("registry consistent");
            } else {
                for p in &problems {
                    let fix = if p.repairable {
                        " (--repair fixes it)"
                    } else {
                        ""
                    };
                    println!("{:<21} {}: {}{fix}", p.kind, p.path.display(), p.detail);
                }
            }
            if !problems.is_empty() {
                anyhow::bail!("{} problem(s) in the registry", problems.len());
            }
        }
        Command::ServerCert(a) => {
            let sans = lab
                .renew_server(Some(a.sans))
                .context("cannot issue the server certificates")?;
            let names: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            println!(
                "issued {} and {} for {}; restart `ipxe-ca serve` to use them",
                lab.state().server_cert().display(),
                lab.state().server_ecdsa_cert().display(),
                names.join(", ")
            );
        }
        Command::List(a) => {
            if !lab.state().has_ca() {
                return Err(ipxe_ca::Error::NoCa(cli.dir.clone()).into());
            }
            if let Some(days) = a.expiring {
                let soon = lab.expiring(days).context("cannot check expiry dates")?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&soon)?);
                } else {
                    for e in &soon {
                        println!("{:>5} days  {:<50} {}", e.days_left, e.what, e.expires);
                    }
                }
                if !soon.is_empty() {
                    anyhow::bail!("{} item(s) expire within {days} days", soon.len());
                }
                return Ok(());
            }
            let boards = lab.registry().list().context("cannot list boards")?;
            let mut out = std::io::stdout().lock();
            if a.json {
                let views: Vec<_> = boards.iter().map(|b| lab.view(b)).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
            } else {
                writeln!(
                    out,
                    "{:<24} {:<8} {:<17} {:<10} {:<10} SHA1",
                    "NAME", "STATUS", "MAC", "PROFILE", "EXPIRES"
                )?;
                let soon = time::OffsetDateTime::now_utc() + time::Duration::days(30);
                for b in &boards {
                    let mac = b.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
                    let mut status = format!("{:?}", b.status).to_lowercase();
                    if b.status == ipxe_ca::registry::Status::Active && b.not_after < soon {
                        status = "expiring".into();
                    }
                    writeln!(
                        out,
                        "{:<24} {:<8} {:<17} {:<10} {:<10} {}",
                        b.name,
                        status,
                        mac,
                        b.profile,
                        b.not_after.date(),
                        b.fingerprint_sha1
                    )?;
                }
            }
        }
        Command::Serve(a) => {
            let opts = ServeOptions {
                https: Some(a.https),
                http: a.http,
                files: a.files.unwrap_or_else(|| lab.state().files_dir()),
                trusted_proxies: a.trusted_proxies,
                behind_proxy: a.behind_proxy,
                proxy_secret: if a.behind_proxy {
                    Some(lab.proxy_secret().context("cannot read the proxy secret")?)
                } else {
                    None
                },
                one_time_ttl: Duration::from_secs(a.one_time_ttl),
                max_connections: a.max_connections,
                max_per_ip: a.max_per_ip,
                timeout: Duration::from_secs(a.timeout),
                tls_sessions: a.tls_sessions,
            };
            server::run(lab, opts).context("server failed")?;
        }
        Command::Build(a) => build(&lab, a)?,
        Command::Flash(a) => flash(&lab, a)?,
        Command::Doctor(a) => {
            let tree = match &a.ipxe_src {
                Some(p) => {
                    Some(ipxe_build::IpxeTree::open(p).context("cannot check the iPXE tree")?)
                }
                None => None,
            };
            let targets = if a.targets.is_empty() {
                vec![if a.prebuilt {
                    Target::EfiUsb
                } else {
                    Target::Hybrid
                }]
            } else {
                a.targets
            };
            let r = ipxe_build::doctor::report(&targets, a.prebuilt, tree.as_ref());
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for c in &r.checks {
                    let mark = match (c.ok, c.needed) {
                        (true, _) => "ok     ",
                        (false, true) => "MISSING",
                        (false, false) => "absent ",
                    };
                    println!(
                        "{mark} {:<36} for {:<46} (apt-get install {})",
                        c.what, c.needed_for, c.package
                    );
                }
                if let Some(t) = r.iso_tool {
                    println!("ISO images are mastered with {t:?}");
                }
                if let Some(f) = &r.tree {
                    println!(
                        "tree: ECDHE {}, PKCS#8 keys {}, NO_WERROR {}",
                        f.ecdhe, f.pkcs8_keys, f.no_werror
                    );
                }
                for n in &r.tree_notes {
                    println!("note: {n}");
                }
            }
            let missing = r.missing();
            if !missing.is_empty() {
                let names: Vec<&str> = missing.iter().map(|c| c.what).collect();
                anyhow::bail!(
                    "a build of {} would fail: missing {}",
                    targets
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                    names.join(", ")
                );
            }
        }
        Command::NginxConfig(a) => {
            let listen = match a.listen {
                Some(l) => l,
                None => {
                    let c = ipxe_ca::config::Config::load(lab.state())?;
                    c.server_url
                        .rsplit_once(':')
                        .map(|(_, p)| p.trim_end_matches('/').to_string())
                        .unwrap_or_else(|| "443".into())
                }
            };
            let secret = lab.proxy_secret().context("cannot make the proxy secret")?;
            print!(
                "{}",
                server::nginx::server_block(lab.state(), &listen, a.upstream, &secret)
            );
        }
        Command::Show(a) => {
            let b = lab.registry().get(&a.board)?;
            print_board(&lab, &b, a.json)?;
        }
    }
    Ok(())
}

fn flash(lab: &Lab, a: FlashArgs) -> Result<()> {
    use ipxe_ca::flash::{self, Progress, System};
    use std::io::IsTerminal;
    let sys = System {
        sysfs: a.sysfs.clone(),
        ..System::default()
    };
    if a.list {
        let devs: Vec<_> = flash::devices(&sys)?
            .into_iter()
            .filter(|d| d.is_candidate())
            .collect();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&devs)?);
        } else if devs.is_empty() {
            println!("no removable or USB disks found");
        } else {
            for d in &devs {
                println!("{}", d.describe());
            }
        }
        return Ok(());
    }
    let (Some(source), Some(device)) = (a.source, a.device) else {
        anyhow::bail!("give a board or image and a device");
    };
    let out = a.out.unwrap_or_else(|| lab.state().out_dir());
    // A registered board wins over a file of the same name in the current directory.
    let board = source
        .parse::<BoardName>()
        .ok()
        .filter(|b| lab.registry().exists(b));
    let (image, expected) = match board {
        Some(board) => {
            let (img, sha) = flash::board_image(&out, &board)?;
            (img, Some(sha))
        }
        None if Path::new(&source).is_file() => (PathBuf::from(&source), None),
        None => {
            let board: BoardName = source.parse()?;
            let (img, sha) = flash::board_image(&out, &board)?;
            (img, Some(sha))
        }
    };
    let mut plan = flash::plan(
        &sys,
        &image,
        expected.as_deref(),
        &device,
        a.allow_non_removable,
    )?;
    let dev = plan.device.describe();
    let term = std::io::stderr().is_terminal();
    let bar = term.then(|| {
        let b = indicatif::ProgressBar::new(plan.image_size);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ) {
            b.set_style(style);
        }
        b
    });
    let last_decile = std::sync::atomic::AtomicU64::new(u64::MAX);
    let progress = |p: Progress| {
        let what = if p.writing { "writing" } else { "verifying" };
        match &bar {
            Some(b) => {
                b.set_message(what);
                b.set_position(p.done);
            }
            None => {
                let decile = (p.done * 10 / p.total.max(1)) + if p.writing { 0 } else { 100 };
                if last_decile.swap(decile, std::sync::atomic::Ordering::Relaxed) != decile {
                    eprintln!(
                        "flash: {what} {}% ({} of {})",
                        p.done * 100 / p.total.max(1),
                        flash::human(p.done),
                        flash::human(p.total)
                    );
                }
            }
        }
    };
    if a.verify_only {
        let got = flash::verify_device(&plan.device.path, plan.image_size, &progress)?;
        if got != plan.sha256 {
            anyhow::bail!(
                "verification FAILED: {} does not hold {} (read back SHA-256 {got}, image {})",
                dev,
                image.display(),
                plan.sha256
            );
        }
        println!(
            "verified: {} holds {} (SHA-256 {got})",
            plan.device.path.display(),
            image.display()
        );
        return Ok(());
    }
    if !a.yes && !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to overwrite {dev} without confirmation: no terminal to ask on; pass --yes"
        );
    }
    // Held from here to the write: the disk confirmed is the disk written.
    flash::hold(&mut plan, &sys)?;
    if !a.yes {
        eprint!(
            "Write {} ({}) to {dev}?\nEverything on it will be lost. Type 'yes' to continue: ",
            image.display(),
            flash::human(plan.image_size)
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            anyhow::bail!("not confirmed; nothing was written");
        }
    }
    let verified = flash::flash(&mut plan, !a.no_verify, &progress)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    match verified {
        Some(sha) => println!(
            "wrote and verified {} on {} (SHA-256 {sha})",
            image.display(),
            plan.device.path.display()
        ),
        None => println!(
            "wrote {} to {} (not verified)",
            image.display(),
            plan.device.path.display()
        ),
    }
    Ok(())
}

fn sign_files(lab: &Lab, a: SignFilesArgs) -> Result<()> {
    use ipxe_ca::codesign::{self, SigStatus};
    let root = a.files.unwrap_or_else(|| lab.state().files_dir());
    if a.check {
        let report = codesign::check(&root).context("cannot check the signatures")?;
        let bad: Vec<_> = report
            .iter()
            .filter(|f| f.status != SigStatus::Current)
            .collect();
        if a.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            for f in &report {
                println!("{:<8} {}", format!("{:?}", f.status).to_lowercase(), f.path);
            }
        }
        if !bad.is_empty() {
            anyhow::bail!(
                "{} of {} boot files have no current signature: run `ipxe-ca sign-files`",
                bad.len(),
                report.len()
            );
        }
        return Ok(());
    }
    let (signer, created) = lab.signer().context("cannot load the code-signing key")?;
    if created {
        eprintln!(
            "created the code-signing certificate {} (this state dir predates signed boot files)",
            lab.state().codesign_cert().display()
        );
    }
    let done = codesign::sign_files(&signer, &root, &a.paths, a.force)
        .context("cannot sign the boot files")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        for d in &done {
            println!("{:<9} {}", d.action, d.path);
        }
    }
    Ok(())
}

fn build(lab: &Lab, a: BuildArgs) -> Result<()> {
    use std::io::IsTerminal;
    let (source, default_target) = match (a.ipxe_src, a.prebuilt) {
        (Some(src), _) => (Source::Tree(src), Target::Hybrid),
        (None, Some(dir)) => (Source::Prebuilt(dir), Target::EfiUsb),
        (None, None) => anyhow::bail!("give --ipxe-src DIR or --prebuilt DIR"),
    };
    let targets = if a.targets.is_empty() {
        vec![default_target]
    } else {
        a.targets
    };
    let jobs = a.jobs.max(1);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let opts = BuildOptions {
        source,
        targets,
        out: a.out.unwrap_or_else(|| lab.state().out_dir()),
        jobs,
        debug: a.debug,
        ntp_server: a.ntp,
        make_jobs: a.make_jobs.unwrap_or((cores / jobs).max(1)),
        embed_key: a.embed_key,
    };
    let boards = ipxe_build::select_boards(lab, &a.boards, a.all)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(boards.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} boards {msg}",
        ) {
            b.set_style(style);
        }
        b
    });
    let on_done = |r: &ipxe_build::BoardResult| {
        let line = match r {
            Ok(m) => format!(
                "built {} in {:.1} s: {}",
                m.board,
                m.duration_s,
                m.targets
                    .iter()
                    .map(|t| t.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err((b, e)) => format!("FAILED {b}: {e}"),
        };
        match &bar {
            Some(bar) => {
                bar.inc(1);
                bar.println(line);
            }
            None => eprintln!("{line}"),
        }
    };
    let results = ipxe_build::build(lab, &boards, &opts, &on_done)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let manifests: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut notes: Vec<&String> = manifests.iter().flat_map(|m| m.notes.iter()).collect();
    notes.sort();
    notes.dedup();
    for n in notes {
        eprintln!("note: {n}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&manifests)?);
    } else {
        for m in &manifests {
            println!(
                "{}",
                opts.out.join(&m.board).join("manifest.json").display()
            );
        }
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|(b, _)| b.clone()))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} boards failed: {}",
            failed.len(),
            results.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line: scripts read the first line of stderr.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("ipxe-ca: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("ipxe-ca: error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}
