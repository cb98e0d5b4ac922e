#!/usr/bin/env bash
# tools/soak.sh MINUTES [OUT]: the soak (issue 20) for MINUTES minutes: 64 readers
# streaming and seeking through the mount with every byte checked against the versions the
# origin held, a writer adding, re-tagging, deleting and renaming origin files, refreshes;
# the daemon's RSS, fds, threads and state dir sampled. Fails on a wrong read, an
# unexpected read error, or growth without bound. CI runs 1 minute; a 30-minute run's
# numbers go in docs/BENCHMARKS.md. Uses target/release when built, else target/debug.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-1}"
out="${2:-/tmp/musicfs-soak}"
bins=target/release
if [ ! -x "$bins/musicfs-bench" ] || [ ! -x "$bins/musicfsd" ]; then
  bins=target/debug
  cargo build --bins -p musicfs-tools -p musicfs-bench
fi
exec "$bins/musicfs-bench" soak --minutes "$minutes" --out "$out" --bin-dir "$bins"
