//! `ipxe-ca flash` on real loop devices (root creates them), and device discovery on a fake
//! sysfs tree.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::util::{s, tool, write_random, Lab};

/// A loop device over a sparse file; detached (and unmounted) on drop.
struct Loop {
    dev: PathBuf,
    backing: PathBuf,
    mnt: Option<PathBuf>,
}

impl Loop {
    fn new(dir: &Path, name: &str, size: u64) -> Loop {
        let backing = dir.join(name);
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(size)
            .unwrap();
        let (ok, out) = tool("losetup", &["--find", "--show", s(&backing)]);
        assert!(ok, "loop devices need root (losetup): {out}");
        Loop {
            dev: PathBuf::from(out.trim()),
            backing,
            mnt: None,
        }
    }

    fn mount(&mut self, dir: &Path) {
        let (ok, out) = tool("mkfs.ext2", &["-q", s(&self.dev)]);
        assert!(ok, "{out}");
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let (ok, out) = tool("mount", &[s(&self.dev), s(&mnt)]);
        assert!(ok, "{out}");
        self.mnt = Some(mnt);
    }

    /// The first `len` bytes as the device shows them.
    fn head(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.dev)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }

    fn hash(&self) -> Vec<u8> {
        let data = std::fs::read(&self.backing).unwrap();
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data)
            .as_ref()
            .to_vec()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mnt {
            let _ = tool("umount", &[s(m)]);
        }
        if std::fs::read_to_string("/proc/swaps").is_ok_and(|t| t.contains(s(&self.dev))) {
            let _ = tool("swapoff", &[s(&self.dev)]);
        }
        let _ = tool("losetup", &["-d", s(&self.dev)]);
    }
}

fn image(dir: &Path, len: usize) -> PathBuf {
    let p = dir.join("image.img");
    write_random(&p, len);
    p
}

#[test]
fn a_board_image_goes_onto_an_unmounted_loop_device_byte_for_byte() {
    let lab = Lab::init();
    lab.enroll("stick-board", &[]);
    let out = lab.tmp.path().join("out");
    lab.ok(&[
        "build",
        "stick-board",
        "--prebuilt",
        s(&crate::boot::prebuilt_dir()),
        "--out",
        s(&out),
    ]);
    let img = out.join("stick-board/stick-board-efi-usb.img");
    let lo = Loop::new(lab.tmp.path(), "stick", 16 << 20);
    let stdout = lab.ok(&[
        "flash",
        "stick-board",
        s(&lo.dev),
        "--out",
        s(&out),
        "--allow-non-removable",
        "--yes",
    ]);
    assert!(stdout.contains("wrote and verified"), "{stdout}");
    let data = std::fs::read(&img).unwrap();
    assert_eq!(lo.head(data.len()), data);
    let sha = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &data).as_ref());
    assert!(stdout.contains(&sha), "{stdout}");
    // Without a terminal the progress comes as plain lines.
    let o = lab.run(&[
        "flash",
        s(&img),
        s(&lo.dev),
        "--allow-non-removable",
        "--yes",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success()
            && err.contains("flash: writing 100%")
            && err.contains("flash: verifying 100%"),
        "{err}"
    );
    // A stick exactly the image's size takes it.
    let exact = Loop::new(lab.tmp.path(), "exact", data.len() as u64);
    let stdout = lab.ok(&[
        "flash",
        s(&img),
        s(&exact.dev),
        "--allow-non-removable",
        "--yes",
    ]);
    assert!(stdout.contains("wrote and verified"), "{stdout}");
    assert_eq!(exact.head(data.len()), data);
    // An image that ends inside the last 4 MiB read-back block: only its own bytes are compared
    // (the stick's bytes after it are not the image's).
    let odd = lab.tmp.path().join("odd.img");
    write_random(&odd, (5 << 20) + 4096);
    let big = Loop::new(lab.tmp.path(), "big", 8 << 20);
    std::fs::write(&big.backing, vec![0xA5u8; 8 << 20]).unwrap();
    let stdout = lab.ok(&[
        "flash",
        s(&odd),
        s(&big.dev),
        "--allow-non-removable",
        "--yes",
    ]);
    assert!(stdout.contains("wrote and verified"), "{stdout}");
}

