#!/usr/bin/env bash
# WAL archiving and point-in-time restore benchmark: coffre (wal-push through the daemon, restore
# --target-latest --replay) side by side with pgBackRest (archive-push, synchronous and
# asynchronous; restore --type=default and PostgreSQL replaying to the end of the archive), on
# the same pgbench workload, each tool on a fresh PostgreSQL 15 cluster.
#
#   benches/wal.sh [--quick] [--scale S] [--seconds T]
#                  [--runs "coffre coffre-async pgbackrest-sync pgbackrest-async"]
#                  [--during-load] [--no-build] [--keep] [--coffre-level L]
#
#   --quick            small workload (scale 20, 60 s of pgbench: ~300 MiB of WAL); a sanity run
#   --scale S          pgbench -i -s S (default 80)
#   --seconds T        pgbench -T T -c 2 -j 2 -M prepared (default 150: ~1-1.5 GiB of WAL on 2 cores;
#                      most of it full-page images: the first change of each page after the base
#                      backup's checkpoint)
#   --runs "..."       what to measure, in order (default all four):
#                        coffre            archive_command = coffre wal-push --source emr %p
#                                          (through the daemon's socket)
#                        coffre-async      the same with [source.pitr] archive-async = true,
#                                          archive-parallel = 4 (acknowledged from the local spool;
#                                          "archive s" runs until the spool has drained into both
#                                          stores, the acknowledgements' own time is in the notes)
#                        pgbackrest-sync   pgbackrest archive-push %p, archive-async=n
#                        pgbackrest-async  the same with archive-async=y, process-max=2
#   --during-load      archive while pgbench runs (archive s is then the lag after pgbench ends,
#                      MB/s and segments/s over pgbench start to the last segment archived, which
#                      is mostly how fast pgbench writes WAL). Default: backlog mode, see below.
#   --no-build         use target/release/coffre as it is (default: cargo build --release)
#   --keep             keep the scratch folder (clusters, stores, repositories, logs)
#   --coffre-level L   coffre's [source.pitr] zstd-level (default: coffre's own default, 1;
#                      3 compresses WAL as pgBackRest's compress-level=3 does)
#
# Every run: initdb (wal_level=replica, archive_mode=on, max_wal_size=4GB, checkpoint_timeout=30min,
# synchronous_commit=off for the load generator, no TCP, a private socket folder), the tool's archive_command, pgbench -i -s S, a base backup
# (coffre: pg_basebackup -Fp -X stream into the watched folder, protected in 2 stores; pgBackRest:
# backup --type=full --start-fast into repo1), everything archived, then the load.
# Backlog mode (default): archive_command is set to '' during the load (PostgreSQL keeps the WAL
# and marks it .ready), then set back and reloaded after pg_switch_wal(): "archive s" is the time
# the tool takes to archive the whole backlog, with nothing else running on the machine: its own
# throughput. Restore: the primary is stopped, then
#   coffre:     runuser -u coffrebenchop -- coffre restore --source emr --to DIR --target-latest --replay
#               (an operator made for the bench: postgres is the archiver, which may not restore)
#   pgBackRest: pgbackrest restore (type default: replay to the end of the archive) into DIR, then
#               PostgreSQL started on DIR (archive_mode=off, like coffre's --replay) until
#               pg_is_in_recovery() is false, then stopped (fast), like coffre's --replay.
# Both timed whole (restore of the base backup + WAL replay); the restored database is then
# started (untimed) and checked against the primary (pgbench_history rows, sum of abalance).
# pgBackRest: zst level 3, aes-256-cbc on both repositories (repo1, repo2: coffre writes both its
# stores too, encrypted), run as user postgres. MB = 10^6 bytes; segments are 16 MiB.
# Needs: PostgreSQL 15 (tests/setup.sh), pgbackrest (Debian package; installed when run as root),
# jq, curl. Run as root (the daemon reads the WAL files itself; server programs run as postgres).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

