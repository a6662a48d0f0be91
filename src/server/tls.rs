//! The rustls side: the server chain (leaf + CA) and client verification against our CA.
//! Revocation is checked per request against the registry and the CRL (`crl.rs`), so that a
//! revoked board gets a 403 script that says so instead of a bare TLS alert.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::guard::Stalled;
use super::log::TlsSession;
use super::routes;
use super::shared::{ConnInfo, Shared, Watcher};
use crate::error::{Error, Result};
use crate::store::cached::{Cached, Change, Look};
use crate::store::state::{Key, StateDir};
use crate::types::Fingerprint;

/// A chain and its key, ready for rustls.
fn certified(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::crypto(format!("cannot read {}", cert.display()), e))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::crypto(format!("cannot read {}", key.display()), e))?;
    let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(|e| Error::crypto(format!("cannot use {}", key.display()), e))?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(|e| {
        Error::crypto(
            format!("{} and {} do not match", cert.display(), key.display()),
            e,
        )
    })?;
    Ok(Arc::new(ck))
}

/// ECDSA for clients that offer it (iPXE 2.0: a cheaper signature per handshake), RSA for the
/// rest (iPXE before 2.0 verifies only RSA).
#[derive(Debug)]
struct ByClientHello {
    rsa: Arc<CertifiedKey>,
    ecdsa: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ByClientHello {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // rustls hands over only the signature schemes usable with a cipher suite both sides
        // have, so P-256 here means the client can take an ECDSA suite too.
        if let Some(ec) = &self.ecdsa {
            if hello
                .signature_schemes()
                .contains(&rustls::SignatureScheme::ECDSA_NISTP256_SHA256)
            {
                return Some(ec.clone());
            }
        }
        Some(self.rsa.clone())
    }
}

pub(crate) fn build(state: &StateDir, sessions: usize) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let rsa = certified(&state.server_cert(), &state.key_file(Key::ServerRsa))?;
    let ecdsa = if state.server_ecdsa_cert().exists() {
        Some(certified(
            &state.server_ecdsa_cert(),
            &state.key_file(Key::ServerEcdsa),
        )?)
    } else {
        super::log::say(&format!(
            "ipxe-ca: warning: no ECDSA server certificate ({}): every handshake pays an RSA \
signature; run `ipxe-ca server-cert` to add it",
            state.server_ecdsa_cert().display()
        ));
        None
    };
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(state.ca_cert())
        .map_err(|e| Error::crypto(format!("cannot read {}", state.ca_cert().display()), e))?
    {
        let ca = ca.map_err(|e| Error::crypto("CA certificate", e))?;
        roots
            .add(ca)
            .map_err(|e| Error::crypto("CA certificate", e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::crypto("cannot build client verifier", e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| Error::crypto("TLS versions", e))?
        .with_client_cert_verifier(Arc::new(super::verified::Remembering::new(verifier)))
        .with_cert_resolver(Arc::new(ByClientHello { rsa, ecdsa }));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption sized for a farm. Revocation is checked per request anyway.
    // Session IDs only: iPXE resumes only while another connection of the session is open
    // (it keeps one alive per boot instead), and encrypting a ticket on every full handshake
    // cost about 7 % of the server's CPU per boot (callgrind).
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(sessions.max(1));
    Ok(config)
}

/// A failed handshake in words an operator can act on.
fn explain(e: &std::io::Error) -> String {
    use rustls::PeerIncompatible as P;
    let rustls_error = e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::PeerIncompatible(
            P::NoCipherSuitesInCommon | P::NoKxGroupsInCommon | P::Tls12NotOffered,
        )) => format!(
            "{e}: the client offers no TLS 1.2 ECDHE suite with AES-GCM; iPXE older than 2024 \
cannot talk to ipxe-ca directly: put nginx in front (`ipxe-ca nginx-config`, `serve --behind-proxy`)"
        ),
        _ => e.to_string(),
    }
}

