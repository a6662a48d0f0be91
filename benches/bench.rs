//! ipxe-ca against the prototype stack (openssl CLI, nginx + gunicorn + Flask), side by side in
//! one run on this machine. `cargo bench --bench bench` for the full run (minutes),
//! `cargo bench --bench bench -- --smoke` for a seconds-long run that only proves it works.
//! Sections: `--only enroll,serve,fullboot,files,build,registry,farmday`; `--only ab` with
//! `IPXE_CA_AB_BIN=OTHER-BINARY` compares two builds of `serve` in paired rounds (either side may
//! be `tls-floor` or `tls-floor-threads`, the least a rustls server does; `IPXE_CA_AB_A` sets
//! side A, this build by default); `--only profile` records `serve` under load with `perf`
//! (linux-perf) and prints where its CPU goes; `--only count` counts what `serve` and the TLS
//! floor execute per boot (instructions, cycles, context switches) with `perf stat`.
//! Results: stdout and target/bench/results.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "bench/ab.rs"]
mod ab;
#[path = "bench/build.rs"]
mod build;
#[path = "bench/client.rs"]
mod client;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "bench/enroll.rs"]
mod enroll;
#[path = "bench/farmday.rs"]
mod farmday;
#[path = "bench/files.rs"]
mod files;
#[path = "bench/floor.rs"]
mod floor;
#[path = "bench/fullboot.rs"]
mod fullboot;
#[path = "bench/measure.rs"]
mod measure;
#[path = "bench/profile.rs"]
mod profile;
#[path = "bench/prototype.rs"]
mod prototype;
#[path = "bench/registry.rs"]
mod registry;
#[path = "bench/serve.rs"]
mod serve;
use ab::*;
use build::*;
use client::*;
use common::{bin, free_port, s, Proc};
use enroll::*;
use files::*;
use floor::*;
use fullboot::*;
use measure::*;
use profile::*;
use prototype::*;
use registry::*;
use serve::*;

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// Wait until something listens on `port`; a server that never does fails the run.
fn wait_port(port: u16) -> R<()> {
    Ok(common::wait_port(port, Duration::from_secs(10))?)
}

fn run(cmd: &mut Command) -> R<String> {
    let o = cmd.stdin(Stdio::null()).output()?;
    if !o.status.success() {
        return Err(format!("{:?} failed: {}", cmd, String::from_utf8_lossy(&o.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spawn(cmd: &mut Command) -> R<Proc> {
    Ok(Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

struct Ctx {
    smoke: bool,
    dir: PathBuf,
    report: String,
}

impl Ctx {
    fn line(&mut self, l: &str) {
        println!("{l}");
        self.report.push_str(l);
        self.report.push('\n');
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let (Some("--tcp-floor-server"), Some(port)) = (
        args.get(1).map(String::as_str),
        args.get(2).and_then(|p| p.parse().ok()),
    ) {
        let workers = args.get(3).and_then(|w| w.parse().ok());
        if let Err(e) = tcp_floor_server(port, workers) {
            eprintln!("tcp floor server: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let (Some("--tls-floor-server"), Some(port), Some(state)) = (
        args.get(1).map(String::as_str),
        args.get(2).and_then(|p| p.parse().ok()),
        args.get(3),
    ) {
        if let Err(e) = tls_floor_server(port, Path::new(state), args.get(4).map(String::as_str)) {
            eprintln!("tls floor server: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary without it:
    // then a smoke run keeps the benchmarks from rotting (skipped when a test filter excludes it).
    let under_test = !args.iter().any(|a| a == "--bench");
    if under_test {
        let filters: Vec<&String> = args
            .iter()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect();
        if !filters.is_empty() && !filters.iter().any(|f| "bench".contains(f.as_str())) {
            return;
        }
    }
    let smoke = under_test || args.iter().any(|a| a == "--smoke");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect());
    let want = |s: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == s));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let dir = root.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let mut cx = Ctx {
        smoke,
        dir,
        report: String::new(),
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let head = format!(
        "# ipxe-ca benchmarks ({}; {cores} cores; {})",
        if smoke { "smoke run" } else { "full run" },
        time::OffsetDateTime::now_utc().date()
    );
    cx.line(&head);
    let mut failed = false;
    type Section = fn(&mut Ctx) -> R<()>;
    let sections: [(&str, Section); 7] = [
        ("enroll", bench_enroll),
        ("serve", bench_serve),
        ("fullboot", bench_fullboot),
        ("files", bench_files),
        ("build", bench_build),
        ("registry", bench_registry),
        ("farmday", farmday::bench_farmday),
    ];
    // A/B needs a second binary, the profile and the counts perf: only when asked for by name.
    let by_name = [
        ("ab", bench_ab as Section),
        ("profile", bench_profile),
        ("count", bench_count),
    ]
    .into_iter()
    .filter(|(n, _)| only.as_ref().is_some_and(|o| o.iter().any(|x| x == n)));
    for (name, f) in sections.into_iter().chain(by_name) {
        if want(name) {
            if let Err(e) = f(&mut cx) {
                cx.line(&format!("\n{name}: FAILED: {e}"));
                failed = true;
            }
        }
    }
    let mut out = String::new();
    let _ = write!(out, "{}", cx.report);
    let _ = std::fs::write(root.join("results.md"), out);
    if failed {
        std::process::exit(1);
    }
    if under_test {
        println!(
            "bench smoke run: every selected section ran (numbers from a smoke run mean nothing)"
        );
    }
}
