#!/usr/bin/env bash
# Issue 17: what exporting spans costs. The same build, spans off and on (OTLP/HTTP to a local sink
# that answers every export and keeps nothing), alternately, ROUNDS rounds, closed loop.
#
#   bench/scripts/tracing-cost.sh ROUNDS INFLIGHT
#
# The batch processor is given room for every span (OTEL_BSP_MAX_QUEUE_SIZE), so that none is
# dropped and the figure is the cost of exporting them all; the sink prints what it received.
set -euo pipefail
reps=${1:?ROUNDS}; inflight=${2:?INFLIGHT}
bin=${BIN:-target/release}
port=${SINK_PORT:-4318}
here=$(dirname "$0")
python3 "$here/otlp-sink.py" "$port" > /tmp/otlp-sink.log 2>&1 &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT
on=(--coordinator-env "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$port"
    --coordinator-env OTEL_BSP_MAX_QUEUE_SIZE=200000 --coordinator-env OTEL_BSP_SCHEDULE_DELAY=1000)
run() {
  out=$("$bin/bench" --mode closed --sagas 5000 --warmup 300 --inflight "$inflight" \
        --stats-settle-ms 0 "$@" 2>&1)
  echo "$(awk '/^sagas\/s/ {print $2}' <<<"$out")/s p50 $(awk '/^latency/ {print $5}' <<<"$out") ms" \
       "coordinator $(grep -oE '[0-9.]+ ms/saga' <<<"$out")"
}
for i in $(seq "$reps"); do
  if [ $((i % 2)) = 1 ]; then
    echo "round $i: off $(run) | on $(run "${on[@]}")"
  else
    echo "round $i: on $(run "${on[@]}") | off $(run)"
  fi
done
sleep 11
echo "sink: $(tail -1 /tmp/otlp-sink.log)"