/// How often the certificate files are looked at (a `stat` each), at most.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The acceptor of the mTLS listener, rebuilt when `server-cert` rotates the server
/// certificates or the CA bundle changes, so that no restart (and no dropped connection) is
/// needed: open connections keep the configuration they started with. A half-written
/// rotation (key new, certificate old) fails to load and keeps the acceptor in force until
/// the next change.
pub(crate) struct Reloading {
    state: StateDir,
    sessions: usize,
    current: Cached<TlsAcceptor>,
}

impl Reloading {
    pub(crate) fn new(state: &StateDir, sessions: usize) -> Result<Reloading> {
        let files = vec![
            state.ca_cert(),
            state.server_cert(),
            state.key_file(Key::ServerRsa),
            state.server_ecdsa_cert(),
            state.key_file(Key::ServerEcdsa),
        ];
        let current = Cached::new(files, || {
            build(state, sessions).map(|c| TlsAcceptor::from(Arc::new(c)))
        })?;
        Ok(Reloading {
            state: state.clone(),
            sessions,
            current,
        })
    }

    /// The acceptor for a new connection.
    pub(crate) fn current(&self) -> TlsAcceptor {
        let (acceptor, change) = self.current.get(Look::Every(RECHECK), |_| {
            build(&self.state, self.sessions).map(|c| Some(TlsAcceptor::from(Arc::new(c))))
        });
        match change {
            Change::Same => {}
            Change::Taken => {
                super::log::say("ipxe-ca: reloaded the server certificates and CA bundle")
            }
            Change::Kept(e) => super::log::say(&format!(
                "ipxe-ca: warning: kept the previous server certificates: {e}"
            )),
        }
        TlsAcceptor::clone(&acceptor)
    }
}

/// TLS bytes a connection may have queued for the socket.
pub(crate) const SEND_BUFFER: usize = 256 * 1024;

/// What a connection on a TLS listener is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Boot scripts and files (HTTP).
    Boot,
    /// A board's console lines.
    Console,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_tls(
    stream: Stalled<TcpStream>,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    watcher: Watcher,
    anonymous: Arc<tokio::sync::Semaphore>,
    proof: Arc<super::guard::Proof>,
    purpose: Purpose,
) {
    let timeout = shared.opts.timeout;
    let mut stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared
                .metrics
                .handshake_failure(super::metrics::failure_reason(&e));
            super::log::tls_failure(peer, &explain(&e));
            return;
        }
        Err(_) => {
            shared.metrics.handshake_failure("timeout");
            super::log::tls_failure(peer, &format!("handshake timed out after {timeout:?}"));
            return;
        }
    };
    if !proof.prove().await {
        shared.metrics.refused_connection("connection-budget");
        super::log::tls_failure(peer, "every connection slot is held: closed");
        return;
    }
    let conn = stream.get_ref().1;
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    if purpose == Purpose::Console {
        let fp = leaf.map(|l| Fingerprint::sha1(l));
        return super::console::serve(stream, peer, fp, shared).await;
    }
    let fingerprint_sha1 = leaf.map(|leaf| Fingerprint::sha1(leaf));
    // A kernel goes out in writes of up to this much TLS at a time (rustls' default, 64 KiB,
    // costs four times the syscalls); small answers never fill it.
    stream.get_mut().1.set_buffer_limit(Some(SEND_BUFFER));
    let conn = stream.get_ref().1;
    // Without a certificate the answer is a 403 script: from a budget of its own.
    let _anonymous = match &fingerprint_sha1 {
        Some(_) => None,
        None => match anonymous.try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                shared.metrics.refused_connection("anonymous-budget");
                super::log::tls_failure(
                    peer,
                    "too many connections without a client certificate: closed",
                );
                return;
            }
        },
    };
    let info = ConnInfo {
        peer: Some(peer),
        fingerprint_sha1,
        tls: true,
        session: Some(TlsSession {
            version: conn.protocol_version().and_then(|v| v.as_str()),
            suite: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str()),
            group: conn
                .negotiated_key_exchange_group()
                .and_then(|g| g.name().as_str()),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }),
        proof: Some(proof),
    };
    if let Some(s) = &info.session {
        shared.metrics.handshake(s.version, s.suite, s.resumed);
    }
    routes::serve_http(hyper_util::rt::TokioIo::new(stream), info, shared, watcher).await;
}
