#!/usr/bin/env bash
# Start one hospital's SuperNode: TLS to the SuperLink, authenticated with the site's node key,
# and site control (only app bundles approved with `ndae site approve` run here).
#
# Environment (see deploy/README.md):
#   NDAE_SUPERLINK      SuperLink address host:port, as in its certificate     (required)
#   NDAE_CA_CERT        the consortium's ca.crt                                 (required)
#   NDAE_SITE_KEY       this site's private node key (OpenSSH, ECDSA P-384)     (required)
#   NDAE_SITE_DIR       this site's folder: approved_apps.json, privacy ledger (required)
#   NDAE_MANIFEST       this site's manifest.csv                                (required)
#   NDAE_SITE_NAME      name used in messages and node config (default: basename of NDAE_SITE_DIR)
#   NDAE_RUNTIME_PORT   local port of the SuperNode's Runtime API on 127.0.0.1  (default 9094)
#   NDAE_NODE_CONFIG    extra node config, e.g. 'data-root="/data"'             (optional)
#   NDAE_PYTHON         python that has ndae-fed + flwr (default: the one next to flower-supernode)
#   FLWR_HOME           where approved bundles are unpacked (default: $NDAE_SITE_DIR/flwr-home)
#   NDAE_CACHE          root of the default prepared-subject cache, read by ndae (default ~/.cache/ndae)
# Extra arguments are passed to flower-supernode.
set -euo pipefail
for var in NDAE_SUPERLINK NDAE_CA_CERT NDAE_SITE_KEY NDAE_SITE_DIR NDAE_MANIFEST; do
  [[ -n "${!var:-}" ]] || { echo "start-supernode: $var is not set (see deploy/README.md)" >&2; exit 2; }
done
for file in "$NDAE_CA_CERT" "$NDAE_SITE_KEY" "$NDAE_MANIFEST"; do
  [[ -r "$file" ]] || { echo "start-supernode: $file is missing or unreadable" >&2; exit 2; }
done
mkdir -p "$NDAE_SITE_DIR"
export NDAE_SITE_DIR NDAE_SITE_NAME=${NDAE_SITE_NAME:-$(basename "$NDAE_SITE_DIR")}
export FLWR_HOME=${FLWR_HOME:-$NDAE_SITE_DIR/flwr-home}
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

supernode=$(command -v flower-supernode) || { echo "start-supernode: flower-supernode not on PATH" >&2; exit 2; }
if [[ -z "${NDAE_PYTHON:-}" ]]; then
  NDAE_PYTHON=$(dirname "$supernode")/python
  [[ -x "$NDAE_PYTHON" ]] || NDAE_PYTHON=$(command -v python3)
fi
export NDAE_PYTHON
# Fail now rather than at the first task if the site-control wrapper cannot run.
"$NDAE_PYTHON" -c "import ndae.deploy.approved_clientapp" || {
  echo "start-supernode: $NDAE_PYTHON cannot import ndae.deploy.approved_clientapp" >&2; exit 2; }

# Site control: our flwr-clientapp comes first on PATH for this SuperNode (and the
# flower-superexec it starts) only.
deploy_bin=$(cd "$(dirname "${BASH_SOURCE[0]}")/bin" && pwd)
export PATH="$deploy_bin:$PATH"
if [[ ! -s "$NDAE_SITE_DIR/approved_apps.json" ]]; then
  echo "start-supernode: no app approved yet for site $NDAE_SITE_NAME; every task is refused until" \
       "'ndae site approve APP_HASH --site-dir $NDAE_SITE_DIR'" >&2
fi

node_config="manifest=\"$NDAE_MANIFEST\" site=\"$NDAE_SITE_NAME\" site-dir=\"$NDAE_SITE_DIR\" ${NDAE_NODE_CONFIG:-}"
# No --allow-runtime-dependency-installation: bundles run with the packages installed here.
exec "$supernode" \
  --superlink "$NDAE_SUPERLINK" \
  --root-certificates "$NDAE_CA_CERT" \
  --auth-supernode-private-key "$NDAE_SITE_KEY" \
  --node-config "$node_config" \
  --host 127.0.0.1 \
  --port "${NDAE_RUNTIME_PORT:-9094}" \
  "$@"
