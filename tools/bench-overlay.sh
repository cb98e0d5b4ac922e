#!/usr/bin/env bash
# The metadata overlay's costs: reading an edited file (a rendition served by the daemon)
# against an unedited one (passthrough) and the origin itself, cold and warm; and the time
# `musicfs tag set` takes to be served on a large library (a full republish) against a
# refresh that finds nothing. Usage: bench-overlay.sh BIN_DIR WORK [LIBRARY]
# (LIBRARY: a generated library, e.g. `musicfs-bench gen --tracks 100000 --tiny DIR`.)
set -euo pipefail
BIN=$1; W=$2; LIB=${3:-}
rm -rf "$W"; mkdir -p "$W/origin" "$W/mnt"
for n in 1 2; do
  ffmpeg -nostdin -v error -y -f lavfi -i "anoisesrc=d=120:c=white:seed=$n:a=0.5" -ac 2 \
    -c:a flac -metadata title="Track $n" -metadata artist=Bench -metadata album=Overlay \
    -metadata track=$n "$W/origin/$n.flac"
done
"$BIN/musicfsd" --state-dir "$W/state" --origin "$W/origin" "$W/mnt" 2>"$W/daemon.log" &
pid=$!
trap 'fusermount3 -u "$W/mnt" 2>/dev/null || umount -l "$W/mnt"; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do mountpoint -q "$W/mnt" && break; sleep 0.1; done
"$BIN/musicfs" --state-dir "$W/state" refresh >/dev/null
plain=$(find "$W/mnt" -name '*Track 1.flac')
"$BIN/musicfs" --state-dir "$W/state" tag set "$(find "$W/mnt" -name '*Track 2.flac')" \
  title="Edited Track 2" genre=Bench >/dev/null
edited=$(find "$W/mnt" -name '*Edited Track 2.flac')
ls -l "$W/origin" "$plain" "$edited"
drop='sync; echo 3 > /proc/sys/vm/drop_caches'
hyperfine -N --warmup 1 --runs 15 --prepare "sh -c '$drop'" \
  -n origin "cat $W/origin/2.flac" -n unedited "cat '$plain'" -n edited "cat '$edited'" \
  --export-markdown "$W/cold.md" 2>&1 | grep -v '^ *$' || true
hyperfine -N --warmup 2 --runs 30 \
  -n origin "cat $W/origin/2.flac" -n unedited "cat '$plain'" -n edited "cat '$edited'" \
  --export-markdown "$W/warm.md" 2>&1 | grep -v '^ *$' || true
fusermount3 -u "$W/mnt"; wait $pid || true
trap - EXIT

if [ -n "$LIB" ]; then
  "$BIN/musicfs" --state-dir "$W/big" scan --origin "$LIB" >/dev/null 2>&1
  "$BIN/musicfsd" --state-dir "$W/big" --origin "$LIB" "$W/mnt" 2>"$W/big.log" &
  pid=$!
  trap 'fusermount3 -u "$W/mnt" 2>/dev/null || umount -l "$W/mnt"; wait $pid 2>/dev/null || true' EXIT
  for _ in $(seq 300); do mountpoint -q "$W/mnt" && break; sleep 0.1; done
  "$BIN/musicfs" --state-dir "$W/big" refresh >/dev/null
  "$BIN/musicfs" --state-dir "$W/big" status | sed -n 1,6p
  one=$(find "$LIB" -name '*.flac' -print -quit)
  hyperfine -N --runs 5 -n "refresh, nothing changed" \
    "$BIN/musicfs --state-dir $W/big refresh" 2>&1 | grep -v '^ *$' || true
  # Each run a new title: every one is a real edit, published and served.
  hyperfine -N --runs 1 --parameter-scan n 1 5 -n "tag set {n}" \
    "$BIN/musicfs --state-dir $W/big tag set '$one' title=bench-{n}" 2>&1 | grep -v '^ *$' || true
fi
