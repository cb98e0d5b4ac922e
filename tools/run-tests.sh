#!/usr/bin/env bash
# Runs every check and test of MusicFS on a fresh Debian 12 machine, installing what is
# missing first (apt: fuse3, ffmpeg, mpd, mpc; the Rust components from rust-toolchain.toml).
# End-to-end tests mount real FUSE filesystems: they need /dev/fuse and root (CI runs as root).
set -euo pipefail
cd "$(dirname "$0")/.."

. tools/lib.sh
apt_install_missing ffmpeg=ffmpeg fusermount3=fuse3 mpd=mpd mpc=mpc setpriv=util-linux sshd=openssh-server smbd=samba mid3v2=python3-mutagen systemd-analyze=systemd beet=beets
require_cargo
# The S3 server the remote-origin tests run (tests/src/servers/s3.rs).
cargo_install_missing s3s-fs s3s-fs --version 0.14.1 --features binary

export CARGO_TERM_COLOR=never
# A one-shot build gains nothing from incremental state (it was a quarter of the target dir).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo build --workspace --bins
# The example plugins are libraries the plugin tests load.
cargo build -p musicfs-plugin-titlecase -p musicfs-plugin-tar -p musicfs-plugin-wavpack -p musicfs-plugin-musicbrainz

features=()
if [ -e /dev/fuse ] && [ "$(id -u)" -eq 0 ]; then
  features=(--features musicfs-tests/e2e,musicfs-fusedev/e2e,musicfs-bench/e2e)
  # The unprivileged-mount test needs a world-usable /dev/fuse (most distros ship 0666;
  # Debian here has 0600): let it widen the mode for its run and restore it.
  export MUSICFS_E2E_GRANT_DEV_FUSE=1
else
  echo "not root or no /dev/fuse: end-to-end mount tests are skipped" >&2
fi
# Every test step runs under a deadline: a test that hangs fails the run within it (and
# libtest has named it: "has been running for over 60 seconds") instead of eating the
# whole CI budget. The test binaries are built first, outside the deadline.
bounded() {
  local secs=$1; shift
  local rc=0
  timeout --kill-after=30 "$secs" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "run-tests.sh: '$*' did not finish within ${secs}s" >&2
  fi
  return "$rc"
}
cargo test --workspace "${features[@]}" --no-run
bounded 2400 cargo test --workspace "${features[@]}" -- --test-threads 2

# Every suite that mounts, again under each other transport and read mode this kernel
# allows (the run above used the defaults: /dev/fuse queues, passthrough as root): dev +
# plain reads, and FUSE-over-io_uring with and without passthrough when the kernel has the
# parameter (the daemon sets /sys/module/fuse/parameters/enable_uring when asked; the old
# value is restored here afterwards). MUSICFS_E2E_URING=0 skips the io_uring modes.
if [ ${#features[@]} -gt 0 ]; then
  param=/sys/module/fuse/parameters/enable_uring
  modes=("--passthrough off")
  if [ "${MUSICFS_E2E_URING:-1}" = 1 ] && [ -w "$param" ]; then
    saved=$(cat "$param")
    trap 'echo "$saved" > "$param"' EXIT
    # Set here too: a daemon run as an unprivileged user cannot set it itself.
    echo Y > "$param"
    modes+=("--transport uring --enable-uring-param" "--transport uring --enable-uring-param --passthrough off")
  else
    echo "io_uring modes skipped: MUSICFS_E2E_URING=${MUSICFS_E2E_URING:-1} or no writable $param" >&2
  fi
  for mode in "${modes[@]}"; do
    echo "== mount suites with: musicfsd $mode" >&2
    MUSICFS_E2E_DAEMON_ARGS="$mode" bounded 900 cargo test -p musicfs-tests --features e2e \
      --test mount --test mount_player --test live --test mount_lifecycle --test live_crash \
      --test origins_lost --test modes --test albums --test overlay \
      -- --test-threads 2
  done
fi

# The same mount suites as an unprivileged user (fusermount3, no passthrough); the few
# tests that need root are named with their reason in the script and in README.md.
if [ ${#features[@]} -gt 0 ]; then
  tools/unprivileged-suite.sh
fi

# The soak's short form (issue 20): one minute of 64 checked readers and a changing
# origin against the debug daemon, in both forms: a local folder, and a bucket on s3s-fs
# read through a 64 MiB chunk cache the library keeps evicting (tools/soak.sh MINUTES
# runs the long one).
if [ ${#features[@]} -gt 0 ]; then
  bins="${CARGO_TARGET_DIR:-target}/debug"
  soak_out=$(mktemp -d /tmp/musicfs-soak.XXXXXX)
  bounded 600 "$bins/musicfs-bench" soak --minutes 1 --out "$soak_out/local" --bin-dir "$bins"
  bounded 600 "$bins/musicfs-bench" soak --minutes 1 --remote --out "$soak_out/remote" \
    --bin-dir "$bins"
  rm -rf "$soak_out"
fi
