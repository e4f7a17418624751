"""The cluster's INI config, read as the C binaries read it.

The file is split into lines the way libinih does (common/config.c turns its
multi-line continuation off): comment lines start with ';' or '#', an inline
comment starts with ';' after whitespace, `key = value` or `key: value`,
values trimmed, a repeated key is handed over again (so `slots` continues a
list). Lines of 200 characters or more are rejected like the C loader does.

What the Python side needs is then interpreted with the C side's rules and
defaults: [cluster] shards and buckets, [server] auth_secret_file and
max_frame_bytes, each [table.*]'s dim, optimizer and slots, and every key of
[input] and [model] (worker/parse.c, worker/wconfig.c). [input] and [model]
decide how lines are parsed and scored, so an unknown key there is an error
(a newer C worker may have a feature this module would silently not apply);
keys of other sections that do not change what this module computes are
accepted without checks, since the C binaries check them.
"""

import math
import re

from . import keys

INI_MAX_LINE = 200


class ConfigError(ValueError):
    """A config the C binaries would reject, or one this module cannot
    honour; the message names the file, line and key."""


def _ini_lines(text, path):
    """Yield (lineno, section, key, value) like libinih's ini_parse_stream."""
    section = ""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, line in enumerate(lines, 1):
        # fgets into 200 bytes: 199 characters fit, anything longer is
        # reported by config.c even on a comment line.
        if len(line.encode("utf-8", "surrogateescape")) > INI_MAX_LINE - 1:
            raise ConfigError(f"{path}:{lineno}: line too long (at most {INI_MAX_LINE - 1} "
                              "characters; repeat the key to continue a list)")
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        line = line.strip(" \t\n\r\f\v")
        if not line or line[0] in ";#":
            continue
        if line[0] == "[":
            end = _find_chars_or_comment(line, 1, "]")
            if end >= len(line) or line[end] != "]":
                raise ConfigError(f"{path}:{lineno}: syntax error (expected [section] or key = value)")
            section = line[1:end]
            continue
        end = _find_chars_or_comment(line, 0, "=:")
        if end >= len(line) or line[end] not in "=:":
            raise ConfigError(f"{path}:{lineno}: syntax error (expected [section] or key = value)")
        key = line[:end].rstrip(" \t\n\r\f\v")
        value = line[end + 1:].lstrip(" \t\n\r\f\v")
        cut = _find_chars_or_comment(value, 0, None)
        value = value[:cut].rstrip(" \t\n\r\f\v")
        yield lineno, section, key, value


def _find_chars_or_comment(s, i, chars):
    """libinih's find_chars_or_comment: the first of `chars`, or an inline
    ';' comment that follows whitespace."""
    was_space = False
    while i < len(s):
        c = s[i]
        if chars and c in chars:
            return i
        if was_space and c == ";":
            return i
        was_space = c in " \t\n\r\f\v"
        i += 1
    return i


# ---- value parsers with the C side's acceptance rules -------------------

def parse_u64(s):
    """ps_parse_u64: decimal digits only, fits in 64 bits; None otherwise."""
    if not re.fullmatch(r"[0-9]+", s):
        return None
    v = int(s)
    return v if v < 1 << 64 else None


