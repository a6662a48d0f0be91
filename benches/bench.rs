//! ipxe-ca against the prototype stack (openssl CLI, nginx + gunicorn + Flask), side by side in
//! one run on this machine. `cargo bench --bench bench` for the full run (minutes),
//! `cargo bench --bench bench -- --smoke` for a seconds-long run that only proves it works.
//! Sections: `--only enroll,serve,fullboot,files,build,registry,farmday`; `--only ab` with
//! `IPXE_CA_AB_BIN=OTHER-BINARY` compares two builds of `serve` in paired rounds (either side may
//! be `tls-floor` or `tls-floor-threads`, the least a rustls server does; `IPXE_CA_AB_A` sets
//! side A, this build by default); `--only profile` records `serve` under load with `perf`
//! (linux-perf) and prints where its CPU goes.
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

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "bench/farmday.rs"]
mod farmday;
use common::{bin, free_port, s, Proc};

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

/// `ipxe-ca serve` on free loopback ports, ready: (process, https port, http port).
fn start_serve(state: &Path) -> R<(Proc, u16, u16)> {
    start_serve_with(&bin(), state, &[])
}

/// The same with another build of `ipxe-ca` (or a wrapper that execs one).
fn start_serve_with(program: &Path, state: &Path, extra: &[&str]) -> R<(Proc, u16, u16)> {
    let (https, http) = (free_port(), free_port());
    let srv = spawn(
        Command::new(program)
            .args([
                "--dir",
                s(state),
                "serve",
                "--https",
                &format!("127.0.0.1:{https}"),
                "--http",
                &format!("127.0.0.1:{http}"),
                // The load generator is every board at once, all from 127.0.0.1.
                "--max-per-ip",
                "100000",
            ])
            .args(extra)
            // Extra `serve` arguments for every section, to try a setting: e.g.
            // IPXE_CA_SERVE_ARGS="--tls-sessions 1024".
            .args(
                std::env::var("IPXE_CA_SERVE_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            ),
    )?;
    wait_port(https)?;
    wait_port(http)?;
    Ok((srv, https, http))
}

fn spawn(cmd: &mut Command) -> R<Proc> {
    Ok(Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

/// What a load cost a server, per good boot.
struct Cost {
    /// CPU ms (user + system).
    cpu_ms: f64,
    /// Of it, kernel ms.
    sys_ms: f64,
    /// Peak RSS (kB) when the load ended.
    rss: u64,
}

/// Run `load`, reading the server's `usage` (as [`usage`] gives it) before and after.
fn costed(usage: impl Fn() -> (f64, f64, u64), load: impl FnOnce() -> Load) -> (Load, Cost) {
    let (c0, k0, _) = usage();
    let l = load();
    let (c1, k1, rss) = usage();
    let ok = l.ok.max(1) as f64;
    let cost = Cost {
        cpu_ms: (c1 - c0) * 1e3 / ok,
        sys_ms: (k1 - k0) * 1e3 / ok,
        rss,
    };
    (l, cost)
}

/// CPU seconds (user+system) of a process and all its descendants, of which system (kernel),
/// and their peak RSS (kB).
/// `root` and every process below it.
fn tree(root: u32) -> Vec<u32> {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let p = pids[i];
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let after = stat.rsplit(')').next().unwrap_or("");
                let ppid: u32 = after
                    .split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                if ppid == p && !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        i += 1;
    }
    pids
}

/// Every thread of `root`'s processes under SCHED_BATCH, as the systemd unit runs `serve`.
fn sched_batch(root: u32) -> R<()> {
    for pid in tree(root) {
        let out = Command::new("chrt")
            .args(["--batch", "--all-tasks", "--pid", "0", &pid.to_string()])
            .output()?;
        if !out.status.success() {
            return Err(format!("chrt: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
    }
    Ok(())
}

fn usage(root: u32) -> (f64, f64, u64) {
    let pids = tree(root);
    let mut cpu = 0.0;
    let mut sys = 0.0;
    let mut rss = 0;
    for pid in pids {
        let (c, k) = stat_cpu(&format!("/proc/{pid}/stat"));
        cpu += c;
        sys += k;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        rss += status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    (cpu, sys, rss)
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

/// A lab with a CA for 127.0.0.1 and `n` boards whose certificates share one key (signed from
/// one CSR: certificates and fingerprints differ, key generation is skipped).
fn lab_with_boards(dir: &Path, n: usize) -> R<(PathBuf, PathBuf, Vec<PathBuf>)> {
    let state = dir.join("state");
    run(Command::new(bin()).args(["--dir", s(&state), "init", "--san", "IP:127.0.0.1"]))?;
    let key = dir.join("client.key");
    let csr = dir.join("client.csr");
    run(Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        s(&key),
        "-subj",
        "/CN=bench",
        "-out",
        s(&csr),
    ]))?;
    let csr_der = std::fs::read(&csr)?;
    let lab = ipxe_ca::Lab::open(&state);
    let mut certs = Vec::new();
    for i in 0..n {
        let name: ipxe_ca::types::BoardName = format!("b{i:05}").parse()?;
        let opts = ipxe_ca::lab::BoardOptions {
            secrets: vec!["s3=bench-secret".parse()?],
            ..Default::default()
        };
        lab.sign(&name, &csr_der, &opts)?;
        certs.push(lab.state().board_cert(&name));
    }
    Ok((state, key, certs))
}

// ---------------------------------------------------------------- enroll

fn bench_enroll(cx: &mut Ctx) -> R<()> {
    let n = if cx.smoke { 3 } else { 20 };
    let d = cx.dir.join("enroll");
    let state = d.join("state");
    run(Command::new(bin()).args(["--dir", s(&state), "init", "--san", "IP:127.0.0.1"]))?;
    let mut ours = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        run(Command::new(bin()).args(["--dir", s(&state), "enroll", &format!("e{i}")]))?;
        ours.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut theirs = Vec::new();
    let ca = state.join("ca/ca.crt");
    let cakey = state.join("keys/ca.key");
    for i in 0..n {
        let t = Instant::now();
        let (k, c, crt) = (
            d.join(format!("o{i}.key")),
            d.join(format!("o{i}.csr")),
            d.join(format!("o{i}.crt")),
        );
        run(Command::new("openssl").args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            s(&k),
            "-subj",
            &format!("/CN=o{i}"),
            "-out",
            s(&c),
        ]))?;
        run(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            s(&c),
            "-CA",
            s(&ca),
            "-CAkey",
            s(&cakey),
            "-days",
            "1095",
            "-set_serial",
            &format!("{}", 1000 + i),
            "-out",
            s(&crt),
        ]))?;
        theirs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let batch = if cx.smoke { 4 } else { 100 };
    let names: Vec<String> = (0..batch).map(|i| format!("batch{i}")).collect();
    let t = Instant::now();
    let mut args = vec![
        "--dir".to_string(),
        s(&state).to_string(),
        "enroll".to_string(),
    ];
    args.extend(names);
    run(Command::new(bin()).args(&args))?;
    let batch_ms = t.elapsed().as_secs_f64() * 1e3 / batch as f64;
    let (a, b) = (median(&mut ours), median(&mut theirs));
    cx.line("\n## Enroll (RSA-2048 key + certificate, per board, median)\n");
    cx.line("| | ms/board | ratio |");
    cx.line("|---|---|---|");
    cx.line(&format!(
        "| openssl CLI (req -newkey + x509 -req) | {b:.0} | 1.0× |"
    ));
    cx.line(&format!(
        "| ipxe-ca enroll (one process per board) | {a:.0} | {:.1}× faster |",
        b / a
    ));
    cx.line(&format!("| ipxe-ca enroll, {batch} boards in one call (both cores) | {batch_ms:.0} | {:.1}× faster |", b / batch_ms));
    Ok(())
}

// ---------------------------------------------------------------- serve

struct Load {
    /// CPU ms per good boot the load generator itself spent (it shares the cores).
    client_cpu_ms: f64,
    boots_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
    ok: usize,
}

/// What a booting iPXE does: new TCP + TLS 1.2 with a board certificate (CertificateVerify in
/// RSA PKCS#1 v1.5 over SHA-256), no resumption, `GET /boot.ipxe`, expect 200 and `#!ipxe`. `ipxe2`: offers what iPXE 2.0 offers
/// (ECDHE-ECDSA first, then ECDHE-RSA; X25519 and P-256); otherwise only ECDHE-RSA over
/// X25519, like iPXE before 2.0.
fn client_configs(
    ca: &Path,
    key: &Path,
    certs: &[PathBuf],
    ipxe2: bool,
) -> R<Vec<Arc<rustls::ClientConfig>>> {
    let offer = Offer::new(ca, ipxe2)?;
    let key = offer.key(key)?;
    certs.iter().map(|c| offer.board(c, key.clone())).collect()
}

/// What a booting iPXE offers and trusts.
struct Offer {
    provider: Arc<rustls::crypto::CryptoProvider>,
    roots: rustls::RootCertStore,
}

impl Offer {
    fn new(ca: &Path, ipxe2: bool) -> R<Offer> {
        use rustls::crypto::aws_lc_rs as p;
        let provider = Arc::new(if ipxe2 {
            rustls::crypto::CryptoProvider {
                cipher_suites: vec![
                    p::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                    p::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                ],
                kx_groups: vec![p::kx_group::X25519, p::kx_group::SECP256R1],
                ..p::default_provider()
            }
        } else {
            rustls::crypto::CryptoProvider {
                cipher_suites: vec![p::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
                kx_groups: vec![p::kx_group::X25519],
                ..p::default_provider()
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        Ok(Offer { provider, roots })
    }

    /// A board key, used as iPXE uses it.
    fn key(&self, key: &Path) -> R<Arc<dyn rustls::sign::SigningKey>> {
        let key = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::from_pem_file(key)?)?;
        Ok(Arc::new(LikeIpxe(key)))
    }

    /// One board: its certificate with `key`, TLS 1.2, no resumption.
    fn board(
        &self,
        cert: &Path,
        key: Arc<dyn rustls::sign::SigningKey>,
    ) -> R<Arc<rustls::ClientConfig>> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
        let board = BoardCert(Arc::new(rustls::sign::CertifiedKey::new(chain, key)));
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(Arc::new(board));
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }
}

/// A board's key as iPXE uses it: its CertificateVerify is RSA PKCS#1 v1.5 over the handshake
/// digest (SHA-256 with the suites offered here), never PSS, which rustls would pick.
#[derive(Debug)]
struct LikeIpxe(Arc<dyn rustls::sign::SigningKey>);

impl rustls::sign::SigningKey for LikeIpxe {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        let only = rustls::SignatureScheme::RSA_PKCS1_SHA256;
        if offered.contains(&only) {
            self.0.choose_scheme(&[only])
        } else {
            None
        }
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.0.algorithm()
    }
}

/// One board's certificate and key, offered whatever the server asks for.
#[derive(Debug)]
struct BoardCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for BoardCert {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

async fn one_boot(cfg: Arc<rustls::ClientConfig>, port: u16) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: iPXE/bench\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(2048);
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.1 200") && text.contains("#!ipxe") {
        Ok(())
    } else {
        Err(text.lines().next().unwrap_or("empty response").to_string())
    }
}

/// Read and drop `n` bytes.
async fn skip<S: tokio::io::AsyncRead + Unpin>(
    r: &mut S,
    sink: &mut [u8],
    n: u64,
) -> Result<(), String> {
    let mut left = n;
    while left > 0 {
        let want = left.min(sink.len() as u64) as usize;
        let got = r.read(&mut sink[..want]).await.map_err(|e| e.to_string())?;
        if got == 0 {
            return Err("connection closed in a body".to_string());
        }
        left -= got as u64;
    }
    Ok(())
}

/// One response on a kept-alive connection: the status line, and the body's length (read and
/// dropped), by Content-Length or chunked.
async fn response<S: tokio::io::AsyncBufRead + Unpin>(r: &mut S) -> Result<(String, u64), String> {
    use tokio::io::AsyncBufReadExt;
    let e = |e: std::io::Error| e.to_string();
    let mut status = String::new();
    r.read_line(&mut status).await.map_err(e)?;
    let (mut len, mut chunked) = (None, false);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.map_err(e)? == 0 {
            return Err("connection closed in the headers".into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse::<u64>().ok();
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut sink = vec![0u8; 64 << 10];
    let mut total = 0;
    if chunked {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.map_err(e)?;
            let n = u64::from_str_radix(line.trim(), 16).map_err(|x| x.to_string())?;
            skip(r, &mut sink, n + 2).await?;
            total += n;
            if n == 0 {
                break;
            }
        }
    } else {
        let n = len.ok_or("no Content-Length")?;
        skip(r, &mut sink, n).await?;
        total = n;
    }
    Ok((status.trim_end().to_string(), total))
}

/// A whole boot as a real iPXE makes it: one TLS connection kept alive for the script and
/// then each file (kernel, initrd), each checked for status and size.
async fn full_boot(
    cfg: Arc<rustls::ClientConfig>,
    port: u16,
    files: &[(String, u64)],
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio::io::BufReader::with_capacity(64 << 10, tls);
    let mut paths = vec![("/boot.ipxe".to_string(), None)];
    paths.extend(files.iter().map(|(p, n)| (p.clone(), Some(*n))));
    for (path, want) in paths {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: iPXE/bench\r\n\r\n");
        let w = tls.get_mut();
        w.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        w.flush().await.map_err(|e| e.to_string())?;
        let (status, got) = response(&mut tls).await?;
        if !status.starts_with("HTTP/1.1 200") || want.is_some_and(|w| w != got) {
            return Err(format!("{path}: {status}, {got} bytes"));
        }
    }
    Ok(())
}

fn load(cfgs: &[Arc<rustls::ClientConfig>], port: u16, conc: usize, dur: Duration) -> Load {
    load_boots(cfgs, port, conc, dur, None)
}

/// `files`: a full boot (script, then these files on the same kept-alive connection, as a real
/// iPXE fetches them); None: the script only.
fn load_boots(
    cfgs: &[Arc<rustls::ClientConfig>],
    port: u16,
    conc: usize,
    dur: Duration,
    files: Option<Arc<Vec<(String, u64)>>>,
) -> Load {
    let cfgs = cfgs.to_vec();
    drive(conc, dur, move |i| {
        let cfg = cfgs[i % cfgs.len()].clone();
        let files = files.clone();
        async move {
            match &files {
                None => one_boot(cfg, port).await,
                Some(f) => full_boot(cfg, port, f).await,
            }
        }
    })
}

/// `conc` clients, each booting again as soon as its boot ends, until `dur` is over; boot `i`
/// of client `w` is `boot(w + i × conc)`, so consecutive boots take consecutive boards.
fn drive<F, Fut>(conc: usize, dur: Duration, boot: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            return Load {
                client_cpu_ms: 0.0,
                boots_per_s: 0.0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                errors: 1,
                ok: 0,
            }
        }
    };
    let boot = Arc::new(boot);
    let cpu0 = self_cpu();
    let mut l = rt.block_on(async move {
        let start = Instant::now();
        let deadline = start + dur;
        let mut tasks = Vec::new();
        for w in 0..conc {
            let boot = boot.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                let mut i = w;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = boot(i).await;
                    i += conc;
                    match r {
                        Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            if let Ok((l, e)) = t.await {
                lat.extend(l);
                errors += e;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        Load {
            client_cpu_ms: 0.0,
            boots_per_s: lat.len() as f64 / secs,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            errors,
            ok: lat.len(),
        }
    });
    l.client_cpu_ms = (self_cpu() - cpu0) * 1e3 / l.ok.max(1) as f64;
    l
}

/// CPU seconds (user+system) of this process alone, all its threads.
fn self_cpu() -> f64 {
    stat_cpu("/proc/self/stat").0
}

/// CPU seconds (user+system, and system alone) from a `/proc/…/stat` file; zero if it is gone.
fn stat_cpu(path: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command name: field 3 is index 0; utime is field 14, stime 15 (in ticks).
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (t(11) + t(12), t(12))
}

const FLASK_APP: &str = r##"
import json, os
from flask import Flask, request, Response
app = Flask(__name__)
BOARDS = json.load(open(os.environ["BOARDS_JSON"]))
@app.route("/boot.ipxe")
def boot():
    fp = request.headers.get("X-SSL-Client-Fingerprint", "")
    b = BOARDS.get(fp)
    if b is None:
        return Response("#!ipxe\necho not registered\n", status=403, mimetype="text/plain")
    script = "#!ipxe\necho board %s\nkernel http://127.0.0.1/files/vmlinuz s3=%s\nboot\n" % (b["name"], b["s3"])
    return Response(script, mimetype="text/plain")
"##;

/// Debian's gunicorn with Debian's Flask (packages gunicorn, python3-flask).
fn gunicorn() -> R<&'static str> {
    let g = "/usr/bin/gunicorn";
    if !Path::new(g).exists() {
        return Err("gunicorn missing: apt-get install gunicorn python3-flask".into());
    }
    Ok(g)
}

fn nginx_bin() -> R<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| "nginx missing: apt-get install nginx-light".into())
}

fn nginx_conf(dir: &Path, body: &str) -> R<PathBuf> {
    nginx_conf_with(dir, "auto", body)
}

/// `workers`: nginx's worker_processes.
fn nginx_conf_with(dir: &Path, workers: &str, body: &str) -> R<PathBuf> {
    let d = s(dir);
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "user root;\nworker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{body}\n}}\n"
        ),
    )?;
    Ok(conf)
}

