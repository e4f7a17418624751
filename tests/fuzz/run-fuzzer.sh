#!/usr/bin/env bash
# Run one libFuzzer target for a bounded time over a copy of its seed corpus
# (the meson test "fuzz_<target>"; tests/fuzz/meson.build).
#
#   run-fuzzer.sh FUZZER SEED_DIR WORK_DIR [libFuzzer flags...]
#
# CTRPS_FUZZ_SECONDS (default 60) bounds the run, read here so the meson test
# itself has fixed arguments. The seeds are copied to WORK_DIR/corpus, where
# libFuzzer also adds the inputs it finds interesting, so the repository is
# never written. Exit status is libFuzzer's: non-zero when it found a crash,
# a leak, a timeout or an out-of-memory input; the input is then saved in
# WORK_DIR/artifacts and its path printed, with the command that replays it.
set -uo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 FUZZER SEED_DIR WORK_DIR [libFuzzer flags...]" >&2
  exit 2
fi
fuzzer=$1 seeds=$2 work=$3
shift 3
seconds=${CTRPS_FUZZ_SECONDS:-60}
case $seconds in
  ''|*[!0-9]*) echo "CTRPS_FUZZ_SECONDS must be a whole number of seconds, got '$seconds'" >&2; exit 2 ;;
esac

rm -rf "$work"
mkdir -p "$work/corpus" "$work/artifacts" || exit 2
cp -- "$seeds"/* "$work/corpus/" || exit 2
work=$(cd "$work" && pwd)

# -timeout: one input taking 10 s is a hang. The outer timeout only guards
# against a fuzzer that never stops (a hang at exit, which -timeout misses).
# -error_exitcode: libFuzzer's default, 77, is what meson reads as a
# skipped test; a crash must fail.
timeout --kill-after=30 $((seconds + 300)) "$fuzzer" \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -error_exitcode=1 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" \
  "$@" "$work/corpus"
status=$?

found=$(find "$work/artifacts" -type f | sort)
if [ "$status" -ne 0 ] || [ -n "$found" ]; then
  echo "run-fuzzer: $(basename "$fuzzer") failed (exit status $status)" >&2
  for f in $found; do
    echo "run-fuzzer: reproducer: $f" >&2
    echo "run-fuzzer: replay with: $fuzzer $f" >&2
  done
  [ "$status" -ne 0 ] && [ "$status" -ne 77 ] || status=1
fi
exit "$status"
