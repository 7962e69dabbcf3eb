#!/usr/bin/env bash
# Sets up everything and runs the quickstart topology end to end, with live progress.
# Ctrl-C stops it cleanly. STRATA_QUICKSTART_SECONDS=N stops it after N seconds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

scripts/install-deps.sh
eval "$(scripts/services.sh start)"
cargo build -q "${BUILD_FLAGS[@]}"
STRATA="$CARGO_TARGET_DIR/debug/strata"

log "writing a claims workload into $STRATA_PG_URL"
"$STRATA" generate --members "${STRATA_QUICKSTART_MEMBERS:-5000}" --providers 300 \
  --claims "${STRATA_QUICKSTART_CLAIMS:-50000}" --reset

"$STRATA" validate topologies/quickstart.yaml
log "the quickstart topology:"
"$STRATA" graph topologies/quickstart.yaml >&2

listen="${STRATA_METRICS_LISTEN:-127.0.0.1:9898}"
"$STRATA" run topologies/quickstart.yaml --listen "$listen" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid || true' INT TERM
wait_for "strata (http://$listen/ready)" 60 curl -fsS "http://$listen/ready" || die "strata did not become ready"
log "metrics: http://$listen/metrics   health: http://$listen/health"
if [ -n "${STRATA_QUICKSTART_SECONDS:-}" ]; then
  sleep "$STRATA_QUICKSTART_SECONDS"
  kill -TERM "$pid"
fi
wait "$pid"
log "stopped cleanly. Look around:"
log "  psql $STRATA_PG_URL"
log "  curl $STRATA_SCHEMA_REGISTRY_URL/subjects"
log "  scripts/services.sh stop    # when you are done"