/// The prototype stack: nginx with the server block `block(port, gunicorn_port)` in front of
/// gunicorn (2 workers) running the Flask app, which maps the SHA-1 fingerprints of `certs` to
/// boards `b00000`, `b00001`, …
struct Prototype {
    nginx: Proc,
    gunicorn: Proc,
    port: u16,
}

impl Prototype {
    fn start(d: &Path, certs: &[PathBuf], block: impl FnOnce(u16, u16) -> String) -> R<Prototype> {
        Self::start_with(d, certs, None, block)
    }

    /// `workers`: nginx's worker processes and gunicorn's (default: nginx one per core,
    /// gunicorn 2).
    fn start_with(
        d: &Path,
        certs: &[PathBuf],
        workers: Option<usize>,
        block: impl FnOnce(u16, u16) -> String,
    ) -> R<Prototype> {
        let mut map = serde_json::Map::new();
        for (i, c) in certs.iter().enumerate() {
            let der = pem::parse(std::fs::read(c)?)?.into_contents();
            let fp = hex::encode(
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der)
                    .as_ref(),
            );
            map.insert(
                fp,
                serde_json::json!({"name": format!("b{i:05}"), "s3": "bench-secret"}),
            );
        }
        let boards = d.join("boards.json");
        std::fs::write(&boards, serde_json::to_vec(&map)?)?;
        std::fs::write(d.join("app.py"), FLASK_APP)?;
        let gport = free_port();
        let gunicorn = spawn(
            Command::new(gunicorn()?)
                .args(["-w", &workers.unwrap_or(2).to_string()])
                .args(["-b", &format!("127.0.0.1:{gport}"), "app:app"])
                .current_dir(d)
                .env("BOARDS_JSON", &boards),
        )?;
        let port = free_port();
        let ndir = d.join("nginx");
        std::fs::create_dir_all(&ndir)?;
        let nworkers = workers.map_or("auto".to_string(), |w| w.to_string());
        let conf = nginx_conf_with(&ndir, &nworkers, &block(port, gport))?;
        let nginx = spawn(Command::new(nginx_bin()?).args(["-c", s(&conf)]))?;
        wait_port(gport)?;
        wait_port(port)?;
        Ok(Prototype {
            nginx,
            gunicorn,
            port,
        })
    }

    /// [`usage`] of nginx and gunicorn together, workers included.
    fn usage(&self) -> (f64, f64, u64) {
        let (a, ka, ra) = usage(self.nginx.0.id());
        let (b, kb, rb) = usage(self.gunicorn.0.id());
        (a + b, ka + kb, ra + rb)
    }
}

