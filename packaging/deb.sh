#!/usr/bin/env bash
# Build ipxe-ca_VERSION_ARCH.deb with dpkg-deb alone (Debian's tools, no cargo-deb needed):
#   packaging/deb.sh [BINARY] [OUTDIR]
# BINARY defaults to target/release/ipxe-ca (built if missing); it is stripped into the package.
# DEB_COMPRESSION=gzip trades size for speed (the tests use it; xz by default).
# It leaves the generated man pages and completions in OUTDIR/assets, where Cargo.toml's
# [package.metadata.deb] finds them: `packaging/deb.sh && cargo deb` builds the same package
# with cargo-deb (a test checks that both lists install the same files).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
bin="${1:-$root/target/release/ipxe-ca}"
out="${2:-$root/target/debian}"
if [ ! -x "$bin" ]; then
  [ $# -ge 1 ] && { echo "deb.sh: $bin is not an executable" >&2; exit 1; }
  (cd "$root" && cargo build --release --locked)
fi
version="$("$bin" --version | awk '{print $2}')"
arch="$(dpkg --print-architecture)"
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pkg"
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" \
  "$pkg/usr/share/man/man1" "$pkg/usr/share/doc/ipxe-ca" \
  "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
  "$pkg/usr/share/fish/vendor_completions.d"
install -m 0755 "$bin" "$pkg/usr/bin/ipxe-ca"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/ipxe-ca"
install -m 0644 "$here/ipxe-ca.service" "$pkg/lib/systemd/system/ipxe-ca.service"
assets="$out/assets"
rm -rf "$assets" && mkdir -p "$assets/man"
"$bin" manpages "$stage/man"
for m in "$stage"/man/*.1; do gzip -9n -c "$m" > "$assets/man/$(basename "$m").gz"; done
"$bin" completions bash > "$assets/ipxe-ca.bash"
"$bin" completions zsh > "$assets/_ipxe-ca"
"$bin" completions fish > "$assets/ipxe-ca.fish"
install -m 0644 "$assets"/man/*.1.gz "$pkg/usr/share/man/man1/"
install -m 0644 "$assets/ipxe-ca.bash" "$pkg/usr/share/bash-completion/completions/ipxe-ca"
install -m 0644 "$assets/_ipxe-ca" "$pkg/usr/share/zsh/vendor-completions/_ipxe-ca"
install -m 0644 "$assets/ipxe-ca.fish" "$pkg/usr/share/fish/vendor_completions.d/ipxe-ca.fish"
install -m 0644 "$here/debian/copyright" "$pkg/usr/share/doc/ipxe-ca/copyright"
gzip -9n -c "$here/debian/changelog" > "$assets/changelog.gz"
install -m 0644 "$assets/changelog.gz" "$pkg/usr/share/doc/ipxe-ca/changelog.gz"
install -m 0755 "$here/debian/postinst" "$here/debian/postrm" "$pkg/DEBIAN/"
# Shared libraries the binary links, and the newest glibc symbol version it uses.
glibc="$(objdump -T "$pkg/usr/bin/ipxe-ca" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)"
depends="adduser, libc6 (>= $glibc)"
if objdump -p "$pkg/usr/bin/ipxe-ca" | grep -q 'NEEDED *libgcc_s'; then depends="$depends, libgcc-s1"; fi
size="$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" \
    -e "s/@SIZE@/$size/" "$here/debian/control" > "$pkg/DEBIAN/control"
(cd "$pkg" && find usr lib -type f -print0 | sort -z | xargs -0 md5sum) > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/md5sums"
deb="$out/ipxe-ca_${version}_${arch}.deb"
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}" \
  dpkg-deb --root-owner-group "-Z${DEB_COMPRESSION:-xz}" --build "$pkg" "$deb" >/dev/null
echo "$deb"
