//! The load generator: boards as iPXE makes its requests (TLS 1.2, a board certificate, RSA
//! PKCS#1 v1.5 CertificateVerify), driven at a concurrency, with latencies and errors.

use super::*;

/// A lab with a CA for 127.0.0.1 and `n` boards whose certificates share one key (signed from
/// one CSR: certificates and fingerprints differ, key generation is skipped).
pub(crate) fn lab_with_boards(dir: &Path, n: usize) -> R<(PathBuf, PathBuf, Vec<PathBuf>)> {
    let state = dir.join("state");
    run(Command::new(bin()).args(["--dir", s(&state), "init", "--san", "IP:127.0.0.1"]))?;
    let key = dir.join("client.key");
    let csr = dir.join("client.csr");
    run(Command::new("openssl").args([
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        s(&key),
        "-subj",
        "/CN=bench",
        "-out",
        s(&csr),
    ]))?;
    let csr_der = std::fs::read(&csr)?;
    let lab = ipxe_ca::Lab::open(&state);
    let mut certs = Vec::new();
    for i in 0..n {
        let name: ipxe_ca::types::BoardName = format!("b{i:05}").parse()?;
        let opts = ipxe_ca::lab::BoardOptions {
            secrets: vec!["s3=bench-secret".parse()?],
            ..Default::default()
        };
        lab.sign(&name, &csr_der, &opts)?;
        certs.push(lab.registry().cert_file(&name));
    }
    Ok((state, key, certs))
}

// ---------------------------------------------------------------- serve

pub(crate) struct Load {
    /// CPU ms per good boot the load generator itself spent (it shares the cores).
    pub(crate) client_cpu_ms: f64,
    pub(crate) boots_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: usize,
    pub(crate) ok: usize,
}

/// What a booting iPXE does: new TCP + TLS 1.2 with a board certificate (CertificateVerify in
/// RSA PKCS#1 v1.5 over SHA-256), no resumption, `GET /boot.ipxe`, expect 200 and `#!ipxe`. `ipxe2`: offers what iPXE 2.0 offers
/// (ECDHE-ECDSA first, then ECDHE-RSA; X25519 and P-256); otherwise only ECDHE-RSA over
/// X25519, like iPXE before 2.0.
pub(crate) fn client_configs(
    ca: &Path,
    key: &Path,
    certs: &[PathBuf],
    ipxe2: bool,
) -> R<Vec<Arc<rustls::ClientConfig>>> {
    let offer = Offer::new(ca, ipxe2)?;
    let key = offer.key(key)?;
    certs.iter().map(|c| offer.board(c, key.clone())).collect()
}

/// What a booting iPXE offers and trusts.
pub(crate) struct Offer {
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
    pub(crate) roots: rustls::RootCertStore,
}

impl Offer {
    pub(crate) fn new(ca: &Path, ipxe2: bool) -> R<Offer> {
        use rustls::crypto::aws_lc_rs as p;
        let provider = Arc::new(if ipxe2 {
            rustls::crypto::CryptoProvider {
                cipher_suites: vec![
                    p::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                    p::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                ],
                kx_groups: vec![p::kx_group::X25519, p::kx_group::SECP256R1],
                ..p::default_provider()
            }
        } else {
            rustls::crypto::CryptoProvider {
                cipher_suites: vec![p::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
                kx_groups: vec![p::kx_group::X25519],
                ..p::default_provider()
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)? {
            roots.add(c?)?;
        }
        Ok(Offer { provider, roots })
    }

    /// A board key, used as iPXE uses it.
    pub(crate) fn key(&self, key: &Path) -> R<Arc<dyn rustls::sign::SigningKey>> {
        let key = self
            .provider
            .key_provider
            .load_private_key(PrivateKeyDer::from_pem_file(key)?)?;
        Ok(Arc::new(LikeIpxe(key)))
    }

    /// One board: its certificate with `key`, TLS 1.2, no resumption.
    pub(crate) fn board(
        &self,
        cert: &Path,
        key: Arc<dyn rustls::sign::SigningKey>,
    ) -> R<Arc<rustls::ClientConfig>> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert)?.collect::<Result<_, _>>()?;
        let board = BoardCert(Arc::new(rustls::sign::CertifiedKey::new(chain, key)));
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(Arc::new(board));
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(cfg))
    }
}

/// A board's key as iPXE uses it: its CertificateVerify is RSA PKCS#1 v1.5 over the handshake
/// digest (SHA-256 with the suites offered here), never PSS, which rustls would pick.
#[derive(Debug)]
pub(crate) struct LikeIpxe(pub(crate) Arc<dyn rustls::sign::SigningKey>);

impl rustls::sign::SigningKey for LikeIpxe {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        let only = rustls::SignatureScheme::RSA_PKCS1_SHA256;
        if offered.contains(&only) {
            self.0.choose_scheme(&[only])
        } else {
            None
        }
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.0.algorithm()
    }
}

/// One board's certificate and key, offered whatever the server asks for.
#[derive(Debug)]
pub(crate) struct BoardCert(pub(crate) Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for BoardCert {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

pub(crate) async fn one_boot(cfg: Arc<rustls::ClientConfig>, port: u16) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: iPXE/bench\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(2048);
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.1 200") && text.contains("#!ipxe") {
        Ok(())
    } else {
        Err(text.lines().next().unwrap_or("empty response").to_string())
    }
}

