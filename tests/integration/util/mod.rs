//! Helpers shared by the integration tests: a fresh state dir per test, running the real
//! binary, free ports; the external checkers (`openssl`), nginx and strace harnesses live in
//! modules of their own.
#![allow(dead_code)]

mod nginx;
mod openssl;
mod trace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use crate::common::{bin, free_port, s, write_random, Proc};
pub use nginx::start_nginx;
pub use openssl::{
    openssl, openssl_fingerprint, openssl_signed_cert, rsa_csr, sign_with_openssl, verify_strict,
};
pub use trace::{evict, serve_traced, serve_traced_with, stop_traced, strace, Syscall};

/// A test's own temporary directory and state dir.
pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Lab {
    pub fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        Lab { tmp, dir }
    }

    /// A lab whose server a QEMU guest reaches at 10.0.2.2 (`https`, `http` on the host),
    /// with 127.0.0.1 among the server's names too when `local` (curl from the host).
    pub fn for_guest(https: u16, http: u16, local: bool) -> Lab {
        let lab = Lab::new();
        let (server, files) = (
            format!("https://10.0.2.2:{https}"),
            format!("http://10.0.2.2:{http}"),
        );
        let mut args = vec!["init", "--san", "IP:10.0.2.2"];
        if local {
            args.extend(["--san", "IP:127.0.0.1"]);
        }
        args.extend(["--server-url", &server, "--files-url", &files]);
        lab.ok(&args);
        lab
    }

    /// A lab with a CA and server certificate for SAN IP:127.0.0.1 and IP:10.0.2.2.
    pub fn init() -> Lab {
        let lab = Lab::new();
        lab.ok(&[
            "init",
            "--san",
            "IP:127.0.0.1",
            "--san",
            "IP:10.0.2.2",
            "--san",
            "DNS:localhost",
        ]);
        lab
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--dir").arg(&self.dir).args(args);
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "ipxe-ca {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Run and require failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "ipxe-ca {args:?} should have failed");
        String::from_utf8(o.stderr).unwrap()
    }

    /// `build BOARD` from the prebuilt iPXE as a UEFI stick image into `out` (no toolchain).
    pub fn build_efi_usb(&self, board: &str, out: &Path) -> Output {
        self.run(&[
            "build",
            board,
            "--prebuilt",
            s(&crate::boot::prebuilt_dir()),
            "--target",
            "efi-usb",
            "--out",
            s(out),
        ])
    }

    /// Enroll a board and return its JSON.
    pub fn enroll(&self, name: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["enroll", name, "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Every file under the state dir with its content, except the lock file and the boards'
    /// histories (a running `serve` appends to those in batches, a moment after each request).
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        if self.dir.exists() {
            snap(&self.dir, &self.dir, &mut out);
        }
        out
    }
}

fn snap(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                b"<dir>".to_vec(),
            );
            snap(root, &p, out);
        } else if ![".lock", "history.jsonl"].contains(&p.file_name().unwrap().to_str().unwrap()) {
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
}

/// Run an external tool, returning (success, stdout+stderr).
pub fn tool(prog: &str, args: &[&str]) -> (bool, String) {
    // A client that never gives up would hang the suite instead of failing one test.
    let limit: &[&str] = if prog == "curl" && !args.contains(&"--max-time") {
        &["--max-time", "30"]
    } else {
        &[]
    };
    let o = Command::new(prog)
        .args(limit)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e} (install it: see README)"));
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

/// A running `ipxe-ca serve` on free loopback ports; SIGTERM on drop.
pub struct Server {
    pub child: std::process::Child,
    pub https: u16,
    pub http: u16,
    /// The boards' console listener (0: none).
    pub console: u16,
    pub log: PathBuf,
    pub err: PathBuf,
}

impl Lab {
    /// Start `serve` with extra arguments; waits until both ports accept connections.
    pub fn serve(&self, extra: &[&str]) -> Server {
        self.serve_on(free_port(), free_port(), extra)
    }

    /// Start `serve` on given loopback ports.
    pub fn serve_on(&self, https: u16, http: u16, extra: &[&str]) -> Server {
        let log = self.tmp.path().join(format!("serve-{https}.log"));
        let err = self.tmp.path().join(format!("serve-{https}.err"));
        let (out, errs) = (
            std::fs::File::create(&log).unwrap(),
            std::fs::File::create(&err).unwrap(),
        );
        self.serve_to(https, http, extra, out.into(), errs.into(), log, err)
    }

