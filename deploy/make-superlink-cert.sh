#!/usr/bin/env bash
# Consortium operator: issue the SuperLink's TLS certificate, signed by the consortium CA.
# List every name/IP that SuperNodes and `flwr` users dial, plus 127.0.0.1 (the SuperLink's own
# ServerApp processes connect to it locally).
# Usage: deploy/make-superlink-cert.sh CA_DIR OUT_DIR HOST [HOST...]
#   e.g. deploy/make-superlink-cert.sh consortium/ca consortium/superlink-tls fl.example.org 127.0.0.1
set -euo pipefail
[[ $# -ge 3 ]] || { echo "usage: $0 CA_DIR OUT_DIR HOST [HOST...]" >&2; exit 2; }
ca=$1 out=$2; shift 2
hosts=()
for host in "$@"; do hosts+=(--host "$host"); done
"${NDAE_PYTHON:-python3}" -m ndae.deploy.pki superlink-cert --ca "$ca" --out "$out" "${hosts[@]}"
# The SuperLink also needs the CA certificate beside its own.
cp "$ca/ca.crt" "$out/ca.crt"
