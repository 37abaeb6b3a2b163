#!/bin/bash
# benches/wal-fetch.sh: what PostgreSQL waits on per restore_command during a point-in-time
# restore, with no PostgreSQL: N synthetic 16 MiB WAL files (as benches/wal-memory.sh makes
# them) are pushed through the daemon, then fetched back in order with
# `coffre wal-fetch --session S %f %p` as PostgreSQL's startup process calls it, with a pause
# between fetches standing for the replay of a segment (so the daemon's prefetch has the next
# one ready). Two local stores.
#
# usage: benches/wal-fetch.sh [--coffre PATH] [--files N] [--replay-ms MS] [--runs R]
# prints per run: the wall time of one `wal-fetch` process (start to exit, the pause excluded),
#   the daemon's own time per fetch (coffre_wal_fetch_seconds_total / coffre_wal_fetches_total),
#   prefetch hits, and for scale the time of `coffre --version` and of a fetch that finds nothing
set -euo pipefail
COFFRE=target/release/coffre N=20 REPLAY_MS=150 RUNS=3
while [ $# -gt 0 ]; do
  case $1 in
    --coffre) COFFRE=$2; shift 2 ;;
    --files) N=$2; shift 2 ;;
    --replay-ms) REPLAY_MS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for v in "$N" "$REPLAY_MS" "$RUNS"; do
  case "$v" in ''|*[!0-9]*) echo "not a number: '$v'" >&2; exit 2 ;; esac
done
[ -x "$COFFRE" ] || { echo "no coffre binary at $COFFRE: cargo build --release, or --coffre PATH" >&2; exit 2; }
command -v curl > /dev/null || { echo "needs curl (apt-get install curl)" >&2; exit 2; }
COFFRE=$(realpath "$COFFRE")
d=$(mktemp -d /tmp/coffre-wal-fetch.XXXXXX)
D=
cleanup() { [ -n "$D" ] && kill "$D" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$d"; }
trap cleanup EXIT
mkdir -p "$d/in" "$d/run" "$d/wal" "$d/pg_wal"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$d/coffre.toml" <<EOT
state-dir = "$d/state"
[replication]
min-sites = 2
[status]
listen = "127.0.0.1:$port"
[[source]]
name = "emr"
path = "$d/in"
complete = "marker"
[source.pitr]
window = "7d"
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
EOT
RUNTIME_DIRECTORY="$d/run" COFFRE_LOG=warn "$COFFRE" --config "$d/coffre.toml" daemon \
  < /dev/null > /dev/null 2> "$d/daemon.log" &
D=$!
until [ -S "$d/run/coffre.sock" ]; do
  kill -0 "$D" 2>/dev/null || { cat "$d/daemon.log" >&2; exit 1; }
  sleep 0.1
done
c() { COFFRE_SOCKET="$d/run/coffre.sock" COFFRE_LOG=warn "$COFFRE" --config "$d/coffre.toml" "$@"; }
python3 - "$d/wal" "$N" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
size = 16 << 20
for i in range(1, n + 1):
    b = bytearray(b"".join(r.randbytes(8) + bytes(24) for _ in range(size // 32)))
    # the first page header PostgreSQL 15 writes (wal-fetch serves a segment only when it
    # matches the name): magic, XLP_LONG_HEADER, timeline 1, start LSN, system id, sizes
    b[0:40] = (0xD110).to_bytes(2, "little") + (2).to_bytes(2, "little") + (1).to_bytes(4, "little") \
        + (i * size).to_bytes(8, "little") + bytes(8) + (0x7300000000000001).to_bytes(8, "little") \
        + size.to_bytes(4, "little") + (8192).to_bytes(4, "little")
    open(os.path.join(d, "%08X%08X%08X" % (1, 0, i)), "wb").write(b)
PY
for f in "$d"/wal/*; do c wal-push --source emr "$f" > /dev/null; done
sync
metric() { curl -sf "127.0.0.1:$port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
ms_of() { # average ms of 20 runs of a command
  local t0 t1
  t0=$(date +%s%N)
  for _ in $(seq 20); do "$@" > /dev/null 2>&1 || true; done
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 20000000 ))
}
printf 'coffre --version: %d ms; a wal-fetch through the daemon that finds nothing: %d ms\n' \
  "$(ms_of "$COFFRE" --version)" \
  "$(ms_of c wal-fetch --source emr 0000000100000000000000FF "$d/pg_wal/NONE")"
# A recovery session is opened by a point-in-time restore (coffre refuses an id it did not
# open): a minimal base backup lands in the source folder, and each run restores it.
mkdir -p "$d/in/base/global"
echo 15 > "$d/in/base/PG_VERSION"
echo "START WAL LOCATION: 0/1000028 (file 000000010000000000000001)" > "$d/in/base/backup_label"
head -c 8192 /dev/zero > "$d/in/base/global/pg_control"
echo '{}' > "$d/in/base/backup_manifest"
until c snapshots --json | grep -q directory; do sleep 0.2; done
for run in $(seq "$RUNS"); do
  c restore --source emr --to "$d/r$run" --target-latest --purpose "benchmark run $run" > /dev/null
  session=$(grep -o -- '--session [^ ]*' "$d/r$run/postgresql.auto.conf" | cut -d' ' -f2)
  s0=$(metric coffre_wal_fetch_seconds_total); n0=$(metric coffre_wal_fetches_total)
  h0=$(metric coffre_wal_prefetch_hits_total)
  wall=0
  for i in $(seq "$N"); do
    t0=$(date +%s%N)
    c wal-fetch --source emr --session "$session" "$(printf '%08X%08X%08X' 1 0 "$i")" \
      "$d/pg_wal/RECOVERYXLOG"
    t1=$(date +%s%N)
    wall=$(( wall + t1 - t0 ))
    cmp -s "$d/pg_wal/RECOVERYXLOG" "$d/wal/$(printf '%08X%08X%08X' 1 0 "$i")" \
      || { echo "fetched bytes differ" >&2; exit 1; }
    rm "$d/pg_wal/RECOVERYXLOG"
    sleep "$(echo "scale=3; $REPLAY_MS / 1000" | bc)"
  done
  s1=$(metric coffre_wal_fetch_seconds_total); n1=$(metric coffre_wal_fetches_total)
  h1=$(metric coffre_wal_prefetch_hits_total)
  printf 'run %d: %d fetches, wal-fetch process %.1f ms each, daemon %.1f ms each, %d from the prefetch\n' \
    "$run" "$N" "$(echo "$wall / $N / 1000000" | bc -l)" \
    "$(echo "($s1 - $s0) * 1000 / ($n1 - $n0)" | bc -l)" "$(echo "$h1 - $h0" | bc)"
done
