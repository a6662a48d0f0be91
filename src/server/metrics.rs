//! Prometheus metrics, served on their own listener (`serve --metrics ADDR`, loopback by
//! default in the systemd unit), never on the boards' ports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use super::verdict::Verdict;

/// What a request asked for (the `route` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Route {
    Boot,
    Files,
    Secret,
    Other,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Boot => "boot",
            Route::Files => "files",
            Route::Secret => "secret",
            Route::Other => "other",
        }
    }
}

/// Counters and gauges of a running server.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(Route, &'static str), u64>>,
    handshakes: Mutex<BTreeMap<(&'static str, &'static str, bool), u64>>,
    handshake_failures: Mutex<BTreeMap<&'static str, u64>>,
    refused_connections: Mutex<BTreeMap<&'static str, u64>>,
    pub file_bytes: AtomicU64,
    /// Where frames of boot files were read from: shared with the responses' bodies, which
    /// outlive a request's handler.
    pub file_reads: std::sync::Arc<FileReads>,
    pub open_https: AtomicI64,
    pub open_http: AtomicI64,
    pub open_console: AtomicI64,
    console_connections: Mutex<BTreeMap<&'static str, u64>>,
    console_lines: AtomicU64,
    /// Lines dropped: the board's budget spent (`cut`) or the history writer far behind.
    console_cut: AtomicU64,
    console_unwritten: AtomicU64,
}

/// Where boot-file frames came from (the `from` label of `ipxe_ca_file_reads_total`).
#[derive(Default)]
pub(crate) struct FileReads {
    pub page_cache: AtomicU64,
    /// Page-cache misses.
    pub storage: AtomicU64,
    /// Read on a thread without asking: the file system cannot say what is cached.
    pub unchecked: AtomicU64,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(k)
        .or_default() += 1;
}

impl Metrics {
    pub fn request(&self, route: Route, verdict: Verdict) {
        bump(&self.requests, (route, verdict.name()));
    }

    pub fn handshake(
        &self,
        version: Option<&'static str>,
        suite: Option<&'static str>,
        resumed: bool,
    ) {
        bump(
            &self.handshakes,
            (
                version.unwrap_or("unknown"),
                suite.unwrap_or("unknown"),
                resumed,
            ),
        );
    }

    pub fn handshake_failure(&self, reason: &'static str) {
        bump(&self.handshake_failures, reason);
    }

    /// A console connection accepted, or refused (why).
    pub fn console_connection(&self, outcome: &'static str) {
        bump(&self.console_connections, outcome);
    }

    /// A console line received; `kept`: queued for the board's history.
    pub fn console_line(&self, kept: bool) {
        self.console_lines.fetch_add(1, Relaxed);
        if !kept {
            self.console_unwritten.fetch_add(1, Relaxed);
        }
    }

    /// A board's console cut at its budget.
    pub fn console_cut(&self) {
        self.console_cut.fetch_add(1, Relaxed);
    }

    pub fn refused_connection(&self, reason: &'static str) {
        bump(&self.refused_connections, reason);
    }

