#!/usr/bin/env bash
# The README's run command: a local ctrps cluster on this machine.
#
# Installs the Debian packages and builds if needed, generates a synthetic
# Criteo-shaped click log, starts two shards on 127.0.0.1 (free ports), trains
# a DCN-V2 worker on it with progress lines and a holdout, looks up a few
# trained embeddings with ctrps-cli, prints where the data and logs are, and
# stops every process it started.
#
# Options (environment): ROWS (default 200000), CONFIG (default
# deploy/criteo-dcnv2-dense.ini: the DCN-V2 of the speed and quality
# benchmarks, batch 512, integers as dense inputs), RUN_DIR (default
# run/local-<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ROWS=${ROWS:-200000}
HOLDOUT=$((ROWS / 10))
CONFIG=${CONFIG:-deploy/criteo-dcnv2-dense.ini}
RUN_DIR=${RUN_DIR:-run/local-$(date +%Y%m%d-%H%M%S)}

./deploy/install-deps.sh
if [ ! -f build/build.ninja ]; then
  meson setup build >/dev/null
fi
ninja -C build >/dev/null
BIN=$ROOT/build

mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

echo "== generating $ROWS + $HOLDOUT rows of synthetic Criteo-shaped clicks"
"$BIN/tools/ctrps-cli" gen --rows $((ROWS + HOLDOUT)) --seed 1 --format criteo --out "$RUN_DIR/all.tsv"
head -n "$ROWS" "$RUN_DIR/all.tsv" > "$RUN_DIR/train.tsv"
tail -n "$HOLDOUT" "$RUN_DIR/all.tsv" > "$RUN_DIR/holdout.tsv"
rm "$RUN_DIR/all.tsv"
grep -E '"(bayes_auc|main_effects_auc)"' "$RUN_DIR/all.tsv.truth.json" | tr -d ' ,'

echo "== starting two shards"
# Free ports: each shard binds port 0 and reports the one it got.
for i in 0 1; do
  "$BIN/server/ctrps-server" --config "$CONFIG" --shard $i --listen 127.0.0.1:0 \
    --ready-file "$RUN_DIR/shard-$i.ready" --data-dir "$RUN_DIR/data" 2>"$RUN_DIR/shard-$i.log" &
  PIDS+=($!)
done
for i in 0 1; do
  for _ in $(seq 600); do
    [ -s "$RUN_DIR/shard-$i.ready" ] && break
    kill -0 "${PIDS[$i]}" 2>/dev/null || { cat "$RUN_DIR/shard-$i.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -s "$RUN_DIR/shard-$i.ready" ] || { echo "shard $i did not start" >&2; exit 1; }
done
A0=$(cat "$RUN_DIR/shard-0.ready")
A1=$(cat "$RUN_DIR/shard-1.ready")
sed "s/^shards = .*/shards = $A0, $A1/" "$CONFIG" > "$RUN_DIR/cluster.ini"
echo "shards: $A0 $A1"

echo "== training DCN-V2 ($CONFIG)"
"$BIN/worker/ctrps-worker" --config "$RUN_DIR/cluster.ini" --input "$RUN_DIR/train.tsv" \
  --holdout "$RUN_DIR/holdout.tsv" 2> >(tee "$RUN_DIR/worker.log" >&2) | tee "$RUN_DIR/result.json"

echo "== looking up trained embeddings (fid, found, 16 weights)"
LOOKUP=()
for v in $(head -n 3 "$RUN_DIR/train.tsv" | cut -f 15); do
  LOOKUP+=(--slot C1 --value "$v")
done
"$BIN/tools/ctrps-cli" --config "$RUN_DIR/cluster.ini" lookup "${LOOKUP[@]}" --slot C1 --value never-seen
"$BIN/tools/ctrps-cli" --config "$RUN_DIR/cluster.ini" stats > "$RUN_DIR/stats.json"

cleanup
trap - EXIT
echo "== done"
echo "data:    $RUN_DIR/data (RocksDB + push log per shard), $RUN_DIR/train.tsv"
echo "logs:    $RUN_DIR/shard-0.log $RUN_DIR/shard-1.log $RUN_DIR/worker.log"
echo "result:  $RUN_DIR/result.json   stats: $RUN_DIR/stats.json"
