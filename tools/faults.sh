#!/usr/bin/env bash
# tools/faults.sh [ITERATIONS]: the fault-injection matrix's full form (issue 20), the
# scheduled run; CI runs the same tests in their short form as part of the workspace tests.
# - tests/tests/faults_origin.rs: an S3 origin behind a faulty HTTP proxy (errors, short
#   bodies, bodies cut mid-way, flipped ETags, late answers): no wrong byte served, the
#   daemon recovers. MUSICFS_FAULT_ROUNDS rounds (CI 3; here ITERATIONS / 4, at least 25).
# - tests/tests/faults_kill.rs: SIGKILL at random points of scan, publish, fetch and
#   eviction, then a restart: the last good tree served, no row lost, bytes right.
#   MUSICFS_FAULT_ITERATIONS kills per case (here ITERATIONS, default 100).
# - tests/tests/faults_state.rs: the state dir on a tiny tmpfs (disk full during publish and
#   during chunk writes), damaged pack files, catalog pages and tree snapshots.
# Each run prints its seeds; MUSICFS_FAULT_SEED replays one.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations="${1:-100}"
rounds=$(( iterations / 4 ))
[ "$rounds" -ge 25 ] || rounds=25
. tools/lib.sh
require_cargo
[ -e /dev/fuse ] && [ "$(id -u)" -eq 0 ] || {
  echo "tools/faults.sh mounts FUSE filesystems and a tmpfs: run it as root with /dev/fuse" >&2
  exit 2
}
cargo build --workspace --bins
MUSICFS_FAULT_ITERATIONS="$iterations" MUSICFS_FAULT_ROUNDS="$rounds" \
  cargo test -p musicfs-tests --features e2e \
  --test faults_origin --test faults_kill --test faults_state -- --test-threads 1 --nocapture
