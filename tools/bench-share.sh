#!/bin/bash
# Start-up from a shared library vs a cold scan vs a warm restart, 100k local tracks.
# Usage: tools/bench-share.sh target/release /work/bench-lib-100k-tiny /tmp/share-bench
# (s3s-fs on PATH: `cargo install --locked s3s-fs --version 0.14.1 --features binary`).
set -e
B=$(realpath "${1:?usage: bench-share.sh BIN_DIR LIBRARY WORK}")
LIB=$(realpath "${2:?library}")
mkdir -p "${3:?work dir}" && cd "$3" && rm -rf tier-root stA stB stC mntB mntC && mkdir -p tier-root/tier mntB mntC
export AWS_ACCESS_KEY_ID=k AWS_SECRET_ACCESS_KEY=secret-key-0123456789
s3s-fs --host 127.0.0.1 --port 39911 --access-key k --secret-key secret-key-0123456789 tier-root > s3.log 2>&1 &
S3=$!
trap 'kill $S3; fusermount3 -u mntB 2>/dev/null; fusermount3 -u mntC 2>/dev/null; true' EXIT
echo 'the site key for the share bench, long enough' > tier.key
cat > cfg.toml <<EOT
shared_tier = "s3://tier/site?endpoint=http://127.0.0.1:39911&region=us-east-1&path_style=true"
shared_tier_key_file = "$PWD/tier.key"
probe_interval_secs = 0
[[origin]]
path = "$LIB"
EOT
until (exec 3<>/dev/tcp/127.0.0.1/39911) 2>/dev/null; do sleep 0.05; done
t0=$(date +%s.%N); $B/musicfs --config cfg.toml --state-dir stA scan > /dev/null 2>&1; t1=$(date +%s.%N)
echo "cold scan + publish (state A): $(echo "$t1 - $t0" | bc) s"
t0=$(date +%s.%N); $B/musicfs --config cfg.toml --state-dir stA share push; t1=$(date +%s.%N)
echo "share push: $(echo "$t1 - $t0" | bc) s"
ready() { # mountpoint, log; waits for the mount then returns the elapsed time
  local start=$1; shift
  until mountpoint -q "$1"; do sleep 0.002; done
  echo "$(echo "$(date +%s.%N) - $start" | bc)"
}
for i in 1 2 3; do
  rm -rf stB; t0=$(date +%s.%N)
  $B/musicfsd --config cfg.toml --state-dir stB --from-shared mntB 2> B.log & P=$!
  echo "from-shared mount ready (empty state, 100k): $(ready $t0 mntB) s"
  ls mntB | wc -l > /dev/null; fusermount3 -u mntB; wait $P || true
done
for i in 1 2 3; do
  t0=$(date +%s.%N)
  $B/musicfsd --config cfg.toml --state-dir stA mntC 2> C.log & P=$!
  echo "restart mount ready (state A): $(ready $t0 mntC) s"
  fusermount3 -u mntC; wait $P || true
done
du -sh stA/catalog stA/tree.snap tier-root/tier/site/s
