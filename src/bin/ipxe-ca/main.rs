//! `ipxe-ca`: parse arguments, call the library, print. Decisions live in the library.

mod cli;
mod print;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cli::{board_options, Cli, Command};
use ipxe_ca::ipxe_build;
use ipxe_ca::server;
use ipxe_ca::store::state::OutDir;
use ipxe_ca::Lab;

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
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            let hint = e
                .chain()
                .find_map(|c| c.downcast_ref::<ipxe_ca::Error>())
                .and_then(hint);
            match hint {
                Some(h) => eprintln!("ipxe-ca: error: {}; {h}", chain.join(": ")),
                None => eprintln!("ipxe-ca: error: {}", chain.join(": ")),
            }
            ExitCode::FAILURE
        }
    }
}

/// The command or flag that answers a library refusal (the library never names flags).
fn hint(e: &ipxe_ca::Error) -> Option<String> {
    use ipxe_ca::error::NameFix;
    use ipxe_ca::Error::*;
    Some(match e {
        NoCa(_) => "pass --dir or set IPXE_CA_DIR to the state dir".into(),
        CaExists(_) => "pass --force to replace it anyway".into(),
        BoardExists(_) => "to re-enroll a revoked board under its name, pass --replace".into(),
        NotRemovable(_) => "if this really is the stick, pass --allow-non-removable".into(),
        RenewRevoked(_) => "`ipxe-ca enroll --replace` issues it a new key and certificate".into(),
        TargetNotForArch { .. } => {
            "build it with --target efi-usb (a stick) or --target efi".into()
        }
        FilesHoldKeys(_) => "the default is DIR/files; --files names another".into(),
        StateReplaced(_) => "start `ipxe-ca serve` again (the systemd unit restarts it)".into(),
        ServerNameNotCovered { host, fix, .. } => match fix {
            NameFix::Init => {
                format!("add `--san {host}`, or give a --server-url with one of the --san names")
            }
            NameFix::ServerCert => format!(
                "add `--san {host}`, or first point the boards elsewhere \
                 (`ipxe-ca config --server-url`, then rebuild their images)"
            ),
            NameFix::ServerUrl => format!(
                "issue certificates that name it first (`ipxe-ca server-cert --san {host}` \
                 and every name boards use now)"
            ),
            _ => name_advice(host),
        },
        _ => return None,
    })
}

/// What to do when the server certificates do not name the host boards use.
pub fn name_advice(host: &str) -> String {
    format!(
        "run `ipxe-ca server-cert --san {host}` with every name boards use now, or \
         `ipxe-ca config --server-url` with one the certificate names"
    )
}

fn try_main(cli: Cli) -> Result<()> {
    let lab = Lab::open(&cli.dir);
    let moved = lab
        .state()
        .upgrade_layout()
        .with_context(|| format!("cannot bring {} to the current layout", cli.dir.display()))?;
    if !moved.is_empty() {
        let (keys, other): (Vec<_>, Vec<_>) = moved
            .iter()
            .partition(|(_, to)| to.starts_with(lab.state().keys_dir()));
        eprintln!(
            "ipxe-ca: moved {} private key(s) into {}{} (serve is kept out of that folder)",
            keys.len(),
            lab.state().keys_dir().display(),
            other
                .iter()
                .map(|(from, to)| format!(" and {} to {}", from.display(), to.display()))
                .collect::<String>()
        );
    }
    let result = run(&lab, cli);
    for (from, to) in lab.moved_aside() {
        eprintln!(
            "ipxe-ca: moved {} to {} (nothing is deleted: delete it yourself once you are sure)",
            from.display(),
            to.display()
        );
    }
    result
}

