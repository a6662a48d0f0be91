//! Enrollment against the openssl CLI.

use super::*;

// ---------------------------------------------------------------- enroll

pub(crate) fn bench_enroll(cx: &mut Ctx) -> R<()> {
    let n = if cx.smoke { 3 } else { 20 };
    let d = cx.dir.join("enroll");
    let state = d.join("state");
    run(Command::new(bin()).args(["--dir", s(&state), "init", "--san", "IP:127.0.0.1"]))?;
    let mut ours = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        run(Command::new(bin()).args(["--dir", s(&state), "enroll", &format!("e{i}")]))?;
        ours.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut theirs = Vec::new();
    let ca = state.join("ca/ca.crt");
    let cakey = state.join("keys/ca.key");
    for i in 0..n {
        let t = Instant::now();
        let (k, c, crt) = (
            d.join(format!("o{i}.key")),
            d.join(format!("o{i}.csr")),
            d.join(format!("o{i}.crt")),
        );
        run(Command::new("openssl").args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            s(&k),
            "-subj",
            &format!("/CN=o{i}"),
            "-out",
            s(&c),
        ]))?;
        run(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            s(&c),
            "-CA",
            s(&ca),
            "-CAkey",
            s(&cakey),
            "-days",
            "1095",
            "-set_serial",
            &format!("{}", 1000 + i),
            "-out",
            s(&crt),
        ]))?;
        theirs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let batch = if cx.smoke { 4 } else { 100 };
    let names: Vec<String> = (0..batch).map(|i| format!("batch{i}")).collect();
    let t = Instant::now();
    let mut args = vec![
        "--dir".to_string(),
        s(&state).to_string(),
        "enroll".to_string(),
    ];
    args.extend(names);
    run(Command::new(bin()).args(&args))?;
    let batch_ms = t.elapsed().as_secs_f64() * 1e3 / batch as f64;
    let (a, b) = (median(&mut ours), median(&mut theirs));
    cx.line("\n## Enroll (RSA-2048 key + certificate, per board, median)\n");
    cx.line("| | ms/board | ratio |");
    cx.line("|---|---|---|");
    cx.line(&format!(
        "| openssl CLI (req -newkey + x509 -req) | {b:.0} | 1.0× |"
    ));
    cx.line(&format!(
        "| ipxe-ca enroll (one process per board) | {a:.0} | {:.1}× faster |",
        b / a
    ));
    cx.line(&format!("| ipxe-ca enroll, {batch} boards in one call (both cores) | {batch_ms:.0} | {:.1}× faster |", b / batch_ms));
    Ok(())
}
