#!/usr/bin/env bash
# Throughput and peak-memory benchmark: coffre backup/restore against zstd on the same input.
#
#   benches/run.sh [--quick] [--repeat N] [--patients N] [--multiples "1 4"] [--tools "coffre zstd"]
#                  [--data DIR] [--coffre-zstd-threads N] [--no-fsync-ref] [--no-build] [--keep]
#                  [--wait-idle SECS] [--retries N]
#
#   --quick                 ~100 MiB dump (15000 patients) and 4x that, 1 repeat: a sanity run
#   --repeat N              measurements per (tool, operation, input); the median is reported
#                           (default 3, --quick 1). Tools alternate within each repeat.
#   --patients N            patients in the generated dump (default 150000: emr.sql ~1 GiB)
#   --multiples "1 4"       inputs: the dump concatenated k times into one file, for each k
#   --tools "coffre zstd"   tools to run; each tool NAME is a set of functions NAME_backup,
#                           NAME_restore, NAME_cleanup (add restic/borg the same way)
#   --data DIR              cache of generated inputs and scratch space for the runs
#                           (default $COFFRE_BENCH_DATA, else benches/.data); scratch is removed
#   --coffre-zstd-threads N override [pipeline] zstd-threads in coffre's temporary config
#                           (default: keep config/coffre.toml's value; 0 = one per core)
#   --no-fsync-ref          skip the extra "zstd -d + fsync" reference row (coffre restore fsyncs
#                           its output before renaming it into place; plain zstd -d does not)
#   --no-build              use target/release/coffre as it is (default: cargo build --release)
#   --keep                  keep the scratch folder (stores, configs, logs) for inspection
#   --wait-idle SECS        before each measurement wait up to SECS (default 300; 0: don't) for
#                           the machine to be quiet (<15% of a CPU busy), e.g. a concurrent build
#   --retries N             redo a measurement during which other processes used noticeable CPU
#                           (> 0.5 s + 10% of one CPU), up to N times (default 2)
#
# Needs: PostgreSQL server binaries (tests/setup.sh) to generate the dump once, zstd, cmp,
# /usr/bin/time (Debian package `time`, installed if missing when run as root).
# Every coffre run gets a fresh temporary config (copied from config/coffre.toml, with state-dir,
# store paths, master key and source path moved into the scratch folder), so runs don't accumulate.
# Timings are wall clock with a warm page cache for the input; `sync` runs (untimed) before each
# measurement so earlier writes are not flushed during it. MB = 10^6 bytes; RSS in MiB.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

QUICK=0 REPEAT= PATIENTS= MULTIPLES="1 4" TOOLS="coffre zstd" DATA=${COFFRE_BENCH_DATA:-$HERE/.data}
CZT= FSYNC_REF=1 BUILD=1 KEEP=0 BUILD_NOTE= WAIT_IDLE=300 RETRIES=2
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift;;
    --repeat) REPEAT=$2; shift 2;;
    --patients) PATIENTS=$2; shift 2;;
    --multiples) MULTIPLES=$2; shift 2;;
    --tools) TOOLS=${2//,/ }; shift 2;;
    --data) DATA=$2; shift 2;;
    --coffre-zstd-threads) CZT=$2; shift 2;;
    --no-fsync-ref) FSYNC_REF=0; shift;;
    --no-build) BUILD=0; shift;;
    --wait-idle) WAIT_IDLE=$2; shift 2;;
    --retries) RETRIES=$2; shift 2;;
    --keep) KEEP=1; shift;;
    -h|--help) sed -n 2,33p "$0"; exit 0;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
  esac
done
if [ "$QUICK" = 1 ]; then : "${REPEAT:=1}" "${PATIENTS:=15000}"; else : "${REPEAT:=3}" "${PATIENTS:=150000}"; fi
for v in "$REPEAT" "$PATIENTS" "$WAIT_IDLE" "$RETRIES" $MULTIPLES ${CZT:+"$CZT"}; do
  case "$v" in ''|*[!0-9]*) echo "not a number: '$v'" >&2; exit 2;; esac
