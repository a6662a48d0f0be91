//! strace around the binary and `serve`, and the page cache: what the kernel saw.

use std::path::Path;
use std::process::{Command, Stdio};

use super::Lab;
use crate::common::{bin, free_port};

/// One system call as strace printed it: name, raw arguments, return value.
#[derive(Debug, Clone)]
pub struct Syscall {
    pub name: String,
    pub args: String,
    pub ret: String,
}

impl Syscall {
    /// The first string argument (a path), if any.
    pub fn path(&self) -> Option<&str> {
        let start = self.args.find('"')? + 1;
        let len = self.args[start..].find('"')?;
        Some(&self.args[start..start + len])
    }
    /// The second string argument (rename's target).
    pub fn path2(&self) -> Option<&str> {
        let first_end = self.args.find('"')? + 1;
        let after = first_end + self.args[first_end..].find('"')? + 1;
        let start = after + self.args[after..].find('"')? + 1;
        let len = self.args[start..].find('"')?;
        Some(&self.args[start..start + len])
    }
}

/// Run the binary under strace (Debian package strace), tracing `calls`; the calls in order.
pub fn strace(lab: &Lab, calls: &str, args: &[&str]) -> Vec<Syscall> {
    let trace = lab
        .tmp
        .path()
        .join(format!("strace-{}", args.join("-").replace('/', "_")));
    let o = Command::new("strace")
        .args(["-f", "-qq", "-s", "512", "-e"])
        .arg(format!("trace={calls}"))
        .arg("-o")
        .arg(&trace)
        .arg(bin())
        .arg("--dir")
        .arg(&lab.dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("strace is needed (apt-get install strace)");
    assert!(
        o.status.success(),
        "{args:?} under strace: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|l| {
            // "PID name(args) = ret"
            let l = l.split_once(' ')?.1.trim_start();
            let open = l.find('(')?;
            let eq = l.rfind(" = ")?;
            let close = l[..eq].rfind(')')?;
            Some(Syscall {
                name: l[..open].to_string(),
                args: l[open + 1..close].to_string(),
                ret: l[eq + 3..].split_whitespace().next()?.to_string(),
            })
        })
        .collect()
}

/// `serve` under strace (the `calls`, e.g. `trace=write,writev`) with `stdout`; (strace, https
/// port, trace file).
pub fn serve_traced(
    lab: &Lab,
    stdout: Stdio,
    tag: &str,
    calls: &str,
) -> (Traced, u16, std::path::PathBuf) {
    serve_traced_with(lab, stdout, tag, calls, &[])
}

/// The same with more `serve` arguments.
pub fn serve_traced_with(
    lab: &Lab,
    stdout: Stdio,
    tag: &str,
    calls: &str,
    extra: &[&str],
) -> (Traced, u16, std::path::PathBuf) {
    let (https, http) = (free_port(), free_port());
    let trace = lab.tmp.path().join(format!("trace-{tag}"));
    let child = Command::new("strace")
        .args(["-f", "-qq", "-s", "200", "-e", calls, "-o"])
        .arg(&trace)
        .arg(bin())
        .arg("--dir")
        .arg(&lab.dir)
        .args(["serve", "--https", &format!("127.0.0.1:{https}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("strace is needed (apt-get install strace)");
    let child = Traced(Some(child));
    crate::common::wait_port(https, std::time::Duration::from_secs(20)).unwrap();
    (child, https, trace)
}

/// strace running `serve`: both stop when this is dropped, so that a failing test leaves no
/// server behind.
pub struct Traced(Option<std::process::Child>);

impl Traced {
    /// Stop `serve` (strace's child), then strace.
    fn stop(&mut self) {
        let Some(mut strace) = self.0.take() else {
            return;
        };
        let children = format!("/proc/{0}/task/{0}/children", strace.id());
        for pid in std::fs::read_to_string(children)
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = Command::new("kill").args(["-TERM", pid]).status();
        }
        let _ = strace.wait();
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stop `serve` and strace; the trace's lines.
pub fn stop_traced(mut strace: Traced, trace: &std::path::Path) -> Vec<String> {
    strace.stop();
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Drop `path` from the page cache. The kernel may keep a page it is busy with, so ask again
/// until util-linux's `fincore` (which does not read the file) finds none resident.
pub fn evict(path: &Path) {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    let resident = || {
        let out = Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(path)
            .output()
            .expect("fincore (util-linux) is needed");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for _ in 0..50 {
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        if resident() == "0" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the page cache keeps {}", path.display());
}
