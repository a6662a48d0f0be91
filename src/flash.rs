//! `ipxe-ca flash`: put an image on a USB stick without wiping the wrong disk, then prove the
//! stick holds it. Device facts come from a sysfs root that tests can replace.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// Where the kernel describes block devices and mounts.
#[derive(Clone, Debug)]
pub struct System {
    /// Usually `/sys`.
    pub sysfs: PathBuf,
    /// Usually `/proc/self/mounts`.
    pub mounts: PathBuf,
    /// Usually `/proc/swaps`.
    pub swaps: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        System {
            sysfs: PathBuf::from("/sys"),
            mounts: PathBuf::from("/proc/self/mounts"),
            swaps: PathBuf::from("/proc/swaps"),
        }
    }
}

/// A whole disk as sysfs describes it.
#[derive(Clone, Debug, Serialize)]
pub struct Device {
    /// Kernel name, e.g. `sdb`.
    pub name: String,
    /// `/dev/NAME`.
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// The kernel's removable flag (card readers, most sticks).
    pub removable: bool,
    /// Attached over USB.
    pub usb: bool,
    /// Vendor string.
    pub vendor: Option<String>,
    /// Model string.
    pub model: Option<String>,
    /// Serial number, when the device reports one.
    pub serial: Option<String>,
    /// Partition names.
    pub partitions: Vec<String>,
    /// Mount points of the disk or its partitions (and `[swap]`).
    pub mounted: Vec<String>,
    /// Holds `/`.
    pub holds_root: bool,
    /// The kernel's media sequence number (5.15 and later): a new stick under the same name
    /// gets a new one.
    pub diskseq: Option<u64>,
}

impl Device {
    /// One line naming the device for a human about to overwrite it.
    pub fn describe(&self) -> String {
        let id = [self.vendor.as_deref(), self.model.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{} ({}{}, {}, {}{})",
            self.path.display(),
            if id.is_empty() { "unknown model" } else { &id },
            self.serial
                .as_deref()
                .map(|s| format!(", serial {s}"))
                .unwrap_or_default(),
            human(self.size),
            if self.usb {
                "USB"
            } else if self.removable {
                "removable"
            } else {
                "fixed disk"
            },
            if self.mounted.is_empty() {
                String::new()
            } else {
                format!(", mounted at {}", self.mounted.join(" "))
            }
        )
    }

    /// Whether `--list` offers it: a removable or USB-attached disk.
    pub fn is_candidate(&self) -> bool {
        (self.removable || self.usb) && self.size > 0
    }
}

