//! The rustls side: the server chain (leaf + CA) and client verification against our CA.
//! Revocation is checked per request against the registry and the CRL (`crl.rs`), so that a
//! revoked board gets a 403 script that says so instead of a bare TLS alert.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{routes, ConnInfo, Shared, Watcher};
use crate::error::{Error, Result};
use crate::state::StateDir;
use crate::types::Fingerprint;

fn build(state: &StateDir) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(state.server_cert())
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| Error::crypto(format!("cannot read {}", state.server_cert().display()), e))?;
    let key = PrivateKeyDer::from_pem_file(state.server_key())
        .map_err(|e| Error::crypto(format!("cannot read {}", state.server_key().display()), e))?;
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
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::crypto("server certificate and key do not match", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
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

/// The acceptor of the mTLS listener.
pub(crate) fn acceptor(state: &StateDir) -> Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(build(state)?)))
}

pub(crate) async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    watcher: Watcher,
) {
    let timeout = shared.opts.timeout;
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            super::log::tls_failure(peer, &explain(&e));
            return;
        }
        Err(_) => {
            super::log::tls_failure(peer, &format!("handshake timed out after {timeout:?}"));
            return;
        }
    };
    let fingerprint_sha1 = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| Fingerprint::sha1(leaf).to_string());
    let info = ConnInfo {
        peer: Some(peer),
        fingerprint_sha1,
        tls: true,
    };
    routes::serve_http(hyper_util::rt::TokioIo::new(stream), info, shared, watcher).await;
}
