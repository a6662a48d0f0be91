//! What no change to `serve` can beat: the crypto floor, a TCP floor and a TLS floor (a rustls
//! server with `serve`'s configuration that answers a fixed script and does nothing else).

use super::*;

/// One signature over a message.
type Sign = dyn FnMut(&[u8]) -> R<()>;

/// What the server's side of a handshake costs in cryptography alone: the signature over the
/// ECDHE parameters with `server_key` (RSA-2048 PKCS#1 or ECDSA P-256) plus the X25519
/// agreement (verifications are cheap).
pub(crate) fn crypto_floor_ms(server_key: &Path, n: usize) -> R<f64> {
    use aws_lc_rs::{agreement, rand::SystemRandom, signature};
    let der = PrivateKeyDer::from_pem_file(server_key)?;
    let rng = SystemRandom::new();
    let e = |e: aws_lc_rs::error::Unspecified| format!("{e:?}");
    let mut sign: Box<Sign> = match &der {
        PrivateKeyDer::Pkcs8(k)
            if signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).is_err() =>
        {
            let key = signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                k.secret_pkcs8_der(),
            )
            .map_err(|e| format!("{e:?}"))?;
            let rng = rng.clone();
            Box::new(move |msg| key.sign(&rng, msg).map(drop).map_err(|x| e(x).into()))
        }
        _ => {
            let key = signature::RsaKeyPair::from_pkcs8(der.secret_der())
                .map_err(|e| format!("{e:?}"))?;
            let mut sig = vec![0u8; key.public_modulus_len()];
            let rng = rng.clone();
            Box::new(move |msg| {
                key.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|x| e(x).into())
            })
        }
    };
    let peer = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
        .map_err(|e| format!("{e:?}"))?;
    let peer_pub = peer.compute_public_key().map_err(|e| format!("{e:?}"))?;
    let t = Instant::now();
    for i in 0..n {
        sign(&(i as u64).to_le_bytes())?;
        let mine = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
            .map_err(|e| format!("{e:?}"))?;
        let _ = mine.compute_public_key();
        let theirs = agreement::UnparsedPublicKey::new(&agreement::X25519, peer_pub.as_ref());
        agreement::agree_ephemeral(mine, theirs, "x25519", |k| Ok::<_, &str>(k.len()))
            .map_err(|e| format!("{e:?}"))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e3 / n as f64)
}

/// What the server's check of a board's CertificateVerify (RSA-PSS-SHA256, as rustls clients
/// sign; iPXE signs PKCS#1) costs: (key parsed for every check, as WebPKI does; key parsed
/// once and kept, as `serve` does).
pub(crate) fn board_verify_ms(board_key: &Path, n: usize) -> R<(f64, f64)> {
    use aws_lc_rs::{rand::SystemRandom, signature};
    let der = PrivateKeyDer::from_pem_file(board_key)?;
    let key = signature::RsaKeyPair::from_pkcs8(der.secret_der()).map_err(|e| format!("{e:?}"))?;
    let msg = b"the transcript of a handshake, or its hash";
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &signature::RSA_PSS_SHA256,
        &SystemRandom::new(),
        msg,
        &mut sig,
    )
    .map_err(|e| format!("{e:?}"))?;
    let public = signature::KeyPair::public_key(&key).as_ref().to_vec();
    let alg = &signature::RSA_PSS_2048_8192_SHA256;
    let t = Instant::now();
    for _ in 0..n {
        signature::UnparsedPublicKey::new(alg, &public)
            .verify(msg, &sig)
            .map_err(|e| format!("{e:?}"))?;
    }
    let each = t.elapsed().as_secs_f64() * 1e3 / n as f64;
    let parsed = signature::ParsedPublicKey::new(alg, &public).map_err(|e| format!("{e:?}"))?;
    let t = Instant::now();
    for _ in 0..n {
        parsed.verify_sig(msg, &sig).map_err(|e| format!("{e:?}"))?;
    }
    Ok((each, t.elapsed().as_secs_f64() * 1e3 / n as f64))
}

// ---------------------------------------------------------------- tcp floor

