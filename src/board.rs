//! The board model: what a board is, whatever stores, serves or builds it. The server, the
//! image build and templates name boards through this module, never through the store.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ca::Reason;
use crate::types::{Arch, BoardName, Fingerprint, Mac, ProfileName, Serial};

/// Whether a board may boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Served.
    Active,
    /// Refused, and listed in the CRL.
    Revoked,
}

/// How the board's certificate entered the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `enroll`: we made key and certificate.
    Enrolled,
    /// `sign`: we signed the board's CSR; we never saw its key.
    Signed,
    /// `register`: an existing certificate of our CA was adopted.
    Registered,
}

/// One board's public registry entry (`boards/NAME.toml`). Secrets live elsewhere.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Board {
    /// The board's name (also its certificate's CN when we issued it).
    pub name: BoardName,
    /// Certificate serial, lowercase hex.
    pub serial: Serial,
    /// SHA-1 of the certificate, as nginx's `$ssl_client_fingerprint`.
    pub fingerprint_sha1: Fingerprint,
    /// SHA-256 of the certificate.
    pub fingerprint_sha256: Fingerprint,
    /// The board's MAC, when known; a request naming another MAC is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// The profile (`profiles/NAME.ipxe`) its boot script is rendered from.
    #[serde(default)]
    pub profile: ProfileName,
    /// Its CPU architecture: which iPXE its image holds (x86_64 unless set).
    #[serde(default, skip_serializing_if = "Arch::is_default")]
    pub arch: Arch,
    /// Certificate validity start.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// Certificate validity end.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Active or revoked.
    pub status: Status,
    /// How the certificate came to us.
    pub origin: Origin,
    /// When and why it was revoked.
    #[serde(flatten)]
    pub revocation: Revocation,
    /// Names of the board's secrets (values are in `boards/NAME/secrets.toml`, 0600).
    #[serde(default)]
    pub secret_names: Vec<String>,
    /// Template variables for its profile.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Certificates the board had before (`renew`, `enroll --replace`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<PreviousCert>,
}

/// When and why a certificate was revoked (both unset while it is not), as the CRL lists it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    /// When.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<Reason>,
}

impl Revocation {
    /// Revoked at `when` for `reason`.
    pub fn at(when: OffsetDateTime, reason: Reason) -> Self {
        Revocation {
            revoked_at: Some(when),
            revocation_reason: Some(reason),
        }
    }
}

/// A certificate a board used to have. `Active` means still accepted: the grace period after
/// `renew`, until the new image is in place and `revoke --previous` ends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreviousCert {
    /// Its serial.
    pub serial: Serial,
    /// SHA-1 fingerprint.
    pub fingerprint_sha1: Fingerprint,
    /// SHA-256 fingerprint.
    pub fingerprint_sha256: Fingerprint,
    /// Its end of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// When a new certificate replaced it.
    #[serde(with = "time::serde::rfc3339")]
    pub replaced_at: OffsetDateTime,
    /// Still accepted (grace) or revoked (in the CRL).
    pub status: Status,
    /// When and why it was revoked (the CRL's reason; `superseded` when none is recorded).
    #[serde(flatten)]
    pub revocation: Revocation,
}

/// Which of a board's certificates a request presented.
#[derive(Clone, Debug)]
pub struct Presented<'a> {
    /// Its serial.
    pub serial: &'a Serial,
    /// Whether it is refused: the board or this certificate is revoked.
    pub revoked: bool,
    /// Whether it is a previous certificate still in its grace period.
    pub previous: bool,
}