fn bench_serve(cx: &mut Ctx) -> R<()> {
    let n_boards = if cx.smoke { 20 } else { 1000 };
    let dur = if cx.smoke {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(5)
    };
    let levels: &[usize] = if cx.smoke { &[1, 8] } else { &[1, 8, 64, 256] };
    let d = cx.dir.join("serve");
    std::fs::create_dir_all(&d)?;
    let (state, key, certs) = lab_with_boards(&d, n_boards)?;
    let cfgs = client_configs(&state.join("ca/ca.crt"), &key, &certs, false)?;
    let cfgs2 = client_configs(&state.join("ca/ca.crt"), &key, &certs, true)?;
    let mut rows: BTreeMap<(String, usize), (Load, f64, u64)> = BTreeMap::new();
    let smoke = cx.smoke;
    // A smoke run proves the load works: any failed boot fails it.
    let checked = |what: &str, l: Load| -> R<Load> {
        if smoke && (l.errors > 0 || l.ok == 0) {
            return Err(format!("{what}: {} failed boots, {} good", l.errors, l.ok).into());
        }
        Ok(l)
    };

    // ipxe-ca serve, with clients like iPXE before 2.0 (RSA) and like iPXE 2.0 (ECDSA).
    let (srv, https, _) = start_serve(&state)?;
    let mut kernel = Vec::new();
    for (name, cf) in [
        ("ipxe-ca serve, iPXE < 2.0 client (ECDHE-RSA)", &cfgs),
        ("ipxe-ca serve, iPXE 2.0 client (ECDHE-ECDSA)", &cfgs2),
    ] {
        for &c in levels {
            let (l, cost) = costed(|| usage(srv.0.id()), || load(cf, https, c, dur));
            let l = checked(name, l)?;
            kernel.push((name, c, cost.sys_ms, cost.cpu_ms));
            rows.insert((name.into(), c), (l, cost.cpu_ms, cost.rss));
        }
    }
    drop(srv);

    // The prototype: nginx (mTLS) -> gunicorn (2 workers) -> Flask, 1000 boards by fingerprint.
    let proto_block = |port: u16, gport: u16| {
        format!(
            "server {{\n listen 127.0.0.1:{port} ssl;\n ssl_certificate {sc};\n ssl_certificate_key {sk};\n ssl_client_certificate {ca};\n ssl_verify_client on;\n ssl_protocols TLSv1.2;\n ssl_session_cache off;\n ssl_session_tickets off;\n location / {{ proxy_pass http://127.0.0.1:{gport}; proxy_set_header X-SSL-Client-Fingerprint $ssl_client_fingerprint; }}\n}}",
            sc = s(&state.join("server/server.crt")),
            sk = s(&state.join("server/server.key")),
            ca = s(&state.join("ca/ca.crt")),
        )
    };
    let proto = Prototype::start(&d, &certs, proto_block)?;
    for &c in levels {
        let (l, cost) = costed(|| proto.usage(), || load(&cfgs, proto.port, c, dur));
        let l = checked("prototype", l)?;
        rows.insert(
            ("prototype (nginx + gunicorn + Flask)".into(), c),
            (l, cost.cpu_ms, cost.rss),
        );
    }
    drop(proto);

    // Like for like with one event loop each, at the targets' concurrency: `serve --workers 1`,
    // nginx with one worker process and gunicorn with one worker, the TCP floor on one thread.
    // On cores shared with the load generator, one loop wakes less often per boot.
    let c_one = if smoke { 8 } else { 64 };
    // `serve` (with `serve_args`, under SCHED_BATCH if `batch`) with both clients, then the
    // prototype (with `workers` of each kind), each at c_one: one row each.
    let like_for_like = |label: &str,
                         serve_args: &[&str],
                         batch: bool,
                         workers: Option<usize>,
                         proto_name: &str|
     -> R<Vec<Row>> {
        let mut rows = Vec::new();
        let (srv, https, _) = start_serve_with(&bin(), &state, serve_args)?;
        if batch {
            sched_batch(srv.0.id())?;
        }
        for (client, cf) in [
            ("iPXE < 2.0 client (ECDHE-RSA)", &cfgs),
            ("iPXE 2.0 client (ECDHE-ECDSA)", &cfgs2),
        ] {
            let name = format!("ipxe-ca serve{label}, {client}");
            let (l, cost) = costed(|| usage(srv.0.id()), || load(cf, https, c_one, dur));
            rows.push((name.clone(), checked(&name, l)?, cost.cpu_ms, cost.rss));
        }
        drop(srv);
        let dir = d.join(proto_name.replace([' ', ','], "-"));
        std::fs::create_dir_all(&dir)?;
        let proto = Prototype::start_with(&dir, &certs, workers, proto_block)?;
        if batch {
            sched_batch(proto.nginx.0.id())?;
            sched_batch(proto.gunicorn.0.id())?;
        }
        let (l, cost) = costed(|| proto.usage(), || load(&cfgs, proto.port, c_one, dur));
        rows.push((
            proto_name.to_string(),
            checked(proto_name, l)?,
            cost.cpu_ms,
            cost.rss,
        ));
        Ok(rows)
    };
    // One event loop each: `serve --workers 1`, nginx with one worker process and gunicorn
    // with one worker, the TCP floor on one thread. On cores shared with the load generator,
    // one loop wakes less often per boot.
    let one = like_for_like(
        " --workers 1",
        &["--workers", "1"],
        false,
        Some(1),
        "prototype, one nginx and one gunicorn worker",
    )?;
    let tcp_one = tcp_floor_ms(c_one, dur, Some(1))?;
    // The least a rustls server spends, in the same run, as an event loop (tokio, as `serve`)
    // and as a blocking thread per core: serve's CPU less this is all that ipxe-ca's own code
    // (HTTP, registry, templates, log) could win back.
    let mut tls_floor = Vec::new();
    for (shape, how) in [
        ("on tokio", None),
        ("a blocking thread per core", Some("threads")),
    ] {
        let (fl, port) = start_tls_floor(&state, how)?;
        for (client, cf) in [
            ("ipxe-ca serve, iPXE < 2.0 client (ECDHE-RSA)", &cfgs),
            ("ipxe-ca serve, iPXE 2.0 client (ECDHE-ECDSA)", &cfgs2),
        ] {
            let (l, cost) = costed(|| usage(fl.0.id()), || load(cf, port, c_one, dur));
            tls_floor.push((shape, client, checked("tls floor", l)?, cost.cpu_ms));
        }
    }
    // As packaged: the systemd unit runs `serve` with CPUSchedulingPolicy=batch (a woken thread
    // does not preempt the running one); the prototype under the same policy, like for like.
    let batch = like_for_like(", SCHED_BATCH", &[], true, None, "prototype, SCHED_BATCH")?;

    let floor = crypto_floor_ms(
        &state.join("server/server.key"),
        if cx.smoke { 20 } else { 2000 },
    )?;
    let floor_ec = crypto_floor_ecdsa_ms(
        &state.join("server/server-ecdsa.key"),
        if cx.smoke { 20 } else { 2000 },
    )?;
    let (verify_each, verify_kept) = board_verify_ms(&key, if cx.smoke { 20 } else { 2000 })?;
    let mut tcp = BTreeMap::new();
    for &c in levels {
        tcp.insert(c, tcp_floor_ms(c, dur, None)?);
    }
    cx.line(&format!(
        "\n## Boots served ({n_boards} boards, new TLS 1.2 connection per boot, {:?} per level)\n",
        dur
    ));
    cx.line(&format!(
        "Cryptographic floor of one server handshake here (aws-lc, one core): RSA-2048 signature + X25519 agreement {floor:.2} ms; ECDSA P-256 signature + X25519 agreement {floor_ec:.2} ms (the client's RSA signature, verified by the server, comes on top in both). One RSA-2048 verification of a board's signature: {verify_each:.3} ms with the key parsed each time, {verify_kept:.3} ms with it parsed once. The RSA target's floor (an RSA signature, X25519, two verifications): {:.2} ms.\n",
        floor + 2.0 * verify_kept
    ));
    cx.line("| server | concurrency | boots/s | p50 ms | p99 ms | errors | server CPU ms/boot | peak RSS MB | load generator CPU ms/boot |");
    cx.line("|---|---|---|---|---|---|---|---|---|");
    for ((name, c), (l, cpu, rss)) in rows.iter().rev() {
        cx.line(&format!(
            "| {name} | {c} | {:.0} | {:.1} | {:.1} | {} | {:.2} | {:.1} | {:.2} |",
            l.boots_per_s,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            cpu,
            *rss as f64 / 1024.0,
            l.client_cpu_ms
        ));
    }
    cx.line("\nTCP floor: a server on tokio that exchanges a TLS 1.2 boot's flights in clear text (the same messages and sizes, no TLS, no HTTP), measured like the servers above. No server on this kernel spends less per boot, whatever its crypto.\n");
    cx.line("| concurrency | TCP floor CPU ms/boot | of it in the kernel |");
    cx.line("|---|---|---|");
    for (c, (cpu, sys)) in &tcp {
        cx.line(&format!("| {c} | {cpu:.3} | {sys:.3} |"));
    }
    // The load generator shares the cores: when both runs fill them, boots/s go as
    // 1 / (its CPU + the server's CPU) per boot. A server doing nothing but its crypto floor
    // would reach at most this many times the prototype's boots/s.
    let proto_name = "prototype (nginx + gunicorn + Flask)";
    for &c in levels {
        let Some((pl, pcpu, _)) = rows.get(&(proto_name.to_string(), c)) else {
            continue;
        };
        let tcp_c = tcp.get(&c).map_or(0.0, |t| t.0);
        for (name, f) in [
            (
                "ipxe-ca serve, iPXE < 2.0 client (ECDHE-RSA)",
                floor + 2.0 * verify_kept,
            ),
            (
                "ipxe-ca serve, iPXE 2.0 client (ECDHE-ECDSA)",
                floor_ec + 2.0 * verify_kept,
            ),
        ] {
            if let Some((l, cpu, _)) = rows.get(&(name.to_string(), c)) {
                cx.line(&format!(
                    "\n{name} at concurrency {c}: boots/s {:.2}× the prototype's; a server at the crypto floor ({f:.2} ms) with this load generator ({:.2} ms per boot) would reach at most {:.2}× (prototype: {pcpu:.2} + {:.2} ms per boot), and at the crypto + TCP floor ({:.2} ms) at most {:.2}×. Server CPU per boot {cpu:.2} ms: 1/{:.1} of the prototype's, {:.2}× the crypto floor, {:.2}× the crypto + TCP floor; a server at the crypto + TCP floor would spend 1/{:.1} of the prototype's.",
                    l.boots_per_s / pl.boots_per_s.max(1e-9),
                    l.client_cpu_ms,
                    (pcpu + pl.client_cpu_ms) / (f + l.client_cpu_ms),
                    pl.client_cpu_ms,
                    f + tcp_c,
                    (pcpu + pl.client_cpu_ms) / (f + tcp_c + l.client_cpu_ms),
                    pcpu / cpu.max(1e-9),
                    cpu / f.max(1e-9),
                    cpu / (f + tcp_c).max(1e-9),
                    pcpu / (f + tcp_c).max(1e-9),
                ));
            }
        }
    }
    cx.line(&format!(
        "\nTLS floor (concurrency {c_one}): `serve`'s rustls configuration (the same certificates, chosen per ClientHello, and client certificates verified against the CA) answering every request with a fixed script of the same size, and nothing else: no HTTP library, registry, template or log. What `serve` spends above it is all that ipxe-ca's own code could win back.\n"
    ));
    cx.line("| TLS floor | client | boots/s | CPU ms/boot | serve CPU ms/boot | serve / floor | floor against the prototype: CPU, boots/s |");
    cx.line("|---|---|---|---|---|---|---|");
    let proto_c = rows.get(&(proto_name.to_string(), c_one));
    let (p_cpu, p_rate) = proto_c.map_or((f64::NAN, f64::NAN), |p| (p.1, p.0.boots_per_s));
    for (shape, name, l, cpu) in &tls_floor {
        let serve_cpu = rows
            .get(&(name.to_string(), c_one))
            .map_or(f64::NAN, |r| r.1);
        cx.line(&format!(
            "| {shape} | {} | {:.0} | {cpu:.3} | {serve_cpu:.3} | {:.2} | 1/{:.1}, {:.2}× |",
            name.trim_start_matches("ipxe-ca serve, "),
            l.boots_per_s,
            serve_cpu / cpu.max(1e-9),
            p_cpu / cpu.max(1e-9),
            l.boots_per_s / p_rate.max(1e-9),
        ));
    }
    // The better of the two shapes, per client: the best a rustls server did in this run.
    let best = |client: &str| {
        tls_floor
            .iter()
            .filter(|f| f.1 == client)
            .fold((f64::INFINITY, 0.0f64), |(cpu, rate), f| {
                (cpu.min(f.3), rate.max(f.2.boots_per_s))
            })
    };
    let (rsa_cpu, rsa_rate) = best("ipxe-ca serve, iPXE < 2.0 client (ECDHE-RSA)");
    let (ec_cpu, ec_rate) = best("ipxe-ca serve, iPXE 2.0 client (ECDHE-ECDSA)");
    cx.line(&format!(
        "\nThe best TLS floor in this run, against the serving targets: iPXE 2.0 client 1/{:.1} of the prototype's CPU per boot (target 1/6), boots/s {:.2}× (target 3×); RSA client {:.2}× the crypto floor ({:.3} ms; target 1.25×), boots/s {:.2}× (target 2×).",
        p_cpu / ec_cpu.max(1e-9),
        ec_rate / p_rate.max(1e-9),
        rsa_cpu / (floor + 2.0 * verify_kept).max(1e-9),
        floor + 2.0 * verify_kept,
        rsa_rate / p_rate.max(1e-9),
    ));
    for (name, c, k, total) in kernel {
        cx.line(&format!(
            "\n{name} at concurrency {c}: {total:.2} ms CPU per boot, of which {k:.2} ms in the kernel (TCP, syscalls) and {:.2} ms in user space.",
            total - k
        ));
    }
    cx.line(&format!(
        "\n### One event loop each (concurrency {c_one})\n\n`serve --workers 1` against nginx with one worker process and gunicorn with one worker; TCP floor on one thread: {:.3} ms per boot.\n",
        tcp_one.0
    ));
    rows_table(cx, &one);
    if let [(_, rl, rsa, _), (_, el, ec, _), (_, pl, proto_cpu, _)] = &one[..] {
        let rsa_floor = floor + 2.0 * verify_kept;
        let ec_floor = floor_ec + 2.0 * verify_kept;
        cx.line(&format!(
            "\nOne loop each: iPXE 2.0 client {ec:.3} ms per boot, 1/{:.1} of the prototype's and 1/{:.1} of the RSA path's, {:.2}× its crypto + TCP floor, boots/s {:.2}× the prototype's; RSA client {rsa:.3} ms, {:.2}× the crypto floor ({rsa_floor:.3} ms), boots/s {:.2}×, p99 {:.2}× the prototype's.",
            proto_cpu / ec.max(1e-9),
            rsa / ec.max(1e-9),
            ec / (ec_floor + tcp_one.0).max(1e-9),
            el.boots_per_s / pl.boots_per_s.max(1e-9),
            rsa / rsa_floor.max(1e-9),
            rl.boots_per_s / pl.boots_per_s.max(1e-9),
            rl.p99_ms / pl.p99_ms.max(1e-9),
        ));
    }
    cx.line(&format!(
        "\n### As packaged: SCHED_BATCH (concurrency {c_one})\n\nThe systemd unit's `CPUSchedulingPolicy=batch`, set with `chrt` on every thread of `serve`, and of nginx and gunicorn for the prototype row.\n"
    ));
    rows_table(cx, &batch);
    let default_proto = rows.get(&(proto_name.to_string(), c_one));
    if let ([(_, rl, rsa, _), (_, el, ec, _), (_, pl, proto_cpu, _)], Some((dl, dcpu, _))) =
        (&batch[..], default_proto)
    {
        let rsa_floor = floor + 2.0 * verify_kept;
        cx.line(&format!(
            "\nUnder SCHED_BATCH, against the prototype under it too (and against the prototype as it runs by default): iPXE 2.0 client {ec:.3} ms per boot, 1/{:.1} (1/{:.1}) of the prototype's and 1/{:.1} of the RSA path's, boots/s {:.2}× ({:.2}×); RSA client {rsa:.3} ms, {:.2}× the crypto floor ({rsa_floor:.3} ms), boots/s {:.2}× ({:.2}×), p99 {:.2}× ({:.2}×).",
            proto_cpu / ec.max(1e-9),
            dcpu / ec.max(1e-9),
            rsa / ec.max(1e-9),
            el.boots_per_s / pl.boots_per_s.max(1e-9),
            el.boots_per_s / dl.boots_per_s.max(1e-9),
            rsa / rsa_floor.max(1e-9),
            rl.boots_per_s / pl.boots_per_s.max(1e-9),
            rl.boots_per_s / dl.boots_per_s.max(1e-9),
            rl.p99_ms / pl.p99_ms.max(1e-9),
            rl.p99_ms / dl.p99_ms.max(1e-9),
        ));
    }
    Ok(())
}

