#!/usr/bin/env bash
# Fetch the real parts the end-to-end boot tests run: Debian 13's prebuilt iPXE (HTTPS, ECDHE)
# and a Debian cloud kernel. Debian packages only, through apt-get, cached for reruns.
# Prints the cache directory on success.
set -euo pipefail
cache="${IPXE_CA_TEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/var/tmp}/.cache}/ipxe-ca-test}"
mkdir -p "$cache"
if [ -s "$cache/ipxe/usr/lib/ipxe/ipxe-amd64.efi" ] && [ -s "$cache/vmlinuz" ]; then
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
echo "$cache"
