#!/usr/bin/env bash
# Make a synthetic EMR PostgreSQL database and the snapshots coffre protects.
# All data is random; no real person. One canary patient (last name CANARY-ZXQ-PATIENT,
# insurance number CNRY-99887766-00) lets tests check that no plaintext leaks.
#
#   make-emr-db.sh --out DIR [--patients N] [--port P] [--keep-running]
#
# Writes into DIR:
#   emr.sql          pg_dump, plain SQL           (N=2000: ~15 MB; N=150000: ~1 GiB)
#   emr.dump         pg_dump, custom format
#   basebackup/      pg_basebackup, plain format (backup_manifest is written last)
#   counts.txt       row counts per table ("table|count" lines), to compare after a restore
#   pg.log           the server log
# Runs a throw-away PostgreSQL cluster on a private Unix socket (no TCP) in a private work dir
# under ${TMPDIR:-/tmp}; as root it runs as user postgres (runuser) and hands the results to the
# owner of DIR. The cluster is stopped and removed unless --keep-running: then DIR/pg.env holds
# PGBIN, PGDATA, PGHOST, PGPORT, PGUSER and WORKDIR (remove it after stopping) and the caller stops it with
#   [runuser -u postgres --] $PGBIN/pg_ctl -D $PGDATA -m fast stop
# --port only names the socket (.s.PGSQL.P); pick a distinct one per parallel run anyway.
# Env: PGBIN=/usr/lib/postgresql/NN/bin to pick a version (default: the highest installed).
set -euo pipefail
OUT= NP=2000 KEEP=0 PORT=5499
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2;;
    --patients) NP=$2; shift 2;;
    --keep-running) KEEP=1; shift;;
    --port) PORT=$2; shift 2;;
    -h|--help) sed -n 2,21p "$0"; exit 0;;
    *) echo "unknown argument: $1" >&2; exit 2;;
  esac
done
[ -n "$OUT" ] || { echo "usage: $0 --out DIR [--patients N] [--port P] [--keep-running]" >&2; exit 2; }
case "$NP" in ''|*[!0-9]*) echo "--patients must be a positive integer" >&2; exit 2;; esac
case "$PORT" in ''|*[!0-9]*) echo "--port must be a number" >&2; exit 2;; esac
[ "$NP" -ge 2 ] || { echo "--patients must be at least 2" >&2; exit 2; }
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)}
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] \
  || { echo "PostgreSQL server binaries not found: run tests/setup.sh (apt-get install -y postgresql)" >&2; exit 1; }
export PGOPTIONS="-c client_min_messages=warning"
HERE=$(cd "$(dirname "$0")" && pwd)
NE=$((NP * 2)) NL=$((NP * 20)) NM=$((NP * 4))

if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "running as root needs the user postgres (apt-get install postgresql)" >&2; exit 1; }
  as_pg() { runuser -u postgres -- "$@"; }
  PGUSER_NAME=postgres
else
  as_pg() { "$@"; }
  PGUSER_NAME=$(id -un)
fi

mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
OWNER=$(stat -c %u:%g "$OUT")
# Private work dir with a short path (Unix socket paths are limited to 107 bytes) that user
# postgres can reach even when DIR sits under a 0700 directory of root (e.g. a tempdir).
WD=$(mktemp -d "${TMPDIR:-/tmp}/coffre-emr.XXXXXX")
chmod 0755 "$WD"
PGD="$WD/pg" SOCK="$WD/s" RES="$WD/out"
mkdir -p "$PGD" "$SOCK" "$RES"
cp "$HERE/emr-schema.sql" "$HERE/emr-fill.sql" "$WD/"
chmod a+r "$WD"/*.sql
chmod 0700 "$PGD"
[ "$(id -u)" != 0 ] || chown -R postgres:postgres "$PGD" "$SOCK" "$RES"

psql_pg() { as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" "$@"; }
STARTED=0
finish() {
  local rc=$?
  if [ $rc != 0 ]; then
    echo "make-emr-db.sh: failed (exit $rc)" >&2
    [ -f "$RES/pg.log" ] && { echo "--- tail of the PostgreSQL log:" >&2; tail -n 20 "$RES/pg.log" >&2; }
  fi
  if [ "$STARTED" = 1 ] && { [ "$KEEP" = 0 ] || [ $rc != 0 ]; }; then
    as_pg "$PGBIN/pg_ctl" -D "$PGD" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  [ -f "$RES/pg.log" ] && cp "$RES/pg.log" "$OUT/pg.log" 2>/dev/null && chown "$OWNER" "$OUT/pg.log" 2>/dev/null
  if [ "$KEEP" = 0 ] || [ $rc != 0 ]; then rm -rf "$WD"; fi
  exit $rc
}
trap finish EXIT
trap 'exit 130' INT TERM

as_pg "$PGBIN/initdb" -D "$PGD" --auth=trust -E UTF8 --locale=C.UTF-8 -N >/dev/null
cat >> "$PGD/postgresql.conf" <<CONF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$SOCK'
wal_level = replica
max_wal_senders = 4
fsync = off
synchronous_commit = off
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGD" -l "$RES/pg.log" -w -t 60 start >/dev/null
STARTED=1

psql_pg -d postgres -c "CREATE DATABASE emr"
psql_pg -d emr -f "$WD/emr-schema.sql" >/dev/null
fill() { psql_pg -d emr -v tbl="$1" -v lo="$2" -v hi="$3" -v np="$NP" -v ne="$NE" -f "$WD/emr-fill.sql" >/dev/null; }
fill2() { fill "$1" 1 $(($2/2)) & local a=$!; fill "$1" $(($2/2+1)) "$2" & local b=$!; wait $a; wait $b; }
fill2 patients $NP; fill2 encounters $NE; fill2 lab_results $NL; fill2 medications $NM
psql_pg -d emr <<SQL
INSERT INTO patients VALUES ($((NP+1)), 'MRN999999999', 'Do-Not-Leak', 'CANARY-ZXQ-PATIENT', 'F', '1970-01-01',
  '1 Canary St', 'Quebec', 'G1A0A1', '+1-418-555-0199', 'canary.zxq@example.invalid', 'CNRY-99887766-00', now());
CREATE INDEX ON encounters (patient_id);
CREATE INDEX ON lab_results (patient_id);
CREATE INDEX ON medications (patient_id);
CREATE UNIQUE INDEX ON patients (mrn);
VACUUM (ANALYZE);
CHECKPOINT;
SQL
psql_pg -d emr -At -c "SELECT 'patients', count(*) FROM patients UNION ALL SELECT 'encounters', count(*) FROM encounters
  UNION ALL SELECT 'lab_results', count(*) FROM lab_results UNION ALL SELECT 'medications', count(*) FROM medications" > "$WD/counts.txt"

as_pg "$PGBIN/pg_dump" -h "$SOCK" -p "$PORT" -Fp -f "$RES/emr.sql" emr
as_pg "$PGBIN/pg_dump" -h "$SOCK" -p "$PORT" -Fc -f "$RES/emr.dump" emr
as_pg "$PGBIN/pg_basebackup" -h "$SOCK" -p "$PORT" -Fp -X stream -c fast -N -D "$RES/basebackup"

# Hand the results over to DIR (replacing earlier ones), owned like DIR.
rm -rf "$OUT/basebackup" "$OUT/emr.sql" "$OUT/emr.dump" "$OUT/counts.txt"
mv "$RES/emr.sql" "$RES/emr.dump" "$RES/basebackup" "$WD/counts.txt" "$OUT/"
if [ "$(id -u)" = 0 ]; then chown -R "$OWNER" "$OUT/emr.sql" "$OUT/emr.dump" "$OUT/basebackup" "$OUT/counts.txt"; fi
if [ "$KEEP" = 1 ]; then
  printf 'PGBIN=%s\nPGDATA=%s\nPGHOST=%s\nPGPORT=%s\nPGUSER=%s\nWORKDIR=%s\n' "$PGBIN" "$PGD" "$SOCK" "$PORT" "$PGUSER_NAME" "$WD" > "$OUT/pg.env"
  chown "$OWNER" "$OUT/pg.env" 2>/dev/null || true
fi
du -sh "$OUT/emr.sql" "$OUT/emr.dump" "$OUT/basebackup" | sed 's/^/made: /'
