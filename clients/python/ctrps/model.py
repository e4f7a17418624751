"""Scoring with an exported model, in numpy (docs/export-format.md).

load(D) reads an export directory written by `ctrps-cli export-model --dir
D`: it checks the manifest's format and version, the size and sha256 of every
file, that the config copy, the tables and the dense blocks agree with each
other, and that the export's fid rule is the one this package computes. The
Model then parses input lines exactly as the worker does (ctrps.parse) and
computes the worker's forward pass:

  lr          z = sum over the LR table's slots of w[fid] * value, + w[bias]
              (in double, in feature order, as worker/model.c lr_forward)
  dcnv2, can, dcnv2+can
              x0 = [embedding fields | dense integers | CAN unit outputs]
              (worker/batch.c layout: every slot of every non-CAN table, in
              config order; a field with several values pooled by mean or
              sum), then the DCN-V2 cross layers (none for can), the ReLU
              tower and the output layer (ctrps.nn).

A key missing from a table's export scores with a zero row, as Lookup
answers for a key the shards never created (worker/train.c holdout_eval).
The probability is the worker's: sigmoid of the float32 logit, in double.
"""

import hashlib
import json
import math
import os

import numpy as np

from . import config as _config, keys as _keys, nn, parse as _parse

FORMAT = "ctrps-model"
FORMAT_VERSION = 1
F32 = np.float32
LR_BIAS_SLOT = "__bias__"


class ExportError(ValueError):
    """An export directory that is incomplete, corrupt or of another format."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Table:
    """One exported sparse table: fids (uint64[rows]), weights (float32[rows,
    dim]) and, when exported with --state, state (float32[rows, width])."""

    def __init__(self, name, dim, fids, weights, state=None, state_fields=None):
        self.name = name
        self.dim = dim
        self.fids = fids
        self.weights = weights
        self.state = state
        self.state_fields = state_fields
        self._order = np.argsort(fids, kind="stable")
        self._sorted = fids[self._order]

    def __len__(self):
        return len(self.fids)

    def lookup(self, keys):
        """(found bool[n], float32[n, dim]) with zero rows for missing keys,
        like the shards' Lookup."""
        keys = np.asarray(keys, dtype=np.uint64).ravel()
        n = len(self._sorted)
        values = np.zeros((len(keys), self.dim), F32)
        if n == 0 or len(keys) == 0:
            return np.zeros(len(keys), bool), values
        idx = np.minimum(np.searchsorted(self._sorted, keys), n - 1)
        found = self._sorted[idx] == keys
        values[found] = self.weights[self._order[idx[found]]]
        return found, values


