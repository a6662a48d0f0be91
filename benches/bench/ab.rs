//! Two builds of `serve` (or a floor) in paired rounds.

use super::*;

// ---------------------------------------------------------------- ab

/// Two builds of `serve` compared in one window: this one and `IPXE_CA_AB_BIN`, both up at
/// once, loaded in turn (ABBA order) with iPXE 2.0 clients at c=64. This machine's speed drifts
/// by a quarter between runs minutes apart; paired rounds cancel most of that drift. Both are
/// started afresh each round, in alternating order. Even so, A/A runs (one binary twice) put
/// the median ratio anywhere from 0.94 to 1.09: trust a difference well beyond that, and count
/// instructions (`scripts/callgrind-boots.sh`) for smaller ones.
/// Only with `--only ab`.
pub(crate) fn bench_ab(cx: &mut Ctx) -> R<()> {
    let other = std::env::var_os("IPXE_CA_AB_BIN")
        .map(PathBuf::from)
        .ok_or("set IPXE_CA_AB_BIN to the ipxe-ca binary to compare with (or to tls-floor, tls-floor-threads)")?;
    let this = std::env::var_os("IPXE_CA_AB_A").map_or_else(bin, PathBuf::from);
    // A server of the comparison: a build of `serve`, or the least a rustls server does
    // (`tls-floor`: on tokio; `tls-floor-threads`: a blocking thread per core).
    let start = |which: &Path, state: &Path| -> R<(Proc, u16)> {
        match which.to_str() {
            Some("tls-floor") => start_tls_floor(state, None),
            Some("tls-floor-threads") => start_tls_floor(state, Some("threads")),
            _ => {
                let (p, https, _) = start_serve_with(which, state, &[])?;
                Ok((p, https))
            }
        }
    };
    let start_a = |state: &Path| start(&this, state);
    let start_b = |state: &Path| start(&other, state);
    let (rounds, dur) = if cx.smoke {
        (2, Duration::from_millis(300))
    } else {
        (8, Duration::from_secs(4))
    };
    let d = cx.dir.join("ab");
    std::fs::create_dir_all(&d)?;
    let (state, key, certs) = lab_with_boards(&d, if cx.smoke { 20 } else { 1000 })?;
    let mut cfgs = Vec::new();
    for ipxe2 in [true, false] {
        cfgs.push(client_configs(
            &state.join("ca/ca.crt"),
            &key,
            &certs,
            ipxe2,
        )?);
    }
    cx.line(&format!(
        "\n## A/B: A = {}, B = {} (c=64, {rounds} rounds of {dur:?} each, ABBA)\n",
        this.display(),
        other.display()
    ));
    cx.line("| client | A CPU ms/boot (median) | B CPU ms/boot (median) | B/A per round (median) | A boots/s | B boots/s |");
    cx.line("|---|---|---|---|---|---|");
    for (client, cf) in ["iPXE 2.0 (ECDHE-ECDSA)", "iPXE < 2.0 (ECDHE-RSA)"]
        .into_iter()
        .zip(&cfgs)
    {
        let (mut a_cpu, mut b_cpu, mut ratio, mut a_rate, mut b_rate) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..rounds {
            let one = |pid: u32, port: u16| -> R<(f64, f64)> {
                let (l, cost) = costed(|| usage(pid), || load(cf, port, 64, dur));
                if l.errors > 0 || l.ok == 0 {
                    return Err(
                        format!("{client}: {} failed boots, {} good", l.errors, l.ok).into(),
                    );
                }
                Ok((cost.cpu_ms, l.boots_per_s))
            };
            let ((ac, ar), (bc, br)) = if r % 2 == 0 {
                let (a, a_port) = start_a(&state)?;
                let (b, b_port) = start_b(&state)?;
                let x = one(a.0.id(), a_port)?;
                (x, one(b.0.id(), b_port)?)
            } else {
                let (b, b_port) = start_b(&state)?;
                let (a, a_port) = start_a(&state)?;
                let y = one(b.0.id(), b_port)?;
                (one(a.0.id(), a_port)?, y)
            };
            a_cpu.push(ac);
            b_cpu.push(bc);
            ratio.push(bc / ac);
            a_rate.push(ar);
            b_rate.push(br);
        }
        cx.line(&format!(
            "| {client} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} |",
            median(&mut a_cpu),
            median(&mut b_cpu),
            median(&mut ratio),
            median(&mut a_rate),
            median(&mut b_rate)
        ));
    }
    Ok(())
}