fn run(lab: &Lab, cli: Cli) -> Result<()> {
    let dir = cli.dir.display();
    match cli.command {
        Command::Init(a) => {
            let done = lab
                .init(&a.options())
                .with_context(|| format!("cannot initialise {dir}"))?;
            print::initialized(lab.state(), &done);
            println!("next: ipxe-ca --dir {dir} enroll BOARD");
        }
        Command::Enroll(a) => {
            let names: Vec<String> = a.boards.iter().map(ToString::to_string).collect();
            let boards = lab
                .enroll_many(&a.boards, &board_options(&a.common, Some(a.days))?)
                .with_context(|| format!("cannot enroll {}", names.join(" ")))?;
            let views: Vec<_> = boards.iter().map(|b| lab.view(b)).collect();
            match views.as_slice() {
                [one] => print::out(a.common.json, one, print::board)?,
                _ => print::out(a.common.json, &views[..], |v| {
                    v.iter().try_for_each(print::board)
                })?,
            }
        }
        Command::Sign(a) => {
            let csr = std::fs::read(&a.csr)
                .with_context(|| format!("cannot read CSR {}", a.csr.display()))?;
            let b = lab
                .sign(&a.board, &csr, &board_options(&a.common, Some(a.days))?)
                .with_context(|| format!("cannot sign {} for {}", a.csr.display(), a.board))?;
            show(lab, &b, a.common.json)?;
        }
        Command::Register(a) => {
            let cert = std::fs::read(&a.cert)
                .with_context(|| format!("cannot read certificate {}", a.cert.display()))?;
            let b = lab
                .register(&a.board, &cert, &board_options(&a.common, None)?)
                .with_context(|| format!("cannot register {}", a.board))?;
            show(lab, &b, a.common.json)?;
        }
        Command::Set(a) => {
            let b = lab
                .update(&a.board, &a.update()?)
                .with_context(|| format!("cannot change {}", a.board))?;
            show(lab, &b, a.json)?;
        }
        Command::Renew(a) => {
            let boards = lab.renew(&a.boards, &a.options()).context("cannot renew")?;
            let views: Vec<_> = boards.iter().map(|b| lab.view(b)).collect();
            print::out(a.json, &views[..], print::renewed)?;
        }
        Command::Revoke(a) if a.previous => {
            let b = lab.revoke_previous(&a.board).context("cannot revoke")?;
            print::revoked(lab.state(), &b, true);
        }
        Command::Revoke(a) => {
            let b = lab
                .revoke(&a.board, a.reason)
                .with_context(|| format!("cannot revoke {}", a.board))?;
            print::revoked(lab.state(), &b, false);
        }
        Command::Config(a) => {
            let done = lab
                .configure(
                    a.server_url.as_deref(),
                    a.files_url.as_deref(),
                    a.console.as_deref(),
                )
                .context("cannot change config.toml")?;
            print::out(a.json, &done, print::configured)?;
        }
        Command::Crl => {
            let next = lab.refresh_crl().context("cannot re-sign the CRL")?;
            let next = next.format(&time::format_description::well_known::Rfc3339)?;
            println!(
                "re-signed {}; valid until {next}",
                lab.state().crl().display()
            );
        }
        Command::SignFiles(a) => sign_files(lab, a)?,
        Command::SecureBoot(a) => match a.action {
            cli::SecureBootAction::Init { replace, json } => {
                let done = ipxe_ca::secure_boot::init(lab.state(), replace)
                    .context("cannot make the Secure Boot keys")?;
                print::out(json, &done, print::enrollment)?;
            }
            cli::SecureBootAction::Adopt { key, cert } => {
                lab.state().require_ca()?;
                let read = |p: &std::path::Path| {
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
                };
                let signer =
                    ipxe_ca::secure_boot::Signer::adopt(lab.state(), &read(&cert)?, &read(&key)?)
                        .context("cannot adopt the Secure Boot key")?;
                println!(
                    "Secure Boot db key: {} (SHA-256 {})\nbuild and sign-files now sign every EFI executable with it; rebuild the boards' images and run `ipxe-ca sign-files`",
                    signer.subject(),
                    signer.fingerprint()
                );
            }
        },
        Command::Check(a) => {
            let problems = lab.check(a.repair).context("cannot check the registry")?;
            print::out(a.json, &problems[..], print::problems)?;
            if !problems.is_empty() {
                bail!("{} problem(s) in the state dir", problems.len());
            }
        }
        Command::ServerCert(a) => {
            let sans = lab
                .renew_server(Some(a.sans))
                .context("cannot issue the server certificates")?;
            print::server_certs(lab.state(), &sans);
        }
        Command::List(a) => {
            if let Some(days) = a.expiring {
                let soon = lab.expiring(days).context("cannot check expiry dates")?;
                print::out(a.json, &soon[..], print::expiring)?;
                if !soon.is_empty() {
                    bail!("{} item(s) expire within {days} days", soon.len());
                }
                return Ok(());
            }
            let boards = lab.boards().context("cannot list boards")?;
            let views: Vec<_> = boards.iter().map(|b| lab.view(b)).collect();
            print::out(a.json, &views[..], print::board_table)?;
        }
        Command::Show(a) => show(lab, &lab.registry().get(&a.board)?, a.json)?,
        Command::History(a) => {
            let records = lab.history(&a.board, a.count)?;
            print::out(a.json, &records[..], |r| print::history(&a.board, r))?;
        }
        Command::Serve(a) => {
            let opts = a.options(lab)?;
            server::run(lab.registry().clone(), opts).context("server failed")?;
        }
        Command::Build(a) => build(lab, a)?,
        Command::Flash(a) => flash(lab, a)?,
        Command::Doctor(a) => {
            let tree = match &a.ipxe_src {
                Some(p) => {
                    Some(ipxe_build::IpxeTree::open(p).context("cannot check the iPXE tree")?)
                }
                None => None,
            };
            // The registered boards say whether arm64 images are needed too.
            let arm64 = lab
                .registry()
                .list()
                .is_ok_and(|bs| bs.iter().any(|b| b.arch == ipxe_ca::types::Arch::Arm64));
            let r = ipxe_build::doctor::report(&a.targets, a.prebuilt, arm64, tree.as_ref());
            print::out(a.json, &r, print::doctor)?;
            if !a.json {
                // Images and kernels a Secure Boot farm's firmware would refuse.
                lab.secure_boot_problems()
                    .iter()
                    .for_each(|p| eprintln!("warning: {}: {}", p.path.display(), p.detail));
            }
            r.verdict()?;
        }
        Command::Completions(a) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, "ipxe-ca", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script)?;
        }
        Command::Manpages(a) => {
            std::fs::create_dir_all(&a.dir)
                .with_context(|| format!("cannot create {}", a.dir.display()))?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &a.dir)
                .with_context(|| format!("cannot write man pages in {}", a.dir.display()))?;
        }
        Command::NginxConfig(a) => {
            let config = ipxe_ca::store::config::Config::load(lab.state())?;
            let listen = a.listen.unwrap_or_else(|| config.server_port().to_string());
            let secret = lab.proxy_secret().context("cannot make the proxy secret")?;
            let block = server::nginx::server_block(lab.state(), &listen, a.upstream, &secret);
            match &a.out {
                Some(out) => {
                    ipxe_ca::store::state::write_atomic(
                        out,
                        block.as_bytes(),
                        ipxe_ca::store::state::MODE_SECRET,
                    )
                    .with_context(|| format!("cannot write {}", out.display()))?;
                    eprintln!("wrote {} (0600: it holds the proxy secret)", out.display());
                }
                None => print!("{block}"),
            }
        }
    }
    Ok(())
}

