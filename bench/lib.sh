# Shared by the bench scripts (sourced): two fresh local shards, and the
# helpers that read the worker's JSON result lines. Needs BUILD set.

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
field() { grep -o "\"$1\":[^,}]*" | cut -d: -f2; }

shard_pids=()
# start_shards CONFIG DIR: two shards of CONFIG on free ports with their data
# in DIR; writes DIR/c.ini, CONFIG with their addresses.
start_shards() {
  local cfg=$1 d=$2
  for i in 0 1; do
    "$BUILD/server/ctrps-server" --config "$cfg" --shard $i --listen 127.0.0.1:0 \
      --ready-file "$d/ready$i" --data-dir "$d" 2>"$d/shard$i.log" &
    shard_pids+=($!)
  done
  for i in 0 1; do
    for _ in $(seq 600); do [ -s "$d/ready$i" ] && break; sleep 0.05; done
  done
  sed "s/^shards = .*/shards = $(cat "$d/ready0"), $(cat "$d/ready1")/" "$cfg" > "$d/c.ini"
}
stop_shards() {
  if [ ${#shard_pids[@]} -gt 0 ]; then
    kill "${shard_pids[@]}" 2>/dev/null || true
    wait "${shard_pids[@]}" 2>/dev/null || true
  fi
  shard_pids=()
}
