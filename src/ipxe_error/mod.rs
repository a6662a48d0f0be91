//! iPXE's error codes (`https://ipxe.org/0216e48f`) in words, from iPXE's own error tables
//! (`table.rs`, written by `scripts/ipxe-errors.py` from iPXE's source), with what an
//! operator does about the ones a farm meets.
//!
//! A code is `class << 24 | file | instance << 8 | platform`: the class is POSIX-like
//! (EACCES), the file is where iPXE raised it (x509.c), the instance tells apart errors of one
//! class in one file, and the platform byte is the firmware's status (UEFI: `0x80 | n`), which
//! differs between BIOS and UEFI builds of the same error.

#[rustfmt::skip]
mod table;

/// One code found in a line, explained.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Explained {
    /// The code as iPXE prints it (8 hex digits).
    pub code: String,
    /// iPXE's words for it, where it was raised, and what to do.
    pub meaning: String,
}

/// What a farm operator does about an error, by code without its platform byte.
const ADVICE: &[(u32, &str)] = &[
    (
        0x0216_e400,
        "a certificate is not valid at the board's time: its clock is likely wrong (no RTC \
battery?); set the date in its firmware, or build its image with --ntp",
    ),
    (
        0x0216_eb00,
        "the board trusts no certificate the server sent: its image pins another CA, or the \
server certificate is not from this farm's CA; rebuild the image (ipxe-ca build)",
    ),
    (
        0x7f04_8100,
        "the firmware would not load the image: under Secure Boot, sign it with the farm's db \
key (ipxe-ca sign-files) and enroll that key",
    ),
    (
        0x7f04_8200,
        "the firmware loaded the image but it failed to start",
    ),
    (
        0x2d0c_6100,
        "the server has no such file: check the profile's URLs and the files folder",
    ),
    (
        0x410c_6100,
        "the server refused the request: the server's line beside it says why",
    ),
    (
        0x0216_e600,
        "the board does not trust the CA that issued the server's certificate: rebuild its \
image (ipxe-ca build) or renew the server certificate from this farm's CA",
    ),
];

/// UEFI status names by error number (the platform byte's low 7 bits on UEFI builds).
const EFI_STATUS: &[(u8, &str)] = &[
    (1, "Load Error"),
    (2, "Invalid Parameter"),
    (3, "Unsupported"),
    (7, "Device Error"),
    (9, "Out of Resources"),
    (14, "Not Found"),
    (15, "Access Denied"),
    (18, "Timeout"),
    (26, "Security Violation"),
    (33, "Compromised Data"),
];

