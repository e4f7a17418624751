"""A blocking client of a ctrps cluster over its wire protocol.

Wire (proto/ctrps.proto, common/frame.c): TCP, each frame a 4-byte
big-endian length and one protobuf Request or Response; a response echoes
its request's id. One socket per shard, opened on first use; a call that
spans shards sends every shard its part before reading any answer, so the
shards work in parallel without threads.

Connection states per shard, as common/client.c moves them:
  down --connect, Hello--> hello --Hello OK--> ready
  hello --challenge--> (answer HMAC-SHA256 over tag, server nonce, client
        nonce, client id; common/auth.c) --> ready, or refused
  any --socket error--> down: reconnect with backoff (50 ms doubling to 2 s)
        and send the unanswered request again, until the call's deadline
  refused (a wrong or missing secret) --> the call fails, no retry.
Pushes carry this client's id and a sequence number, one per call and
increasing, the same on every shard a call touches, so a push resent after
a reconnect is applied once (the shard answers already_applied).

Keys go to the owners of their buckets under the cluster map (README
"Resharding"), at first the config's even split. A part answered
WRONG_SHARD by a shard with a newer map (its epoch in map_version) makes
the client fetch that map and resend the part's keys to their new owners,
with the same push seq; a shard with an older map, or one answering MOVING
(its range is in a move's cut-over), is asked again after 20 ms, until the
call's deadline.
"""

import errno
import hashlib
import hmac
import numbers
import os
import socket
import struct
import time

import numpy as np

from . import _proto, config as _config, keys as _keys

PROTOCOL_VERSION = 1
AUTH_TAG = b"ctrps-auth-v1"
AUTH_NONCE = 32
SECRET_MIN = 16
SECRET_MAX = 4096
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
HELLO_ID = 0
RETRY_S = 0.02                   # WRONG_SHARD from an older map, MOVING: ask again after


class CtrpsError(Exception):
    """An error status from a shard, or a shard that cannot be reached.

    Attributes: status (the wire status name, e.g. "UNAUTHENTICATED", or
    "UNAVAILABLE" when no answer came), message (the shard's text), shard
    (its index, or None)."""

    def __init__(self, status, message, shard=None, address=None):
        self.status = status
        self.message = message
        self.shard = shard
        self.address = address
        where = f"shard {shard} ({address}): " if shard is not None else ""
        super().__init__(f"{where}{status}: {message}")


def load_secret(path):
    """ps_auth_load: the key bytes with trailing whitespace dropped."""
    try:
        with open(path, "rb") as f:
            data = f.read(SECRET_MAX + 1)
    except OSError as e:
        raise _config.ConfigError(f"auth_secret_file {path}: {e.strerror}") from None
    more = len(data) > SECRET_MAX
    data = data[:SECRET_MAX].rstrip(b"\n\r \t")
    if more or len(data) < SECRET_MIN:
        raise _config.ConfigError(f"auth_secret_file {path}: the secret must be {SECRET_MIN} to "
                                  f"{SECRET_MAX} bytes")
    return data


def auth_mac(secret, server_nonce, client_nonce, client_id):
    """ps_auth_mac: HMAC-SHA256(secret, tag | server nonce | client nonce |
    client id as 8 little-endian bytes)."""
    msg = AUTH_TAG + bytes(server_nonce) + bytes(client_nonce) + struct.pack("<Q", client_id)
    return hmac.new(secret, msg, hashlib.sha256).digest()


class _Conn:
    """One shard's socket and what it needs to reconnect."""

    def __init__(self, index, address):
        self.index = index
        self.address = address
        host, _, port = address.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # "[::1]:7101": an IPv6 literal, as in the C client
        # A name is resolved again at every (re)connection, by create_connection.
        self.host, self.port = host, int(port)
        self.sock = None
        self.buf = bytearray()
        self.backoff = BACKOFF_MIN
        self.last_error = ""

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.buf = bytearray()