/// The bytes of a TLS 1.2 boot with an ECDSA server certificate, flight by flight, as
/// `strace` of `serve` shows them: (client sends, server answers). ClientHello → ServerHello
/// to ServerHelloDone; certificate, key exchange, CertificateVerify, Finished → Finished;
/// the request → the script; close_notify → close_notify.
pub(crate) const BOOT_FLIGHTS: [(usize, usize); 4] =
    [(202, 1702), (1962, 51), (117, 985), (31, 31)];

/// The server side of [`BOOT_FLIGHTS`] in clear text, on tokio as `serve` runs (a
/// multi-threaded runtime, one connection per task): what any server on this kernel pays per
/// boot before its first instruction of TLS or HTTP. Runs as its own process (the bench
/// binary started with `--tcp-floor-server PORT`) so that its CPU is counted as a server's.
pub(crate) fn tcp_floor_server(port: u16, workers: Option<usize>) -> R<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers {
        rt.worker_threads(w);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (mut c, _) = l.accept().await?;
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
                let mut buf = vec![0u8; 4096];
                for (ask, answer) in BOOT_FLIGHTS {
                    if c.read_exact(&mut buf[..ask]).await.is_err() {
                        return;
                    }
                    buf[..answer].fill(0x17);
                    if c.write_all(&buf[..answer]).await.is_err() {
                        return;
                    }
                }
                let _ = c.shutdown().await;
            });
        }
    })
}

/// One clear-text boot against [`tcp_floor_server`].
pub(crate) async fn tcp_floor_boot(port: u16) -> Result<(), String> {
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = c.set_nodelay(true);
    let mut buf = vec![0u8; 4096];
    for (ask, answer) in BOOT_FLIGHTS {
        buf[..ask].fill(0x16);
        c.write_all(&buf[..ask]).await.map_err(|e| e.to_string())?;
        c.read_exact(&mut buf[..answer])
            .await
            .map_err(|e| e.to_string())?;
    }
    match c.read(&mut buf).await {
        Ok(0) => Ok(()),
        other => Err(format!("expected the server to close, got {other:?}")),
    }
}

/// Server CPU ms per clear-text boot (and of it, kernel ms) at `conc`, over `dur`.
pub(crate) fn tcp_floor_ms(conc: usize, dur: Duration, workers: Option<usize>) -> R<(f64, f64)> {
    let workers = workers.map(|w| w.to_string());
    let (srv, port) = start_self("--tcp-floor-server", &[], workers.as_deref())?;
    let (l, cost) = costed(
        || usage(srv.0.id()),
        || drive(conc, dur, move |_| tcp_floor_boot(port)),
    );
    if l.errors > 0 || l.ok == 0 {
        return Err(format!("tcp floor: {} failed boots, {} good", l.errors, l.ok).into());
    }
    Ok((cost.cpu_ms, cost.sys_ms))
}

// ---------------------------------------------------------------- tls floor

/// A boot script's answer of about the size `serve` sends (the third server flight of
/// [`BOOT_FLIGHTS`] less TLS's record overhead).
pub(crate) fn tls_floor_answer() -> Vec<u8> {
    let mut body = String::from("#!ipxe\n");
    while body.len() < 820 {
        body.push_str("# a line of a board's boot script, as long as serve's\n");
    }
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The least a rustls server on tokio can do per boot: `serve`'s own TLS configuration
/// ([`ipxe_ca::server::tls_config`]: the two server certificates chosen per ClientHello, board
/// certificates verified against the CA and remembered) and then a fixed answer to any request, with no HTTP
/// library, no registry, no template, no log. `serve` spends this plus its own work; the
/// difference is all that ipxe-ca's code could ever win back. Its own process (`--tls-floor-server
/// PORT STATE [WORKERS]`), so that its CPU is counted as a server's.
pub(crate) fn tls_floor_server(port: u16, state: &Path, workers: Option<&str>) -> R<()> {
    let state = ipxe_ca::store::state::StateDir::new(state);
    // 2048 sessions: `serve --tls-sessions` by default (the load makes none to resume).
    let config = ipxe_ca::server::tls_config(&state, 2048)?;
    let answer: Arc<[u8]> = tls_floor_answer().into();
    if workers == Some("threads") {
        return tls_floor_threads(port, Arc::new(config), answer);
    }
    if workers == Some("bulk") {
        return tls_floor_bulk(port, state.root(), Arc::new(config), answer);
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers.and_then(|w| w.parse().ok()) {
        rt.worker_threads(w);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (c, _) = l.accept().await?;
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(c).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                while !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf[have..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    if have == buf.len() {
                        return;
                    }
                }
                if tls.write_all(&answer).await.is_ok() {
                    let _ = tls.shutdown().await;
                }
            });
        }
    })
}

