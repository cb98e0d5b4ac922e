# Shared by tools/run-demo.sh and tools/run-tests.sh (sourced, not run).

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# apt_install_missing COMMAND=PACKAGE...: installs each PACKAGE whose COMMAND is not on PATH.
apt_install_missing() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

require_cargo() {
  if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust with rustup (https://rustup.rs), then re-run" >&2
    exit 1
  fi
}

# cargo_install_missing COMMAND CRATE [CARGO-INSTALL-ARGS...]: installs CRATE with
# `cargo install --locked` when COMMAND is on neither PATH nor ~/.cargo/bin.
cargo_install_missing() {
  local cmd=$1 crate=$2
  shift 2
  if command -v "$cmd" >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/$cmd" ]; then
    return
  fi
  echo "installing: $crate (cargo install)" >&2
  cargo install --locked "$crate" "$@"
}
