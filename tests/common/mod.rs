//! Helpers shared by the integration tests and the benchmarks: the binary under test, free
//! ports, waiting for a listener, child processes that never outlive their owner.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Path of the binary under test (built once by cargo for all tests and benches).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ipxe-ca"))
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Ports handed out: below Linux's ephemeral range (32768–60999), so that no client socket
/// of another test takes one between `free_port` and the server's bind, and each port once per
/// process, so that two tests never get the same one. The start depends on the pid, so that
/// the bench and test binaries (and two suites) start apart.
static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A TCP port on 127.0.0.1 that no test of this process has had and nothing listens on
/// (0 if none could be found: the caller's bind then fails loudly).
pub fn free_port() -> u16 {
    use std::sync::atomic::Ordering;
    let span = PORTS.end - PORTS.start;
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id() * 97) % span + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let port = (PORTS.start + n % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    0
}

/// Wait until something listens on 127.0.0.1:`port`; an error after `limit`.
pub fn wait_port(port: u16, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!(
        "nothing listens on 127.0.0.1:{port} after {limit:?}"
    ))
}

/// A child process stopped on drop: SIGTERM first, so that nginx and gunicorn stop their
/// workers too (SIGKILL to the master alone leaves nginx's workers running), then SIGKILL.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        use rustix::process::{kill_process, Pid, Signal};
        if let Some(pid) = Pid::from_raw(self.0.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a large file has a meaningful hash.
pub fn write_random(path: &std::path::Path, len: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}
