#!/usr/bin/env bash
# tools/fuzz.sh [CASES]: runs every fuzz target (tests named fuzz_*) with CASES cases each
# (default 100000), on the stable toolchain (proptest; see fuzz/src/lib.rs), built with the
# `fuzz` profile: optimised, with overflow checks and debug assertions (Cargo.toml).
# Targets: the tag readers of every container, the overlay's tag synthesiser, the snapshot
# loader, the configuration and template parsers, the WavPack format plugin (APEv2), and
# the FUSE dispatcher's request decoding, the chunk index's records and manifests, and
# origin listings (any names a hostile S3/SFTP/SMB server or origin plugin lists). CI runs the same targets with proptest's default
# 256 cases in the workspace test pass. A failure prints the smallest input found; it then
# becomes a regression test in the crate whose parser failed.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-100000}"
export PROPTEST_CASES="$cases"
# Shrinking a failure from a million cases can take long; a few thousand steps suffice.
export PROPTEST_MAX_SHRINK_ITERS="${PROPTEST_MAX_SHRINK_ITERS:-4096}"
started=$(date +%s)
run() {
  local t0
  t0=$(date +%s)
  cargo test --profile fuzz "$@" -- --nocapture --test-threads 2 fuzz_
  echo "fuzz: $* done in $(( $(date +%s) - t0 )) s with $cases cases per target"
}
run -p musicfs-fuzz --test targets
run -p musicfs-fusedev --lib
run -p musicfs-storage --lib
run -p musicfs-index --lib
echo "fuzz: all targets clean, $cases cases each, $(( $(date +%s) - started )) s"
