//! `ipxe-ca doctor`: what a build of given targets needs, each missing piece named with its
//! Debian package, and what an iPXE tree supports. It fails exactly where `build` would.

use std::path::Path;

use serde::Serialize;

use super::image::{self, on_path, IsoTool};
use super::{IpxeTree, Target, TreeFeatures};

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
    /// Whether the targets asked about need it.
    pub needed: bool,
}

/// What doctor found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The targets checked.
    pub targets: Vec<Target>,
    /// Every requirement, needed or not.
    pub checks: Vec<Check>,
    /// The ISO tool a build would use.
    pub iso_tool: Option<IsoTool>,
    /// What the tree supports, when a tree was given.
    pub tree: Option<TreeFeatures>,
    /// What the operator should know about the tree.
    pub tree_notes: Vec<String>,
}

impl Report {
    /// The needed requirements that are missing.
    pub fn missing(&self) -> Vec<&Check> {
        self.checks.iter().filter(|c| c.needed && !c.ok).collect()
    }

    /// An error naming what a build of these targets would miss, if anything.
    pub fn verdict(&self) -> crate::error::Result<()> {
        let missing: Vec<&str> = self.missing().iter().map(|c| c.what).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let targets: Vec<&str> = self.targets.iter().map(|t| t.name()).collect();
        Err(crate::error::Error::invalid(format!(
            "a build of {} would fail: missing {}",
            targets.join(", "),
            missing.join(", ")
        )))
    }
}

fn any_file(ps: &[&str]) -> bool {
    ps.iter().any(|p| Path::new(p).exists())
}

/// The checks for building `targets` (`prebuilt`: from a prebuilt iPXE, no compiler; no
/// targets: what `build` makes by default; `arm64`: for arm64 boards too).
pub fn report(targets: &[Target], prebuilt: bool, arm64: bool, tree: Option<&IpxeTree>) -> Report {
    use Target::*;
    let default = [if prebuilt { EfiUsb } else { Hybrid }];
    let targets = if targets.is_empty() {
        &default[..]
    } else {
        targets
    };
    let any = |ts: &[Target]| targets.iter().any(|t| ts.contains(t));
    let compile = !prebuilt;
    let iso = any(&[Iso, EfiIso, Hybrid]);
    let fat = any(&[EfiIso, Hybrid, EfiUsb]);
    let tool = image::iso_tool();
    let checks = vec![
        Check {
            what: "make",
            ok: on_path("make"),
            package: "make",
            needed_for: "every iPXE build",
            needed: compile,
        },
        Check {
            what: "gcc",
            ok: on_path("gcc"),
            package: "build-essential",
            needed_for: "every iPXE build",
            needed: compile,
        },
        Check {
            what: "aarch64-linux-gnu-gcc",
            ok: std::env::consts::ARCH == "aarch64"
                || on_path(&format!("{}gcc", super::make::ARM64_CROSS)),
            package: "gcc-aarch64-linux-gnu",
            needed_for: "arm64 boards' iPXE (cross-built)",
            needed: compile && arm64,
        },
        Check {
            what: "perl",
            ok: on_path("perl"),
            package: "perl",
            needed_for: "every iPXE build",
            needed: compile,
        },
        Check {
            what: "openssl",
            ok: on_path("openssl"),
            package: "openssl",
            needed_for: "TRUST/CERT/PRIVKEY",
            needed: compile,
        },
        Check {
            what: "csplit",
            ok: on_path("csplit"),
            package: "coreutils",
            needed_for: "CERT",
            needed: compile,
        },
        Check {
            what: "lzma.h",
            ok: any_file(&["/usr/include/lzma.h"]),
            package: "liblzma-dev",
            needed_for: "every iPXE build",
            needed: compile,
        },
        Check {
            what: "xorriso, or genisoimage + isohybrid",
            ok: tool.is_some(),
            package: "xorriso (or genisoimage syslinux-utils)",
            needed_for: "iso, efi-iso, hybrid",
            needed: iso,
        },
        Check {
            what: "isolinux",
            ok: any_file(&[
                "/usr/lib/ISOLINUX/isolinux.bin",
                "/usr/share/syslinux/isolinux.bin",
            ]) && any_file(&[
                "/usr/lib/syslinux/modules/bios/ldlinux.c32",
                "/usr/share/syslinux/ldlinux.c32",
            ]),
            package: "isolinux syslinux-common",
            needed_for: "iso, efi-iso, hybrid (BIOS boot record, MBR)",
            needed: iso,
        },
        Check {
            what: "mtools",
            ok: on_path("mformat") && on_path("mcopy") && on_path("mmd"),
            package: "mtools",
            needed_for: "efi-iso, hybrid, efi-usb (the FAT image)",
            needed: fat,
        },
    ];
    let mut tree_notes = Vec::new();
    if let Some(t) = tree {
        let f = t.features;
        if !f.ecdhe {
            tree_notes.push(super::make::ECDHE_WARNING.to_string());
        }
        if !f.pkcs8_keys {
            tree_notes.push(
                "this tree reads only PKCS#1 keys: ipxe-ca converts board keys (openssl rsa -traditional)"
                    .to_string(),
            );
        }
        if f.no_werror {
            tree_notes.push(
                "this tree predates today's gcc warnings: ipxe-ca builds it with NO_WERROR=1"
                    .to_string(),
            );
        }
    }
    Report {
        targets: targets.to_vec(),
        checks,
        iso_tool: tool,
        tree: tree.map(|t| t.features),
        tree_notes,
    }
}

/// Refuse to start a build that would fail for a missing tool, naming the packages.
pub fn preflight(targets: &[Target], prebuilt: bool, arm64: bool) -> crate::error::Result<()> {
    let r = report(targets, prebuilt, arm64, None);
    let missing: Vec<String> = r
        .missing()
        .iter()
        .map(|c| format!("{} (apt-get install {})", c.what, c.package))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(crate::error::Error::invalid(format!(
            "the build needs: {}; `ipxe-ca doctor` checks everything",
            missing.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipxe_build::make::TreeFeatures;

    fn tree(ecdhe: bool, pkcs8_keys: bool) -> IpxeTree {
        IpxeTree {
            src: "/ipxe/src".into(),
            commit: None,
            features: TreeFeatures {
                ecdhe,
                pkcs8_keys,
                no_werror: !ecdhe,
            },
        }
    }

    #[test]
    fn a_tree_is_described_by_what_it_lacks() {
        let notes = |t: &IpxeTree| report(&[Target::Hybrid], false, false, Some(t)).tree_notes;
        assert!(
            notes(&tree(true, true)).is_empty(),
            "a current tree needs no note"
        );
        let old = notes(&tree(false, false));
        assert!(
            old.iter().any(|n| n == super::super::make::ECDHE_WARNING),
            "{old:?}"
        );
        assert!(old.iter().any(|n| n.contains("PKCS#1")), "{old:?}");
        assert!(old.iter().any(|n| n.contains("NO_WERROR")), "{old:?}");
        let mid = notes(&tree(false, true));
        assert_eq!(mid.len(), 2, "{mid:?}");
        assert!(report(&[Target::Hybrid], false, false, None)
            .tree_notes
            .is_empty());
    }

    #[test]
    fn any_file_is_one_of_the_paths_that_exists() {
        assert!(any_file(&["/nonexistent/isolinux.bin", "/"]));
        assert!(!any_file(&["/nonexistent/a", "/nonexistent/b"]));
        assert!(!any_file(&[]));
    }
}
