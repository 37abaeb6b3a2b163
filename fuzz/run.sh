#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 600), one after the other, then print per target:
# run time, executions, corpus size, coverage and crashes. Exits 1 if any target crashed.
#
#   fuzz/run.sh [SECONDS]
#
# Environment: FUZZ_TARGETS="header open" (subset), FUZZ_NICE=10 (nice level; the fuzzers share
# the machine), CARGO_TARGET_DIR (build elsewhere than fuzz/target), FUZZ_EXTRA="-jobs=2 ..."
# (more libFuzzer flags). Stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags.
#
# Corpora: fuzz/corpus/<target> (grows, gitignored) seeded from fuzz/seeds/<target> (committed)
# and, for `open`, tests/fixtures (golden sealed objects, DEK = 32 x 0x42). Crash inputs land in
# fuzz/artifacts/<target>/; reproduce one with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`.
set -uo pipefail
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"
export RUSTC_BOOTSTRAP=1

secs="${1:-600}"
targets=(${FUZZ_TARGETS:-header open manifest})
nice_level="${FUZZ_NICE:-10}"
rss_mb=512

# Longest input per target: a header is at most 117 bytes; `open` must fit the 3-segment golden
# object (153,739 bytes); JSON objects are refused above 64 KiB, far more than a real one needs.
max_len() {
  case "$1" in
    header) echo 256 ;;
    open) echo 200000 ;;
    manifest) echo 16384 ;;
    *) echo 4096 ;;
  esac
}
# Largest single allocation allowed (MiB). `open` must never hold more than one segment
# (at most 2^24 + 16 bytes, by the header's bound) at once: a bigger malloc is reported as a crash.
malloc_mb() {
  case "$1" in
    open) echo 24 ;;
    *) echo "$rss_mb" ;;
  esac
}
seed_dirs() {
  echo "seeds/$1"
  if [ "$1" = open ]; then echo ../tests/fixtures; fi
}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install --locked)"
  cargo install cargo-fuzz --locked
fi

echo "== building fuzz targets (release, debug assertions, AddressSanitizer)"
nice -n "$nice_level" cargo fuzz build || exit 1

summary=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  log="artifacts/$t-run.log"
  touch "artifacts/$t-run.start"
  echo "== fuzzing $t for ${secs}s (log: fuzz/$log)"
  start=$(date +%s)
  # shellcheck disable=SC2046,SC2086
  nice -n "$nice_level" cargo fuzz run "$t" "corpus/$t" $(seed_dirs "$t") -- \
    -max_total_time="$secs" -rss_limit_mb="$rss_mb" -malloc_limit_mb="$(malloc_mb "$t")" \
    -max_len="$(max_len "$t")" -timeout=30 \
    -print_final_stats=1 ${FUZZ_EXTRA:-} >"$log" 2>&1
  rc=$?
  elapsed=$(($(date +%s) - start))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  if [ -z "$runs" ]; then
    # Crashed before the final stats: take the last progress line's count.
    runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  fi
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)
  units=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n 1 | sed 's/corp: //')
  corpus=$(find "corpus/$t" -type f | wc -l)
  after=$(find "artifacts/$t" -type f | wc -l)
  crashes=$((after - before))
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    failed=1
    echo "!! $t: libFuzzer exited $rc; new artifacts:"
    find "artifacts/$t" -type f -newer "artifacts/$t-run.start" 2>/dev/null
    grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -n 20
  fi
  summary+=("$(printf '%-9s %5ss %11s runs  corpus %6s units %-9s (%s files)  %-21s %s crash(es)' \
    "$t" "$elapsed" "${runs:-?}" "${units%%/*}" "/${units#*/}" "$corpus" "${cov:-cov: ?}" "$crashes")")
done

echo "== summary (target, time, executions, corpus units/bytes (files in fuzz/corpus), coverage, new crashes in fuzz/artifacts)"
printf '%s\n' "${summary[@]}"
exit "$failed"
