#!/usr/bin/env bash
# Album folders' extras: cost of listing albums that show cover art, renditions and
# sidecars, against the same listing of the origin. Usage: bench-albums.sh BIN_DIR WORK
set -euo pipefail
BIN=$1; W=$2
rm -rf "$W"; mkdir -p "$W"
"$BIN/musicfs-bench" gen --tracks 2000 --tiny --big-mib 1 --formats flac "$W/lib" >/dev/null
# A distinct 1000x1000 cover and a booklet in every origin folder holding tracks.
n=0
while IFS= read -r d; do
  n=$((n+1))
  ffmpeg -nostdin -v error -y -f lavfi -i "color=c=0x$(printf '%06x' $((n*7919 % 16777215))):s=1000x1000" -frames:v 1 -update 1 "$W/tmp.jpg" && mv "$W/tmp.jpg" "$d/cover.jpg"
  head -c 200000 /dev/urandom > "$d/booklet.pdf"
done < <(find "$W/lib" -name '*.flac' -printf '%h\n' | sort -u)
echo "origin folders with tracks: $n"
ns() { date +%s%N; }
ms() { echo "scale=1; ($2 - $1) / 1000000" | bc; }
t0=$(ns); "$BIN/musicfs" --state-dir "$W/state" scan --origin "$W/lib" >/dev/null 2>&1; t1=$(ns)
echo "scan with extras: $(ms $t0 $t1) ms"
mkdir -p "$W/mnt"
"$BIN/musicfsd" --state-dir "$W/state" --origin "$W/lib" "$W/mnt" 2>"$W/daemon.log" &
pid=$!
for i in $(seq 1 500); do mountpoint -q "$W/mnt" && break; sleep 0.01; done
albums=$(find "$W/mnt" -mindepth 2 -maxdepth 2 -type d | wc -l)
echo "album folders in the mount: $albums"
lsall() { find "$1" -mindepth 2 -maxdepth 3 -type d -print0 | xargs -0 ls -l >/dev/null; }
t0=$(ns); lsall "$W/lib"; t1=$(ns); lsall "$W/lib"; t2=$(ns)
echo "native ls -l of every folder: cold-ish $(ms $t0 $t1) ms, warm $(ms $t1 $t2) ms"
t0=$(ns); lsall "$W/mnt"; t1=$(ns); lsall "$W/mnt"; t2=$(ns)
echo "mount ls -l of every folder: first (renditions made) $(ms $t0 $t1) ms, again $(ms $t1 $t2) ms"
kill -TERM $pid; wait $pid || true
"$BIN/musicfsd" --state-dir "$W/state" --origin "$W/lib" "$W/mnt" 2>>"$W/daemon.log" &
pid=$!
for i in $(seq 1 500); do mountpoint -q "$W/mnt" && break; sleep 0.01; done
t0=$(ns); lsall "$W/mnt"; t1=$(ns)
echo "after a remount (renditions on disk): $(ms $t0 $t1) ms"
t0=$(ns); cat "$W"/mnt/*/*/cover-thumb.jpg >/dev/null; t1=$(ns)
echo "read every cover-thumb.jpg: $(ms $t0 $t1) ms"
kill -TERM $pid; wait $pid || true
du -sh "$W/state/art"