QUICK=0 SCALE= SECS= RUNS="coffre coffre-async pgbackrest-sync pgbackrest-async" DURING=0 BUILD=1 KEEP=0 CLEVEL=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift;;
    --scale) SCALE=$2; shift 2;;
    --seconds) SECS=$2; shift 2;;
    --runs) RUNS=${2//,/ }; shift 2;;
    --during-load) DURING=1; shift;;
    --no-build) BUILD=0; shift;;
    --keep) KEEP=1; shift;;
    --coffre-level) CLEVEL=$2; shift 2;;
    -h|--help) sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d'; exit 0;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2;;
  esac
done
if [ "$QUICK" = 1 ]; then : "${SCALE:=20}" "${SECS:=60}"; else : "${SCALE:=80}" "${SECS:=150}"; fi
for v in "$SCALE" "$SECS" ${CLEVEL:+"$CLEVEL"}; do
  case "$v" in ''|*[!0-9]*) echo "not a number: '$v'" >&2; exit 2;; esac
done
for r in $RUNS; do
  case "$r" in coffre|coffre-async|pgbackrest-sync|pgbackrest-async) ;; *) echo "unknown run: $r" >&2; exit 2;; esac
done

say() { echo "[wal.sh $(date +%H:%M:%S)] $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (the coffre daemon reads the WAL files; servers run as postgres)"
id postgres >/dev/null 2>&1 || die "no user postgres: run tests/setup.sh (PostgreSQL 15)"
[ -x "$PGBIN/postgres" ] || die "PostgreSQL 15 is not at $PGBIN: run tests/setup.sh"
missing=()
case " $RUNS " in *" pgbackrest-"*) command -v pgbackrest >/dev/null || missing+=(pgbackrest);; esac
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >/dev/null \
    || die "could not install ${missing[*]}"
fi

