//! A farm day as one thing: from nothing to every board booted. `init`; `enroll` of the boards
//! (their own RSA keys); `build --all` of their images through the farm route (after the one
//! compile of the tree, timed apart); then every board boots once, 64 at a time, as a real
//! iPXE 2.0 does: its own certificate and key, TLS 1.2, the script, then the kernel and initrd
//! the script names, on one kept-alive connection, each checked (status, size, and a script
//! that is the board's own). Every boot must succeed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;

use super::{bin, connect, response, run, s, start_serve, usage, Ctx, Offer, R};

/// One board's boot: the script (it must be the board's own), then each file the script
/// fetches over mutual TLS, on the same connection.
async fn boot(
    cfg: Arc<rustls::ClientConfig>,
    port: u16,
    board: &str,
    sizes: &[u64],
) -> Result<(), String> {
    let mut tls = connect(cfg, port).await?;
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: iPXE/2.0.0 farmday\r\n\r\n")
    };
    tls.get_mut()
        .write_all(get("/boot.ipxe").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let script = script(&mut tls).await?;
    if !script.contains(&format!("ipxe-ca: {board} ")) {
        return Err(format!("{board}: not its own script: {script}"));
    }
    // The files the script fetches, by their path on the server.
    let files: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("kernel ") || l.starts_with("initrd "))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("https://")))
        .filter_map(|url| Some(&url[8 + url.strip_prefix("https://")?.find('/')?..]))
        .collect();
    if files.len() != sizes.len() {
        return Err(format!("{board}: the script fetches {files:?}"));
    }
    for (path, want) in files.iter().zip(sizes) {
        let w = tls.get_mut();
        w.write_all(get(path).as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        w.flush().await.map_err(|e| e.to_string())?;
        let (status, got) = response(&mut tls).await?;
        if !status.starts_with("HTTP/1.1 200") || got != *want {
            return Err(format!("{board} {path}: {status}, {got} bytes"));
        }
    }
    Ok(())
}

/// The script's body (Content-Length), after a 200.
async fn script<S: tokio::io::AsyncBufRead + Unpin>(r: &mut S) -> Result<String, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let e = |e: std::io::Error| e.to_string();
    let mut status = String::new();
    r.read_line(&mut status).await.map_err(e)?;
    let mut len = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.map_err(e)? == 0 {
            return Err("connection closed in the headers".into());
        }
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0u8; len.ok_or("no Content-Length")?];
    r.read_exact(&mut body).await.map_err(e)?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "{}: {}",
            status.trim_end(),
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Every board boots once, `conc` at a time: latencies (ms) of the good boots, and the errors.
fn boot_all(
    boards: Vec<(String, Arc<rustls::ClientConfig>)>,
    port: u16,
    conc: usize,
    sizes: Vec<u64>,
) -> R<(Vec<f64>, Vec<String>)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let boards = Arc::new(boards);
    let sizes = Arc::new(sizes);
    let next = Arc::new(AtomicUsize::new(0));
    Ok(rt.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..conc {
            let (boards, sizes, next) = (boards.clone(), sizes.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, cfg)) = boards.get(i) else {
                        break;
                    };
                    let t = Instant::now();
                    match boot(cfg.clone(), port, name, &sizes).await {
                        Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        Err(e) => errors.push(e),
                    }
                }
                (lat, errors)
            }));
        }
        let (mut lat, mut errors) = (Vec::new(), Vec::new());
        for t in tasks {
            match t.await {
                Ok((l, e)) => {
                    lat.extend(l);
                    errors.extend(e);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        (lat, errors)
    }))
}

