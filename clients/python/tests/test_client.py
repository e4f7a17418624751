"""The Python client against real shards: values pushed from Python read
back bit-exact with ctrps-cli and the other way, the HMAC handshake (a wrong
or missing secret is refused), stats, paged export, exactly-once pushes and
reconnection, and routing that follows the cluster map through a move."""

import signal

import numpy as np
import pytest

import ctrps
from ctrps import CtrpsError

SECRET = b"correct horse battery staple 0123456789"

BODY = """[server]
durability = sync

[table.emb]
dim = 4
optimizer = adagrad
lr = 0.1
initial_accumulator_value = 0.01
slots = C1, C2, C3

[table.wide]
dim = 1
optimizer = ftrl
alpha = 0.1
slots = I1

[model]
type = dcnv2
"""


@pytest.fixture(scope="module")
def cluster(module_cluster_factory):
    """One cluster for the module: each test uses its own slots and keys."""
    return module_cluster_factory(BODY, nshards=2, secret=SECRET)


def f32(text):
    return np.float32(float(text))


def cli_lookup(cluster, table, fids, state=False):
    """{fid: (found, values, state)} from `ctrps-cli lookup`."""
    args = ["lookup", "--table", table] + [a for f in fids for a in ("--fid", str(int(f)))]
    out = cluster.cli(*args, *(["--state"] if state else [])).stdout.decode()
    rows = {}
    for line in out.splitlines():
        parts = line.split("\t")
        vals = np.array([f32(x) for x in parts[2].split()], dtype=np.float32)
        st = np.array([f32(x) for x in parts[3].split()], dtype=np.float32) if state else None
        rows[int(parts[0])] = (parts[1] == "found", vals, st)
    return rows


def cli_export(cluster, table):
    """{fid: {field: values}} from `ctrps-cli export --state`."""
    rows = {}
    for line in cluster.cli("export", "--table", table, "--state").stdout.decode().splitlines():
        fid, field, vals = line.split("\t")
        rows.setdefault(int(fid), {})[field] = np.array([f32(x) for x in vals.split()], np.float32)
    return rows