WORK=$(mktemp -d /tmp/coffre-walbench.XXXXXX)
chmod 755 "$WORK"     # user postgres reaches its clusters, sockets and repositories under it
PIDS=()               # background processes we started (daemon, RSS samplers)
CLUSTERS=()           # data dirs that may have a running postmaster
cleanup() {
  local rc=$? p d
  set +e
  for d in "${CLUSTERS[@]}"; do
    [ -f "$d/postmaster.pid" ] && (cd "$WORK" && setpriv --reuid=postgres --regid=postgres --init-groups -- \
      "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop) >/dev/null 2>&1
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  if [ "$KEEP" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

as_pg() { (cd "$WORK" && setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"); }
SOCK= DATA=
psql_() { as_pg "$PGBIN/psql" -X -h "$SOCK" -p 5432 -U postgres -d postgres -Atq -v ON_ERROR_STOP=1 -c "$1"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# ------------------------------------------------------------------ build
COFFRE_SRC=$TARGET_DIR/release/coffre
if [ "$BUILD" = 1 ]; then
  say "cargo build --release (CARGO_TARGET_DIR=$TARGET_DIR)"
  (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -q) || die "cargo build --release failed"
fi
COFFRE=$WORK/bin/coffre
case " $RUNS " in *" coffre "*|*" coffre-async "*)
  [ -x "$COFFRE_SRC" ] || die "$COFFRE_SRC is missing (drop --no-build)"
  # A private copy (the RSS sampler finds this run's processes by its path), readable by postgres.
  mkdir -p "$WORK/bin"; cp "$COFFRE_SRC" "$COFFRE"; chmod 755 "$WORK/bin" "$COFFRE";;
esac

# ------------------------------------------------------------------ helpers
# sample_rss PATTERN OUT: until killed, the largest VmHWM (kB) of any one process whose command
# line matches PATTERN (pgrep -f: only this run's processes, not other coffre daemons on the
# machine), with its pid and command line -> OUT ("kB pid args")
sample_rss() {
  local max=0 p k v _
  echo 0 > "$2"
  while :; do
    for p in $(pgrep -f -- "$1" || true); do
      { while read -r k v _; do
          if [ "$k" = VmHWM: ] && [ "$v" -gt "$max" ]; then
            max=$v; echo "$max $p $(tr '\0' ' ' < "/proc/$p/cmdline" | cut -c1-120)" > "$2"
          fi
        done < "/proc/$p/status"; } 2>/dev/null || true
    done
    sleep 0.2
  done
}

# pg_init DIR ARCHIVE_COMMAND: a fresh cluster in DIR/data, socket in DIR/sock; sets SOCK, DATA
pg_init() {
  local d=$1
  mkdir -p "$d/data" "$d/sock"; chmod 755 "$d"; chown postgres:postgres "$d" "$d/data" "$d/sock"
  as_pg "$PGBIN/initdb" -D "$d/data" --auth=trust -E UTF8 --locale=C.UTF-8 -N -U postgres > "$d/initdb.log" 2>&1 \
    || { cat "$d/initdb.log" >&2; die "initdb failed"; }
  cat >> "$d/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$d/sock'
port = 5432
wal_level = replica
archive_mode = on
archive_command = '$2'
max_wal_size = 4GB
checkpoint_timeout = 30min
# Only so pgbench writes WAL faster than the disk's fsync rate allows (2 clients on 2 cores);
# archiving is not affected (each tool fsyncs what it archives).
synchronous_commit = off
EOF
  SOCK=$d/sock DATA=$d/data
  CLUSTERS+=("$d/data")
  as_pg "$PGBIN/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t 120 start > /dev/null \
    || { tail -n 20 "$d/postgres.log" >&2; die "PostgreSQL did not start"; }
}
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$1" -m fast -w -t 300 stop > /dev/null; }

# wait_archived SEGMENT: until pg_stat_archiver says SEGMENT (or later) is archived and the count
# stays put; fails after a while when nothing moves.
wait_archived() {
  local seg=$1 last=0 same=0 row done_ count failed
  local t=$SECONDS
  while :; do
    row=$(psql_ "SELECT coalesce(last_archived_wal, '') >= '$seg', archived_count, failed_count FROM pg_stat_archiver" | tr '|' ' ')
    read -r done_ count failed <<< "$row"
    if [ "$done_" = t ]; then
      if [ "$count" = "$last" ]; then same=$((same + 1)); else same=0; fi
      [ $same -ge 3 ] && return 0
    elif [ "$count" != "$last" ]; then t=$SECONDS
    fi
    last=$count
    [ $((SECONDS - t)) -lt 180 ] || die "archiving stalled before $seg (archived $count, failed $failed); see the logs in $WORK"
    sleep 0.2
  done
}
switch_wal() { psql_ "SELECT pg_walfile_name(pg_switch_wal())"; }
archived_count() { psql_ "SELECT archived_count FROM pg_stat_archiver"; }
checksum() { psql_ "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)"; }
dsize() { du -sb "$1" | cut -f1; }

# ------------------------------------------------------------------ the tools
# coffre: the daemon with the config shape of tests/it/e2e_pitr.rs (two local stores, pitr).
coffre_setup() { # DIR ASYNC(true|false) -> ARCHIVE_CMD, STATUS_PORT
  local d=$1 async=$2 port
  mkdir -p "$d/in" "$d/run"; chmod 755 "$d" "$d/run"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null \
         || echo $((19000 + $$ % 1000)))
  cat > "$d/coffre.toml" <<EOF
state-dir = "$d/state"
[replication]
min-sites = 2
retries = 1
backoff = "100ms"
[status]
listen = "127.0.0.1:$port"
[audit]
operators-group = "postgres"
[[source]]
name = "emr"
path = "$d/in"
complete = "marker"
[source.pitr]
window = "7d"
archive-async = $async
archive-parallel = 4
${CLEVEL:+zstd-level = $CLEVEL}
archiver = "postgres"
${DATA:+pg-wal = \"$DATA/pg_wal\"}

[[store]]
name = "a"
kind = "local"
site = "a"
jurisdiction = "CA-QC"
path = "$d/stores/a"
[[store]]
name = "b"
kind = "local"
site = "b"
jurisdiction = "CA-QC"
path = "$d/stores/b"
[[key-provider]]
name = "local"
kind = "file"
master-key = "$d/keys/master.key"
create-master-key = true
EOF
  RUNTIME_DIRECTORY=$d/run COFFRE_LOG=info "$COFFRE" --config "$d/coffre.toml" --log-format text daemon \
    < /dev/null > /dev/null 2> "$d/daemon.log" &
  DAEMON=$!; PIDS+=("$DAEMON")
  local t=$SECONDS
  until [ -S "$d/run/coffre.sock" ]; do
    kill -0 "$DAEMON" 2>/dev/null || { cat "$d/daemon.log" >&2; die "coffre daemon exited"; }
    [ $((SECONDS - t)) -lt 30 ] || { cat "$d/daemon.log" >&2; die "no control socket after 30 s"; }
    sleep 0.1
  done
  ARCHIVE_CMD="COFFRE_SOCKET=$d/run/coffre.sock $COFFRE wal-push --source emr %p"
  STATUS_PORT=$port
}
# metric NAME: the value of one unlabelled (or single-source) sample of the daemon's /metrics
metric() {
  curl -fsS "http://127.0.0.1:$STATUS_PORT/metrics" \
    | awk -v n="$1" '!found && ($1 == n || index($1, n "{") == 1) { v = $2; found = 1 } END { print (found ? v : "nan") }'
}
# wait_drained: until the daemon's spool (archive-async) is empty, every file in both stores
wait_drained() {
  local t=$SECONDS v
  while :; do
    v=$(metric coffre_wal_spool_files)
    [ "$v" = 0 ] && return 0
    [ $((SECONDS - t)) -lt 600 ] || die "the spool still holds $v files after 600 s; see $WORK"
    sleep 0.1
  done
}
coffre_base_backup() {
  local d=$1 t=$SECONDS out
  "$PGBIN/pg_basebackup" -h "$SOCK" -p 5432 -U postgres -D "$d/in/base-1" -Fp -X stream -c fast \
    > "$d/basebackup.log" 2>&1 || { cat "$d/basebackup.log" >&2; die "pg_basebackup failed"; }
  until out=$(COFFRE_LOG=warn "$COFFRE" --config "$d/coffre.toml" snapshots --json 2>>"$d/snapshots.log") \
        && jq -e 'any(.[]; (.stores | length) == 2)' <<< "$out" > /dev/null; do
    [ $((SECONDS - t)) -lt 300 ] || { tail -n 20 "$d/daemon.log" >&2; die "base backup not protected in 2 stores after 300 s"; }
    sleep 0.5
  done
}
coffre_restore() { # DIR -> RESTORED (a stopped, promoted data dir), REPLAY_NOTE
  local d=$1
  # postgres is the source's archiver, which may not restore: an operator (in the operators'
  # group, postgres) restores and replays, then hands the copy to postgres.
  id coffrebenchop > /dev/null 2>&1 || useradd -M -N -s /bin/sh -G postgres coffrebenchop
  mkdir -p "$d/pg"; chown coffrebenchop "$d/pg"
  (cd "$d/pg" && runuser -u coffrebenchop -- env COFFRE_SOCKET="$d/run/coffre.sock" COFFRE_LOG=warn "$COFFRE" \
     restore --source emr --to "$d/pg/restored" --target-latest --replay --purpose "bench (benches/wal.sh)") \
     > "$d/restore.out" 2>&1 || { tail -n 30 "$d/restore.out" "$d/pg/restored/coffre-replay.log" >&2; die "coffre restore failed"; }
  chown -R postgres:postgres "$d/pg"
  RESTORED=$d/pg/restored
  REPLAY_NOTE="coffre said: $(grep -o 'replayed to [^:]*' "$d/restore.out" | head -n 1)"
  REPLAY_S=$(grep -o 'replayed to [^:]* in [0-9.]* s' "$d/restore.out" | head -n 1 | awk '{ print $(NF - 1) }')
  : "${REPLAY_S:=nan}"
}
coffre_stored() { # the WAL archive of store a: <store>/wal/emr (the base backup aside)
  local w; w=$(find "$1/stores/a" -maxdepth 4 -type d -path '*/wal/emr' | head -n 1)
  if [ -n "$w" ]; then
    echo "$(dsize "$w") $(find "$w" -regextype posix-extended -mindepth 2 -maxdepth 2 -type d -regex '.*/[0-9A-F]{24}' | wc -l)"
  else echo "0 0"; fi
}
coffre_teardown() { kill "$DAEMON" 2>/dev/null || true; wait "$DAEMON" 2>/dev/null || true; }

# pgBackRest: two repositories, zst 3, aes-256-cbc, everything under DIR, run as postgres.
PGBR=()
pgbr_setup() { # DIR ASYNC(y|n) -> ARCHIVE_CMD
  local d=$1 async=$2
  mkdir -p "$d/repo1" "$d/repo2" "$d/lock" "$d/log" "$d/spool"; chmod 755 "$d"
  chown postgres:postgres "$d/repo1" "$d/repo2" "$d/lock" "$d/log" "$d/spool"
  cat > "$d/pgbackrest.conf" <<EOF
[global]
repo1-path=$d/repo1
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-$RANDOM$RANDOM$RANDOM
repo1-retention-full=1
repo2-path=$d/repo2
repo2-cipher-type=aes-256-cbc
repo2-cipher-pass=bench-$RANDOM$RANDOM$RANDOM
repo2-retention-full=1
compress-type=zst
compress-level=3
log-level-console=warn
log-level-file=info
lock-path=$d/lock
log-path=$d/log
spool-path=$d/spool
archive-async=$async
process-max=2
start-fast=y

[bench]
pg1-path=$DATA_PLANNED
pg1-socket-path=$SOCK_PLANNED
pg1-port=5432
EOF
  chmod 644 "$d/pgbackrest.conf"
  PGBR=(pgbackrest "--config=$d/pgbackrest.conf" --stanza=bench)
  ARCHIVE_CMD="${PGBR[*]} archive-push %p"
}
pgbr_post_start() { as_pg "${PGBR[@]}" stanza-create > "$1/stanza.log" 2>&1 || { cat "$1/stanza.log" >&2; die "stanza-create failed"; }; }
pgbr_base_backup() {
  as_pg "${PGBR[@]}" --type=full backup > "$1/backup.log" 2>&1 || { cat "$1/backup.log" >&2; die "pgbackrest backup failed"; }
}
pgbr_restore() { # DIR -> RESTORED
  local d=$1 t=$SECONDS
  mkdir -p "$d/pg/restored" "$d/pg/sock"; chown postgres:postgres "$d/pg" "$d/pg/restored" "$d/pg/sock"
  chmod 700 "$d/pg/restored"
  as_pg "${PGBR[@]}" "--pg1-path=$d/pg/restored" --type=default restore > "$d/restore.out" 2>&1 \
    || { cat "$d/restore.out" >&2; die "pgbackrest restore failed"; }
  CLUSTERS+=("$d/pg/restored")
  as_pg "$PGBIN/pg_ctl" -D "$d/pg/restored" -l "$d/pg/replay.log" -w -t 3600 \
    -o "-c archive_mode=off -c listen_addresses='' -c unix_socket_directories=$d/pg/sock -c port=5432" start > /dev/null \
    || { tail -n 30 "$d/pg/replay.log" >&2; die "the restored cluster did not start"; }
  until [ "$(as_pg "$PGBIN/psql" -X -h "$d/pg/sock" -p 5432 -U postgres -d postgres -Atqc 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
    [ $((SECONDS - t)) -lt 3600 ] || die "the restored cluster is still in recovery after an hour"
    sleep 0.1
  done
  pg_stop "$d/pg/restored"
  RESTORED=$d/pg/restored
  REPLAY_NOTE="pgBackRest: $(grep -Eo 'redo done at [0-9A-F/]+' "$d/pg/replay.log" | tail -n 1)"
  REPLAY_S=nan
}
pgbr_stored() { # bytes and WAL segments in repo1's archive
  echo "$(dsize "$1/repo1/archive") $(find "$1/repo1/archive" -regextype posix-extended -type f -regex '.*/[0-9A-F]{24}-[0-9a-f]+\.zst' | wc -l)"
}
pgbr_teardown() { :; }

# check_restored DIR WANT: start the restored data dir (untimed) and compare with the primary
check_restored() {
  local r=$1 want=$2 sock got
  sock=$(dirname "$r")/checksock; mkdir -p "$sock"; chown postgres:postgres "$sock"
  rm -f "$r/recovery.signal" "$r/standby.signal"
  CLUSTERS+=("$r")
  as_pg "$PGBIN/pg_ctl" -D "$r" -l "$(dirname "$r")/check.log" -w -t 600 \
    -o "-c archive_mode=off -c listen_addresses='' -c unix_socket_directories=$sock -c port=5432" start > /dev/null \
    || { tail -n 20 "$(dirname "$r")/check.log" >&2; die "the restored database does not start"; }
  got=$(as_pg "$PGBIN/psql" -X -h "$sock" -p 5432 -U postgres -d postgres -Atq -c \
    "SELECT (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)")
  pg_stop "$r"
  [ "$got" = "$want" ] || die "restored database differs from the primary: got '$got', want '$want'"
}

# ------------------------------------------------------------------ one run
RESULTS=$WORK/results.tsv; : > "$RESULTS"
run_one() {
  local run=$1 d=$WORK/$1 pat tool c0 c1 seg t0 t1 tl0 tl1 tr0 tr1 want rss_file sampler secs arch_s hwm note=
  mkdir -p "$d"; chmod 755 "$d"
  case "$run" in coffre*) tool=coffre;; *) tool=pgbr;; esac
  say "== $run: set-up"
  DATA_PLANNED=$d/pg0/data SOCK_PLANNED=$d/pg0/sock
  case "$run" in
    coffre) coffre_setup "$d" false;;
    coffre-async) coffre_setup "$d" true;;
    pgbackrest-sync) pgbr_setup "$d" n;;
    pgbackrest-async) pgbr_setup "$d" y;;
  esac
  pg_init "$d/pg0" "$ARCHIVE_CMD"
  [ "$tool" = pgbr ] && pgbr_post_start "$d"
  say "$run: pgbench -i -s $SCALE"
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p 5432 -U postgres -i -s "$SCALE" -q postgres > "$d/pgbench-init.log" 2>&1 \
    || { cat "$d/pgbench-init.log" >&2; die "pgbench -i failed"; }
  say "$run: base backup"
  "${tool}_base_backup" "$d"
  wait_archived "$(switch_wal)"
  if [ "$DURING" = 0 ]; then
    psql_ "ALTER SYSTEM SET archive_command = ''" && psql_ "SELECT pg_reload_conf()" > /dev/null
    sleep 1
  fi
  c0=$(archived_count)
  # The daemon's peak so far is the base backup's protection: reset it (Linux clear_refs 5), so
  # its VmHWM at the end is the archiving's.
  if [ "$tool" = coffre ]; then echo 5 > "/proc/$DAEMON/clear_refs" 2>/dev/null || say "warning: could not reset the daemon's VmHWM"; fi
  rss_file=$d/rss-max; if [ "$tool" = coffre ]; then pat="^$COFFRE "; else pat="^pgbackrest --config=$d/pgbackrest.conf"; fi
  sample_rss "$pat" "$rss_file" &
  sampler=$!; PIDS+=("$sampler")
  say "$run: pgbench -T $SECS -c 2 -j 2 -M prepared$([ "$DURING" = 0 ] && echo " (archiving paused)")"
  tl0=$(now)
  as_pg "$PGBIN/pgbench" -h "$SOCK" -p 5432 -U postgres -T "$SECS" -c 2 -j 2 -M prepared postgres > "$d/pgbench.log" 2>&1 \
    || { cat "$d/pgbench.log" >&2; die "pgbench failed"; }
  tl1=$(now)
  seg=$(switch_wal)
  if [ "$DURING" = 0 ]; then
    say "$run: archiving the backlog ($(ls "$DATA/pg_wal/archive_status" | grep -c '\.ready$' || true) segments ready)"
    t0=$(psql_ "SELECT extract(epoch FROM clock_timestamp())")
    psql_ "ALTER SYSTEM SET archive_command = '$ARCHIVE_CMD'" && psql_ "SELECT pg_reload_conf()" > /dev/null
  else
    say "$run: waiting for the archiver"
  fi
  wait_archived "$seg"
  t1=$(psql_ "SELECT extract(epoch FROM last_archived_time) FROM pg_stat_archiver")
  if [ "$run" = coffre-async ]; then
    # Acknowledged from the spool: the comparable time is until the spool has drained into both
    # stores (pgBackRest's asynchronous archive-push acknowledges a segment once it is in the
    # repositories). The moment it drained: the newest manifest in the stores (written last,
    # when a WAL file is committed), not when this script saw it (wait_archived waits 0.6 s).
    wait_drained
    local td; td=$(find "$d/stores" -path '*/wal/emr/*' -name manifest.json -printf '%T@\n' | sort -n | tail -n 1)
    td=$(awk -v a="$t1" -v b="${td:-0}" 'BEGIN { printf "%.6f", (b > a ? b : a) }')
    if [ "$DURING" = 0 ]; then note="acknowledged in $(elapsed "$t0" "$t1") s, drained "; else note="acknowledged "; fi
    note="${note}$(elapsed "$t1" "$td") s after the last acknowledgement (its newest manifest in the stores); "
    t1=$td
  fi
  if [ "$tool" = coffre ]; then
    note="${note}$(metric coffre_wal_archived_ahead_total) segments acknowledged from the look-ahead; "
  fi
  c1=$(archived_count)
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  hwm=$(cut -d' ' -f1 "$rss_file")
  note="${note}largest: $(cut -d' ' -f3- "$rss_file" | awk '{ print $1, $2, $3 }' | sed 's|^[^ ]*/||')"
  if [ "$tool" = coffre ]; then
    local dh; dh=$(awk '/VmHWM/{print $2}' "/proc/$DAEMON/status")
    note="$note (pid $(cut -d' ' -f2 "$rss_file"), daemon $DAEMON: VmHWM $((dh / 1024)) MiB at the end)"
    [ "$dh" -gt "$hwm" ] && hwm=$dh
  fi
  if [ "$DURING" = 0 ]; then
    arch_s=$(elapsed "$t0" "$t1"); secs=$arch_s
  else
    arch_s=$(elapsed "$tl1" "$t1"); secs=$(elapsed "$tl0" "$t1")   # lag; busy period
  fi
  want=$(checksum)
  pg_stop "$DATA"
  say "$run: $((c1 - c0)) segments archived in $arch_s s; restoring"
  sync
  local f0= n0= fetch_s=nan fetches=nan
  if [ "$tool" = coffre ]; then f0=$(metric coffre_wal_fetch_seconds_total); n0=$(metric coffre_wal_fetches_total); fi
  tr0=$(now)
  "${tool}_restore" "$d"
  tr1=$(now)
  if [ "$tool" = coffre ]; then
    # The daemon's own count of the time spent serving wal-fetch (request to last byte handed
    # over), set against the replay: what replay waited on the daemon.
    fetch_s=$(awk -v a="$f0" -v b="$(metric coffre_wal_fetch_seconds_total)" 'BEGIN { printf "%.2f", b - a }')
    fetches=$(awk -v a="$n0" -v b="$(metric coffre_wal_fetches_total)" 'BEGIN { printf "%d", b - a }')
  fi
  local stored stored_n; read -r stored stored_n <<< "$("${tool}_stored" "$d")"
  "${tool}_teardown"
  check_restored "$RESTORED" "$want"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$((c1 - c0))" "$arch_s" "$secs" "$(elapsed "$tr0" "$tr1")" \
    "$hwm" "$stored" "$(grep -Eo 'tps = [0-9.]+' "$d/pgbench.log" | head -n 1 | cut -d' ' -f3)" "$note; $REPLAY_NOTE" \
    "$REPLAY_S" "$fetch_s" "$fetches" "$stored_n" >> "$RESULTS"
  say "$run: restore+replay $(elapsed "$tr0" "$tr1") s"
  [ "$KEEP" = 1 ] || rm -rf "$d"
}

