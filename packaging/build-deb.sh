#!/usr/bin/env bash
# Build the Debian package: target/debian/coffre_<version>-1_<arch>.deb (in $CARGO_TARGET_DIR
# when it is set)
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

# The build goes to $CARGO_TARGET_DIR when set (cargo-deb finds target/release/ assets there);
# the generated man pages and completions stay in ./target/assets, as Cargo.toml names them.
out="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bin coffre
rm -rf target/assets
"$out/release/coffre" generate man target/assets/man >/dev/null
"$out/release/coffre" generate completions target/assets/completions >/dev/null
rm -f "$out"/debian/coffre_*.deb "$out"/debian/coffre-dbgsym_*.ddeb
# --dbgsym: the binary is stripped; its debug symbols (release keeps line tables for backtraces)
# go to coffre-dbgsym_<version>_<arch>.ddeb beside the .deb.
cargo deb --no-build --locked --dbgsym --output "$out/debian/" >&2
ls "$out"/debian/coffre_*.deb
