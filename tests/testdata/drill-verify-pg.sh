#!/usr/bin/env bash
# A drill verify command: start PostgreSQL on a restored pg_basebackup (plain format) on a free
# port, compare the row counts with the ones recorded when the database was made, and check
# that the canary patient is there. Prints nothing on success (coffre discards output anyway).
#
#   drill-verify-pg.sh DATADIR PORT EXPECTED_COUNTS
#
# Use as: verify-command = "tests/testdata/drill-verify-pg.sh {file} {port} /path/counts.txt"
# When run as root (tests on a CI machine), PostgreSQL runs as user postgres: the script gives
# it the restored copy and lets it traverse the parent folders.
set -euo pipefail
DATA=$1 PORT=$2 EXPECTED=$3
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
SOCK=$(mktemp -d /tmp/coffre-drill.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then
  chown -R postgres "$DATA" "$SOCK"
  d=$(dirname "$DATA")
  while [ "$d" != / ]; do chmod o+x "$d" 2>/dev/null || true; d=$(dirname "$d"); done
fi
chmod 0700 "$DATA"
rm -f "$DATA/postmaster.pid"
stop() { as_pg "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1 || true; rm -rf "$SOCK"; }
trap stop EXIT
as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$SOCK/pg.log" -w -t 60 \
  -o "-p $PORT -k $SOCK -c listen_addresses='' -c fsync=off" start >/dev/null
q() { as_pg "$PGBIN/psql" -X -q -h "$SOCK" -p "$PORT" -U postgres -d emr -At -c "$1"; }
got=$(q "SELECT 'patients', count(*) FROM patients UNION ALL SELECT 'encounters', count(*) FROM encounters
  UNION ALL SELECT 'lab_results', count(*) FROM lab_results UNION ALL SELECT 'medications', count(*) FROM medications")
[ "$got" = "$(cat "$EXPECTED")" ] || { echo "row counts differ" >&2; exit 3; }
[ "$(q "SELECT count(*) FROM patients WHERE last_name = 'CANARY-ZXQ-PATIENT'")" = 1 ] || { echo "canary missing" >&2; exit 4; }
