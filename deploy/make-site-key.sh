#!/usr/bin/env bash
# Hospital administrator, at the site: create the SuperNode's ECDSA P-384 key pair (OpenSSH).
# SITE.key never leaves the site; send SITE.pub (and its printed fingerprint, by another
# channel) to the consortium operator, who registers it with `flwr supernode register`.
# --privacy-dir DIR (the SuperNode's privacy-dir) also creates the ledger-signing key
# DIR/SITE.signing.key; send DIR/SITE.signing.pub too, for the consortium's key registry.
# Usage: deploy/make-site-key.sh SITE OUT_DIR [--privacy-dir DIR] [--force]
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 SITE OUT_DIR [--privacy-dir DIR] [--force]" >&2; exit 2; }
site=$1 out=$2; shift 2
exec "${NDAE_PYTHON:-python3}" -m ndae.deploy.pki site-key "$site" --out "$out" "$@"