_DEC_FLOAT = re.compile(r"[ \t\n\v\f\r]*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_FLOAT = re.compile(r"[ \t\n\v\f\r]*([+-]?)0[xX]((?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)"
                        r"(?:[pP][+-]?[0-9]+)?)")
_SPECIAL_FLOAT = re.compile(r"[ \t\n\v\f\r]*[+-]?(?:inf|infinity|nan(?:\([0-9A-Za-z_]*\))?)",
                            re.IGNORECASE)


def strtod_full(s):
    """The value C's strtod gives when it consumes all of s, else None.
    Non-finite results come back as inf/nan for the caller to reject."""
    if _DEC_FLOAT.fullmatch(s):
        try:
            return float(s.strip(" \t\n\v\f\r"))
        except (ValueError, OverflowError):
            return None
    m = _HEX_FLOAT.fullmatch(s)
    if m:
        body = m.group(2)
        if "p" not in body.lower():
            body += "p0"
        try:
            v = float.fromhex("0x" + body)
        except OverflowError:
            v = math.inf
        return -v if m.group(1) == "-" else v
    if _SPECIAL_FLOAT.fullmatch(s):
        t = s.strip(" \t\n\v\f\r").lower()
        neg = t.startswith("-")
        v = math.nan if "nan" in t else math.inf
        return -v if neg else v
    return None


def parse_bool(s):
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no"):
        return False
    return None


def split_list(value):
    """config.c split_list: comma list, items trimmed, empty items dropped."""
    out = []
    for item in value.split(","):
        item = item.strip(" \t")
        if item:
            out.append(item)
    return out


def parse_names(value, max_n):
    """wconfig.c parse_names: split_list's items, at most max_n of at most
    63 bytes each."""
    out = split_list(value)
    if len(out) > max_n or any(len(x.encode()) >= 64 for x in out):
        raise ValueError(f"at most {max_n} names of at most 63 characters")
    return out


def _u32(value, lo, hi):
    v = parse_u64(value)
    if v is None or v < lo or v > hi:
        raise ValueError(f"expected an integer in [{lo}, {hi}], got '{value}'")
    return v


def _bool(value):
    b = parse_bool(value)
    if b is None:
        raise ValueError(f"expected true or false, got '{value}'")
    return b


def _choice(value, choices):
    if value not in choices:
        raise ValueError(f"expected {', '.join(choices[:-1])} or {choices[-1]}, got '{value}'")
    return value


# ---- sections -------------------------------------------------------------

class TableConfig:
    """One [table.NAME]: what routing, export and scoring need."""

    def __init__(self, name):
        self.name = name
        self.dim = 0
        self.optimizer = "ftrl"
        self.rowwise = False
        self.init = "zero"
        self.slots = []

    @property
    def state_fields(self):
        return ["w", "acc"] if self.optimizer == "adagrad" else ["w", "z", "n"]

    @property
    def state_width(self):
        """ps_optim_state_width: FTRL 3d, AdaGrad 2d (d + 1 row-wise)."""
        if self.optimizer == "adagrad":
            return self.dim + 1 if self.rowwise else 2 * self.dim
        return 3 * self.dim

    def __repr__(self):
        return f"TableConfig({self.name!r}, dim={self.dim}, optimizer={self.optimizer!r}, slots={self.slots!r})"


CRITEO_INTS = 13
CRITEO_CATS = 26
INPUT_FORMATS = ("criteo", "csv", "libsvm", "slots")


def _quote(b):
    """parse.c quote(): at most 32 bytes, non-printable bytes as '?'."""
    s = "".join(chr(c) if 0x20 <= c < 0x7F else "?" for c in b[:32])
    return s + ("..." if len(b) > 32 else "")


def _check_name(s, what):
    """parse.c check_name: 1..63 printable ASCII bytes, no space, ':' or ','."""
    b = s.encode("utf-8", "surrogateescape")
    if not b:
        raise ValueError(f"{what} must not be empty")
    if len(b) >= 64:
        raise ValueError(f"{what} '{_quote(b)}' is longer than 63 bytes")
    for ch in b:
        if ch <= 0x20 or ch >= 0x7F or ch in b":,":
            raise ValueError(f"{what} '{_quote(b)}' may not contain spaces, ':', ',' or non-ASCII")
    return s


def _name_list(value):
    """ignore_columns as common/text.c ps_list_next splits it: a blank value
    is the empty list, a final ',' (blanks after it too) ends the list, any
    other empty item is an error."""
    if not value.strip(" \t"):
        return []
    items = value.split(",")
    if not items[-1].strip(" \t"):
        items.pop()
    return [_check_name(x.strip(" \t"), "column name") for x in items]


_INT_ITEM = re.compile(r"I[ \t\n\v\f\r]*\+?([0-9]+)")


def _integer_mask(value):
    """dense_integers / bucketize_integers: a list of I1..I13 as a bit set."""
    mask, i, n = 0, 0, len(value)
    while i < n:
        while i < n and value[i] in " ,\t":
            i += 1
        if i == n:
            break
        m = _INT_ITEM.match(value, i)
        bad = m is None
        if not bad:
            k = int(m.group(1))
            end = m.end()
            bad = k < 1 or k > CRITEO_INTS or (end < n and value[end] not in ", \t")
        if bad:
            raise ValueError(f"expected a list of I1..I{CRITEO_INTS}, got '{value}'")
        mask |= 1 << (k - 1)
        i = end
    return mask


class InputConfig:
    """[input] (worker/parse.h), with the same defaults and checks."""

    # key -> parser of its value (worker/parse.c ps_input_config_set)
    KEYS = {
        "format": lambda v: _choice(v, INPUT_FORMATS),
        "integers": lambda v: _choice(v, ("bucketize", "dense")),
        "dense_integers": lambda v: _integer_mask(v),
        "bucketize_integers": lambda v: _integer_mask(v),
        "labelled": _bool,
        "label_column": lambda v: _check_name(v, "label_column"),
        "ignore_columns": lambda v: _name_list(v),
        "libsvm_slot": lambda v: _check_name(v, "libsvm_slot"),
        "max_line_bytes": lambda v: _u32(v, 64, 1 << 30),
        "max_slots": lambda v: _u32(v, 1, 65535),
        "id_column": lambda v: _u32(v, 0, 65535),
        "empty_categories_as_value": _bool,
        # A Kafka input's consumer settings (worker/kafka.h): they do not
        # change how lines parse, so they are kept as text.
        "kafka_group": str,
        "kafka_properties": lambda v: [x.strip() for x in v.split(",") if x.strip()],
    }
    SCOPE = {"integers": ("criteo",), "dense_integers": ("criteo",),
             "bucketize_integers": ("criteo",), "empty_categories_as_value": ("criteo",),
             "label_column": ("csv",),
             "ignore_columns": ("csv",), "libsvm_slot": ("libsvm",)}

    def __init__(self):
        self.format = "criteo"
        self.integers = "bucketize"
        self.dense_integers = 0
        self.bucketize_integers = 0
        self.labelled = True
        self.label_column = "click"
        self.ignore_columns = ["id"]
        self.libsvm_slot = "f"
        self.max_line_bytes = 65536
        self.max_slots = 1024
        self.id_column = 0          # read by ctrps-worker --predict only
        self.empty_categories_as_value = False
        self.kafka_group = "ctrps"
        self.kafka_properties = []
        self.keys_set = set()

    def set(self, key, value):
        parse = self.KEYS.get(key)
        if parse is None:
            raise ValueError("unknown key (known: " + ", ".join(self.KEYS) + ")")
        setattr(self, key, parse(value))
        self.keys_set.add(key)

    def check(self):
        for key, formats in self.SCOPE.items():
            if key in self.keys_set and self.format not in formats:
                raise ValueError(f"key '{key}' does not apply to format = {self.format}")
        if self.dense_integers & self.bucketize_integers:
            raise ValueError("an integer field is in both dense_integers and bucketize_integers")
        if not self.labelled and self.format not in ("criteo", "csv"):
            raise ValueError(f"labelled = false applies only to criteo and csv, not {self.format}")
        if self.format == "csv" and self.label_column in self.ignore_columns:
            raise ValueError(f"label column '{self.label_column}' is also in ignore_columns")

    def integer_is_dense(self, i):
        """ps_input_integer_is_dense for 0-based Criteo integer field i."""
        if self.dense_integers & (1 << i):
            return True
        if self.bucketize_integers & (1 << i):
            return False
        return self.integers == "dense"


MODEL_TYPES = ("lr", "dcnv2", "can", "dcnv2+can")
ACTIVATIONS = ("identity", "relu", "tanh")
MAX_MLP = 8
MAX_CAN_SLOTS = 8
CAN_MAX_LAYERS = 8
CAN_MAX_DIM = 1024


def _seed(v):
    s = parse_u64(v)
    if s is None:
        raise ValueError(f"expected an unsigned integer, got '{v}'")
    return s


def _table_name(v):
    if len(v.encode()) >= 64:
        raise ValueError("table names have at most 63 characters")
    return v


def _can_dims(v):
    dims = [_u32(x, 1, CAN_MAX_DIM) for x in parse_names(v, CAN_MAX_LAYERS + 1)]
    if len(dims) < 2:
        raise ValueError("need d0 and at least one layer size, e.g. 16, 8, 4")
    return dims


# [model] key -> parser of its value (worker/wconfig.c set_model)
_MODEL_KEYS = {
    "type": lambda v: _choice(v, MODEL_TYPES),
    "batch_size": lambda v: _u32(v, 1, 65536),
    "cross_layers": lambda v: _u32(v, 0, 16),
    "cross_rank": lambda v: _u32(v, 0, 4096),
    "cross_experts": lambda v: _u32(v, 1, 64),
    "cross_activation": lambda v: _choice(v, ("tanh", "relu", "identity")),
    "cross_use_c": _bool,
    "structure": lambda v: _choice(v, ("stacked", "parallel")),
    "mlp": lambda v: [_u32(x, 1, 65536) for x in parse_names(v, MAX_MLP)],
    "pooling": lambda v: _choice(v, ("mean", "sum")),
    "sparse_gradient": lambda v: _choice(v, ("mean", "sum")),
    "max_in_flight": lambda v: _u32(v, 0, 64),
    "dense_refresh": lambda v: _u32(v, 1, 1000000),
    "seed": _seed,
    "lr_table": _table_name,
    "can_ind_table": _table_name,
    "can_feed_table": _table_name,
    "can_induction": lambda v: parse_names(v, MAX_CAN_SLOTS),
    "can_feed": lambda v: parse_names(v, MAX_CAN_SLOTS),
    "can_dims": _can_dims,
    "can_orders": lambda v: _u32(v, 1, 8),
    "can_max_len": lambda v: _u32(v, 1, 4096),
    "can_order_indep": _bool,
    "can_bias": _bool,
    "can_layers": lambda v: _choice(v, ("all", "last")),
    "can_combine": lambda v: _choice(v, ("concat", "sum")),
}
_SERVER_MODEL_KEYS = ("dense_optimizer", "dense_lr", "adam_beta1", "adam_beta2", "adam_eps")


class ModelConfig:
    """[model] (worker/wconfig.h), with the same defaults and checks."""

    def __init__(self):
        self.type = "dcnv2"
        self.batch_size = 512
        self.cross_layers = 3
        self.cross_rank = 0
        self.cross_experts = 4
        self.cross_activation = "tanh"
        self.cross_use_c = True
        self.structure = "stacked"
        self.mlp = [400, 400]
        self.pooling = "mean"
        self.sparse_gradient = "mean"
        self.max_in_flight = 2
        self.dense_refresh = 1
        self.seed = 1
        self.lr_table = ""
        self.can_induction = []
        self.can_feed = []
        self.can_ind_table = ""
        self.can_feed_table = ""
        self.can_dims = [16, 8, 4]
        self.can_orders = 3
        self.can_order_indep = False
        self.can_layers = "all"
        self.can_combine = "concat"
        self.can_bias = True
        self.can_max_len = 50

    def set(self, key, v):
        if key in _SERVER_MODEL_KEYS:
            return  # the servers' Adam; nothing to do with scoring
        parse = _MODEL_KEYS.get(key)
        if parse is None:
            raise ValueError("unknown key")
        setattr(self, key, parse(v))

    @property
    def has_can(self):
        return self.type in ("can", "dcnv2+can")

    def can_unit_width(self):
        d = self.can_dims
        return sum(d[k - 1] * d[k] + (d[k] if self.can_bias else 0) for k in range(1, len(d)))

    def can_out_width(self):
        """Output width of one CAN unit (ps_can_out_width)."""
        d = self.can_dims
        per = sum(d[1:]) if self.can_layers == "all" else d[-1]
        return per * (self.can_orders if self.can_combine == "concat" else 1)


class Config:
    """A loaded config. Attributes: path, shards (list of "host:port"),
    buckets, map_version, auth_secret_file, max_frame_bytes, tables (dict name ->
    TableConfig in file order), input (InputConfig), model (ModelConfig),
    sections (dict section -> dict key -> raw value text, repeated keys
    joined with ", ")."""

    def __init__(self):
        self.path = None
        self.shards = []
        self.buckets = 1024
        self.map_version = 1
        self.auth_secret_file = ""
        self.max_frame_bytes = 64 << 20
        self.tables = {}
        self.input = InputConfig()
        self.model = ModelConfig()
        self.sections = {}

    def table(self, name):
        t = self.tables.get(name)
        if t is None:
            raise ConfigError(f"unknown table '{name}' (not in {self.path})")
        return t

    def slot_table(self, slot):
        for t in self.tables.values():
            if slot in t.slots:
                return t
        return None


# [table.*] key -> parser of the value, or None for keys that only the
# servers use (config.c table_keys checks them).
_TABLE_KEYS = {
    "dim": lambda v: _u32(v, 1, 4096),
    "optimizer": lambda v: _choice(v, ("ftrl", "adagrad", "ftrl_group_lasso")),
    "rowwise": _bool,
    "init": lambda v: _choice(v, ("zero", "normal")),
    "slots": split_list,
}
_TABLE_KEYS.update((k, None) for k in ("alpha", "beta", "lambda1", "lambda2", "lambda21", "lr",
                                        "initial_accumulator_value", "eps", "accum_max",
                                        "grad_clip", "init_std", "seed", "memory_rows"))


def load(path):
    """Read and check the INI file at path; raises ConfigError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    return loads(data.decode("utf-8", errors="surrogateescape"), str(path))


def loads(text, path="<config>"):
    cfg = Config()
    cfg.path = path
    for lineno, section, key, value in _ini_lines(text, path):
        where = f"{path}:{lineno}: [{section}] key '{key}'"
        sec = cfg.sections.setdefault(section, {})
        sec[key] = f"{sec[key]}, {value}" if key in sec and key in ("slots", "shards") else value
        try:
            _set(cfg, section, key, value)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    try:
        _finish(cfg)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def _set(cfg, section, key, value):
    if section == "cluster":
        if key == "shards":
            for s in split_list(value):
                host, sep, port = s.rpartition(":")
                p = parse_u64(port)
                if not sep or not host or p is None or p > 65535:
                    raise ValueError(f"'{s}' is not host:port")
                cfg.shards.append(s)
        elif key == "buckets":
            cfg.buckets = _u32(value, 1, 65536)
        elif key == "map_version":
            v = parse_u64(value)
            if v is None or not 1 <= v <= 10**18:
                raise ValueError(f"'{value}' is not a map version (1 to 10^18)")
            cfg.map_version = v
    elif section == "server":
        if key == "auth_secret_file":
            cfg.auth_secret_file = value
        elif key == "max_frame_bytes":
            cfg.max_frame_bytes = _u32(value, 1024, 1 << 30)
    elif section.startswith("table."):
        name = section[6:]
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,63}", name):
            raise ValueError("table name must be 1..63 characters of [A-Za-z0-9_-]")
        t = cfg.tables.get(name)
        if t is None:
            t = cfg.tables[name] = TableConfig(name)
        if key not in _TABLE_KEYS:
            raise ValueError("unknown key")
        parse = _TABLE_KEYS[key]
        if key == "slots":
            t.slots.extend(parse(value))
        elif parse:
            setattr(t, key, parse(value))
    elif section == "input":
        cfg.input.set(key, value)
    elif section == "model":
        cfg.model.set(key, value)


def _finish(cfg):
    if not cfg.shards:
        raise ValueError("[cluster] key 'shards': at least one shard is required")
    if cfg.buckets < len(cfg.shards):
        raise ValueError(f"[cluster] key 'buckets': {cfg.buckets} buckets cannot cover "
                         f"{len(cfg.shards)} shards")
    seen = {}
    for t in cfg.tables.values():
        if t.dim == 0:
            raise ValueError(f"[table.{t.name}] key 'dim': required")
        for s in t.slots:
            sid = keys.slot_id(s)
            if sid in seen:
                other_slot, other_table = seen[sid]
                if other_slot == s:
                    raise ValueError(f"[table.{t.name}] key 'slots': slot '{s}' is already mapped "
                                     f"to table '{other_table}'")
                raise ValueError(f"[table.{t.name}] key 'slots': slots '{s}' and '{other_slot}' "
                                 "hash to the same 16-bit slot id; rename one")
            seen[sid] = (s, t.name)
    try:
        cfg.input.check()
    except ValueError as e:
        raise ValueError(f"[input]: {e}") from None
    _finish_model(cfg)


def _finish_model(cfg):
    m = cfg.model
    if m.type == "lr":
        if m.lr_table:
            lr = cfg.tables.get(m.lr_table)
            if lr is None:
                raise ValueError("[model] key 'lr_table': names no [table.*] section")
        else:
            ones = [t for t in cfg.tables.values() if t.dim == 1]
            if len(ones) > 1:
                raise ValueError("[model] key 'lr_table': several dim-1 tables; name one")
            if not ones:
                raise ValueError("[model] type lr needs a [table.*] with dim = 1")
            lr = ones[0]
            m.lr_table = lr.name
        if lr.dim != 1:
            raise ValueError(f"[model] key 'lr_table': table {lr.name} has dim {lr.dim}, lr needs 1")
    if m.has_can:
        if not m.can_induction or not m.can_feed:
            raise ValueError(f"[model] type {m.type} needs can_induction and can_feed slots")
        for key in ("can_ind_table", "can_feed_table"):
            name = getattr(m, key)
            if not name or name not in cfg.tables:
                raise ValueError(f"[model] key '{key}': "
                                 + ("names no [table.*] section" if name else "required by this model type"))
        ti, tf = cfg.tables[m.can_ind_table], cfg.tables[m.can_feed_table]
        unit = m.can_unit_width()
        ind_w = unit * (m.can_orders if m.can_order_indep else 1) * len(m.can_feed)
        feed_w = m.can_dims[0] * len(m.can_induction)
        if ti.dim != ind_w:
            raise ValueError(f"[table.{ti.name}] key 'dim': the CAN induction table needs dim {ind_w}, not {ti.dim}")
        if tf.dim != feed_w:
            raise ValueError(f"[table.{tf.name}] key 'dim': the CAN feed table needs dim {feed_w}, not {tf.dim}")
        if ti.init == "zero":
            raise ValueError(f"[table.{ti.name}] key 'init': CAN's induction rows must start random (init = normal)")