fn show(lab: &Lab, b: &ipxe_ca::board::Board, json: bool) -> Result<()> {
    print::out(json, &lab.view(b), print::board)
}

fn flash(lab: &Lab, a: cli::FlashArgs) -> Result<()> {
    use ipxe_ca::flash::{self, System};
    use std::io::IsTerminal;
    let sys = System {
        sysfs: a.sysfs.clone(),
        ..System::default()
    };
    if a.list {
        let devs = flash::candidates(&sys)?;
        if a.json {
            return print::json(&devs);
        }
        if devs.is_empty() {
            println!("no removable or USB disks found");
        }
        devs.iter().for_each(|d| println!("{}", d.describe()));
        return Ok(());
    }
    let (Some(source), Some(device)) = (a.source, a.device) else {
        bail!("give a board or image and a device");
    };
    let out = OutDir::new(a.out.unwrap_or_else(|| lab.state().out_dir()));
    let (image, expected) = ipxe_build::stick_source(lab.registry(), &out, &source)?;
    let mut plan = flash::plan(
        &sys,
        &image,
        expected.as_deref(),
        &device,
        a.allow_non_removable,
    )?;
    let dev = plan.device.describe();
    let progress = print::flash_progress(plan.image_size);
    let (img, path) = (image.display(), plan.device.path.display().to_string());
    if a.verify_only {
        let got = flash::verify(&plan, &progress)?;
        println!("verified: {path} holds {img} (SHA-256 {got})");
        return Ok(());
    }
    if !a.yes && !std::io::stdin().is_terminal() {
        bail!(
            "refusing to overwrite {dev} without confirmation: no terminal to ask on; pass --yes"
        );
    }
    // Held from here to the write: the disk confirmed is the disk written.
    flash::hold(&mut plan, &sys)?;
    if !a.yes {
        let size = flash::human(plan.image_size);
        eprint!("Write {img} ({size}) to {dev}?\nEverything on it will be lost. Type 'yes' to continue: ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!("not confirmed; nothing was written");
        }
    }
    match flash::flash(&mut plan, !a.no_verify, &progress)? {
        Some(sha) => println!("wrote and verified {img} on {path} (SHA-256 {sha})"),
        None => println!("wrote {img} to {path} (not verified)"),
    }
    Ok(())
}

