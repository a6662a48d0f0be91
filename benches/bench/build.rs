//! Image builds: the per-board compile route against the farm route.

use super::*;

// ---------------------------------------------------------------- build

pub(crate) fn bench_build(cx: &mut Ctx) -> R<()> {
    // Per-board relink (compile route) for a few boards; the farm route for many.
    let (relink_n, farm_n) = if cx.smoke { (1, 2) } else { (8, 1000) };
    let d = cx.dir.join("build");
    std::fs::create_dir_all(&d)?;
    let state = d.join("state");
    run(Command::new(bin()).args(["--dir", s(&state), "init", "--san", "IP:127.0.0.1"]))?;
    let names: Vec<String> = (0..farm_n).map(|i| format!("img{i:04}")).collect();
    // Enrolled in batches: one command line for 1,000 names is fine, but keeps memory flat.
    for chunk in names.chunks(250) {
        let mut args = vec!["--dir".to_string(), s(&state).to_string(), "enroll".into()];
        args.extend(chunk.iter().cloned());
        run(Command::new(bin()).args(&args))?;
    }
    // The smoke run never compiles iPXE: it proves the section works on the fixture.
    let real = std::env::var_os("IPXE_SRC").filter(|_| !cx.smoke);
    let tree = match &real {
        Some(t) => PathBuf::from(t),
        None => {
            let t = d.join("fake-ipxe");
            let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-ipxe");
            run(Command::new("cp").args(["-a", s(&fixture), s(&t)]))?;
            t
        }
    };
    let kind = if real.is_some() {
        "real iPXE 2.0.0 tree (IPXE_SRC)"
    } else {
        "fixture tree (tests/fixtures/fake-ipxe)"
    };
    let build = |boards: &[String], target: &str, out: &str| -> R<f64> {
        let mut a = vec!["--dir".to_string(), s(&state).to_string(), "build".into()];
        a.extend(boards.iter().cloned());
        a.extend([
            "--ipxe-src".into(),
            s(&tree).into(),
            "--target".into(),
            target.into(),
            "--out".into(),
            s(&d.join(out)).into(),
        ]);
        let t = Instant::now();
        run(Command::new(bin()).args(&a))?;
        Ok(t.elapsed().as_secs_f64())
    };
    cx.line(&format!("\n## Image builds, {kind}\n"));
    cx.line("| route | target | boards | total s | s/board |");
    cx.line("|---|---|---|---|---|");
    // Warm both routes once (a CA change recompiles a few objects), then measure.
    build(&names[..1], "lkrn", "out-warm")?;
    build(&names[..1], "hybrid", "out-warm")?;
    let relink = build(&names[..relink_n], "lkrn", "out-relink")?;
    cx.line(&format!(
        "| compile (key in the binary) | lkrn | {relink_n} | {relink:.1} | {:.3} |",
        relink / relink_n as f64
    ));
    let farm = build(&names, "hybrid", "out-farm")?;
    cx.line(&format!(
        "| farm (one compile, autoexec.ipxe) | hybrid | {farm_n} | {farm:.1} | {:.3} |",
        farm / farm_n as f64
    ));
    let per_relink = relink / relink_n as f64;
    let per_farm = farm / farm_n as f64;
    cx.line(&format!(
        "\nFarm route per board: {:.0}× faster than a relink; {farm_n} boards in {farm:.0} s \
(target: 1,000 in ≤ 180 s and ≥ 15×).",
        per_relink / per_farm
    ));
    Ok(())
}