class Layout:
    """Which slots feed which part of the model (worker/batch.c
    ps_batch_layout_init), for a config and the parser's dense width."""

    def __init__(self, cfg, ndense):
        m = cfg.model
        self.type = m.type
        self.pooling = m.pooling
        if m.type == "lr":
            t = cfg.tables[m.lr_table]
            self.lr_table = t.name
            self.lr_slots = {_keys.slot_id(s) for s in t.slots}
            self.lr_bias_key = _keys.fid(LR_BIAS_SLOT, "1")
            # worker/batch.c lr_dense_init: each dense integer the table
            # lists is one weight, keyed (its slot, "dense"), times the value.
            self.lr_dense_keys = []
            if cfg.input.format == "criteo":
                for i in range(13):
                    if cfg.input.integer_is_dense(i):
                        sid = _keys.slot_id("I%d" % (i + 1))
                        self.lr_dense_keys.append(_keys.fid_of(sid, "dense") if sid in self.lr_slots else None)
            return
        self.lr_table = None
        can_tables = {m.can_ind_table, m.can_feed_table} if m.has_can else set()
        self.fields = []           # (table name, dim, x0 offset)
        self.field_of_slot = {}    # slot id -> field index
        width = 0
        for t in cfg.tables.values():
            if t.name in can_tables or not t.slots:
                continue
            for s in t.slots:
                self.field_of_slot[_keys.slot_id(s)] = len(self.fields)
                self.fields.append((t.name, t.dim, width))
                width += t.dim
        self.emb_width = width
        self.ndense = ndense
        self.can_width = 0
        if m.has_can:
            self.can = nn.CanConfig.from_model(m)
            self.can_ind_table, self.can_feed_table = m.can_ind_table, m.can_feed_table
            self.ncan_ind, self.ncan_feed = len(m.can_induction), len(m.can_feed)
            self.can_ind_of_slot = {}
            for j, s in enumerate(m.can_induction):
                self.can_ind_of_slot[_keys.slot_id(s)] = j
            self.can_feed_of_slot = {}
            for j, s in enumerate(m.can_feed):
                self.can_feed_of_slot[_keys.slot_id(s)] = j
            self.can_max_len = m.can_max_len
            self.can_out_width = self.can.out_width
            self.can_width = self.can_out_width * self.ncan_ind * self.ncan_feed
        self.x0_width = self.emb_width + self.ndense + self.can_width
        if self.x0_width == 0:
            raise _config.ConfigError(f"model {m.type} has no input: no [table.*] lists slots and "
                                      "there are no dense features")
        self.dcn = nn.DcnConfig.from_model(m, self.x0_width)

    def tables_needed(self):
        if self.lr_table:
            return [self.lr_table]
        names = [t for t, _, _ in self.fields]
        if self.can_width:
            names += [self.can_ind_table, self.can_feed_table]
        return list(dict.fromkeys(names))


