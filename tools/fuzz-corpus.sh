#!/usr/bin/env bash
# Remakes the fuzz seed corpus (fuzz/corpus/): one tiny tagged file per container the
# tag readers and the overlay know, plus WavPack (the example format plugin's). The files
# are committed (a few KB); this is how they were made.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/fuzz/corpus"
mkdir -p "$out"
tags=(-metadata "title=Tïtle" -metadata "artist=Ärtist" -metadata album=Album
  -metadata album_artist=AA -metadata track=3/9 -metadata disc=1/2 -metadata date=1999
  -metadata genre=Jazz)
make() {
  ffmpeg -nostdin -v error -y -f lavfi -i "sine=frequency=440:sample_rate=8000:duration=0.05" \
    -ac 1 "$@"
}
make -c:a flac "${tags[@]}" "$out/seed.flac"
make -c:a libmp3lame -id3v2_version 3 -write_id3v1 1 "${tags[@]}" "$out/seed.mp3"
make -c:a libmp3lame -id3v2_version 4 -metadata title=T4 -metadata artist=A4 "$out/seed24.mp3"
make -c:a aac "${tags[@]}" "$out/seed.m4a"
make -c:a libvorbis "${tags[@]}" "$out/seed.ogg"
make -c:a libopus "${tags[@]}" "$out/seed.opus"
make -c:a pcm_u8 "${tags[@]}" "$out/seed.wav"
make -c:a wavpack "${tags[@]}" "$out/seed.wv"
ls -l "$out"