fn sign_files(lab: &Lab, a: cli::SignFilesArgs) -> Result<()> {
    use ipxe_ca::codesign;
    let root = a.files.unwrap_or_else(|| lab.state().files_dir());
    if a.check {
        let trust = ipxe_ca::secure_boot::Trust::load(lab.state())
            .context("cannot load the Secure Boot certificate")?;
        let report =
            codesign::check(&root, trust.as_ref()).context("cannot check the signatures")?;
        print::signatures(&report, a.json)?;
        return Ok(codesign::verdict(&report)?);
    }
    let (signer, created) = lab.signer().context("cannot load the code-signing key")?;
    if created {
        print::created_codesign(lab.state());
    }
    let sb = ipxe_ca::secure_boot::Signer::load(lab.state())
        .context("cannot load the Secure Boot key")?;
    let done = codesign::sign_files(&signer, sb.as_ref(), &root, &a.paths, a.force)
        .context("cannot sign the boot files")?;
    if a.json {
        return print::json(&done);
    }
    done.iter().for_each(|d| {
        let sb = if d.secure_boot {
            " (and for Secure Boot)"
        } else {
            ""
        };
        println!("{:<9} {}{sb}", d.action, d.path)
    });
    Ok(())
}

fn build(lab: &Lab, a: cli::BuildArgs) -> Result<()> {
    let opts = a.options(lab)?;
    let boards = if a.stale {
        ipxe_build::stale_boards(lab.registry(), &opts.out)?
    } else {
        ipxe_build::select_boards(lab.registry(), &a.boards, a.all)?
    };
    if boards.is_empty() {
        println!("every active board's image is current");
        return Ok(());
    }
    let progress = print::BuildProgress::new(boards.len());
    let results = ipxe_build::build(lab.registry(), &boards, &opts, &|r| progress.done(r))?;
    progress.finish();
    let summary = ipxe_build::Summary::of(&results);
    summary.notes.iter().for_each(|n| eprintln!("note: {n}"));
    if a.json {
        print::json(&summary.manifests)?;
    } else {
        for m in &summary.manifests {
            println!("{}", opts.out.manifest(&m.board.parse()?).display());
        }
    }
    if !summary.failed.is_empty() {
        bail!(
            "{} of {} boards failed: {}",
            summary.failed.len(),
            results.len(),
            summary.failed.join(", ")
        );
    }
    Ok(())
}
