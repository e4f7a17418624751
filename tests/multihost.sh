#!/bin/bash
# A cluster across "hosts": two shards and a worker, each in a network
# namespace of its own joined by veth pairs to a bridge, with addresses that
# exist only inside those namespaces (10.77.0.0/24). Everything is addressed
# by host names (shard-N.ctrps.test) that a private hosts file, bind-mounted
# over /etc/hosts in a mount namespace of the test's own, resolves.
#
# Run 1 trains without disturbance. Run 2 trains the same input and, while
# the worker trains, kills shard 1 (SIGKILL), deletes its namespace (its
# address is gone), points its name at a new address in a new namespace and
# restarts it there on the same data, as a rescheduled pod comes back. The
# worker must find it under its name (it resolves again at every
# reconnect), and the exported state must equal run 1's bit for bit (one
# worker, max_in_flight = 0: the same updates in the same order; nothing
# acknowledged is lost, nothing applied twice), as tests/test_crash.c checks
# on loopback.
#
# Skips (exit 77), saying why, where namespaces cannot be made: not root, no
# ip(8) or unshare(1), or a kernel/sandbox that refuses them.
set -euo pipefail

skip() {
    echo "SKIP: $*"
    exit 77
}

if [ -z "${CTRPS_MULTIHOST_INNER:-}" ]; then
    [ "$(id -u)" = 0 ] || skip "needs root: network namespaces, veth pairs, a bind mount over /etc/hosts"
    command -v ip >/dev/null || skip "no ip(8) (Debian package iproute2)"
    command -v unshare >/dev/null || skip "no unshare(1) (util-linux)"
    unshare --net --mount true 2>/dev/null || skip "cannot create network and mount namespaces here"
    export CTRPS_MULTIHOST_INNER=1
    # Our own network namespace is the "switch", our own mount namespace
    # holds the hosts file and the namespace handles: all vanish with us.
    exec unshare --net --mount --propagation private "$0" "$@"
fi

