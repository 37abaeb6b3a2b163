#!/usr/bin/env bash
# Install the real servers coffre's integration tests start on 127.0.0.1 (Debian 12).
#
#   tests/setup.sh            install what is missing, print one line per tool
#
# Idempotent and fast (a few seconds) when everything is present. Runs as root or through sudo
# (apt, npm -g); `cargo install` runs as the calling user (binary in ~/.cargo/bin).
# Prometheus (server and promtool) comes from Debian's prometheus package.
# Pinned versions: s3s-fs 0.14.1 (0.15+ needs rustc 1.96), Azurite 3.35.0, cargo-deb 3.8.0 (no
# Debian package of it in bookworm; it builds the .deb in tests/package_deb.rs).
# Cold: about 10 minutes, most of it building s3s-fs and cargo-deb. Output of installs: $SETUP_LOG.
set -euo pipefail

APT_PKGS=(softhsm2 opensc postgresql zstd curl openssl ca-certificates systemd passwd util-linux faketime python3 prometheus lintian)
S3S_VERSION=0.14.1
AZURITE_VERSION=3.35.0
CARGO_DEB_VERSION=3.8.0
SETUP_LOG=${SETUP_LOG:-${TMPDIR:-/tmp}/coffre-setup.$(id -u).log}
: > "$SETUP_LOG"

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" = 0 ]; then SUDO=()
elif command -v sudo >/dev/null 2>&1; then SUDO=(sudo)
else SUDO=(false); fi

say() { printf '%-10s %s\n' "$1:" "$2"; }
fail() {
  say "$1" "FAILED: $2"
  if [ -s "$SETUP_LOG" ]; then echo "--- last lines of $SETUP_LOG:" >&2; tail -n 30 "$SETUP_LOG" >&2; fi
  exit 1
}
# run quietly, output to the log; returns the command's status
quiet() { echo "+ $*" >> "$SETUP_LOG"; "$@" >> "$SETUP_LOG" 2>&1; }
# wait (up to 30 min) for an install of the same tool that is already running, instead of racing it
wait_for() { # PATTERN
  local n=0
  while pgrep -f -- "$1" >/dev/null 2>&1; do
    [ $n = 0 ] && echo "waiting for a running '$1' to finish..." >&2
    n=$((n + 1)); [ $n -lt 360 ] || return 0; sleep 5
  done
}
pkg_ok() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# ---------------------------------------------------------------- apt packages
apt_install() { # PKG...
  [ $# -gt 0 ] || return 0
  wait_for 'apt-get install'
  local apt=("${SUDO[@]}" apt-get -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends)
  # on a fresh image the lists may be empty or stale: update once if the first try fails
  if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || ! quiet "${apt[@]}" install "$@"; then
    quiet "${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=600 update || fail apt "apt-get update (root or passwordless sudo needed)"
    quiet "${apt[@]}" install "$@" || fail apt "apt-get install $*"
  fi
}
missing=()
for p in "${APT_PKGS[@]}"; do pkg_ok "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
  say apt "installed ${missing[*]}"
else
  say apt "ok (${APT_PKGS[*]})"
fi

# ---------------------------------------------------------------- SoftHSM (checked separately: the module path matters)
SOFTHSM_MOD=
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so; do
  [ -e "$m" ] && { SOFTHSM_MOD=$m; break; }
done
[ -n "$SOFTHSM_MOD" ] && command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null \
  || fail softhsm "libsofthsm2.so / softhsm2-util / pkcs11-tool not found after installing softhsm2 opensc"
say softhsm "ok ($(softhsm2-util --version 2>/dev/null), $SOFTHSM_MOD)"

# ---------------------------------------------------------------- PostgreSQL server binaries
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] && [ -x "$PGBIN/pg_basebackup" ] \
  || fail postgres "no /usr/lib/postgresql/*/bin/initdb after installing postgresql"
