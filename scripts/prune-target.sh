#!/usr/bin/env bash
# Keeps the shared build cache from filling the disk: a change of flags or features links
# every test and bench executable again under a new hash, and the old ones stay. Deletes
# all but the newest executable of each name in deps/; libraries are never touched (they
# are what makes a cached build fast).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
for deps in "$CARGO_TARGET_DIR"/debug/deps "$CARGO_TARGET_DIR"/release/deps; do
  [ -d "$deps" ] || continue
  find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' -printf '%T@ %f\n' | sort -rn |
    awk '{ name = $2; sub(/-[0-9a-f]+$/, "", name); if (seen[name]++) print $2 }' |
    while read -r stale; do rm -f "$deps/$stale"; done
done
