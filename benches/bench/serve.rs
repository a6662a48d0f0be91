//! Boot scripts served, against the prototype and the floors, per concurrency.

use super::*;

pub(crate) fn bench_serve(cx: &mut Ctx) -> R<()> {
    let n_boards = if cx.smoke { 20 } else { 1000 };
    let dur = if cx.smoke {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(5)
    };
    let levels: &[usize] = if cx.smoke { &[1, 8] } else { &[1, 8, 64, 256] };
    let d = cx.dir.join("serve");
    std::fs::create_dir_all(&d)?;
    let (state, key, certs) = lab_with_boards(&d, n_boards)?;
    let cfgs = client_configs(&state.join("ca/ca.crt"), &key, &certs, false)?;
    let cfgs2 = client_configs(&state.join("ca/ca.crt"), &key, &certs, true)?;
    let mut rows: BTreeMap<(String, usize), (Load, f64, u64)> = BTreeMap::new();
    let smoke = cx.smoke;
    // A smoke run proves the load works: any failed boot fails it.
    let checked = |what: &str, l: Load| -> R<Load> {
        if smoke && (l.errors > 0 || l.ok == 0) {
            return Err(format!("{what}: {} failed boots, {} good", l.errors, l.ok).into());
        }
        Ok(l)
    };

    // ipxe-ca serve, with clients like iPXE before 2.0 (RSA) and like iPXE 2.0 (ECDSA).
    let (srv, https, _) = start_serve(&state)?;
    let mut kernel = Vec::new();
    for (name, cf) in [
        ("ipxe-ca serve, iPXE < 2.0 client (ECDHE-RSA)", &cfgs),
        ("ipxe-ca serve, iPXE 2.0 client (ECDHE-ECDSA)", &cfgs2),
    ] {
        for &c in levels {
            let (l, cost) = costed(|| usage(srv.0.id()), || load(cf, https, c, dur));
            let l = checked(name, l)?;
            kernel.push((name, c, cost.sys_ms, cost.cpu_ms));
            rows.insert((name.into(), c), (l, cost.cpu_ms, cost.rss));
        }
    }
    drop(srv);

    // The prototype: nginx (mTLS) -> gunicorn (2 workers) -> Flask, 1000 boards by fingerprint.
    let proto_block = |port: u16, gport: u16| {
        format!(
            "server {{\n listen 127.0.0.1:{port} ssl;\n ssl_certificate {sc};\n ssl_certificate_key {sk};\n ssl_client_certificate {ca};\n ssl_verify_client on;\n ssl_protocols TLSv1.2;\n ssl_session_cache off;\n ssl_session_tickets off;\n location / {{ proxy_pass http://127.0.0.1:{gport}; proxy_set_header X-SSL-Client-Fingerprint $ssl_client_fingerprint; }}\n}}",
            sc = s(&state.join("server/server.crt")),
            sk = s(&state.join("server/server.key")),
            ca = s(&state.join("ca/ca.crt")),
        )
    };
    let proto = Prototype::start(&d, &certs, proto_block)?;
    for &c in levels {
        let (l, cost) = costed(|| proto.usage(), || load(&cfgs, proto.port, c, dur));
        let l = checked("prototype", l)?;
        rows.insert(
            ("prototype (nginx + gunicorn + Flask)".into(), c),
            (l, cost.cpu_ms, cost.rss),
        );
    }
    drop(proto);

    // Like for like with one event loop each, at the targets' concurrency: `serve --workers 1`,
    // nginx with one worker process and gunicorn with one worker, the TCP floor on one thread.
    // On cores shared with the load generator, one loop wakes less often per boot.
    let c_one = if smoke { 8 } else { 64 };
    // `serve` (with `serve_args`, under SCHED_BATCH if `batch`) with both clients, then the
    // prototype (with `workers` of each kind), each at c_one: one row each.
    let like_for_like = |label: &str,
                         serve_args: &[&str],
                         batch: bool,
                         workers: Option<usize>,
                         proto_name: &str|
     -> R<Vec<Row>> {
        let mut rows = Vec::new();
        let (srv, https, _) = start_serve_with(&bin(), &state, serve_args)?;
        if batch {
            sched_batch(srv.0.id())?;
        }
        for (client, cf) in [
            ("iPXE < 2.0 client (ECDHE-RSA)", &cfgs),
            ("iPXE 2.0 client (ECDHE-ECDSA)", &cfgs2),
        ] {
            let name = format!("ipxe-ca serve{label}, {client}");
            let (l, cost) = costed(|| usage(srv.0.id()), || load(cf, https, c_one, dur));
            rows.push((name.clone(), checked(&name, l)?, cost.cpu_ms, cost.rss));
        }
        drop(srv);
        let dir = d.join(proto_name.replace([' ', ','], "-"));
        std::fs::create_dir_all(&dir)?;
        let proto = Prototype::start_with(&dir, &certs, workers, proto_block)?;
        if batch {
            sched_batch(proto.nginx.0.id())?;
            sched_batch(proto.gunicorn.0.id())?;
        }
        let (l, cost) = costed(|| proto.usage(), || load(&cfgs, proto.port, c_one, dur));
        rows.push((
            proto_name.to_string(),
            checked(proto_name, l)?,
            cost.cpu_ms,
            cost.rss,
        ));
        Ok(rows)
    };
    // One event loop each: `serve --workers 1`, nginx with one worker process and gunicorn
    // with one worker, the TCP floor on one thread. On cores shared with the load generator,
    // one loop wakes less often per boot.
    let one = like_for_like(
        " --workers 1",
        &["--workers", "1"],
        false,
        Some(1),
        "prototype, one nginx and one gunicorn worker",
    )?;
    let tcp_one = tcp_floor_ms(c_one, dur, Some(1))?;
    // The least a rustls server spends, in the same run, as an event loop (tokio, as `serve`)
    // and as a blocking thread per core: serve's CPU less this is all that ipxe-ca's own code
    // (HTTP, registry, templates, log) could win back.
    let mut tls_floor = Vec::new();
    for (shape, how) in [
        ("on tokio", None),
        ("a blocking thread per core", Some("threads")),
    ] {
        let (fl, port) = start_tls_floor(&state, how)?;
        for (client, cf) in [
            ("ipxe-ca serve, iPXE < 2.0 client (ECDHE-RSA)", &cfgs),
            ("ipxe-ca serve, iPXE 2.0 client (ECDHE-ECDSA)", &cfgs2),
        ] {
            let (l, cost) = costed(|| usage(fl.0.id()), || load(cf, port, c_one, dur));
            tls_floor.push((shape, client, checked("tls floor", l)?, cost.cpu_ms));
        }
    }
    // As packaged: the systemd unit runs `serve` with CPUSchedulingPolicy=batch (a woken thread
    // does not preempt the running one); the prototype under the same policy, like for like.
    let batch = like_for_like(", SCHED_BATCH", &[], true, None, "prototype, SCHED_BATCH")?;

    let floor = crypto_floor_ms(
        &state.join("server/server.key"),
        if cx.smoke { 20 } else { 2000 },
    )?;
    let floor_ec = crypto_floor_ms(
        &state.join("server/server-ecdsa.key"),
        if cx.smoke { 20 } else { 2000 },
    )?;
    let (verify_each, verify_kept) = board_verify_ms(&key, if cx.smoke { 20 } else { 2000 })?;
    let mut tcp = BTreeMap::new();
    for &c in levels {
        tcp.insert(c, tcp_floor_ms(c, dur, None)?);
    }
    cx.line(&format!(
        "\n## Boots served ({n_boards} boards, new TLS 1.2 connection per boot, {:?} per level)\n",
        dur
    ));
    cx.line(&format!(
        "Cryptographic floor of one server handshake here (aws-lc, one core): RSA-2048 signature + X25519 agreement {floor:.2} ms; ECDSA P-256 signature + X25519 agreement {floor_ec:.2} ms (the client's RSA signature, verified by the server, comes on top in both). One RSA-2048 verification of a board's signature: {verify_each:.3} ms with the key parsed each time, {verify_kept:.3} ms with it parsed once. The RSA target's floor (an RSA signature, X25519, two verifications): {:.2} ms.\n",
        floor + 2.0 * verify_kept
    ));
    cx.line("| server | concurrency | boots/s | p50 ms | p99 ms | errors | server CPU ms/boot | peak RSS MB | load generator CPU ms/boot |");
    cx.line("|---|---|---|---|---|---|---|---|---|");
    for ((name, c), (l, cpu, rss)) in rows.iter().rev() {
        cx.line(&format!(
            "| {name} | {c} | {:.0} | {:.1} | {:.1} | {} | {:.2} | {:.1} | {:.2} |",
            l.boots_per_s,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            cpu,
            *rss as f64 / 1024.0,
            l.client_cpu_ms
        ));
    }
    cx.line("\nTCP floor: a server on tokio that exchanges a TLS 1.2 boot's flights in clear text (the same messages and sizes, no TLS, no HTTP), measured like the servers above. No server on this kernel spends less per boot, whatever its crypto.\n");
    cx.line("| concurrency | TCP floor CPU ms/boot | of it in the kernel |");
    cx.line("|---|---|---|");
    for (c, (cpu, sys)) in &tcp {
        cx.line(&format!("| {c} | {cpu:.3} | {sys:.3} |"));
    }
    // The load generator shares the cores: when both runs fill them, boots/s go as
    // 1 / (its CPU + the server's CPU) per boot. A server doing nothing but its crypto floor
    // would reach at most this many times the prototype's boots/s.
    let proto_name = "prototype (nginx + gunicorn + Flask)";
    for &c in levels {
        let Some((pl, pcpu, _)) = rows.get(&(proto_name.to_string(), c)) else {
            continue;
        };
        let tcp_c = tcp.get(&c).map_or(0.0, |t| t.0);
        for (name, f) in [
            (
                "ipxe-ca serve, iPXE < 2.0 client (ECDHE-RSA)",
                floor + 2.0 * verify_kept,
            ),
            (
                "ipxe-ca serve, iPXE 2.0 client (ECDHE-ECDSA)",
                floor_ec + 2.0 * verify_kept,
            ),
        ] {
            if let Some((l, cpu, _)) = rows.get(&(name.to_string(), c)) {
                cx.line(&format!(
                    "\n{name} at concurrency {c}: boots/s {:.2}× the prototype's; a server at the crypto floor ({f:.2} ms) with this load generator ({:.2} ms per boot) would reach at most {:.2}× (prototype: {pcpu:.2} + {:.2} ms per boot), and at the crypto + TCP floor ({:.2} ms) at most {:.2}×. Server CPU per boot {cpu:.2} ms: 1/{:.1} of the prototype's, {:.2}× the crypto floor, {:.2}× the crypto + TCP floor; a server at the crypto + TCP floor would spend 1/{:.1} of the prototype's.",
                    l.boots_per_s / pl.boots_per_s.max(1e-9),
                    l.client_cpu_ms,
                    (pcpu + pl.client_cpu_ms) / (f + l.client_cpu_ms),
                    pl.client_cpu_ms,
                    f + tcp_c,
                    (pcpu + pl.client_cpu_ms) / (f + tcp_c + l.client_cpu_ms),
                    pcpu / cpu.max(1e-9),
                    cpu / f.max(1e-9),
                    cpu / (f + tcp_c).max(1e-9),
                    pcpu / (f + tcp_c).max(1e-9),
                ));
            }
        }
    }
    cx.line(&format!(
        "\nTLS floor (concurrency {c_one}): `serve`'s rustls configuration (the same certificates, chosen per ClientHello, and client certificates verified against the CA) answering every request with a fixed script of the same size, and nothing else: no HTTP library, registry, template or log. What `serve` spends above it is all that ipxe-ca's own code could win back.\n"
    ));
    cx.line("| TLS floor | client | boots/s | CPU ms/boot | serve CPU ms/boot | serve / floor | floor against the prototype: CPU, boots/s |");
    cx.line("|---|---|---|---|---|---|---|");
    let proto_c = rows.get(&(proto_name.to_string(), c_one));
    let (p_cpu, p_rate) = proto_c.map_or((f64::NAN, f64::NAN), |p| (p.1, p.0.boots_per_s));
    for (shape, name, l, cpu) in &tls_floor {
        let serve_cpu = rows
            .get(&(name.to_string(), c_one))
            .map_or(f64::NAN, |r| r.1);
        cx.line(&format!(
            "| {shape} | {} | {:.0} | {cpu:.3} | {serve_cpu:.3} | {:.2} | 1/{:.1}, {:.2}× |",
            name.trim_start_matches("ipxe-ca serve, "),
            l.boots_per_s,
            serve_cpu / cpu.max(1e-9),
            p_cpu / cpu.max(1e-9),
            l.boots_per_s / p_rate.max(1e-9),
        ));
    }
    // The better of the two shapes, per client: the best a rustls server did in this run.
    let best = |client: &str| {
        tls_floor
            .iter()
            .filter(|f| f.1 == client)
            .fold((f64::INFINITY, 0.0f64), |(cpu, rate), f| {
                (cpu.min(f.3), rate.max(f.2.boots_per_s))
            })
    };
    let (rsa_cpu, rsa_rate) = best("ipxe-ca serve, iPXE < 2.0 client (ECDHE-RSA)");
    let (ec_cpu, ec_rate) = best("ipxe-ca serve, iPXE 2.0 client (ECDHE-ECDSA)");
    cx.line(&format!(
        "\nThe best TLS floor in this run, against the serving targets: iPXE 2.0 client 1/{:.1} of the prototype's CPU per boot (target 1/6), boots/s {:.2}× (target 3×); RSA client {:.2}× the crypto floor ({:.3} ms; target 1.25×), boots/s {:.2}× (target 2×).",
        p_cpu / ec_cpu.max(1e-9),
        ec_rate / p_rate.max(1e-9),
        rsa_cpu / (floor + 2.0 * verify_kept).max(1e-9),
        floor + 2.0 * verify_kept,
        rsa_rate / p_rate.max(1e-9),
    ));
    for (name, c, k, total) in kernel {
        cx.line(&format!(
            "\n{name} at concurrency {c}: {total:.2} ms CPU per boot, of which {k:.2} ms in the kernel (TCP, syscalls) and {:.2} ms in user space.",
            total - k
        ));
    }
    cx.line(&format!(
        "\n### One event loop each (concurrency {c_one})\n\n`serve --workers 1` against nginx with one worker process and gunicorn with one worker; TCP floor on one thread: {:.3} ms per boot.\n",
        tcp_one.0
    ));
    rows_table(cx, &one);
    if let [(_, rl, rsa, _), (_, el, ec, _), (_, pl, proto_cpu, _)] = &one[..] {
        let rsa_floor = floor + 2.0 * verify_kept;
        let ec_floor = floor_ec + 2.0 * verify_kept;
        cx.line(&format!(
            "\nOne loop each: iPXE 2.0 client {ec:.3} ms per boot, 1/{:.1} of the prototype's and 1/{:.1} of the RSA path's, {:.2}× its crypto + TCP floor, boots/s {:.2}× the prototype's; RSA client {rsa:.3} ms, {:.2}× the crypto floor ({rsa_floor:.3} ms), boots/s {:.2}×, p99 {:.2}× the prototype's.",
            proto_cpu / ec.max(1e-9),
            rsa / ec.max(1e-9),
            ec / (ec_floor + tcp_one.0).max(1e-9),
            el.boots_per_s / pl.boots_per_s.max(1e-9),
            rsa / rsa_floor.max(1e-9),
            rl.boots_per_s / pl.boots_per_s.max(1e-9),
            rl.p99_ms / pl.p99_ms.max(1e-9),
        ));
    }
    cx.line(&format!(
        "\n### As packaged: SCHED_BATCH (concurrency {c_one})\n\nThe systemd unit's `CPUSchedulingPolicy=batch`, set with `chrt` on every thread of `serve`, and of nginx and gunicorn for the prototype row.\n"
    ));
    rows_table(cx, &batch);
    let default_proto = rows.get(&(proto_name.to_string(), c_one));
    if let ([(_, rl, rsa, _), (_, el, ec, _), (_, pl, proto_cpu, _)], Some((dl, dcpu, _))) =
        (&batch[..], default_proto)
    {
        let rsa_floor = floor + 2.0 * verify_kept;
        cx.line(&format!(
            "\nUnder SCHED_BATCH, against the prototype under it too (and against the prototype as it runs by default): iPXE 2.0 client {ec:.3} ms per boot, 1/{:.1} (1/{:.1}) of the prototype's and 1/{:.1} of the RSA path's, boots/s {:.2}× ({:.2}×); RSA client {rsa:.3} ms, {:.2}× the crypto floor ({rsa_floor:.3} ms), boots/s {:.2}× ({:.2}×), p99 {:.2}× ({:.2}×).",
            proto_cpu / ec.max(1e-9),
            dcpu / ec.max(1e-9),
            rsa / ec.max(1e-9),
            el.boots_per_s / pl.boots_per_s.max(1e-9),
            el.boots_per_s / dl.boots_per_s.max(1e-9),
            rsa / rsa_floor.max(1e-9),
            rl.boots_per_s / pl.boots_per_s.max(1e-9),
            rl.boots_per_s / dl.boots_per_s.max(1e-9),
            rl.p99_ms / pl.p99_ms.max(1e-9),
            rl.p99_ms / dl.p99_ms.max(1e-9),
        ));
    }
    Ok(())
}

/// A server's row in a like-for-like section: name, load, server CPU ms per boot, peak RSS KiB.
pub(crate) type Row = (String, Load, f64, u64);

pub(crate) fn rows_table(cx: &mut Ctx, rows: &[Row]) {
    cx.line("| server | boots/s | p50 ms | p99 ms | errors | server CPU ms/boot | peak RSS MB | load generator CPU ms/boot |");
    cx.line("|---|---|---|---|---|---|---|---|");
    for (name, l, cpu, rss) in rows {
        cx.line(&format!(
            "| {name} | {:.0} | {:.1} | {:.1} | {} | {cpu:.2} | {:.1} | {:.2} |",
            l.boots_per_s,
            l.p50_ms,
            l.p99_ms,
            l.errors,
            *rss as f64 / 1024.0,
            l.client_cpu_ms
        ));
    }
}
