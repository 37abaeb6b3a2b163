#!/bin/bash
# benches/wal-memory.sh: the daemon's peak memory (VmHWM) while it archives WAL, with no
# PostgreSQL: N synthetic 16 MiB WAL files (8 random bytes, then 24 zero bytes: about 4:1 under
# zstd-3, like busy WAL) pushed one after another through the control socket, as PostgreSQL's
# archiver does; with archive-async, until the spool has drained. Two local stores.
#
# With --wal-dir DIR the files pushed are the WAL segments in DIR (real WAL, e.g. from a
# kept benches/wal.sh run) instead, and with --ready they get archive_status/*.ready files as
# PostgreSQL writes them (renamed .done once acknowledged), so the daemon archives ahead.
#
# usage: benches/wal-memory.sh [--coffre PATH] [--files N] [--async] [--parallel P]
#        [--wal-dir DIR] [--ready] [--level L] [-- ENV=VALUE ...]
#        (--level: [source.pitr] zstd-level, default coffre's own, 1)
#        (-- ENV=VALUE: extra environment for the daemon, e.g. MALLOC_ARENA_MAX=8)
# prints: VmHWM and VmRSS at the end, the seconds to acknowledge and to drain, the stored bytes,
#         the daemon's CPU time while pushing and how idle the machine was
set -euo pipefail
COFFRE=target/release/coffre N=40 ASYNC=false PARALLEL=4 WALDIR= READY=0 LEVEL=
while [ $# -gt 0 ]; do
  case $1 in
    --coffre) COFFRE=$2; shift 2 ;;
    --files) N=$2; shift 2 ;;
    --async) ASYNC=true; shift ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --wal-dir) WALDIR=$2; shift 2 ;;
    --ready) READY=1; shift ;;
    --level) LEVEL=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$COFFRE" ] || { echo "no coffre binary at $COFFRE: cargo build --release, or --coffre PATH" >&2; exit 2; }
COFFRE=$(realpath "$COFFRE")
d=$(mktemp -d /tmp/coffre-wal-memory.XXXXXX)
D=
cleanup() { [ -n "$D" ] && kill "$D" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$d"; }
trap cleanup EXIT
mkdir -p "$d/in" "$d/run" "$d/wal"
cat > "$d/coffre.toml" <<EOT
state-dir = "$d/state"
[replication]
min-sites = 2
[status]
listen = "127.0.0.1:0"
[[source]]
name = "emr"
path = "$d/in"
complete = "marker"
[source.pitr]
window = "7d"
archive-async = $ASYNC
archive-parallel = $PARALLEL
${LEVEL:+zstd-level = $LEVEL}
pg-wal = "$d/wal"
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
env "$@" RUNTIME_DIRECTORY="$d/run" COFFRE_LOG=warn "$COFFRE" --config "$d/coffre.toml" daemon \
  < /dev/null > /dev/null 2> "$d/daemon.log" &
D=$!
until [ -S "$d/run/coffre.sock" ]; do
  kill -0 "$D" 2>/dev/null || { cat "$d/daemon.log" >&2; exit 1; }
  sleep 0.1
done
if [ -n "$WALDIR" ]; then
  find "$WALDIR" -maxdepth 1 -type f -regextype egrep -regex '.*/[0-9A-F]{24}' | sort | head -n "$N" \
    | xargs -r cp -t "$d/wal"
  N=$(find "$d/wal" -type f | wc -l)
  [ "$N" -gt 0 ] || { echo "no WAL segments in $WALDIR" >&2; exit 2; }
else
python3 - "$d/wal" "$N" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
for i in range(1, n + 1):
    b = b"".join(r.randbytes(8) + bytes(24) for _ in range((16 << 20) // 32))
    open(os.path.join(d, "%08X%08X%08X" % (1, 0, i)), "wb").write(b)
PY
fi
mkdir -p "$d/wal/archive_status"
if [ "$READY" = 1 ]; then
  for f in "$d"/wal/0*; do touch "$d/wal/archive_status/$(basename "$f").ready"; done
fi
sync
cpu() { awk '{ print $14 + $15 }' "/proc/$D/stat"; }
idle() { awk '/^cpu / { print $5 + $6 }' /proc/stat; }
c0=$(cpu) i0=$(idle)
t0=$(date +%s.%N)
for f in "$d"/wal/0*; do
  COFFRE_SOCKET="$d/run/coffre.sock" COFFRE_LOG=warn "$COFFRE" --config "$d/coffre.toml" \
    wal-push --source emr "$f" > /dev/null
  r="$d/wal/archive_status/$(basename "$f")"
  if [ -e "$r.ready" ]; then mv "$r.ready" "$r.done"; fi
done
t1=$(date +%s.%N)
c1=$(cpu) i1=$(idle)
for _ in $(seq 3000); do
  [ -z "$(ls -A "$d/state/spool/emr" 2>/dev/null)" ] && break
  sleep 0.1
done
t2=$(date +%s.%N)
sleep 1
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$D/status")
rss=$(awk '/VmRSS/ { print $2 }' "/proc/$D/status")
hz=$(getconf CLK_TCK)
printf 'files %s async %s parallel %s ready %s level %s env [%s]: peak RSS %d MiB, RSS at the end %d MiB, acknowledged in %.2f s (%.0f MB/s), archived in %.2f s, stored %d MB; daemon CPU while pushing %.2f s (%.0f ms per file), machine idle %.0f %%\n' \
  "$N" "$ASYNC" "$PARALLEL" "$READY" "${LEVEL:-default}" "$*" $((hwm / 1024)) $((rss / 1024)) \
  "$(echo "$t1 - $t0" | bc)" "$(echo "$N * 16.777216 / ($t1 - $t0)" | bc -l)" \
  "$(echo "$t2 - $t0" | bc)" $(( $(du -sb "$d/stores" | cut -f1) / 1000000 )) \
  "$(echo "($c1 - $c0) / $hz" | bc -l)" "$(echo "($c1 - $c0) * 1000 / $hz / $N" | bc -l)" \
  "$(echo "100 * ($i1 - $i0) / ($(nproc) * ($t1 - $t0) * $hz)" | bc -l)"
