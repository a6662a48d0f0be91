//! `ipxe-ca`: parse arguments, call the library, print. Nothing else lives here.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use ipxe_ca::ca::{KeySize, Reason};
use ipxe_ca::lab::{self, BoardOptions, InitOptions};
use ipxe_ca::types::{BoardName, KeyValue, Mac, ProfileName, San};
use ipxe_ca::Lab;

/// Boot a farm of boards securely over the network with iPXE: a private CA, per-board
/// client certificates and images, and the mTLS server that gives each board its own script.
#[derive(Parser, Debug)]
#[command(name = "ipxe-ca", version, about, max_term_width = 100)]
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
    /// Revoke a board: the server refuses it at once and the CRL lists it.
    Revoke(RevokeArgs),
    /// List the registered boards.
    List(JsonArg),
    /// Show one board.
    Show(ShowArgs),
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
    #[arg(long = "secret", value_parser = parse::<KeyValue>)]
    secrets: Vec<KeyValue>,
    /// Print the registered board as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct EnrollArgs {
    /// Board name (a-z, 0-9, '.', '_', '-').
    #[arg(value_parser = parse::<BoardName>)]
    board: BoardName,
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
struct RevokeArgs {
    /// Board name.
    #[arg(value_parser = parse::<BoardName>)]
    board: BoardName,
    /// unspecified, key-compromise, affiliation-changed, superseded, cessation-of-operation.
    #[arg(long, default_value = "unspecified", value_parser = parse::<Reason>)]
    reason: Reason,
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

fn board_options(c: &BoardArgs, days: Option<u32>) -> BoardOptions {
    BoardOptions {
        mac: c.mac,
        profile: c.profile.clone(),
        days,
        vars: c.vars.clone(),
        secrets: c.secrets.clone(),
    }
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
        writeln!(out, "key          {}", key.as_deref().unwrap_or("- (not held)"))?;
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
            println!("server certificate {} ({})", s.server_cert().display(), names.join(", "));
            println!("server URL {}  files URL {}", config.server_url, config.files_url);
            println!("next: ipxe-ca --dir {} enroll BOARD", cli.dir.display());
        }
        Command::Enroll(a) => {
            let b = lab
                .enroll(&a.board, &board_options(&a.common, Some(a.days)))
                .with_context(|| format!("cannot enroll {}", a.board))?;
            print_board(&lab, &b, a.common.json)?;
        }
        Command::Sign(a) => {
            let csr = std::fs::read(&a.csr)
                .with_context(|| format!("cannot read CSR {}", a.csr.display()))?;
            let b = lab
                .sign(&a.board, &csr, &board_options(&a.common, Some(a.days)))
                .with_context(|| format!("cannot sign {} for {}", a.csr.display(), a.board))?;
            print_board(&lab, &b, a.common.json)?;
        }
        Command::Register(a) => {
            let cert = std::fs::read(&a.cert)
                .with_context(|| format!("cannot read certificate {}", a.cert.display()))?;
            let b = lab
                .register(&a.board, &cert, &board_options(&a.common, None))
                .with_context(|| format!("cannot register {}", a.board))?;
            print_board(&lab, &b, a.common.json)?;
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
        Command::List(a) => {
            let boards = lab.registry().list().context("cannot list boards")?;
            let mut out = std::io::stdout().lock();
            if a.json {
                let views: Vec<_> = boards.iter().map(|b| lab.view(b)).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&views)?)?;
            } else {
                writeln!(out, "{:<24} {:<8} {:<17} {:<10} SHA1", "NAME", "STATUS", "MAC", "PROFILE")?;
                for b in &boards {
                    let mac = b.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into());
                    let status = format!("{:?}", b.status).to_lowercase();
                    writeln!(
                        out,
                        "{:<24} {:<8} {:<17} {:<10} {}",
                        b.name, status, mac, b.profile, b.fingerprint_sha1
                    )?;
                }
            }
        }
        Command::Show(a) => {
            let b = lab.registry().get(&a.board)?;
            print_board(&lab, &b, a.json)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(e.kind(), DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand) {
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