{
  echo "# coffre WAL benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(hostname)"
  echo "# cpu: $(nproc) x $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), RAM $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "# coffre: $COFFRE_SRC ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ', modified tree'))"
  echo "# $("$PGBIN/postgres" --version)$(command -v pgbackrest >/dev/null && echo "; $(pgbackrest version)")"
  echo "# workload: pgbench -i -s $SCALE; pgbench -T $SECS -c 2 -j 2 -M prepared; mode: $([ "$DURING" = 1 ] && echo "archiving during the load" || echo "backlog (archiving paused during the load, then timed alone)")"
  echo "# compression: pgBackRest zst level 3; coffre's WAL [source.pitr] zstd-level ${CLEVEL:-1 (its default)}"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$WORK/header.txt"

for r in $RUNS; do run_one "$r"; done

echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
if [ "$DURING" = 0 ]; then h1="archive s"; else h1="lag s"; fi
awk -F'\t' -v h1="$h1" -v during="$DURING" '
  BEGIN {
    fmt = "%-18s %9s %10s %9s %11s %17s %9s %14s %10s %10s %13s %9s\n"
    printf fmt, "tool/mode", "segments", h1, "MB/s", "segments/s", "restore+replay s", "replay s", "fetch s (n)", "peak RSS", "stored MB", "MB/segment", "load tps"
    printf fmt, "", "", "", "", "", "", "", "", "MiB", "(1 copy)", "(all stored)", ""
  }
  {
    mb = $2 * 16 * 1048576 / 1e6
    fetch = ($11 == "nan" ? "-" : sprintf("%.2f (%d)", $11, $12))
    printf "%-18s %9d %10.2f %9.1f %11.2f %17.2f %9s %14s %10.1f %10.1f %13s %9.0f\n", $1, $2, $3, ($4 > 0 ? mb / $4 : 0),
      ($4 > 0 ? $2 / $4 : 0), $5, ($10 == "nan" ? "-" : $10), fetch, $6 / 1024, $7 / 1e6,
      ($13 > 0 ? sprintf("%.2f (%d)", $7 / 1e6 / $13, $13) : "-"), $8
    notes[NR] = $1 ": " $9
  }
  END {
    print ""
    if (during) print "# lag s: from the end of pgbench to the last segment archived; MB/s, segments/s: over pgbench start to the last segment archived"
    else print "# archive s: backlog archived alone, from archive_command set and reloaded to pg_stat_archiver.last_archived_time"
    print "# MB/s: segments x 16 MiB / that time; peak RSS: the largest VmHWM of any one process of the tool (sampled every 0.2 s, from the load to the last segment; coffre: the daemon, its peak reset after the base backup)"
    print "# restore+replay s: the whole restore command(s) until the database is promoted and stopped; replay s: coffre restore --replay'"'"'s own figure"
    print "# fetch s (n): the time the daemon spent serving wal-fetch during the restore (request to last byte handed over, coffre_wal_fetch_seconds_total) and the fetches (coffre_wal_fetches_total); the rest of the replay did not wait on it"
    print "# stored MB: the WAL archive in one store/repository, including the WAL of pgbench -i and of the base backup (not only the segments counted); MB/segment: that over the WAL segments stored (their count in brackets)"
    print "# load tps: pgbench during the load (not a tool figure: the WAL volume of each run depends on it)"
    for (i = 1; i <= NR; i++) print "# " notes[i]
  }' "$RESULTS" | tee "$WORK/table.txt"