done
[ "$REPEAT" -ge 1 ] || { echo "--repeat must be at least 1" >&2; exit 2; }

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ------------------------------------------------------------------ prerequisites
if [ ! -x /usr/bin/time ]; then
  [ "$(id -u)" = 0 ] || die "/usr/bin/time is missing: apt-get install time"
  say "installing the Debian package time"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q time >/dev/null; } \
    || die "cannot install the package time"
fi
command -v cmp >/dev/null || die "cmp is missing (diffutils)"

mkdir -p "$DATA"; DATA=$(cd "$DATA" && pwd)
WORK=$(mktemp -d "$DATA/run.XXXXXX")   # scratch on the same disk as the inputs
RESULTS=$WORK/results.tsv; : > "$RESULTS"
cleanup() { if [ "$KEEP" = 1 ]; then say "kept scratch folder $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ measurement
# measure STDOUT STDERR CMD...: runs CMD once; sets M_SECS (wall clock) and M_RSS_KB (peak RSS of
# the largest process, from GNU time). Returns CMD's exit status.
# M_OTHER is the CPU time used by everything else on the machine during the run (all CPUs'
# busy time from /proc/stat minus CMD's user+sys): other work (a concurrent cargo build...)
# skews the figures, so it is reported.
M_SECS= M_RSS_KB= M_CPU= M_SYS= M_OTHER=
cpu_busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
CLK_TCK=$(getconf CLK_TCK)
# wait_idle: before a measurement, wait (up to WAIT_IDLE seconds) until the machine is quiet:
# less than 15% of one CPU busy over a 2 s sample.
wait_idle() {
  [ "$WAIT_IDLE" -gt 0 ] || return 0
  local start=$SECONDS a b busy warned=0
  while :; do
    a=$(cpu_busy_ticks); sleep 2; b=$(cpu_busy_ticks)
    busy=$(( (b - a) * 100 / (2 * CLK_TCK) ))
    [ "$busy" -ge 15 ] || return 0
    if [ $((SECONDS - start)) -ge "$WAIT_IDLE" ]; then say "    machine still busy (${busy}% of a CPU): measuring anyway"; return 0; fi
    [ "$warned" = 1 ] || { say "    machine busy (${busy}% of a CPU used by other processes): waiting up to ${WAIT_IDLE}s"; warned=1; }
  done
}
measure() {
  local out=$1 err=$2; shift 2
  sync
  wait_idle
  local c0 c1 t0 t1 rc=0
  c0=$(cpu_busy_ticks); t0=$EPOCHREALTIME
  /usr/bin/time -f '%e %M %U %S' -o "$WORK/time.txt" -- "$@" >"$out" 2>"$err" || rc=$?
  t1=$EPOCHREALTIME; c1=$(cpu_busy_ticks)
  read -r _ M_RSS_KB u s < <(tail -n 1 "$WORK/time.txt")
  M_SYS=$s
  M_SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
  M_CPU=$(awk -v u="$u" -v s="$s" 'BEGIN{printf "%.2f", u+s}')
  M_OTHER=$(awk -v c0="$c0" -v c1="$c1" -v hz="$CLK_TCK" -v own="$M_CPU" 'BEGIN{o = (c1-c0)/hz - own; printf "%.2f", (o < 0 ? 0 : o)}')
  return $rc
}
# record INPUT TOOL OP REP IN_BYTES OUT_BYTES
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$M_SECS" "$M_RSS_KB" "$M_CPU" "$M_OTHER" "$M_SYS" >> "$RESULTS"; }
fsize() { stat -c %s "$1"; }
dsize() { du -sb "$1" | awk '{print $1}'; }
same() { # ORIGINAL COPY WHAT
  cmp -s "$1" "$2" || die "$3: $2 differs from $1"
}

# ------------------------------------------------------------------ tools
# A tool NAME provides:
#   NAME_backup INPUT LABEL REP    back up / compress INPUT (one or more record calls)
#   NAME_restore INPUT LABEL REP   restore what NAME_backup made, check it equals INPUT, record
#   NAME_cleanup                   remove what both left behind
# and NAME_version (one line). To add restic or borg: write restic_backup (init a fresh repo
# under $WORK/restic, `restic backup INPUT`), restic_restore, restic_cleanup, restic_version and
# pass --tools "coffre zstd restic".

# --- coffre: backup to the two local-folder stores of a fresh temporary config, then restore.
COFFRE=
coffre_version() {
  echo "coffre: tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?'), binary built $(date -r "$ROOT/target/release/coffre" '+%F %T') sha256 $(sha256sum "$COFFRE" | cut -c1-12)${BUILD_NOTE:+ ($BUILD_NOTE)}"
}
coffre_config() { # DIR: write DIR/coffre.toml from config/coffre.toml with every path inside DIR
  local d=$1
  mkdir -p "$d/incoming"
  awk -v T="$d" -v ZT="$CZT" '
    /^[[:space:]]*\[/ { sect = $1 }
    /^state-dir[[:space:]]*=/ { print "state-dir = \"" T "/state\""; next }
    /^zstd-threads[[:space:]]*=/ && ZT != "" { print "zstd-threads = " ZT; next }
    sect == "[[source]]" && /^path[[:space:]]*=/ { print "path = \"" T "/incoming\""; next }
    sect == "[[store]]" && /^path[[:space:]]*=/ { n++; print "path = \"" T "/stores/store-" n "\""; next }
    /^master-key[[:space:]]*=/ { print "master-key = \"" T "/keys/master.key\""; next }
    { print }' "$ROOT/config/coffre.toml" > "$d/coffre.toml"
  ! grep -q '"\./' "$d/coffre.toml" || die "a relative path is left in $d/coffre.toml"
  "$COFFRE" --config "$d/coffre.toml" check-config > "$d/check.log" 2>&1 \
    || { cat "$d/check.log" >&2; die "temporary coffre config is not valid"; }
}
COFFRE_ID=
coffre_backup() {
  local in=$1 label=$2 rep=$3 d=$WORK/coffre
  rm -rf "$d"; coffre_config "$d"
  measure "$d/id" "$d/backup.log" "$COFFRE" --config "$d/coffre.toml" --log-format text backup --source emr "$in" \
    || { tail -n 20 "$d/backup.log" >&2; die "coffre backup failed"; }
  COFFRE_ID=$(tail -n 1 "$d/id")
  record "$label" coffre backup "$rep" "$(fsize "$in")" "$(dsize "$d/stores/store-1")"
}
coffre_restore() {
  local in=$1 label=$2 rep=$3 d=$WORK/coffre
  rm -rf "$d/restored"
  measure /dev/null "$d/restore.log" "$COFFRE" --config "$d/coffre.toml" --log-format text restore "$COFFRE_ID" \
      --source emr --to "$d/restored" --purpose "benchmark run (benches/run.sh)" \
    || { tail -n 20 "$d/restore.log" >&2; die "coffre restore failed"; }
  record "$label" coffre restore "$rep" "$(fsize "$d/restored")" "$(dsize "$d/stores/store-1")"
  same "$in" "$d/restored" "coffre restore"
  rm -f "$d/restored"
}
coffre_cleanup() { rm -rf "$WORK/coffre"; }

# --- zstd: the reference, level 3 on 2 threads to a file, and decompression to a file.
zstd_version() { zstd --version | head -n 1; }
zstd_backup() {
  local in=$1 label=$2 rep=$3 d=$WORK/zstd
  rm -rf "$d"; mkdir -p "$d"
  measure /dev/null "$d/compress.log" zstd -3 -T2 -q -f -o "$d/in.zst" "$in" \
    || { cat "$d/compress.log" >&2; die "zstd failed"; }
  record "$label" zstd "compress -3 -T2" "$rep" "$(fsize "$in")" "$(fsize "$d/in.zst")"
}
zstd_restore() {
  local in=$1 label=$2 rep=$3 d=$WORK/zstd
  rm -f "$d/out"
  measure /dev/null "$d/decompress.log" zstd -d -q -f -o "$d/out" "$d/in.zst" \
    || { cat "$d/decompress.log" >&2; die "zstd -d failed"; }
  record "$label" zstd "decompress" "$rep" "$(fsize "$d/out")" "$(fsize "$d/in.zst")"
  same "$in" "$d/out" "zstd -d"
  rm -f "$d/out"
  if [ "$FSYNC_REF" = 1 ]; then
    measure /dev/null "$d/decompress.log" sh -c 'zstd -d -q -f -o "$1" "$2" && sync "$1"' sh "$d/out" "$d/in.zst" \
      || { cat "$d/decompress.log" >&2; die "zstd -d + sync failed"; }
    record "$label" zstd "decompress+fsync" "$rep" "$(fsize "$d/out")" "$(fsize "$d/in.zst")"
    rm -f "$d/out"
  fi
}
zstd_cleanup() { rm -rf "$WORK/zstd"; }

for t in $TOOLS; do
  for f in backup restore cleanup version; do
    declare -F "${t}_$f" >/dev/null || die "unknown tool $t (no function ${t}_$f)"
  done
done

# ------------------------------------------------------------------ inputs
# The project's own generator, cached per patient count: $DATA/emr-N/emr.sql.
dump_for() { # N -> path of emr.sql, generated once
  local n=$1 dir=$DATA/emr-$1
  if [ ! -s "$dir/emr.sql" ]; then
    local gen=$DATA/emr-$n.gen
    rm -rf "$gen"
    say "generating the EMR dump with $n patients (once; cached in $dir)"
    local t0=$SECONDS
    "$ROOT/tests/testdata/make-emr-db.sh" --out "$gen" --patients "$n" --port $((54000 + $$ % 1000)) >&2 \
      || die "tests/testdata/make-emr-db.sh failed"
    mkdir -p "$dir"
    mv "$gen/emr.sql" "$gen/counts.txt" "$dir/"
    rm -rf "$gen"     # emr.dump and basebackup are not used here
    say "generated $dir/emr.sql ($(($(fsize "$dir/emr.sql") / 1048576)) MiB) in $((SECONDS - t0)) s"
  fi
  echo "$dir/emr.sql"
}
input_for() { # DUMP K -> the dump concatenated K times into one file (the dump itself for K=1)
  local dump=$1 k=$2
  if [ "$k" = 1 ]; then echo "$dump"; return; fi
  local f=${dump%.sql}-x$k.sql
  if [ ! -f "$f" ] || [ "$(fsize "$f")" != $(($(fsize "$dump") * k)) ]; then
    say "building $f ($k x $(basename "$dump"))"
    local i; for ((i = 0; i < k; i++)); do cat "$dump"; done > "$f.tmp"
    mv "$f.tmp" "$f"
  fi
  echo "$f"
}

# ------------------------------------------------------------------ main
if [ "$BUILD" = 1 ]; then
  say "cargo build --release"
  # Others may be editing src/ meanwhile: if the tree does not build right now, measure the last
  # binary that did (its build time is printed in the header).
  (cd "$ROOT" && cargo build --release -q) \
    || { [ -x "$ROOT/target/release/coffre" ] || die "cargo build --release failed"
         say "warning: cargo build --release failed; measuring the existing target/release/coffre"
         BUILD_NOTE="build failed: using the existing binary"; }
fi
[ -x "$ROOT/target/release/coffre" ] || die "target/release/coffre is missing (drop --no-build)"
# A private copy, so a rebuild by someone else during the run does not change what is measured.
cp "$ROOT/target/release/coffre" "$WORK/coffre-bin"; COFFRE=$WORK/coffre-bin

DUMP=$(dump_for "$PATIENTS")
INPUTS=() LABELS=()
for k in $MULTIPLES; do
  INPUTS+=("$(input_for "$DUMP" "$k")")
  LABELS+=("$(awk -v b="$(fsize "$DUMP")" -v k="$k" 'BEGIN{ s = b * k / 1048576; if (s >= 1024) printf "%.1fGiB", s / 1024; else printf "%.0fMiB", s }')")
done

{
  echo "# coffre benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(hostname)"
  echo "# cpu: $(nproc) x $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), RAM $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  for t in $TOOLS; do echo "# $("${t}_version")"; done
  echo "# input: $DUMP ($PATIENTS patients), multiples: $MULTIPLES; repeats: $REPEAT; coffre zstd-threads: ${CZT:-as config/coffre.toml}"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$WORK/header.txt"

# step TOOL OP INPUT LABEL REP: run TOOL_OP; if another process used noticeable CPU during one
# of its measurements (more than 0.5 s + 10% of one CPU), drop them and do it again (--retries).
step() {
  local t=$1 op=$2 n0 try
  for ((try = 0; ; try++)); do
    say "  $4 rep $5/$REPEAT: $t $op$([ "$try" = 0 ] || echo " (again, $try)")"
    n0=$(wc -l < "$RESULTS")
    "${t}_$op" "$3" "$4" "$5"
    tail -n +$((n0 + 1)) "$RESULTS" | awk -F'\t' '$10 > 0.5 + 0.1 * $7 {bad = 1} END {exit !bad}' || return 0
    if [ "$try" -ge "$RETRIES" ]; then say "    other processes used CPU during this measurement: kept (out of --retries)"; return 0; fi
    say "    other processes used CPU during this measurement: measuring again"
    head -n "$n0" "$RESULTS" > "$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
  done
}

for i in "${!INPUTS[@]}"; do
  in=${INPUTS[$i]} label=${LABELS[$i]}
  say "input $label: $in"
  cat "$in" > /dev/null   # warm the page cache, the same for every tool
  order=($TOOLS)
  for ((rep = 1; rep <= REPEAT; rep++)); do
    for t in "${order[@]}"; do step "$t" backup "$in" "$label" "$rep"; done
    for t in "${order[@]}"; do step "$t" restore "$in" "$label" "$rep"; done
    for t in "${order[@]}"; do "${t}_cleanup"; done
    order=("${order[@]:1}" "${order[0]}")   # rotate: each tool goes first in turn
  done
done

# ------------------------------------------------------------------ report
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
awk -F'\t' -v reps="$REPEAT" '
  function median(s,   n, a, i, j, t) {
    n = split(s, a, " ")
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  function minmax(s,   n, a, i, lo, hi) {
    n = split(s, a, " "); lo = hi = a[1]
    for (i = 2; i <= n; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
    return sprintf("%.2f-%.2f", lo, hi)
  }
  {
    k = $1 SUBSEP $2 SUBSEP $3
    if (!(k in secs)) { order[++nk] = k; lab[k] = $1; tool[k] = $2; op[k] = $3 }
    inb[k] = $5; outb[k] = $6; secs[k] = secs[k] " " $7; cpu[k] = cpu[k] " " $9; sys[k] = sys[k] " " $11
    if ($8 > rss[k]) rss[k] = $8
    if ($10 > other[k]) other[k] = $10
  }
  END {
    fmt = "%-8s %-8s %-18s %9s %9s %13s %9s %10s %9s %7s %7s %7s\n"
    printf fmt, "input", "tool", "operation", "input MB", "seconds", "(min-max)", "MB/s", "peak RSS", "out MB", "CPU s", "sys s", "other"
    printf fmt, "", "", "", "", "(median)", "", "of input", "MiB (max)", "(1 copy)", "(med)", "(med)", "CPU s"
    for (i = 1; i <= nk; i++) {
      k = order[i]; s = median(secs[k])
      printf "%-8s %-8s %-18s %9.1f %9.2f %13s %9.1f %10.1f %9.1f %7.2f %7.2f %7.2f\n", lab[k], tool[k], op[k],
        inb[k] / 1e6, s, minmax(secs[k]), (s > 0 ? inb[k] / 1e6 / s : 0), rss[k] / 1024, outb[k] / 1e6,
        median(cpu[k]), median(sys[k]), other[k]
      print lab[k], tool[k], op[k], inb[k] / 1e6 / s, rss[k] / 1024 > "/dev/stderr"
    }
  }' "$RESULTS" 2> "$WORK/summary.txt" | tee "$WORK/table.txt"

# Targets: backup >= 0.9 x zstd -3 -T2, restore >= 0.8 x zstd -d, coffre peak RSS < 256 MiB and
# within 1.2x from the smallest to the largest input.
echo
case " $TOOLS " in *" coffre "*) case " $TOOLS " in *" zstd "*) HAVE_BOTH=1;; esac;; esac
case "${HAVE_BOTH:-0}" in 1)
  awk -v labels="${LABELS[*]}" '
    {   # label tool op... mbps rss (op may contain spaces)
      n = split($0, w, " "); mbps = w[n - 1]; rss = w[n]; lab = w[1]; tool = w[2]
      op = w[3]; for (i = 4; i <= n - 2; i++) op = op " " w[i]
      V[lab, tool, op] = mbps; R[lab, tool, op] = rss
    }
    function verdict(ok) { return ok ? "ok" : "MISS" }
    END {
      nl = split(labels, L, " ")
      printf "%-8s %-40s %8s %8s  %s\n", "input", "check", "value", "target", ""
      for (i = 1; i <= nl; i++) {
        l = L[i]
        b = V[l, "coffre", "backup"] / V[l, "zstd", "compress -3 -T2"]
        r = V[l, "coffre", "restore"] / V[l, "zstd", "decompress"]
        printf "%-8s %-40s %8.2f %8s  %s\n", l, "coffre backup / zstd -3 -T2 (MB/s)", b, ">= 0.90", verdict(b >= 0.9)
        printf "%-8s %-40s %8.2f %8s  %s\n", l, "coffre restore / zstd -d (MB/s)", r, ">= 0.80", verdict(r >= 0.8)
        if ((l, "zstd", "decompress+fsync") in V) {
          rf = V[l, "coffre", "restore"] / V[l, "zstd", "decompress+fsync"]
          printf "%-8s %-40s %8.2f %8s  %s\n", l, "coffre restore / (zstd -d + fsync) (MB/s)", rf, "(info)", ""
        }
        printf "%-8s %-40s %8.1f %8s  %s\n", l, "coffre backup peak RSS (MiB)", R[l, "coffre", "backup"], "< 256", verdict(R[l, "coffre", "backup"] < 256)
        printf "%-8s %-40s %8.1f %8s  %s\n", l, "coffre restore peak RSS (MiB)", R[l, "coffre", "restore"], "< 256", verdict(R[l, "coffre", "restore"] < 256)
      }
      if (nl >= 2) {
        a = L[1]; z = L[nl]
        for (j = 1; j <= 2; j++) {
          o = (j == 1) ? "backup" : "restore"
          q = R[z, "coffre", o] / R[a, "coffre", o]
          printf "%-8s %-40s %8.2f %8s  %s\n", z "/" a, "coffre " o " peak RSS ratio", q, "<= 1.20", verdict(q <= 1.2)
        }
      }
    }' "$WORK/summary.txt";;
*) echo "(targets need both coffre and zstd in --tools)";;
esac
echo
echo "# CPU s: user+sys of the measured command (sys s: the kernel part); other CPU s: (max over"
echo "# repeats) CPU time used by other processes during the run. Raw (input tool operation rep"
echo "# in_bytes out_bytes seconds rss_kb cpu_s other_cpu_s sys_s):"
sed 's/^/#   /' "$RESULTS"
