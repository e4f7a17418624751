#!/usr/bin/env bash
# Training benchmark: ctrps-worker against two local shards, all on this
# machine.
#
#  1. Generated data (ROWS rows, Criteo shape, dim-16 embeddings): examples/s
#     of `lr` (deploy/criteo-lr.ini) and `dcnv2` (deploy/criteo-dcnv2-dense.ini:
#     3 full-rank cross layers, stacked, MLP 400-400, batch 512, integers as
#     dense inputs, x0 429 wide), the median of RUNS runs, and the AUC and
#     logloss after one pass next to the generator's Bayes-optimal figures.
#  2. The real Criteo split (first 9,000 rows of train-first10k.tsv to train,
#     last 1,000 as holdout): holdout AUC and logloss of lr and dcnv2
#     (deploy/criteo-lr.ini, deploy/criteo-dcnv2.ini), median over SEEDS.
#
# Usage: bench/train_bench.sh   (env: ROWS=1000000 RUNS=3 SEEDS="1 2 3",
#        DATA=../shared/data, WORK=/tmp/ctrps-train-bench, BUILD=build)
#
# bench/train_bench.sh quality: holdout AUC/logloss of ctrps and of the
# PyTorch reference (TORCH=/work/shared/peers/torch/dcnv2_torch.py, Debian's
# python3-torch) on the same files, one right after the other: the real
# Criteo 10,000 rows and ROWS generated rows, each trained one pass on its
# first 90% and scored on the last 10%, batch 512, the same model shapes
# (LR: FTRL on the categorical values plus log(1+x) of the 13 integers,
# deploy/criteo-lr-dense.ini; DCN-V2: deploy/criteo-dcnv2-ref.ini). Medians
# over SEEDS for every side with randomness (torch's FTRL LR has none).
# Prints one line per dataset, model and side, then a Markdown table.
# QUALITY_SETS="real gen" and QUALITY_MODELS="lr dcnv2" choose what runs.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-speed}
ROWS=${ROWS:-1000000}
RUNS=${RUNS:-3}
SEEDS=${SEEDS:-1 2 3}
DATA=${DATA:-../shared/data}
WORK=${WORK:-/tmp/ctrps-train-bench}
BUILD=$(cd "${BUILD:-build}" && pwd)
rm -rf "$WORK"
mkdir -p "$WORK"

. bench/lib.sh

# run CONFIG [worker args...]: fresh shards, one worker; prints its JSON line.
run() {
  local cfg=$1; shift
  local d
  d=$(mktemp -d "$WORK/run.XXXX")
  start_shards "$cfg" "$d"
  "$BUILD/worker/ctrps-worker" --config "$d/c.ini" "$@" 2>"$d/worker.log"
  stop_shards
  rm -rf "$d"
}