/// Read and drop `n` bytes.
pub(crate) async fn skip<S: tokio::io::AsyncRead + Unpin>(
    r: &mut S,
    sink: &mut [u8],
    n: u64,
) -> Result<(), String> {
    let mut left = n;
    while left > 0 {
        let want = left.min(sink.len() as u64) as usize;
        let got = r.read(&mut sink[..want]).await.map_err(|e| e.to_string())?;
        if got == 0 {
            return Err("connection closed in a body".to_string());
        }
        left -= got as u64;
    }
    Ok(())
}

/// One response on a kept-alive connection: the status line, and the body's length (read and
/// dropped), by Content-Length or chunked.
pub(crate) async fn response<S: tokio::io::AsyncBufRead + Unpin>(
    r: &mut S,
) -> Result<(String, u64), String> {
    use tokio::io::AsyncBufReadExt;
    let e = |e: std::io::Error| e.to_string();
    let mut status = String::new();
    r.read_line(&mut status).await.map_err(e)?;
    let (mut len, mut chunked) = (None, false);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.map_err(e)? == 0 {
            return Err("connection closed in the headers".into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse::<u64>().ok();
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut sink = vec![0u8; 64 << 10];
    let mut total = 0;
    if chunked {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.map_err(e)?;
            let n = u64::from_str_radix(line.trim(), 16).map_err(|x| x.to_string())?;
            skip(r, &mut sink, n + 2).await?;
            total += n;
            if n == 0 {
                break;
            }
        }
    } else {
        let n = len.ok_or("no Content-Length")?;
        skip(r, &mut sink, n).await?;
        total = n;
    }
    Ok((status.trim_end().to_string(), total))
}

/// A board's kept-alive connection to `serve` on loopback: TCP without Nagle, then TLS.
pub(crate) async fn connect(
    cfg: Arc<rustls::ClientConfig>,
    port: u16,
) -> Result<tokio::io::BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tokio::io::BufReader::with_capacity(64 << 10, tls))
}

/// A whole boot as a real iPXE makes it: one TLS connection kept alive for the script and
/// then each file (kernel, initrd), each checked for status and size.
pub(crate) async fn full_boot(
    cfg: Arc<rustls::ClientConfig>,
    port: u16,
    files: &[(String, u64)],
) -> Result<(), String> {
    let mut tls = connect(cfg, port).await?;
    let mut paths = vec![("/boot.ipxe".to_string(), None)];
    paths.extend(files.iter().map(|(p, n)| (p.clone(), Some(*n))));
    for (path, want) in paths {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: iPXE/bench\r\n\r\n");
        let w = tls.get_mut();
        w.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        w.flush().await.map_err(|e| e.to_string())?;
        let (status, got) = response(&mut tls).await?;
        if !status.starts_with("HTTP/1.1 200") || want.is_some_and(|w| w != got) {
            return Err(format!("{path}: {status}, {got} bytes"));
        }
    }
    Ok(())
}

pub(crate) fn load(
    cfgs: &[Arc<rustls::ClientConfig>],
    port: u16,
    conc: usize,
    dur: Duration,
) -> Load {
    load_boots(cfgs, port, conc, dur, None)
}

/// `files`: a full boot (script, then these files on the same kept-alive connection, as a real
/// iPXE fetches them); None: the script only.
pub(crate) fn load_boots(
    cfgs: &[Arc<rustls::ClientConfig>],
    port: u16,
    conc: usize,
    dur: Duration,
    files: Option<Arc<Vec<(String, u64)>>>,
) -> Load {
    let cfgs = cfgs.to_vec();
    drive(conc, dur, move |i| {
        let cfg = cfgs[i % cfgs.len()].clone();
        let files = files.clone();
        async move {
            match &files {
                None => one_boot(cfg, port).await,
                Some(f) => full_boot(cfg, port, f).await,
            }
        }
    })
}

/// `conc` clients, each booting again as soon as its boot ends, until `dur` is over; boot `i`
/// of client `w` is `boot(w + i × conc)`, so consecutive boots take consecutive boards.
pub(crate) fn drive<F, Fut>(conc: usize, dur: Duration, boot: F) -> Load
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => {
            return Load {
                client_cpu_ms: 0.0,
                boots_per_s: 0.0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                errors: 1,
                ok: 0,
            }
        }
    };
    let boot = Arc::new(boot);
    let cpu0 = self_cpu();
    let mut l = rt.block_on(async move {
        let start = Instant::now();
        let deadline = start + dur;
        let mut tasks = Vec::new();
        for w in 0..conc {
            let boot = boot.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0usize;
                let mut i = w;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = boot(i).await;
                    i += conc;
                    match r {
                        Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1e3),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            if let Ok((l, e)) = t.await {
                lat.extend(l);
                errors += e;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        Load {
            client_cpu_ms: 0.0,
            boots_per_s: lat.len() as f64 / secs,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            errors,
            ok: lat.len(),
        }
    });
    l.client_cpu_ms = (self_cpu() - cpu0) * 1e3 / l.ok.max(1) as f64;
    l
}

/// A kernel and an initrd of `size` bytes each in the state dir's files, as a full boot fetches
/// them: (URL path, length).
pub(crate) fn boot_files(state: &Path, size: usize) -> Arc<Vec<(String, u64)>> {
    let files = ["vmlinuz", "initrd.img"].map(|name| {
        common::write_random(&state.join("files").join(name), size);
        (format!("/files/{name}"), size as u64)
    });
    Arc::new(files.to_vec())
}