/// A server's row in a like-for-like section: name, load, server CPU ms per boot, peak RSS KiB.
type Row = (String, Load, f64, u64);

fn rows_table(cx: &mut Ctx, rows: &[Row]) {
    cx.line("| server | boots/s | p50 ms | p99 ms | errors | server CPU ms/boot | peak RSS MB | load generator CPU ms/boot |");
    cx.line("|---|---|---|---|---|---|---|---|");
    for (name, l, cpu, rss) in rows {
        cx.line(&format!(
            "| {name} | {:.0} | {:.1} | {:.1} | {} | {cpu:.2} | {:.1} | {:.2} |",
            l.boots_per_s,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            *rss as f64 / 1024.0,
            l.client_cpu_ms
        ));
    }
}

/// A kernel and an initrd of `size` bytes each in the state dir's files, as a full boot fetches
/// them: (URL path, length).
fn boot_files(state: &Path, size: usize) -> Arc<Vec<(String, u64)>> {
    let files = ["vmlinuz", "initrd.img"].map(|name| {
        common::write_random(&state.join("files").join(name), size);
        (format!("/files/{name}"), size as u64)
    });
    Arc::new(files.to_vec())
}

/// Full boots (script + kernel + initrd on one kept-alive TLS connection per boot, iPXE 2.0's
/// offer) against the prototype stack serving the same files: nginx with mutual TLS and
/// `ssl_session_cache`, the script from gunicorn + Flask.
fn bench_fullboot(cx: &mut Ctx) -> R<()> {
    // c=256: a farm powering on at once, where memory per download counts.
    let (n_boards, size, levels, dur) = if cx.smoke {
        (4, 256 << 10, vec![2], Duration::from_millis(500))
    } else {
        (200, 16 << 20, vec![64, 256], Duration::from_secs(10))
    };
    let d = cx.dir.join("fullboot");
    std::fs::create_dir_all(&d)?;
    let (state, key, certs) = lab_with_boards(&d, n_boards)?;
    let cfgs = client_configs(&state.join("ca/ca.crt"), &key, &certs, true)?;
    let files = boot_files(&state, size);
    let smoke = cx.smoke;
    let checked = |what: &str, l: Load| -> R<Load> {
        if l.errors > 0 && smoke || l.ok == 0 {
            return Err(format!("{what}: {} failed boots, {} good", l.errors, l.ok).into());
        }
        Ok(l)
    };
    let mut rows = Vec::new();
    // Each level on a fresh server, so that each peak RSS is its own.
    for &conc in &levels {
        let (srv, https, _) = start_serve(&state)?;
        let (l, cost) = costed(
            || usage(srv.0.id()),
            || load_boots(&cfgs, https, conc, dur, Some(files.clone())),
        );
        let l = checked("ipxe-ca full boot", l)?;
        rows.push(("ipxe-ca serve", conc, cost.cpu_ms, cost.rss, l));
        drop(srv);

        let proto = Prototype::start(&d, &certs, |port, gport| {
            format!(
                "server {{\n listen 127.0.0.1:{port} ssl;\n ssl_certificate {sc};\n ssl_certificate_key {sk};\n ssl_certificate {ec};\n ssl_certificate_key {ek};\n ssl_client_certificate {ca};\n ssl_verify_client on;\n ssl_protocols TLSv1.2;\n ssl_session_cache shared:SSL:10m;\n keepalive_requests 1000;\n location /files/ {{ alias {files}/; }}\n location / {{ proxy_pass http://127.0.0.1:{gport}; proxy_set_header X-SSL-Client-Fingerprint $ssl_client_fingerprint; }}\n}}",
                sc = s(&state.join("server/server.crt")),
                sk = s(&state.join("server/server.key")),
                ec = s(&state.join("server/server-ecdsa.crt")),
                ek = s(&state.join("server/server-ecdsa.key")),
                ca = s(&state.join("ca/ca.crt")),
                files = s(&state.join("files")),
            )
        })?;
        let (l, cost) = costed(
            || proto.usage(),
            || load_boots(&cfgs, proto.port, conc, dur, Some(files.clone())),
        );
        let l = checked("prototype full boot", l)?;
        rows.push((
            "prototype (nginx with ssl_session_cache + gunicorn + Flask)",
            conc,
            cost.cpu_ms,
            cost.rss,
            l,
        ));
        drop(proto);
    }
    cx.line(&format!(
        "\n## Full boots: script + 2 × {} KiB over one kept-alive TLS connection ({n_boards} boards, {dur:?} per level, iPXE 2.0's offer)\n",
        size >> 10
    ));
    cx.line("| server | concurrency | boots/s | p50 ms | p99 ms | errors | server CPU ms/boot | peak RSS MB |");
    cx.line("|---|---|---|---|---|---|---|---|");
    for (name, conc, cpu, rss, l) in rows {
        cx.line(&format!(
            "| {name} | {conc} | {:.1} | {:.0} | {:.0} | {} | {:.1} | {:.1} |",
            l.boots_per_s,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            cpu,
            rss as f64 / 1024.0
        ));
    }
    Ok(())
}

