#!/usr/bin/env bash
# Prediction benchmark: `ctrps-worker --predict` against training, same model,
# same data, same two local shards, all on this machine.
#
# For lr (deploy/criteo-lr.ini) and dcnv2 (deploy/criteo-dcnv2-dense.ini) on
# ROWS generated Criteo rows: fresh shards; train one pass (rows created as
# they come), train a second pass (rows exist: the like-for-like training
# figure), then --predict the same file RUNS times (Lookup, forward only, one
# output line per row written to a file). Prints examples/s of each and the
# ratio of the median prediction rate to each training pass; asserts nothing.
#
# Usage: bench/predict_bench.sh   (env: ROWS=300000 RUNS=3,
#        WORK=/tmp/ctrps-predict-bench, BUILD=build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-300000}
RUNS=${RUNS:-3}
WORK=${WORK:-/tmp/ctrps-predict-bench}
BUILD=$(cd "${BUILD:-build}" && pwd)
rm -rf "$WORK"
mkdir -p "$WORK"

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { grep -o "\"$1\":[^,}]*" | cut -d: -f2; }

pids=()
stop_shards() {
  [ ${#pids[@]} -gt 0 ] && { kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null || true; }
  pids=()
}
trap stop_shards EXIT

# start_shards CONFIG DIR: two fresh shards; writes DIR/c.ini with their ports.
start_shards() {
  local cfg=$1 d=$2
  for i in 0 1; do
    "$BUILD/server/ctrps-server" --config "$cfg" --shard $i --listen 127.0.0.1:0 \
      --ready-file "$d/ready$i" --data-dir "$d" 2>"$d/shard$i.log" &
    pids+=($!)
  done
  for i in 0 1; do
    for _ in $(seq 600); do [ -s "$d/ready$i" ] && break; sleep 0.05; done
  done
  sed "s/^shards = .*/shards = $(cat "$d/ready0"), $(cat "$d/ready1")/" "$cfg" > "$d/c.ini"
}

echo "# predict_bench rows=$ROWS runs=$RUNS $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores"
"$BUILD/tools/ctrps-cli" gen --rows "$ROWS" --seed 1 --format criteo --out "$WORK/gen.tsv"
for m in lr:deploy/criteo-lr.ini dcnv2:deploy/criteo-dcnv2-dense.ini; do
  name=${m%%:*}; cfg=${m#*:}
  d="$WORK/$name"
  mkdir -p "$d"
  start_shards "$cfg" "$d"
  w() { "$BUILD/worker/ctrps-worker" --config "$d/c.ini" --input "$WORK/gen.tsv" "$@" 2>>"$d/worker.log"; }
  t1=$(w | field examples_per_sec)
  t2=$(w | field examples_per_sec)
  : > "$d/predict.runs"
  for _ in $(seq "$RUNS"); do
    w --predict "$d/pred.txt" | field examples_per_sec >> "$d/predict.runs"
  done
  p=$(median < "$d/predict.runs")
  echo "$name train_pass1 $t1 train_pass2 $t2 predict_median $p (runs: $(tr '\n' ' ' < "$d/predict.runs"))" \
       "predict/train_pass1 $(awk -v a="$p" -v b="$t1" 'BEGIN {printf "%.2f", a / b}')" \
       "predict/train_pass2 $(awk -v a="$p" -v b="$t2" 'BEGIN {printf "%.2f", a / b}')"
  stop_shards
done
