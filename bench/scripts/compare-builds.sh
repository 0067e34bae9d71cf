#!/usr/bin/env bash
# Runs the floor-probe and the bench of two builds alternately, REPS rounds, and prints each round:
# a change measured against the build before it, on the same machine in the same run.
#
#   BASE=/path/to/old/target/release NEW=target/release bench/scripts/compare-builds.sh REPS INFLIGHT
#
# BASE, NEW: folders holding a `bench` and a `coordinator` binary (`cargo build --release -p bench
# -p coordinator`, e.g. in a `git worktree` of the older commit with its own CARGO_TARGET_DIR).
# FLOOR: a built copy of shared/bench/floor-probe (default /tmp/floor-probe).
# The order of the two builds swaps every round, so neither always runs on a warmer machine.
set -euo pipefail
reps=${1:?REPS}; inflight=${2:?INFLIGHT}
base=${BASE:?BASE}; new=${NEW:?NEW}
floor=${FLOOR:-/tmp/floor-probe}
db=${FLOOR_DB:-perfprobe_bench}
n=5000; warmup=300; conns=32
if [ "$inflight" = 1 ]; then n=500; warmup=50; conns=1; fi
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" 2>/dev/null || true
for i in $(seq "$reps"); do
  out=$("$floor/target/release/probe" saga n=$n warmup=$warmup inflight="$inflight" pg_conns=$conns \
        commits=4 "pg=host=127.0.0.1 user=postgres dbname=$db" 2>&1 | tail -1)
  line="round $i: floor $(grep -oE 'sagas_per_s=[0-9]+' <<<"$out" | cut -d= -f2)/s"
  line="$line p50 $(grep -oE 'saga_p50_ms=[0-9.]+' <<<"$out" | cut -d= -f2) ms"
  order="base new"; [ $((i % 2)) = 0 ] && order="new base"
  for which in $order; do
    dir=$base; [ "$which" = new ] && dir=$new
    out=$("$dir/bench" --mode closed --sagas $n --warmup $warmup --inflight "$inflight" \
          --stats-settle-ms 0 2>&1)
    line="$line | $which $(awk '/^sagas\/s/ {print $2}' <<<"$out")/s"
    line="$line p50 $(awk '/^latency/ {print $5}' <<<"$out") ms"
    line="$line coordinator $(grep -oE '[0-9.]+ ms/saga' <<<"$out")"
  done
  echo "$line"
done
