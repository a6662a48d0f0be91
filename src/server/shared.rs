//! The types every part of `serve` shares: how it runs, its state, and what a connection
//! knows of its client. Declared here, beneath every module that uses them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::cached::Cached;
use crate::store::config::ConfigCache;
use crate::store::registry::Registry;
use crate::types::{Fingerprint, San};

use super::log::TlsSession;
use super::{crl, files, guard, metrics, one_time::OneTimeStore};

/// Where the boards' TLS ends.
#[derive(Clone, Debug)]
pub enum Front {
    /// `serve` does mutual TLS itself, on this address.
    Mtls {
        /// The HTTPS listener.
        https: SocketAddr,
    },
    /// A TLS-terminating proxy (nginx, for iPXE older than 2024) passes the client
    /// certificate's facts in headers over plain HTTP.
    Proxy {
        /// Peers whose X-SSL-Client-* headers are believed.
        trusted: Vec<IpAddr>,
        /// What the proxy must send as `X-IPXE-CA-Proxy-Secret`.
        secret: String,
    },
}

/// Where `serve` listens for the boards' consoles (iPXE's `syslogs`, TLS with the board's
/// certificate).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleListen {
    /// Not at all.
    Off,
    /// Here, as the operator asked: a port in use is an error.
    At(SocketAddr),
    /// The HTTPS listener's address with `config.toml`'s console port; a port in use is a
    /// warning (boot scripts are served all the same), and off behind a proxy.
    Default,
}

/// How `serve` runs.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Who terminates the boards' TLS.
    pub front: Front,
    /// Plain-HTTP listener (files; in proxy mode also the scripts).
    pub http: SocketAddr,
    /// Where the boards' consoles are received.
    pub console: ConsoleListen,
    /// Root of `/files/`.
    pub files: PathBuf,
    /// Lifetime of one-time URLs.
    pub one_time_ttl: Duration,
    /// Cap on concurrent connections per listener.
    pub max_connections: usize,
    /// Cap on concurrent connections from one address, per listener.
    pub max_per_ip: usize,
    /// TLS handshake and request-header timeout.
    pub timeout: Duration,
    /// TLS sessions kept for resumption by session ID (no tickets are issued).
    pub tls_sessions: usize,
    /// Where Prometheus scrapes `/metrics` (keep it off the boards' network).
    pub metrics: Option<SocketAddr>,
    /// Threads running the event loop. One per core serves the most boards at once; fewer
    /// spend less CPU per boot on a host that does other work (fewer wake-ups: one thread on
    /// 2 shared cores spent a fifth to a quarter less per ECDSA boot than two).
    pub workers: usize,
}

impl ServeOptions {
    /// Whether `ip` is a `--trusted-proxy` in proxy mode (::ffff:127.0.0.1 is 127.0.0.1: a
    /// dual-stack listener sees mapped addresses).
    pub(crate) fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match &self.front {
            Front::Proxy { trusted, .. } => trusted.iter().any(|t| t.to_canonical() == ip),
            Front::Mtls { .. } => false,
        }
    }
}

/// The earliest expiry of each kind (`board`, `server`, …), in seconds from now.
pub(crate) type Earliest = Vec<(&'static str, i64)>;

/// Each server certificate with the names it carries, or why they cannot be read.
pub(crate) type ServerNames = std::result::Result<Vec<(PathBuf, Vec<San>)>, String>;

/// The server certificates' names as they are on disk now.
pub(crate) fn read_server_names(state: &crate::store::state::StateDir) -> ServerNames {
    crate::health::server_cert_names(state).map_err(|e| e.to_string())
}

/// Shared state of a running server.
pub(crate) struct Shared {
    /// The boards and the state dir they live in.
    pub registry: Registry,
    /// `config.toml`, read again when it changes.
    pub config: ConfigCache,
    /// The names each server certificate carries, read again only when one changes: an edit
    /// of `config.toml` is checked against them without reading certificates in a request.
    pub server_names: Cached<ServerNames>,
    /// The boot files folder, checked again whenever its path names another one.
    pub files: Arc<files::FilesRoot>,
    pub one_time: OneTimeStore,
    pub revoked: crl::RevokedSerials,
    /// Profiles and secret templates, compiled once per version of their file.
    pub templates: crate::render::Templates,
    /// Each board's script as last rendered, while nothing it came from changed.
    pub scripts: crate::render::Rendered,
    /// Board files and secrets, read once per version of their files.
    pub boards: crate::store::registry::BoardCache,
    /// What changed under the state directory since a cache read it (inotify).
    pub changes: crate::store::watch::Changes,
    /// Each board's recent requests.
    pub journal: crate::store::history::Journal,
    pub metrics: metrics::Metrics,
    /// Each board's budget of console lines.
    pub consoles: guard::LineBudgets,
    /// The earliest expiry of each kind, as the last scrape read it, and when.
    pub expiry: std::sync::Mutex<Option<(std::time::Instant, Earliest)>>,
    pub opts: ServeOptions,
}

/// What identifies the client on one connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnInfo {
    pub peer: Option<SocketAddr>,
    /// SHA-1 of the verified client certificate (TLS), when there is one.
    pub fingerprint_sha1: Option<Fingerprint>,
    /// Whether this connection came through the mTLS listener.
    pub tls: bool,
    /// How the TLS connection was made, for the access log.
    pub session: Option<TlsSession>,
    /// What the connection proves itself with, to leave the unproven budget.
    pub proof: Option<Arc<guard::Proof>>,
}

/// hyper's handle on a connection, for a graceful shutdown.
pub(crate) type Watcher = hyper_util::server::graceful::Watcher;
