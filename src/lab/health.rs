//! `check` and `list --expiring`: what is wrong or runs out, and the repairs that are safe.

use super::*;

impl Lab {
    /// What expires within `days`, soonest first ([`crate::health::expiring`]).
    pub fn expiring(&self, days: u32) -> Result<Vec<Expiry>> {
        crate::health::expiring(&self.registry, days)
    }

    /// Every inconsistency between board files, folders, index, certificates and CRL; with
    /// `repair`, fixed where that is safe (under the state lock) and checked again.
    pub fn check(&self, repair: bool) -> Result<Vec<crate::store::registry::Problem>> {
        let problems = self.check_all()?;
        if !repair || problems.iter().all(|p| !p.repairable) {
            return Ok(problems);
        }
        let _lock = self.state.lock()?;
        let problems = self.check_all()?;
        self.registry.repair(&problems)?;
        if problems.iter().any(|p| p.kind == "crl-incomplete") {
            self.publish_crl(&self.ca()?)?;
        }
        self.check_all()
    }

    /// With a Secure Boot key: boot files in DIR/files that its firmware would refuse, and
    /// board images in DIR/out built before the key (or with another one).
    pub fn secure_boot_problems(&self) -> Vec<crate::store::registry::Problem> {
        let Ok(Some(trust)) = crate::secure_boot::Trust::load(&self.state) else {
            return Vec::new();
        };
        let problem = |kind, path, detail: String| crate::store::registry::Problem {
            kind,
            path,
            detail,
            repairable: false,
            host: None,
        };
        let mut out = Vec::new();
        let files = self.state.files_dir();
        for f in crate::codesign::check(&files, Some(&trust)).unwrap_or_default() {
            if f.secure_boot == Some(false) {
                out.push(problem(
                    "secure-boot-unsigned",
                    files.join(&f.path),
                    "an EFI executable without the farm's Secure Boot signature: firmware with \
                     Secure Boot on refuses it (sign-files signs it)"
                        .into(),
                ));
            }
        }
        let built = crate::store::state::OutDir::new(self.state.out_dir());
        let fp = trust.fingerprint();
        for b in self
            .registry
            .list_readable()
            .map(|l| l.0)
            .unwrap_or_default()
        {
            let Ok(m) = crate::ipxe_build::Manifest::load(&built, &b.name) else {
                continue;
            };
            if !m.secure_boot.as_deref().is_some_and(|s| s.contains(&fp)) {
                out.push(problem(
                    "image-not-signed",
                    built.manifest(&b.name),
                    format!(
                        "board {}'s images were built without the farm's Secure Boot key: \
                         its firmware refuses them; build them again",
                        b.name
                    ),
                ));
            }
        }
        out
    }

    pub(super) fn check_all(&self) -> Result<Vec<crate::store::registry::Problem>> {
        let mut problems = self.registry.check()?;
        problems.extend(self.secure_boot_problems());
        let listed = crl_facts(&self.state.crl())
            .map(|f| f.serials)
            .unwrap_or_default();
        // One unreadable board (reported above) must not hide the others' gaps.
        let (boards, _) = self.registry.list_readable().unwrap_or_default();
        for b in boards {
            if b.status == Status::Revoked && !listed.contains(&b.serial) {
                problems.push(crate::store::registry::Problem {
                    kind: "crl-incomplete",
                    path: self.state.crl(),
                    detail: format!(
                        "revoked board {} (serial {}) is not in the CRL",
                        b.name, b.serial
                    ),
                    repairable: true,
                    host: None,
                });
            }
        }
        problems.extend(self.config_problem());
        Ok(problems)
    }

    /// A hand edit of `config.toml` that `config` would have refused: a URL `init` would not
    /// take, or a server host the server certificates do not name.
    pub(super) fn config_problem(&self) -> Option<crate::store::registry::Problem> {
        let path = self.state.config();
        let problem = |kind, detail: String, host| crate::store::registry::Problem {
            kind,
            path: path.clone(),
            detail,
            repairable: false,
            host,
        };
        let config = match Config::load(&self.state).and_then(Config::checked) {
            Ok(c) => c,
            Err(e) => return Some(problem("bad-config", e.to_string(), None)),
        };
        self.server_name_problem(&config).map(|e| {
            let host = config.server_host().to_string();
            problem("server-name-mismatch", e.to_string(), Some(host))
        })
    }
}
