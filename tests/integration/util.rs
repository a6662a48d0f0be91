//! Helpers shared by the integration tests: a fresh state dir per test, running the real
//! binary and external checkers, free ports.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Path of the binary under test (built once by cargo for all tests).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ipxe-ca"))
}

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
        lab.ok(&["init", "--san", "IP:127.0.0.1", "--san", "IP:10.0.2.2", "--san", "DNS:localhost"]);
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

    /// Every file under the state dir with its content (the lock file excepted).
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
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), b"<dir>".to_vec());
            snap(root, &p, out);
        } else if p.file_name().unwrap() != ".lock" {
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
        }
    }
}

/// Run an external tool, returning (success, stdout+stderr).
pub fn tool(prog: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(prog)
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

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
