"""Feature ids and routing agree with the C side (common/keys.h)."""

import numpy as np

from conftest import run, shared

from ctrps import keys



def c_keys(cdriver, pairs, nbuckets, nshards):
    """(slot_id, fid, bucket, owner, dense_home) per (slot, value) from C."""
    exe = cdriver("fid_driver")
    text = b"".join(s + b"\t" + v + b"\n" for s, v in pairs)
    out = run([exe, str(nbuckets), str(nshards)], input=text).stdout.decode().split("\n")
    return [tuple(int(x) for x in line.split()) for line in out if line]


def criteo_pairs(path):
    """Every (slot, raw value) of a Criteo TSV file, I1..I13 and C1..C26."""
    pairs = set()
    with open(path, "rb") as f:
        for line in f:
            fields = line.rstrip(b"\n").split(b"\t")
            fields = fields[-39:]
            for i, v in enumerate(fields):
                if v:
                    pairs.add((b"I%d" % (i + 1) if i < 13 else b"C%d" % (i - 12), v))
    return sorted(pairs)


def test_fid_matches_c_on_every_criteo_slot_and_value(cdriver):
    pairs = criteo_pairs(shared("criteo/train-first10k.tsv"))
    # and the tokens the bucketized integers hash as
    pairs += [(b"I%d" % i, str(b).encode()) for i in range(1, 14) for b in range(-3, 500)]
    want = c_keys(cdriver, pairs, 1024, 3)
    assert len(want) == len(pairs) > 50000
    got_sid = [keys.slot_id(s) for s, _ in pairs]
    got_fid = [keys.fid(s, v) for s, v in pairs]
    assert got_sid == [w[0] for w in want]
    assert got_fid == [w[1] for w in want]


def test_routing_matches_c(cdriver):
    rng = np.random.default_rng(7)
    values = [bytes(rng.integers(33, 127, size=int(n), dtype=np.uint8))
              for n in rng.integers(1, 40, size=2000)]
    pairs = [(b"slot%d" % (i % 17), v) for i, v in enumerate(values)]
    for nbuckets, nshards in [(1024, 2), (1000, 3), (7, 7), (65536, 5)]:
        want = c_keys(cdriver, pairs, nbuckets, nshards)
        fids = np.array([w[1] for w in want], dtype=np.uint64)
        assert [keys.bucket(int(f), nbuckets) for f in fids] == [w[2] for w in want]
        assert keys.key_owner_array(fids, nbuckets, nshards).tolist() == [w[3] for w in want]
        assert [keys.dense_home(v, nshards) for _, v in pairs] == [w[4] for w in want]


def test_str_and_bytes_hash_alike():
    assert keys.fid("C1", "68fd1e64") == keys.fid(b"C1", b"68fd1e64")
    assert keys.fid_slot(keys.fid("C1", "x")) == keys.slot_id("C1")
    assert keys.fid("C1", "x") != keys.fid("C2", "x")
