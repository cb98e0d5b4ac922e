#!/usr/bin/env bash
# The mount suites once more as an unprivileged user: the daemon mounts through the setuid
# `fusermount3` and serves without passthrough (which needs CAP_SYS_ADMIN), the tests read
# as that user. Called by tools/run-tests.sh as root; creates the user (MUSICFS_CI_USER,
# default musicfs-ci) when missing and lets it open /dev/fuse for the run (the mode is put
# back afterwards).
#
# The few tests that need root for what they check are listed below with the reason; each
# is printed when skipped, must exist in its suite and must be named in README.md's list of
# environment-dependent tests, or this script fails. Every other test runs; a failure or an
# `ignored` test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

user=${MUSICFS_CI_USER:-musicfs-ci}
suites=(mount mount_player live mount_lifecycle live_crash origins_lost modes albums overlay)
# suite|test|why it cannot run unprivileged
skips=(
  "mount|every_write_syscall_fails_with_erofs_even_on_a_writable_mount_and_the_origin_is_untouched|remounts the FUSE mount read-write (mount(2) MS_REMOUNT needs CAP_SYS_ADMIN)"
  "mount_lifecycle|unprivileged_user_mounts_and_reads|switches to nobody with setpriv (needs root); this whole run is its unprivileged counterpart"
  "mount_lifecycle|origin_unreadable_by_the_daemon_user_exits_2_naming_it|chowns dirs to nobody and starts the daemon as nobody (needs root)"
  "live_crash|an_inotify_queue_overflow_ends_with_the_clean_scan_tree_and_new_dirs_watched|lowers /proc/sys/fs/inotify/max_queued_events (needs root)"
  "modes|another_user_reads_a_world_readable_track_but_gets_eacces_on_an_owner_only_one|chowns origin files to another user and reads as nobody through allow_other (needs root)"
  "modes|uid_gid_and_umask_flags_override_what_stat_shows_and_the_kernel_enforces|chowns origin files to another user and reads as nobody through allow_other (needs root)"
  "modes|a_umask_022_leaves_read_only_modes_as_the_origin_gives_them|chowns origin files to another user and reads as nobody through allow_other (needs root)"
  "modes|a_chmod_of_a_source_shows_and_is_enforced_without_a_restart|chowns origin files to another user and reads as nobody through allow_other (needs root)"
)
# Per suite binary: a hang fails the run within this many seconds.
deadline=${MUSICFS_UNPRIVILEGED_DEADLINE:-600}

if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then
  echo "unprivileged-suite.sh: needs root (to create the user) and /dev/fuse" >&2
  exit 1
fi

# The same cargo invocation as run-tests.sh's mode loop, so nothing is rebuilt; the JSON
# names each suite's test executable.
test_args=()
for suite in "${suites[@]}"; do test_args+=(--test "$suite"); done
declare -A exe=()
while IFS=$'\t' read -r name path; do
  exe[$name]=$path
done < <(cargo test -p musicfs-tests --features e2e "${test_args[@]}" --no-run --message-format=json \
  | grep '"reason":"compiler-artifact"' | grep '"kind":\["test"\]' \
  | sed -n 's/.*"target":{[^}]*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1\t\2/p')
for suite in "${suites[@]}"; do
  if [ -z "${exe[$suite]:-}" ]; then
    echo "unprivileged-suite.sh: cargo named no test executable for suite '$suite'" >&2
    exit 1
  fi
done
# The harness looks for the daemon next to the test's profile dir (target/<profile>).
profile_dir=$(dirname "$(dirname "${exe[mount]}")")

if ! id -u "$user" >/dev/null 2>&1; then
  useradd --create-home --user-group --shell /usr/sbin/nologin "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)

# The checkout may sit where the user cannot go (/root): the executables go into a dir it
# can read, in the layout the harness expects (deps/<test> beside musicfsd and musicfs).
work=$(mktemp -d /tmp/musicfs-unprivileged.XXXXXX)
fuse_mode=$(stat -c %a /dev/fuse)
cleanup() {
  chmod "$fuse_mode" /dev/fuse
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' INT TERM
chmod 0755 "$work"
mkdir "$work/deps"
place() { cp -l "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
for bin in musicfsd musicfs; do place "$profile_dir/$bin" "$work/$bin"; done
for suite in "${suites[@]}"; do place "${exe[$suite]}" "$work/deps/$suite"; done
chmod 0755 "$work/deps" "$work"/musicfsd "$work"/musicfs "$work"/deps/*
# Debian ships /dev/fuse 0600; most distributions ship it 0666, which is what the user gets.
chmod 0666 /dev/fuse

failed=()
for suite in "${suites[@]}"; do
  skip_args=()
  listed=$("$work/deps/$suite" --list --format terse | sed -n 's/: test$//p')
  for entry in "${skips[@]}"; do
    IFS='|' read -r s name why <<<"$entry"
    [ "$s" = "$suite" ] || continue
    if ! grep -qxF "$name" <<<"$listed"; then
      echo "unprivileged-suite.sh: skip list names $suite::$name, which the suite does not have" >&2
      exit 1
    fi
    if ! grep -qF "$name" README.md; then
      echo "unprivileged-suite.sh: $suite::$name is skipped but not listed in README.md's environment-dependent tests" >&2
      exit 1
    fi
    echo "unprivileged-suite.sh: SKIP $suite::$name as $user: $why" >&2
    skip_args+=(--skip "$name")
  done
  echo "== $suite as $user (musicfsd --passthrough off)" >&2
  log="$work/$suite.log"
  rc=0
  (cd "$home" && timeout --kill-after=30 "$deadline" \
    setpriv --reuid="$user" --regid="$user" --init-groups --reset-env \
    env HOME="$home" PATH=/usr/local/bin:/usr/bin:/bin MUSICFS_BIN_DIR="$work" \
    MUSICFS_E2E_DAEMON_ARGS="--passthrough off" RUST_BACKTRACE=1 \
    "$work/deps/$suite" --test-threads 2 --exact "${skip_args[@]}") 2>&1 | tee "$log" || rc=$?
  if [ "$rc" -ne 0 ]; then
    failed+=("$suite")
  elif grep -q '^test result: .* [1-9][0-9]* ignored' "$log"; then
    echo "unprivileged-suite.sh: $suite has ignored tests; nothing is skipped silently" >&2
    failed+=("$suite")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "unprivileged-suite.sh: failed as $user: ${failed[*]}" >&2
  exit 1
fi
echo "unprivileged-suite.sh: every mount suite passed as $user (${#skips[@]} tests need root, listed above)" >&2
