#!/usr/bin/env bash
# Sets up everything and runs the quickstart topology end to end, with live progress:
# PostgreSQL claims (snapshot, then a live stream of new claims and their lifecycle)
# → Kafka → conflict resolution, claim assembly, claim analysis, tiering → hot, warm and cold stores.
# Ctrl-C stops it cleanly; STRATA_QUICKSTART_SECONDS=N stops it after N seconds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

scripts/install-deps.sh
eval "$(scripts/services.sh start)"
cargo build -q "${BUILD_FLAGS[@]}"
STRATA="$CARGO_TARGET_DIR/debug/strata"

# Each run is a fresh deployment: its own region name (topics, consumer groups, state),
# slot and stores, so reruns never mix with an earlier run's state.
export STRATA_REGION="${STRATA_REGION:-quickstart-$(date +%Y%m%d-%H%M%S)}"
export STRATA_SLOT="strata_${STRATA_REGION//-/_}"
members="${STRATA_QUICKSTART_MEMBERS:-5000}"
claims="${STRATA_QUICKSTART_CLAIMS:-50000}"
stream_claims="${STRATA_QUICKSTART_STREAM_CLAIMS:-100000}"
rate="${STRATA_QUICKSTART_RATE:-200}"
gen_opts=(--members "$members" --providers 300 --claims "$claims" --seed 42)

log "cleaning up earlier quickstart runs (inactive slots, hot and warm schemas)"
PGOPTIONS='-c client_min_messages=warning' psql -q "$STRATA_PG_URL" >/dev/null <<'SQL' || true
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
 WHERE slot_name LIKE 'strata_quickstart%' AND NOT active;
DROP SCHEMA IF EXISTS hot CASCADE;
DROP SCHEMA IF EXISTS warm CASCADE;
SQL

log "writing $claims claims of $members members into $STRATA_PG_URL"
"$STRATA" generate "${gen_opts[@]}" --reset

"$STRATA" validate topologies/quickstart.yaml
log "the quickstart topology:"
"$STRATA" graph topologies/quickstart.yaml >&2

listen="${STRATA_METRICS_LISTEN:-127.0.0.1:9898}"
"$STRATA" run topologies/quickstart.yaml --listen "$listen" 2>"$STRATA_HOME/quickstart.log" &
pid=$!
gen_pid=""
stop() {
  [ -n "$gen_pid" ] && kill "$gen_pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
}
trap stop INT TERM
wait_for "strata (http://$listen/ready)" 120 curl -fsS "http://$listen/ready" \
  || { tail -20 "$STRATA_HOME/quickstart.log" >&2; die "strata did not become ready"; }
log "metrics: http://$listen/metrics   log: $STRATA_HOME/quickstart.log"

log "streaming $stream_claims more claims at $rate/s (with updates, corrections and voids)"
"$STRATA" generate "${gen_opts[@]}" --resume --stream-claims "$stream_claims" --rate "$rate" \
  >"$STRATA_HOME/generator.log" 2>&1 &
gen_pid=$!

archive="$STRATA_HOME/archive/$STRATA_REGION"
sql() { psql -At "$STRATA_PG_URL" -c "$1" 2>/dev/null || echo "-"; }
counter() { # sum of a counter for a component in a /metrics text
  awk -v name="$1" -v comp="$2" '$1 ~ "^"name"\\{" && $1 ~ "component=\""comp"\"" {s+=$2} END {print s+0}' <<<"$3"
}
declare -A before=()
show_progress() {
  local metrics line="" stage now
  metrics=$(curl -fsS "http://$listen/metrics" 2>/dev/null) || return 0
  for stage in conflicts assembly analysis tiering hot warm cold; do
    now=$(counter strata_events_in_total "$stage" "$metrics")
    line+="$stage $(( (now - ${before[$stage]:-$now}) / 3 ))/s  "
    before[$stage]=$now
  done
  local dead
  dead=$(awk '$1 ~ /^strata_dead_letters_total/ {s+=$2} END {print s+0}' <<<"$metrics")
  local cold_rows
  cold_rows=$(find "$archive/manifest" -name "*.json" -exec cat {} + 2>/dev/null | grep -o '"records":[0-9]*' | cut -d: -f2 | awk '{s+=$1} END {print s+0}' || true)
  printf '%s | dead letters %s\n' "$line" "$dead" >&2
  printf '   source %s claims | hot %s | warm %s | cold %s archived records | routing %s\n' \
    "$(sql 'SELECT count(*) FROM public.claims')" \
    "$(sql 'SELECT count(*) FROM hot.claims')" "$(sql 'SELECT count(*) FROM warm.claims')" \
    "${cold_rows:-0}" \
    "$(sql "SELECT string_agg(routing || ' ' || n, ', ' ORDER BY routing) FROM (SELECT routing, count(*) n FROM (SELECT routing FROM hot.claim_analysis UNION ALL SELECT routing FROM warm.claim_analysis) a GROUP BY 1) r")" >&2
}

started=$SECONDS
while kill -0 "$pid" 2>/dev/null; do
  sleep 3
  show_progress || true
  if [ -n "${STRATA_QUICKSTART_SECONDS:-}" ] && (( SECONDS - started >= STRATA_QUICKSTART_SECONDS )); then
    stop
  fi
done
wait "$pid" && status=0 || status=$?
[ -n "$gen_pid" ] && { kill "$gen_pid" 2>/dev/null || true; wait "$gen_pid" 2>/dev/null || true; }

log "summary"
show_progress || true
if [ "$status" -ne 0 ]; then
  tail -20 "$STRATA_HOME/quickstart.log" >&2
  die "strata exited with $status (log: $STRATA_HOME/quickstart.log)"
fi
"$STRATA" archive verify "$archive" >&2 || true
cat >&2 <<EOF
[strata] stopped cleanly. Look around:
  psql $STRATA_PG_URL -c 'SELECT routing, count(*) FROM hot.claim_analysis GROUP BY 1'
  psql $STRATA_PG_URL -c 'SELECT claim_id, status, service_date_from FROM hot.claims LIMIT 5'
  psql $STRATA_PG_URL -c 'SELECT tableoid::regclass, count(*) FROM warm.claims GROUP BY 1 ORDER BY 1'
  ls $archive && $STRATA archive verify $archive
  curl -s $STRATA_SCHEMA_REGISTRY_URL/subjects
  scripts/services.sh stop    # when you are done
EOF
