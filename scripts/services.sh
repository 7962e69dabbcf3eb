#!/usr/bin/env bash
# Starts, stops and reports the local services Strata's tests and quickstart use, all on
# loopback: a private PostgreSQL 15 cluster (wal_level=logical), the tansu Kafka broker
# (durable sqlite storage), the schema registry (`strata registry`) and, when moto is
# installed, an S3-compatible object store for the archive's S3 test.
#
#   scripts/services.sh start    # idempotent; prints the addresses as `export` lines
#   scripts/services.sh stop     # idempotent
#   scripts/services.sh status
#   scripts/services.sh env      # the `export` lines only
#   scripts/services.sh restart-broker | restart-postgres | crash-postgres
#   scripts/services.sh stop-broker | start-broker | stop-postgres | start-postgres
#                                # one service at a time, for the fault tests
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PG_DIR="$STRATA_HOME/postgres"
TANSU_DIR="$STRATA_HOME/tansu"
REGISTRY_DIR="$STRATA_HOME/registry"
RUN_DIR="$STRATA_HOME/run"
TLS_DIR="$STRATA_HOME/tls"

print_env() {
  cat <<ENV
export STRATA_HOME=$STRATA_HOME
export STRATA_PG_URL=postgres://postgres@127.0.0.1:$PG_PORT/claims
export STRATA_PG_ADMIN_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
export STRATA_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export STRATA_SCHEMA_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT
export STRATA_TLS_DIR=$TLS_DIR
ENV
  if port_open "$S3_PORT"; then echo "export STRATA_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"; fi
}

# PostgreSQL refuses to run as root; as root the cluster belongs to the `postgres` user.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A test CA and a server certificate for `localhost` and 127.0.0.1, signed by it, plus an
# unrelated CA (tests check that a server it did not sign is refused).
make_tls() {
  [ -f "$TLS_DIR/server.key" ] && return
  command -v openssl >/dev/null || die "openssl is missing; run scripts/install-deps.sh"
  mkdir -p "$TLS_DIR"
  local ca
  for ca in ca other-ca; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Strata test $ca" \
      -keyout "$TLS_DIR/$ca.key" -out "$TLS_DIR/$ca.pem" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  done
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    > "$TLS_DIR/server.ext"
  openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days 3650 -extfile "$TLS_DIR/server.ext" -out "$TLS_DIR/server.crt" 2>/dev/null
  log "test certificates in $TLS_DIR"
}

# TLS for PostgreSQL (clients choose: `host` lines of pg_hba.conf take both).
enable_pg_tls() {
  make_tls
  cp "$TLS_DIR/server.crt" "$TLS_DIR/server.key" "$PG_DIR/data/"
  chmod 600 "$PG_DIR/data/server.key"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$PG_DIR/data/server.crt" "$PG_DIR/data/server.key"
  grep -q "^ssl = on" "$PG_DIR/data/postgresql.conf" || echo "ssl = on" >> "$PG_DIR/data/postgresql.conf"
}

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

start_postgres() {
  [ -x "$PG_BIN/pg_ctl" ] || die "PostgreSQL 15 is not installed at $PG_BIN; run scripts/install-deps.sh"
  if pg_ready; then log "postgres already running on 127.0.0.1:$PG_PORT"; return; fi
  mkdir -p "$PG_DIR"
  [ "$(id -u)" -ne 0 ] || chown postgres:postgres "$PG_DIR"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    log "creating a private PostgreSQL cluster in $PG_DIR/data"
    as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$PG_DIR/data/postgresql.conf" <<CONF
# Strata's settings
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
wal_level = logical
max_replication_slots = 32
max_wal_senders = 32
max_connections = 200
fsync = on
shared_buffers = 256MB
max_wal_size = 2GB
CONF
    echo "host replication all 127.0.0.1/32 trust" >> "$PG_DIR/data/pg_hba.conf"
  fi
  enable_pg_tls
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start; see $PG_DIR/postgres.log"
  wait_for "postgres (127.0.0.1:$PG_PORT)" 30 pg_ready || die "PostgreSQL is not answering; see $PG_DIR/postgres.log"
  "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='claims'" | grep -q 1 \
    || "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE claims"
}