#[test]
fn unsafe_targets_are_refused_and_left_untouched() {
    let lab = Lab::init();
    let d = lab.tmp.path();
    let img = image(d, 3 << 20);
    // A regular file is not a block device.
    let file = d.join("not-a-disk");
    std::fs::write(&file, b"precious").unwrap();
    let e = lab.fails(&["flash", s(&img), s(&file), "--allow-non-removable", "--yes"]);
    assert!(e.contains("not a block device"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    // A device smaller than the image.
    let small = Loop::new(d, "small", 1 << 20);
    let before = small.hash();
    let e = lab.fails(&[
        "flash",
        s(&img),
        s(&small.dev),
        "--allow-non-removable",
        "--yes",
    ]);
    assert!(e.contains("too small"), "{e}");
    assert_eq!(before, small.hash());
    // A fixed (non-removable, non-USB) disk without the flag.
    let fixed = Loop::new(d, "fixed", 8 << 20);
    let before = fixed.hash();
    let e = lab.fails(&["flash", s(&img), s(&fixed.dev), "--yes"]);
    assert!(e.contains("--allow-non-removable"), "{e}");
    // No --yes and no terminal.
    let e = lab.fails(&["flash", s(&img), s(&fixed.dev), "--allow-non-removable"]);
    assert!(e.contains("pass --yes"), "{e}");
    assert_eq!(before, fixed.hash());
    // A mounted device, whatever the flags.
    let mut mounted = Loop::new(d, "mounted", 8 << 20);
    let mnt_dir = d.join("m");
    std::fs::create_dir_all(&mnt_dir).unwrap();
    mounted.mount(&mnt_dir);
    let before = mounted.hash();
    let e = lab.fails(&[
        "flash",
        s(&img),
        s(&mounted.dev),
        "--allow-non-removable",
        "--yes",
    ]);
    assert!(e.contains("mounted"), "{e}");
    assert_eq!(before, mounted.hash());
    // The disk holding / is refused whatever the flags.
    let root = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root_dev = root
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    if root_dev.starts_with("/dev/") && Path::new(root_dev).exists() {
        let e = lab.fails(&["flash", s(&img), root_dev, "--allow-non-removable", "--yes"]);
        assert!(e.contains("refusing") || e.contains("partition"), "{e}");
    } else {
        eprintln!(
            "\n==== SKIPPED the root-disk refusal: / is on {root_dev}, not a block device here \
(the swap refusal below runs instead)\n"
        );
    }
    // A disk in use as swap is refused whatever the flags (a real swap on a loop device).
    let swap = Loop::new(d, "swap", 16 << 20);
    let (ok, out) = tool("mkswap", &[s(&swap.dev)]);
    assert!(ok, "{out}");
    let (ok, out) = tool("swapon", &[s(&swap.dev)]);
    assert!(ok, "swapon (root) failed: {out}");
    let before = swap.hash();
    let e = lab.fails(&[
        "flash",
        s(&img),
        s(&swap.dev),
        "--allow-non-removable",
        "--yes",
    ]);
    // Refused as the running system (no flag overrides it), not as merely mounted.
    assert!(e.contains("holds the running system"), "{e}");
    assert_eq!(before, swap.hash());
}

#[test]
fn a_corrupted_read_back_is_a_verification_failure() {
    let lab = Lab::init();
    let d = lab.tmp.path();
    let img = image(d, 2 << 20);
    let lo = Loop::new(d, "flaky", 8 << 20);
    lab.ok(&[
        "flash",
        s(&img),
        s(&lo.dev),
        "--allow-non-removable",
        "--yes",
    ]);
    lab.ok(&[
        "flash",
        s(&img),
        s(&lo.dev),
        "--allow-non-removable",
        "--verify-only",
    ]);
    // The stick "loses" a byte behind the kernel's back (in the loop device's backing file)
    // while its pages are cached (an open reader keeps the cache alive): verification must
    // read the device, not a cached copy of what was written.
    let mut holder = std::fs::File::open(&lo.dev).unwrap();
    let mut cached = vec![0u8; 2 << 20];
    holder.read_exact(&mut cached).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&lo.backing)
        .unwrap();
    f.seek(SeekFrom::Start(1_000_000)).unwrap();
    let mut orig = [0u8; 1];
    std::fs::File::open(&img)
        .unwrap()
        .seek(SeekFrom::Start(1_000_000))
        .unwrap();
    {
        let mut r = std::fs::File::open(&img).unwrap();
        r.seek(SeekFrom::Start(1_000_000)).unwrap();
        r.read_exact(&mut orig).unwrap();
    }
    f.write_all(&[orig[0] ^ 0xff]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let e = lab.fails(&[
        "flash",
        s(&img),
        s(&lo.dev),
        "--allow-non-removable",
        "--verify-only",
    ]);
    assert!(e.contains("verification FAILED"), "{e}");
    drop(holder);
}

/// A fake sysfs with a USB stick, an SD card (removable, partitioned), a SATA disk and a loop device.
fn fake_sysfs(root: &Path) {
    let dev = |rel: &str, size: u64, removable: u8, vendor: &str, model: &str| {
        let d = root.join(rel);
        std::fs::create_dir_all(d.join("device")).unwrap();
        std::fs::write(d.join("size"), format!("{}\n", size / 512)).unwrap();
        std::fs::write(d.join("removable"), format!("{removable}\n")).unwrap();
        std::fs::write(d.join("device/vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(d.join("device/model"), format!("{model}\n")).unwrap();
        d
    };
    std::fs::create_dir_all(root.join("block")).unwrap();
    let usb =
        "devices/pci0000:00/0000:00:14.0/usb1/1-2/1-2:1.0/host6/target6:0:0/6:0:0:0/block/sdb";
    dev(usb, 16_000_000_000, 0, "SanDisk", "Cruzer Blade");
    std::fs::write(
        root.join("devices/pci0000:00/0000:00:14.0/usb1/1-2/serial"),
        "4C530001230117\n",
    )
    .unwrap();
    let sd = dev(
        "devices/platform/mmc0/mmc_host/mmc0/mmc0:0001/block/mmcblk0",
        32_000_000_000,
        1,
        "",
        "SD32G",
    );
    std::fs::create_dir_all(sd.join("mmcblk0p1")).unwrap();
    std::fs::write(sd.join("mmcblk0p1/partition"), "1\n").unwrap();
    dev(
        "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda",
        500_000_000_000,
        0,
        "ATA",
        "Samsung SSD",
    );
    dev("devices/virtual/block/loop0", 8 << 20, 0, "", "");
    // A card reader with no card: removable, 0 bytes, never a candidate.
    dev("devices/platform/mmc1/block/mmcblk1", 0, 1, "", "");
    for (name, rel) in [
        ("sdb", format!("../{usb}")),
        (
            "mmcblk0",
            "../devices/platform/mmc0/mmc_host/mmc0/mmc0:0001/block/mmcblk0".to_string(),
        ),
        (
            "sda",
            "../devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda"
                .to_string(),
        ),
        ("loop0", "../devices/virtual/block/loop0".to_string()),
        (
            "mmcblk1",
            "../devices/platform/mmc1/block/mmcblk1".to_string(),
        ),
    ] {
        symlink(rel, root.join("block").join(name)).unwrap();
    }
}

#[test]
fn the_disk_that_holds_root_is_known_whatever_else_is_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    fake_sysfs(&sys);
    let mounts = tmp.path().join("mounts");
    // The SD card's partition holds `/` (a board booted from its card); the stick is mounted
    // elsewhere.
    std::fs::write(
        &mounts,
        "proc /proc proc rw 0 0\n/dev/mmcblk0p1 / ext4 rw 0 0\n/dev/sdb /media/my\\040stick vfat rw 0 0\n",
    )
    .unwrap();
    let swaps = tmp.path().join("swaps");
    std::fs::write(&swaps, "Filename Type Size Used Priority\n").unwrap();
    let devs = ipxe_ca::flash::devices(&ipxe_ca::flash::System {
        sysfs: sys,
        mounts,
        swaps,
    })
    .unwrap();
    let dev = |n: &str| devs.iter().find(|d| d.name == n).unwrap();
    assert!(dev("mmcblk0").holds_root);
    assert_eq!(dev("mmcblk0").mounted, ["/"]);
    assert!(!dev("sdb").holds_root);
    assert_eq!(dev("sdb").mounted, ["/media/my stick"]);
    assert!(!dev("sda").holds_root && dev("sda").mounted.is_empty());
}

#[test]
fn list_shows_exactly_the_usb_stick_and_the_removable_card() {
    let lab = Lab::init();
    let sys = lab.tmp.path().join("sys");
    fake_sysfs(&sys);
    let o = lab
        .cmd(&["flash", "--list", "--json"])
        .env("IPXE_CA_SYSFS", &sys)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mmcblk0", "sdb"]);
    let sdb = &v[1];
    assert_eq!(sdb["usb"], true);
    assert_eq!(sdb["serial"], "4C530001230117");
    assert_eq!(sdb["size"], 16_000_000_000u64);
    assert_eq!(sdb["model"], "Cruzer Blade");
    assert_eq!(v[0]["removable"], true);
    assert_eq!(v[0]["partitions"], serde_json::json!(["mmcblk0p1"]));
    let o = lab
        .cmd(&["flash", "--list"])
        .env("IPXE_CA_SYSFS", &sys)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("/dev/sdb (SanDisk Cruzer Blade, serial 4C530001230117, 16.0 GB, USB)"),
        "{text}"
    );
    assert!(!text.contains("sda") && !text.contains("loop0"), "{text}");
}

/// Run `ipxe-ca` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn on_terminal(lab: &Lab, args: &[&str], answer: &str) -> (bool, String) {
    let mut cmd = format!("'{}' --dir '{}'", s(&crate::util::bin()), s(&lab.dir));
    for a in args {
        cmd.push_str(&format!(" '{a}'"));
    }
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) is needed");
    // Answer once the question is on the terminal (or the program has ended without asking).
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("Type 'yes'") {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(format!("{answer}\n").as_bytes());
    }
    out.read_to_end(&mut seen).unwrap();
    let o = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&seen).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

