#!/usr/bin/env bash
# Start the consortium SuperLink: TLS on every API + only registered SuperNodes may join.
#
# Environment (see deploy/README.md; systemd: EnvironmentFile, docker compose: environment):
#   NDAE_TLS_DIR            folder with ca.crt, superlink.crt, superlink.key   (required)
#   NDAE_SUPERLINK_HOST     address to listen on                               (default 0.0.0.0)
#   NDAE_SUPERLINK_PORT     port of the Fleet, Control and Runtime HTTP APIs   (default 9093)
#   NDAE_SUPERLINK_DATABASE SQLite file: registered node keys and runs survive restarts
#                           (default /var/lib/ndae/superlink.db; ":flwr-in-memory:" for none)
# Extra arguments are passed to flower-superlink.
set -euo pipefail
: "${NDAE_TLS_DIR:?set NDAE_TLS_DIR to the folder holding ca.crt, superlink.crt and superlink.key}"
for file in ca.crt superlink.crt superlink.key; do
  [[ -r "$NDAE_TLS_DIR/$file" ]] || { echo "start-superlink: $NDAE_TLS_DIR/$file is missing or unreadable" >&2; exit 2; }
done
database=${NDAE_SUPERLINK_DATABASE:-/var/lib/ndae/superlink.db}
[[ "$database" == :* ]] || mkdir -p "$(dirname "$database")"

# A consortium server does not phone home.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1

# --disable-runtime-dependency-installation: the ServerApp runs with the ndae-fed installed
# here (pinned versions), never with packages fetched at run time from a bundle's pyproject.
exec flower-superlink \
  --ssl-ca-certfile "$NDAE_TLS_DIR/ca.crt" \
  --ssl-certfile "$NDAE_TLS_DIR/superlink.crt" \
  --ssl-keyfile "$NDAE_TLS_DIR/superlink.key" \
  --enable-supernode-auth \
  --disable-runtime-dependency-installation \
  --database "$database" \
  --host "${NDAE_SUPERLINK_HOST:-0.0.0.0}" \
  --port "${NDAE_SUPERLINK_PORT:-9093}" \
  "$@"
