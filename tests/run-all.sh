#!/usr/bin/env bash
# The test command: install dependencies, build, and run the whole suite
# twice, once optimized and once under AddressSanitizer + UndefinedBehavior-
# Sanitizer (a second meson build directory), then each libFuzzer target for
# CTRPS_FUZZ_SECONDS (default 60) in a third, clang-built directory, and the
# Python client's pytest suite (clients/python/tests) against build/. The
# last line is the summary "N passed, N failed[, N skipped]" counted from
# meson's test logs and pytest's JUnit XML, and the exit status is non-zero
# when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

./deploy/install-deps.sh || exit 1

fail_hard() { echo "$1" >&2; echo "0 passed, 1 failed"; exit 1; }

setup() { # dir, extra meson args...
  local dir=$1; shift
  if [ ! -f "$dir/build.ninja" ]; then
    meson setup "$dir" "$@" >"$dir.setup.log" 2>&1 || { cat "$dir.setup.log" >&2; return 1; }
  fi
}

setup build || fail_hard "meson setup build failed"
ninja -C build || fail_hard "build failed"
# Sanitizers: abort on the first report so a finding fails its test.
setup build-asan -Db_sanitize=address,undefined -Db_lundef=false \
  -Dc_args=-fno-sanitize-recover=all -Dc_link_args=-fno-sanitize-recover=all \
  || fail_hard "meson setup build-asan failed"
ninja -C build-asan || fail_hard "sanitizer build failed"
# Fuzzing (tests/fuzz): clang and libFuzzer in a third directory that builds
# only the fuzz targets and runs only the 'fuzz' suite, since the unit and
# integration suites already ran twice. -fsanitize=fuzzer-no-link gives the
# libraries under test the coverage instrumentation libFuzzer steers by.
logs=("$ROOT/build/meson-logs/testlog.json" "$ROOT/build-asan/meson-logs/testlog.json")
fuzz=false
if command -v clang >/dev/null 2>&1; then
  CC=clang setup build-fuzz -Dfuzz=true -Dtests=true \
    -Db_sanitize=address,undefined -Db_lundef=false \
    "-Dc_args=-fsanitize=fuzzer-no-link -fno-sanitize-recover=all" \
    -Dc_link_args=-fno-sanitize-recover=all \
    || fail_hard "meson setup build-fuzz failed"
  ninja -C build-fuzz fuzzers || fail_hard "fuzz build failed"
  fuzz=true
else
  echo "run-all: clang not found: the fuzz suite does not run" >&2
fi

# Integration tests spawn daemons; two at a time suits a 2-core machine.
meson test -C build --num-processes 2 --print-errorlogs
meson test -C build-asan --num-processes 2 --print-errorlogs --timeout-multiplier 3
if $fuzz; then
  # Each fuzzer is one process at full speed; two at a time on two cores.
  # A stale log must not stand in for a run that did not happen.
  rm -f build-fuzz/meson-logs/testlog.json
  CTRPS_FUZZ_SECONDS=${CTRPS_FUZZ_SECONDS:-60} \
    meson test -C build-fuzz --suite fuzz --no-rebuild --num-processes 2 --print-errorlogs
  logs+=("$ROOT/build-fuzz/meson-logs/testlog.json")
fi

# The Python client (clients/python): Debian's python3 and pytest (the python3
# first on PATH may not see Debian's python3-numpy, -protobuf, -xxhash).
# Exit status 5 (no tests collected) and any status but 0 and 1 count as a
# failure in the summary; the XML counts the tests.
rm -f build/pytest-junit.xml
CTRPS_BUILD_ROOT="$ROOT/build" timeout 900 /usr/bin/python3 -m pytest -q -p no:cacheprovider \
  --junitxml=build/pytest-junit.xml clients/python/tests
pytest_rc=$?

PYTEST_RC=$pytest_rc PYTEST_XML="$ROOT/build/pytest-junit.xml" python3 - "${logs[@]}" <<'PY'
import json, os, sys
import xml.etree.ElementTree as ET
passed = failed = skipped = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        failed += 1
        print(f"missing test log {path}", file=sys.stderr)
        continue
    for line in lines:
        if not line.strip():
            continue
        result = json.loads(line).get("result", "")
        if result in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif result == "SKIP":
            skipped += 1
        else:
            failed += 1
# pytest: 0 all passed, 1 some failed (the XML says which); anything else
# (5 = no tests collected, 2-4 usage or internal errors, 124 = timeout) is a
# failure of its own.
rc = int(os.environ["PYTEST_RC"])
if rc not in (0, 1):
    failed += 1
    print(f"pytest exited {rc}", file=sys.stderr)
bad = 0
try:
    root = ET.parse(os.environ["PYTEST_XML"]).getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        n = int(suite.get("tests", 0))
        b = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        skip = int(suite.get("skipped", 0))
        passed += n - b - skip
        bad += b
        skipped += skip
except (OSError, ET.ParseError) as e:
    bad += 1
    print(f"no pytest report: {e}", file=sys.stderr)
failed += bad if bad or rc != 1 else 1
summary = f"{passed} passed, {failed} failed"
if skipped:
    summary += f", {skipped} skipped"
print(summary)
sys.exit(1 if failed else 0)
PY
