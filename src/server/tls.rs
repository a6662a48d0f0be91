//! The rustls side: server chain, client verification against our CA and CRL, and reloading
//! the CRL when `revoke` rewrites it (no restart needed).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::FromDer;

use super::{routes, ConnInfo, Shared, Watcher};
use crate::error::{Error, Result};
use crate::state::StateDir;
use crate::types::Fingerprint;

pub(crate) struct TlsState {
    state: StateDir,
    current: Mutex<(Option<SystemTime>, TlsAcceptor)>,
}

fn crl_mtime(state: &StateDir) -> Option<SystemTime> {
    std::fs::metadata(state.crl())
        .and_then(|m| m.modified())
        .ok()
}

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
    let mut crls = Vec::new();
    if state.crl().exists() {
        for c in CertificateRevocationListDer::pem_file_iter(state.crl())
            .map_err(|e| Error::crypto(format!("cannot read {}", state.crl().display()), e))?
        {
            crls.push(c.map_err(|e| Error::crypto("CRL", e))?);
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
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

impl TlsState {
    pub(crate) fn new(state: &StateDir) -> Result<TlsState> {
        crl_expiry_warning(state);
        let mtime = crl_mtime(state);
        let acceptor = TlsAcceptor::from(Arc::new(build(state)?));
        Ok(TlsState {
            state: state.clone(),
            current: Mutex::new((mtime, acceptor)),
        })
    }

    /// The acceptor, rebuilt when the CRL changed on disk (one `stat` per connection).
    fn acceptor(&self) -> TlsAcceptor {
        let mtime = crl_mtime(&self.state);
        let mut cur = match self.current.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if mtime != cur.0 {
            match build(&self.state) {
                Ok(c) => {
                    *cur = (mtime, TlsAcceptor::from(Arc::new(c)));
                    eprintln!("ipxe-ca: reloaded CRL {}", self.state.crl().display());
                }
                Err(e) => eprintln!("ipxe-ca: keeping the previous TLS config: {e}"),
            }
        }
        cur.1.clone()
    }
}

/// nginx (proxy mode, or a second front) refuses every client once `ssl_crl` has expired:
/// say so at start while there is time to act.
fn crl_expiry_warning(state: &StateDir) {
    if let Some(days) = crl_days_left(state).filter(|d| *d < 30) {
        eprintln!(
            "ipxe-ca: warning: {} expires in {days} days: run `ipxe-ca crl` (nginx refuses every client on an expired CRL)",
            state.crl().display()
        );
    }
}

/// Whole days until the CRL's nextUpdate, if there is a readable CRL with one.
fn crl_days_left(state: &StateDir) -> Option<i64> {
    let der = CertificateRevocationListDer::from_pem_file(state.crl()).ok()?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).ok()?;
    let next = crl.next_update()?.to_datetime();
    Some((next - time::OffsetDateTime::now_utc()).whole_days())
}

pub(crate) async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Arc<TlsState>,
    shared: Arc<Shared>,
    watcher: Watcher,
) {
    let acceptor = tls.acceptor();
    let timeout = shared.opts.timeout;
    let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            super::log::tls_failure(peer, &e.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_days_left_reads_next_update() {
        let t = tempfile::tempdir().unwrap();
        let state = StateDir::new(t.path());
        assert_eq!(crl_days_left(&state), None);
        let issued = crate::ca::create_ca("t", crate::ca::KeySize::Rsa2048, 30).unwrap();
        let ca = crate::ca::Ca::load(
            issued.cert_pem.as_bytes(),
            issued.key_pem.unwrap().as_bytes(),
        )
        .unwrap();
        let crl = ca.crl(&[], 1, 5).unwrap();
        crate::state::write_atomic(&state.crl(), crl.as_bytes(), 0o644).unwrap();
        assert_eq!(crl_days_left(&state), Some(4));
    }
}
