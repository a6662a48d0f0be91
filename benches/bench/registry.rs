//! The registry at scale: signing, listing, showing, serving with many boards.

use super::*;

// ---------------------------------------------------------------- registry

pub(crate) fn bench_registry(cx: &mut Ctx) -> R<()> {
    let sizes: &[usize] = if cx.smoke { &[20, 100] } else { &[100, 10_000] };
    cx.line("\n## Registry scale\n");
    cx.line(
        "| boards | sign+register ms/board | `list --json` s | `show` ms | serve p50 ms (c=1) |",
    );
    cx.line("|---|---|---|---|---|");
    for &n in sizes {
        let d = cx.dir.join(format!("registry-{n}"));
        std::fs::create_dir_all(&d)?;
        let t = Instant::now();
        let (state, key, certs) = lab_with_boards(&d, n)?;
        let reg_ms = t.elapsed().as_secs_f64() * 1e3 / n as f64;
        let t = Instant::now();
        run(Command::new(bin()).args(["--dir", s(&state), "list", "--json"]))?;
        let list_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        run(Command::new(bin()).args(["--dir", s(&state), "show", "b00007"]))?;
        let show_ms = t.elapsed().as_secs_f64() * 1e3;
        let sample: Vec<PathBuf> = certs.iter().step_by((n / 20).max(1)).cloned().collect();
        let cfgs = client_configs(&state.join("ca/ca.crt"), &key, &sample, false)?;
        let (srv, https, _) = start_serve(&state)?;
        let l = load(
            &cfgs,
            https,
            1,
            if cx.smoke {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(3)
            },
        );
        drop(srv);
        if l.errors > 0 || l.ok == 0 {
            return Err(format!("registry {n}: {} failed boots, {} good", l.errors, l.ok).into());
        }
        cx.line(&format!(
            "| {n} | {reg_ms:.1} | {list_s:.2} | {show_ms:.1} | {:.2} |",
            l.p50_ms
        ));
    }
    Ok(())
}