fn find<K: PartialEq + Copy, V: Copy>(table: &[(K, V)], key: K) -> Option<V> {
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The words for one code (None: not an iPXE error code iPXE's tables know).
pub fn explain(code: u32) -> Option<String> {
    let class = (code >> 24) as u8 & 0x7f;
    if class == 0 {
        return None;
    }
    let file = code & 0x00ff_e000;
    let base = code & 0x7fff_ff00;
    let platform = (code & 0xff) as u8;
    let words = find(table::PLATFORM, code)
        .or_else(|| find(table::UNIQUE, base))
        .or_else(|| find(table::CLASSES, class))?;
    let mut out = words.to_string();
    if let Some(f) = find(table::FILES, file) {
        out.push_str(&format!(" (in iPXE's {f})"));
    }
    // Only a platform-generated error carries the firmware's own status; elsewhere the byte
    // merely encodes the class for the platform.
    if class == 0x7f && platform & 0x80 != 0 && find(table::PLATFORM, code).is_none() {
        if let Some(s) = find(EFI_STATUS, platform & 0x7f) {
            out.push_str(&format!("; the firmware said: {s}"));
        }
    }
    if let Some(a) = find(ADVICE, base) {
        out.push_str(": ");
        out.push_str(a);
    }
    Some(out)
}

/// Every iPXE error code in a line (`ipxe.org/XXXXXXXX`, `(0x216e48f)`, a bare `0216e48f`
/// after "error"), explained, each once.
pub fn explain_line(line: &str) -> Vec<Explained> {
    let mut out: Vec<Explained> = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_hexdigit() {
            i += 1;
            continue;
        }
        // A run of hex digits counts only after `0x` or a name that ends in a separator, so
        // one inside a word (a fingerprint, a MAC) never does.
        let end = (i..bytes.len())
            .find(|&j| !bytes[j].is_ascii_hexdigit())
            .unwrap_or(bytes.len());
        let word = &line[i..end];
        let before = &line[..i];
        let after_0x = before.ends_with("0x") || before.ends_with("0X");
        let hex = if after_0x {
            // `0x216e48f` (iPXE's ${errno}): up to 8 digits.
            (word.len() <= 8).then_some(word)
        } else {
            let named = before.ends_with("ipxe.org/")
                || before.ends_with("error ")
                || before.ends_with("Error ")
                || before.ends_with('(');
            (word.len() == 8 && named).then_some(word)
        };
        if let Some(code) = hex.and_then(|h| u32::from_str_radix(h, 16).ok()) {
            let shown = format!("{code:08x}");
            // explain() knows no code without a class (its top byte).
            if !out.iter().any(|e| e.code == shown) {
                if let Some(meaning) = explain(code) {
                    out.push(Explained {
                        code: shown,
                        meaning,
                    });
                }
            }
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_a_farm_meets_are_explained_with_what_to_do() {
        let clock = explain(0x0216_e48f).unwrap();
        assert!(
            clock.starts_with("Expired (or not yet valid) (in iPXE's x509)"),
            "{clock}"
        );
        assert!(clock.contains("clock"), "{clock}");
        // The same error from a BIOS build (another platform byte): the same words.
        assert_eq!(explain(0x0216_e43c).unwrap(), clock);
        let trust = explain(0x0216_eb3c).unwrap();
        assert!(trust.starts_with("No usable certificates"), "{trust}");
        assert!(trust.contains("rebuild the image"), "{trust}");
        let sb = explain(0x7f04_818f).unwrap();
        assert!(
            sb.starts_with("Could not load image (in iPXE's efi_image)"),
            "{sb}"
        );
        assert!(sb.contains("the firmware said: Access Denied"), "{sb}");
        assert!(sb.contains("Secure Boot"), "{sb}");
        // The byte below encodes only the class when iPXE itself made the error: no status.
        let own = explain(0x7f04_810e).unwrap();
        assert!(own.starts_with("Could not load image"), "{own}");
        assert!(!own.contains("the firmware said"), "{own}");
        assert!(explain(0x7f04_819a)
            .unwrap()
            .starts_with("Image prohibited by security policy"));
        let missing = explain(0x2d0c_613b).unwrap();
        assert!(
            missing.starts_with("Not found (in iPXE's httpcore)"),
            "{missing}"
        );
        // A class iPXE knows in a file with no instance of its own: the class's words.
        assert!(explain(0x2d00_0000)
            .unwrap()
            .starts_with("No such file or directory"));
        assert_eq!(explain(0x0000_0000), None);
    }

    #[test]
    fn codes_are_found_where_ipxe_and_ipxe_ca_print_them() {
        let line = "https://10.0.2.2:8443/files/vmlinuz... Not found (https://ipxe.org/2d0c613b)";
        let found = explain_line(line);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].code, "2d0c613b");
        // ${errno} as the embed script prints it, twice: once.
        let found =
            explain_line("fetch failed (0x216e48f); see https://ipxe.org/0x216e48f, 0x216e48f");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].code, "0216e48f");
        // Hex that is no error code: a fingerprint, a MAC, a word.
        assert!(explain_line("fingerprint 0216e48fdeadbeef52:54:00:12:34:56 cafe").is_empty());
        assert!(explain_line("board b1 starting").is_empty());
        // Eight digits count after each name iPXE and ipxe-ca print before one, alone not.
        for named in ["error 2d0c613b", "Error 2d0c613b", "failed (2d0c613b)"] {
            assert_eq!(explain_line(named).len(), 1, "{named}");
        }
        for bare in [
            "code 2d0c613b",
            "2d0c613b",
            "error 2d0c613",
            "error 02d0c613b",
        ] {
            assert!(explain_line(bare).is_empty(), "{bare}");
        }
    }
}
