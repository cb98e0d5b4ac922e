#!/usr/bin/env bash
# Builds MusicFS and mounts a music library organised by tags, in the foreground.
#   tools/run-demo.sh [MUSIC_DIR] [MOUNTPOINT]
# With no MUSIC_DIR, a small demo library is generated with ffmpeg. The mountpoint defaults
# to /tmp/musicfs. Stop with Ctrl-C, or `fusermount3 -u MOUNTPOINT` from another shell.
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/lib.sh
apt_install_missing ffmpeg=ffmpeg fusermount3=fuse3
require_cargo

cargo build --release --bins

library=${1:-}
mnt=${2:-/tmp/musicfs}
state=${MUSICFS_STATE_DIR:-/tmp/musicfs-demo-state}
if [ -z "$library" ]; then
  library=/tmp/musicfs-demo-library
  if [ ! -d "$library" ]; then
    echo "generating a demo library in $library" >&2
    mkdir -p "$library.partial"
    n=0
    a=0
    for artist in "Miles Davis" "Nina Simone" "Björk" "坂本龍一"; do
      for album in 1 2; do
        a=$((a + 1))
        case $((a % 4)) in 0) ext=flac ;; 1) ext=mp3 ;; 2) ext=ogg ;; *) ext=m4a ;; esac
        for t in 1 2 3 4; do
          n=$((n + 1))
          ffmpeg -nostdin -v error -f lavfi -i "sine=frequency=$((200 + n * 20)):duration=2" \
            -metadata artist="$artist" -metadata album="Album $album" \
            -metadata title="Song $t" -metadata track="$t/4" -metadata date="$((1960 + a))" \
            -metadata genre="Demo" "$library.partial/track$n.$ext"
        done
      done
    done
    mv "$library.partial" "$library"
  fi
fi

mkdir -p "$mnt"
echo "mounting $library at $mnt (state in $state); stop with Ctrl-C or: fusermount3 -u $mnt" >&2
exec ./target/release/musicfsd --origin "$library" --state-dir "$state" "$mnt"
