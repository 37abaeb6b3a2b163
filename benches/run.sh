#!/usr/bin/env bash
# Throughput and peak-memory benchmark: coffre backup/restore against zstd, restic and borg on the
# same inputs.
#
#   benches/run.sh [--quick] [--repeat N] [--inputs "dump basebackup random"] [--patients N]
#                  [--multiples "1 4"] [--random-mib N] [--tools "coffre zstd restic borg"]
#                  [--data DIR] [--coffre-zstd-threads N] [--no-fsync-ref] [--no-build] [--keep]
#                  [--wait-idle SECS] [--retries N]
#
#   --quick                 small inputs, 1 repeat: a sanity run of a few minutes (~100 MiB dump
#                           of 15000 patients and 4x that, its basebackup, 100 MiB random bytes)
#   --repeat N              measurements per (tool, operation, input); the median is reported
#                           (default 3, --quick 1). Tools alternate within each repeat.
#   --inputs "..."          input kinds, any of (default "dump basebackup random"):
#                             dump        plain-SQL pg_dump of the generated EMR database (one
#                                         input per --multiples k: the dump concatenated k times)
#                             basebackup  pg_basebackup (plain format, a directory) of that database
#                             random      --random-mib MiB of random bytes (incompressible)
#   --patients N            patients in the generated database (default 150000: emr.sql ~1 GiB)
#   --multiples "1 4"       dump inputs: the dump concatenated k times into one file, for each k
#   --random-mib N          size of the random input in MiB (default 1024, --quick 100)
#   --tools "coffre zstd"   tools to run (default "coffre zstd"; restic and borg are installed
#                           from Debian's packages if missing, when run as root); each tool NAME
#                           is a set of functions NAME_backup, NAME_restore, NAME_cleanup,
#                           NAME_version
#   --data DIR              cache of generated inputs and scratch space for the runs
#                           (default $COFFRE_BENCH_DATA, else benches/.data); scratch is removed
#   --coffre-zstd-threads N override [pipeline] zstd-threads in coffre's temporary config
#                           (default: keep config/coffre.toml's value; 0 = one per core)
#   --no-fsync-ref          skip the extra "zstd -d + fsync" reference row (coffre restore fsyncs
#                           its output before renaming it into place; plain zstd -d does not)
#   --no-build              use target/release/coffre as it is (default: cargo build --release)
#   --keep                  keep the scratch folder (stores, repositories, logs) for inspection
#   --wait-idle SECS        before each measurement wait up to SECS (default 300; 0: don't) for
#                           the machine to be quiet (<15% of a CPU busy), e.g. a concurrent build
#   --retries N             redo a measurement during which other processes used noticeable CPU
#                           (> 0.5 s + 10% of one CPU), up to N times (default 2)
#
# Needs: PostgreSQL server binaries (tests/setup.sh) to generate the database once, zstd, tar,
# cmp/diff, /usr/bin/time (Debian package `time`), and for --tools restic/borg the Debian packages
# restic (>= 0.14: repository v2 and compression) and borgbackup (1.x); the missing packages are
# installed when run as root.
# Every coffre run gets a fresh temporary config (copied from config/coffre.toml, with state-dir,
# store paths, master key and source path moved into the scratch folder), and every restic/borg
# run a fresh repository (and cache) in the scratch folder, so runs don't accumulate.
# Timings are wall clock with a warm page cache for what is read (the input, or the repository
# for a restore: read again, untimed, right before each measurement); `sync` runs (untimed)
# before each measurement so earlier writes are not flushed during it. MB = 10^6 bytes; RSS in MiB.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

QUICK=0 REPEAT= PATIENTS= MULTIPLES="1 4" TOOLS="coffre zstd" DATA=${COFFRE_BENCH_DATA:-$HERE/.data}
CZT= FSYNC_REF=1 BUILD=1 KEEP=0 BUILD_NOTE= WAIT_IDLE=300 RETRIES=2
INPUT_KINDS="dump basebackup random" RANDOM_MIB=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift;;
    --repeat) REPEAT=$2; shift 2;;
    --inputs) INPUT_KINDS=${2//,/ }; shift 2;;
    --patients) PATIENTS=$2; shift 2;;
    --multiples) MULTIPLES=$2; shift 2;;
    --random-mib) RANDOM_MIB=$2; shift 2;;
    --tools) TOOLS=${2//,/ }; shift 2;;
    --data) DATA=$2; shift 2;;
    --coffre-zstd-threads) CZT=$2; shift 2;;
    --no-fsync-ref) FSYNC_REF=0; shift;;
    --no-build) BUILD=0; shift;;
    --wait-idle) WAIT_IDLE=$2; shift 2;;
    --retries) RETRIES=$2; shift 2;;
    --keep) KEEP=1; shift;;
    -h|--help) sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d'; exit 0;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
  esac
