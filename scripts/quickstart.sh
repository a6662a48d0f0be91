#!/usr/bin/env bash
# Quick start on the embedded defaults: build ipxe-ca, create a lab in ./lab (CA, server
# certificate for localhost/127.0.0.1, default profile), enroll board1, and serve.
# Safe to run again: an existing lab and board are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
bin=./target/release/ipxe-ca
lab=${IPXE_CA_DIR:-./lab}
[ -f "$lab/ca/ca.crt" ] || "$bin" --dir "$lab" init
[ -f "$lab/boards/board1.toml" ] || "$bin" --dir "$lab" enroll board1 --secret s3_key=CHANGE-ME
echo "try: curl --cacert $lab/ca/ca.crt --cert $lab/boards/board1/cert.pem --key $lab/keys/boards/board1.key https://127.0.0.1:8443/boot.ipxe"
exec "$bin" --dir "$lab" serve "$@"
