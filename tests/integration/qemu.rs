//! QEMU boots for the end-to-end tests: SeaBIOS or OVMF, an image as kernel, CD or USB stick,
//! the serial console captured. Emulation is CPU-bound: boots never overlap, and each one
//! has a hard timeout.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::s;

/// Emulation is CPU-bound: boots never overlap.
static ONE_BOOT_AT_A_TIME: Mutex<()> = Mutex::new(());

/// No boot runs while this is held: for other work that takes both cores for minutes (a
/// release build), which would stretch boots towards their timeout.
pub fn no_boots_meanwhile() -> std::sync::MutexGuard<'static, ()> {
    ONE_BOOT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default BIOS.
    SeaBios,
    /// UEFI.
    Ovmf,
    /// UEFI with Secure Boot on (q35 with SMM), trusting Debian's snakeoil test key in its
    /// db, as a farm's boards trust the farm's own db key.
    OvmfSecureBoot,
    /// UEFI on an arm64 machine (QEMU `virt`, AAVMF).
    Aavmf,
}

pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

pub const SECBOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const SNAKEOIL_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd";

/// How the image reaches the machine.
#[derive(Clone, Debug)]
pub enum Medium {
    /// `-kernel` (a BIOS `.lkrn`).
    Kernel(PathBuf),
    /// A CD-ROM.
    Cdrom(PathBuf),
    /// A USB stick (xHCI + usb-storage), written raw.
    Stick(PathBuf),
    /// A Linux kernel with its initramfs and command line (`-kernel -initrd -append`).
    Linux(PathBuf, PathBuf, String),
}

/// One machine to boot.
#[derive(Clone, Debug)]
pub struct Machine {
    pub firmware: Firmware,
    pub medium: Medium,
    /// UEFI `TlsCaCertificate` from QEMU's fw_cfg (an EFI signature list).
    pub siglist: Option<PathBuf>,
    /// Where the board's real-time clock starts (`-rtc base=`), for boards whose clock is
    /// wrong; None: now.
    pub rtc: Option<&'static str>,
    /// Secure Boot: the firmware's variables, kept across boots (None: a fresh copy of the
    /// snakeoil ones per boot).
    pub vars: Option<PathBuf>,
}

/// What one boot showed.
pub struct Boot {
    pub serial: String,
    pub seconds: f64,
}

/// Boot until `stop_at` appears on the serial console (or QEMU exits, or the hard timeout);
/// `abort_on` strings end the boot early as a failure. Prints a timing line per stage.
pub fn boot(name: &str, m: &Machine, stop_at: &str, abort_on: &[&str], stages: &[&str]) -> Boot {
    boot_then(name, m, stop_at, abort_on, stages, Duration::ZERO)
}

