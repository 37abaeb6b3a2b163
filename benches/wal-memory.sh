#!/bin/bash
# benches/wal-memory.sh: the daemon's peak memory (VmHWM) while it archives WAL, with no
# PostgreSQL: N synthetic 16 MiB WAL files (8 random bytes, then 24 zero bytes: about 4:1 under
# zstd-3, like busy WAL) pushed one after another through the control socket, as PostgreSQL's
# archiver does; with archive-async, until the spool has drained. Two local stores.
#
# usage: benches/wal-memory.sh [--coffre PATH] [--files N] [--async] [--parallel P]
#        [-- ENV=VALUE ...]   (extra environment for the daemon, e.g. MALLOC_ARENA_MAX=8)
# prints: VmHWM and VmRSS at the end, the seconds to acknowledge and to drain, the stored bytes
set -euo pipefail
COFFRE=target/release/coffre N=40 ASYNC=false PARALLEL=4
while [ $# -gt 0 ]; do
  case $1 in
    --coffre) COFFRE=$2; shift 2 ;;
    --files) N=$2; shift 2 ;;
    --async) ASYNC=true; shift ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
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
python3 - "$d/wal" "$N" <<'PY'
import os, random, sys
d, n = sys.argv[1], int(sys.argv[2])
r = random.Random(7)
for i in range(1, n + 1):
    b = b"".join(r.randbytes(8) + bytes(24) for _ in range((16 << 20) // 32))
    open(os.path.join(d, "%08X%08X%08X" % (1, 0, i)), "wb").write(b)
PY
t0=$(date +%s.%N)
for f in "$d"/wal/*; do
  COFFRE_SOCKET="$d/run/coffre.sock" COFFRE_LOG=warn "$COFFRE" --config "$d/coffre.toml" \
    wal-push --source emr "$f" > /dev/null
done
t1=$(date +%s.%N)
for _ in $(seq 3000); do
  [ -z "$(ls -A "$d/state/spool/emr" 2>/dev/null)" ] && break
  sleep 0.1
done
t2=$(date +%s.%N)
sleep 1
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$D/status")
rss=$(awk '/VmRSS/ { print $2 }' "/proc/$D/status")
printf 'files %s async %s parallel %s env [%s]: peak RSS %d MiB, RSS at the end %d MiB, acknowledged in %.1f s, archived in %.1f s, stored %d MB\n' \
  "$N" "$ASYNC" "$PARALLEL" "$*" $((hwm / 1024)) $((rss / 1024)) \
  "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t0" | bc)" $(( $(du -sb "$d/stores" | cut -f1) / 1000000 ))
