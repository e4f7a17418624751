#!/usr/bin/env bash
# Soak benchmark: one ctrps-worker (LR, one dim-1 FTRL table: the model of
# deploy/criteo-lr.ini) and two shards on an endless-looking stream of
# drifting generated rows (`ctrps-cli gen --drift`, piped into the worker's
# stdin), run twice: with feature admission and expiry on ("on") and with
# both off ("off"). Every SAMPLE_S seconds it records the worker's and both
# shards' RSS (/proc/PID/status VmRSS), RocksDB bytes and rows of the table
# (ctrps-cli stats, summed over the shards), admitted / rejected / expired,
# and the worker's last progress line (examples, interval examples/s, window
# AUC) into WORK/soak-MODE.csv; then a plot (gnuplot, WORK/soak.png) and a
# markdown summary (WORK/summary.md) with the figures bench/README.md quotes.
#
# Usage: bench/soak.sh
#   env: SOAK_ROWS=20000000  rows streamed per run
#        PERIOD=1000000      drift period in rows (--drift)
#        CHURN=0.2 TRUTH=0.3 --drift-churn, --drift-truth
#        MODES="on off"      which runs
#        TTL_S=10 ADMIT_AFTER=2 EXPIRE_BELOW=1e-6 (the "on" run's table)
#        MEMORY_MB=64 BLOCK_CACHE_MB=32 WRITE_BUFFER_MB=16 (both runs' [server])
#        SAMPLE_S=3 PROGRESS_S=3 SEED=1
#        WORK=/tmp/ctrps-soak BUILD=build PLOT=1 (0: no PNG; auto: a PNG if
#        gnuplot is installed)
# Short mode (the bench_soak_short meson test): SOAK_ROWS=400000 PERIOD=100000
# TTL_S=3 SAMPLE_S=1 PROGRESS_S=1.
# Exit status: 0 when every run trained every row and left at least two
# samples (whatever the figures), 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_ROWS=${SOAK_ROWS:-20000000}
PERIOD=${PERIOD:-1000000}
CHURN=${CHURN:-0.2}
TRUTH=${TRUTH:-0.3}
MODES=${MODES:-on off}
TTL_S=${TTL_S:-10}
ADMIT_AFTER=${ADMIT_AFTER:-2}
EXPIRE_BELOW=${EXPIRE_BELOW:-1e-6}
MEMORY_MB=${MEMORY_MB:-64}
BLOCK_CACHE_MB=${BLOCK_CACHE_MB:-32}
WRITE_BUFFER_MB=${WRITE_BUFFER_MB:-16}
SAMPLE_S=${SAMPLE_S:-3}
PROGRESS_S=${PROGRESS_S:-3}
SEED=${SEED:-1}
WORK=${WORK:-/tmp/ctrps-soak}
PLOT=${PLOT:-1}
if [ "$PLOT" = auto ]; then
  PLOT=0
  command -v gnuplot >/dev/null && PLOT=1
fi
BUILD=$(cd "${BUILD:-build}" && pwd)
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