id postgres >/dev/null 2>&1 || [ "$(id -u)" != 0 ] || fail postgres "user postgres missing (needed to run PostgreSQL as root)"
say postgres "ok ($("$PGBIN/postgres" --version 2>/dev/null | awk '{print $3}'), $PGBIN)"

# ---------------------------------------------------------------- Prometheus server and promtool (package prometheus)
command -v prometheus >/dev/null && command -v promtool >/dev/null \
  || fail prometheus "prometheus / promtool not found after installing prometheus"
say prometheus "ok ($(promtool --version 2>&1 | awk 'NR == 1 {print $3}'), $(command -v promtool))"

# ---------------------------------------------------------------- s3s-fs (S3 over a folder, checks SigV4)
if ! command -v s3s-fs >/dev/null 2>&1; then
  wait_for 'cargo install s3s-fs'
fi
if command -v s3s-fs >/dev/null 2>&1; then
  say s3s-fs "ok ($(command -v s3s-fs))"
else
  command -v cargo >/dev/null 2>&1 || fail s3s-fs "cargo not found (install Rust: https://rustup.rs)"
  if ! command -v cc >/dev/null 2>&1; then apt_install gcc libc6-dev; fi
  echo "building s3s-fs $S3S_VERSION (about 4 minutes)..." >&2
  quiet cargo install "s3s-fs@$S3S_VERSION" --locked --features binary || fail s3s-fs "cargo install s3s-fs@$S3S_VERSION"
  command -v s3s-fs >/dev/null 2>&1 || fail s3s-fs "installed but not on PATH (${CARGO_HOME:-$HOME/.cargo}/bin)"
  say s3s-fs "installed $S3S_VERSION ($(command -v s3s-fs))"
fi

# ---------------------------------------------------------------- Azurite (Azure Blob emulator)
if ! command -v azurite-blob >/dev/null 2>&1; then
  wait_for 'npm install -g azurite'
fi
if command -v azurite-blob >/dev/null 2>&1; then
  say azurite "ok ($(command -v azurite-blob))"
else
  if ! command -v npm >/dev/null 2>&1; then apt_install nodejs npm; fi
  NPM=(npm)
  prefix=$(npm prefix -g 2>/dev/null || echo /usr)
  [ -w "$prefix/lib" ] || [ -w "$prefix" ] || NPM=("${SUDO[@]}" npm)
  quiet "${NPM[@]}" install -g --no-audit --no-fund "azurite@$AZURITE_VERSION" || fail azurite "npm install -g azurite@$AZURITE_VERSION"
  hash -r
  command -v azurite-blob >/dev/null 2>&1 || fail azurite "installed but azurite-blob is not on PATH ($prefix/bin)"
  say azurite "installed $AZURITE_VERSION ($(command -v azurite-blob))"
fi
# ---------------------------------------------------------------- cargo-deb (packaging/build-deb.sh)
if ! cargo deb --version >/dev/null 2>&1; then
  wait_for 'cargo install cargo-deb'
fi
if cargo deb --version >/dev/null 2>&1; then
  say cargo-deb "ok ($(cargo deb --version 2>/dev/null))"
else
  command -v cargo >/dev/null 2>&1 || fail cargo-deb "cargo not found (install Rust: https://rustup.rs)"
  if ! command -v cc >/dev/null 2>&1; then apt_install gcc libc6-dev; fi
  echo "building cargo-deb $CARGO_DEB_VERSION (about 3 minutes)..." >&2
  quiet cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked || fail cargo-deb "cargo install cargo-deb@$CARGO_DEB_VERSION"
  cargo deb --version >/dev/null 2>&1 || fail cargo-deb "installed but not on PATH (${CARGO_HOME:-$HOME/.cargo}/bin)"
  say cargo-deb "installed $CARGO_DEB_VERSION"
fi
[ -s "$SETUP_LOG" ] || rm -f "$SETUP_LOG"
