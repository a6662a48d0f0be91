#!/usr/bin/env bash
# Instructions per boot of `serve`, counted by callgrind (repeatable, whatever else the machine
# does): BIN BOOTS [CURL-ARGS…]. Runs `serve` under callgrind twice, with 1 and with 1 + BOOTS
# boots (each a new TLS connection from curl, as board b1), and prints the difference / BOOTS:
# start-up and the one-time costs of the first handshake (aws-lc's entropy source) drop out.
#   scripts/callgrind-boots.sh target/release/ipxe-ca 50 --tls-max 1.2 \
#     --ciphers ECDHE-ECDSA-AES128-GCM-SHA256
# (the suite iPXE prefers: curl's own first choice, AES-256 with SHA-384, spends a fifth of a
# boot's instructions in SHA-512, which no iPXE boot pays.)
set -euo pipefail
bin=$(realpath "$1"); boots=$2; shift 2; curl_args=("$@")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
s="$work/state"
"$bin" --dir "$s" init --san IP:127.0.0.1 >/dev/null
"$bin" --dir "$s" enroll b1 >/dev/null
"$bin" --dir "$s" enroll b2 >/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() { # N → total Ir
  local n=$1 https http out pid
  https=$(port); http=$(port); out="$work/cg.$n"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --dir "$s" serve \
    --https "127.0.0.1:$https" --http "127.0.0.1:$http" >/dev/null 2>"$work/vg.$n" &
  pid=$!
  for _ in $(seq 600); do
    curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$http/" && break; sleep 0.2
  done
  for _ in $(seq "$n"); do
    curl -sf -o /dev/null --max-time 30 --cacert "$s/ca/ca.crt" --cert "$s/boards/b1/cert.pem" \
      --key "$s/keys/boards/b1.key" "${curl_args[@]}" "https://127.0.0.1:$https/boot.ipxe"
  done
  kill -TERM "$pid"; wait "$pid" || true
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !d {gsub(",","",$1); print $1; d=1}'
}
base=$(run 1)
with=$(run $((boots + 1)))
echo "start-up $base Ir; $boots boots $with Ir; per boot $(( (with - base) / boots )) Ir"