/// The floor without an event loop: a blocking thread per core, each taking the next
/// connection when done with the last (no epoll, no task wake-ups; the load generator's other
/// connections wait in the backlog). Fewer system calls per boot than any event loop makes,
/// though no server for real boards could work so: one slow board would stall a core.
pub(crate) fn tls_floor_threads(
    port: u16,
    config: Arc<rustls::ServerConfig>,
    answer: Arc<[u8]>,
) -> R<()> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (l, config, answer) = (l.try_clone(), config.clone(), answer.clone());
            std::thread::spawn(move || -> std::io::Result<()> {
                let l = l?;
                loop {
                    let (mut c, _) = l.accept()?;
                    let _ = c.set_nodelay(true);
                    let Ok(mut conn) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    let mut tls = rustls::Stream::new(&mut conn, &mut c);
                    let mut buf = [0u8; 4096];
                    let mut have = 0;
                    let asked = loop {
                        match tls.read(&mut buf[have..]) {
                            Ok(0) | Err(_) => break false,
                            Ok(n) => have += n,
                        }
                        if buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                            break true;
                        }
                        if have == buf.len() {
                            break false;
                        }
                    };
                    if asked && tls.write_all(&answer).is_ok() {
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a floor thread panicked")??;
    }
    Ok(())
}

/// The least a rustls server on tokio does for full boots: `serve`'s TLS configuration and
/// send buffer, one kept-alive connection per boot, the script answer for `/boot.ipxe` and the
/// boot files from memory (read once at start: no file reads, no HTTP library, no log). What
/// it spends is TLS and TCP for the bytes: encryption, rustls' copy into its records and the
/// kernel's copy into the socket. No server that reads the files and encrypts them in user
/// space spends less per boot.
fn tls_floor_bulk(
    port: u16,
    state: &Path,
    config: Arc<rustls::ServerConfig>,
    answer: Arc<[u8]>,
) -> R<()> {
    let mut files = std::collections::HashMap::new();
    for e in std::fs::read_dir(state.join("files"))? {
        let e = e?;
        if e.file_type()?.is_file() {
            let name = format!("/files/{}", e.file_name().to_string_lossy());
            files.insert(name, Arc::<[u8]>::from(std::fs::read(e.path())?));
        }
    }
    let files = Arc::new(files);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (c, _) = l.accept().await?;
            let (acceptor, answer, files) = (acceptor.clone(), answer.clone(), files.clone());
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(c).await else {
                    return;
                };
                tls.get_mut()
                    .1
                    .set_buffer_limit(Some(ipxe_ca::server::SEND_BUFFER));
                let mut buf = vec![0u8; 4096];
                loop {
                    let mut have = 0;
                    let end = loop {
                        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        match tls.read(&mut buf[have..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => have += n,
                        }
                        if have == buf.len() {
                            return;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]);
                    let path = head.split_whitespace().nth(1).unwrap_or("");
                    let sent = match files.get(path) {
                        Some(data) => {
                            let h = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                data.len()
                            );
                            match tls.write_all(h.as_bytes()).await {
                                Ok(()) => tls.write_all(data).await,
                                Err(e) => Err(e),
                            }
                        }
                        None => tls.write_all(&answer).await,
                    };
                    if sent.and(tls.flush().await).is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// A [`tls_floor_server`] for the lab in `state` on a free port, ready: (process, port).
/// `how`: tokio's worker count, `threads` for [`tls_floor_threads`], None for tokio's default.
pub(crate) fn start_tls_floor(state: &Path, how: Option<&str>) -> R<(Proc, u16)> {
    start_self("--tls-floor-server", &[s(state)], how)
}

/// This bench binary as one of its floor servers (`flag PORT ARGS… [last]`) on a free port,
/// ready: its own process, so that its CPU is counted as a server's.
pub(crate) fn start_self(flag: &str, args: &[&str], last: Option<&str>) -> R<(Proc, u16)> {
    let port = free_port();
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([flag, &port.to_string()]).args(args).args(last);
    let srv = spawn(&mut cmd)?;
    wait_port(port)?;
    Ok((srv, port))
}