done
if [ "$QUICK" = 1 ]; then : "${REPEAT:=1}" "${PATIENTS:=15000}" "${RANDOM_MIB:=100}"
else : "${REPEAT:=3}" "${PATIENTS:=150000}" "${RANDOM_MIB:=1024}"; fi
for v in "$REPEAT" "$PATIENTS" "$WAIT_IDLE" "$RETRIES" "$RANDOM_MIB" $MULTIPLES ${CZT:+"$CZT"}; do
  case "$v" in ''|*[!0-9]*) echo "not a number: '$v'" >&2; exit 2;; esac
done
[ "$REPEAT" -ge 1 ] || { echo "--repeat must be at least 1" >&2; exit 2; }
[ "$RANDOM_MIB" -ge 1 ] || { echo "--random-mib must be at least 1" >&2; exit 2; }
[ -n "${INPUT_KINDS// /}" ] || { echo "--inputs is empty" >&2; exit 2; }
for v in $INPUT_KINDS; do
  case "$v" in dump|basebackup|random) ;; *) echo "unknown input kind: '$v' (dump, basebackup, random)" >&2; exit 2;; esac
done

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "error: $*"; exit 1; }
has_tool() { case " $TOOLS " in *" $1 "*) return 0;; *) return 1;; esac; }

# ------------------------------------------------------------------ prerequisites
# apt_install PKG...: install Debian packages (as root only: never sudo behind the user's back).
apt_install() {
  [ "$(id -u)" = 0 ] || die "missing: $* (as root: apt-get install -y $*)"
  say "installing the Debian package(s) $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } \
    || die "cannot install $* (apt-get install -y $*)"
}
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }   # A >= B
[ -x /usr/bin/time ] || apt_install time
for c in cmp diff; do command -v "$c" >/dev/null || die "$c is missing (diffutils)"; done
PKGS=()
if has_tool restic && ! command -v restic >/dev/null; then PKGS+=(restic); fi
if has_tool borg && ! command -v borg >/dev/null; then PKGS+=(borgbackup); fi
[ ${#PKGS[@]} = 0 ] || apt_install "${PKGS[@]}"
# The flags below need restic >= 0.14 (repository v2, --compression) and borg 1.x >= 1.1.4
# (repokey-blake2, zstd); borg 2 has another command line (rcreate, --repo).
if has_tool restic; then
  v=$(restic version | awk '{print $2; exit}')
  version_ge "$v" 0.14.0 || die "restic $v is too old: repository v2 and --compression need restic >= 0.14"
fi
if has_tool borg; then
  v=$(borg --version | awk '{print $2; exit}')
  { version_ge "$v" 1.1.4 && ! version_ge "$v" 2.0.0a0; } || die "borg $v: this script drives borg 1.x (>= 1.1.4)"
fi

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
# What the next measurement reads (set by step: the input for a backup, the tool's repository
# or stores for a restore), read again right before it starts: this machine runs DAMON with a
# `pageout` scheme (/sys/kernel/mm/damon/admin/kdamonds: pages idle for ~60 s are reclaimed),
# so a page cache warmed once per input goes cold during the other tools' runs and the wait
# for an idle machine, and whichever tool ran after a pause paid for disk reads (seen as 1.5 s
# more system time and +25 % wall time for coffre in the first full run of 2026-11-28).
WARM_PATHS=()
measure() {
  local out=$1 err=$2 p; shift 2
  sync
  wait_idle
  for p in "${WARM_PATHS[@]}"; do if [ -e "$p" ]; then warm "$p"; fi; done
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
# record INPUT TOOL OP REP IN_BYTES STORED_BYTES ROLE
# ROLE (backup, restore or restore-fsync) says which rows are compared across tools: each tool
# names its operations its own way (zstd: "compress -3 -T2"...).
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$M_SECS" "$M_RSS_KB" "$M_CPU" "$M_OTHER" "$M_SYS" "$7" >> "$RESULTS"; }
fsize() { stat -c %s "$1"; }
dsize() { du -sb "$1" | awk '{print $1}'; }
# isize PATH: the bytes of data in PATH (a file, or the regular files of a directory tree: the
# throughput of a directory is that of its contents, not of du's block and directory counts).
isize() {
  if [ -d "$1" ]; then find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'
  else fsize "$1"; fi
}
same() { # ORIGINAL COPY WHAT: equal bytes for a file; for a directory the same tree (every file,
         # directory and symlink, contents compared; permissions, owners and times aside)
  if [ -d "$1" ]; then
    [ -d "$2" ] || die "$3: $2 is not a directory (restored from $1)"
    diff -r -q --no-dereference "$1" "$2" > "$WORK/diff.txt" 2>&1 \
      || { head -n 20 "$WORK/diff.txt" >&2; die "$3: $2 differs from $1"; }
  else
    [ -f "$2" ] || die "$3: $2 is missing (restored from $1)"
    cmp -s "$1" "$2" || die "$3: $2 differs from $1"
  fi
}

# ------------------------------------------------------------------ tools
# A tool NAME provides:
#   NAME_backup INPUT LABEL REP    back up / compress INPUT (a file or a directory; one or more
#                                  measure + record calls, role backup)
#   NAME_restore INPUT LABEL REP   restore what NAME_backup made, check it equals INPUT (same),
#                                  record (role restore)
#   NAME_cleanup                   remove what both left behind
# and NAME_version (one line). Only the backup and restore commands are measured: repository
# creation, key set-up and checks are not.

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
  ! grep -qE '"\.\.?/' "$d/coffre.toml" || die "a relative path is left in $d/coffre.toml"
  "$COFFRE" --config "$d/coffre.toml" check-config > "$d/check.log" 2>&1 \
    || { cat "$d/check.log" >&2; die "temporary coffre config is not valid"; }
}
COFFRE_ID=
coffre_backup() { # a directory is tarred by coffre itself (sorted order)
  local in=$1 label=$2 rep=$3 d=$WORK/coffre
  rm -rf "$d"; coffre_config "$d"
  measure "$d/id" "$d/backup.log" "$COFFRE" --config "$d/coffre.toml" --log-format text backup --source emr "$in" \
    || { tail -n 20 "$d/backup.log" >&2; die "coffre backup failed"; }
  COFFRE_ID=$(tail -n 1 "$d/id")
  # Bytes stored: one of the two stores (both hold the same objects), comparable to one repository.
  record "$label" coffre backup "$rep" "$(isize "$in")" "$(dsize "$d/stores/store-1")" backup
}
coffre_restore() {
  local in=$1 label=$2 rep=$3 d=$WORK/coffre
  rm -rf "$d/restored"
  measure /dev/null "$d/restore.log" "$COFFRE" --config "$d/coffre.toml" --log-format text restore "$COFFRE_ID" \
      --source emr --to "$d/restored" --purpose "benchmark run (benches/run.sh)" \
    || { tail -n 20 "$d/restore.log" >&2; die "coffre restore failed"; }
  record "$label" coffre restore "$rep" "$(isize "$d/restored")" "$(dsize "$d/stores/store-1")" restore
  same "$in" "$d/restored" "coffre restore"
  rm -rf "$d/restored"
}
coffre_cleanup() { rm -rf "$WORK/coffre"; }

# --- zstd: the reference, level 3 on 2 threads to a file, and decompression to a file. A
# directory goes through tar (sorted like coffre's), so the operations are labelled with tar.
zstd_version() { zstd --version | head -n 1; echo "# $(tar --version | head -n 1) (directories: tar --sort=name | zstd)"; }
# shellcheck disable=SC2016  # the bash -c / sh -c scripts expand their own $1, $2
zstd_backup() {
  local in=$1 label=$2 rep=$3 d=$WORK/zstd
  rm -rf "$d"; mkdir -p "$d"
  if [ -d "$in" ]; then
    measure /dev/null "$d/compress.log" bash -c 'set -o pipefail; tar -C "$1" --sort=name -cf - . | zstd -3 -T2 -q -f -o "$2"' \
        bash "$in" "$d/in.zst" \
      || { cat "$d/compress.log" >&2; die "tar | zstd failed"; }
    record "$label" zstd "tar | zstd -3 -T2" "$rep" "$(isize "$in")" "$(fsize "$d/in.zst")" backup
  else
    measure /dev/null "$d/compress.log" zstd -3 -T2 -q -f -o "$d/in.zst" "$in" \
      || { cat "$d/compress.log" >&2; die "zstd failed"; }
    record "$label" zstd "compress -3 -T2" "$rep" "$(isize "$in")" "$(fsize "$d/in.zst")" backup
  fi
}
# shellcheck disable=SC2016  # (as above)
zstd_restore() {
  local in=$1 label=$2 rep=$3 d=$WORK/zstd op
  rm -rf "$d/out"
  if [ -d "$in" ]; then
    op="zstd -d | tar -x"
    measure /dev/null "$d/decompress.log" bash -c 'set -o pipefail; mkdir "$2" && zstd -d -q -c "$1" | tar -C "$2" -xf -' \
        bash "$d/in.zst" "$d/out" \
      || { cat "$d/decompress.log" >&2; die "zstd -d | tar -x failed"; }
  else
    op="decompress"
    measure /dev/null "$d/decompress.log" zstd -d -q -f -o "$d/out" "$d/in.zst" \
      || { cat "$d/decompress.log" >&2; die "zstd -d failed"; }
  fi
  record "$label" zstd "$op" "$rep" "$(isize "$d/out")" "$(fsize "$d/in.zst")" restore
  same "$in" "$d/out" "$op"
  rm -rf "$d/out"
  if [ "$FSYNC_REF" = 1 ]; then
    # sync FILE... fsyncs exactly those files (every restored file for a directory).
    if [ -d "$in" ]; then
      op="zstd -d | tar +fsync"
      measure /dev/null "$d/decompress.log" bash -c 'set -o pipefail; mkdir "$2" && zstd -d -q -c "$1" | tar -C "$2" -xf - && find "$2" -type f -exec sync {} +' \
          bash "$d/in.zst" "$d/out" \
        || { cat "$d/decompress.log" >&2; die "zstd -d | tar -x + sync failed"; }
    else
      op="decompress+fsync"
      measure /dev/null "$d/decompress.log" sh -c 'zstd -d -q -f -o "$1" "$2" && sync "$1"' sh "$d/out" "$d/in.zst" \
        || { cat "$d/decompress.log" >&2; die "zstd -d + sync failed"; }
    fi
    record "$label" zstd "$op" "$rep" "$(isize "$d/out")" "$(fsize "$d/in.zst")" restore-fsync
    rm -rf "$d/out"
  fi
}
zstd_cleanup() { rm -rf "$WORK/zstd"; }

# --- restic (Debian's package): a fresh repository format v2 with compression "auto" (restic's
# default zstd level) per backup. The cache (RESTIC_CACHE_DIR) and restic's temporary pack files
# (TMPDIR) live next to the repository, so nothing outside $WORK is used or reused. The
# repository is given by absolute path: `restic restore --target T` writes INPUT under T$INPUT.
RC=()
restic_cmd() { # DIR: RC = the restic command for the repository in DIR
  RC=(env "RESTIC_REPOSITORY=$1/repo" "RESTIC_PASSWORD_FILE=$1/password" "RESTIC_CACHE_DIR=$1/cache"
      "TMPDIR=$1/tmp" restic)
}
restic_version() { echo "$(restic version) (init --repository-version 2, backup --compression auto)"; }
restic_backup() {
  local in=$1 label=$2 rep=$3 d=$WORK/restic
  rm -rf "$d"; mkdir -p "$d/tmp"
  echo "coffre-bench-$RANDOM$RANDOM" > "$d/password"
  restic_cmd "$d"
  "${RC[@]}" init --repository-version 2 > "$d/init.log" 2>&1 \
    || { cat "$d/init.log" >&2; die "restic init failed"; }
  measure "$d/backup.out" "$d/backup.log" "${RC[@]}" backup --compression auto "$in" \
    || { tail -n 20 "$d/backup.out" "$d/backup.log" >&2; die "restic backup failed"; }
  record "$label" restic backup "$rep" "$(isize "$in")" "$(dsize "$d/repo")" backup
}
restic_restore() {
  local in=$1 label=$2 rep=$3 d=$WORK/restic
  rm -rf "$d/restored"
  restic_cmd "$d"
  measure "$d/restore.out" "$d/restore.log" "${RC[@]}" restore latest --target "$d/restored" \
    || { tail -n 20 "$d/restore.out" "$d/restore.log" >&2; die "restic restore failed"; }
  record "$label" restic restore "$rep" "$(isize "$d/restored$in")" "$(dsize "$d/repo")" restore
  same "$in" "$d/restored$in" "restic restore"
  rm -rf "$d/restored"
}
restic_cleanup() { rm -rf "$WORK/restic"; }

# --- borg 1.x (Debian's package borgbackup): a fresh repository per backup, repokey-blake2
# (AES-256-CTR + BLAKE2b MAC, key in the repository), zstd level 3. BORG_BASE_DIR keeps borg's
# cache, config and security folders next to the repository; the passphrase comes from the
# environment, and the *_IS_OK answers keep borg from ever prompting. borg stores an absolute
# path without its leading slash and extracts into the current directory.
BC=()
borg_cmd() { # DIR: BC = the borg command for the repository in DIR
  BC=(env "BORG_REPO=$1/repo" "BORG_PASSPHRASE=coffre-bench" "BORG_BASE_DIR=$1/base"
      BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=no
      BORG_DISPLAY_PASSPHRASE=no BORG_CHECK_I_KNOW_WHAT_I_AM_DOING=NO BORG_DELETE_I_KNOW_WHAT_I_AM_DOING=NO borg)
}
borg_version() { echo "$(borg --version) (init --encryption repokey-blake2, create --compression zstd,3)"; }
borg_backup() {
  local in=$1 label=$2 rep=$3 d=$WORK/borg
  rm -rf "$d"; mkdir -p "$d/base"
  borg_cmd "$d"
  "${BC[@]}" init --encryption repokey-blake2 > "$d/init.log" 2>&1 \
    || { cat "$d/init.log" >&2; die "borg init failed"; }
  measure /dev/null "$d/create.log" "${BC[@]}" create --compression zstd,3 ::bench "$in" \
    || { tail -n 20 "$d/create.log" >&2; die "borg create failed"; }
  record "$label" borg backup "$rep" "$(isize "$in")" "$(dsize "$d/repo")" backup
}
borg_restore() {
  local in=$1 label=$2 rep=$3 d=$WORK/borg
  rm -rf "$d/restored"; mkdir -p "$d/restored"
  borg_cmd "$d"
  measure /dev/null "$d/extract.log" env -C "$d/restored" "${BC[@]}" extract ::bench \
    || { tail -n 20 "$d/extract.log" >&2; die "borg extract failed"; }
  record "$label" borg restore "$rep" "$(isize "$d/restored/${in#/}")" "$(dsize "$d/repo")" restore
  same "$in" "$d/restored/${in#/}" "borg extract"
  rm -rf "$d/restored"
}
borg_cleanup() { rm -rf "$WORK/borg"; }

for t in $TOOLS; do
  for f in backup restore cleanup version; do
    declare -F "${t}_$f" >/dev/null || die "unknown tool $t (no function ${t}_$f)"
  done
done

# ------------------------------------------------------------------ inputs
# The project's own generator, cached per patient count in $DATA/emr-N/: emr.sql (with
# counts.txt) and basebackup/ (complete once its backup_manifest, written last, is there).
# emr_for N PART (emr.sql or basebackup) -> its path; generates the database if PART is missing
# and keeps every missing part of that one generation. The generator is random, so when only
# basebackup/ is missing (a cache from before it was kept) the existing emr.sql is kept as it
# is (others may be measuring with it) and basebackup.note says the two come from different runs.
emr_for() {
  local n=$1 part=$2 dir=$DATA/emr-$1
  local have_sql=0 have_bb=0
  [ -s "$dir/emr.sql" ] && have_sql=1
  [ -f "$dir/basebackup/backup_manifest" ] && have_bb=1
  if { [ "$part" = emr.sql ] && [ $have_sql = 0 ]; } || { [ "$part" = basebackup ] && [ $have_bb = 0 ]; }; then
    local gen=$DATA/emr-$n.gen t0=$SECONDS
    rm -rf "$gen"
    say "generating the EMR database with $n patients for its $part (once; cached in $dir)"
    "$ROOT/tests/testdata/make-emr-db.sh" --out "$gen" --patients "$n" --port $((54000 + $$ % 1000)) >&2 \
      || die "tests/testdata/make-emr-db.sh failed"
    mkdir -p "$dir"
    if [ $have_sql = 0 ]; then
      mv "$gen/emr.sql" "$gen/counts.txt" "$dir/"
      rm -f "$dir/basebackup.note"
    fi
    if [ $have_bb = 0 ]; then
      rm -rf "$dir/basebackup"
      mv "$gen/basebackup" "$dir/basebackup"
      [ $have_sql = 0 ] || { echo "basebackup/ generated $(date -u +%FT%TZ), separately from emr.sql (same generator and patient count, other random rows)"
                             cat "$gen/counts.txt"; } > "$dir/basebackup.note"
    fi
    rm -rf "$gen"     # emr.dump (custom format) is not used here
    say "generated $dir/$part ($(($(isize "$dir/$part") / 1048576)) MiB) in $((SECONDS - t0)) s"
  fi
  echo "$dir/$part"
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
random_for() { # MIB -> $DATA/random-<size>.bin: MIB MiB from /dev/urandom, made once
  local mib=$1 f
  if [ $((mib % 1024)) = 0 ]; then f=$DATA/random-$((mib / 1024))G.bin; else f=$DATA/random-${mib}M.bin; fi
  if [ ! -f "$f" ] || [ "$(fsize "$f")" != $((mib * 1048576)) ]; then
    say "writing $mib MiB of random bytes to $f"
    head -c $((mib * 1048576)) /dev/urandom > "$f.tmp"
    mv "$f.tmp" "$f"
  fi
  echo "$f"
}
warm() { # PATH: read it once so every tool starts with the same warm page cache
  if [ -d "$1" ]; then find "$1" -type f -exec cat {} + > /dev/null; else cat "$1" > /dev/null; fi
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

# INPUTS/LABELS: every input in the order measured; DUMP_LABELS: the dump's multiples (the
# targets are for the dump, and the flat-memory check compares its smallest and largest).
INPUTS=() LABELS=() DUMP_LABELS=()
for kind in $INPUT_KINDS; do
  case "$kind" in
    dump)
      DUMP=$(emr_for "$PATIENTS" emr.sql)
      for k in $MULTIPLES; do
        INPUTS+=("$(input_for "$DUMP" "$k")")
        if [ "$k" = 1 ]; then LABELS+=(dump); else LABELS+=("dump-x$k"); fi
        DUMP_LABELS+=("${LABELS[-1]}")
      done;;
    basebackup) INPUTS+=("$(emr_for "$PATIENTS" basebackup)"); LABELS+=(basebackup);;
    random) INPUTS+=("$(random_for "$RANDOM_MIB")"); LABELS+=(random);;
  esac
done

{
  echo "# coffre benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(hostname)"
  echo "# cpu: $(nproc) x $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), RAM $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  for t in $TOOLS; do echo "# $("${t}_version")"; done
  echo "# repeats: $REPEAT; coffre zstd-threads: ${CZT:-as config/coffre.toml}; inputs ($PATIENTS patients):"
  for i in "${!INPUTS[@]}"; do
    printf '#   %-10s %9.1f MB  %s%s\n' "${LABELS[$i]}" "$(isize "${INPUTS[$i]}" | awk '{print $1 / 1e6}')" "${INPUTS[$i]}" \
      "$([ -d "${INPUTS[$i]}" ] && echo " ($(find "${INPUTS[$i]}" -type f | wc -l) files)")"
  done
  if [ -f "$DATA/emr-$PATIENTS/basebackup.note" ] && case " $INPUT_KINDS " in *" basebackup "*) true;; *) false;; esac; then
    echo "# note: $(head -n 1 "$DATA/emr-$PATIENTS/basebackup.note")"
  fi
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$WORK/header.txt"

# step TOOL OP INPUT LABEL REP: run TOOL_OP; if another process used noticeable CPU during one
# of its measurements (more than 0.5 s + 10% of one CPU), drop them and do it again (--retries).
step() {
  local t=$1 op=$2 n0 try
  for ((try = 0; ; try++)); do
    say "  $4 rep $5/$REPEAT: $t $op$([ "$try" = 0 ] || echo " (again, $try)")"
    n0=$(wc -l < "$RESULTS")
    if [ "$op" = backup ]; then WARM_PATHS=("$3"); else WARM_PATHS=("$WORK/$t"); fi
    "${t}_$op" "$3" "$4" "$5"
    WARM_PATHS=()
    tail -n +$((n0 + 1)) "$RESULTS" | awk -F'\t' '$10 > 0.5 + 0.1 * $7 {bad = 1} END {exit !bad}' || return 0
    if [ "$try" -ge "$RETRIES" ]; then say "    other processes used CPU during this measurement: kept (out of --retries)"; return 0; fi
    say "    other processes used CPU during this measurement: measuring again"
    head -n "$n0" "$RESULTS" > "$RESULTS.tmp" && mv "$RESULTS.tmp" "$RESULTS"
  done
}

for i in "${!INPUTS[@]}"; do
  in=${INPUTS[$i]} label=${LABELS[$i]}
  say "input $label: $in"
  warm "$in"
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
# One table, rows in the order measured. "vs zstd": MB/s over zstd's on the same input
# (backup rows over zstd's compression, restore rows over its plain decompression).
# On stderr, for the targets below: input, tool, role, MB/s, peak RSS MiB, bytes stored.
awk -F'\t' '
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
    if (!(k in secs)) { order[++nk] = k; lab[k] = $1; tool[k] = $2; op[k] = $3; role[k] = $12 }
    inb[k] = $5; outb[k] = $6; secs[k] = secs[k] " " $7; cpu[k] = cpu[k] " " $9; sys[k] = sys[k] " " $11
    if ($8 > rss[k]) rss[k] = $8
    if ($10 > other[k]) other[k] = $10
  }
  END {
    for (i = 1; i <= nk; i++) {
      k = order[i]; s = median(secs[k]); mbps[k] = (s > 0 ? inb[k] / 1e6 / s : 0)
      if (tool[k] == "zstd" && role[k] != "restore-fsync") ref[lab[k], role[k]] = mbps[k]
    }
    fmt = "%-10s %-7s %-20s %9s %9s %13s %9s %7s %10s %9s %7s %7s %7s\n"
    printf fmt, "input", "tool", "operation", "input MB", "seconds", "(min-max)", "MB/s", "vs", "peak RSS", "stored MB", "CPU s", "sys s", "other"
    printf fmt, "", "", "", "", "(median)", "", "of input", "zstd", "MiB (max)", "(1 copy)", "(med)", "(med)", "CPU s"
    for (i = 1; i <= nk; i++) {
      k = order[i]; s = median(secs[k])
      z = ref[lab[k], (role[k] == "backup" ? "backup" : "restore")]
      printf "%-10s %-7s %-20s %9.1f %9.2f %13s %9.1f %7s %10.1f %9.1f %7.2f %7.2f %7.2f\n", lab[k], tool[k], op[k],
        inb[k] / 1e6, s, minmax(secs[k]), mbps[k], (z > 0 ? sprintf("%.2f", mbps[k] / z) : "-"), rss[k] / 1024,
        outb[k] / 1e6, median(cpu[k]), median(sys[k]), other[k]
      printf "%s\t%s\t%s\t%s\t%s\t%s\n", lab[k], tool[k], role[k], mbps[k], rss[k] / 1024, outb[k] > "/dev/stderr"
    }
  }' "$RESULTS" 2> "$WORK/summary.txt" | tee "$WORK/table.txt"