/// [`boot`], the machine left running `linger` after `stop_at` (what it sends the network
/// meanwhile arrives).
pub fn boot_then(
    name: &str,
    m: &Machine,
    stop_at: &str,
    abort_on: &[&str],
    stages: &[&str],
    linger: Duration,
) -> Boot {
    let _one = ONE_BOOT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let image = match &m.medium {
        // The initramfs, not the kernel: the kernel is shared by every test.
        Medium::Kernel(p) | Medium::Cdrom(p) | Medium::Stick(p) | Medium::Linux(_, p, _) => {
            p.clone()
        }
    };
    let dir = image.parent().unwrap();
    let serial = dir.join(format!("serial-{name}.log"));
    // A log left by an earlier boot must not pass for this one's.
    let _ = std::fs::remove_file(&serial);
    let start = Instant::now();
    let arm = m.firmware == Firmware::Aavmf;
    let mut cmd = Command::new(match arm {
        true => "qemu-system-aarch64",
        false => "qemu-system-x86_64",
    });
    if arm {
        for f in [AAVMF_CODE, AAVMF_VARS] {
            assert!(
                Path::new(f).is_file(),
                "{f} is missing: apt-get install qemu-efi-aarch64 (scripts/test.sh does)"
            );
        }
        let vars = dir.join(format!("aavmf-vars-{name}.fd"));
        std::fs::copy(AAVMF_VARS, &vars).unwrap();
        cmd.args(["-M", "virt", "-cpu", "cortex-a57"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,file={AAVMF_CODE},readonly=on"
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", s(&vars)));
    }
    cmd.args([
        "-m",
        if arm { "1024" } else { "512" },
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ]);
    if m.firmware == Firmware::Ovmf {
        assert!(
            Path::new(OVMF).is_file(),
            "{OVMF} is missing: apt-get install ovmf (scripts/test.sh does)"
        );
        cmd.args(["-bios", OVMF]);
    }
    if m.firmware == Firmware::OvmfSecureBoot {
        for f in [SECBOOT_CODE, SNAKEOIL_VARS] {
            assert!(
                Path::new(f).is_file(),
                "{f} is missing: apt-get install ovmf (scripts/test.sh does)"
            );
        }
        // The variables are written by the firmware: each boot gets its own copy, unless the
        // test keeps them.
        let vars = m.vars.clone().unwrap_or_else(|| {
            let v = dir.join(format!("vars-{name}.fd"));
            std::fs::copy(SNAKEOIL_VARS, &v).unwrap();
            v
        });
        cmd.args(["-machine", "q35,smm=on"])
            .args(["-global", "driver=cfi.pflash01,property=secure,value=on"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,file={SECBOOT_CODE},readonly=on"
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", s(&vars)));
    }
    if let Some(base) = m.rtc {
        cmd.arg("-rtc").arg(format!("base={base}"));
    }
    if let Some(sl) = &m.siglist {
        cmd.arg("-fw_cfg")
            .arg(format!("name=etc/edk2/https/cacerts,file={}", s(sl)));
    }
    match &m.medium {
        Medium::Kernel(p) => {
            cmd.arg("-kernel").arg(p);
        }
        Medium::Linux(kernel, initrd, append) => {
            cmd.arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(initrd)
                .arg("-append")
                .arg(append);
        }
        Medium::Cdrom(p) => {
            cmd.arg("-drive")
                .arg(format!("file={},media=cdrom,readonly=on", s(p)));
        }
        Medium::Stick(p) => {
            cmd.args(["-device", "qemu-xhci"])
                .arg("-drive")
                .arg(format!(
                    "if=none,id=stick,file={},format=raw,snapshot=on",
                    s(p)
                ))
                .args(["-device", "usb-storage,drive=stick,bootindex=0"]);
        }
    }
    let mut qemu = cmd
        .args(["-nic", "user,model=virtio-net-pci"])
        .arg("-serial")
        .arg(format!("file:{}", s(&serial)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start QEMU (apt-get install qemu-system-x86 qemu-system-arm)");
    let mut seen: Vec<(String, f64)> = Vec::new();
    let text = loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        for st in stages {
            if !seen.iter().any(|(s, _)| s == st) && text.contains(st) {
                seen.push((st.to_string(), start.elapsed().as_secs_f64()));
            }
        }
        if text.contains(stop_at) {
            std::thread::sleep(linger);
            break text;
        }
        if let Some(bad) = abort_on.iter().find(|b| text.contains(**b)) {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!("boot {name}: {bad:?} on the console before {stop_at:?}; serial:\n{text}");
        }
        if let Some(status) = qemu.try_wait().unwrap() {
            let text = std::fs::read_to_string(&serial).unwrap_or_default();
            if !text.contains(stop_at) && !status.success() {
                let mut e = String::new();
                use std::io::Read;
                let _ = qemu.stderr.take().unwrap().read_to_string(&mut e);
                panic!("qemu exited with {status} before {stop_at:?}: {e}\nserial:\n{text}");
            }
            break text;
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!("boot {name}: no {stop_at:?} within {BOOT_TIMEOUT:?}; serial:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    let seconds = start.elapsed().as_secs_f64();
    let line: Vec<String> = seen.iter().map(|(s, t)| format!("{s} {t:.1}s")).collect();
    eprintln!(
        "boot timing [{name}]: {} | end {seconds:.1}s",
        line.join(" → ")
    );
    Boot {
        serial: text,
        seconds,
    }
}
