//! `ipxe-ca build` against a stand-in of iPXE's make (tests/fixtures/fake-ipxe: the real source
//! cannot be fetched here) and against Debian 13's prebuilt iPXE.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::util::{openssl, path_without, rsa_csr, s, tool, Lab};

/// A private copy of the fixture tree, so tests never write into the repository.
fn fake_tree(lab: &Lab) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-ipxe");
    let dest = lab.tmp.path().join("ipxe");
    let (ok, out) = tool("cp", &["-a", s(&fixture), s(&dest)]);
    assert!(ok, "{out}");
    dest
}

/// `KEY=value` lines the fake build writes into each image.
fn field(image: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(image).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} missing in {}: {text}", image.display()))
        .to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// The CA's SHA-256 fingerprint as openssl prints it (what iPXE's TRUST takes).
fn ca_fingerprint(lab: &Lab) -> String {
    let f = openssl(&[
        "x509",
        "-in",
        s(&lab.path("ca/ca.crt")),
        "-noout",
        "-sha256",
        "-fingerprint",
    ]);
    f.trim().split('=').nth(1).unwrap().to_string()
}

/// SHA-256 of a board's key in DER, converted by openssl (what iPXE's PRIVKEY gets).
fn key_der_sha256(lab: &Lab, board: &str) -> String {
    let der = lab.tmp.path().join(format!("{board}-key.der"));
    openssl(&[
        "pkey",
        "-in",
        s(&lab.path(&format!("keys/boards/{board}.key"))),
        "-outform",
        "DER",
        "-out",
        s(&der),
    ]);
    sha256_hex(&std::fs::read(&der).unwrap())
}

fn pem_der(path: &Path) -> Vec<u8> {
    pem::parse(std::fs::read(path).unwrap())
        .unwrap()
        .into_contents()
}