/// What the server's side of a handshake costs in cryptography alone: the RSA-2048
/// signature over the ECDHE parameters plus the X25519 agreement (verifications are cheap).
fn crypto_floor_ms(server_key: &Path, n: usize) -> R<f64> {
    use aws_lc_rs::{agreement, rand::SystemRandom, signature};
    let der = PrivateKeyDer::from_pem_file(server_key)?;
    let key = signature::RsaKeyPair::from_pkcs8(der.secret_der()).map_err(|e| format!("{e:?}"))?;
    let rng = SystemRandom::new();
    let mut sig = vec![0u8; key.public_modulus_len()];
    let peer = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .map_err(|e| format!("{e:?}"))?;
    let peer_pub = peer.compute_public_key().map_err(|e| format!("{e:?}"))?;
    let t = Instant::now();
    for i in 0..n {
        let msg = (i as u64).to_le_bytes();
        key.sign(&signature::RSA_PKCS1_SHA256, &rng, &msg, &mut sig)
            .map_err(|e| format!("{e:?}"))?;
        let mine = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
            .map_err(|e| format!("{e:?}"))?;
        let _ = mine.compute_public_key();
        let theirs = agreement::UnparsedPublicKey::new(&agreement::X25519, peer_pub.as_ref());
        agreement::agree_ephemeral(mine, theirs, "x25519", |k| Ok::<_, &str>(k.len()))
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / n as f64)
}

