//! Full boots (script, kernel, initrd on one mutual-TLS connection) against nginx.

use super::*;

/// Full boots (script + kernel + initrd on one kept-alive TLS connection per boot, iPXE 2.0's
/// offer) against the prototype stack serving the same files: nginx with mutual TLS and
/// `ssl_session_cache`, the script from gunicorn + Flask.
pub(crate) fn bench_fullboot(cx: &mut Ctx) -> R<()> {
    // c=256: a farm powering on at once, where memory per download counts.
    let (n_boards, size, levels, dur) = if cx.smoke {
        (4, 256 << 10, vec![2], Duration::from_millis(500))
    } else {
        (200, 16 << 20, vec![64, 256], Duration::from_secs(10))
    };
    let d = cx.dir.join("fullboot");
    std::fs::create_dir_all(&d)?;
    let (state, key, certs) = lab_with_boards(&d, n_boards)?;
    let cfgs = client_configs(&state.join("ca/ca.crt"), &key, &certs, true)?;
    let files = boot_files(&state, size);
    let smoke = cx.smoke;
    let checked = |what: &str, l: Load| -> R<Load> {
        if l.errors > 0 && smoke || l.ok == 0 {
            return Err(format!("{what}: {} failed boots, {} good", l.errors, l.ok).into());
        }
        Ok(l)
    };
    let mut rows = Vec::new();
    // Each level on a fresh server, so that each peak RSS is its own.
    for &conc in &levels {
        let (srv, https, _) = start_serve(&state)?;
        let (l, cost) = costed(
            || usage(srv.0.id()),
            || load_boots(&cfgs, https, conc, dur, Some(files.clone())),
        );
        let l = checked("ipxe-ca full boot", l)?;
        rows.push(("ipxe-ca serve", conc, cost.cpu_ms, cost.rss, l));
        drop(srv);

        let proto = Prototype::start(&d, &certs, |port, gport| {
            format!(
                "server {{\n listen 127.0.0.1:{port} ssl;\n ssl_certificate {sc};\n ssl_certificate_key {sk};\n ssl_certificate {ec};\n ssl_certificate_key {ek};\n ssl_client_certificate {ca};\n ssl_verify_client on;\n ssl_protocols TLSv1.2;\n ssl_session_cache shared:SSL:10m;\n keepalive_requests 1000;\n location /files/ {{ alias {files}/; }}\n location / {{ proxy_pass http://127.0.0.1:{gport}; proxy_set_header X-SSL-Client-Fingerprint $ssl_client_fingerprint; }}\n}}",
                sc = s(&state.join("server/server.crt")),
                sk = s(&state.join("server/server.key")),
                ec = s(&state.join("server/server-ecdsa.crt")),
                ek = s(&state.join("server/server-ecdsa.key")),
                ca = s(&state.join("ca/ca.crt")),
                files = s(&state.join("files")),
            )
        })?;
        let (l, cost) = costed(
            || proto.usage(),
            || load_boots(&cfgs, proto.port, conc, dur, Some(files.clone())),
        );
        let l = checked("prototype full boot", l)?;
        rows.push((
            "prototype (nginx with ssl_session_cache + gunicorn + Flask)",
            conc,
            cost.cpu_ms,
            cost.rss,
            l,
        ));
        drop(proto);

        let (floor, port) = start_tls_floor(&state, Some("bulk"))?;
        let (l, cost) = costed(
            || usage(floor.0.id()),
            || load_boots(&cfgs, port, conc, dur, Some(files.clone())),
        );
        let l = checked("bulk TLS floor", l)?;
        rows.push((
            "bulk TLS floor (serve's rustls configuration; files from memory, no HTTP library)",
            conc,
            cost.cpu_ms,
            cost.rss,
            l,
        ));
        drop(floor);
    }
    cx.line(&format!(
        "\n## Full boots: script + 2 × {} KiB over one kept-alive TLS connection ({n_boards} boards, {dur:?} per level, iPXE 2.0's offer)\n",
        size >> 10
    ));
    cx.line("| server | concurrency | boots/s | p50 ms | p99 ms | errors | server CPU ms/boot | peak RSS MB |");
    cx.line("|---|---|---|---|---|---|---|---|");
    for (name, conc, cpu, rss, l) in &rows {
        cx.line(&format!(
            "| {name} | {conc} | {:.1} | {:.0} | {:.0} | {} | {:.1} | {:.1} |",
            l.boots_per_s,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            cpu,
            *rss as f64 / 1024.0
        ));
    }
    // Rows come in threes per level: serve, the prototype, the bulk floor.
    for level in rows.chunks(3) {
        if let [(_, conc, serve, ..), (_, _, nginx, ..), (_, _, floor, ..)] = level {
            cx.line(&format!(
                "\nAt c={conc}: serve {:.2}x the prototype's CPU per full boot, {:.2}x the bulk \
                 TLS floor's; the floor itself is {:.2}x the prototype's (no server that reads the \
                 files and encrypts in user space spends less).",
                serve / nginx,
                serve / floor,
                floor / nginx
            ));
        }
    }
    Ok(())
}
