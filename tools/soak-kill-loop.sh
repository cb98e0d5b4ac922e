#!/usr/bin/env bash
# Soak run of the crash-safety test: SIGKILL the daemon at random moments of its scan and
# publish N times (default 500), then check the mount serves and the catalog equals a clean
# scan. Needs root and /dev/fuse, like the end-to-end tests.
#   tools/soak-kill-loop.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins
MUSICFS_KILL_LOOP_ITERATIONS="${1:-500}" cargo test -p musicfs-tests --features e2e \
  --test live_crash a_daemon_killed -- --nocapture
