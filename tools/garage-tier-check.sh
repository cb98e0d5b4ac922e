#!/bin/bash
# The shared tier against Garage (not in CI: Garage takes ~8 min to build), by hand:
#   cargo install garage --locked --root /opt/garage   # once
#   tools/garage-tier-check.sh /opt/garage/bin/garage target/release /tmp/garage-check
# Garage on 127.0.0.1 holds both the origin bucket (`music`) and the tier (`tier`).
# Daemon one reads two tracks (they go to the tier); daemon two, with its own state dir,
# reads them with every window from the tier (its metrics: misses == tier hits); a third
# starts from the library `musicfs share push` stored there (`--from-shared`).
set -euo pipefail
G=$(realpath "${1:?usage: garage-tier-check.sh GARAGE_BIN BIN_DIR WORK}")
B=$(realpath "${2:?bin dir}")
W=${3:?work dir}
rm -rf "$W"; mkdir -p "$W"/{meta,data,lib/Artist/Album,m1,m2,m3}; W=$(realpath "$W")
cfg=$W/garage.toml
cat > "$cfg" <<EOT
metadata_dir = "$W/meta"
data_dir = "$W/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:39901"
rpc_public_addr = "127.0.0.1:39901"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:39900"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:39903"
EOT
"$G" -c "$cfg" server > "$W/garage.log" 2>&1 &
GP=$!
cleanup() {
  for m in m1 m2 m3; do fusermount3 -u "$W/$m" 2>/dev/null || true; done
  kill $GP 2>/dev/null || true
}
trap cleanup EXIT
until "$G" -c "$cfg" status > /dev/null 2>&1; do sleep 0.2; done
NID=$("$G" -c "$cfg" node id -q | cut -d@ -f1)
"$G" -c "$cfg" layout assign -z dc1 -c 1G "$NID" > /dev/null
"$G" -c "$cfg" layout apply --version 1 > /dev/null
"$G" -c "$cfg" key create tierkey > "$W/key.txt"
KID=$(awk '/Key ID/ {print $NF}' "$W/key.txt")
SEC=$(awk '/Secret key/ {print $NF}' "$W/key.txt")
for b in music tier; do
  "$G" -c "$cfg" bucket create $b > /dev/null
  "$G" -c "$cfg" bucket allow --read --write --owner $b --key tierkey > /dev/null
done
export AWS_ACCESS_KEY_ID=$KID AWS_SECRET_ACCESS_KEY=$SEC
s3() { curl -sf -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" --aws-sigv4 "aws:amz:garage:s3" --user "$KID:$SEC" "$@"; }
put() { s3 -T "$1" "http://127.0.0.1:39900/$2"; }
for t in one two; do
  ffmpeg -nostdin -v error -f lavfi -i "aevalsrc=random(0)*1.8-0.9|random(1)*1.8-0.9:s=44100:d=10" \
    -ac 2 -c:a flac -sample_fmt s16 -metadata title=$t -metadata artist=Artist -metadata album=Album \
    "$W/lib/Artist/Album/$t.flac"
  put "$W/lib/Artist/Album/$t.flac" "music/lib/Artist/Album/$t.flac"
done
echo 'the site key for the garage check, 16+ bytes' > "$W/tier.key"
conf() { # name metrics-port
  cat > "$W/$1.toml" <<EOT
shared_tier = "s3://tier/site?endpoint=http://127.0.0.1:39900&region=garage&path_style=true"
shared_tier_key_file = "$W/tier.key"
probe_interval_secs = 0
prefetch_tracks = 0
metrics_listen = "127.0.0.1:$2"
[[origin]]
path = "s3://music/lib?endpoint=http://127.0.0.1:39900&region=garage&path_style=true"
EOT
  echo "$W/$1.toml"
}
mountd() { # config state mnt [args]
  local c=$1 s=$2 m=$3; shift 3
  RUST_LOG="${RUST_LOG:-info}" "$B/musicfsd" --config "$c" --state-dir "$s" "$@" "$m" 2> "$m.log" &
  until mountpoint -q "$m"; do sleep 0.05; done
}
check_reads() { # mnt
  for t in one two; do
    f=$(find "$1" -name "*$t.flac" | head -1)
    cmp "$f" "$W/lib/Artist/Album/$t.flac"
  done
}
c1=$(conf one 39964); "$B/musicfs" --config "$c1" --state-dir "$W/s1" scan > /dev/null
mountd "$c1" "$W/s1" "$W/m1"; check_reads "$W/m1"
until s3 "http://127.0.0.1:39900/tier?list-type=2&prefix=site%2Fv%2F" | grep -q '<Key>'; do sleep 0.2; done
sleep 2   # the writer thread finishes the last window's records
fusermount3 -u "$W/m1"
"$B/musicfs" --config "$c1" --state-dir "$W/s1" share push
c2=$(conf two 39965); "$B/musicfs" --config "$c2" --state-dir "$W/s2" scan > /dev/null
mountd "$c2" "$W/s2" "$W/m2"; check_reads "$W/m2"
m=$(curl -sf http://127.0.0.1:39965/metrics)
miss=$(echo "$m" | awk '/^musicfs_cache_misses_total/ {s+=$NF} END {print s+0}')
hits=$(echo "$m" | awk '/^musicfs_cache_tier_hits_total/ {s+=$NF} END {print s+0}')
bad=$(echo "$m" | awk '/^musicfs_cache_tier_bad_total/ {s+=$NF} END {print s+0}')
echo "daemon two: windows fetched from the origin $miss, answered by the tier $hits, bad $bad"
if [ "$miss" != 0 ] || [ "$hits" -eq 0 ] || [ "$bad" != 0 ]; then
  echo "FAILED: daemon two did not read everything from the tier; its log: $W/m2.log" >&2
  exit 1
fi
fusermount3 -u "$W/m2"
c3=$(conf three 39966)
t0=$(date +%s.%N); mountd "$c3" "$W/s3" "$W/m3" --from-shared; t1=$(date +%s.%N)
grep -q "started from the shared library" "$W/m3.log"
check_reads "$W/m3"
echo "daemon three (--from-shared) mounted in $(echo "$t1 - $t0" | bc) s and read bit-exact"
fusermount3 -u "$W/m3"
echo "garage tier check: OK"
