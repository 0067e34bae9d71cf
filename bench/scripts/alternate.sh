#!/usr/bin/env bash
# Runs the floor-probe and the bench alternately, REPS pairs, and prints each pair and the medians.
#
#   bench/scripts/alternate.sh REPS INFLIGHT [extra bench options]
#
# FLOOR: a built copy of shared/bench/floor-probe (default /tmp/floor-probe).
# FLOOR_DB: an empty database for it (default perfprobe_bench; created if missing).
# Commits per saga are not read (--stats-settle-ms 0): a separate run reports them.
set -euo pipefail
reps=${1:?REPS}; inflight=${2:?INFLIGHT}; shift 2
floor=${FLOOR:-/tmp/floor-probe}
db=${FLOOR_DB:-perfprobe_bench}
root=$(cd "$(dirname "$0")/../.." && pwd)
n=5000; warmup=300; conns=32
if [ "$inflight" = 1 ]; then n=500; warmup=50; conns=1; fi
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" 2>/dev/null || true
floors=(); benches=(); floor_p50=(); bench_p50=()
for i in $(seq "$reps"); do
  out=$("$floor/target/release/probe" saga n=$n warmup=$warmup inflight="$inflight" pg_conns=$conns \
        commits=4 "pg=host=127.0.0.1 user=postgres dbname=$db" 2>&1 | tail -1)
  floors+=("$(grep -oE 'sagas_per_s=[0-9]+' <<<"$out" | cut -d= -f2)")
  floor_p50+=("$(grep -oE 'saga_p50_ms=[0-9.]+' <<<"$out" | cut -d= -f2)")
  out=$("$root/target/release/bench" --mode closed --sagas $n --warmup $warmup --inflight "$inflight" \
        --stats-settle-ms 0 "$@" 2>&1)
  benches+=("$(awk '/^sagas\/s/ {print $2}' <<<"$out")")
  bench_p50+=("$(awk '/^latency/ {print $5}' <<<"$out")")
  echo "pair $i: floor ${floors[-1]}/s p50 ${floor_p50[-1]} ms | coordinator ${benches[-1]}/s p50 ${bench_p50[-1]} ms | $(grep '^cpu' <<<"$out" | tr -s ' ')"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
echo "median: floor $(median "${floors[@]}")/s p50 $(median "${floor_p50[@]}") ms | coordinator $(median "${benches[@]}")/s p50 $(median "${bench_p50[@]}") ms"
