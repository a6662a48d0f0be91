//! What the commands print: tables for people, JSON for scripts, progress on a terminal.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use ipxe_ca::board::BoardView;
use ipxe_ca::flash::Progress;
use ipxe_ca::ipxe_build::doctor::Report;
use ipxe_ca::store::registry::Problem;

/// Pretty JSON on stdout.
pub fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// What a text printer returns: nothing, or a write that can fail.
pub trait Done {
    fn done(self) -> Result<()>;
}
impl Done for () {
    fn done(self) -> Result<()> {
        Ok(())
    }
}
impl Done for Result<()> {
    fn done(self) -> Result<()> {
        self
    }
}

/// JSON for scripts, or `text` for people.
pub fn out<T: serde::Serialize + ?Sized, D: Done>(
    json_out: bool,
    v: &T,
    text: impl FnOnce(&T) -> D,
) -> Result<()> {
    if json_out {
        json(v)
    } else {
        text(v).done()
    }
}

/// What `revoke` did.
pub fn revoked(s: &ipxe_ca::store::state::StateDir, b: &ipxe_ca::board::Board, previous: bool) {
    let crl = s.crl();
    if previous {
        println!(
            "revoked the previous certificates of {}; CRL {}",
            b.name,
            crl.display()
        );
    } else {
        println!(
            "revoked {} (serial {}); CRL {}",
            b.name,
            b.serial,
            crl.display()
        );
    }
}

/// What `server-cert` issued.
pub fn server_certs(s: &ipxe_ca::store::state::StateDir, sans: &[ipxe_ca::types::San]) {
    let names: Vec<String> = sans.iter().map(ToString::to_string).collect();
    println!(
        "issued {} and {} for {}; a running `ipxe-ca serve` picks them up within a second",
        s.server_cert().display(),
        s.server_ecdsa_cert().display(),
        names.join(", ")
    );
}

/// What `config` shows or changed, and what the operator has to do next.
pub fn configured(c: &ipxe_ca::lab::Configured) {
    println!("server_url = {}", c.after.server_url);
    println!("files_url = {}", c.after.files_url);
    if c.after.files_url != c.before.files_url {
        println!("files_url was {}: boards get the new one in their next boot script (a running `serve` reads it at once)", c.before.files_url);
    }
    if c.after.server_url != c.before.server_url {
        println!(
            "server_url was {}: each board's image has it compiled in, so rebuild and reflash every board (`ipxe-ca build`); images built before still ask the old one",
            c.before.server_url
        );
    }
    let console =
        |c: &ipxe_ca::store::config::Config| c.console_target().unwrap_or_else(|| "off".into());
    println!("console = {}", console(&c.after));
    if c.after.console_target() != c.before.console_target() {
        println!(
            "console was {}: images carry it, so rebuild and reflash (`ipxe-ca build`); restart `serve` to listen on the new port",
            console(&c.before)
        );
    }
}

/// What `init` made.
pub fn initialized(s: &ipxe_ca::store::state::StateDir, done: &ipxe_ca::lab::Initialized) {
    let how = if done.adopted { "adopted" } else { "created" };
    println!("{how} CA {}", s.ca_cert().display());
    let names: Vec<String> = done.sans.iter().map(ToString::to_string).collect();
    println!(
        "server certificate {} ({})",
        s.server_cert().display(),
        names.join(", ")
    );
    let c = &done.config;
    println!("server URL {}  files URL {}", c.server_url, c.files_url);
}

/// One board, as `show` prints it.
pub fn board(v: &BoardView) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "board        {}", v.name)?;
    writeln!(out, "status       {}", v.label())?;
    writeln!(out, "serial       {}", v.serial)?;
    writeln!(out, "sha1         {}", v.fingerprint_sha1)?;
    writeln!(out, "sha256       {}", v.fingerprint_sha256)?;
    writeln!(out, "mac          {}", v.mac.as_deref().unwrap_or("-"))?;
    writeln!(out, "profile      {}", v.profile)?;
    writeln!(out, "arch         {}", v.arch)?;
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
    Ok(())
}

/// The `list` table.
pub fn board_table(views: &[BoardView]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:<8} {:<17} {:<10} {:<6} {:<10} {:<20} SHA1",
        "NAME", "STATUS", "MAC", "PROFILE", "ARCH", "EXPIRES", "LAST SEEN"
    )?;
    for v in views {
        writeln!(
            out,
            "{:<24} {:<8} {:<17} {:<10} {:<6} {:<10} {:<20} {}",
            v.name,
            v.label(),
            v.mac.as_deref().unwrap_or("-"),
            v.profile,
            v.arch,
            v.not_after.get(..10).unwrap_or(&v.not_after),
            v.last_seen
                .as_deref()
                .map_or("never", |t| t.get(..19).unwrap_or(t)),
            v.fingerprint_sha1
        )?;
    }
    Ok(())
}

/// Text that came from a request (or a file name) with every control character shown as an
/// escape: a board's request must not drive the operator's terminal (`\x1b]0;…` retitles it,
/// others rewrite what is on screen).
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A board's recent requests, and its console lines between them.
pub fn history(board: &ipxe_ca::types::BoardName, shown: &[ipxe_ca::store::history::Shown]) {
    use ipxe_ca::store::history::Entry;
    if shown.is_empty() {
        println!(
            "{board}: no request recorded yet (serve records each board's requests and console)"
        );
    }
    for s in shown {
        let line = match &s.entry {
            Entry::Server(r) => {
                let tls = r.tls.as_ref().map(|t| {
                    let resumed = if t.resumed { " resumed" } else { "" };
                    format!(" {}{resumed}", t.suite.as_deref().unwrap_or("-"))
                });
                let reason = r
                    .reason
                    .as_deref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default();
                format!(
                    "{}  {:<15} {} {:<21} {}{}{reason}",
                    r.time,
                    r.outcome,
                    r.status,
                    r.peer.as_deref().unwrap_or("-"),
                    r.path,
                    tls.unwrap_or_default()
                )
            }
            // What the board printed, marked apart from the server's view.
            Entry::Board(l) => format!("{}  board> {}", l.time, l.text),
        };
        println!("{}", printable(&line));
        for e in &s.errors {
            println!("{}", printable(&format!("    {}: {}", e.code, e.meaning)));
        }
    }
}

