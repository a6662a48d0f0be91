//! Validated values parsed at the edge: names that become paths, MACs, fingerprints, SANs.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A board's name. It becomes a file name, so it is restricted to a safe alphabet:
/// lowercase letters, digits, `.`, `_`, `-`, starting with a letter or digit, at most 63 characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BoardName(String);

impl BoardName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BoardName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        validate_name(s, "board name")?;
        // boards/NAME.toml is a board's file and boards/NAME/ its folder: "a.toml" would make
        // board a's file a folder.
        if s.ends_with(".toml") {
            return Err(Error::invalid(format!(
                "invalid board name {s:?}: names may not end in .toml (that is how the registry names its files)"
            )));
        }
        Ok(BoardName(s.to_string()))
    }
}

/// Shared rule for every name that becomes a path (boards, profiles, secrets).
pub fn validate_name(s: &str, what: &str) -> Result<(), Error> {
    let ok_first = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if s.is_empty() || s.len() > 63 || !ok_first || !ok_rest {
        return Err(Error::invalid(format!(
            "invalid {what} {s:?}: use 1-63 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

impl TryFrom<String> for BoardName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<BoardName> for String {
    fn from(n: BoardName) -> String {
        n.0
    }
}

impl fmt::Display for BoardName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A profile name (a template file `profiles/NAME.ipxe`); same alphabet as board names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProfileName(String);

impl ProfileName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ProfileName {
    fn default() -> Self {
        ProfileName("default".into())
    }
}

impl FromStr for ProfileName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        validate_name(s, "profile name")?;
        Ok(ProfileName(s.to_string()))
    }
}

impl TryFrom<String> for ProfileName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<ProfileName> for String {
    fn from(n: ProfileName) -> String {
        n.0
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A board's CPU architecture, by iPXE's own names (`${buildarch}`): which iPXE binary its
/// image holds, and which kernel one profile picks for it in a mixed farm
/// (`{{ secure_files_url }}/{{ board.arch }}/vmlinuz`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Arch {
    /// PCs and x86 servers (BIOS or UEFI).
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM boards and servers (UEFI).
    #[serde(rename = "arm64")]
    Arm64,
}

impl Arch {
    /// Every architecture, for help and errors.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// iPXE's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Whether it is the default (left out of a board's file).
    pub fn is_default(&self) -> bool {
        *self == Arch::default()
    }

    /// The file UEFI boots from removable media (`EFI/BOOT/…`).
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" | "amd64" | "x64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(Error::invalid(format!(
                "unknown architecture {s:?}: one of x86_64, arm64"
            ))),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// An Ethernet MAC, stored in the lowercase colon form iPXE prints as `${net0/mac}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac([u8; 6]);

impl FromStr for Mac {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let hex: String = s
            .chars()
            .filter(|c| !matches!(c, ':' | '-' | '.'))
            .collect();
        let bad = || {
            Error::invalid(format!(
                "invalid MAC address {s:?}: expected six hex bytes such as 52:54:00:12:34:56"
            ))
        };
        if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

impl TryFrom<String> for Mac {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Which digest a fingerprint is: nginx's `$ssl_client_fingerprint` is SHA-1, iPXE's TRUST
/// list and our records use SHA-256 too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Digest {
    /// 20 bytes, as nginx prints it.
    Sha1,
    /// 32 bytes.
    Sha256,
}

impl Digest {
    /// The short name (`sha1`, `sha256`), also the registry's index folder.
    pub fn name(self) -> &'static str {
        match self {
            Digest::Sha1 => "sha1",
            Digest::Sha256 => "sha256",
        }
    }
}

/// A certificate fingerprint as lowercase hex without colons (nginx's `$ssl_client_fingerprint`
/// form), knowing which digest it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint {
    digest: Digest,
    hex: String,
}

impl Fingerprint {
    /// SHA-1 of the DER certificate, as nginx prints it.
    pub fn sha1(der: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        Fingerprint {
            digest: Digest::Sha1,
            hex: hex::encode(d.as_ref()),
        }
    }

    /// SHA-256 of the DER certificate (what iPXE's TRUST list holds).
    pub fn sha256(der: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Fingerprint {
            digest: Digest::Sha256,
            hex: hex::encode(d.as_ref()),
        }
    }

    /// SHA-1 or SHA-256.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Fingerprint {
    type Err = Error;
    /// Accepts upper or lower case, with or without colons; 40 (SHA-1) or 64 (SHA-256) hex digits.
    fn from_str(s: &str) -> Result<Self, Error> {
        let hex: String = s
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let digest = match hex.len() {
            40 => Some(Digest::Sha1),
            64 => Some(Digest::Sha256),
            _ => None,
        };
        match digest {
            Some(digest) if hex.chars().all(|c| c.is_ascii_hexdigit()) => {
                Ok(Fingerprint { digest, hex })
            }
            _ => Err(Error::invalid(format!(
                "invalid fingerprint {s:?}: expected 40 (SHA-1) or 64 (SHA-256) hex digits"
            ))),
        }
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Fingerprint> for String {
    fn from(f: Fingerprint) -> String {
        f.hex
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.hex)
    }
}

/// A certificate serial in one form everywhere (registry, index, CRL, nginx's header):
/// lowercase hex without leading zero bytes, as openssl prints it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Serial(String);

impl Serial {
    /// The serial of a certificate's raw DER integer.
    pub fn from_der_bytes(raw: &[u8]) -> Serial {
        let first = raw
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(raw.len().saturating_sub(1));
        Serial(hex::encode(&raw[first..]))
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Serial {
    type Err = Error;
    /// Hex in any case, with or without leading zeros or colons (nginx's `$ssl_client_serial`
    /// is upper case and keeps them).
    fn from_str(s: &str) -> Result<Self, Error> {
        let digits: String = s
            .trim()
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if digits.is_empty() || digits.len() > 64 || !digits.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(Error::invalid(format!(
                "invalid serial {s:?}: expected up to 64 hex digits"
            )));
        }
        let t = digits.trim_start_matches('0');
        Ok(Serial(match t.len() {
            0 => "00".to_string(),
            n if n % 2 == 1 => format!("0{t}"),
            _ => t.to_string(),
        }))
    }
}

impl TryFrom<String> for Serial {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<Serial> for String {
    fn from(s: Serial) -> String {
        s.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A subject alternative name for the server certificate: `DNS:host` or `IP:addr`
/// (a bare address or host name is accepted too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    /// A DNS name.
    Dns(String),
    /// An IP address (iPXE connects by IP when the URL holds one).
    Ip(IpAddr),
}

impl San {
    /// Whether iPXE, connecting to `host` (a URL's host, IPv6 without brackets), accepts a
    /// certificate with this name: it compares names case-insensitively and lets `*.` stand
    /// for one leftmost label (`x509_check_dnsname`). openssl and curl agree, except that they
    /// also refuse a wildcard with fewer than two labels after it (`*.lab`).
    pub fn covers(&self, host: &str) -> bool {
        match self {
            San::Ip(a) => host.parse::<IpAddr>().is_ok_and(|h| h == *a),
            San::Dns(d) => match d.strip_prefix("*.") {
                Some(rest) => host.split_once('.').is_some_and(|(label, parent)| {
                    !label.is_empty() && parent.eq_ignore_ascii_case(rest)
                }),
                None => d.eq_ignore_ascii_case(host),
            },
        }
    }

    /// The host part of a URL for this name (IPv6 in brackets).
    pub fn url_host(&self) -> String {
        match self {
            San::Dns(d) => d.clone(),
            San::Ip(IpAddr::V6(a)) => format!("[{a}]"),
            San::Ip(a) => a.to_string(),
        }
    }
}

impl FromStr for San {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (kind, value) = match s.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("dns") => ("dns", v),
            Some((k, v)) if k.eq_ignore_ascii_case("ip") => ("ip", v),
            _ => ("auto", s),
        };
        if kind != "dns" {
            if let Ok(ip) = value.parse::<IpAddr>() {
                return Ok(San::Ip(ip));
            }
            if kind == "ip" {
                return Err(Error::invalid(format!("invalid IP address in SAN {s:?}")));
            }
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        };
        if value.is_empty() || value.len() > 253 || !value.split('.').all(label_ok) {
            return Err(Error::invalid(format!(
                "invalid SAN {s:?}: use DNS:host.name or IP:1.2.3.4"
            )));
        }
        Ok(San::Dns(value.to_ascii_lowercase()))
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(a) => write!(f, "IP:{a}"),
        }
    }
}

/// A `KEY=VALUE` pair from `--var` / `--secret`; keys are identifiers usable in templates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// Template variable name.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl FromStr for KeyValue {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (k, v) = s
            .split_once('=')
            // The value may be a secret: never echo it.
            .ok_or_else(|| {
                Error::invalid("expected KEY=VALUE (no '=' found; the text is not repeated here)")
            })?;
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(Error::invalid(format!(
                "invalid key {k:?}: use letters, digits and '_' (it becomes a template variable)"
            )));
        }
        Ok(KeyValue {
            key: k.to_string(),
            value: v.to_string(),
        })
    }
}

/// `KEY=VALUE` lines (blank lines and `#` comments skipped), e.g. secrets read from a file or
/// stdin instead of the command line, where every local user can read them. Errors name the
/// line number, never its text.
pub fn parse_key_values(text: &str) -> Result<Vec<KeyValue>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let kv: KeyValue = t.parse().map_err(|_| {
            Error::invalid(format!(
                "line {}: expected KEY=VALUE with KEY of letters, digits and '_' (the line is not repeated here)",
                i + 1
            ))
        })?;
        out.push(kv);
    }
    Ok(out)
}

