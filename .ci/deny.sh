#!/usr/bin/env bash
# Supply-chain checks with cargo-deny, policy in deny.toml:
#   - licences, bans (duplicates, wildcards) and sources (crates.io only): always;
#   - advisories (RustSec database, a git repository): only when that database can be fetched,
#     or when a copy fetched earlier is on this machine; otherwise says so and does NOT fail.
# Installs cargo-deny (pinned version, `cargo install --locked`) when it is missing.
# Usage: .ci/deny.sh        Environment: COFFRE_DENY_ADVISORIES=0 skips the advisory check.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

CARGO_DENY_VERSION=0.20.2
ADVISORY_DB_URL=https://github.com/RustSec/advisory-db
ADVISORY_DB_DIR="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"

if ! cargo deny --version >/dev/null 2>&1; then
  echo "== installing cargo-deny $CARGO_DENY_VERSION (cargo install --locked, a few minutes)"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi
have=$(cargo deny --version | awk '{ print $2 }')
if [ "$have" != "$CARGO_DENY_VERSION" ]; then
  echo "note: cargo-deny $have is installed; deny.toml is written for $CARGO_DENY_VERSION"
fi

echo "== cargo deny check licenses bans sources"
cargo deny --locked check licenses bans sources

if [ "${COFFRE_DENY_ADVISORIES:-1}" = 0 ]; then
  echo "== cargo deny check advisories: SKIPPED (COFFRE_DENY_ADVISORIES=0)"
  exit 0
fi

# Can the advisory database be fetched? (20 s at most: no hang on a machine without a route.)
if timeout 20 git -c credential.helper= -c core.askPass=true ls-remote --exit-code \
  "$ADVISORY_DB_URL" HEAD >/dev/null 2>&1; then
  echo "== cargo deny check advisories"
  cargo deny --locked check advisories
elif compgen -G "$ADVISORY_DB_DIR/advisory-db-*/.git" >/dev/null; then
  db=$(compgen -G "$ADVISORY_DB_DIR/advisory-db-*" | head -n 1)
  when=$(git -C "$db" log -1 --format=%cs 2>/dev/null || echo "unknown date")
  echo "== cargo deny check advisories: the advisory database cannot be fetched ($ADVISORY_DB_URL" \
    "unreachable); using the copy fetched earlier, last updated $when"
  # --offline: no fetch; cargo-deny refuses a copy older than 90 days (maximum-db-staleness).
  if ! cargo deny --locked --offline check advisories; then
    echo "cargo deny check advisories FAILED with the cached database (an advisory above, or a copy" \
      "older than 90 days: fetch it on a connected machine with \`cargo deny fetch db\`)" >&2
    exit 1
  fi
else
  echo "== cargo deny check advisories: SKIPPED — the RustSec advisory database cannot be fetched" \
    "from this machine ($ADVISORY_DB_URL unreachable) and no earlier copy is in $ADVISORY_DB_DIR;" \
    "licences, bans and sources were checked"
fi