    /// Start `serve` with its stdout and stderr where the caller says (`output()` then reads
    /// the files `log` and `err`, if those are where they go).
    #[allow(clippy::too_many_arguments)]
    pub fn serve_to(
        &self,
        https: u16,
        http: u16,
        extra: &[&str],
        stdout: Stdio,
        stderr: Stdio,
        log: PathBuf,
        err: PathBuf,
    ) -> Server {
        let mut args = vec![
            "serve".to_string(),
            "--https".into(),
            format!("127.0.0.1:{https}"),
            "--http".into(),
            format!("127.0.0.1:{http}"),
        ];
        // A console listener on a free port of its own, unless the test says where (the
        // default port, 6514, would be shared by every test's server).
        let console = if extra
            .iter()
            .any(|a| a.starts_with("--console") || *a == "--no-console" || *a == "--behind-proxy")
        {
            extra
                .iter()
                .position(|a| *a == "--console")
                .and_then(|i| extra.get(i + 1))
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(0)
        } else {
            let p = free_port();
            args.push("--console".into());
            args.push(format!("127.0.0.1:{p}"));
            p
        };
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(bin())
            .arg("--dir")
            .arg(&self.dir)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            https,
            http,
            console,
            log,
            err,
        };
        let proxy = extra.contains(&"--behind-proxy");
        for _ in 0..200 {
            let up = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
            if up(http) && (proxy || up(https)) {
                return server;
            }
            if let Some(st) = server.child.try_wait().unwrap() {
                panic!(
                    "serve exited with {st}: {}",
                    std::fs::read_to_string(&server.err).unwrap()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("serve did not start: {}", server.output());
    }

    /// curl a URL on the HTTPS listener as `board` (None: no client certificate).
    /// Returns (http status or 0 on TLS failure, body).
    pub fn curl_as(&self, board: Option<&str>, url: &str) -> (u16, String) {
        self.curl_as_with(board, url, &[])
    }

    /// The same with more curl arguments (`-A AGENT`, …).
    pub fn curl_as_with(&self, board: Option<&str>, url: &str, extra: &[&str]) -> (u16, String) {
        let mut args: Vec<String> = vec![
            "-s".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            s(&self.path("ca/ca.crt")).into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(b) = board {
            args.push("--cert".into());
            args.push(s(&self.path(&format!("boards/{b}/cert.pem"))).into());
            args.push("--key".into());
            args.push(s(&self.path(&format!("keys/boards/{b}.key"))).into());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(url.into());
        let o = Command::new("curl")
            .args(&args)
            .output()
            .expect("curl is needed (apt-get install curl)");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https)
    }
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }
    /// Everything the server printed so far (access log and messages).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(&self.err).unwrap_or_default()
    }
    /// Where its output stands now, for [`Server::output_since`].
    pub fn mark(&self) -> (usize, usize) {
        let lines = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        };
        (lines(&self.log), lines(&self.err))
    }
    /// The lines the server printed since `mark` (access log, then messages).
    pub fn output_since(&self, (log, err): (usize, usize)) -> Vec<String> {
        let lines = |p: &PathBuf, skip: usize| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .skip(skip)
                .map(str::to_string)
                .collect()
        };
        let mut out = lines(&self.log, log);
        out.extend(lines(&self.err, err));
        out
    }
    /// Wait (up to 10 s) for the server to exit on its own.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        for _ in 0..400 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        None
    }
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..400 {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let _ = self.child.kill();
        panic!("serve did not exit after SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET `url` without a client certificate: (status, body); 0 when curl got no answer.
pub fn curl_plain(url: &str) -> (u16, String) {
    let o = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of the first Prometheus sample line that starts with `line_start`.
pub fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
}

/// A PATH like ours without the named programs (links to everything else), to show what a
/// machine without them gets.
pub fn path_without(dir: &Path, hide: &[&str]) -> PathBuf {
    let bin = dir.join(format!("path-without-{}", hide.join("-")));
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            if hide.contains(&name.to_string_lossy().as_ref()) {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), bin.join(&name));
        }
    }
    bin
}

/// Poll `f` until it returns Some, or fail after `limit` (no fixed sleeps).
pub fn wait_for<T>(what: &str, limit: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
