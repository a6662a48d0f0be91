//! `perf` on `serve` under load: where its CPU goes.

use super::*;

// ---------------------------------------------------------------- profile

/// A lab of 1000 boards (20 in smoke runs) in `cx.dir/name`, and the client configurations
/// of the load: iPXE 2.0's offer, or RSA only with IPXE_CA_PROFILE_RSA=1.
type Loaded = (PathBuf, PathBuf, Vec<Arc<rustls::ClientConfig>>, bool);
fn loaded_lab(cx: &Ctx, name: &str) -> R<Loaded> {
    let d = cx.dir.join(name);
    std::fs::create_dir_all(&d)?;
    let (state, key, certs) = lab_with_boards(&d, if cx.smoke { 20 } else { 1000 })?;
    let ecdsa = std::env::var("IPXE_CA_PROFILE_RSA").is_err();
    let cfgs = client_configs(&state.join("ca/ca.crt"), &key, &certs, ecdsa)?;
    Ok((d, state, cfgs, ecdsa))
}

/// Where `serve`'s CPU goes under the iPXE 2.0 load (1000 boards, c=64, 10 s), by `perf record`
/// with call graphs attached to the running server: the top symbols by self time, and the
/// kernel's share (IPXE_CA_PROFILE_RSA=1: the RSA-only load). Only with `--only profile`; the
/// whole recording stays in target/bench/run/profile/perf.data (`perf report -i …`).
pub(crate) fn bench_profile(cx: &mut Ctx) -> R<()> {
    let (d, state, cfgs, ecdsa) = loaded_lab(cx, "profile")?;
    // IPXE_CA_PROFILE_FULLBOOT=1: whole boots (script, then 2 × 16 MiB) instead of scripts.
    let files = std::env::var_os("IPXE_CA_PROFILE_FULLBOOT")
        .map(|_| boot_files(&state, if cx.smoke { 256 << 10 } else { 16 << 20 }));
    // IPXE_CA_PROFILE_WORKERS=N: `serve --workers N`.
    let workers = std::env::var("IPXE_CA_PROFILE_WORKERS").ok();
    let extra: Vec<&str> = workers.iter().flat_map(|w| ["--workers", w]).collect();
    // IPXE_CA_PROFILE_FLOOR=1: the TLS floor instead, to hold its profile beside serve's.
    let (srv, https) = if std::env::var_os("IPXE_CA_PROFILE_FLOOR").is_some() {
        start_tls_floor(&state, workers.as_deref())?
    } else {
        let (p, https, _) = start_serve_with(&bin(), &state, &extra)?;
        (p, https)
    };
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

// ---------------------------------------------------------------- count

/// What `serve` and the TLS floor cost per boot beyond CPU time, counted by `perf stat` under
/// the same iPXE 2.0 load (1000 boards, c=64), in alternating rounds: system calls, context
/// switches, page faults, and CPU time. Counts barely move with the machine's speed (CPU time
/// moves by ±15 % between runs here), so they show what paired rounds of CPU time cannot.
/// (This machine's VM exposes no hardware counters: no instructions or cycles.) Only with
/// `--only count`.
pub(crate) fn bench_count(cx: &mut Ctx) -> R<()> {
    let (d, state, cfgs, ecdsa) = loaded_lab(cx, "count")?;
    let (rounds, dur) = if cx.smoke {
        (1, Duration::from_millis(500))
    } else {
        (3, Duration::from_secs(5))
    };
    const EVENTS: [&str; 4] = [
        "raw_syscalls:sys_enter",
        "context-switches",
        "page-faults",
        "task-clock",
    ];
    // (name, sums over rounds, good boots)
    let mut sums: Vec<(&str, [f64; 4], usize)> =
        vec![("serve", [0.0; 4], 0), ("TLS floor", [0.0; 4], 0)];
    for _ in 0..rounds {
        for entry in sums.iter_mut() {
            let (srv, port) = if entry.0 == "serve" {
                let (p, https, _) = start_serve(&state)?;
                (p, https)
            } else {
                start_tls_floor(&state, None)?
            };
            // Warm the caches (board files, remembered chains) before counting.
            load_boots(&cfgs, port, 64, Duration::from_millis(500), None);
            let out = d.join("stat.csv");
            let perf = Command::new("perf")
                .args([
                    "stat",
                    "-x",
                    ",",
                    "-o",
                    s(&out),
                    "-e",
                    &EVENTS.join(","),
                    "-p",
                ])
                .arg(srv.0.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run perf ({e}): apt-get install linux-perf"))?;
            let l = load_boots(&cfgs, port, 64, dur, None);
            // perf stat prints its counts when interrupted.
            let pid = rustix::process::Pid::from_raw(perf.id() as i32).ok_or("perf has no pid")?;
            rustix::process::kill_process(pid, rustix::process::Signal::INT)?;
            perf.wait_with_output()?;
            drop(srv);
            let text = std::fs::read_to_string(&out)?;
            for (i, ev) in EVENTS.iter().enumerate() {
                let n: f64 = text
                    .lines()
                    .find(|l| l.split(',').nth(2).is_some_and(|e| e == *ev))
                    .and_then(|l| l.split(',').next()?.parse().ok())
                    .ok_or_else(|| format!("perf stat counted no {ev}: {text}"))?;
                entry.1[i] += n;
            }
            entry.2 += l.ok;
        }
    }
    cx.line(&format!(
        "\n## Counted per boot ({} client, c=64, {rounds} rounds of {dur:?} each, alternating)\n",
        if ecdsa { "iPXE 2.0" } else { "RSA-only" }
    ));
    cx.line("| server | system calls | context switches | page faults | CPU ms |");
    cx.line("|---|---|---|---|---|");
    for (name, c, boots) in &sums {
        let b = (*boots).max(1) as f64;
        cx.line(&format!(
            "| {name} | {:.1} | {:.2} | {:.2} | {:.3} |",
            c[0] / b,
            c[1] / b,
            c[2] / b,
            c[3] / b
        ));
    }
    Ok(())
}
