#!/usr/bin/env bash
# Build the Debian package: target/debian/coffre_<version>-1_<arch>.deb
#
#   packaging/build-deb.sh          release build, man pages and completions, then cargo deb
#
# The man pages and completions are generated from the CLI itself (`coffre generate`, a hidden
# command) into target/assets/, which [package.metadata.deb] in Cargo.toml references; cargo-deb
# then packages without building again (--no-build). Needs cargo-deb (tests/setup.sh installs it).
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

cargo deb --version >/dev/null 2>&1 || { echo "cargo-deb is missing: run tests/setup.sh" >&2; exit 1; }

cargo build --release --locked --bin coffre
rm -rf target/assets
target/release/coffre generate man target/assets/man >/dev/null
target/release/coffre generate completions target/assets/completions >/dev/null
rm -f target/debian/coffre_*.deb target/debian/coffre-dbgsym_*.ddeb
# --dbgsym: the binary is stripped; its debug symbols (release keeps line tables for backtraces)
# go to coffre-dbgsym_<version>_<arch>.ddeb beside the .deb.
cargo deb --no-build --locked --dbgsym >&2
ls target/debian/coffre_*.deb
