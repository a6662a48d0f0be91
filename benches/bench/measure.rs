//! Starting the servers under test and reading what they cost (CPU, RSS) from /proc.

use super::*;

/// `ipxe-ca serve` on free loopback ports, ready: (process, https port, http port).
/// IPXE_CA_BENCH_BIN runs another build of `ipxe-ca` in every section that starts `serve`.
pub(crate) fn start_serve(state: &Path) -> R<(Proc, u16, u16)> {
    let program = std::env::var_os("IPXE_CA_BENCH_BIN").map_or_else(bin, PathBuf::from);
    start_serve_with(&program, state, &[])
}

/// The same with another build of `ipxe-ca` (or a wrapper that execs one).
pub(crate) fn start_serve_with(
    program: &Path,
    state: &Path,
    extra: &[&str],
) -> R<(Proc, u16, u16)> {
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

/// What a load cost a server, per good boot.
pub(crate) struct Cost {
    /// CPU ms (user + system).
    pub(crate) cpu_ms: f64,
    /// Of it, kernel ms.
    pub(crate) sys_ms: f64,
    /// Peak RSS (kB) when the load ended.
    pub(crate) rss: u64,
}

/// Run `load`, reading the server's `usage` (as [`usage`] gives it) before and after.
pub(crate) fn costed(
    usage: impl Fn() -> (f64, f64, u64),
    load: impl FnOnce() -> Load,
) -> (Load, Cost) {
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
pub(crate) fn tree(root: u32) -> Vec<u32> {
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
pub(crate) fn sched_batch(root: u32) -> R<()> {
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

pub(crate) fn usage(root: u32) -> (f64, f64, u64) {
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

/// CPU seconds (user+system) of this process alone, all its threads.
pub(crate) fn self_cpu() -> f64 {
    stat_cpu("/proc/self/stat").0
}

/// CPU seconds (user+system, and system alone) from a `/proc/…/stat` file; zero if it is gone.
pub(crate) fn stat_cpu(path: &str) -> (f64, f64) {
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