pids=()
cleanup() {
  local i
  # The worker (started last) first: it waits for shards that are gone.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# CPU seconds (user + system) a process has used.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# The value of key=... in the worker's last progress line, or empty.
prog() { grep '^.*progress ' "$1" 2>/dev/null | tail -1 | grep -o " $2=[^ ]*" | cut -d= -f2; }
# Sum of a numeric JSON field over the stats lines in file $1.
jsum() { grep -o "\"$2\":[0-9]*" "$1" | cut -d: -f2 | awk '{s += $1} END {print s + 0}'; }

# run MODE: fresh shards, the generator piped into one worker, sampled.
run() {
  local mode=$1 d="$WORK/$1" i
  rm -rf "$d"
  mkdir -p "$d"
  {
    sed -e '/^\[cluster\]/,$!d' -e 's/^data_dir = .*/data_dir = data/' deploy/criteo-lr.ini
    printf '\n[worker]\nprogress_interval_s = %s\n' "$PROGRESS_S"
  } > "$d/base.ini"
  sed -i "s/^\[server\]/[server]\nmemory_mb = $MEMORY_MB\nblock_cache_mb = $BLOCK_CACHE_MB\nwrite_buffer_mb = $WRITE_BUFFER_MB/" "$d/base.ini"
  if [ "$mode" = on ]; then
    sed -i "s/^\[table.wide\]/[table.wide]\nadmit_after = $ADMIT_AFTER\nttl_s = $TTL_S\nexpire_below = $EXPIRE_BELOW/" "$d/base.ini"
  fi
  local spids=()
  for i in 0 1; do
    "$BUILD/server/ctrps-server" --config "$d/base.ini" --shard $i --listen 127.0.0.1:0 \
      --ready-file "$d/ready$i" --data-dir "$d/data" 2>"$d/shard$i.log" &
    spids+=($!)
    pids+=($!)
  done
  for i in 0 1; do
    for _ in $(seq 1200); do [ -s "$d/ready$i" ] && break; sleep 0.05; done
    [ -s "$d/ready$i" ] || { echo "soak: shard $i did not start (see $d/shard$i.log)" >&2; return 1; }
  done
  sed "s/^shards = .*/shards = $(cat "$d/ready0"), $(cat "$d/ready1")/" "$d/base.ini" > "$d/c.ini"

  local t0 wpid csv="$WORK/soak-$mode.csv"
  t0=$(date +%s.%N)
  "$BUILD/tools/ctrps-cli" gen --rows "$SOAK_ROWS" --seed "$SEED" --format criteo --out - \
      --drift "$PERIOD" --drift-churn "$CHURN" --drift-truth "$TRUTH" 2>"$d/gen.log" |
    "$BUILD/worker/ctrps-worker" --config "$d/c.ini" --input - >"$d/result.json" 2>"$d/worker.log" &
  wpid=$!
  pids+=($wpid)
  echo "t_s,examples,worker_rss_kb,shard0_rss_kb,shard1_rss_kb,rocksdb_bytes,rows,admitted,rejected,expired,interval_examples_per_sec,window_auc,load1,cpu_s,worker_cpu_s,shard0_cpu_s,shard1_cpu_s" > "$csv"
  local wrss=0 wcpu=0
  sample() {
    local t st="$d/stats.json" r
    # After the worker's exit (the final sample), its last RSS and CPU seen.
    r=$(rss_kb "$wpid")
    [ "${r:-0}" = 0 ] || wrss=$r
    [ ! -e "/proc/$wpid/stat" ] || wcpu=$(cpu_s "$wpid")
    t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    "$BUILD/tools/ctrps-cli" --config "$d/c.ini" stats > "$st" 2>/dev/null || true
    echo "$t,$(prog "$d/worker.log" examples),$wrss,$(rss_kb "${spids[0]}"),$(rss_kb "${spids[1]}"),$(jsum "$st" rocksdb_bytes),$(jsum "$st" rows),$(jsum "$st" admitted),$(jsum "$st" rejected),$(jsum "$st" expired),$(prog "$d/worker.log" interval_examples_per_sec),$(prog "$d/worker.log" window_auc),$(cut -d' ' -f1 /proc/loadavg),$(awk -v a="$wcpu" -v b="$(cpu_s "${spids[0]}")" -v c="$(cpu_s "${spids[1]}")" 'BEGIN {printf "%.2f,%.2f,%.2f,%.2f", a + b + c, a, b, c}')" >> "$csv"
  }
  local last_line=""
  while kill -0 "$wpid" 2>/dev/null; do
    sleep "$SAMPLE_S"
    local line
    line=$(grep -c progress "$d/worker.log" 2>/dev/null || true)
    # Only record after a new progress line, so every row has fresh rates.
    if [ "$line" != "$last_line" ] && kill -0 "$wpid" 2>/dev/null; then
      sample
      last_line=$line
    fi
  done
  local rc=0
  wait "$wpid" || rc=$?
  sample # the final progress line and the shards after the last push
  cat "$d/result.json"
  kill "${spids[@]}"
  wait "${spids[@]}" 2>/dev/null || true
  pids=()
  [ "$rc" = 0 ] || { echo "soak: worker of run '$mode' exited $rc (see $d/worker.log)" >&2; return 1; }
  grep -q "\"examples\":$SOAK_ROWS," "$d/result.json" ||
    { echo "soak: run '$mode' did not train all $SOAK_ROWS rows" >&2; return 1; }
  [ "$(wc -l < "$csv")" -ge 3 ] || { echo "soak: run '$mode' recorded fewer than 2 samples" >&2; return 1; }
}

echo "# soak rows=$SOAK_ROWS period=$PERIOD churn=$CHURN truth=$TRUTH ttl_s=$TTL_S admit_after=$ADMIT_AFTER expire_below=$EXPIRE_BELOW memory_mb=$MEMORY_MB block_cache_mb=$BLOCK_CACHE_MB write_buffer_mb=$WRITE_BUFFER_MB $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load: $(uptime | sed 's/.*load/load/')"
for m in $MODES; do
  run "$m"
done

# Summary: the figures of bench/README.md from the CSVs. RocksDB bytes move
# in a sawtooth (SST files pile up between the compactions that drop expired
# rows, every ttl_s), so "at a quarter" is the mean of the samples between
# 20% and 30% of the stream and "at the end" the mean over the last tenth;
# the window AUC likewise over the first and the last tenth, and the rates
# over those tenths from all the worker's progress lines (tenth_rates).
# The machine is shared, so examples/s moves with other processes' load:
# examples per CPU-second of the worker and both shards (cpu_s) measures
# the cost of an example whatever the load.
# Examples/s over the first and the last tenth of the stream from every
# progress line of the worker's log ($2), time-weighted: each line's interval
# lasted (its examples - the previous line's) / interval_examples_per_sec, and
# a tenth's rate is its examples over the sum of its intervals' durations.
# Prints "first|last|last/first".
tenth_rates() {
  grep '^.*progress ' "$1" | sed -n 's/.* examples=\([0-9]*\) .* interval_examples_per_sec=\([0-9.]*\).*/\1 \2/p' |
    awk -v total="$2" '{ d = $1 - prev; prev = $1; if ($2 <= 0) next
        w = ($1 <= 0.1 * total) ? 1 : ($1 > 0.9 * total) ? 2 : 0
        if (w) { ex[w] += d; t[w] += d / $2 } }
      END { f = t[1] ? ex[1] / t[1] : 0; l = t[2] ? ex[2] / t[2] : 0
            printf "%.0f|%.0f|%.2f", f, l, f ? l / f : 0 }'
}
summary() {
  awk -F, 'NR > 1 && $2 != "" { n++; t[n] = $1; ex[n] = $2; w[n] = $3; s[n] = $4 + $5; rb[n] = $6;
                        rows[n] = $7; eps[n] = $11; auc[n] = $12; ld[n] = $13; cpu[n] = $14
                        wc[n] = $15; sc[n] = $16 + $17; split_cpu = NF >= 17 }
    # examples per CPU-second from the sample before the window to its last
    function per_cpu(lo, hi,    i, a, b) {
      a = 0; b = 0
      for (i = 1; i <= n; i++) {
        if (ex[i] < lo * ex[n]) a = i
        if (ex[i] <= hi * ex[n]) b = i
      }
      if (b <= a) b = a + 1
      return a ? (ex[b] - ex[a]) / (cpu[b] - cpu[a] + 1e-9) : ex[b] / (cpu[b] + 1e-9)
    }
    # CPU microseconds per example of the process(es) in c[], same windows
    function us_per_ex(lo, hi, c,    i, a, b, e0, c0) {
      a = 0; b = 0
      for (i = 1; i <= n; i++) {
        if (ex[i] < lo * ex[n]) a = i
        if (ex[i] <= hi * ex[n]) b = i
      }
      if (b <= a) b = a + 1
      e0 = a ? ex[a] : 0; c0 = a ? c[a] : 0
      return split_cpu && ex[b] > e0 ? sprintf("%.2f", (c[b] - c0) * 1e6 / (ex[b] - e0)) : "-"
    }
    function win(lo, hi, v,    i, k, sum) {
      for (i = 1; i <= n; i++) if (ex[i] >= lo * ex[n] && ex[i] <= hi * ex[n]) { sum += v[i]; k++ }
      return k ? sum / k : v[lo < 0.5 ? 1 : n]
    }
    END {
      if (n < 2) { print "| too few samples |"; exit }
      sq = win(0.2, 0.3, s); se = win(0.9, 1, s); bq = win(0.2, 0.3, rb); be = win(0.9, 1, rb)
      fa = win(0, 0.1, eps); la = win(0.9, 1, eps); split(rates, r, "|"); if (r[1] > 0) { fa = r[1]; la = r[2] } fc = per_cpu(0, 0.1); lc = per_cpu(0.9, 1)
      wmax = 0; for (i = 1; i <= n; i++) { if (w[i] > wmax) wmax = w[i]; ls += ld[i] }
      printf "%d|%.0f|%.1f|%.1f|%.2f|%.1f|%.1f|%.2f|%.0f|%.0f|%.0f|%.0f|%.2f|%.0f|%.0f|%.2f|%.4f|%.1f|%.1f|%.1f|%.1f|%.1f|%.1f|%s|%s|%s|%s\n",
        ex[n], t[n], sq / 1024, se / 1024, se / sq, bq / 1048576, be / 1048576, bq ? be / bq : 0,
        win(0.2, 0.3, rows), win(0.9, 1, rows), fa, la, fa ? la / fa : 0, fc, lc, fc ? lc / fc : 0,
        win(0.9, 1, auc),
        w[1] / 1024, wmax / 1024, (wmax - w[1]) / 1024, ls / n, win(0, 0.1, ld), win(0.9, 1, ld),
        us_per_ex(0, 0.1, wc), us_per_ex(0.9, 1, wc), us_per_ex(0, 0.1, sc), us_per_ex(0.9, 1, sc)
    }' rates="$(tenth_rates "$2" "$SOAK_ROWS")" "$1"
}
{
  echo "| run | examples | seconds | shard RSS MB (2 shards) at 1/4 | at end | end / quarter | RocksDB MB at 1/4 | at end | end / quarter | rows at 1/4 | rows at end | examples/s first tenth | last tenth | last / first | examples per CPU-second first tenth | last tenth | last / first | window AUC, last tenth | worker RSS MB first | max | growth | mean load | load first tenth | last tenth | worker CPU us/example first tenth | last tenth | shards CPU us/example first tenth | last tenth |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for m in $MODES; do
    echo "| $m |$(summary "$WORK/soak-$m.csv" "$WORK/$m/worker.log")|"
  done
} > "$WORK/summary.md"
cat "$WORK/summary.md"

