#!/usr/bin/env bash
# Waits for SQL Server, creates the claims database and applies the CDC-enabled schema.
set -euo pipefail
sql() { /opt/mssql-tools/bin/sqlcmd -S sqlserver -U sa -P "$MSSQL_SA_PASSWORD" -b "$@"; }
for _ in $(seq 1 60); do sql -Q "SELECT 1" >/dev/null 2>&1 && break; sleep 2; done
sql -Q "IF DB_ID(N'claims') IS NULL CREATE DATABASE claims"
sql -d claims -i /sql/001_claims.sql
echo "claims database ready with CDC enabled"
