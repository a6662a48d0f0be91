#!/usr/bin/env bash
# The test command: installs what the tests need (Debian packages via apt-get, nothing else),
# fetches the real iPXE and kernel the boot tests use, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
need=(openssl curl nginx-light qemu-system-x86 ovmf mtools busybox-static cpio dosfstools
      debian-archive-keyring util-linux e2fsprogs coreutils
      gunicorn python3-flask
      make gcc perl liblzma-dev genisoimage isolinux syslinux-common syslinux-utils)
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
# The benchmarks' smoke run first (seconds; it proves they still work, its numbers mean nothing),
# then every test, so that the run ends with the test summary.
cargo test --locked --bench bench
cargo test --locked --lib --bins --tests "$@" -- --nocapture