#[test]
fn on_a_terminal_flash_asks_and_writes_only_after_yes() {
    let lab = Lab::init();
    let d = lab.tmp.path();
    let img = image(d, 1 << 20);
    let lo = Loop::new(d, "asked", 4 << 20);
    let before = lo.hash();
    let args = ["flash", s(&img), s(&lo.dev), "--allow-non-removable"];
    let (ok, text) = on_terminal(&lab, &args, "no");
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("to {}", s(&lo.dev)))
            && text.contains("4.2 MB")
            && text.contains("Type 'yes'"),
        "{text}"
    );
    assert!(text.contains("nothing was written"), "{text}");
    assert_eq!(before, lo.hash());
    let (ok, text) = on_terminal(&lab, &args, "yes");
    assert!(ok, "{text}");
    assert!(text.contains("wrote and verified"), "{text}");
    assert_eq!(lo.head(1 << 20), std::fs::read(&img).unwrap());
}

/// The device shown at the prompt is the device written: flash holds it
/// open (exclusively) from its checks until the write, so nothing can take or swap it.
#[test]
fn a_node_that_leads_to_another_disk_than_the_one_checked_is_never_held() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = image(d, 1 << 20);
    let (a, b) = (Loop::new(d, "a", 4 << 20), Loop::new(d, "b", 4 << 20));
    let sys = ipxe_ca::flash::System::default();
    let mut plan = ipxe_ca::flash::plan(&sys, &img, None, &a.dev, true).unwrap();
    // Between the checks and the open, the name comes to lead to another disk (a udev rename,
    // a swapped symlink): both are block devices, only their numbers differ.
    plan.device.path = b.dev.clone();
    let e = ipxe_ca::flash::hold(&mut plan, &sys)
        .unwrap_err()
        .to_string();
    assert!(e.contains("changed between the checks"), "{e}");
    let mut plan = ipxe_ca::flash::plan(&sys, &img, None, &a.dev, true).unwrap();
    ipxe_ca::flash::hold(&mut plan, &sys).unwrap();
}