/// `check`'s findings.
pub fn problems(problems: &[Problem]) {
    if problems.is_empty() {
        println!("registry consistent");
    }
    for p in problems {
        let fix = if p.repairable {
            " (--repair fixes it)"
        } else {
            ""
        };
        let advice = p
            .host
            .as_deref()
            .map(crate::name_advice)
            .map(|a| format!("; {a}"))
            .unwrap_or_default();
        let line = format!(
            "{:<21} {}: {}{advice}{fix}",
            p.kind,
            p.path.display(),
            p.detail
        );
        println!("{}", printable(&line));
    }
}

/// `doctor`'s findings.
pub fn doctor(r: &Report) {
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

/// A progress bar on a terminal, else nothing (the caller prints lines).
pub fn bar(len: u64, template: &str) -> Option<indicatif::ProgressBar> {
    std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(len);
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            b.set_style(style);
        }
        b
    })
}

/// Progress of a flash: a bar on a terminal, else a line per tenth (for logs and scripts).
pub fn flash_progress(total: u64) -> impl Fn(Progress) {
    let bar = bar(
        total,
        "{msg:9} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    );
    let last = std::sync::atomic::AtomicU64::new(u64::MAX);
    move |p: Progress| {
        let what = if p.writing { "writing" } else { "verifying" };
        match &bar {
            Some(b) => {
                b.set_message(what);
                b.set_position(p.done);
                if !p.writing && p.done >= p.total {
                    b.finish_and_clear();
                }
            }
            None => {
                let decile = (p.done * 10 / p.total.max(1)) + if p.writing { 0 } else { 100 };
                if last.swap(decile, std::sync::atomic::Ordering::Relaxed) != decile {
                    eprintln!(
                        "flash: {what} {}% ({} of {})",
                        p.done * 100 / p.total.max(1),
                        ipxe_ca::flash::human(p.done),
                        ipxe_ca::flash::human(p.total)
                    );
                }
            }
        }
    }
}

/// Progress of a build: a bar on a terminal, a line per board either way.
pub struct BuildProgress(Option<indicatif::ProgressBar>);

impl BuildProgress {
    pub fn new(boards: usize) -> Self {
        BuildProgress(bar(
            boards as u64,
            "{elapsed_precise} [{bar:30}] {pos}/{len} boards {msg}",
        ))
    }

    pub fn done(&self, r: &ipxe_ca::ipxe_build::BoardResult) {
        let line = match r {
            Ok(m) => {
                let files: Vec<&str> = m.targets.iter().map(|t| t.file.as_str()).collect();
                format!(
                    "built {} in {:.1} s: {}",
                    m.board,
                    m.duration_s,
                    files.join(", ")
                )
            }
            Err((b, e)) => format!("FAILED {b}: {e}"),
        };
        match &self.0 {
            Some(bar) => {
                bar.inc(1);
                bar.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// What `renew` did, and what the operator does next.
pub fn renewed(views: &[BoardView]) {
    for v in views {
        let old = v.previous.join(", ");
        println!("renewed {} (new serial {}; {old})", v.name, v.serial);
    }
    println!("next: rebuild and flash their images (ipxe-ca build --stale), then `ipxe-ca revoke --previous BOARD`");
}

/// `list --expiring`.
pub fn expiring(soon: &[ipxe_ca::lab::Expiry]) {
    for e in soon {
        println!("{:>5} days  {:<50} {}", e.days_left, e.what, e.expires);
    }
}

/// `sign-files --check`.
pub fn signatures(report: &[ipxe_ca::codesign::FileStatus], json_out: bool) -> Result<()> {
    if json_out {
        return json(report);
    }
    for f in report {
        let sb = match f.secure_boot {
            Some(true) => " (Secure Boot: signed)",
            Some(false) => " (Secure Boot: not signed by the farm's key: refused by the firmware)",
            None => "",
        };
        println!(
            "{:<8} {}{sb}",
            format!("{:?}", f.status).to_lowercase(),
            f.path
        );
    }
    Ok(())
}

/// A state dir from before signed boot files got its signer.
pub fn created_codesign(s: &ipxe_ca::store::state::StateDir) {
    eprintln!(
        "created the code-signing certificate {} (this state dir predates signed boot files)",
        s.codesign_cert().display()
    );
}

/// What `secure-boot init` made, and how it reaches a board's firmware.
pub fn enrollment(e: &ipxe_ca::secure_boot::Enrollment) -> Result<()> {
    println!("Secure Boot db key: {}", e.db);
    println!("to enroll, in {}:", e.dir.display());
    for f in &e.files {
        println!("  {}", f.display());
    }
    println!(
        "firmware setup menu: enroll db.cer, KEK.cer, then PK.cer (PK last ends setup mode);\n\
         from Linux, firmware in setup mode: efi-updatevar -f db.auth db, -f KEK.auth KEK, -f PK.auth PK\n\
         then build the boards' images again and run `ipxe-ca sign-files`"
    );
    Ok(())
}
