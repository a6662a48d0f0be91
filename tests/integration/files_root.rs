//! The boot files folder as an attacker who owns it sees it: a root swapped for a link to the
//! state dir, key material in forms no name gives away, links into build output.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::{s, Lab};

fn get(port: u16, path: &str) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status(r: &str) -> &str {
    r.get(9..12).unwrap_or("")
}

/// A deployer who owns the folder holding the files root swaps the root with a link to the
/// state dir (`renameat2(RENAME_EXCHANGE)`, atomic) while boards fetch files: whatever folder
/// the path names when a request comes, what is opened is what is judged.
#[test]
fn a_files_root_swapped_with_a_link_to_the_state_dir_never_serves_the_state() {
    let lab = Lab::init();
    lab.ok(&["nginx-config"]); // makes server/proxy.secret
    let secret = std::fs::read_to_string(lab.path("server/proxy.secret")).unwrap();
    let deploy = lab.tmp.path().join("deploy");
    let root = deploy.join("files");
    std::fs::create_dir_all(root.join("server")).unwrap();
    std::fs::write(root.join("server/proxy.secret"), "A-BOOT-FILE").unwrap();
    std::os::unix::fs::symlink(&lab.dir, deploy.join("other")).unwrap();
    let srv = lab.serve(&["--files", s(&root)]);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, deploy) = (stop.clone(), deploy.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    deploy.join("files"),
                    rustix::fs::CWD,
                    deploy.join("other"),
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
            }
        })
    };
    let (mut leaks, mut served) = (0, 0);
    for _ in 0..1500 {
        let r = get(srv.http, "/server/proxy.secret");
        if r.contains(secret.trim()) {
            leaks += 1;
        }
        if r.ends_with("A-BOOT-FILE") {
            served += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(
        leaks, 0,
        "the proxy secret was served {leaks} times ({served} good answers)"
    );
    assert!(served > 0, "the boot file was never served");
}

/// Without a race: the link pointed at a folder of the state dir that holds no key by name
/// (the one-time secret templates, the board records) serves nothing from it.
#[test]
fn a_files_link_pointed_into_the_state_dir_serves_nothing_from_it() {
    let lab = Lab::init();
    lab.enroll("b1", &["--secret", "token=TOPSECRET-B1"]);
    std::fs::create_dir_all(lab.path("secrets")).unwrap();
    std::fs::write(lab.path("secrets/vault"), "TOPSECRET-TEMPLATE").unwrap();
    let good = lab.tmp.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(good.join("vmlinuz"), "KERNEL").unwrap();
    let link = lab.tmp.path().join("current");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let srv = lab.serve(&["--files", s(&link)]);
    assert!(get(srv.http, "/vmlinuz").ends_with("KERNEL"));
    let point_at = |to: &std::path::Path| {
        let tmp = lab.tmp.path().join("current.new");
        std::os::unix::fs::symlink(to, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
    };
    for (folder, file) in [
        ("secrets", "/vault"),
        ("boards", "/b1.toml"),
        ("", "/etc/config.toml"),
    ] {
        point_at(&lab.path(folder));
        let r = get(srv.http, file);
        assert_eq!(status(&r), "403", "{folder}{file}: {r}");
        assert!(!r.contains("TOPSECRET"), "{r}");
    }
    // The state dir's own files folder is the one place inside it that is served.
    std::fs::create_dir_all(lab.path("files")).unwrap();
    std::fs::write(lab.path("files/initrd"), "INITRD").unwrap();
    point_at(&lab.path("files"));
    assert!(get(srv.http, "/initrd").ends_with("INITRD"));
    // At start too.
    for folder in ["secrets", "boards/b1"] {
        let o = lab
            .cmd(&[
                "serve",
                "--https",
                "127.0.0.1:1",
                "--http",
                "127.0.0.1:1",
                "--files",
                s(&lab.path(folder)),
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("key material"),
            "{folder}: {err}"
        );
    }
}

/// Key material that no file name gives away: a board key in DER, the `autoexec.ipxe` a
/// build writes (its `set privkey:hexraw`), a hard link to the proxy secret, and a symlink
/// into a build's output folder.
#[test]
fn key_material_in_any_form_is_never_served() {
    let lab = Lab::init();
    lab.ok(&["nginx-config"]);
    lab.enroll("k1", &[]);
    let files = lab.path("files");
    std::fs::create_dir_all(&files).unwrap();
    crate::util::openssl(&[
        "pkey",
        "-in",
        s(&lab.path("keys/boards/k1.key")),
        "-outform",
        "DER",
        "-out",
        s(&files.join("board.bin")),
    ]);
    crate::util::openssl(&[
        "pkcs8",
        "-topk8",
        "-in",
        s(&lab.path("keys/boards/k1.key")),
        "-outform",
        "DER",
        "-passout",
        "pass:x",
        "-out",
        s(&files.join("board-enc.bin")),
    ]);
    crate::util::openssl(&[
        "rsa",
        "-in",
        s(&lab.path("keys/boards/k1.key")),
        "-traditional",
        "-outform",
        "DER",
        "-out",
        s(&files.join("board-rsa.bin")),
    ]);
    std::fs::write(
        files.join("autoexec.ipxe"),
        "#!ipxe\nset cert:hexraw 3082\nset privkey:hexraw 308204be020100300d\nchain https://x/boot.ipxe\n",
    )
    .unwrap();
    std::fs::hard_link(lab.path("server/proxy.secret"), files.join("notes.txt")).unwrap();
    std::fs::create_dir_all(files.join("images/k1")).unwrap();
    std::fs::write(files.join("images/.ipxe-ca-images"), b"").unwrap();
    std::fs::write(files.join("images/k1/k1.img"), "IMAGE-WITH-KEY").unwrap();
    std::os::unix::fs::symlink("images/k1/k1.img", files.join("k1.img")).unwrap();
    std::os::unix::fs::symlink("images/k1", files.join("k1")).unwrap();
    std::fs::write(files.join("vmlinuz-6.1"), "KERNEL").unwrap();
    std::os::unix::fs::symlink("vmlinuz-6.1", files.join("vmlinuz")).unwrap();
    let srv = lab.serve(&[]);
    for file in [
        "/board.bin",
        "/board-enc.bin",
        "/board-rsa.bin",
        "/autoexec.ipxe",
        "/notes.txt",
        "/k1.img",
        "/k1/k1.img",
    ] {
        let r = get(srv.http, file);
        assert_eq!(status(&r), "403", "{file}: {r}");
    }
    let r = get(srv.http, "/vmlinuz");
    assert!(
        r.ends_with("KERNEL"),
        "a link between boot files still serves: {r}"
    );
    // And the kernel confines the threads that opened them (this kernel has Landlock).
    let log = srv.output();
    assert!(
        log.contains("boot files are opened by threads the kernel confines to")
            && log.contains("(Landlock)"),
        "{log}"
    );
    // sign-files refuses them too, before signing anything.
    let err = lab.fails(&["sign-files", s(&files.join("board.bin"))]);
    assert!(err.contains("private key"), "{err}");
    let err = lab.fails(&["sign-files", s(&files.join("autoexec.ipxe"))]);
    assert!(err.contains("private key"), "{err}");
}