#[test]
fn the_device_is_held_from_check_to_write_and_a_file_never_shadows_a_board() {
    use std::os::unix::fs::OpenOptionsExt;
    let lab = Lab::init();
    let d = lab.tmp.path();
    let img = image(d, 1 << 20);
    let lo = Loop::new(d, "held", 4 << 20);
    let cmd = format!(
        "'{}' --dir '{}' flash '{}' '{}' --allow-non-removable",
        s(&crate::util::bin()),
        s(&lab.dir),
        s(&img),
        s(&lo.dev)
    );
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut text = String::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("Type 'yes'") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("no prompt");
    // While the operator reads the prompt, nobody else can open the device exclusively.
    let other = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(&lo.dev);
    child.stdin.take().unwrap().write_all(b"no\n").unwrap();
    let _ = child.wait();
    assert!(
        other.is_err(),
        "the device was not held while the prompt waited"
    );

    // A file in the current directory named like a registered board does not shadow it.
    lab.enroll("shadowed", &[]);
    let out = d.join("out");
    let built = lab.run(&[
        "build",
        "shadowed",
        "--prebuilt",
        s(&crate::boot::prebuilt_dir()),
        "--out",
        s(&out),
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let cwd = d.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(cwd.join("shadowed"), b"not the board's image").unwrap();
    let o = lab
        .cmd(&[
            "flash",
            "shadowed",
            s(&lo.dev),
            "--allow-non-removable",
            "--yes",
            "--out",
            s(&out),
        ])
        .current_dir(&cwd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = std::fs::read(out.join("shadowed/shadowed-efi-usb.img")).unwrap();
    assert_eq!(
        lo.head(want.len().min(4 << 20)),
        want[..want.len().min(4 << 20)]
    );
}

/// The write is flushed to the device (fsync) before the read-back opens it, and the
/// read-back drops the page cache first.
#[test]
fn bug_flash_reads_back_before_the_write_is_flushed() {
    let lab = Lab::init();
    let d = lab.tmp.path();
    let img = image(d, 1 << 20);
    let lo = Loop::new(d, "traced", 4 << 20);
    let dev = s(&lo.dev);
    let calls = crate::util::strace(
        &lab,
        "openat,fsync,fdatasync,fadvise64",
        &["flash", s(&img), dev, "--allow-non-removable", "--yes"],
    );
    let opened = |c: &crate::util::Syscall, how: &str| {
        c.name == "openat" && c.path() == Some(dev) && c.args.contains(how)
    };
    let w = calls
        .iter()
        .position(|c| opened(c, "O_WRONLY"))
        .unwrap_or_else(|| panic!("no write open of {dev}: {calls:#?}"));
    let wfd = calls[w].ret.clone();
    let sync = w + calls[w..]
        .iter()
        .position(|c| (c.name == "fsync" || c.name == "fdatasync") && c.args == wfd && c.ret == "0")
        .unwrap_or_else(|| panic!("{dev} (fd {wfd}) never fsynced: {calls:#?}"));
    let r = sync
        + calls[sync..]
            .iter()
            .position(|c| opened(c, "O_RDONLY"))
            .unwrap_or_else(|| panic!("no read-back open after the fsync: {calls:#?}"));
    let rfd = calls[r].ret.clone();
    assert!(
        calls[r..].iter().any(|c| c.name == "fadvise64"
            && c.args.starts_with(&format!("{rfd},"))
            && c.args.contains("POSIX_FADV_DONTNEED")),
        "the read-back does not drop the page cache: {calls:#?}"
    );
}

/// After a real write, what is read back is compared with the image as planned (the
/// image changed on disk between the check and the write here, as a rebuild would do it).
#[test]
fn bug_flash_does_not_compare_the_read_back_after_a_real_write() {
    use ipxe_ca::flash;
    let lab = Lab::init();
    let d = lab.tmp.path();
    let img = image(d, 1 << 20);
    let lo = Loop::new(d, "changed", 4 << 20);
    let sys = flash::System::default();
    let mut plan = flash::plan(&sys, &img, None, &lo.dev, true).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.seek(SeekFrom::Start(12_345)).unwrap();
    f.write_all(b"rebuilt").unwrap();
    drop(f);
    let e = flash::flash(&mut plan, true, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("verification FAILED"), "{e}");
    // The same write of an unchanged image verifies.
    let img2 = image(&d.join(""), 1 << 20);
    let mut plan = flash::plan(&sys, &img2, None, &lo.dev, true).unwrap();
    let sha = flash::flash(&mut plan, true, &|_| {}).unwrap();
    assert_eq!(sha.as_deref(), Some(plan.sha256.as_str()));
}