/// What the server's check of a board's CertificateVerify (RSA-PSS-SHA256, as rustls clients
/// sign; iPXE signs PKCS#1) costs: (key parsed for every check, as WebPKI does; key parsed
/// once and kept, as `serve` does).
fn board_verify_ms(board_key: &Path, n: usize) -> R<(f64, f64)> {
    use aws_lc_rs::{rand::SystemRandom, signature};
    let der = PrivateKeyDer::from_pem_file(board_key)?;
    let key = signature::RsaKeyPair::from_pkcs8(der.secret_der()).map_err(|e| format!("{e:?}"))?;
    let msg = b"the transcript of a handshake, or its hash";
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &signature::RSA_PSS_SHA256,
        &SystemRandom::new(),
        msg,
        &mut sig,
    )
    .map_err(|e| format!("{e:?}"))?;
    let public = signature::KeyPair::public_key(&key).as_ref().to_vec();
    let alg = &signature::RSA_PSS_2048_8192_SHA256;
    let t = Instant::now();
    for _ in 0..n {
        signature::UnparsedPublicKey::new(alg, &public)
            .verify(msg, &sig)
            .map_err(|e| format!("{e:?}"))?;
    }
    let each = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    let parsed = signature::ParsedPublicKey::new(alg, &public).map_err(|e| format!("{e:?}"))?;
    let t = Instant::now();
    for _ in 0..n {
        parsed.verify_sig(msg, &sig).map_err(|e| format!("{e:?}"))?;
    }
    Ok((each, t.elapsed().as_secs_f64() * 1e3 / n as f64))
}

/// The same with an ECDSA P-256 server key.
fn crypto_floor_ecdsa_ms(server_key: &Path, n: usize) -> R<f64> {
    use aws_lc_rs::{agreement, rand::SystemRandom, signature};
    let der = PrivateKeyDer::from_pem_file(server_key)?;
    let key = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_der(),
    )
    .map_err(|e| format!("{e:?}"))?;
    let rng = SystemRandom::new();
    let peer = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .map_err(|e| format!("{e:?}"))?;
    let peer_pub = peer.compute_public_key().map_err(|e| format!("{e:?}"))?;
    let t = Instant::now();
    for i in 0..n {
        let msg = (i as u64).to_le_bytes();
        key.sign(&rng, &msg).map_err(|e| format!("{e:?}"))?;
        let mine = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
            .map_err(|e| format!("{e:?}"))?;
        let _ = mine.compute_public_key();
        let theirs = agreement::UnparsedPublicKey::new(&agreement::X25519, peer_pub.as_ref());
        agreement::agree_ephemeral(mine, theirs, "x25519", |k| Ok::<_, &str>(k.len()))
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / n as f64)
}

// ---------------------------------------------------------------- files