/// What `list --json` and `show --json` print for a board. Secret values never appear.
#[derive(Clone, Debug, Serialize)]
pub struct BoardView {
    /// Board name.
    pub name: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// SHA-1 fingerprint, lowercase hex without colons (nginx's form).
    pub fingerprint_sha1: String,
    /// SHA-256 fingerprint.
    pub fingerprint_sha256: String,
    /// MAC or null.
    pub mac: Option<String>,
    /// Profile name.
    pub profile: String,
    /// `x86_64` or `arm64`.
    pub arch: Arch,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// `active` or `revoked`.
    pub status: Status,
    /// Active, and the certificate ends within 30 days: renew it.
    pub expires_soon: bool,
    /// How the certificate came to us.
    pub origin: Origin,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
    /// Certificate path.
    pub cert: PathBuf,
    /// Key path, or null when we never had the key.
    pub key: Option<PathBuf>,
    /// Template variables.
    pub vars: BTreeMap<String, String>,
    /// Names of the secrets (never their values).
    pub secrets: Vec<String>,
    /// Serials of earlier certificates, oldest first, with `grace` or `revoked`.
    pub previous: Vec<String>,
    /// RFC 3339: the last request `serve` attributed to the board (`ipxe-ca history`).
    pub last_seen: Option<String>,
    /// How that request ended (`served`, `revoked`, …).
    pub last_outcome: Option<String>,
    /// A previous certificate is still accepted (`renewed`).
    #[serde(skip)]
    grace: bool,
}

/// What the state dir holds beside a board's entry, read by the registry: where its
/// certificate and key are, and its last request.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    /// The certificate's path.
    pub cert: PathBuf,
    /// The key's path, when ipxe-ca has the key.
    pub key: Option<PathBuf>,
    /// When `serve` last attributed a request to the board (RFC 3339), and how it ended.
    pub last: Option<(String, String)>,
}

/// Days before a certificate's end from which `list` and `serve` say it is expiring.
pub const WARN_DAYS: i64 = 30;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

impl Board {
    /// The board's certificate with fingerprint `fp`: the current one or a previous one.
    pub fn presented(&self, fp: &Fingerprint) -> Option<Presented<'_>> {
        if &self.fingerprint_sha1 == fp || &self.fingerprint_sha256 == fp {
            return Some(Presented {
                serial: &self.serial,
                revoked: self.status == Status::Revoked,
                previous: false,
            });
        }
        self.previous
            .iter()
            .find(|p| &p.fingerprint_sha1 == fp || &p.fingerprint_sha256 == fp)
            .map(|p| Presented {
                serial: &p.serial,
                revoked: self.status == Status::Revoked || p.status == Status::Revoked,
                previous: true,
            })
    }

    /// Whether an image built for `fingerprint` (SHA-256, from its manifest) is out of date:
    /// the board has had a new certificate since.
    pub fn image_is_stale(&self, fingerprint: &str) -> bool {
        self.fingerprint_sha256.as_str() != fingerprint
    }

    /// Previous certificates still accepted (after `renew`, before `revoke --previous`).
    pub fn in_grace(&self) -> impl Iterator<Item = &PreviousCert> {
        self.previous.iter().filter(|p| p.status == Status::Active)
    }

    /// Active, and its certificate ends within [`WARN_DAYS`] of `now`.
    pub fn expires_soon(&self, now: OffsetDateTime) -> bool {
        self.status == Status::Active && self.not_after < now + time::Duration::days(WARN_DAYS)
    }

    /// Refuse it from now on (the CRL and the registry say so once saved).
    pub fn revoke(&mut self, reason: Reason, now: OffsetDateTime) {
        self.status = Status::Revoked;
        self.revocation = Revocation::at(now, reason);
    }

    /// Its current certificate as a previous one, replaced `now`: kept accepted (a grace
    /// period, `renew`) or revoked as superseded.
    pub fn retired(&self, now: OffsetDateTime, revoke: bool) -> PreviousCert {
        let revoked = revoke || self.status == Status::Revoked;
        PreviousCert {
            serial: self.serial.clone(),
            fingerprint_sha1: self.fingerprint_sha1.clone(),
            fingerprint_sha256: self.fingerprint_sha256.clone(),
            not_after: self.not_after,
            replaced_at: now,
            status: if revoked {
                Status::Revoked
            } else {
                Status::Active
            },
            revocation: match (self.status, revoke) {
                (Status::Revoked, _) => self.revocation,
                (_, true) => Revocation::at(now, Reason::Superseded),
                (_, false) => Revocation::default(),
            },
        }
    }

    /// Take the certificate `info` (issued by `origin`), keeping the current one as previous
    /// (see [`Board::retired`]).
    pub fn renewed(
        &mut self,
        info: crate::ca::CertInfo,
        origin: Origin,
        now: OffsetDateTime,
        revoke_old: bool,
    ) {
        self.previous.push(self.retired(now, revoke_old));
        self.serial = info.serial;
        self.fingerprint_sha1 = info.fingerprint_sha1;
        self.fingerprint_sha256 = info.fingerprint_sha256;
        self.not_before = info.not_before;
        self.not_after = info.not_after;
        self.origin = origin;
    }

    /// End the grace period: every previous certificate still accepted is revoked as
    /// superseded. False when there was none.
    pub fn end_grace(&mut self, now: OffsetDateTime) -> bool {
        let mut any = false;
        for p in self
            .previous
            .iter_mut()
            .filter(|p| p.status == Status::Active)
        {
            p.status = Status::Revoked;
            p.revocation = Revocation::at(now, Reason::Superseded);
            any = true;
        }
        any
    }

    /// Its revoked certificates, as the CRL lists them.
    pub fn revoked_certs(&self) -> impl Iterator<Item = crate::ca::Revoked> + '_ {
        let previous = self
            .previous
            .iter()
            .filter(|p| p.status == Status::Revoked)
            .map(|p| crate::ca::Revoked {
                serial: p.serial.clone(),
                when: p.revocation.revoked_at.unwrap_or(p.replaced_at),
                reason: p.revocation.revocation_reason.unwrap_or(Reason::Superseded),
            });
        let current = (self.status == Status::Revoked).then(|| crate::ca::Revoked {
            serial: self.serial.clone(),
            when: self.revocation.revoked_at.unwrap_or(self.not_before),
            reason: self
                .revocation
                .revocation_reason
                .unwrap_or(Reason::Unspecified),
        });
        previous.chain(current)
    }
}

