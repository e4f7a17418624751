"""Feature ids, buckets and shard routing, as common/keys.h computes them.

fid = slot id (low 16 bits of XXH3-64 of the slot name) in the top 16 bits,
XXH3-64 of the raw value bytes in the low 48. bucket = splitmix64 finalizer
of the fid modulo the bucket count; shard s owns the contiguous bucket range
[s * buckets / shards, (s + 1) * buckets / shards).

Scalar functions take and return Python ints; the ``*_array`` forms work on
numpy uint64 arrays (numpy's uint64 arithmetic wraps modulo 2**64, as C's).
"""

import numpy as np
import xxhash

FID_VALUE_BITS = 48
FID_VALUE_MASK = (1 << FID_VALUE_BITS) - 1
_M64 = (1 << 64) - 1


def _bytes(x):
    """Slot names and values hash as their bytes; str is taken as UTF-8."""
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    if isinstance(x, str):
        return x.encode("utf-8")
    raise TypeError(f"expected str or bytes, got {type(x).__name__}")


def xxh3_64(data):
    return xxhash.xxh3_64_intdigest(_bytes(data))


def slot_id(name):
    """ps_slot_id: the low 16 bits of XXH3-64 of the slot name."""
    return xxh3_64(name) & 0xFFFF


def fid_of(sid, value):
    """ps_fid for a known 16-bit slot id and a raw value (str or bytes)."""
    return (sid << FID_VALUE_BITS) | (xxh3_64(value) & FID_VALUE_MASK)


def fid(slot, value):
    """The feature id of `value` in slot `slot` (slot name, str or bytes).

    Identical to the C side: `ctrps-cli lookup --slot C1 --value 68fd1e64`
    reads the row of fid("C1", "68fd1e64")."""
    return fid_of(slot_id(slot), value)


def fid_slot(f):
    return f >> FID_VALUE_BITS


def mix64(x):
    """splitmix64's finalizer (ps_mix64)."""
    x &= _M64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return x


def bucket(f, nbuckets):
    return mix64(f) % nbuckets


def bucket_owner(b, nbuckets, nshards):
    return (b * nshards) // nbuckets


def key_owner(f, nbuckets, nshards):
    return bucket_owner(bucket(f, nbuckets), nbuckets, nshards)


def mix64_array(keys):
    x = np.asarray(keys, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def bucket_array(keys, nbuckets):
    """Bucket of every key (uint64 array) as an int64 array."""
    return (mix64_array(keys) % np.uint64(nbuckets)).astype(np.int64)


def key_owner_array(keys, nbuckets, nshards):
    """Owning shard of every key (uint64 array) under the even split, as an
    int64 array."""
    b = bucket_array(keys, nbuckets).astype(np.uint64)
    return ((b * np.uint64(nshards)) // np.uint64(nbuckets)).astype(np.int64)


def dense_home(name, nshards):
    """ps_dense_home: the shard holding a dense parameter block."""
    return mix64(xxh3_64(name)) % nshards