BUILD=${CTRPS_BUILD_ROOT:-build}
SERVER=$BUILD/server/ctrps-server
WORKER=$BUILD/worker/ctrps-worker
CLI=$BUILD/tools/ctrps-cli
DIR=$(mktemp -d /tmp/ctrps-multihost-XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${CTRPS_TEST_KEEP:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    for f in "$DIR"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
    exit 1
}

# ---- the network ----------------------------------------------------------
mkdir -p /run/netns
mount -t tmpfs ctrps-netns /run/netns || skip "cannot mount a tmpfs for namespace handles"
ip link set lo up
ip link add br0 type bridge 2>/dev/null || skip "cannot create a bridge here"
ip link set br0 up
host_ns() { # NAME ADDRESS: a namespace with one interface on the bridge
    ip netns add "ctrps-$1" || skip "cannot create network namespace $1"
    ip link add "h-$1" type veth peer name eth0 netns "ctrps-$1" || skip "cannot create veth pairs"
    ip link set "h-$1" master br0 up
    ip -n "ctrps-$1" addr add "$2/24" dev eth0
    ip -n "ctrps-$1" link set eth0 up
    ip -n "ctrps-$1" link set lo up
}
HOSTS=$DIR/hosts
write_hosts() { # SHARD1_ADDRESS; rewritten in place: the bind mount follows the inode
    printf '127.0.0.1 localhost\n10.77.0.1 shard-0.ctrps.test\n%s shard-1.ctrps.test\n10.77.0.10 worker.ctrps.test\n' \
        "$1" >"$HOSTS"
}
write_hosts 10.77.0.2
mount --bind "$HOSTS" /etc/hosts || skip "cannot bind-mount a hosts file over /etc/hosts"
host_ns s0 10.77.0.1
host_ns s1 10.77.0.2
host_ns w 10.77.0.10
getent hosts shard-1.ctrps.test | grep -q 10.77.0.2 || skip "the private hosts file is not used (nsswitch?)"

# ---- the cluster ------------------------------------------------------------
ROWS=${CTRPS_MULTIHOST_ROWS:-12000}
"$CLI" gen --rows "$ROWS" --seed 11 --format criteo --out "$DIR/data.tsv" >/dev/null
CONFIG=$DIR/cluster.ini
cat >"$CONFIG" <<EOF
[cluster]
shards = shard-0.ctrps.test:7101, shard-1.ctrps.test:7101
buckets = 128
[server]
durability = sync
flush_interval_ms = 300
[input]
format = criteo
integers = bucketize
[model]
type = lr
batch_size = 64
max_in_flight = 0
[worker]
timeout_ms = 60000
[table.wide]
dim = 1
optimizer = ftrl
alpha = 0.05
beta = 0.001
lambda1 = 0.0001
slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13, C1, C2, C3, C4, C5, C6, C7, C8
slots = C9, C10, C11, C12, C13, C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26
EOF

declare -A SHARD_PID
start_shard() { # RUN INDEX NAMESPACE: no --listen: each shard binds its own name's address
    local ready=$DIR/$1-ready-$2
    rm -f "$ready"
    ip netns exec "ctrps-$3" "$SERVER" --config "$CONFIG" --shard "$2" --data-dir "$DIR/$1-data" \
        --ready-file "$ready" >>"$DIR/$1-shard-$2.log" 2>&1 &
    SHARD_PID[$2]=$!
    PIDS+=($!)
}
wait_ready() { # RUN INDEX...
    local run=$1 i
    shift
    for i in "$@"; do
        for _ in $(seq 6000); do
            [ -s "$DIR/$run-ready-$i" ] && continue 2
            kill -0 "${SHARD_PID[$i]}" 2>/dev/null || fail "shard $i exited during start"
            sleep 0.05
        done
        fail "shard $i not ready within 300 s"
    done
}
stop_shard() { # INDEX SIGNAL
    kill -"$2" "${SHARD_PID[$1]}"
    local rc=0
    wait "${SHARD_PID[$1]}" || rc=$?
    [ "$2" != TERM ] || [ "$rc" = 0 ] || fail "shard $1 exited $rc after SIGTERM"
}

run() { # RUN MOVE(0|1): train, export into $DIR/RUN.export
    start_shard "$1" 0 s0
    start_shard "$1" 1 s1
    wait_ready "$1" 0 1
    grep -q "listening on 10.77.0.2:7101" "$DIR/$1-shard-1.log" || fail "shard 1 did not bind its name's address"
    ip netns exec ctrps-w "$WORKER" --config "$CONFIG" --input "$DIR/data.tsv" --log-level debug \
        >"$DIR/$1-worker.out" 2>"$DIR/$1-worker.log" &
    local worker=$!
    PIDS+=($worker)
    if [ "$2" = 1 ]; then
        # Move it once the worker trains against it (its first connection).
        for _ in $(seq 1200); do
            grep -q "connected to 10.77.0.2:7101" "$DIR/$1-worker.log" && break
            sleep 0.05
        done
        kill -0 $worker 2>/dev/null || fail "the worker finished before the move: raise CTRPS_MULTIHOST_ROWS"
        stop_shard 1 KILL
        ip netns del ctrps-s1 # the old address is gone with its namespace
        write_hosts 10.77.0.12
        host_ns s1b 10.77.0.12
        sleep 1 # the worker finds nobody at the old address meanwhile
        kill -0 $worker 2>/dev/null || fail "the worker did not wait for the moved shard"
        start_shard "$1" 1 s1b
        wait_ready "$1" 1
        grep -q "listening on 10.77.0.12:7101" "$DIR/$1-shard-1.log" || fail "shard 1 did not bind its new address"
    fi
    local rc=0
    wait $worker || rc=$?
    [ $rc = 0 ] || fail "the worker of run $1 exited $rc"
    ip netns exec ctrps-w "$CLI" --config "$CONFIG" --timeout 60000 export --table wide --state \
        >"$DIR/$1.export" || fail "export after run $1"
    stop_shard 0 TERM
    stop_shard 1 TERM
}

run clean 0
run moved 1

lines=$(wc -l <"$DIR/clean.export")
[ "$lines" -gt 1000 ] || fail "too little state to compare ($lines rows)"
cmp -s "$DIR/clean.export" "$DIR/moved.export" ||
    fail "the state after the move differs from the uninterrupted run's ($(diff "$DIR/clean.export" "$DIR/moved.export" | grep -c '^[<>]') lines differ)"
grep -q "shard 1 (shard-1.ctrps.test:7101) unavailable" "$DIR/moved-worker.log" ||
    fail "the worker did not report shard 1 unavailable"
grep -q "shard 1 (shard-1.ctrps.test:7101): connected to 10.77.0.12:7101" "$DIR/moved-worker.log" ||
    fail "the worker did not reconnect to shard 1 at its new address"
echo "ok: $lines rows equal after shard 1 moved from 10.77.0.2 to 10.77.0.12 under its name"
