#!/usr/bin/env bash
# Fetch the real parts the end-to-end boot tests run: Debian 13's prebuilt iPXE (HTTPS, ECDHE),
# a Debian cloud kernel, and for arm64 boards the arm64 cloud kernel and busybox. Debian
# packages only, through apt-get (the arm64 ones without touching the system's apt setup),
# cached for reruns.
# Prints the cache directory on success.
set -euo pipefail
cache="${IPXE_CA_TEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/var/tmp}/.cache}/ipxe-ca-test}"
mkdir -p "$cache"
if [ -s "$cache/ipxe/usr/lib/ipxe/ipxe-amd64.efi" ] && [ -s "$cache/vmlinuz" ] &&
   [ -s "$cache/arm64/vmlinuz" ] && [ -s "$cache/arm64/busybox" ]; then
  echo "$cache"; exit 0
fi
apt_dir="$cache/apt-trixie"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources" "$cache/debs"
cat > "$apt_dir/sources/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/sources"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1)
if [ ! -s "$cache/ipxe/usr/lib/ipxe/ipxe-amd64.efi" ]; then
  apt-get "${apt_opts[@]}" update -qq >&2
  (cd "$cache/debs" && apt-get "${apt_opts[@]}" download ipxe >&2)
  rm -rf "$cache/ipxe"
  dpkg -x "$cache"/debs/ipxe_*.deb "$cache/ipxe"
fi
if [ ! -s "$cache/vmlinuz" ]; then
  # The system's own Debian release: its cloud kernel has virtio and the serial console built in.
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    echo "cannot find the cloud kernel package: run apt-get update" >&2; exit 1
  fi
  (cd "$cache/debs" && apt-get download "$pkg" >&2)
  rm -rf "$cache/kernel"
  dpkg -x "$cache"/debs/"$pkg"_*.deb "$cache/kernel"
  cp "$cache"/kernel/boot/vmlinuz-* "$cache/vmlinuz.tmp"
  rm -rf "$cache/kernel"
  mv "$cache/vmlinuz.tmp" "$cache/vmlinuz"
fi
if [ ! -s "$cache/arm64/vmlinuz" ] || [ ! -s "$cache/arm64/busybox" ]; then
  # Debian 12's arm64 packages: the same release as the x86 kernel, another architecture.
  a="$cache/apt-arm64"
  mkdir -p "$a/lists/partial" "$a/cache/archives/partial" "$a/sources" "$a/debs" "$cache/arm64"
  cat > "$a/sources/bookworm.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Architectures: arm64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  a_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$a/sources"
          -o "Dir::State::Lists=$a/lists" -o "Dir::Cache=$a/cache" -o Debug::NoLocking=1
          -o APT::Architecture=arm64 -o APT::Architectures::=arm64)
  apt-get "${a_opts[@]}" update -qq >&2
  pkg=$(apt-cache "${a_opts[@]}" depends linux-image-cloud-arm64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    echo "cannot find the arm64 cloud kernel package" >&2; exit 1
  fi
  rm -f "$a"/debs/*.deb
  (cd "$a/debs" && apt-get "${a_opts[@]}" download "$pkg" busybox-static >&2)
  rm -rf "$a/x" && mkdir -p "$a/x"
  for d in "$a"/debs/*.deb; do dpkg -x "$d" "$a/x"; done
  cp "$a"/x/boot/vmlinuz-* "$cache/arm64/vmlinuz.tmp" && mv "$cache/arm64/vmlinuz.tmp" "$cache/arm64/vmlinuz"
  cp "$a/x/bin/busybox" "$cache/arm64/busybox.tmp" && mv "$cache/arm64/busybox.tmp" "$cache/arm64/busybox"
  rm -rf "$a/x"
fi
echo "$cache"