fn download_all(url: &str, clients: usize) -> R<f64> {
    let t = Instant::now();
    let kids: Vec<Child> = (0..clients)
        .map(|_| {
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", url])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut k in kids {
        if !k.wait()?.success() {
            return Err(format!("curl {url} failed").into());
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

fn bench_files(cx: &mut Ctx) -> R<()> {
    let size: usize = if cx.smoke { 16 << 20 } else { 256 << 20 };
    let d = cx.dir.join("files");
    std::fs::create_dir_all(&d)?;
    let state = d.join("state");
    run(Command::new(bin()).args(["--dir", s(&state), "init", "--san", "IP:127.0.0.1"]))?;
    let f = state.join("files/big.img");
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = c.len();
        c.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    std::fs::write(&f, &data)?;
    drop(data);
    let (srv, _, http) = start_serve(&state)?;
    let ours = download_all(&format!("http://127.0.0.1:{http}/files/big.img"), 4)?;
    drop(srv);
    let port = free_port();
    let ndir = d.join("nginx");
    std::fs::create_dir_all(&ndir)?;
    let body = format!(
        "sendfile on;\nserver {{ listen 127.0.0.1:{port}; location /files/ {{ alias {}/; }} }}",
        s(&state.join("files"))
    );
    let conf = nginx_conf(&ndir, &body)?;
    let ng = spawn(Command::new(nginx_bin()?).args(["-c", s(&conf)]))?;
    wait_port(port)?;
    let theirs = download_all(&format!("http://127.0.0.1:{port}/files/big.img"), 4)?;
    drop(ng);
    let mb = 4.0 * size as f64 / 1e6;
    cx.line(&format!(
        "\n## Boot files ({} MiB, 4 concurrent clients, plain HTTP)\n",
        size >> 20
    ));
    cx.line("| server | MB/s | share of nginx |");
    cx.line("|---|---|---|");
    cx.line(&format!(
        "| nginx (sendfile) | {:.0} | 100 % |",
        mb / theirs
    ));
    cx.line(&format!(
        "| ipxe-ca serve | {:.0} | {:.0} % |",
        mb / ours,
        100.0 * theirs / ours
    ));
    Ok(())
}

// ---------------------------------------------------------------- build

fn bench_build(cx: &mut Ctx) -> R<()> {
    // Per-board relink (compile route) for a few boards; the farm route for many.
    let (relink_n, farm_n) = if cx.smoke { (1, 2) } else { (8, 1000) };
    let d = cx.dir.join("build");
    std::fs::create_dir_all(&d)?;
    let state = d.join("state");
    run(Command::new(bin()).args(["--dir", s(&state), "init", "--san", "IP:127.0.0.1"]))?;
    let names: Vec<String> = (0..farm_n).map(|i| format!("img{i:04}")).collect();
    // Enrolled in batches: one command line for 1,000 names is fine, but keeps memory flat.
    for chunk in names.chunks(250) {
        let mut args = vec!["--dir".to_string(), s(&state).to_string(), "enroll".into()];
        args.extend(chunk.iter().cloned());
        run(Command::new(bin()).args(&args))?;
    }
    // The smoke run never compiles iPXE: it proves the section works on the fixture.
    let real = std::env::var_os("IPXE_SRC").filter(|_| !cx.smoke);
    let tree = match &real {
        Some(t) => PathBuf::from(t),
        None => {
            let t = d.join("fake-ipxe");
            let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-ipxe");
            run(Command::new("cp").args(["-a", s(&fixture), s(&t)]))?;
            t
        }
    };
    let kind = if real.is_some() {
        "real iPXE 2.0.0 tree (IPXE_SRC)"
    } else {
        "fixture tree (tests/fixtures/fake-ipxe)"
    };
    let build = |boards: &[String], target: &str, out: &str| -> R<f64> {
        let mut a = vec!["--dir".to_string(), s(&state).to_string(), "build".into()];
        a.extend(boards.iter().cloned());
        a.extend([
            "--ipxe-src".into(),
            s(&tree).into(),
            "--target".into(),
            target.into(),
            "--out".into(),
            s(&d.join(out)).into(),
        ]);
        let t = Instant::now();
        run(Command::new(bin()).args(&a))?;
        Ok(t.elapsed().as_secs_f64())
    };
    cx.line(&format!("\n## Image builds, {kind}\n"));
    cx.line("| route | target | boards | total s | s/board |");
    cx.line("|---|---|---|---|---|");
    // Warm both routes once (a CA change recompiles a few objects), then measure.
    build(&names[..1], "lkrn", "out-warm")?;
    build(&names[..1], "hybrid", "out-warm")?;
    let relink = build(&names[..relink_n], "lkrn", "out-relink")?;
    cx.line(&format!(
        "| compile (key in the binary) | lkrn | {relink_n} | {relink:.1} | {:.3} |",
        relink / relink_n as f64
    ));
    let farm = build(&names, "hybrid", "out-farm")?;
    cx.line(&format!(
        "| farm (one compile, autoexec.ipxe) | hybrid | {farm_n} | {farm:.1} | {:.3} |",
        farm / farm_n as f64
    ));
    let per_relink = relink / relink_n as f64;
    let per_farm = farm / farm_n as f64;
    cx.line(&format!(
        "\nFarm route per board: {:.0}× faster than a relink; {farm_n} boards in {farm:.0} s \
(target: 1,000 in ≤ 180 s and ≥ 15×).",
        per_relink / per_farm
    ));
    Ok(())
}

// ---------------------------------------------------------------- registry

fn bench_registry(cx: &mut Ctx) -> R<()> {
    let sizes: &[usize] = if cx.smoke { &[20, 100] } else { &[100, 10_000] };
    cx.line("\n## Registry scale\n");
    cx.line(
        "| boards | sign+register ms/board | `list --json` s | `show` ms | serve p50 ms (c=1) |",
    );
    cx.line("|---|---|---|---|---|");
    for &n in sizes {
        let d = cx.dir.join(format!("registry-{n}"));
        std::fs::create_dir_all(&d)?;
        let t = Instant::now();
        let (state, key, certs) = lab_with_boards(&d, n)?;
        let reg_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        let t = Instant::now();
        run(Command::new(bin()).args(["--dir", s(&state), "list", "--json"]))?;
        let list_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        run(Command::new(bin()).args(["--dir", s(&state), "show", "b00007"]))?;
        let show_ms = t.elapsed().as_secs_f64() * 1e3;
        let sample: Vec<PathBuf> = certs.iter().step_by((n / 20).max(1)).cloned().collect();
        let cfgs = client_configs(&state.join("ca/ca.crt"), &key, &sample, false)?;
        let (srv, https, _) = start_serve(&state)?;
        let l = load(
            &cfgs,
            https,
            1,
            if cx.smoke {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(3)
            },
        );
        drop(srv);
        if l.errors > 0 || l.ok == 0 {
            return Err(format!("registry {n}: {} failed boots, {} good", l.errors, l.ok).into());
        }
        cx.line(&format!(
            "| {n} | {reg_ms:.1} | {list_s:.2} | {show_ms:.1} | {:.2} |",
            l.p50_ms
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- tcp floor

/// The bytes of a TLS 1.2 boot with an ECDSA server certificate, flight by flight, as
/// `strace` of `serve` shows them: (client sends, server answers). ClientHello → ServerHello
/// to ServerHelloDone; certificate, key exchange, CertificateVerify, Finished → Finished;
/// the request → the script; close_notify → close_notify.
const BOOT_FLIGHTS: [(usize, usize); 4] = [(202, 1702), (1962, 51), (117, 985), (31, 31)];

/// The server side of [`BOOT_FLIGHTS`] in clear text, on tokio as `serve` runs (a
/// multi-threaded runtime, one connection per task): what any server on this kernel pays per
/// boot before its first instruction of TLS or HTTP. Runs as its own process (the bench
/// binary started with `--tcp-floor-server PORT`) so that its CPU is counted as a server's.
fn tcp_floor_server(port: u16, workers: Option<usize>) -> R<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers {
        rt.worker_threads(w);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (mut c, _) = l.accept().await?;
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
                let mut buf = vec![0u8; 4096];
                for (ask, answer) in BOOT_FLIGHTS {
                    if c.read_exact(&mut buf[..ask]).await.is_err() {
                        return;
                    }
                    buf[..answer].fill(0x17);
                    if c.write_all(&buf[..answer]).await.is_err() {
                        return;
                    }
                }
                let _ = c.shutdown().await;
            });
        }
    })
}

/// One clear-text boot against [`tcp_floor_server`].
async fn tcp_floor_boot(port: u16) -> Result<(), String> {
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    for (ask, answer) in BOOT_FLIGHTS {
        buf[..ask].fill(0x16);
        c.write_all(&buf[..ask]).await.map_err(|e| e.to_string())?;
        c.read_exact(&mut buf[..answer])
            .await
            .map_err(|e| e.to_string())?;
    }
    match c.read(&mut buf).await {
        Ok(0) => Ok(()),
        other => Err(format!("expected the server to close, got {other:?}")),
    }
}

/// Server CPU ms per clear-text boot (and of it, kernel ms) at `conc`, over `dur`.
fn tcp_floor_ms(conc: usize, dur: Duration, workers: Option<usize>) -> R<(f64, f64)> {
    let workers = workers.map(|w| w.to_string());
    let (srv, port) = start_self("--tcp-floor-server", &[], workers.as_deref())?;
    let (l, cost) = costed(
        || usage(srv.0.id()),
        || drive(conc, dur, move |_| tcp_floor_boot(port)),
    );
    if l.errors > 0 || l.ok == 0 {
        return Err(format!("tcp floor: {} failed boots, {} good", l.errors, l.ok).into());
    }
    Ok((cost.cpu_ms, cost.sys_ms))
}

// ---------------------------------------------------------------- tls floor

/// A boot script's answer of about the size `serve` sends (the third server flight of
/// [`BOOT_FLIGHTS`] less TLS's record overhead).
fn tls_floor_answer() -> Vec<u8> {
    let mut body = String::from("#!ipxe\n");
    while body.len() < 820 {
        body.push_str("# a line of a board's boot script, as long as serve's\n");
    }
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The least a rustls server on tokio can do per boot: `serve`'s own TLS configuration
/// ([`ipxe_ca::server::tls_config`]: the two server certificates chosen per ClientHello, board
/// certificates verified against the CA and remembered) and then a fixed answer to any request, with no HTTP
/// library, no registry, no template, no log. `serve` spends this plus its own work; the
/// difference is all that ipxe-ca's code could ever win back. Its own process (`--tls-floor-server
/// PORT STATE [WORKERS]`), so that its CPU is counted as a server's.
fn tls_floor_server(port: u16, state: &Path, workers: Option<&str>) -> R<()> {
    let state = ipxe_ca::state::StateDir::new(state);
    // 2048 sessions: `serve --tls-sessions` by default (the load makes none to resume).
    let config = ipxe_ca::server::tls_config(&state, 2048)?;
    let answer: Arc<[u8]> = tls_floor_answer().into();
    if workers == Some("threads") {
        return tls_floor_threads(port, Arc::new(config), answer);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers.and_then(|w| w.parse().ok()) {
        rt.worker_threads(w);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (c, _) = l.accept().await?;
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(c).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    if have == buf.len() {
                        return;
                    }
                }
                if tls.write_all(&answer).await.is_ok() {
                    let _ = tls.shutdown().await;
                }
            });
        }
    })
}

/// The floor without an event loop: a blocking thread per core, each taking the next
/// connection when done with the last (no epoll, no task wake-ups; the load generator's other
/// connections wait in the backlog). Fewer system calls per boot than any event loop makes,
/// though no server for real boards could work so: one slow board would stall a core.
fn tls_floor_threads(port: u16, config: Arc<rustls::ServerConfig>, answer: Arc<[u8]>) -> R<()> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (l, config, answer) = (l.try_clone(), config.clone(), answer.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let l = l?;
                loop {
                    let (mut c, _) = l.accept()?;
                    let _ = c.set_nodelay(true);
                    let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    let mut tls = rustls::Stream::new(&mut conn, &mut c);
                    let mut buf = [0u8; 4096];
                    let mut have = 0;
                    let asked = loop {
                        match tls.read(&mut buf[have..]) {
                            Ok(0) | Err(_) => break false,
                            Ok(n) => have += n,
                        }
                        if buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                            break true;
                        }
                        if have == buf.len() {
                            break false;
                        }
                    };
                    if asked && tls.write_all(&answer).is_ok() {
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a floor thread panicked")??;
    }
    Ok(())
}

/// A [`tls_floor_server`] for the lab in `state` on a free port, ready: (process, port).
/// `how`: tokio's worker count, `threads` for [`tls_floor_threads`], None for tokio's default.
fn start_tls_floor(state: &Path, how: Option<&str>) -> R<(Proc, u16)> {
    start_self("--tls-floor-server", &[s(state)], how)
}