def same_bits(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_python_push_reads_back_bit_exact_in_cli(cluster):
    rng = np.random.default_rng(1)
    with ctrps.Client(cluster.config) as c:
        keys = c.fids("C1", [f"v{i}" for i in range(300)])
        grads = (rng.normal(size=(300, 4)) * 10.0 ** rng.integers(-8, 3, size=(300, 1))).astype(np.float32)
        assert c.push("emb", keys, grads) == (300, 0)
        assert c.push("emb", keys[:50], grads[:50]) == (50, 0)  # a second step on some
        found, values, state = c.lookup("emb", keys, with_state=True)
        assert found.all() and values.dtype == np.float32 and state.shape == (300, 8)
        assert not same_bits(values[:50], values[50:100])  # real, distinct rows
        exported = {}
        pages = 0
        for k, v, s in c.export("emb", with_state=True, page_rows=64):
            pages += 1
            for i in range(len(k)):
                exported[int(k[i])] = (v[i], s[i])
    assert pages >= 5 and sorted(exported) == sorted(int(k) for k in keys)
    rows = cli_lookup(cluster, "emb", keys, state=True)
    for i, k in enumerate(keys):
        ok, v, s = rows[int(k)]
        assert ok and same_bits(v, values[i]) and same_bits(s, state[i])
        assert same_bits(exported[int(k)][0], values[i]) and same_bits(exported[int(k)][1], state[i])
    cli_rows = cli_export(cluster, "emb")
    assert sorted(cli_rows) == sorted(exported)
    for k, (v, s) in exported.items():
        assert same_bits(cli_rows[k]["w"], v) and same_bits(cli_rows[k]["acc"], s[4:])


def test_cli_push_reads_back_in_python(cluster):
    grads = ["0.5,-1.25,3e-5,7", "-2,0,1e-3,0.125", "1,2,3,4"]
    args = ["push", "--table", "emb", "--slot", "C2"]
    for i, g in enumerate(grads):
        args += ["--value", f"w{i}", "--grad", g]
    assert cluster.cli(*args).stdout.decode().strip() == "applied 3 dropped_nonfinite 0"
    with ctrps.Client(cluster.config) as c:
        keys = c.fids("C2", [f"w{i}" for i in range(3)])
        found, values = c.lookup("emb", keys)
        assert found.all()
        rows = cli_lookup(cluster, "emb", keys)
        for i, k in enumerate(keys):
            assert same_bits(rows[int(k)][1], values[i])
        # The same gradients pushed from Python onto fresh keys take the same
        # optimizer step: the payloads are the same float32 values.
        mine = c.fids("C3", [f"w{i}" for i in range(3)])
        g = np.array([[float(x) for x in s.split(",")] for s in grads], np.float32)
        assert c.push("emb", mine, g) == (3, 0)
        _, again = c.lookup("emb", mine)
        assert same_bits(again, values)


def test_fid_is_the_cli_fid(cluster):
    out = cluster.cli("lookup", "--slot", "C1", "--value", "68fd1e64", "--value", "é/\\x").stdout.decode()
    fids = [int(line.split("\t")[0]) for line in out.splitlines()]
    assert fids == [ctrps.fid("C1", "68fd1e64"), ctrps.fid("C1", "é/\\x")]


def test_wrong_or_missing_secret_is_refused(cluster, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_bytes(SECRET[:-1] + b"!\n")
    cfg = cluster.client_config("wrong.ini", secret_file=str(wrong))
    with ctrps.Client(cfg) as c:
        with pytest.raises(CtrpsError) as e:
            c.lookup("emb", [1, 2, 3])
    assert e.value.status == "UNAUTHENTICATED" and "authentication failed" in e.value.message
    nosecret = cluster.client_config("none.ini")
    text = open(nosecret).read().replace(f"auth_secret_file = {cluster.secret_file}\n", "")
    open(nosecret, "w").write(text)
    with ctrps.Client(nosecret) as c:
        with pytest.raises(CtrpsError) as e:
            c.stats()
    assert e.value.status == "UNAUTHENTICATED" and "requires authentication" in e.value.message
    short = tmp_path / "short"
    short.write_bytes(b"too short\n")
    with pytest.raises(ctrps.ConfigError, match="16 to 4096 bytes"):
        ctrps.Client(cluster.client_config("short.ini", secret_file=str(short)))
    with ctrps.Client(cluster.config) as c:
        failures = sum(s["counters"]["auth_failures"] for s in c.stats())
    assert failures >= 1


def test_stats_lookup_pull(cluster):
    with ctrps.Client(cluster.config, name="pytest") as c:
        keys = c.fids("I1", [str(i) for i in range(40)])
        found, values = c.lookup("wide", keys)
        assert not found.any() and not values.any()
        assert sum(s["tables"]["wide"]["rows"] for s in c.stats()) == 0
        for s in c.stats():                                     # a fresh store has no backlog
            assert s["rocksdb_pending_compaction_bytes"] == 0 and s["rocksdb_running_compactions"] == 0
        pulled = c.pull("wide", keys[:10])                      # init zero; a pull makes no row
        assert pulled.shape == (10, 1) and not pulled.any()
        assert sum(s["tables"]["wide"]["rows"] for s in c.stats()) == 0
        assert not c.lookup("wide", keys[:10])[0].any()
        assert c.push("wide", keys, np.ones((40, 1), np.float32)) == (40, 0)
        stats = c.stats()
        assert [s["shard"] for s in stats] == [0, 1]
        assert sum(s["tables"]["wide"]["rows"] for s in stats) == 40
        assert sum(s["tables"]["wide"]["pushed_rows"] for s in stats) == 40
        found, _ = c.lookup("wide", keys)
        assert found.all()
        owners = c.shard_of(keys)
        assert set(owners.tolist()) == {0, 1}  # the keys are spread over both shards
        with pytest.raises(CtrpsError) as e:
            c.dense_pull(["no.such.block"])
        assert e.value.status == "NOT_FOUND"
        with pytest.raises(ValueError):
            c.push("wide", keys, np.ones((len(keys), 2), np.float32))
        # Python ints above 2**63 keep all their bits (numpy alone would
        # make [small, big] a float64 array).
        mixed = [int(keys[0]), 7] + [int(k) for k in keys[1:]]
        found, _ = c.lookup("wide", mixed)
        assert found.tolist() == [True, False] + [True] * 39
        for bad in ([-1], [1.5], np.array([-3])):
            with pytest.raises(ValueError):
                c.lookup("wide", bad)
        # A non-finite gradient row is dropped by the shard and counted.
        g = np.ones((3, 1), np.float32)
        g[1, 0] = np.nan
        assert c.push("wide", keys[:3], g) == (2, 1)
        with pytest.raises(ctrps.ConfigError):
            c.lookup("nope", keys)


def test_server_status_is_raised(cluster):
    cfg = cluster.client_config("ghost.ini")
    with open(cfg, "a") as f:
        f.write("\n[table.ghost]\ndim = 2\n")
    with ctrps.Client(cfg) as c:
        with pytest.raises(CtrpsError) as e:
            c.lookup("ghost", c.fids("C1", ["a", "b", "c", "d"]))
    assert e.value.status == "UNKNOWN_TABLE" and e.value.shard in (0, 1)


def test_resent_push_is_applied_once(cluster):
    with ctrps.Client(cluster.config) as c:
        keys = c.fids("C3", ["x", "y", "z", "t"])
        g = np.full((4, 4), 0.5, np.float32)
        assert c.push("emb", keys, g) == (4, 0)
        _, once = c.lookup("emb", keys)
        c._next_seq -= 1                 # the same (client id, seq) again: a resend
        assert c.push("emb", keys, g) == (4, 0)
        _, after = c.lookup("emb", keys)
        assert same_bits(after, once)
        assert sum(s["counters"]["pushes_already_applied"] for s in c.stats()) >= 1
        assert c.push("emb", keys, g) == (4, 0)  # a new seq is a new step
        _, twice = c.lookup("emb", keys)
        assert not same_bits(twice, once)
    # A new client reusing the id continues after the shard's last seq.
    with ctrps.Client(cluster.config, client_id=c.client_id) as c2:
        assert c2.push("emb", keys, g) == (4, 0)
        _, thrice = c2.lookup("emb", keys)
        assert not same_bits(thrice, twice)


def test_reconnects_after_a_shard_restart(cluster):
    with ctrps.Client(cluster.config, timeout=30) as c:
        keys = c.fids("C1", [f"r{i}" for i in range(64)])
        g = np.ones((64, 4), np.float32)
        assert c.push("emb", keys, g) == (64, 0)
        _, before = c.lookup("emb", keys)
        assert cluster.stop_shard(0, signal.SIGTERM) == 0
        cluster.start_shard(0)           # same port; the client's socket is dead
        found, after = c.lookup("emb", keys)
        assert found.all() and same_bits(after, before)
        assert c.push("emb", keys, g) == (64, 0)


def test_follows_the_map_through_a_move(cluster_factory):
    """Buckets move to the other shard under a client routing by the older
    map: it fetches the new map, re-routes with the same push seq, and ends
    in the state of a cluster that never moved."""
    moved, ref = cluster_factory("map_version = 1\n" + BODY), cluster_factory(BODY)
    # The shards' first map lists the addresses they started with, before
    # their ports were known: an operator's reset (a higher map_version in
    # the config) makes them list the real ones.
    moved.set_body("map_version = 2\n" + BODY)
    for i in range(2):
        assert moved.stop_shard(i) == 0
        moved.start_shard(i)
    with ctrps.Client(moved.config) as c, ctrps.Client(ref.config) as r:
        assert c.map_version == 2
        keys = c.fids("C2", [f"m{i}" for i in range(400)])
        g = np.linspace(-1, 1, 400 * 4, dtype=np.float32).reshape(400, 4)
        for cl in (c, r):
            assert cl.push("emb", keys, g) == (400, 0)
        out = moved.cli("move", "--buckets", "0-255", "--to", "1").stdout.decode()
        assert "map version 3" in out, out
        # Shard 0 no longer owns buckets 0-255: pushes to them are refused
        # WRONG_SHARD and follow the new map.
        assert (c.shard_of(keys) == 0).any()
        for cl in (c, r):
            assert cl.push("emb", keys, 2 * g) == (400, 0)
        assert c.map_version == 3
        assert (c.shard_of(keys) == 0).sum() < (r.shard_of(keys) == 0).sum()
        f1, v1, s1 = c.lookup("emb", keys, with_state=True)
        f2, v2, s2 = r.lookup("emb", keys, with_state=True)
        assert f1.all() and f2.all()
        assert same_bits(v1, v2) and same_bits(s1, s2)
        stats = c.stats()
        assert stats[1]["counters"]["move_rows_received"] > 0
