#!/usr/bin/env bash
# Consortium operator, once: create the consortium CA (ca.crt to share, ca.key to keep offline).
# Usage: deploy/make-ca.sh OUT_DIR [--name "ALS consortium CA"] [--days 3650]
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 OUT_DIR [--name NAME] [--days N]" >&2; exit 2; }
out=$1; shift
exec "${NDAE_PYTHON:-python3}" -m ndae.deploy.pki ca --out "$out" "$@"