#[test]
fn make_gets_our_ca_as_only_trust_the_board_cert_and_key_and_https() {
    let lab = Lab::init();
    lab.enroll("b1", &[]);
    let tree = fake_tree(&lab);
    let out = lab.tmp.path().join("out");
    let stdout = lab.ok(&[
        "build",
        "b1",
        "--ipxe-src",
        s(&tree),
        "--out",
        s(&out),
        "--json",
        "--target",
        "lkrn",
        "--target",
        "iso",
        "--target",
        "usb",
        "--target",
        "efi",
        "--target",
        "efi-iso",
        "--target",
        "hybrid",
        "--target",
        "efi-usb",
        "--debug",
        "tls,x509",
    ]);
    let manifests: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let m = &manifests[0];
    assert_eq!(m["board"], "b1");
    assert_eq!(m["mode"], "make");
    let board: serde_json::Value =
        serde_json::from_str(&lab.ok(&["show", "b1", "--json"])).unwrap();
    assert_eq!(m["fingerprint"], board["fingerprint_sha256"]);
    let dir = out.join("b1");
    // TRUST: our CA only, as openssl fingerprints it.
    let ca_fp = ca_fingerprint(&lab);
    let ca_fp = ca_fp.as_str();
    let lkrn = dir.join("b1-lkrn.lkrn");
    assert_eq!(field(&lkrn, "TRUST_FPS"), ca_fp);
    // CERT: the CA then the board, split and converted by csplit/openssl as iPXE does.
    let ders = field(&lkrn, "CERT_DERS");
    let want = format!(
        "{} {}",
        sha256_hex(&pem_der(&lab.path("ca/ca.crt"))),
        sha256_hex(&pem_der(&lab.path("boards/b1/cert.pem")))
    );
    assert_eq!(ders, want);
    // PRIVKEY: the board's key, staged for make readable by nobody else (as is the script
    // that may carry secrets).
    assert_eq!(field(&lkrn, "PRIVKEY_DER"), key_der_sha256(&lab, "b1"));
    assert_eq!(field(&lkrn, "PRIVKEY_MODE"), "600");
    assert_eq!(field(&lkrn, "EMBED_MODE"), "600");
    assert_eq!(field(&lkrn, "CONFIG"), "ipxe-ca");
    assert_eq!(field(&lkrn, "DEBUG"), "tls,x509");
    // Reproducible: the build's clock is the board certificate's notBefore, not "now".
    let not_before = time::OffsetDateTime::parse(
        board["not_before"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        field(&lkrn, "SOURCE_DATE_EPOCH"),
        not_before.unix_timestamp().to_string()
    );
    // HTTPS (and the commands our scripts use) through the named local config only.
    let general = std::fs::read_to_string(tree.join("src/config/local/ipxe-ca/general.h")).unwrap();
    for d in [
        "DOWNLOAD_PROTO_HTTPS",
        "NTP_CMD",
        "POWEROFF_CMD",
        "IMAGE_TRUST_CMD",
    ] {
        assert!(general.contains(&format!("#define {d}")), "{general}");
    }
    assert_eq!(
        std::fs::read_to_string(tree.join("src/config/general.h")).unwrap(),
        "/* fixture */\n"
    );
    // The embed script fetches the board's script from our server with the board's MAC.
    assert_eq!(
        field(&lkrn, "EMBED_FETCH"),
        "imgfetch --name boot.ipxe https://127.0.0.1:8443/boot.ipxe?mac=${netX/mac}&imgverify=1 || goto fetch_failed"
    );
    let embed_path = std::fs::read_to_string(tree.join("src/bin/.embedded.list")).unwrap();
    assert!(!embed_path.contains(','), "staged paths are comma-free");
    // Every target, each with a correct manifest entry; images 0600 in a 0700 folder.
    let targets = m["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 7);
    for t in targets {
        let f = dir.join(t["file"].as_str().unwrap());
        let data = std::fs::read(&f).unwrap();
        assert_eq!(t["size"].as_u64().unwrap(), data.len() as u64);
        assert_eq!(t["sha256"].as_str().unwrap(), sha256_hex(&data));
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let farm = ["iso", "efi-iso", "hybrid", "efi-usb"].contains(&t["target"].as_str().unwrap());
        assert_eq!(t["route"], if farm { "farm" } else { "compile" }, "{t}");
        // A farm image names the shared binaries it holds, by hash; a compiled one none.
        let shared = t["shared"].as_array().map_or(0, Vec::len);
        assert_eq!(shared > 0, farm, "{t}");
    }
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Farm images: the shared binary pins our CA and holds no board material; the board's
    // certificate and key travel in its autoexec.ipxe.
    let x = lab.tmp.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    for f in ["ipxe.lkrn", "autoexec.ipxe"] {
        let (ok, o) = tool(
            "xorriso",
            &[
                "-osirrox",
                "on",
                "-indev",
                s(&dir.join("b1-hybrid.iso")),
                "-extract",
                &format!("/{f}"),
                s(&x.join(f)),
            ],
        );
        assert!(ok, "{o}");
    }
    let shared = x.join("ipxe.lkrn");
    let hybrid = targets.iter().find(|t| t["target"] == "hybrid").unwrap();
    let lkrn_sha = sha256_hex(&std::fs::read(&shared).unwrap());
    assert!(
        hybrid["shared"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e[1] == lkrn_sha.as_str()),
        "the manifest does not name the shared binary's hash: {hybrid}"
    );
    assert_eq!(field(&shared, "TRUST_FPS"), ca_fp);
    assert_eq!(field(&shared, "PRIVKEY_DER"), "none");
    assert_eq!(field(&shared, "EMBED_SHA256"), "none");
    assert_eq!(
        field(&shared, "CERT_DERS"),
        sha256_hex(&pem_der(&lab.path("ca/ca.crt")))
    );
    let autoexec = std::fs::read_to_string(x.join("autoexec.ipxe")).unwrap();
    let cert_hex = hex::encode(pem_der(&lab.path("boards/b1/cert.pem")));
    assert!(
        autoexec.contains(&format!("set cert:hexraw {cert_hex}\n")),
        "{autoexec}"
    );
    assert!(
        autoexec.contains(&format!(
            "set privkey:hexraw {}\n",
            hex::encode(pem_der(&lab.path("keys/boards/b1.key")))
        )),
        "{autoexec}"
    );
    assert!(autoexec.contains("imgfetch --name boot.ipxe https://127.0.0.1:8443/boot.ipxe"));
    let (ok, fat) = tool(
        "mtype",
        &["-i", s(&dir.join("b1-efi-usb.img")), "::/autoexec.ipxe"],
    );
    assert!(ok && fat == autoexec, "{fat}");
    // The tree's build folders hold the last board's key: private whatever the umask.
    for bin in ["src/bin", "src/bin-x86_64-efi"] {
        let mode = std::fs::metadata(tree.join(bin))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{bin} is {mode:o}");
    }
    // Nothing of the board stays in staging: no key, no script, no run folder.
    let staged: Vec<String> = std::fs::read_dir(out.join(".stage"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        staged.iter().all(|n| n.starts_with("ca-")),
        "left in staging: {staged:?}"
    );
    assert!(field(&dir.join("b1-efi.efi"), "TRUST_FPS") == ca_fp);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(on_disk["targets"], m["targets"]);
    // The fixture really refuses BIOS images without HTTPS (so the build above proves we enabled it).
    let (ok, out) = tool(
        "make",
        &["-C", s(&tree.join("src")), "bin/ipxe.lkrn", "CONFIG=none"],
    );
    assert!(!ok && out.contains("HTTPS is not enabled"), "{out}");
}

fn build_log_intervals(tree: &Path) -> Vec<(f64, f64)> {
    let log = std::fs::read_to_string(tree.join("src/build.log")).unwrap();
    let mut starts = Vec::new();
    let mut out = Vec::new();
    for l in log.lines() {
        let mut it = l.split_whitespace();
        let (kind, t) = (
            it.next().unwrap(),
            it.next().unwrap().parse::<f64>().unwrap(),
        );
        if kind == "start" {
            starts.push(t);
        } else {
            out.push((starts.remove(0), t));
        }
    }
    out
}

#[test]
fn builds_in_one_tree_are_serialised_and_jobs_use_copies() {
    let lab = Lab::init();
    for b in ["s1", "s2", "s3", "s4"] {
        lab.enroll(b, &[]);
    }
    let tree = fake_tree(&lab);
    let out = lab.tmp.path().join("out");
    // Two processes at once on one tree: the fixture fails if they overlap.
    let spawn = |b: &str| {
        lab.cmd(&[
            "build",
            b,
            "--ipxe-src",
            s(&tree),
            "--out",
            s(&out),
            "--target",
            "lkrn",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (c1, c2) = (spawn("s1"), spawn("s2"));
    for c in [c1, c2] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let iv = build_log_intervals(&tree);
    assert_eq!(iv.len(), 2);
    assert!(
        iv[0].1 <= iv[1].0 || iv[1].1 <= iv[0].0,
        "builds overlapped: {iv:?}"
    );
    // --jobs 2: two trees (the original and a copy), all boards built.
    let build_all_jobs2 = || {
        lab.run(&[
            "build",
            "--all",
            "--ipxe-src",
            s(&tree),
            "--out",
            s(&out),
            "--target",
            "lkrn",
            "--jobs",
            "2",
        ])
    };
    let o = build_all_jobs2();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        err.matches("built ").count(),
        4,
        "one line per finished board: {err}"
    );
    let trees: BTreeSet<String> = ["s1", "s2", "s3", "s4"]
        .iter()
        .map(|b| field(&out.join(b).join(format!("{b}-lkrn.lkrn")), "TREE"))
        .collect();
    assert_eq!(trees.len(), 2, "{trees:?}");
    assert!(
        trees.iter().any(|t| t.contains("cache/ipxe-trees")),
        "{trees:?}"
    );
    // Built side by side, each image holds its own board's certificate, key and
    // script (staging that mixed two boards' files up would show here).
    let mut embeds = BTreeSet::new();
    for b in ["s1", "s2", "s3", "s4"] {
        let img = out.join(b).join(format!("{b}-lkrn.lkrn"));
        let cert = sha256_hex(&pem_der(&lab.path(&format!("boards/{b}/cert.pem"))));
        assert!(field(&img, "CERT_DERS").ends_with(&cert), "{b}");
        assert_eq!(field(&img, "PRIVKEY_DER"), key_der_sha256(&lab, b), "{b}");
        assert!(field(&img, "EMBED_BOARD").contains(b), "{b}");
        embeds.insert(field(&img, "EMBED_SHA256"));
    }
    assert_eq!(embeds.len(), 4, "two boards got one script: {embeds:?}");
    // The copy stays and is reused (incremental) the next time.
    let o = build_all_jobs2();
    assert!(o.status.success());
    let copies: Vec<_> = std::fs::read_dir(lab.path("cache/ipxe-trees"))
        .unwrap()
        .collect();
    assert_eq!(copies.len(), 1);
}

#[test]
fn a_failing_make_names_board_and_target_and_shows_its_output() {
    let lab = Lab::init();
    lab.enroll("good", &[]);
    lab.enroll("bad", &[]);
    lab.enroll("gone", &[]);
    lab.ok(&["revoke", "gone"]);
    let mut embed = std::fs::read_to_string(lab.path("ipxe-scripts/embed.ipxe")).unwrap();
    embed.push_str("{% if board.name == \"bad\" %}# FAIL-THIS-BUILD{% endif %}\n");
    std::fs::write(lab.path("ipxe-scripts/embed.ipxe"), embed).unwrap();
    let tree = fake_tree(&lab);
    let out = lab.tmp.path().join("out");
    let o = lab.run(&[
        "build",
        "--all",
        "--ipxe-src",
        s(&tree),
        "--out",
        s(&out),
        "--target",
        "lkrn",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("FAILED bad") && err.contains("bin/ipxe.lkrn"),
        "{err}"
    );
    assert!(
        err.contains("simulated compiler failure"),
        "make's output is shown: {err}"
    );
    assert!(
        err.contains("1 of 2 boards failed: bad"),
        "--all skips the revoked board: {err}"
    );
    assert!(out.join("good/manifest.json").exists());
    assert!(!out.join("gone").exists());
    let e = lab.fails(&["build", "gone", "--ipxe-src", s(&tree), "--out", s(&out)]);
    assert!(e.contains("revoked"), "{e}");
    // Preflight: with the tools missing, the build says which packages to install.
    let empty = lab.tmp.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let o = lab
        .cmd(&[
            "build",
            "good",
            "--ipxe-src",
            s(&tree),
            "--out",
            s(&out),
            "--target",
            "hybrid",
        ])
        .env("PATH", &empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    for pkg in [
        "apt-get install make",
        "apt-get install xorriso (or genisoimage syslinux-utils)",
        "apt-get install mtools",
    ] {
        assert!(err.contains(pkg), "{pkg}: {err}");
    }
    // A tree without ECDHE gets the warning.
    std::fs::write(tree.join("src/net/tls.c"), "/* RSA key exchange only */\n").unwrap();
    let o = lab.run(&[
        "build",
        "good",
        "--ipxe-src",
        s(&tree),
        "--out",
        s(&out),
        "--target",
        "lkrn",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("--behind-proxy"),
        "{err}"
    );
    let o = lab.run(&["doctor", "--ipxe-src", s(&tree), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["tree_notes"][0].as_str().unwrap().contains("ECDHE"),
        "{v}"
    );
    assert_eq!(v["tree"]["ecdhe"], false, "{v}");
    assert!(v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["what"] == "mtools"));
}

#[test]
fn prebuilt_image_is_a_fat_disk_with_the_efi_binary_and_the_boards_identity() {
    let prebuilt = crate::boot::prebuilt_dir();
    let lab = Lab::init();
    lab.enroll("pb", &[]);
    let out = lab.tmp.path().join("out");
    let o = lab.build_efi_usb("pb", &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("TlsCaCertificate"), "{err}");
    let img = out.join("pb/pb-efi-usb.img");
    let (ok, listing) = tool("mdir", &["-i", s(&img), "-/", "-b", "::"]);
    assert!(ok, "{listing}");
    // The file system spans the image, no more and no less.
    let (ok, info) = tool("minfo", &["-i", s(&img), "::"]);
    assert!(ok, "{info}");
    let sectors: u64 = info
        .lines()
        .filter(|l| l.starts_with("small size: ") || l.starts_with("big size: "))
        .find_map(|l| l.split_once("size: ")?.1.strip_suffix(" sectors"))
        .filter(|n| *n != "0")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no size in minfo's output: {info}"));
    assert_eq!(
        sectors * 512,
        std::fs::metadata(&img).unwrap().len(),
        "{info}"
    );
    assert!(
        listing.contains("::/EFI/BOOT/BOOTX64.EFI") && listing.contains("::/autoexec.ipxe"),
        "{listing}"
    );
    let efi = lab.tmp.path().join("BOOTX64.EFI");
    let (ok, o2) = tool(
        "mcopy",
        &["-i", s(&img), "::/EFI/BOOT/BOOTX64.EFI", s(&efi)],
    );
    assert!(ok, "{o2}");
    assert_eq!(
        std::fs::read(&efi).unwrap(),
        std::fs::read(prebuilt.join("ipxe-amd64.efi")).unwrap()
    );
    let (ok, script) = tool("mtype", &["-i", s(&img), "::/autoexec.ipxe"]);
    assert!(ok);
    let hex_of = |prefix: &str| {
        hex::decode(
            script
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap()
                .trim(),
        )
        .unwrap()
    };
    assert_eq!(
        hex_of("set cert:hexraw "),
        pem_der(&lab.path("boards/pb/cert.pem"))
    );
    let key = lab.tmp.path().join("k.der");
    std::fs::write(&key, hex_of("set privkey:hexraw ")).unwrap();
    let from_key = openssl(&["pkey", "-inform", "DER", "-in", s(&key), "-pubout"]);
    let from_cert = openssl(&[
        "x509",
        "-in",
        s(&lab.path("boards/pb/cert.pem")),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(from_key, from_cert);
    assert!(
        script.contains("imgfetch --name boot.ipxe https://127.0.0.1:8443/boot.ipxe"),
        "{script}"
    );
    // Debian's prebuilt iPXE has no imgverify: its boards never claim it.
    assert!(!script.contains("imgverify=1"), "{script}");
    // The CA as an EFI signature list: GUID, sizes, then the DER.
    let sl = std::fs::read(out.join("pb/ca.siglist")).unwrap();
    let ca = pem_der(&lab.path("ca/ca.crt"));
    assert_eq!(&sl[44..], ca.as_slice());
    assert_eq!(
        u32::from_le_bytes(sl[16..20].try_into().unwrap()) as usize,
        sl.len()
    );
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("pb/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["mode"], "prebuilt");
    assert_eq!(
        m["targets"][0]["sha256"],
        sha256_hex(&std::fs::read(&img).unwrap())
    );
    // A board whose key we never held cannot get an image.
    let d = lab.tmp.path();
    rsa_csr(s(&d.join("x.key")), "/CN=x", s(&d.join("x.csr")), &[]);
    lab.ok(&["sign", "csr-only", "--csr", s(&d.join("x.csr"))]);
    let e = lab.fails(&[
        "build",
        "csr-only",
        "--prebuilt",
        s(&prebuilt),
        "--out",
        s(&out),
    ]);
    assert!(e.contains("does not hold the key"), "{e}");
    // Without --out the images go to DIR/out (0700: they hold keys), never where the command
    // happens to run.
    let cwd = lab.tmp.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    let o = lab
        .cmd(&[
            "build",
            "pb",
            "--prebuilt",
            s(&prebuilt),
            "--target",
            "efi-usb",
        ])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(lab.path("out/pb/pb-efi-usb.img").is_file());
    assert_eq!(
        std::fs::metadata(lab.path("out/pb"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "written to the cwd"
    );
}

#[test]
fn doctor_names_what_each_target_needs_and_fails_where_build_would() {
    let lab = Lab::init();
    lab.enroll("d1", &[]);
    let tree = fake_tree(&lab);
    let out = lab.tmp.path().join("out");
    let iso_tools = [
        "xorriso",
        "xorrisofs",
        "genisoimage",
        "mkisofs",
        "isohybrid",
    ];
    let no_iso = path_without(lab.tmp.path(), &iso_tools);
    let no_xorriso = path_without(lab.tmp.path(), &["xorriso", "xorrisofs"]);
    let doctor = |path: &Path, target: &str| {
        lab.cmd(&[
            "doctor",
            "--ipxe-src",
            s(&tree),
            "--target",
            target,
            "--json",
        ])
        .env("PATH", path)
        .output()
        .unwrap()
    };
    let build = |path: &Path, target: &str| {
        lab.cmd(&[
            "build",
            "d1",
            "--ipxe-src",
            s(&tree),
            "--out",
            s(&out),
            "--target",
            target,
        ])
        .env("PATH", path)
        .output()
        .unwrap()
    };
    // No ISO tool at all: hybrid and iso fail in doctor and in build, naming the packages;
    // lkrn and efi-usb need none and pass both.
    for target in ["hybrid", "iso", "efi-iso"] {
        let d = doctor(&no_iso, target);
        let err = String::from_utf8_lossy(&d.stderr);
        assert!(!d.status.success(), "{target}: {err}");
        assert!(err.contains("xorriso, or genisoimage + isohybrid"), "{err}");
        let b = build(&no_iso, target);
        let err = String::from_utf8_lossy(&b.stderr);
        assert!(!b.status.success(), "{target}");
        assert!(err.contains("apt-get install xorriso"), "{err}");
    }
    for target in ["lkrn", "efi-usb"] {
        let d = doctor(&no_iso, target);
        assert!(d.status.success(), "{}", String::from_utf8_lossy(&d.stderr));
        let b = build(&no_iso, target);
        assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    }
    // Without xorriso but with genisoimage + isohybrid: doctor says which tool, build agrees.
    let d = doctor(&no_xorriso, "hybrid");
    assert!(d.status.success());
    let v: serde_json::Value = serde_json::from_slice(&d.stdout).unwrap();
    assert_eq!(v["iso_tool"], "genisoimage", "{v}");
    let b = build(&no_xorriso, "hybrid");
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("d1/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["targets"][0]["iso_tool"], "genisoimage");
    // genisoimage without isohybrid is no ISO tool (its images would not boot from a stick).
    let half = path_without(lab.tmp.path(), &["xorriso", "xorrisofs", "isohybrid"]);
    let d = doctor(&half, "hybrid");
    let err = String::from_utf8_lossy(&d.stderr);
    assert!(!d.status.success(), "{err}");
    assert!(err.contains("xorriso, or genisoimage + isohybrid"), "{err}");
    // With both, xorriso (reproducible) wins.
    let v: serde_json::Value = serde_json::from_slice(
        &doctor(Path::new(&std::env::var("PATH").unwrap()), "hybrid").stdout,
    )
    .unwrap();
    assert_eq!(v["iso_tool"], "xorriso", "{v}");
}

#[test]
fn farm_images_are_reproducible_and_hybrid_with_an_mbr() {
    let lab = Lab::init();
    lab.enroll("r1", &[]);
    let tree = fake_tree(&lab);
    let build = |out: &str| {
        let out = lab.tmp.path().join(out);
        lab.ok(&[
            "build",
            "r1",
            "--ipxe-src",
            s(&tree),
            "--out",
            s(&out),
            "--target",
            "hybrid",
            "--target",
            "efi-usb",
        ]);
        out.join("r1")
    };
    let (a, b) = (build("out-a"), build("out-b"));
    for f in ["r1-hybrid.iso", "r1-efi-usb.img"] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs between two builds");
    }
    let iso = std::fs::read(a.join("r1-hybrid.iso")).unwrap();
    assert_eq!(&iso[510..512], &[0x55, 0xaa], "no MBR boot signature");
    assert_eq!(&iso[512..520], b"EFI PART", "no GPT header");
}

/// Staging hashed over the wrong bytes once: staged files are named by their content, so a
/// new CA (or certificate) is staged anew, never mistaken for the one a previous build left.
#[test]
fn a_replaced_ca_is_staged_anew_not_reused() {
    let lab = Lab::init();
    lab.enroll("r1", &[]);
    let tree = fake_tree(&lab);
    let out = lab.tmp.path().join("out");
    let build = || {
        lab.ok(&[
            "build",
            "r1",
            "--ipxe-src",
            s(&tree),
            "--out",
            s(&out),
            "--target",
            "lkrn",
        ])
    };
    let fp = || ca_fingerprint(&lab);
    let img = out.join("r1/r1-lkrn.lkrn");
    build();
    let first = fp();
    assert_eq!(field(&img, "TRUST_FPS"), first);
    lab.ok(&[
        "init",
        "--force",
        "--san",
        "IP:127.0.0.1",
        "--san",
        "IP:10.0.2.2",
    ]);
    lab.ok(&["revoke", "r1"]);
    lab.ok(&["enroll", "r1", "--replace"]);
    build();
    let second = fp();
    assert_ne!(first, second);
    assert_eq!(
        field(&img, "TRUST_FPS"),
        second,
        "the old CA was staged again"
    );
    let cert = sha256_hex(&pem_der(&lab.path("boards/r1/cert.pem")));
    assert!(field(&img, "CERT_DERS").ends_with(&cert));
}

/// Debian's prebuilt iPXE has no `ntp` command: asking it to set the clock from a server is
/// refused (every board would stop at `ntp: command not found`), and nothing is written. A
/// binary that has the command (a tree built with NTP) is taken.
#[test]
fn ntp_for_a_prebuilt_ipxe_without_the_command_is_refused() {
    let prebuilt = crate::boot::prebuilt_dir();
    let lab = Lab::init();
    lab.enroll("pb", &[]);
    let out = lab.tmp.path().join("out");
    let args = |efi: &Path| {
        vec![
            "build".to_string(),
            "pb".into(),
            "--prebuilt".into(),
            s(efi).into(),
            "--target".into(),
            "efi-usb".into(),
            "--ntp".into(),
            "10.0.2.2".into(),
            "--out".into(),
            s(&out).into(),
        ]
    };
    let a = args(&prebuilt);
    let err = lab.fails(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("no `ntp` command"), "{err}");
    assert!(!out.exists(), "a refused build wrote {}", out.display());
    // The same binary with the command's name in it, as a build with NTP has it.
    let with = lab.tmp.path().join("with-ntp.efi");
    let mut bytes = std::fs::read(prebuilt.join("ipxe-amd64.efi")).unwrap();
    bytes.extend_from_slice(b"\0ntp\0");
    std::fs::write(&with, bytes).unwrap();
    let a = args(&with);
    lab.ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.join("pb").exists());
}

/// `--out` relative to where the operator stands, with `make` running in the iPXE tree:
/// images, manifest and staging land under that folder, not under the tree.
#[test]
fn a_relative_out_is_taken_from_where_build_runs() {
    let lab = Lab::init();
    lab.enroll("rel", &[]);
    let tree = fake_tree(&lab);
    let o = lab
        .cmd(&[
            "build",
            "rel",
            "--ipxe-src",
            s(&tree),
            "--out",
            "images",
            "--target",
            "hybrid",
            "--target",
            "lkrn",
        ])
        .current_dir(lab.tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dir = lab.tmp.path().join("images/rel");
    for f in ["rel-hybrid.iso", "rel-lkrn.lkrn", "manifest.json"] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    assert!(
        !tree.join("src/images").exists(),
        "output written into the tree"
    );
}
