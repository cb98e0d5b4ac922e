#!/usr/bin/env bash
# tools/soak.sh MINUTES [OUT] [--remote] [MORE musicfs-bench soak OPTIONS]: the soak
# (issue 20) for MINUTES minutes: 64 readers streaming and seeking through the mount with
# every byte checked against the versions the origin held, a writer adding, re-tagging,
# deleting and renaming origin files, refreshes; the daemon's RSS, fds, threads and state
# dir sampled. Fails on a wrong read, an unexpected read error, or growth without bound.
# --remote: the origin is a bucket served by s3s-fs on 127.0.0.1, read through a 64 MiB
# chunk cache the library cycles (its size sampled; a run without evictions fails); needs
# s3s-fs (`cargo install --locked s3s-fs --version 0.14.1 --features binary`).
# CI runs 1 minute; a 30-minute run's numbers go in docs/BENCHMARKS.md. Uses
# target/release when built, else target/debug.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-1}"
out="${2:-/tmp/musicfs-soak}"
shift $(($# < 2 ? $# : 2))
bins=target/release
if [ ! -x "$bins/musicfs-bench" ] || [ ! -x "$bins/musicfsd" ]; then
  bins=target/debug
  cargo build --bins -p musicfs-tools -p musicfs-bench
fi
exec "$bins/musicfs-bench" soak --minutes "$minutes" --out "$out" --bin-dir "$bins" "$@"
