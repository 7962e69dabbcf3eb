#!/usr/bin/env bash
# Fuzzes every parser of external bytes (fuzz/: pgoutput messages, Avro event bodies,
# topology YAML, SQL Server offsets, PostgreSQL and SQL Server row values) for a bounded
# time each, with cargo-fuzz on the nightly toolchain; first replays every input that
# once crashed (fuzz/regressions/).
#
#   scripts/fuzz.sh            # 30 s per target
#   scripts/fuzz.sh 600        # a nightly run
#
# A crash stops the script with libFuzzer's report and the input under
# fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ with the fix.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
seconds="${1:-30}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export CARGO_TARGET_DIR="${STRATA_FUZZ_TARGET_DIR:-$HOME/.cache/strata/fuzz-target}"
cd "$REPO_ROOT/fuzz"
cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
  if compgen -G "regressions/$target/*" >/dev/null; then
    log "fuzz $target: replaying regressions/$target"
    cargo +nightly fuzz run -O "$target" regressions/"$target"/* -- -runs=0
  fi
  work="$(mktemp -d)"
  mkdir "$work/corpus"
  log "fuzz $target for ${seconds}s"
  status=0
  cargo +nightly fuzz run -O "$target" "$work/corpus" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$work/log" 2>&1 || status=$?
  grep -E '^(Done [0-9]+ runs|stat::peak_rss_mb)' "$work/log" || true
  if [ "$status" -ne 0 ]; then
    tail -40 "$work/log"
    die "fuzz target $target crashed (input under fuzz/artifacts/$target/)"
  fi
  rm -rf "$work"
done
log "fuzzing found no crash"