impl BoardView {
    /// The view of `board`, with what the state dir holds beside it, as of `now`.
    pub fn new(board: &Board, stored: Stored, now: OffsetDateTime) -> BoardView {
        BoardView {
            name: board.name.to_string(),
            serial: board.serial.to_string(),
            fingerprint_sha1: board.fingerprint_sha1.to_string(),
            fingerprint_sha256: board.fingerprint_sha256.to_string(),
            mac: board.mac.map(|m| m.to_string()),
            profile: board.profile.to_string(),
            arch: board.arch,
            not_before: rfc3339(board.not_before),
            not_after: rfc3339(board.not_after),
            status: board.status,
            expires_soon: board.expires_soon(now),
            origin: board.origin,
            revoked_at: board.revocation.revoked_at.map(rfc3339),
            cert: stored.cert,
            key: stored.key,
            vars: board.vars.clone(),
            secrets: board.secret_names.clone(),
            previous: board
                .previous
                .iter()
                .map(|p| {
                    let s = if p.status == Status::Active {
                        "grace"
                    } else {
                        "revoked"
                    };
                    format!("{} ({s})", p.serial)
                })
                .collect(),
            last_seen: stored.last.as_ref().map(|(time, _)| time.clone()),
            last_outcome: stored.last.map(|(_, outcome)| outcome),
            grace: board.in_grace().next().is_some(),
        }
    }