/// This bench binary as one of its floor servers (`flag PORT ARGS… [last]`) on a free port,
/// ready: its own process, so that its CPU is counted as a server's.
fn start_self(flag: &str, args: &[&str], last: Option<&str>) -> R<(Proc, u16)> {
    let port = free_port();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([flag, &port.to_string()]).args(args).args(last);
    let srv = spawn(&mut cmd)?;
    wait_port(port)?;
    Ok((srv, port))
}

// ---------------------------------------------------------------- profile

/// Where `serve`'s CPU goes under the iPXE 2.0 load (1000 boards, c=64, 10 s), by `perf record`
/// with call graphs attached to the running server: the top symbols by self time, and the
/// kernel's share (IPXE_CA_PROFILE_RSA=1: the RSA-only load). Only with `--only profile`; the
/// whole recording stays in target/bench/run/profile/perf.data (`perf report -i …`).
fn bench_profile(cx: &mut Ctx) -> R<()> {
    let d = cx.dir.join("profile");
    std::fs::create_dir_all(&d)?;
    let (state, key, certs) = lab_with_boards(&d, if cx.smoke { 20 } else { 1000 })?;
    let ecdsa = std::env::var("IPXE_CA_PROFILE_RSA").is_err();
    let cfgs = client_configs(&state.join("ca/ca.crt"), &key, &certs, ecdsa)?;
    // IPXE_CA_PROFILE_FULLBOOT=1: whole boots (script, then 2 × 16 MiB) instead of scripts.
    let files = std::env::var_os("IPXE_CA_PROFILE_FULLBOOT")
        .map(|_| boot_files(&state, if cx.smoke { 256 << 10 } else { 16 << 20 }));
    // IPXE_CA_PROFILE_WORKERS=N: `serve --workers N`.
    let workers = std::env::var("IPXE_CA_PROFILE_WORKERS").ok();
    let extra: Vec<&str> = workers.iter().flat_map(|w| ["--workers", w]).collect();
    let (srv, https, _) = start_serve_with(&bin(), &state, &extra)?;
    let dur = Duration::from_secs(if cx.smoke { 1 } else { 10 });
    // Warm the caches (board files, verified chains) before recording.
    load_boots(&cfgs, https, 64, Duration::from_secs(1), files.clone());
    let data = d.join("perf.data");
    let perf = Command::new("perf")
        // Rust code has no frame pointers here: IPXE_CA_PROFILE_CALLGRAPH=dwarf for whole stacks.
        .args(["record", "-q", "-o", s(&data), "--call-graph"])
        .arg(std::env::var("IPXE_CA_PROFILE_CALLGRAPH").unwrap_or_else(|_| "fp".into()))
        .arg("-p")
        .arg(srv.0.id().to_string())
        .args(["--", "sleep"])
        .arg(dur.as_secs().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run perf ({e}): apt-get install linux-perf"))?;
    let (l, cost) = costed(
        || usage(srv.0.id()),
        || load_boots(&cfgs, https, 64, dur, files.clone()),
    );
    let out = perf.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("perf record: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    drop(srv);
    cx.line(&format!(
        "\n## Profile of serve ({} client{}, c=64, {:?})\n\n{} boots, {} errors; server CPU {:.3} ms per boot, {:.3} ms of it kernel; peak RSS {:.1} MB.\n",
        if ecdsa { "iPXE 2.0" } else { "RSA-only" },
        if files.is_some() { ", full boots" } else { "" },
        dur,
        l.ok,
        l.errors,
        cost.cpu_ms,
        cost.sys_ms,
        cost.rss as f64 / 1024.0
    ));
    let report = run(Command::new("perf").args([
        "report",
        "-i",
        s(&data),
        "--no-children",
        "--stdio",
        "-g",
        "none",
        "--percent-limit",
        "0.7",
        "--sort",
        "dso,symbol",
    ]))?;
    cx.line("```");
    // perf pads each line to the terminal's width with its empty sort columns.
    for l in report
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        cx.line(l.trim_end().trim_end_matches(['-', ' ']));
    }
    cx.line("```");
    Ok(())
}

// ---------------------------------------------------------------- ab

/// Two builds of `serve` compared in one window: this one and `IPXE_CA_AB_BIN`, both up at
/// once, loaded in turn (ABBA order) with iPXE 2.0 clients at c=64. This machine's speed drifts
/// by a quarter between runs minutes apart; paired rounds cancel most of that drift. Both are
/// started afresh each round, in alternating order. Even so, A/A runs (one binary twice) put
/// the median ratio anywhere from 0.94 to 1.09: trust a difference well beyond that, and count
/// instructions (`scripts/callgrind-boots.sh`) for smaller ones.
/// Only with `--only ab`.
fn bench_ab(cx: &mut Ctx) -> R<()> {
    let other = std::env::var_os("IPXE_CA_AB_BIN")
        .map(PathBuf::from)
        .ok_or("set IPXE_CA_AB_BIN to the ipxe-ca binary to compare with (or to tls-floor, tls-floor-threads)")?;
    let this = std::env::var_os("IPXE_CA_AB_A").map_or_else(bin, PathBuf::from);
    // A server of the comparison: a build of `serve`, or the least a rustls server does
    // (`tls-floor`: on tokio; `tls-floor-threads`: a blocking thread per core).
    let start = |which: &Path, state: &Path| -> R<(Proc, u16)> {
        match which.to_str() {
            Some("tls-floor") => start_tls_floor(state, None),
            Some("tls-floor-threads") => start_tls_floor(state, Some("threads")),
            _ => {
                let (p, https, _) = start_serve_with(which, state, &[])?;
                Ok((p, https))
            }
        }
    };
    let start_a = |state: &Path| start(&this, state);
    let start_b = |state: &Path| start(&other, state);
    let (rounds, dur) = if cx.smoke {
        (2, Duration::from_millis(300))
    } else {
        (8, Duration::from_secs(4))
    };
    let d = cx.dir.join("ab");
    std::fs::create_dir_all(&d)?;
    let (state, key, certs) = lab_with_boards(&d, if cx.smoke { 20 } else { 1000 })?;
    let mut cfgs = Vec::new();
    for ipxe2 in [true, false] {
        cfgs.push(client_configs(
            &state.join("ca/ca.crt"),
            &key,
            &certs,
            ipxe2,
        )?);
    }
    cx.line(&format!(
        "\n## A/B: A = {}, B = {} (c=64, {rounds} rounds of {dur:?} each, ABBA)\n",
        this.display(),
        other.display()
    ));
    cx.line("| client | A CPU ms/boot (median) | B CPU ms/boot (median) | B/A per round (median) | A boots/s | B boots/s |");
    cx.line("|---|---|---|---|---|---|");
    for (client, cf) in ["iPXE 2.0 (ECDHE-ECDSA)", "iPXE < 2.0 (ECDHE-RSA)"]
        .into_iter()
        .zip(&cfgs)
    {
        let (mut a_cpu, mut b_cpu, mut ratio, mut a_rate, mut b_rate) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            let one = |pid: u32, port: u16| -> R<(f64, f64)> {
                let (l, cost) = costed(|| usage(pid), || load(cf, port, 64, dur));
                if l.errors > 0 || l.ok == 0 {
                    return Err(
                        format!("{client}: {} failed boots, {} good", l.errors, l.ok).into(),
                    );
                }
                Ok((cost.cpu_ms, l.boots_per_s))
            };
            let ((ac, ar), (bc, br)) = if r % 2 == 0 {
                let (a, a_port) = start_a(&state)?;
                let (b, b_port) = start_b(&state)?;
                let x = one(a.0.id(), a_port)?;
                (x, one(b.0.id(), b_port)?)
            } else {
                let (b, b_port) = start_b(&state)?;
                let (a, a_port) = start_a(&state)?;
                let y = one(b.0.id(), b_port)?;
                (one(a.0.id(), a_port)?, y)
            };
            a_cpu.push(ac);
            b_cpu.push(bc);
            ratio.push(bc / ac);
            a_rate.push(ar);
            b_rate.push(br);
        }
        cx.line(&format!(
            "| {client} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} |",
            median(&mut a_cpu),
            median(&mut b_cpu),
            median(&mut ratio),
            median(&mut a_rate),
            median(&mut b_rate)
        ));
    }
    Ok(())
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
    // A/B needs a second binary, the profile perf: only when asked for by name.
    let by_name = [("ab", bench_ab as Section), ("profile", bench_profile)]
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