/// Bytes for humans (powers of 1000, as stick vendors count).
pub fn human(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else {
        format!("{:.0} kB", n / 1e3)
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Mount sources (devices) with their mount points, and swap devices.
fn mount_table(sys: &System) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Ok(t) = std::fs::read_to_string(&sys.mounts) {
        for l in t.lines() {
            let mut it = l.split_whitespace();
            if let (Some(src), Some(target)) = (it.next(), it.next()) {
                if src.starts_with('/') {
                    v.push((src.to_string(), target.replace("\\040", " ")));
                }
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string(&sys.swaps) {
        for l in t.lines().skip(1) {
            if let Some(src) = l.split_whitespace().next() {
                v.push((src.to_string(), "[swap]".to_string()));
            }
        }
    }
    v
}

/// Kernel block names a mount source stands on: itself, or for device-mapper its slaves.
fn source_names(sys: &System, src: &str) -> Vec<String> {
    let real = std::fs::canonicalize(src).unwrap_or_else(|_| PathBuf::from(src));
    let Some(name) = real
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
    else {
        return Vec::new();
    };
    let mut out = vec![name.clone()];
    let slaves = sys.sysfs.join("class/block").join(&name).join("slaves");
    if let Ok(rd) = std::fs::read_dir(slaves) {
        for e in rd.flatten() {
            if let Some(n) = e.file_name().to_str() {
                out.extend(source_names(sys, &format!("/dev/{n}")));
            }
        }
    }
    out
}

/// The disks a stick could be: removable or USB-attached, not empty.
pub fn candidates(sys: &System) -> Result<Vec<Device>> {
    Ok(devices(sys)?
        .into_iter()
        .filter(Device::is_candidate)
        .collect())
}

/// Every whole disk sysfs knows.
pub fn devices(sys: &System) -> Result<Vec<Device>> {
    let block = sys.sysfs.join("block");
    let rd = std::fs::read_dir(&block).map_err(|e| Error::io("cannot list", &block, e))?;
    let mounts: Vec<(Vec<String>, String)> = mount_table(sys)
        .into_iter()
        .map(|(src, target)| (source_names(sys, &src), target))
        .collect();
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let dir = block.join(&name);
        let real = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        let size = read_trim(&dir.join("size"))
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            * 512;
        let partitions: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|p| p.path().join("partition").exists())
                    .filter_map(|p| p.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut mounted = Vec::new();
        let mut holds_root = false;
        for (names, target) in &mounts {
            if names.iter().any(|n| *n == name || partitions.contains(n)) {
                mounted.push(target.clone());
                holds_root |= target == "/";
            }
        }
        let usb = real.to_string_lossy().contains("/usb");
        // USB sticks report their serial on the USB device, a few levels above the disk.
        let serial = read_trim(&dir.join("device/serial")).or_else(|| {
            real.ancestors()
                .take(10)
                .filter(|a| a.starts_with(&sys.sysfs))
                .find_map(|a| read_trim(&a.join("serial")))
        });
        let mut partitions = partitions;
        partitions.sort();
        out.push(Device {
            path: PathBuf::from("/dev").join(&name),
            size,
            removable: read_trim(&dir.join("removable")).as_deref() == Some("1"),
            usb,
            vendor: read_trim(&dir.join("device/vendor")),
            model: read_trim(&dir.join("device/model")),
            serial,
            partitions,
            mounted,
            holds_root,
            diskseq: read_trim(&dir.join("diskseq")).and_then(|d| d.parse().ok()),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What `flash` will do, checked: the target is a whole, unmounted block device big enough
/// for the image, and removable/USB unless the caller allowed otherwise.
#[derive(Debug)]
pub struct Plan {
    /// The image file.
    pub image: PathBuf,
    /// Its size.
    pub image_size: u64,
    /// Its expected SHA-256 (from the manifest, or computed).
    pub sha256: String,
    /// The device.
    pub device: Device,
    /// The device, open for writing and held exclusively since [`hold`].
    held: Option<File>,
}

/// Check everything before a single byte is written.
pub fn plan(
    sys: &System,
    image: &Path,
    expected_sha256: Option<&str>,
    device: &Path,
    allow_non_removable: bool,
) -> Result<Plan> {
    let image_size = std::fs::metadata(image)
        .map_err(|e| Error::io("cannot read image", image, e))?
        .len();
    let meta = std::fs::metadata(device).map_err(|e| Error::io("cannot open device", device, e))?;
    if !meta.file_type().is_block_device() {
        return Err(Error::invalid(format!(
            "{} is not a block device: give the whole disk, e.g. /dev/sdb (`ipxe-ca flash` can list candidates)",
            device.display()
        )));
    }
    let real = std::fs::canonicalize(device).map_err(|e| Error::io("cannot resolve", device, e))?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if sys
        .sysfs
        .join("class/block")
        .join(&name)
        .join("partition")
        .exists()
    {
        return Err(Error::invalid(format!(
            "{} is a partition: give the whole disk (the image carries its own partition table)",
            real.display()
        )));
    }
    let dev = devices(sys)?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| {
            Error::invalid(format!(
                "{} is not a disk the kernel lists in {}/block",
                real.display(),
                sys.sysfs.display()
            ))
        })?;
    if dev.holds_root || dev.mounted.iter().any(|m| m == "[swap]") {
        return Err(Error::invalid(format!(
            "refusing {}: it holds the running system (/ or swap); no flag overrides this",
            dev.describe()
        )));
    }
    if !dev.mounted.is_empty() {
        return Err(Error::invalid(format!(
            "refusing {}: it is mounted at {}; unmount it first (umount)",
            dev.path.display(),
            dev.mounted.join(", ")
        )));
    }
    if !dev.is_candidate() && !allow_non_removable {
        return Err(Error::NotRemovable(dev.describe()));
    }
    if dev.size < image_size {
        return Err(Error::invalid(format!(
            "refusing {}: too small for the image ({} needed)",
            dev.describe(),
            human(image_size)
        )));
    }
    let actual = crate::digest::sha256_file(image)?;
    if let Some(want) = expected_sha256 {
        if want != actual {
            return Err(Error::invalid(format!(
                "{} does not match its manifest (SHA-256 {actual}, manifest says {want}): rebuild it",
                image.display()
            )));
        }
    }
    Ok(Plan {
        image: image.to_path_buf(),
        image_size,
        sha256: actual,
        device: dev,
        held: None,
    })
}

fn open_exclusive(path: &Path) -> Result<File> {
    // O_EXCL on a block device: the kernel refuses if anything (a mount, another writer)
    // holds it, and nothing else can take it while we do.
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(path)
        .map_err(|e| Error::io("cannot open for writing (in use?)", path, e))
}

/// Open the planned device now and keep it until the write: the disk the operator confirms
/// is the disk written, even if names change meanwhile. The opened node must be the very
/// block device sysfs described.
pub fn hold(plan: &mut Plan, sys: &System) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let f = open_exclusive(&plan.device.path)?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io("cannot stat", &plan.device.path, e))?;
    let want = std::fs::read_to_string(
        sys.sysfs
            .join("class/block")
            .join(&plan.device.name)
            .join("dev"),
    )
    .unwrap_or_default();
    let got = format!(
        "{}:{}",
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev())
    );
    let seq_dir = sys.sysfs.join("class/block").join(&plan.device.name);
    let seq_now = read_trim(&seq_dir.join("diskseq")).and_then(|d| d.parse::<u64>().ok());
    if plan.device.diskseq.is_some() && seq_now != plan.device.diskseq {
        return Err(Error::invalid(format!(
            "{} is another medium than the one checked (diskseq {:?}, was {:?}): nothing was written; run flash again",
            plan.device.path.display(),
            seq_now,
            plan.device.diskseq
        )));
    }
    if !meta.file_type().is_block_device() || want.trim() != got {
        return Err(Error::invalid(format!(
            "{} changed between the checks and opening it (device {got}, expected {}): nothing was written; run flash again",
            plan.device.path.display(),
            want.trim()
        )));
    }
    plan.held = Some(f);
    Ok(())
}

/// Progress of a write or a verification.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// `true` while writing, `false` while reading back.
    pub writing: bool,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// Large aligned blocks: fast on sticks, and a multiple of every sector size.
const BLOCK: usize = 4 << 20;

/// Write the image, flush it to the device, drop the cached copy, then read it back and
/// compare. Returns the SHA-256 read back.
pub fn flash(plan: &mut Plan, verify: bool, progress: &dyn Fn(Progress)) -> Result<Option<String>> {
    let dev_path = plan.device.path.clone();
    let dev_path = &dev_path;
    let mut img = File::open(&plan.image).map_err(|e| Error::io("cannot open", &plan.image, e))?;
    let mut dev = match plan.held.take() {
        Some(f) => f,
        None => open_exclusive(dev_path)?,
    };
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    loop {
        let n =
            read_full(&mut img, &mut buf).map_err(|e| Error::io("cannot read", &plan.image, e))?;
        if n == 0 {
            break;
        }
        dev.write_all(&buf[..n])
            .map_err(|e| Error::io("write failed on", dev_path, e))?;
        done += n as u64;
        progress(Progress {
            writing: true,
            done,
            total: plan.image_size,
        });
    }
    dev.sync_all()
        .map_err(|e| Error::io("cannot flush", dev_path, e))?;
    drop(dev);
    if !verify {
        return Ok(None);
    }
    self::verify(plan, progress).map(Some)
}

/// Read the device back (past the page cache) and compare it with the image; returns the
/// SHA-256 read. `flash` does this after writing; alone, it checks a stick written earlier.
pub fn verify(plan: &Plan, progress: &dyn Fn(Progress)) -> Result<String> {
    let got = verify_device(&plan.device.path, plan.image_size, progress)?;
    if got != plan.sha256 {
        return Err(Error::invalid(format!(
            "verification FAILED: {} does not hold {} (read back SHA-256 {got}, image {}); the stick may be faulty",
            plan.device.describe(),
            plan.image.display(),
            plan.sha256
        )));
    }
    Ok(got)
}

/// SHA-256 of the first `len` bytes of a device, read past the page cache.
pub fn verify_device(dev_path: &Path, len: u64, progress: &dyn Fn(Progress)) -> Result<String> {
    let mut dev =
        File::open(dev_path).map_err(|e| Error::io("cannot open for reading", dev_path, e))?;
    // Drop cached pages so that what we compare comes from the device itself.
    let _ = rustix::fs::fadvise(&dev, 0, None, rustix::fs::Advice::DontNeed);
    dev.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("cannot seek", dev_path, e))?;
    let mut ctx = crate::digest::Sha256::default();
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(BLOCK);
        let n = read_full(&mut dev, &mut buf[..want])
            .map_err(|e| Error::io("read-back failed on", dev_path, e))?;
        if n == 0 {
            return Err(Error::invalid(format!(
                "{} ended before the image did",
                dev_path.display()
            )));
        }
        ctx.update(&buf[..n]);
        done += n as u64;
        progress(Progress {
            writing: false,
            done,
            total: len,
        });
    }
    Ok(ctx.hex())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::read_full;
    use std::io::{ErrorKind, Read};

    /// A reader that hands out `chunks`, then fails with `end` (None: end of file).
    struct Script {
        chunks: Vec<std::io::Result<Vec<u8>>>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.chunks.is_empty() {
                return Ok(0);
            }
            let next = self.chunks.remove(0)?;
            buf[..next.len()].copy_from_slice(&next);
            Ok(next.len())
        }
    }

    #[test]
    fn short_reads_are_joined_interruptions_retried_and_errors_returned() {
        let mut r = Script {
            chunks: vec![
                Ok(b"ab".to_vec()),
                Err(ErrorKind::Interrupted.into()),
                Ok(b"cd".to_vec()),
            ],
        };
        let mut buf = [0u8; 8];
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 4, "stops at the end");
        assert_eq!(&buf[..4], b"abcd");
        let mut r = Script {
            chunks: vec![Ok(b"ab".to_vec()), Err(ErrorKind::Other.into())],
        };
        assert_eq!(
            read_full(&mut r, &mut buf).unwrap_err().kind(),
            ErrorKind::Other,
            "a failing device is an error, never a short image"
        );
        let mut r = Script {
            chunks: vec![
                Ok(b"abcd".to_vec()),
                Ok(b"efgh".to_vec()),
                Ok(b"ij".to_vec()),
            ],
        };
        assert_eq!(read_full(&mut r, &mut buf).unwrap(), 8, "a full buffer");
        assert_eq!(&buf, b"abcdefgh");
    }
}