    /// The text exposition format (0.0.4).
    pub fn render(
        &self,
        one_time: (u64, u64, u64, usize),
        expiry: &[(&'static str, i64)],
    ) -> String {
        let mut o = String::new();

        head(
            &mut o,
            "ipxe_ca_requests_total",
            "counter",
            "Requests answered, by route and outcome.",
        );
        let requests: BTreeMap<(Route, &str), u64> = lock(&self.requests);
        for route in [Route::Boot, Route::Files, Route::Secret] {
            for v in Verdict::ALL {
                let n = requests.get(&(route, v.name())).copied().unwrap_or(0);
                let _ = writeln!(
                    o,
                    "ipxe_ca_requests_total{{route=\"{}\",outcome=\"{}\"}} {n}",
                    route.name(),
                    v.name()
                );
            }
        }
        for ((route, v), n) in requests.iter().filter(|((r, _), _)| *r == Route::Other) {
            let _ = writeln!(
                o,
                "ipxe_ca_requests_total{{route=\"{}\",outcome=\"{v}\"}} {n}",
                route.name()
            );
        }

        head(
            &mut o,
            "ipxe_ca_tls_handshakes_total",
            "counter",
            "Completed TLS handshakes, by version, suite and resumption.",
        );
        let hs: BTreeMap<(&str, &str, bool), u64> = lock(&self.handshakes);
        for ((version, suite, resumed), n) in &hs {
            let _ = writeln!(o, "ipxe_ca_tls_handshakes_total{{version=\"{version}\",suite=\"{suite}\",resumed=\"{resumed}\"}} {n}");
        }

        head(
            &mut o,
            "ipxe_ca_tls_handshake_failures_total",
            "counter",
            "Failed TLS handshakes, by reason.",
        );
        let hf: BTreeMap<&str, u64> = lock(&self.handshake_failures);
        for reason in FAILURES {
            let n = hf.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "ipxe_ca_tls_handshake_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }

        head(
            &mut o,
            "ipxe_ca_refused_connections_total",
            "counter",
            "Connections closed before a request, by reason.",
        );
        let rc: BTreeMap<&str, u64> = lock(&self.refused_connections);
        for reason in ["per-address-cap", "anonymous-budget"] {
            let n = rc.get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "ipxe_ca_refused_connections_total{{reason=\"{reason}\"}} {n}"
            );
        }

        let (issued, used, expired, outstanding) = one_time;
        for (name, help, n) in [
            (
                "ipxe_ca_one_time_urls_issued_total",
                "One-time secret URLs handed out.",
                issued,
            ),
            (
                "ipxe_ca_one_time_urls_used_total",
                "One-time secret URLs fetched in time.",
                used,
            ),
            (
                "ipxe_ca_one_time_urls_expired_total",
                "One-time secret URLs that expired unused (or were fetched late).",
                expired,
            ),
        ] {
            head(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {n}");
        }
        head(
            &mut o,
            "ipxe_ca_one_time_urls_outstanding",
            "gauge",
            "One-time secret URLs not yet used or purged.",
        );
        let _ = writeln!(o, "ipxe_ca_one_time_urls_outstanding {outstanding}");

        head(
            &mut o,
            "ipxe_ca_file_sent_bytes_total",
            "counter",
            "Bytes of boot files sent (both ports).",
        );
        let _ = writeln!(
            o,
            "ipxe_ca_file_sent_bytes_total {}",
            self.file_bytes.load(Relaxed)
        );

        head(
            &mut o,
            "ipxe_ca_file_reads_total",
            "counter",
            "Frames of boot files read, by where from: the page cache (memory), storage \
(the files no longer fit in memory: boots wait for the disk), or unchecked (a file system that \
cannot say, such as NFS: every frame is read on a thread).",
        );
        for (from, n) in [
            ("page_cache", &self.file_reads.page_cache),
            ("storage", &self.file_reads.storage),
            ("unchecked", &self.file_reads.unchecked),
        ] {
            let _ = writeln!(
                o,
                "ipxe_ca_file_reads_total{{from=\"{from}\"}} {}",
                n.load(Relaxed)
            );
        }

        head(
            &mut o,
            "ipxe_ca_open_connections",
            "gauge",
            "Connections open now, by listener.",
        );
        let _ = writeln!(
            o,
            "ipxe_ca_open_connections{{listener=\"https\"}} {}",
            self.open_https.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "ipxe_ca_open_connections{{listener=\"http\"}} {}",
            self.open_http.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "ipxe_ca_open_connections{{listener=\"console\"}} {}",
            self.open_console.load(Relaxed)
        );

        head(
            &mut o,
            "ipxe_ca_console_connections_total",
            "counter",
            "Boards' console connections, accepted or refused (and why).",
        );
        let mut consoles = lock(&self.console_connections);
        // Listed even at zero, as alerts on it want.
        consoles.entry("accepted").or_insert(0);
        for (outcome, n) in consoles {
            let _ = writeln!(
                o,
                "ipxe_ca_console_connections_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        for (name, help, n) in [
            (
                "ipxe_ca_console_lines_total",
                "Lines boards' consoles sent (kept in their history).",
                &self.console_lines,
            ),
            (
                "ipxe_ca_console_cut_total",
                "Boards' console connections closed at their budget of lines.",
                &self.console_cut,
            ),
            (
                "ipxe_ca_console_unwritten_total",
                "Console lines not kept: the history writer was far behind.",
                &self.console_unwritten,
            ),
        ] {
            head(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {}", n.load(Relaxed));
        }

        head(&mut o, "ipxe_ca_expiry_remaining_seconds", "gauge", "Seconds until the earliest expiry of each kind (board, server, ca, codesign, crl); negative once expired.");
        for (kind, secs) in expiry {
            let _ = writeln!(
                o,
                "ipxe_ca_expiry_remaining_seconds{{kind=\"{kind}\"}} {secs}"
            );
        }
        o
    }
}

/// Handshake failure reasons (the `reason` label), listed even at zero.
pub(crate) const FAILURES: [&str; 6] = [
    "no-common-suite",
    "bad-certificate",
    "timeout",
    "eof",
    "protocol",
    "other",
];

/// The reason label of a failed handshake.
pub(crate) fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|x| x.downcast_ref::<E>()) {
        Some(E::PeerIncompatible(_)) => "no-common-suite",
        Some(E::InvalidCertificate(_) | E::NoCertificatesPresented) => "bad-certificate",
        Some(E::AlertReceived(a)) if format!("{a:?}").contains("Certificate") => "bad-certificate",
        Some(_) => "protocol",
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "other",
    }
}

fn lock<K: Ord + Clone>(m: &Mutex<BTreeMap<K, u64>>) -> BTreeMap<K, u64> {
    m.lock().map(|g| g.clone()).unwrap_or_default()
}

fn head(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}