def sigmoid(z):
    """ps_sigmoid in double of float32 logits."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def logloss_logit(z, y):
    """ps_logloss_logit per example, in double."""
    z = np.asarray(z, dtype=np.float64)
    return np.maximum(z, 0) - y * z + np.log1p(np.exp(-np.abs(z)))


def auc(scores, labels):
    """ps_auc: ties share their mean rank; NaN without both classes."""
    s = np.asarray(scores, dtype=F32)
    y = np.asarray(labels, dtype=F32) > 0.5
    npos = int(y.sum())
    nneg = len(s) - npos
    if npos == 0 or nneg == 0 or np.isnan(s).any():
        return math.nan
    order = np.argsort(s, kind="stable")
    ss, yy = s[order], y[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    ends = np.r_[starts[1:], len(ss)]
    mean_rank = (starts + 1 + ends) / 2.0
    pos_in_run = np.add.reduceat(yy.astype(np.int64), starts)
    pos_rank_sum = float(np.sum(mean_rank * pos_in_run))
    return (pos_rank_sum - npos * (npos + 1) / 2.0) / (npos * nneg)


class Model:
    """An exported model. Attributes: directory, manifest, config (a
    ctrps.config.Config from the export's config.ini), type, tables (name ->
    Table), dense (name -> float32 array), layout."""

    def __init__(self, directory, manifest, cfg, tables, dense, input_format=None):
        self.directory = directory
        self.manifest = manifest
        self.config = cfg
        self.type = cfg.model.type
        self.tables = tables
        self.dense = dense
        if input_format:
            cfg.input.set("format", input_format)
            cfg.input.check()
        self.layout = Layout(cfg, _parse.Parser(cfg.input).ndense)

    def parser(self):
        """A fresh parser for this model's input format (a CSV parser takes
        the first line of each file as its header: call .header())."""
        return _parse.Parser(self.config.input)

    # ---- scoring -----------------------------------------------------------------

    def predict(self, lines, batch_size=4096):
        """Probabilities (float64) for input lines (bytes or str, with or
        without newlines), one per line in order; NaN for a line the worker
        would reject as malformed. For csv the first line is the header and
        gets no probability (ParseError if the worker would refuse it)."""
        return self.predict_with_labels(lines, batch_size)[0]

    def predict_with_labels(self, lines, batch_size=4096, parser=None):
        """(probabilities, logits float32, labels) as predict(); labels are
        NaN for unlabelled input and for malformed lines."""
        parser = parser or self.parser()
        probs, logits, labels = [], [], []
        batch, slots = [], []

        def flush():
            z = self.logits(batch) if batch else np.zeros(0, F32)
            zz = np.full(len(slots), np.nan, F32)
            yy = np.full(len(slots), np.nan)
            ok = [i for i, e in enumerate(slots) if e is not None]
            zz[ok] = z
            yy[ok] = [slots[i].label for i in ok]
            logits.append(zz)
            labels.append(yy)
            probs.append(np.where(np.isnan(zz), np.nan, sigmoid(np.nan_to_num(zz))))
            batch.clear()
            slots.clear()

        for line in lines:
            if parser.expects_header:
                parser.header(line)
                continue
            try:
                ex = parser.parse(line)
            except _parse.ParseError:
                ex = None
            slots.append(ex)
            if ex is not None:
                batch.append(ex)
            if len(batch) >= batch_size:
                flush()
        flush()
        return np.concatenate(probs), np.concatenate(logits), np.concatenate(labels)

    def predict_examples(self, examples):
        """Probabilities of parsed Examples (ctrps.parse)."""
        return sigmoid(self.logits(examples))

    def logits(self, examples):
        """The worker's float32 logits of parsed Examples."""
        if not examples:
            return np.zeros(0, F32)
        L = self.layout
        if L.lr_table:
            return self._lr_logits(examples)
        x0 = np.zeros((len(examples), L.x0_width), F32)
        self._fill_fields(examples, x0)
        if L.ndense:
            d = np.zeros((len(examples), L.ndense), F32)
            for i, ex in enumerate(examples):
                k = min(len(ex.dense), L.ndense)
                d[i, :k] = ex.dense[:k]
            x0[:, L.emb_width:L.emb_width + L.ndense] = d
        if L.can_width:
            self._fill_can(examples, x0)
        return nn.dcn_forward(L.dcn, self.dense, x0)

    def _lr_logits(self, examples):
        L = self.layout
        rows, vals, lens = [], [], []
        for ex in examples:
            n0 = len(rows)
            for f, v, sid in ex.features:
                if sid in L.lr_slots:
                    rows.append(f)
                    vals.append(v)
            # A dense input of 0 has a zero gradient: the worker skips it.
            for key, v in zip(L.lr_dense_keys, ex.dense):
                if key is not None and v != 0:
                    rows.append(key)
                    vals.append(v)
            rows.append(L.lr_bias_key)
            vals.append(1.0)
            lens.append(len(rows) - n0)
        _, w = self.tables[L.lr_table].lookup(np.array(rows, dtype=np.uint64))
        prod = w[:, 0].astype(np.float64) * np.array(vals, dtype=F32).astype(np.float64)
        B, width = len(examples), max(lens)
        M = np.zeros((B, width))
        ex_of = np.repeat(np.arange(B), lens)
        pos = np.arange(len(rows)) - np.repeat(np.cumsum(lens) - lens, lens)
        M[ex_of, pos] = prod
        z = np.zeros(B)
        for k in range(width):          # lr_forward adds in feature order
            z = z + M[:, k]
        return z.astype(F32)

    def _fill_fields(self, examples, x0):
        """Pooled embedding fields into x0 in the worker's float32 order:
        each occurrence adds value * scale, occurrences in feature order."""
        L = self.layout
        occ = [([], [], []) for _ in L.fields]     # per field: example, fid, rank
        for i, ex in enumerate(examples):
            seen = {}
            for f, _, sid in ex.features:
                k = L.field_of_slot.get(sid)
                if k is None:
                    continue
                r = seen.get(k, 0)
                seen[k] = r + 1
                o = occ[k]
                o[0].append(i)
                o[1].append(f)
                o[2].append(r)
        B = len(examples)
        for k, (table, dim, off) in enumerate(L.fields):
            ex_i, fids, rank = occ[k]
            if not ex_i:
                continue
            ex_i = np.array(ex_i)
            rank = np.array(rank)
            cnt = np.bincount(ex_i, minlength=B)
            if L.pooling == "mean":
                scale = (F32(1) / np.maximum(cnt, 1).astype(F32))[ex_i]
            else:
                scale = np.ones(len(ex_i), F32)
            _, v = self.tables[table].lookup(np.array(fids, dtype=np.uint64))
            contrib = v * scale[:, None]
            for r in range(int(rank.max()) + 1):
                sel = rank == r
                x0[ex_i[sel], off:off + dim] += contrib[sel]

    def _fill_can(self, examples, x0):
        """CAN unit outputs of every (induction, feed) pair into x0
        (worker/model.c can_gather and can_forward)."""
        L = self.layout
        B, cfg = len(examples), L.can
        ind_w, d0, max_len = cfg.ind_width, cfg.dims[0], L.can_max_len
        ind_key = np.zeros((B, L.ncan_ind), np.uint64)
        has_ind = np.zeros((B, L.ncan_ind), bool)
        feed = [[[] for _ in range(L.ncan_feed)] for _ in range(B)]
        for i, ex in enumerate(examples):
            for f, _, sid in ex.features:
                j = L.can_ind_of_slot.get(sid)
                if j is not None and not has_ind[i, j]:
                    has_ind[i, j] = True
                    ind_key[i, j] = f
                m = L.can_feed_of_slot.get(sid)
                if m is not None and len(feed[i][m]) < max_len:
                    feed[i][m].append(f)
        ti, tf = self.tables[L.can_ind_table], self.tables[L.can_feed_table]
        ind_rows = []
        for j in range(L.ncan_ind):
            _, rows = ti.lookup(ind_key[:, j])
            rows[~has_ind[:, j]] = 0
            ind_rows.append(rows)
        base = L.emb_width + L.ndense
        ow = L.can_out_width
        for m in range(L.ncan_feed):
            lens = np.array([len(feed[i][m]) for i in range(B)])
            T = max(1, int(lens.max()))
            flat = np.array([f for i in range(B) for f in feed[i][m]], dtype=np.uint64)
            _, frows = tf.lookup(flat)
            ex_of = np.repeat(np.arange(B), lens)
            pos = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
            mask = np.zeros((B, T), F32)
            mask[ex_of, pos] = 1
            for j in range(L.ncan_ind):
                X = np.zeros((B, T, d0), F32)
                X[ex_of, pos] = frows[:, j * d0:(j + 1) * d0]
                P = ind_rows[j][:, m * ind_w:(m + 1) * ind_w]
                out = nn.can_forward(cfg, P, X, mask)
                col = base + (j * L.ncan_feed + m) * ow
                x0[:, col:col + ow] = out


