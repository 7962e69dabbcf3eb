#!/usr/bin/env bash
# Runs Strata's SQL Server integration tests (tests/sqlserver_real.rs) against SQL
# Server 2022 in Docker, with CDC and snapshot isolation enabled on the claims database
# (docker/sqlserver/init.sh). Needs Docker with the compose plugin; the broker and the
# schema registry are the project's local services (scripts/services.sh).
#
#   docker/sqlserver/run-tests.sh          # start SQL Server, run the tests, leave it up
#   docker/sqlserver/run-tests.sh --down   # and stop it afterwards
set -euo pipefail
cd "$(dirname "$0")/../.."

export MSSQL_SA_PASSWORD="${MSSQL_SA_PASSWORD:-Strata-Passw0rd}"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose -f docker/compose.yaml)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose -f docker/compose.yaml)
else
  echo "run-tests.sh: Docker with compose is needed (https://docs.docker.com/compose/install/)" >&2
  exit 2
fi

echo "[sqlserver] starting SQL Server 2022 (127.0.0.1:11433)"
"${compose[@]}" up -d sqlserver
# Waits for the server, creates the claims database, enables snapshot isolation and CDC.
"${compose[@]}" run --rm sqlserver-init

eval "$(scripts/services.sh start)"
export STRATA_SQLSERVER_HOST=127.0.0.1 STRATA_SQLSERVER_PORT=11433
echo "[sqlserver] running the integration tests"
status=0
cargo test --locked --features sqlserver-it --test sqlserver_real -- --nocapture || status=$?

if [[ "${1:-}" == "--down" ]]; then
  "${compose[@]}" stop sqlserver
fi
exit "$status"