fn timed(f: impl FnOnce() -> R<()>) -> R<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) fn bench_farmday(cx: &mut Ctx) -> R<()> {
    let (n, conc, size) = if cx.smoke {
        (4, 2, 256 << 10)
    } else {
        (1000, 64, 16 << 20)
    };
    let d = cx.dir.join("farmday");
    std::fs::create_dir_all(&d)?;
    let state = d.join("state");
    let ipxe_ca = |args: &[&str]| -> R<String> {
        run(Command::new(bin()).arg("--dir").arg(&state).args(args))
    };
    let init = timed(|| ipxe_ca(&["init", "--san", "IP:127.0.0.1"]).map(drop))?;
    let names: Vec<String> = (0..n).map(|i| format!("f{i:04}")).collect();
    // In calls of 250 names, as a script enrolling a delivery would.
    let enroll = timed(|| {
        for chunk in names.chunks(250) {
            let mut args = vec!["enroll"];
            args.extend(chunk.iter().map(String::as_str));
            ipxe_ca(&args)?;
        }
        Ok(())
    })?;
    // The full run builds from the real tree (scripts/test.sh unpacks ../shared/ipxe and sets
    // IPXE_SRC); the smoke run from the fixture, which compiles nothing.
    let (tree, kind) = match std::env::var_os("IPXE_SRC").filter(|_| !cx.smoke) {
        Some(t) => (PathBuf::from(t), "iPXE 2.0.0 (IPXE_SRC)"),
        None if cx.smoke => {
            let t = d.join("fake-ipxe");
            let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-ipxe");
            run(Command::new("cp").args(["-a", s(&fixture), s(&t)]))?;
            (t, "the fixture tree")
        }
        None => {
            return Err(
                "the farm day builds from a real iPXE tree: set IPXE_SRC (scripts/test.sh \
                        unpacks ../shared/ipxe and prints where)"
                    .into(),
            )
        }
    };
    let out = d.join("out");
    let build = |boards: &[&str], out: &Path| -> R<()> {
        let mut args = boards.to_vec();
        args.extend([
            "--ipxe-src",
            s(&tree),
            "--target",
            "hybrid",
            "--out",
            s(out),
        ]);
        let mut a = vec!["build"];
        a.extend(args);
        ipxe_ca(&a).map(drop)
    };
    // The tree's one compile for this farm (its CA pinned), then every board's image.
    let compile = timed(|| build(&[names[0].as_str()], &d.join("out-first")))?;
    let images = timed(|| build(&["--all"], &out))?;
    if let Some(missing) = names.iter().find(|b| !out.join(b).is_dir()) {
        return Err(format!("build --all made no image for {missing}").into());
    }

    for name in ["vmlinuz", "initrd.img"] {
        super::common::write_random(&state.join("files").join(name), size);
    }
    let offer = Offer::new(&state.join("ca/ca.crt"), true)?;
    let mut boards = Vec::new();
    for name in &names {
        let key = offer.key(&state.join(format!("keys/boards/{name}.key")))?;
        let cfg = offer.board(&state.join(format!("boards/{name}/cert.pem")), key)?;
        boards.push((name.clone(), cfg));
    }
    let (srv, https, _) = start_serve(&state)?;
    let (cpu0, _, _) = usage(srv.0.id());
    let t = Instant::now();
    let (mut lat, errors) = boot_all(boards, https, conc, vec![size as u64; 2])?;
    let boot = t.elapsed().as_secs_f64();
    let (cpu1, _, rss) = usage(srv.0.id());
    drop(srv);
    if !errors.is_empty() {
        return Err(format!("{} of {n} boots failed, e.g. {}", errors.len(), errors[0]).into());
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let total = init + enroll + compile + images + boot;
    cx.line(&format!(
        "\n## A farm day: {n} boards from nothing to booted (build from {kind})\n"
    ));
    cx.line("| phase | wall s | target |");
    cx.line("|---|---|---|");
    cx.line(&format!("| init | {init:.1} | |"));
    cx.line(&format!(
        "| enroll {n} boards (own RSA-2048 keys; 250 per call) | {enroll:.1} | ≤ 60 |"
    ));
    cx.line(&format!(
        "| the farm's one compile (CA pinned; first board's image) | {compile:.1} | |"
    ));
    cx.line(&format!(
        "| build --all: {n} hybrid images, farm route | {images:.1} | ≤ 180 |"
    ));
    cx.line(&format!(
        "| {n} boots, {conc} at a time: own certificate, script, 2 × {} KiB over mutual TLS | {boot:.1} | |",
        size >> 10
    ));
    cx.line(&format!("| **total** | **{total:.1}** | ≤ 600 |"));
    cx.line(&format!(
        "\nEvery boot checked (its own script, both files whole): {} of {n} good. Boot p50 \
{:.0} ms, p99 {:.0} ms. serve: {:.1} CPU s in all ({:.1} ms per boot), peak RSS {:.1} MB.",
        lat.len(),
        pct(0.5),
        pct(0.99),
        cpu1 - cpu0,
        (cpu1 - cpu0) * 1e3 / n as f64,
        rss as f64 / 1024.0
    ));
    Ok(())
}
