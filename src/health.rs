//! The state dir's health, read without the lock and without changing anything: what expires
//! soon, what the CRL in force says, whether the server certificates name the host boards
//! reach. The operator's `check` and `list --expiring` and the running server share it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use time::OffsetDateTime;

use crate::board::Status;
use crate::ca::{self};
use crate::error::NameFix;
use crate::error::{Error, Result};
use crate::store::config::Config;
use crate::store::registry::Registry;
use crate::store::state::{self, StateDir};
use crate::types::San;

/// Refuse names that would leave every board refusing the server: iPXE checks the host of
/// `server_url` against the server certificate. `fix` says what was being done.
pub(crate) fn check_names_cover(sans: &[San], config: &Config, fix: NameFix) -> Result<()> {
    let host = config.server_host();
    if sans.iter().any(|s| s.covers(host)) {
        return Ok(());
    }
    Err(Error::ServerNameNotCovered {
        cert: None,
        names: sans.iter().map(ToString::to_string).collect(),
        host: host.to_string(),
        url: config.server_url.clone(),
        fix,
    })
}

/// What expires within `days`: active boards, both server certificates, the CA, the
/// code-signing certificate and the CRL's next update (nginx refuses every client once
/// its CRL has expired). Soonest first.
pub fn expiring(registry: &Registry, days: u32) -> Result<Vec<Expiry>> {
    let state = registry.state();
    let limit = OffsetDateTime::now_utc() + time::Duration::days(i64::from(days));
    let mut all = Vec::new();
    for b in registry.list()? {
        if b.status == Status::Active {
            all.push((
                "board",
                format!("board {}", b.name),
                registry.cert_file(&b.name),
                b.not_after,
            ));
        }
    }
    for (kind, what, path) in [
        ("ca", "CA certificate", state.ca_cert()),
        ("server", "RSA server certificate", state.server_cert()),
        (
            "server",
            "ECDSA server certificate",
            state.server_ecdsa_cert(),
        ),
        (
            "codesign",
            "code-signing certificate",
            state.codesign_cert(),
        ),
    ] {
        if let Ok(pem) = state::read(&path) {
            let info = ca::cert_info(&ca::cert_der_from_bytes(&pem)?)?;
            all.push((kind, what.to_string(), path, info.not_after));
        }
    }
    if let Some(next) = crl_facts(&state.crl()).and_then(|f| f.next_update) {
        all.push((
            "crl",
            "CRL (next update; `ipxe-ca crl` re-signs it)".to_string(),
            state.crl(),
            next,
        ));
    }
    let now = OffsetDateTime::now_utc();
    let mut out: Vec<Expiry> = all
        .into_iter()
        .filter(|(_, _, _, t)| *t <= limit)
        .map(|(kind, what, path, t)| Expiry {
            kind,
            what,
            path,
            expires: t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            days_left: (t - now).whole_days(),
            seconds_left: (t - now).whole_seconds(),
        })
        .collect();
    out.sort_by_key(|e| e.days_left);
    Ok(out)
}

/// The refusal, when a server certificate does not name `config`'s server host: settings
/// `serve` already holds are checked without reading them again.
pub fn server_name_problem(state: &StateDir, config: &Config) -> Option<Error> {
    server_certs_name(state, config, NameFix::Existing).err()
}

/// The server certificates with the names each carries: the RSA one (which `init` writes),
/// and the ECDSA one where it exists (state dirs made before it lack it until
/// `server-cert`).
pub(crate) fn server_cert_names(state: &StateDir) -> Result<Vec<(PathBuf, Vec<San>)>> {
    let ecdsa = Some(state.server_ecdsa_cert()).filter(|p| p.exists());
    std::iter::once(state.server_cert())
        .chain(ecdsa)
        .map(|cert| {
            let sans = ca::cert_sans(&ca::cert_der_from_bytes(&state::read(&cert)?)?)?;
            Ok((cert, sans))
        })
        .collect()
}

/// Whether both server certificates name `config`'s server host; `fix` for the error.
pub(crate) fn server_certs_name(state: &StateDir, config: &Config, fix: NameFix) -> Result<()> {
    names_cover(&server_cert_names(state)?, config, fix)
}

/// Whether every certificate of `certs` (as [`server_cert_names`] lists them) names
/// `config`'s server host; `fix` for the error.
pub(crate) fn names_cover(
    certs: &[(PathBuf, Vec<San>)],
    config: &Config,
    fix: NameFix,
) -> Result<()> {
    for (path, sans) in certs {
        let path = path.clone();
        check_names_cover(sans, config, fix).map_err(|e| match e {
            Error::ServerNameNotCovered {
                names,
                host,
                url,
                fix,
                ..
            } => Error::ServerNameNotCovered {
                cert: Some(path),
                names,
                host,
                url,
                fix,
            },
            e => e,
        })?;
    }
    Ok(())
}

/// What the CRL file at `path` says (`None` if it cannot be read).
pub(crate) fn crl_facts(path: &Path) -> Option<ca::CrlFacts> {
    ca::read_crl(&state::read(path).ok()?, None).ok()
}

/// Something that expires, for `list --expiring`.
#[derive(Clone, Debug, Serialize)]
pub struct Expiry {
    /// `board`, `server`, `ca`, `codesign` or `crl` (the metrics' label).
    pub kind: &'static str,
    /// What it is ("board b1", "CA certificate", …).
    pub what: String,
    /// Its file.
    pub path: PathBuf,
    /// RFC 3339.
    pub expires: String,
    /// Whole days from now (negative: already expired).
    pub days_left: i64,
    /// Seconds from now (negative: already expired).
    pub seconds_left: i64,
}
