//! Plain-HTTP boot files against nginx's sendfile.

use super::*;

// ---------------------------------------------------------------- files

pub(crate) fn download_all(url: &str, clients: usize) -> R<f64> {
    let t = Instant::now();
    let kids: Vec<Child> = (0..clients)
        .map(|_| {
            Command::new("curl")
                .args(["-sf", "-o", "/dev/null", url])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut k in kids {
        if !k.wait()?.success() {
            return Err(format!("curl {url} failed").into());
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

pub(crate) fn bench_files(cx: &mut Ctx) -> R<()> {
    let size: usize = if cx.smoke { 16 << 20 } else { 256 << 20 };
    let d = cx.dir.join("files");
    std::fs::create_dir_all(&d)?;
    let state = d.join("state");
    run(Command::new(bin()).args(["--dir", s(&state), "init", "--san", "IP:127.0.0.1"]))?;
    let f = state.join("files/big.img");
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = c.len();
        c.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    std::fs::write(&f, &data)?;
    drop(data);
    let (srv, _, http) = start_serve(&state)?;
    let ours = download_all(&format!("http://127.0.0.1:{http}/files/big.img"), 4)?;
    drop(srv);
    let port = free_port();
    let ndir = d.join("nginx");
    std::fs::create_dir_all(&ndir)?;
    let body = format!(
        "sendfile on;\nserver {{ listen 127.0.0.1:{port}; location /files/ {{ alias {}/; }} }}",
        s(&state.join("files"))
    );
    let conf = nginx_conf(&ndir, &body)?;
    let ng = spawn(Command::new(nginx_bin()?).args(["-c", s(&conf)]))?;
    wait_port(port)?;
    let theirs = download_all(&format!("http://127.0.0.1:{port}/files/big.img"), 4)?;
    drop(ng);
    let mb = 4.0 * size as f64 / 1e6;
    cx.line(&format!(
        "\n## Boot files ({} MiB, 4 concurrent clients, plain HTTP)\n",
        size >> 20
    ));
    cx.line("| server | MB/s | share of nginx |");
    cx.line("|---|---|---|");
    cx.line(&format!(
        "| nginx (sendfile) | {:.0} | 100 % |",
        mb / theirs
    ));
    cx.line(&format!(
        "| ipxe-ca serve | {:.0} | {:.0} % |",
        mb / ours,
        100.0 * theirs / ours
    ));
    Ok(())
}