/// `KEY=PATH`: the secret KEY is the content of PATH, without its final newline.
pub fn key_from_file(spec: &str) -> Result<KeyValue, Error> {
    let (k, path) = spec
        .split_once('=')
        .ok_or_else(|| Error::invalid("expected KEY=PATH"))?;
    // The path is not repeated: given KEY=VALUE by mistake, it is the secret itself.
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(format!(
            "{k}: cannot read the secret file named after '=' ({e}); the name is not repeated \
             here in case it is the secret itself: a secret file is given as KEY=PATH"
        ))
    })?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    let kv: KeyValue = format!("{k}=x").parse()?;
    Ok(KeyValue {
        key: kv.key,
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_have_one_form() {
        let ours = Serial::from_der_bytes(&[0x00, 0x0a, 0xbc]);
        assert_eq!(ours.as_str(), "0abc");
        for nginx in ["0ABC", "000ABC", "abc", "0a:bc"] {
            assert_eq!(nginx.parse::<Serial>().unwrap(), ours, "{nginx}");
        }
        assert_ne!("1abc".parse::<Serial>().unwrap(), ours);
        assert!("xyz".parse::<Serial>().is_err());
        assert!("".parse::<Serial>().is_err());
    }

    #[test]
    fn fingerprints_know_their_digest() {
        assert_eq!(Fingerprint::sha1(b"x").digest(), Digest::Sha1);
        assert_eq!(Fingerprint::sha256(b"x").digest(), Digest::Sha256);
        let fp: Fingerprint = Fingerprint::sha1(b"x").as_str().parse().unwrap();
        assert_eq!(fp.digest(), Digest::Sha1);
    }

    #[test]
    fn board_names() {
        for good in ["a", "board-1", "0x.y_z", &"a".repeat(63)] {
            assert!(good.parse::<BoardName>().is_ok(), "{good}");
        }
        for bad in ["", "../x", "A", "-a", ".a", "a/b", "a b", &"a".repeat(64)] {
            assert!(bad.parse::<BoardName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_normalise() {
        let m: Mac = "52-54-00-AB-cd-EF".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        assert!("zz:54:00:ab:cd:ef".parse::<Mac>().is_err());
    }

    #[test]
    fn a_san_covers_its_host_and_a_wildcard_one_label() {
        let covers = |san: &str, host: &str| san.parse::<San>().unwrap().covers(host);
        assert!(covers("DNS:boot.lab", "boot.lab"));
        assert!(covers("DNS:boot.lab", "BOOT.Lab"));
        assert!(!covers("DNS:boot.lab", "boot.lab.evil"));
        assert!(!covers("DNS:boot.lab", "oot.lab"));
        assert!(covers("DNS:*.lab", "boot.lab"));
        assert!(!covers("DNS:*.lab", "a.boot.lab"));
        assert!(!covers("DNS:*.lab", "lab"));
        assert!(!covers("DNS:*.lab", ".lab"));
        assert!(!covers("DNS:*.lab", "boot.lab2"));
        assert!(covers("IP:10.0.2.2", "10.0.2.2"));
        assert!(!covers("IP:10.0.2.2", "10.0.2.20"));
        assert!(covers("IP:fd00::1", "fd00:0::1"));
        assert!(!covers("IP:10.0.2.2", "boot.lab"));
        assert!(!covers("DNS:10.0.2.2.lab", "10.0.2.2"));
    }

    #[test]
    fn sans() {
        assert_eq!(
            "IP:10.0.2.2".parse::<San>().unwrap().to_string(),
            "IP:10.0.2.2"
        );
        assert_eq!(
            "DNS:Boot.Lab".parse::<San>().unwrap().to_string(),
            "DNS:boot.lab"
        );
        assert_eq!("::1".parse::<San>().unwrap().url_host(), "[::1]");
        assert!("IP:boot".parse::<San>().is_err());
        assert!("DNS:a b".parse::<San>().is_err());
    }

    #[test]
    fn fingerprints() {
        let f: Fingerprint = format!("{}AB", "AB:".repeat(19)).parse().unwrap();
        assert_eq!(f.as_str(), "ab".repeat(20));
        assert_eq!(f.as_str().len(), 40);
        assert!("xyz".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn fingerprints_of_the_right_length_but_not_hex_never_become_paths() {
        // A fingerprint names a file of the index: 40 or 64 characters of anything else
        // (a path, a NUL, a non-ASCII digit) must be refused.
        let escape = format!("{}{}", "../".repeat(13), "x");
        assert_eq!(escape.len(), 40);
        for bad in [
            escape,
            format!("{}/", "a".repeat(39)),
            format!("{}g", "a".repeat(63)),
            format!("{}\0", "a".repeat(39)),
            format!("{}\u{0663}", "a".repeat(39)), // ARABIC-INDIC DIGIT THREE
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
        assert!("a".repeat(64).parse::<Fingerprint>().is_ok());
    }

    #[test]
    fn serials_are_minimal_even_length_hex_of_at_most_64_digits() {
        for (given, stored) in [
            ("0", "00"),
            ("00:00", "00"),
            ("a", "0a"),
            ("ab", "ab"),
            ("abc", "0abc"),
            ("ABCD", "abcd"),
            ("12345", "012345"),
            ("0012:3456", "123456"),
        ] {
            let s: Serial = given.parse().unwrap();
            assert_eq!(s.as_str(), stored, "{given}");
            assert_eq!(s.to_string(), stored, "{given}: Display");
        }
        // 64 digits (32 bytes) is the longest a serial may be (RFC 5280 says 20 octets;
        // foreign CAs exceed it).
        assert!("f".repeat(64).parse::<Serial>().is_ok());
        assert!("f".repeat(65).parse::<Serial>().is_err());
    }

    #[test]
    fn profile_names_are_checked_wherever_they_come_from() {
        let p: ProfileName = "rescue".parse().unwrap();
        assert_eq!(p.as_str(), "rescue");
        assert_eq!(p.to_string(), "rescue");
        // From a board file (serde goes through TryFrom<String>): a bad name is an error,
        // never the default profile.
        #[derive(Deserialize)]
        struct B {
            profile: ProfileName,
        }
        let ok: B = toml::from_str("profile = \"rescue\"").unwrap();
        assert_eq!(ok.profile, p);
        for bad in ["../../etc/passwd", "", "Rescue"] {
            assert!(
                toml::from_str::<B>(&format!("profile = {bad:?}")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn index_folders_keep_their_names() {
        // Existing state dirs hold index/sha1/… and index/sha256/…: another name would make
        // every registered certificate unknown after an upgrade.
        assert_eq!(Digest::Sha1.name(), "sha1");
        assert_eq!(Digest::Sha256.name(), "sha256");
    }

    #[test]
    fn dns_sans_take_hyphens_wildcards_and_at_most_253_characters() {
        for good in ["DNS:boot-1.lab", "DNS:*.lab"] {
            assert!(good.parse::<San>().is_ok(), "{good}");
        }
        // 253 characters is the longest DNS name: labels of 63 and dots.
        let name = |len: usize| {
            let mut n = String::new();
            while n.len() < len {
                if !n.is_empty() {
                    n.push('.');
                }
                let take = (len - n.len()).min(63);
                n.push_str(&"a".repeat(take));
            }
            n
        };
        assert_eq!(name(253).len(), 253);
        assert!(format!("DNS:{}", name(253)).parse::<San>().is_ok());
        assert!(format!("DNS:{}", name(254)).parse::<San>().is_err());
        assert!(format!("DNS:{}", name(400)).parse::<San>().is_err());
        assert!("DNS:".parse::<San>().is_err());
    }

    #[test]
    fn keys_are_identifiers_and_key_files_skip_comments() {
        assert_eq!(
            "s3_key=a=b".parse::<KeyValue>().unwrap(),
            KeyValue {
                key: "s3_key".into(),
                value: "a=b".into()
            }
        );
        for bad in ["s3-key=x", "1a=x", "=x", "a b=x"] {
            assert!(bad.parse::<KeyValue>().is_err(), "{bad}");
        }
        let kv = parse_key_values("# S3\n\n  s3_key = ignored?\ns3_key=AKIA\n  # end\ntoken=t0k\n");
        assert!(kv.is_err(), "a key with a space is refused, by line number");
        let kv = parse_key_values("# S3\n\ns3_key=AKIA\n  # end\ntoken=t0k\n").unwrap();
        let keys: Vec<(&str, &str)> = kv
            .iter()
            .map(|k| (k.key.as_str(), k.value.as_str()))
            .collect();
        assert_eq!(keys, [("s3_key", "AKIA"), ("token", "t0k")]);
    }
}