stop_postgres() {
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    log "postgres stopped"
  fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_broker() {
  command -v tansu >/dev/null || die "tansu is not installed; run scripts/install-deps.sh"
  if port_open "$KAFKA_PORT"; then log "broker already running on 127.0.0.1:$KAFKA_PORT"; return; fi
  mkdir -p "$TANSU_DIR" "$RUN_DIR"
  # tansu resolves a sqlite path against its working directory.
  # Its periodic maintenance (compaction, retention, vacuum) is one SQL pass over every
  # record that holds the only database connection: with a few hundred thousand records
  # the broker stops answering for minutes (seen with tansu 0.6.0). The local broker
  # turns it off; compacted topics then keep every record, which restores still handle.
  (cd "$TANSU_DIR" && exec nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --storage-engine "sqlite://tansu.db?maintenance_interval=100000h" \
    >>"$TANSU_DIR/tansu.log" 2>&1) &
  echo $! > "$RUN_DIR/tansu.pid"
  wait_for "broker (127.0.0.1:$KAFKA_PORT)" 30 port_open "$KAFKA_PORT" || die "tansu did not start; see $TANSU_DIR/tansu.log"
}

# Waits (15 s at most) until nothing listens on port $1 any more: a process can still
# hold its port a moment after the one in the pid file is gone.
wait_port_closed() {
  local deadline=$((SECONDS + 15))
  while port_open "$1" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if port_open "$1"; then die "something still listens on 127.0.0.1:$1; stop it, then try again"; fi
}

stop_pidfile() {
  local name="$1" pidfile="$RUN_DIR/$1.pid"
  if pid_alive "$pidfile"; then
    local pid; pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "$name stopped"
  fi
  rm -f "$pidfile"
}

strata_bin() {
  if [ -n "${STRATA_BIN:-}" ]; then echo "$STRATA_BIN"; return; fi
  (cd "$REPO_ROOT" && cargo build -q "${BUILD_FLAGS[@]}") || die "cannot build strata"
  echo "$CARGO_TARGET_DIR/debug/strata"
}

registry_up() { curl -fs "http://127.0.0.1:$REGISTRY_PORT/subjects" >/dev/null; }

start_registry() {
  if registry_up; then log "schema registry already running on 127.0.0.1:$REGISTRY_PORT"; return; fi
  local bin; bin="$(strata_bin)"
  mkdir -p "$REGISTRY_DIR" "$RUN_DIR"
  nohup "$bin" registry --listen "127.0.0.1:$REGISTRY_PORT" --data-dir "$REGISTRY_DIR" \
    >>"$REGISTRY_DIR/registry.out" 2>&1 &
  echo $! > "$RUN_DIR/registry.pid"
  wait_for "schema registry (127.0.0.1:$REGISTRY_PORT)" 30 registry_up || die "the registry did not start; see $REGISTRY_DIR/registry.out"
}

start_s3() {
  if port_open "$S3_PORT"; then log "S3 stand-in already running on 127.0.0.1:$S3_PORT"; return; fi
  [ -x "$MOTO_VENV/bin/moto_server" ] || { log "moto is not installed: no S3 stand-in (scripts/install-deps.sh installs it)"; return; }
  mkdir -p "$RUN_DIR"
  nohup "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >>"$RUN_DIR/moto.log" 2>&1 &
  echo $! > "$RUN_DIR/moto.pid"
  wait_for "S3 stand-in (127.0.0.1:$S3_PORT)" 30 port_open "$S3_PORT" || die "moto_server did not start; see $RUN_DIR/moto.log"
}

case "${1:-start}" in
  start)
    start_postgres
    start_broker
    start_registry
    start_s3
    print_env
    ;;
  stop)
    stop_pidfile moto
    stop_pidfile registry
    stop_pidfile tansu
    stop_postgres
    ;;
  restart-broker)
    stop_pidfile tansu
    wait_port_closed "$KAFKA_PORT"
    start_broker
    ;;
  reset-broker)
    # tansu runs one maintenance pass over every record when it starts; after many
    # quickstart runs that pass can keep it from answering for minutes. This starts it
    # empty (every topic is gone; registry, database and state directories are kept).
    stop_pidfile tansu
    wait_port_closed "$KAFKA_PORT"
    rm -f "$TANSU_DIR"/tansu.db*
    start_broker
    ;;
  restart-postgres)
    stop_postgres
    start_postgres
    ;;
  crash-postgres)
    # A crash, not a stop: no checkpoint, the next start replays the WAL.
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    log "postgres stopped -m immediate"
    start_postgres
    ;;
  stop-broker) stop_pidfile tansu ;;
  start-broker) start_broker ;;
  stop-postgres) stop_postgres ;;
  start-postgres) start_postgres ;;
  status)
    pg_ready && echo "postgres: up (127.0.0.1:$PG_PORT)" || echo "postgres: down"
    port_open "$KAFKA_PORT" && echo "broker: up (127.0.0.1:$KAFKA_PORT)" || echo "broker: down"
    registry_up && echo "registry: up (127.0.0.1:$REGISTRY_PORT)" || echo "registry: down"
    port_open "$S3_PORT" && echo "s3: up (127.0.0.1:$S3_PORT)" || echo "s3: down"
    ;;
  env) print_env ;;
  *) die "usage: $0 start|stop|status|env|restart-broker|reset-broker|restart-postgres|crash-postgres|stop-broker|start-broker|stop-postgres|start-postgres" ;;
esac
