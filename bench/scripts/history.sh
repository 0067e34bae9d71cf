#!/usr/bin/env bash
# Issue 15's scale run: the same load on a database seeded with a year of history, on a copy of it
# purging that history down to 30 days while the load runs, and on an empty database, alternately,
# ROUNDS rounds, each run reading the overview and searches beside the load (--probe-reads).
#
#   bench/scripts/history.sh SEEDED_DB ROUNDS [bench options, e.g. --mode open --rate 800]
#
# SEEDED_DB: a database filled by `target/release/bench seed --sagas N --database-url .../SEEDED_DB`.
# Each round prints one line per run: sagas/s, the load's p99, each read's p99 (ms), and for the
# purging run its sagas and size on disk before and after (deleted rows leave free space in the
# tables, reused by new rows: the size does not shrink). RATE: SAGA_RETENTION_RATE of the purging run
# (default the coordinator's). The copy needs as much disk again as SEEDED_DB: check `df -h`. The
# copy gets one unmeasured run of the same load first, to warm the cache (WARM=0: not). COPY=0: no
# copy; the purging run purges SEEDED_DB itself, right after its seeded run (which warms the cache),
# for a database too large to copy: one round only, and SEEDED_DB keeps what the purge left.
set -euo pipefail
seeded=${1:?SEEDED_DB}; rounds=${2:?ROUNDS}; shift 2
bin=${BIN:-target/release}
server=postgres://postgres@127.0.0.1:5432
copy="${seeded}_purged"
psql_q() { psql -h 127.0.0.1 -U postgres -Atqc "$1"; }
size() { psql_q "SELECT pg_size_pretty(pg_database_size('$1'))"; }
# The counts per state the coordinator keeps (migration state_counts): no scan of the table.
sagas() {
  psql -h 127.0.0.1 -U postgres -d "$1" -Atqc "SELECT sum(sagas) FROM (SELECT sagas FROM saga_state_counts
                                                UNION ALL SELECT sagas FROM saga_state_count_changes) c"
}
summary() {
  python3 -c '
import json, sys
r = json.loads(sys.stdin.read().strip().splitlines()[-1].removeprefix("RESULT "))
reads = " ".join("%s=%.1f%s" % (x["kind"], x["p99_ms"], " (failed %d)" % x["failed"] if x["failed"] else "")
                 for x in r.get("reads", []))
print("%.0f/s p99 %.1f ms | reads p99: %s" % (r["sagas_per_s"], r["latency"]["p99_ms"], reads))'
}
run() { "$bin/bench" --probe-reads --stats-settle-ms 0 --json-only "$@" 2>/dev/null | summary; }
retain=(--coordinator-env SAGA_RETAIN_COMMITTED=30d --coordinator-env SAGA_RETAIN_COMPENSATED=30d
        --coordinator-env SAGA_RETAIN_ABORTED=30d)
[ -n "${RATE:-}" ] && retain+=(--coordinator-env "SAGA_RETENTION_RATE=$RATE")
if [ "${COPY:-1}" = 0 ]; then
  [ "$rounds" = 1 ] || { echo "COPY=0 purges SEEDED_DB: one round only" >&2; exit 2; }
  copy=$seeded
fi
for i in $(seq "$rounds"); do
  echo "round $i ($(uptime | sed 's/.*load/load/'))"
  echo "  seeded:  $(run --database-url "$server/$seeded" "$@")"
  if [ "$copy" != "$seeded" ]; then
    psql_q "DROP DATABASE IF EXISTS \"$copy\"" && psql_q "CREATE DATABASE \"$copy\" TEMPLATE \"$seeded\""
    # The copy's files are new to Postgres' cache: the same load, unmeasured and without retention,
    # first (WARM=0 skips it), so that the purging run differs from the seeded one by the purge.
    [ "${WARM:-1}" = 0 ] || run --database-url "$server/$copy" "$@" > /dev/null
  fi
  before="$(sagas "$copy") sagas, $(size "$copy")"
  figures=$(run --database-url "$server/$copy" "${retain[@]}" "$@")
  echo "  purging: $figures | $before -> $(sagas "$copy") sagas, $(size "$copy")"
  [ "$copy" = "$seeded" ] || psql_q "DROP DATABASE \"$copy\""
  echo "  empty:   $(run "$@")"
done
