//! Helpers shared by the integration tests: a fresh state dir per test, running the real
//! binary and external checkers, free ports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use crate::common::{bin, free_port, s, write_random, Proc};

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

/// Run openssl and require success.
pub fn openssl(args: &[&str]) -> String {
    let (ok, out) = tool("openssl", args);
    assert!(ok, "openssl {args:?} failed: {out}");
    out
}

/// A running `ipxe-ca serve` on free loopback ports; SIGTERM on drop.
pub struct Server {
    pub child: std::process::Child,
    pub https: u16,
    pub http: u16,
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
            args.push(s(&self.path(&format!("boards/{b}/key.pem"))).into());
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

/// A new RSA-2048 key and a CSR for `subj`, made by the openssl CLI (`extra` goes last,
/// e.g. `-outform DER` or `-addext …`).
pub fn rsa_csr(key: &str, subj: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-subj", subj, "-out", out,
    ];
    args.extend_from_slice(extra);
    openssl(&args);
}

/// A board certificate our CA signed with the openssl CLI, as before ipxe-ca existed: key, CSR
/// and certificate `NAME.{key,csr,crt}` in the lab's temp dir (`extra` goes to `x509 -req`).
pub fn openssl_signed_cert(lab: &Lab, name: &str, extra: &[&str]) -> PathBuf {
    let d = lab.tmp.path();
    let (key, csr, crt) = (
        d.join(format!("{name}.key")),
        d.join(format!("{name}.csr")),
        d.join(format!("{name}.crt")),
    );
    rsa_csr(s(&key), &format!("/CN={name}"), s(&csr), &[]);
    sign_with_openssl(lab, s(&csr), s(&crt), extra);
    crt
}

/// The certificate's fingerprint as openssl computes it, in the registry's form (lowercase hex).
pub fn openssl_fingerprint(cert: &std::path::Path, digest: &str) -> String {
    let out = openssl(&["x509", "-in", s(cert), "-noout", "-fingerprint", digest]);
    out.trim()
        .split('=')
        .nth(1)
        .unwrap()
        .replace(':', "")
        .to_lowercase()
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

/// `openssl verify -x509_strict -purpose PURPOSE`: the certificate must verify against the CA.
pub fn verify_strict(purpose: &str, ca: &str, cert: &str) {
    let out = openssl(&[
        "verify",
        "-x509_strict",
        "-purpose",
        purpose,
        "-CAfile",
        ca,
        cert,
    ]);
    assert!(out.contains(": OK"), "{out}");
}

/// Issue a certificate for `csr` with the lab's CA using the openssl CLI, as the prototype did.
pub fn sign_with_openssl(lab: &Lab, csr: &str, out: &str, extra: &[&str]) {
    let (ca, key) = (lab.path("ca/ca.crt"), lab.path("ca/ca.key"));
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        s(&ca),
        "-CAkey",
        s(&key),
        "-days",
        "30",
        "-out",
        out,
    ];
    args.extend_from_slice(extra);
    openssl(&args);
}

/// nginx with the block `ipxe-ca nginx-config` writes, listening on 127.0.0.1:`listen`.
pub fn nginx_conf(lab: &Lab, listen: u16, upstream: u16) -> std::path::PathBuf {
    let block = lab.ok(&[
        "nginx-config",
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--upstream",
        &format!("127.0.0.1:{upstream}"),
    ]);
    assert!(
        block.contains("ssl_verify_client")
            && block.contains("ssl_crl")
            && block.contains("AES128-SHA"),
        "{block}"
    );
    let t = lab.tmp.path().join("nginx");
    std::fs::create_dir_all(&t).unwrap();
    let conf = t.join("nginx.conf");
    let d = s(&t);
    std::fs::write(
        &conf,
        format!(
            "user root;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n access_log {d}/access.log;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{block}}}\n"
        ),
    )
    .unwrap();
    conf
}

/// Start nginx with the generated config in front of `serve --behind-proxy` on `upstream`;
/// waits until it listens.
pub fn start_nginx(lab: &Lab, listen: u16, upstream: u16) -> Proc {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is needed for proxy-mode tests: apt-get install nginx-light (scripts/test.sh does)");
    let conf = nginx_conf(lab, listen, upstream);
    let (ok, out) = tool(nginx, &["-t", "-c", s(&conf)]);
    assert!(ok, "nginx rejects the generated config: {out}");
    let ng = Command::new(nginx)
        .args(["-c", s(&conf)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ng = Proc(ng);
    for _ in 0..400 {
        // Listening, and it is our nginx that listens (not a server that holds the port).
        if let Some(st) = ng.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(conf.with_file_name("error.log")).unwrap_or_default();
            panic!("nginx exited with {st}: {log}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(100));
            if ng.0.try_wait().unwrap().is_none() {
                return ng;
            }
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("nginx did not listen on 127.0.0.1:{listen}");
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
