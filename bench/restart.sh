#!/usr/bin/env bash
# Shard restart benchmark: how long a shard takes from exec to serving (its
# --ready-file written) after
#
#  1. a clean stop (SIGTERM: every row written back, the push log empty): the
#     time SIGTERM takes to exit, then the time to serving; and
#  2. kill -9 with a full push log: a worker (LR/FTRL, deploy/criteo-lr.ini,
#     sync durability) trains for LOG_S seconds against a shard that never
#     writes back meanwhile (flush_interval_ms = 1 h, no dirty-row trigger),
#     so every acknowledged push since the start is in the push log; the shard
#     is killed, and the restart replays the whole log before it serves.
#     LOG_S defaults to 10 s, the default flush_interval_ms: that is what a
#     full push log holds with the default settings.
#
# Each measurement runs RUNS times; medians and ranges are printed, with the
# push-log bytes and rows the restart recovered.
#
# Usage: bench/restart.sh   (env: ROWS=2000000 RUNS=3 LOG_S=10
#        WORK=/tmp/ctrps-restart-bench BUILD=build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-2000000}
RUNS=${RUNS:-3}
LOG_S=${LOG_S:-10}
WORK=${WORK:-/tmp/ctrps-restart-bench}
BUILD=$(cd "${BUILD:-build}" && pwd)
rm -rf "$WORK"
mkdir -p "$WORK"

. bench/lib.sh
range() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END {printf "%s..%s", lo, hi}'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# start DIR: start shard 0 on a free port in DIR; prints the milliseconds
# from exec to its ready file (polled every 5 ms), and the CPU milliseconds
# it used by then (user + system, from /proc: steadier than the wall clock
# on a loaded machine).
start() {
  local d=$1 t0
  rm -f "$d/ready"
  t0=$(now_ms)
  "$BUILD/server/ctrps-server" --config "$d/shard.ini" --shard 0 --listen "127.0.0.1:${PORT:-0}" \
    --ready-file "$d/ready" --data-dir "$d" 2>>"$d/shard.log" &
  pid=$!
  while [ ! -s "$d/ready" ]; do
    kill -0 "$pid" 2>/dev/null || { echo "shard died:" >&2; tail "$d/shard.log" >&2; exit 1; }
    sleep 0.005
  done
  local wall=$(($(now_ms) - t0)) tck
  tck=$(getconf CLK_TCK)
  echo "$wall $(awk -v t="$tck" '{print int(($14 + $15) * 1000 / t)}' "/proc/$pid/stat")"
}

stats_rows() { "$BUILD/tools/ctrps-cli" --config "$1/c.ini" stats | grep -o '"rows":[0-9]*' | head -1 | cut -d: -f2; }

echo "# restart_bench rows=$ROWS runs=$RUNS log_s=$LOG_S $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$BUILD/tools/ctrps-cli" gen --rows "$ROWS" --seed 1 --format criteo --out "$WORK/gen.tsv"
: > "$WORK/stop" ; : > "$WORK/clean" ; : > "$WORK/kill9" ; : > "$WORK/logmb"
: > "$WORK/clean_cpu" ; : > "$WORK/kill9_cpu"
for r in $(seq "$RUNS"); do
  d="$WORK/run$r"
  mkdir -p "$d"
  sed -e "s/^shards = .*/shards = 127.0.0.1:1/" \
      -e "s/^\[server\]/[server]\nflush_interval_ms = 3600000\nflush_dirty_rows = 1000000000000/" \
      deploy/criteo-lr.ini > "$d/shard.ini"
  PORT=0 start "$d" > /dev/null
  PORT=$(cut -d: -f2 < "$d/ready")
  sed "s/^shards = .*/shards = 127.0.0.1:$PORT/" "$d/shard.ini" > "$d/c.ini"

  # A full push log: train for LOG_S seconds, then kill -9 the shard.
  "$BUILD/worker/ctrps-worker" --config "$d/c.ini" --input "$WORK/gen.tsv" --log-level error \
    > /dev/null 2>&1 &
  wpid=$!
  sleep "$LOG_S"
  kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  kill -9 "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true
  logbytes=$(find "$d" -name '*.log' -path '*pushlog*' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  echo "$logbytes" | awk '{printf "%.1f\n", $1 / 1048576}' >> "$WORK/logmb"
  PORT=$PORT start "$d" > "$WORK/t"
  cut -d' ' -f1 < "$WORK/t" >> "$WORK/kill9"; cut -d' ' -f2 < "$WORK/t" >> "$WORK/kill9_cpu"
  rows=$(stats_rows "$d")

  # A clean stop, with every row written back, and a restart.
  t0=$(now_ms)
  kill -TERM "$pid"; wait "$pid" || { echo "shard exited non-zero after SIGTERM" >&2; exit 1; }
  echo $(($(now_ms) - t0)) >> "$WORK/stop"
  PORT=$PORT start "$d" > "$WORK/t"
  cut -d' ' -f1 < "$WORK/t" >> "$WORK/clean"; cut -d' ' -f2 < "$WORK/t" >> "$WORK/clean_cpu"
  kill -TERM "$pid"; wait "$pid" || true
  pid=
  echo "run $r: push log $(tail -1 "$WORK/logmb") MB, $rows rows; kill -9 -> serving $(tail -1 "$WORK/kill9") ms ($(tail -1 "$WORK/kill9_cpu") ms CPU); SIGTERM exit $(tail -1 "$WORK/stop") ms; clean restart -> serving $(tail -1 "$WORK/clean") ms ($(tail -1 "$WORK/clean_cpu") ms CPU)"
  rm -rf "$d"
done
for m in kill9 kill9_cpu stop clean clean_cpu logmb; do
  printf '%s median %s (range %s)\n' "$m" "$(median < "$WORK/$m")" "$(range < "$WORK/$m")"
done
