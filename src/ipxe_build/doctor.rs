//! `ipxe-ca doctor`: what the image build needs, each missing piece named with its Debian package.

use std::path::Path;

use serde::Serialize;

use super::IpxeTree;

/// One requirement.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is needed.
    pub what: &'static str,
    /// Whether it is there.
    pub ok: bool,
    /// The Debian package that provides it.
    pub package: &'static str,
    /// What it is needed for.
    pub needed_for: &'static str,
}

fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// Check the tools iPXE's build and ipxe-ca's image assembly use.
pub fn checks() -> Vec<Check> {
    let any_file = |ps: &[&str]| ps.iter().any(|p| Path::new(p).exists());
    vec![
        Check {
            what: "make",
            ok: on_path("make"),
            package: "make",
            needed_for: "every iPXE build",
        },
        Check {
            what: "gcc",
            ok: on_path("gcc"),
            package: "build-essential",
            needed_for: "every iPXE build",
        },
        Check {
            what: "perl",
            ok: on_path("perl"),
            package: "perl",
            needed_for: "every iPXE build",
        },
        Check {
            what: "openssl",
            ok: on_path("openssl"),
            package: "openssl",
            needed_for: "TRUST/CERT/PRIVKEY",
        },
        Check {
            what: "csplit",
            ok: on_path("csplit"),
            package: "coreutils",
            needed_for: "CERT",
        },
        Check {
            what: "lzma.h",
            ok: any_file(&["/usr/include/lzma.h"]),
            package: "liblzma-dev",
            needed_for: "every iPXE build",
        },
        Check {
            what: "genisoimage or xorriso",
            ok: on_path("genisoimage") || on_path("mkisofs") || on_path("xorrisofs"),
            package: "genisoimage",
            needed_for: "iso, efi-iso, hybrid",
        },
        Check {
            what: "isolinux",
            ok: any_file(&[
                "/usr/lib/ISOLINUX/isolinux.bin",
                "/usr/share/syslinux/isolinux.bin",
            ]),
            package: "isolinux syslinux-common",
            needed_for: "iso, hybrid",
        },
        Check {
            what: "isohybrid",
            ok: on_path("isohybrid"),
            package: "syslinux-utils",
            needed_for: "hybrid images that boot from a USB stick",
        },
        Check {
            what: "mtools",
            ok: on_path("mformat") && on_path("mcopy"),
            package: "mtools",
            needed_for: "efi-iso, hybrid, efi-usb",
        },
    ]
}

/// A warning about the tree itself, if any.
pub fn tree_warning(tree: &IpxeTree) -> Option<String> {
    match tree.has_ecdhe() {
        Some(true) => None,
        Some(false) => Some(super::make::ECDHE_WARNING.to_string()),
        None => Some(format!(
            "{} has no net/tls.c: is it an iPXE src directory?",
            tree.src.display()
        )),
    }
}

/// The checks a build of `targets` depends on (`prebuilt`: only the FAT image tools).
pub fn required_for(targets: &[super::Target], prebuilt: bool) -> Vec<&'static str> {
    use super::Target::*;
    if prebuilt {
        return vec!["mtools"];
    }
    let mut need = vec!["make", "gcc", "perl", "openssl", "csplit", "lzma.h"];
    let any = |ts: &[super::Target]| targets.iter().any(|t| ts.contains(t));
    if any(&[Iso, EfiIso, Hybrid]) {
        need.push("genisoimage or xorriso");
    }
    if any(&[Iso, Hybrid]) {
        need.push("isolinux");
    }
    if any(&[EfiIso, Hybrid]) {
        need.push("mtools");
    }
    if any(&[Hybrid]) {
        need.push("isohybrid");
    }
    need
}

/// Refuse to start a build that would fail for a missing tool, naming the packages.
pub fn preflight(targets: &[super::Target], prebuilt: bool) -> crate::Result<()> {
    let need = required_for(targets, prebuilt);
    let missing: Vec<String> = checks()
        .into_iter()
        .filter(|c| !c.ok && need.contains(&c.what))
        .map(|c| format!("{} (apt-get install {})", c.what, c.package))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::invalid(format!(
            "the build needs: {}; `ipxe-ca doctor` checks everything",
            missing.join(", ")
        )))
    }
}
