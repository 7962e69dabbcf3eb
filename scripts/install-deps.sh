#!/usr/bin/env bash
# Installs what building and testing Strata needs on Debian 12: system packages and the
# tansu broker. Safe to run again: it skips what is already there.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# libcurl4-openssl-dev: librdkafka 2.12's sources include curl.h even when built without curl.
packages=(build-essential pkg-config cmake clang libclang-dev libssl-dev libsasl2-dev
  zlib1g-dev libzstd-dev libcurl4-openssl-dev curl ca-certificates openssl postgresql-15 postgresql-client-15 procps
  python3 python3-venv docker-compose)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The cluster Strata uses is private (scripts/services.sh); Debian's default one is not needed.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 *main .*online'; then
  log "note: Debian's own PostgreSQL cluster is running on its default port; Strata uses its own on $PG_PORT"
fi

command -v cargo >/dev/null || die "cargo is not installed; install Rust with rustup first"

TANSU_VERSION="${STRATA_TANSU_VERSION:-0.6.0}"
if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "building the tansu broker $TANSU_VERSION (takes about 10 minutes on 2 cores, once)"
  CARGO_TARGET_DIR="${STRATA_TOOLS_TARGET_DIR:-$HOME/.cache/strata/tansu-target}" \
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi
# An S3-compatible object store for the cold archive's S3 test: moto's server (PyPI),
# an S3 API over HTTP, in its own virtualenv. Production archives use a real S3 or MinIO.
MOTO_VERSION="${STRATA_MOTO_VERSION:-5.1.22}"
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  log "installing moto $MOTO_VERSION into $MOTO_VENV (S3 stand-in for the archive tests)"
  python3 -m venv "$MOTO_VENV" || die "python3 -m venv failed; install python3-venv"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
    || die "cannot install moto from PyPI"
fi
# Confluent's Python client, a client no one here wrote, for the registry and topic
# compatibility test (tests/confluent_client.rs).
CONFLUENT_KAFKA_VERSION="${STRATA_CONFLUENT_KAFKA_VERSION:-2.16.2}"
if ! "$STRATA_PY_CLIENTS_VENV/bin/python" -c "import confluent_kafka, fastavro" 2>/dev/null; then
  log "installing confluent-kafka $CONFLUENT_KAFKA_VERSION into $STRATA_PY_CLIENTS_VENV (client compatibility test)"
  python3 -m venv "$STRATA_PY_CLIENTS_VENV" || die "python3 -m venv failed; install python3-venv"
  "$STRATA_PY_CLIENTS_VENV/bin/pip" install -q --disable-pip-version-check \
    "confluent-kafka[avro,schemaregistry]==$CONFLUENT_KAFKA_VERSION" \
    || die "cannot install confluent-kafka from PyPI"
fi
log "dependencies are installed"