    /// `active`, `expiring` (active, ends within [`WARN_DAYS`]), `renewed` (an old
    /// certificate is still accepted) or `revoked`: the STATUS column.
    pub fn label(&self) -> &'static str {
        match (self.status, self.expires_soon, self.grace) {
            (Status::Revoked, _, _) => "revoked",
            (Status::Active, true, _) => "expiring",
            (Status::Active, false, true) => "renewed",
            (Status::Active, false, false) => "active",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board file as `revoke` and `renew --revoke-old` wrote it reads back and writes out
    /// with the same keys: the revocation is one type in the model, not in the file.
    #[test]
    fn a_revoked_board_file_round_trips_key_for_key() {
        let text = r#"name = "b1"
serial = "0a"
fingerprint_sha1 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
fingerprint_sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
profile = "default"
not_before = "2026-01-01T00:00:00Z"
not_after = "2027-01-01T00:00:00Z"
status = "revoked"
origin = "enrolled"
revoked_at = "2026-06-01T00:00:00Z"
revocation_reason = "key-compromise"
secret_names = []

[vars]

[[previous]]
serial = "09"
fingerprint_sha1 = "cccccccccccccccccccccccccccccccccccccccc"
fingerprint_sha256 = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
not_after = "2026-12-01T00:00:00Z"
replaced_at = "2026-03-01T00:00:00Z"
status = "revoked"
revoked_at = "2026-03-01T00:00:00Z"
revocation_reason = "superseded"
"#;
        let b: Board = toml::from_str(text).unwrap();
        assert_eq!(b.revocation.revocation_reason, Some(Reason::KeyCompromise));
        assert_eq!(
            b.previous[0].revocation.revocation_reason,
            Some(Reason::Superseded)
        );
        let listed: Vec<_> = b.revoked_certs().map(|r| r.serial.to_string()).collect();
        assert_eq!(listed, ["09", "0a"]);
        let back: toml::Value = toml::from_str(&toml::to_string(&b).unwrap()).unwrap();
        assert_eq!(back, toml::from_str::<toml::Value>(text).unwrap());
    }

    fn fp(c: char) -> Fingerprint {
        std::iter::repeat_n(c, 40)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    fn fp256(c: char) -> Fingerprint {
        std::iter::repeat_n(c, 64)
            .collect::<String>()
            .parse()
            .unwrap()
    }

    fn previous(serial: &str, c: char, status: Status) -> PreviousCert {
        let t = OffsetDateTime::UNIX_EPOCH;
        PreviousCert {
            serial: serial.parse().unwrap(),
            fingerprint_sha1: fp(c),
            fingerprint_sha256: fp256(c),
            not_after: t,
            replaced_at: t,
            status,
            revocation: Default::default(),
        }
    }

    fn board(not_after: OffsetDateTime) -> Board {
        Board {
            name: "b".parse().unwrap(),
            serial: "0a".parse().unwrap(),
            fingerprint_sha1: fp('a'),
            fingerprint_sha256: fp256('a'),
            mac: None,
            profile: ProfileName::default(),
            arch: Arch::default(),
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after,
            status: Status::Active,
            origin: Origin::Enrolled,
            revocation: Default::default(),
            secret_names: Vec::new(),
            vars: BTreeMap::new(),
            previous: vec![
                previous("0b", 'b', Status::Revoked),
                previous("0c", 'c', Status::Active),
            ],
        }
    }

    /// Each certificate is found by either fingerprint, with its own serial and standing.
    #[test]
    fn the_certificate_presented_is_the_one_with_that_fingerprint() {
        let b = board(OffsetDateTime::now_utc());
        for f in [fp('c'), fp256('c')] {
            let p = b.presented(&f).unwrap();
            assert_eq!(
                (p.serial.as_str(), p.revoked, p.previous),
                ("0c", false, true)
            );
        }
        for f in [fp('b'), fp256('b')] {
            let p = b.presented(&f).unwrap();
            assert_eq!(
                (p.serial.as_str(), p.revoked, p.previous),
                ("0b", true, true)
            );
        }
        for f in [fp('a'), fp256('a')] {
            let p = b.presented(&f).unwrap();
            assert_eq!(
                (p.serial.as_str(), p.revoked, p.previous),
                ("0a", false, false)
            );
        }
        assert!(b.presented(&fp('d')).is_none());
        assert_eq!(b.in_grace().count(), 1);
    }

    #[test]
    fn an_image_is_stale_once_the_board_has_another_certificate() {
        let b = board(OffsetDateTime::now_utc());
        assert!(!b.image_is_stale(fp256('a').as_str()));
        assert!(b.image_is_stale(fp256('c').as_str()));
    }

    /// "Expiring" starts strictly inside the warning window.
    #[test]
    fn expiring_means_ending_within_the_warning_days() {
        let now = OffsetDateTime::now_utc();
        let window = time::Duration::days(WARN_DAYS);
        assert!(!board(now + window).expires_soon(now));
        assert!(board(now + window - time::Duration::seconds(1)).expires_soon(now));
        let mut revoked = board(now);
        revoked.status = Status::Revoked;
        assert!(!revoked.expires_soon(now));
    }
}