# quality mode ----------------------------------------------------------------
if [ "$MODE" = quality ]; then
  TORCH=${TORCH:-/work/shared/peers/torch/dcnv2_torch.py}
  LR_CFG=${LR_CFG:-deploy/criteo-lr-dense.ini}
  DCN_CFG=${DCN_CFG:-deploy/criteo-dcnv2-ref.ini}
  export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export OMP_WAIT_POLICY=PASSIVE
  echo "# train_bench quality rows=$ROWS seeds=[$SEEDS] $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores"
  "$BUILD/tools/ctrps-cli" gen --rows "$ROWS" --seed 1 --format criteo --out "$WORK/gen.tsv"
  sets="gen:$WORK/gen.tsv"
  if [ -f "$DATA/criteo/train-first10k.tsv" ]; then
    sets="real:$DATA/criteo/train-first10k.tsv $sets"
  else
    echo "real skipped: $DATA/criteo/train-first10k.tsv not found"
  fi
  table="| data | model | PyTorch holdout AUC | ctrps holdout AUC | ctrps - PyTorch | PyTorch logloss | ctrps logloss |"
  table+=$'\n|---|---|---|---|---|---|---|'
  for set in $sets; do
    sname=${set%%:*}; file=${set#*:}
    case " ${QUALITY_SETS:-real gen} " in *" $sname "*) ;; *) continue ;; esac
    n=$(wc -l < "$file"); ntrain=$((n * 9 / 10))   # torch: int(N * 0.9)
    head -n "$ntrain" "$file" > "$WORK/$sname.train"
    tail -n +"$((ntrain + 1))" "$file" > "$WORK/$sname.hold"
    for m in lr:"$LR_CFG" dcnv2:"$DCN_CFG"; do
      name=${m%%:*}; cfg=${m#*:}
      case " ${QUALITY_MODELS:-lr dcnv2} " in *" $name "*) ;; *) continue ;; esac
      : > "$WORK/$sname-$name.torch"; : > "$WORK/$sname-$name.ctrps"
      for s in $SEEDS; do
        if [ "$name" = dcnv2 ] || [ "$s" = "${SEEDS%% *}" ]; then
          targs=(--model "$name" --threads 2 --seed "$s" --json-out "$WORK/$sname-$name.torch")
          [ "$name" = lr ] && targs+=(--lr-opt ftrl)
          "$TORCH" "$file" "${targs[@]}" > "$WORK/torch.log" 2>&1 || { cat "$WORK/torch.log"; exit 1; }
        fi
        sed -e "s/^\[model\]/[model]\nseed = $s/" -e "s/^\(\[table\..*\]\)/\1\nseed = $s/" "$cfg" > "$WORK/seeded.ini"
        run "$WORK/seeded.ini" --input "$WORK/$sname.train" --holdout "$WORK/$sname.hold" >> "$WORK/$sname-$name.ctrps"
      done
      for side in torch ctrps; do
        f="$WORK/$sname-$name.$side"
        echo "$sname $name $side holdout_auc_median $(field holdout_auc < "$f" | median) (runs: $(field holdout_auc < "$f" | tr -d ' ' | tr '\n' ' ')) holdout_logloss_median $(field holdout_logloss < "$f" | median)"
      done
      ta=$(field holdout_auc < "$WORK/$sname-$name.torch" | median)
      ca=$(field holdout_auc < "$WORK/$sname-$name.ctrps" | median)
      tl=$(field holdout_logloss < "$WORK/$sname-$name.torch" | median)
      cl=$(field holdout_logloss < "$WORK/$sname-$name.ctrps" | median)
      table+=$'\n'"| $sname ($ntrain/$((n - ntrain))) | $name | $(printf %.4f "$ta") | $(printf %.4f "$ca") | $(awk -v a="$ca" -v b="$ta" 'BEGIN{printf "%+.4f", a-b}') | $(printf %.4f "$tl") | $(printf %.4f "$cl") |"
    done
  done
  echo "$table"
  exit 0
fi

echo "# train_bench rows=$ROWS runs=$RUNS seeds=[$SEEDS] $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores"
"$BUILD/tools/ctrps-cli" gen --rows "$ROWS" --seed 1 --format criteo --out "$WORK/gen.tsv"
echo "generator bayes_auc $(field bayes_auc < "$WORK/gen.tsv.truth.json" | tr -d ' ') bayes_logloss $(field bayes_logloss < "$WORK/gen.tsv.truth.json" | tr -d ' ') main_effects_auc $(field main_effects_auc < "$WORK/gen.tsv.truth.json" | tr -d ' ')"
for m in lr:deploy/criteo-lr.ini dcnv2:deploy/criteo-dcnv2-dense.ini; do
  name=${m%%:*}; cfg=${m#*:}
  : > "$WORK/$name.runs"
  for r in $(seq "$RUNS"); do
    run "$cfg" --input "$WORK/gen.tsv" >> "$WORK/$name.runs"
  done
  eps=$(field examples_per_sec < "$WORK/$name.runs" | median)
  echo "generated $name examples_per_sec_median $eps (runs: $(field examples_per_sec < "$WORK/$name.runs" | tr '\n' ' ')) auc $(head -1 "$WORK/$name.runs" | field auc) logloss $(head -1 "$WORK/$name.runs" | field logloss)"
done

if [ -f "$DATA/criteo/train-first10k.tsv" ]; then
  head -n 9000 "$DATA/criteo/train-first10k.tsv" > "$WORK/train9k.tsv"
  tail -n 1000 "$DATA/criteo/train-first10k.tsv" > "$WORK/hold1k.tsv"
  for m in lr:deploy/criteo-lr.ini dcnv2:deploy/criteo-dcnv2.ini; do
    name=${m%%:*}; cfg=${m#*:}
    : > "$WORK/real-$name.runs"
    for s in $SEEDS; do
      sed "s/^\[model\]/[model]\nseed = $s/" "$cfg" > "$WORK/seeded.ini"
      run "$WORK/seeded.ini" --input "$WORK/train9k.tsv" --holdout "$WORK/hold1k.tsv" >> "$WORK/real-$name.runs"
    done
    echo "criteo-9k/1k $name holdout_auc_median $(field holdout_auc < "$WORK/real-$name.runs" | median) (runs: $(field holdout_auc < "$WORK/real-$name.runs" | tr '\n' ' ')) holdout_logloss_median $(field holdout_logloss < "$WORK/real-$name.runs" | median)"
  done
else
  echo "criteo-9k/1k skipped: $DATA/criteo/train-first10k.tsv not found"
fi
