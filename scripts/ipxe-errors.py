#!/usr/bin/env python3
"""Write src/ipxe_error/table.rs from iPXE's own source (the tarballs in ../shared/ipxe):
error classes (include/errno.h), source files (include/ipxe/errfile.h) and each file's own
errors (__einfo_uniqify, __einfo_platformify). Newer trees win where two disagree.

    scripts/ipxe-errors.py ../shared/ipxe/ipxe-2.0.0.tar.xz ../shared/ipxe/ipxe-1.21.1.tar.xz
"""
import os
import re
import sys
import tarfile

# EFI_STATUS error numbers (UEFI spec, appendix D) that __einfo_platformify names.
EFI = {
    "EFI_LOAD_ERROR": 1, "EFI_INVALID_PARAMETER": 2, "EFI_UNSUPPORTED": 3,
    "EFI_BAD_BUFFER_SIZE": 4, "EFI_BUFFER_TOO_SMALL": 5, "EFI_NOT_READY": 6,
    "EFI_DEVICE_ERROR": 7, "EFI_WRITE_PROTECTED": 8, "EFI_OUT_OF_RESOURCES": 9,
    "EFI_VOLUME_CORRUPTED": 10, "EFI_VOLUME_FULL": 11, "EFI_NO_MEDIA": 12,
    "EFI_MEDIA_CHANGED": 13, "EFI_NOT_FOUND": 14, "EFI_ACCESS_DENIED": 15,
    "EFI_NO_RESPONSE": 16, "EFI_NO_MAPPING": 17, "EFI_TIMEOUT": 18, "EFI_NOT_STARTED": 19,
    "EFI_ALREADY_STARTED": 20, "EFI_ABORTED": 21, "EFI_ICMP_ERROR": 22, "EFI_TFTP_ERROR": 23,
    "EFI_PROTOCOL_ERROR": 24, "EFI_INCOMPATIBLE_VERSION": 25, "EFI_SECURITY_VIOLATION": 26,
    "EFI_CRC_ERROR": 27, "EFI_END_OF_MEDIA": 28, "EFI_END_OF_FILE": 31,
    "EFI_INVALID_LANGUAGE": 32, "EFI_COMPROMISED_DATA": 33,
}


def joined(text):
    """Continuation lines joined, comments dropped, whitespace squeezed."""
    text = re.sub(r"/\*.*?\*/", " ", text.replace("\\\n", " "), flags=re.S)
    return re.sub(r"[ \t]+", " ", text)


def read_tree(path):
    files = {}
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if m.isfile() and "/src/" in m.name and m.name.endswith((".c", ".h")):
                rel = m.name.split("/src/", 1)[1]
                files[rel] = t.extractfile(m).read().decode("utf-8", "replace")
    return files


def tables(files):
    posix = {}
    for name, code, msg in re.findall(
        r'#define EINFO_(\w+) __einfo \( (?:PLATFORM_\w+|0), (0x[0-9a-fA-F]+), \d+, "([^"]*)" \)',
        joined(files["include/errno.h"]),
    ):
        posix[name] = (int(code, 16), msg)
    errfile_text = joined(files["include/ipxe/errfile.h"])
    classes = {n: int(v, 16) for n, v in re.findall(r"#define ERRFILE_([A-Z_]+) (0x[0-9a-fA-F]+)", errfile_text)}
    errfiles = {}
    for name, cls, val in re.findall(r"#define ERRFILE_(\w+) \( ERRFILE_([A-Z_]+) \| (0x[0-9a-fA-F]+) \)", errfile_text):
        if cls in classes:
            errfiles[name] = classes[cls] | int(val, 16)
    unique, platform = {}, {}
    for rel, text in files.items():
        if not rel.endswith(".c"):
            continue
        stem = os.path.basename(rel)[:-2]
        if stem not in errfiles:
            continue
        ef = errfiles[stem]
        text = joined(text)
        local = {}
        for name, base, uniq, msg in re.findall(
            r'#define EINFO_(\w+) __einfo_uniqify \( EINFO_(\w+), (0x[0-9a-fA-F]+), "([^"]*)" \)', text
        ):
            if base in posix:
                code = (posix[base][0] << 24) | ef | (int(uniq, 16) << 8)
                local[name] = code
                unique[code] = (stem, msg)
        for name, base, plat, msg in re.findall(
            r'#define EINFO_(\w+) __einfo_platformify \( EINFO_(\w+), (\w+), "([^"]*)" \)', text
        ):
            if base in local and plat in EFI:
                platform[local[base] | 0x80 | EFI[plat]] = (stem, msg)
    return posix, errfiles, unique, platform


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(tarballs):
    posix, errfiles, unique, platform = {}, {}, {}, {}
    for path in reversed(tarballs):  # the first named wins
        p, e, u, pl = tables(read_tree(path))
        posix.update(p)
        errfiles.update(e)
        unique.update(u)
        platform.update(pl)
    names = ", ".join(os.path.basename(t) for t in tarballs)
    out = [
        f"// Written by scripts/ipxe-errors.py from {names}; do not edit.",
        "",
        "/// Error classes: the POSIX-like code in bits 30-24 and iPXE's words for it.",
        "pub(super) const CLASSES: &[(u8, &str)] = &[",
    ]
    out += [f"    (0x{c:02x}, {rust_str(m)})," for c, m in sorted(set(posix.values()))]
    out += ["];", "", "/// Source files: the file identifier in bits 23-13 (as a mask of the code).",
            "pub(super) const FILES: &[(u32, &str)] = &["]
    out += [f"    (0x{v:08x}, {rust_str(n)})," for n, v in sorted(errfiles.items(), key=lambda x: x[1])]
    out += ["];", "", "/// Each file's own errors, by code without its platform byte.",
            "pub(super) const UNIQUE: &[(u32, &str)] = &["]
    out += [f"    (0x{c:08x}, {rust_str(m)})," for c, (_, m) in sorted(unique.items())]
    out += ["];", "", "/// Errors named with the firmware's own status (UEFI), by whole code.",
            "pub(super) const PLATFORM: &[(u32, &str)] = &["]
    out += [f"    (0x{c:08x}, {rust_str(m)})," for c, (_, m) in sorted(platform.items())]
    out += ["];", ""]
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