class Client:
    """Client(config_path, name="ctrps-python", client_id=None, timeout=30.0)

    Reads the cluster's INI config (shards, buckets, tables, the auth secret
    file). Arrays: keys are uint64, values and gradients float32 rows of the
    table's dim. Every call raises CtrpsError with the shard's status and
    message on failure. Use as a context manager or call close()."""

    def __init__(self, config_path, name="ctrps-python", client_id=None, timeout=30.0):
        self.config = config_path if isinstance(config_path, _config.Config) else _config.load(config_path)
        self._pb = _proto.load()
        self.name = name
        self.timeout = float(timeout)
        self.client_id = client_id
        while not self.client_id:
            self.client_id = struct.unpack("<Q", os.urandom(8))[0]
        path = self.config.auth_secret_file
        self._secret = load_secret(path) if path else b""
        self._max_frame = self.config.max_frame_bytes
        self._conns = [_Conn(i, a) for i, a in enumerate(self.config.shards)]
        nb = self.config.buckets
        self._map_version = self.config.map_version
        self._owner = np.array([_keys.bucket_owner(b, nb, self.nshards) for b in range(nb)],
                               dtype=np.uint32)
        self._next_id = HELLO_ID + 1
        self._next_seq = 1

    # ---- lifecycle -----------------------------------------------------------

    def close(self):
        for c in self._conns:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def nshards(self):
        return len(self._conns)

    # ---- keys ------------------------------------------------------------------

    @staticmethod
    def fid(slot, value):
        """The fid of value in slot, identical to the C side (common/keys.c)."""
        return _keys.fid(slot, value)

    def fids(self, slot, values):
        """fid() of many values of one slot, as a uint64 array."""
        sid = _keys.slot_id(slot)
        return np.array([_keys.fid_of(sid, v) for v in values], dtype=np.uint64)

    def shard_of(self, keys):
        """Owning shard of each key under the cluster map this client holds."""
        return self._owner[_keys.bucket_array(self._keys(keys), self.config.buckets)]

    @property
    def map_version(self):
        """The epoch of the cluster map this client routes by."""
        return self._map_version

    # ---- keyed calls ---------------------------------------------------------------

    def lookup(self, table, keys, with_state=False):
        """Read rows without creating them. Returns (found bool[n], values
        float32[n, dim]) — zeros where not found — plus the optimizer state
        float32[n, state_width] with with_state=True."""
        t = self.config.table(table)
        keys = self._keys(keys)
        n = len(keys)
        found = np.zeros(n, dtype=bool)
        values = np.zeros((n, t.dim), dtype=np.float32)
        state = np.zeros((n, t.state_width), dtype=np.float32) if with_state else None

        def build(part):
            return self._pb.Request(lookup=self._pb.LookupRequest(table=table, keys=part,
                                                                   with_state=with_state))

        def take(conn, pos, resp):
            r = resp.lookup
            m = len(pos)
            if (resp.WhichOneof("result") != "lookup" or r.dim != t.dim or len(r.values) != m * t.dim
                    or len(r.found) != m or (with_state and (r.state_dim != t.state_width
                                                             or len(r.state) != m * t.state_width))):
                raise self._mismatch(conn, t)
            found[pos] = np.asarray(r.found, dtype=bool)
            values[pos] = np.asarray(r.values, dtype=np.float32).reshape(m, t.dim)
            if with_state:
                state[pos] = np.asarray(r.state, dtype=np.float32).reshape(m, t.state_width)

        self._keyed(keys, build, take)
        return (found, values, state) if with_state else (found, values)

    def pull(self, table, keys):
        """Read rows, creating missing ones from the table's init rule (as
        training does). Returns float32[n, dim]."""
        t = self.config.table(table)
        keys = self._keys(keys)
        values = np.zeros((len(keys), t.dim), dtype=np.float32)

        def build(part):
            return self._pb.Request(pull=self._pb.PullRequest(table=table, keys=part))

        def take(conn, pos, resp):
            r = resp.pull
            if resp.WhichOneof("result") != "pull" or r.dim != t.dim or len(r.values) != len(pos) * t.dim:
                raise self._mismatch(conn, t)
            values[pos] = np.asarray(r.values, dtype=np.float32).reshape(len(pos), t.dim)

        self._keyed(keys, build, take)
        return values

    def push(self, table, keys, grads):
        """Apply one optimizer step per key with its gradient row (float32[n,
        dim]); exactly once, also when resent. Returns (applied, dropped):
        rows updated and rows dropped for a non-finite gradient."""
        t = self.config.table(table)
        keys = self._keys(keys)
        grads = np.ascontiguousarray(grads, dtype=np.float32)
        if grads.shape != (len(keys), t.dim) and not (grads.ndim == 1 and grads.size == len(keys) * t.dim):
            raise ValueError(f"grads must be {len(keys)} x {t.dim} for table {table}, got {grads.shape}")
        grads = grads.reshape(len(keys), t.dim)
        totals = [0, 0]
        reqs = []
        seq = [0]

        def build(part, pos=None):
            # A part re-routed after WRONG_SHARD keeps the call's seq.
            req = self._pb.Request(push=self._pb.PushRequest(
                table=table, keys=part, grads=grads[pos].ravel().tolist(), client_id=self.client_id,
                seq=seq[0]))
            reqs.append(req)
            return req

        def sequence():
            # After every shard involved said Hello: a reused client id
            # continues after the last seq the shards applied.
            seq[0] = self._next_seq
            self._next_seq += 1
            for req in reqs:
                req.push.seq = seq[0]

        def take(conn, pos, resp):
            if resp.WhichOneof("result") != "push":
                raise self._mismatch(conn, t)
            r = resp.push
            totals[0] += len(pos) if r.already_applied else r.applied
            totals[1] += r.dropped_nonfinite

        self._keyed(keys, build, take, pass_pos=True, prepare=sequence)
        return totals[0], totals[1]

    # ---- whole-shard calls -------------------------------------------------------------

    def stats(self):
        """One dict per shard: shard, address, durability, rocksdb_bytes,
        rocksdb_pending_compaction_bytes, rocksdb_running_compactions,
        store_error, tables {name: {rows, rows_in_memory, dirty_rows,
        pulled_rows, pushed_rows, dropped_nonfinite, memory_misses}},
        counters {name: value} — what `ctrps-cli stats` prints."""
        out = []
        for conn in self._conns:
            resp = self._call_one(conn, self._pb.Request(stats=self._pb.StatsRequest()))
            s = resp.stats
            out.append({
                "shard": s.shard_id, "address": conn.address, "durability": s.durability,
                "rocksdb_bytes": s.rocksdb_bytes,
                "rocksdb_pending_compaction_bytes": s.rocksdb_pending_compaction_bytes,
                "rocksdb_running_compactions": s.rocksdb_running_compactions,
                "store_error": s.store_error,
                "tables": {t.name: {"rows": t.rows, "rows_in_memory": t.rows_in_memory,
                                    "dirty_rows": t.dirty_rows, "pulled_rows": t.pulled_rows,
                                    "pushed_rows": t.pushed_rows,
                                    "dropped_nonfinite": t.dropped_nonfinite,
                                    "memory_misses": t.memory_misses} for t in s.tables},
                "counters": {c.name: c.value for c in s.counters},
            })
        return out

    def export(self, table, with_state=False, page_rows=8192):
        """Every row of a table, streamed one page at a time, shard after
        shard in store order: yields (keys uint64[m], values float32[m,
        dim]) or, with with_state, (keys, values, state float32[m,
        state_width]). Memory stays one page."""
        t = self.config.table(table)
        for conn in self._conns:
            after = b""
            while True:
                req = self._pb.Request(export=self._pb.ExportRequest(
                    table=table, after=after, limit=page_rows, with_state=with_state))
                resp = self._call_one(conn, req)
                e = resp.export
                m = len(e.keys)
                if (resp.WhichOneof("result") != "export" or e.dim != t.dim or len(e.values) != m * t.dim
                        or (with_state and (e.state_dim != t.state_width or len(e.state) != m * t.state_width))):
                    raise self._mismatch(conn, t)
                if m:
                    k = np.asarray(e.keys, dtype=np.uint64)
                    v = np.asarray(e.values, dtype=np.float32).reshape(m, t.dim)
                    if with_state:
                        yield k, v, np.asarray(e.state, dtype=np.float32).reshape(m, t.state_width)
                    else:
                        yield k, v
                if e.done or m == 0:
                    break
                after = e.next

    def dense_pull(self, names):
        """Current values of dense parameter blocks (DCN-V2 / MLP weights),
        each from its home shard: {name: float32 array}. A block no worker
        created yet is an error (NOT_FOUND)."""
        by_home = {}
        for n in names:
            # Dense blocks live on their home among the config's shards,
            # whatever the map lists since.
            by_home.setdefault(_keys.dense_home(n, len(self.config.shards)), []).append(n)
        out = {}
        for home, group in sorted(by_home.items()):
            resp = self._call_one(self._conns[home],
                                  self._pb.Request(dense_pull=self._pb.DensePullRequest(names=group)))
            blocks = resp.dense_pull.blocks
            if resp.WhichOneof("result") != "dense_pull" or [b.name for b in blocks] != group:
                raise CtrpsError("BAD_REQUEST", "dense pull answered with other blocks", home,
                                 self._conns[home].address)
            for b in blocks:
                out[b.name] = np.asarray(b.values, dtype=np.float32)
        return out

    def cluster_map(self, shard=0):
        """(version, buckets, shards, owner[bucket]) as a shard sees it."""
        resp = self._call_one(self._conns[shard], self._pb.Request(cluster_map=self._pb.ClusterMapRequest()))
        m = resp.cluster_map
        return m.version, m.buckets, list(m.shards), np.asarray(m.owner, dtype=np.uint32)

    # ---- internals ----------------------------------------------------------------------

    @staticmethod
    def _keys(keys):
        """Keys as a uint64 array. A list of Python ints is converted one by
        one: numpy would turn [1, 2**63] into float64 and lose bits."""
        if isinstance(keys, np.ndarray):
            k = keys
            if k.dtype.kind == "i" and (k < 0).any() or k.dtype.kind not in "iu":
                raise ValueError(f"keys must be non-negative integers (uint64 fids), got {k.dtype}")
        else:
            items = list(keys) if not isinstance(keys, numbers.Integral) else [keys]
            if not all(isinstance(x, numbers.Integral) and 0 <= int(x) < 1 << 64 for x in items):
                raise ValueError("keys must be integers in [0, 2**64) (uint64 fids)")
            k = np.array([int(x) for x in items], dtype=np.uint64)
        return np.ascontiguousarray(k.astype(np.uint64, copy=False).ravel())

    def _mismatch(self, conn, t):
        return CtrpsError("BAD_DIMENSION", f"response does not match the request (table {t.name}, "
                          f"dim {t.dim})", conn.index, conn.address)

    def _keyed(self, keys, build, take, pass_pos=False, prepare=None):
        deadline = time.monotonic() + self.timeout
        todo = np.arange(len(keys))
        while len(todo):
            owner = self.shard_of(keys[todo])
            parts = []
            for s in np.unique(owner):
                pos = todo[owner == s]
                req = build(keys[pos].tolist(), pos) if pass_pos else build(keys[pos].tolist())
                parts.append((self._conns[s], pos, req))
            again = []

            def refused(i, resp):
                """WRONG_SHARD or MOVING: the part goes again (re-routed)."""
                status = self._pb.Status.Name(resp.status)
                if status == "WRONG_SHARD" and resp.map_version > self._map_version:
                    self._take_map(parts[i][0])
                elif status not in ("WRONG_SHARD", "MOVING"):
                    return False
                again.append(parts[i][1])
                return True

            self._call_many([(c, r) for c, _, r in parts],
                            lambda i, resp: take(parts[i][0], parts[i][1], resp), prepare, refused,
                            deadline)
            prepare = None
            todo = np.concatenate(again) if again else todo[:0]
            if len(todo):
                if time.monotonic() >= deadline:
                    raise CtrpsError("UNAVAILABLE", f"keys still moving or re-routed after "
                                     f"{self.timeout:g} s")
                time.sleep(RETRY_S)

    def _take_map(self, conn):
        """Route by the newer map `conn`'s shard holds; shards it lists
        beyond the config (grown clusters) get connections."""
        resp = self._call_one(conn, self._pb.Request(cluster_map=self._pb.ClusterMapRequest()))
        m = resp.cluster_map
        if m.buckets != self.config.buckets or len(m.owner) != m.buckets or not m.shards:
            raise CtrpsError("BAD_REQUEST", f"cluster map of {m.buckets} buckets; the config has "
                             f"{self.config.buckets}", conn.index, conn.address)
        if m.version <= self._map_version:
            return
        for i, address in enumerate(m.shards):
            if i == len(self._conns):
                self._conns.append(_Conn(i, address))
            elif self._conns[i].address != address:
                self._conns[i].close()
                self._conns[i] = _Conn(i, address)
        self._owner = np.asarray(m.owner, dtype=np.uint32)
        self._map_version = m.version

    def _call_one(self, conn, req):
        box = []
        self._call_many([(conn, req)], lambda i, resp: box.append(resp))
        return box[0]

    def _call_many(self, calls, on_answer, prepare=None, refused=None, deadline=None):
        """Send each (conn, request), then collect every answer, resending
        on a new connection after an error, until the deadline. prepare()
        runs once every shard involved is connected, before anything is
        sent. An error status raises CtrpsError unless refused(i, resp)
        takes it (returns True)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        for conn in dict((id(c), c) for c, _ in calls).values():
            while True:
                try:
                    self._ensure(conn, deadline)
                    break
                except _Retry as e:
                    self._down(conn, str(e), deadline)
        if prepare:
            prepare()
        pending = {}
        for i, (conn, req) in enumerate(calls):
            req.id = self._next_id
            self._next_id += 1
            pending[i] = (conn, req, req.SerializeToString())
        unsent = set(pending)
        while pending:
            for i in sorted(unsent):
                conn, req, data = pending[i]
                try:
                    self._ensure(conn, deadline)
                    self._send(conn, data, deadline)
                    unsent.discard(i)
                except _Retry as e:
                    self._down(conn, str(e), deadline)
            for i in sorted(pending):
                if i in unsent:
                    continue
                conn, req, _ = pending[i]
                try:
                    resp = self._recv_id(conn, req.id, deadline)
                except _Retry as e:
                    self._down(conn, str(e), deadline)
                    unsent.update(j for j in pending if pending[j][0] is conn)
                    continue
                del pending[i]
                if resp.status != 0 and refused and refused(i, resp):
                    continue
                if resp.status != 0:
                    raise CtrpsError(self._pb.Status.Name(resp.status), resp.message, conn.index,
                                     conn.address)
                on_answer(i, resp)

    def _down(self, conn, why, deadline):
        """Drop the connection and wait out its backoff, or give up."""
        conn.close()
        conn.last_error = why
        now = time.monotonic()
        if now >= deadline:
            raise CtrpsError("UNAVAILABLE", f"no answer within {self.timeout:g} s; last error: {why}",
                             conn.index, conn.address)
        time.sleep(min(conn.backoff, deadline - now))
        conn.backoff = min(conn.backoff * 2, BACKOFF_MAX)

    def _ensure(self, conn, deadline):
        """Connect and say Hello (with the challenge-response) if needed."""
        if conn.sock is not None:
            return
        try:
            sock = socket.create_connection((conn.host, conn.port),
                                            timeout=max(deadline - time.monotonic(), 0.001))
        except OSError as e:
            raise _Retry(e.strerror or str(e)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock = sock
        conn.buf = bytearray()
        cnonce = os.urandom(AUTH_NONCE)
        resp = self._hello(conn, cnonce, b"", deadline)
        h = resp.hello
        if resp.status == 0 and resp.WhichOneof("result") == "hello" and not h.authenticated:
            if len(h.auth_challenge) != AUTH_NONCE or not self._secret:
                msg = ("Hello: malformed authentication challenge" if self._secret else
                       "the shard requires authentication; set [server] auth_secret_file in this "
                       "client's config")
                conn.close()
                raise CtrpsError("UNAUTHENTICATED", msg, conn.index, conn.address)
            mac = auth_mac(self._secret, h.auth_challenge, cnonce, self.client_id)
            resp = self._hello(conn, cnonce, mac, deadline)
            h = resp.hello
        if resp.status != 0:
            conn.close()
            raise CtrpsError(self._pb.Status.Name(resp.status), "Hello refused: " + resp.message,
                             conn.index, conn.address)
        conn.backoff = BACKOFF_MIN
        # A client id reused across processes: new pushes continue after the
        # last one the shard applied, or they would be dropped as replays.
        if h.last_push_seq >= self._next_seq:
            self._next_seq = h.last_push_seq + 1

    def _hello(self, conn, cnonce, mac, deadline):
        req = self._pb.Request(id=HELLO_ID, hello=self._pb.HelloRequest(
            protocol_version=PROTOCOL_VERSION, client_name=self.name, client_id=self.client_id,
            client_nonce=cnonce, auth_response=mac))
        try:
            self._send(conn, req.SerializeToString(), deadline)
            return self._recv_id(conn, HELLO_ID, deadline)
        except _Retry:
            conn.close()
            raise

    def _send(self, conn, payload, deadline):
        if len(payload) > 0xFFFFFFFF:
            raise ValueError("request too large for one frame")
        try:
            conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            conn.sock.sendall(struct.pack(">I", len(payload)) + payload)
        except (OSError, socket.timeout) as e:
            raise _Retry(_why(e)) from None

    def _recv_id(self, conn, want_id, deadline):
        """The next response with id want_id; responses to requests given up
        on earlier are dropped."""
        while True:
            resp = self._recv(conn, deadline)
            if resp.id == want_id:
                return resp

    def _recv(self, conn, deadline):
        while True:
            if len(conn.buf) >= 4:
                n = struct.unpack(">I", bytes(conn.buf[:4]))[0]
                if n > self._max_frame:
                    raise _Retry("response larger than max_frame_bytes")
                if len(conn.buf) >= 4 + n:
                    payload = bytes(conn.buf[4:4 + n])
                    del conn.buf[:4 + n]
                    resp = self._pb.Response()
                    try:
                        resp.ParseFromString(payload)
                    except Exception:
                        raise _Retry("undecodable response") from None
                    return resp
            try:
                conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = conn.sock.recv(1 << 20)
            except (OSError, socket.timeout) as e:
                raise _Retry(_why(e)) from None
            if not chunk:
                raise _Retry("connection closed by the shard")
            conn.buf += chunk


class _Retry(Exception):
    """A connection-level failure: reconnect and send again."""


def _why(e):
    if isinstance(e, socket.timeout):
        return "timed out"
    return e.strerror or errno.errorcode.get(e.errno, str(e))