# Targets, each a ratio of medians on the same input:
#   coffre backup >= 0.9 x zstd -3 -T2, restore >= 0.8 x zstd -d; peak RSS < 256 MiB, and within
#   1.2x from the smallest to the largest dump (memory stays flat with the input size);
#   coffre backup >= 2.2 x restic and borg, with no more bytes stored (one coffre store against
#   one repository); restore >= 1.3 x restic and >= 2.5 x borg; coffre peak RSS (backup, and
#   restore) no higher than the lower of restic's and borg's.
# They are targets (met / missed) on the dump inputs, the restic/borg ones on the first dump input
# only (the ~1 GiB dump): dump-xK repeats the dump K times, which restic and borg deduplicate and
# coffre and zstd do not. The other rows are reported the same way, verdict in parentheses. A check
# whose tools are not all in --tools is left out.
echo
awk -F'\t' -v labels="${LABELS[*]}" -v dumps="${DUMP_LABELS[*]}" '
  { V[$1, $2, $3] = $4; R[$1, $2, $3] = $5; S[$1, $2, $3] = $6; T[$2] = 1 }
  # line INPUT CHECK VALUE TARGET OK FMT SCOPE: SCOPE "dump" (any dump input) or "main" (the first)
  function line(l, what, value, target, ok, fmt, scope,   v, t) {
    t = (scope == "main") ? (l == D[1]) : (l in isdump)
    v = t ? (ok ? "met" : "missed") : (ok ? "(met)" : "(missed)")
    if (t && target != "(info)") { nt++; if (ok) nm++ }
    printf "%-12s %-46s " fmt " %9s  %s\n", l, what, value, target, (target == "(info)" ? "" : v)
  }
  END {
    nl = split(labels, L, " "); nd = split(dumps, D, " ")
    for (i = 1; i <= nd; i++) isdump[D[i]] = 1
    printf "%-12s %-46s %8s %9s  %s\n", "input", "check", "value", "target", ""
    for (i = 1; i <= nl; i++) {
      l = L[i]
      if (!((l, "coffre", "backup") in V)) continue
      cb = V[l, "coffre", "backup"]; cr = V[l, "coffre", "restore"]
      if ((l, "zstd", "backup") in V) {
        line(l, "coffre backup / zstd -3 -T2 (MB/s)", cb / V[l, "zstd", "backup"], ">= 0.90", cb / V[l, "zstd", "backup"] >= 0.9, "%8.2f", "dump")
        line(l, "coffre restore / zstd -d (MB/s)", cr / V[l, "zstd", "restore"], ">= 0.80", cr / V[l, "zstd", "restore"] >= 0.8, "%8.2f", "dump")
        if ((l, "zstd", "restore-fsync") in V)
          line(l, "coffre restore / (zstd -d + fsync) (MB/s)", cr / V[l, "zstd", "restore-fsync"], "(info)", 1, "%8.2f", "dump")
      }
      line(l, "coffre backup peak RSS (MiB)", R[l, "coffre", "backup"], "< 256", R[l, "coffre", "backup"] < 256, "%8.1f", "dump")
      line(l, "coffre restore peak RSS (MiB)", R[l, "coffre", "restore"], "< 256", R[l, "coffre", "restore"] < 256, "%8.1f", "dump")
      nx = 0
      for (j = 1; j <= 2; j++) {
        x = (j == 1) ? "restic" : "borg"; want = (j == 1) ? 1.3 : 2.5
        if (!((l, x, "backup") in V)) continue
        nx++
        q = cb / V[l, x, "backup"]
        line(l, "coffre backup / " x " backup (MB/s)", q, ">= 2.20", q >= 2.2, "%8.2f", "main")
        q = S[l, "coffre", "backup"] / S[l, x, "backup"]
        line(l, "coffre stored / " x " stored (bytes)", q, "<= 1.00", q <= 1, "%8.2f", "main")
        q = cr / V[l, x, "restore"]
        line(l, "coffre restore / " x " restore (MB/s)", q, sprintf(">= %.2f", want), q >= want, "%8.2f", "main")
      }
      if (nx > 0) {
        for (j = 1; j <= 2; j++) {
          o = (j == 1) ? "backup" : "restore"; lo = ""; who = ""
          for (x in T) if ((x == "restic" || x == "borg") && (l, x, o) in R && (lo == "" || R[l, x, o] < lo)) { lo = R[l, x, o]; who = x }
          line(l, "coffre " o " peak RSS (MiB), lowest: " who, R[l, "coffre", o], sprintf("<= %.1f", lo), R[l, "coffre", o] <= lo, "%8.1f", "main")
        }
      }
    }
    if (nd >= 2 && (D[1], "coffre", "backup") in R && (D[nd], "coffre", "backup") in R) {
      a = D[1]; z = D[nd]
      for (j = 1; j <= 2; j++) {
        o = (j == 1) ? "backup" : "restore"
        q = R[z, "coffre", o] / R[a, "coffre", o]
        printf "%-12s %-46s %8.2f %9s  %s\n", z "/" a, "coffre " o " peak RSS ratio", q, "<= 1.20", (q <= 1.2 ? "met" : "missed")
        nt++; if (q <= 1.2) nm++
      }
    }
    if (nt > 0) printf "targets on the dump input%s: %d of %d met\n", (nd > 1 ? "s" : ""), nm, nt
    if (nd > 1 && (("restic" in T) || ("borg" in T)))
      printf "(restic/borg targets on %s only: the repeated dumps are deduplicated by restic and borg)\n", D[1]
    else print "(no targets: they need coffre in --tools and the dump in --inputs)"
  }' "$WORK/summary.txt"
echo
echo "# vs zstd: MB/s over zstd's on the same input (its compression for backups, its plain"
echo "# decompression for restores). stored MB: coffre one of its two stores, restic/borg the"
echo "# repository, zstd the .zst. CPU s: user+sys of the measured command (sys s: the kernel part);"
echo "# other CPU s: (max over repeats) CPU time used by other processes during the run. Raw (input"
echo "# tool operation rep in_bytes stored_bytes seconds rss_kb cpu_s other_cpu_s sys_s role):"
sed 's/^/#   /' "$RESULTS"
