# Shared settings of the scripts: where things live and which ports they use.
# Every value can be overridden from the environment.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export STRATA_HOME="${STRATA_HOME:-$REPO_ROOT/.strata}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
PG_PORT="${STRATA_PG_PORT:-15432}"
KAFKA_PORT="${STRATA_KAFKA_PORT:-19092}"
REGISTRY_PORT="${STRATA_REGISTRY_PORT:-18081}"
S3_PORT="${STRATA_S3_PORT:-19000}"
MOTO_VENV="${STRATA_MOTO_VENV:-$HOME/.cache/strata/moto}"
export STRATA_PY_CLIENTS_VENV="${STRATA_PY_CLIENTS_VENV:-$HOME/.cache/strata/pyclients}"
PG_BIN="${STRATA_PG_BIN:-/usr/lib/postgresql/15/bin}"

log() { printf '[strata] %s\n' "$*" >&2; }
die() { printf '[strata] error: %s\n' "$*" >&2; exit 1; }

# Waits until `cmd` succeeds, for at most `seconds`.
wait_for() {
  local what="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
  log "$what is up"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Every build uses the same target selection: with feature resolver 2, building a subset
# (say only the binary) resolves other features and rebuilds RocksDB and librdkafka.
BUILD_FLAGS=(--workspace --all-targets)