def _npy(path, dtype, shape, what, mmap=False):
    """A .npy file of exactly this dtype and shape; mmap leaves the data on
    disk (rows are read when looked up)."""
    try:
        a = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: not a NumPy .npy file ({e})") from None
    if a.dtype != np.dtype(dtype) or a.shape != shape:
        raise ExportError(f"{path}: {what} must be {np.dtype(dtype).str} of shape {shape}, "
                          f"is {a.dtype.str} of shape {a.shape}")
    return a


def load(directory, verify=True, input_format=None):
    """Load the export in `directory`; ExportError when it is incomplete,
    corrupt (a size or sha256 that does not match the manifest; skipped with
    verify=False), of another format version, or inconsistent.
    input_format overrides [input] format, like `ctrps-worker --format`."""
    d = os.fspath(directory)
    mpath = os.path.join(d, "manifest.json")
    try:
        with open(mpath, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{d}: no manifest.json (not an export, or an export still being "
                          "written)") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"{mpath}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{mpath}: not a ctrps model export (format is not '{FORMAT}')")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{mpath}: format_version {manifest.get('format_version')!r} is not "
                          f"supported (this reader knows {FORMAT_VERSION})")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ExportError(f"{mpath}: no 'files' object")

    def path_of(name):
        if name not in files:
            raise ExportError(f"{mpath}: file '{name}' is not listed in 'files'")
        if os.path.basename(name) != name:
            raise ExportError(f"{mpath}: file name '{name}' is not a plain name")
        return os.path.join(d, name)

    if verify:
        for name, info in files.items():
            p = path_of(name)
            try:
                size = os.path.getsize(p)
            except OSError:
                raise ExportError(f"{d}: {name} is listed in the manifest but missing") from None
            if size != info.get("bytes"):
                raise ExportError(f"{p}: {size} bytes, the manifest says {info.get('bytes')}")
            if _sha256(p) != str(info.get("sha256", "")).lower():
                raise ExportError(f"{p}: sha256 does not match the manifest")

    cpath = path_of("config.ini")
    try:
        cfg = _config.load(cpath)
    except _config.ConfigError as e:
        raise ExportError(f"{d}: config.ini: {e}") from None
    mtype = (manifest.get("model") or {}).get("type")
    if mtype != cfg.model.type:
        raise ExportError(f"{mpath}: model type {mtype!r} but config.ini says {cfg.model.type!r}")
    _check_hashing(manifest.get("hashing") or {}, mpath)

    tables = {}
    for t in manifest.get("tables") or []:
        name = t.get("name")
        tc = cfg.tables.get(name)
        if tc is None:
            raise ExportError(f"{mpath}: table {name!r} is not in config.ini")
        dim, rows = t.get("dim"), t.get("rows")
        if dim != tc.dim or not isinstance(rows, int) or rows < 0:
            raise ExportError(f"{mpath}: table {name}: dim {dim!r} rows {rows!r} (config.ini: dim {tc.dim})")
        tf = t.get("files") or {}
        fids = _npy(path_of(tf.get("fids", "")), "<u8", (rows,), f"table {name} fids")
        w = _npy(path_of(tf.get("weights", "")), "<f4", (rows, dim), f"table {name} weights",
                 mmap=rows > 0)
        state = None
        if "state" in tf:
            width = t.get("state_width", tc.state_width)
            state = _npy(path_of(tf["state"]), "<f4", (rows, width), f"table {name} state",
                         mmap=rows > 0)
        tables[name] = Table(name, dim, fids, w, state, t.get("state_fields"))

    dense = {}
    for b in manifest.get("dense") or []:
        name, n = b.get("name"), b.get("len")
        dense[name] = _npy(path_of(b.get("file", "")), "<f4", (n,), f"dense block {name}")

    model = Model(d, manifest, cfg, tables, dense, input_format)
    for name in model.layout.tables_needed():
        if name not in tables:
            raise ExportError(f"{mpath}: the model reads table {name}, which the export lacks")
    if not model.layout.lr_table:
        for name, shape in model.layout.dcn.blocks():
            if name not in dense:
                raise ExportError(f"{mpath}: dense block {name} missing")
            if dense[name].size != int(np.prod(shape)):
                raise ExportError(f"{mpath}: dense block {name} has {dense[name].size} values, "
                                  f"the model needs {int(np.prod(shape))} {shape}")
    return model


def _check_hashing(h, mpath):
    """The export's fid rule must be the one ctrps.keys computes."""
    if h.get("hash") != "xxh3_64" or h.get("seed", 0) != 0 or h.get("value_bits") != _keys.FID_VALUE_BITS:
        raise ExportError(f"{mpath}: hashing {h.get('hash')!r} seed {h.get('seed')!r} value_bits "
                          f"{h.get('value_bits')!r} is not xxh3_64 / 0 / 48")
    for name, sid in (h.get("slots") or {}).items():
        if _keys.slot_id(name) != sid:
            raise ExportError(f"{mpath}: slot {name!r} has id {sid} in the export but "
                              f"{_keys.slot_id(name)} here: the fid rule differs")