if [ "$PLOT" = 1 ]; then
  cols=()
  for m in $MODES; do cols+=("'$WORK/soak-$m.csv'"); done
  gnuplot <<EOF
set terminal pngcairo size 1400,1300 font ",10" noenhanced
set output '$WORK/soak.png'
set datafile separator ','
pe = 0; pc = 0
set key autotitle columnhead top left
set multiplot layout 4,2 title 'ctrps soak: LR/FTRL, 2 shards + 1 worker, $SOAK_ROWS drifting rows (period $PERIOD, churn $CHURN), on = admit_after $ADMIT_AFTER + ttl_s $TTL_S + expire_below $EXPIRE_BELOW'
set xlabel 'examples (M)'
set ylabel 'MB'
set title 'shard RSS (sum of 2)'
plot $(for m in $MODES; do printf "'%s' using (\$2/1e6):((\$4+\$5)/1024) with lines title '%s', " "$WORK/soak-$m.csv" "$m"; done)
set title 'worker RSS'
plot $(for m in $MODES; do printf "'%s' using (\$2/1e6):(\$3/1024) with lines title '%s', " "$WORK/soak-$m.csv" "$m"; done)
set title 'RocksDB bytes (sum of 2)'
plot $(for m in $MODES; do printf "'%s' using (\$2/1e6):(\$6/1048576) with lines title '%s', " "$WORK/soak-$m.csv" "$m"; done)
set title 'rows of the table (sum of 2)'
set ylabel 'rows (M)'
plot $(for m in $MODES; do printf "'%s' using (\$2/1e6):(\$7/1e6) with lines title '%s', " "$WORK/soak-$m.csv" "$m"; done)
set title 'examples/s (interval)'
set ylabel 'k examples/s'
plot $(for m in $MODES; do printf "'%s' using (\$2/1e6):(\$11/1e3) with lines title '%s', " "$WORK/soak-$m.csv" "$m"; done)
set title 'examples per CPU-second of worker + shards (interval)'
set ylabel 'k examples per CPU-s'
plot $(for m in $MODES; do printf "'%s' using (\$2/1e6):(d = \$14 - pc, r = (pc > 0 && d > 0) ? (\$2 - pe) / d / 1e3 : NaN, pe = \$2, pc = \$14, r) with lines title '%s', " "$WORK/soak-$m.csv" "$m"; done)
set title 'window AUC'
set ylabel 'AUC'
plot $(for m in $MODES; do printf "'%s' using (\$2/1e6):12 with lines title '%s', " "$WORK/soak-$m.csv" "$m"; done)
unset multiplot
EOF
  [ -s "$WORK/soak.png" ] || { echo "soak: gnuplot wrote no $WORK/soak.png" >&2; exit 1; }
  echo "plot: $WORK/soak.png"
fi
