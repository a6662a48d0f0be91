#!/usr/bin/env bash
# The test command: installs what the tests need (Debian packages via apt-get, nothing else),
# fetches the real iPXE and kernel the boot tests use, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
need=(openssl curl strace nginx-light qemu-system-x86 ovmf mtools busybox-static cpio dosfstools
      debian-archive-keyring util-linux util-linux-extra e2fsprogs coreutils
      gunicorn python3-flask testssl.sh prometheus systemd lintian binutils
      make gcc perl liblzma-dev xorriso genisoimage isolinux syslinux-common syslinux-utils
      sbsigntool qemu-system-arm qemu-efi-aarch64 gcc-aarch64-linux-gnu)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then $sudo apt-get update -qq; fi
IPXE_CA_TEST_ASSETS="$(scripts/fetch-boot-assets.sh)"
export IPXE_CA_TEST_ASSETS
# iPXE's own source (test data in ../shared/ipxe, never copied into the repository), unpacked
# once per tarball hash into the cache; the trees the tests build stay there between runs.
unpack_ipxe() { # VAR TARBALL
  local var=$1 tar=$2 sum dir
  if [ -n "${!var:-}" ]; then return; fi
  if [ ! -f "$tar" ]; then
    echo "WARNING: $tar not found: the real-iPXE tests will say SKIPPED" >&2; return
  fi
  sum=$(sha256sum "$tar" | cut -c1-16)
  dir="$IPXE_CA_TEST_ASSETS/$(basename "$tar" .tar.xz)-$sum"
  if [ ! -f "$dir/src/Makefile" ]; then
    rm -rf "$dir.partial" && mkdir -p "$dir.partial"
    tar -xJf "$tar" -C "$dir.partial" --strip-components=1
    mv "$dir.partial" "$dir"
  fi
  export "$var=$dir"
}
unpack_ipxe IPXE_SRC ../shared/ipxe/ipxe-2.0.0.tar.xz
unpack_ipxe IPXE_SRC_LEGACY ../shared/ipxe/ipxe-1.21.1.tar.xz
# The benchmarks' smoke run first (seconds; it proves they still work, its numbers mean nothing),
# then every test, so that the run ends with the test summary.
cargo test --locked --bench bench
# A test whose real part cannot run here says "==== SKIPPED …" where it stops; the run repeats
# those lines after cargo's summary, so that no skip goes unseen.
log=$(mktemp); trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --lib --bins --tests "$@" -- --nocapture 2>&1 | tee "$log" || status=$?
if grep -q '^==== SKIPPED' "$log"; then
  echo
  echo "Skipped in this run (their real part could not run on this machine):"
  grep '^==== SKIPPED' "$log" | sed 's/^==== SKIPPED /  - /'
  # Under CI a skip is a failure: a real part that did not run proved nothing.
  if [ "${CI:-}" = true ]; then
    echo "CI=true: a skipped real part fails the run" >&2
    status=1
  fi
fi
exit "$status"
