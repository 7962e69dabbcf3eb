#!/usr/bin/env bash
# Sets up everything and runs the whole test suite: installs dependencies, starts the
# local services, validates every topology file and runs `cargo test`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

scripts/install-deps.sh
eval "$(scripts/services.sh start)"
[ -n "${STRATA_S3_ENDPOINT:-}" ] || die "the S3 stand-in did not start (scripts/services.sh start)"

log "building"
cargo build "${BUILD_FLAGS[@]}"

log "validating topologies/*.yaml"
"$CARGO_TARGET_DIR/debug/strata" validate topologies/*.yaml

log "checking docker/compose.yaml (the compose client parses it; no engine needed)"
docker-compose -f docker/compose.yaml config -q

log "running the tests"
cargo test "${BUILD_FLAGS[@]}" "$@"

log "running the SQL Server wire tests (TDS stand-in; a package of its own)"
CARGO_TARGET_DIR="${STRATA_WIRE_TARGET_DIR:-$HOME/.cache/strata/wire-target}" \
  cargo test --locked --manifest-path tests/sqlserver_wire/Cargo.toml

log "fuzzing every parser of external bytes for ${STRATA_FUZZ_SECONDS:-20}s each (fuzz/)"
scripts/fuzz.sh "${STRATA_FUZZ_SECONDS:-20}"
