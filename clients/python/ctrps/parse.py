"""Input-line parsers, mirroring worker/parse.c byte for byte.

A line (bytes, with or without its "\\n" / "\\r\\n") becomes an Example: the
label (0.0, 1.0, or NaN for unlabelled input), the features in the order the
C parser emits them (fid, value, slot id) and the dense vector. A line the C
parser rejects raises ParseError here, with a reason in the same words.

Formats (see worker/parse.h): criteo (label, I1..I13, C1..C26, tabs; the
integers bucketized to the token floor(ln(x)^2) for x > 2, x itself
otherwise, or dense ln(1+x) per [input] integers / dense_integers /
bucketize_integers), csv (a header line names the columns), libsvm
(`label idx:val ...`, idx hashed in slot libsvm_slot) and slots
(`label slot:value ...`).

The C parser hashes and converts with libm (log, log1p) and strtod; Python's
math module calls the same libm, and float() rounds decimal text correctly
as glibc's strtod does, so tokens and dense values come out identical.
"""

import math
import re

import numpy as np
import xxhash

from . import keys
from .config import CRITEO_CATS, CRITEO_INTS, _quote, strtod_full

NAME_MAX = 64
_xxh3 = xxhash.xxh3_64_intdigest


class ParseError(ValueError):
    """A line (or CSV header) the worker would reject; str(e) is the reason."""


class Example:
    """One parsed line. features: list of (fid, value, slot_id); dense: list
    of float32 values (criteo with dense integers, else empty)."""

    __slots__ = ("label", "features", "dense")

    def __init__(self, label, features, dense):
        self.label = label
        self.features = features
        self.dense = dense

    @property
    def fids(self):
        return [f[0] for f in self.features]

    def __repr__(self):
        return f"Example(label={self.label}, features={self.features!r}, dense={self.dense!r})"


_I64 = re.compile(rb"-?[0-9]{1,18}")
_DIGITS20 = re.compile(rb"[0-9]{1,20}")
_TOKENS = re.compile(rb"[^ \t]+")


def _label01(b):
    if b == b"0":
        return 0.0
    if b == b"1":
        return 1.0
    raise ParseError(f"label is not 0/1: '{_quote(b)}'")


def bucket_token(x):
    """The token a bucketized Criteo integer x is hashed as."""
    if x > 2:
        lx = math.log(x)
        x = math.floor(lx * lx)
    return str(x).encode()


def dense_value(x):
    """The dense input of a Criteo integer x: (float)log1p(x), 0 for x <= 0."""
    return np.float32(0.0) if x <= 0 else np.float32(math.log1p(x))


def column(line, fmt, col, max_line_bytes=None):
    """Column col (1-based) of an input line as worker/parse.c
    ps_input_column splits it for format fmt (criteo: tabs, csv: commas,
    libsvm and slots: runs of blanks): its raw bytes; b"" when the line has
    fewer columns (or is longer than max_line_bytes: the worker never sees
    its text)."""
    s = line.encode() if isinstance(line, str) else bytes(line)
    if s.endswith(b"\n"):
        s = s[:-1]
    if s.endswith(b"\r"):
        s = s[:-1]
    if max_line_bytes is not None and len(s) > max_line_bytes:
        return b""
    if fmt in ("libsvm", "slots"):
        cols = [t for t in re.split(rb"[ \t]+", s) if t]
    else:
        cols = s.split(b"," if fmt == "csv" else b"\t")
    return cols[col - 1] if 0 < col <= len(cols) else b""


class Parser:
    """One parser per input stream, like ps_parser: the slot list only grows
    (csv headers and slots-format lines add slots the first time they name
    them); a csv parser takes a new header at the start of each file."""

    def __init__(self, input_cfg):
        input_cfg.check()
        c = input_cfg
        self.format = c.format
        self.labelled = c.labelled
        self.max_line_bytes = c.max_line_bytes
        self.max_slots = c.max_slots
        self.empty_categories_as_value = c.empty_categories_as_value
        self.slots = []              # [(name bytes, slot id)]
        self._by_id = {}             # slot id -> index
        self._by_name = {}           # name bytes -> index
        self.ndense = 0
        if self.format == "criteo":
            self._int_slot = [None] * CRITEO_INTS
            self._dense_pos = [-1] * CRITEO_INTS
            for i in range(CRITEO_INTS):
                if c.integer_is_dense(i):
                    self._dense_pos[i] = self.ndense
                    self.ndense += 1
                else:
                    self._int_slot[i] = self._slot_get(b"I%d" % (i + 1))
            self._cat_slot = [self._slot_get(b"C%d" % (i + 1)) for i in range(CRITEO_CATS)]
        elif self.format == "csv":
            self.label_column = c.label_column.encode()
            self.ignore = [x.encode() for x in c.ignore_columns]
            self._col_map = None
            self._header_next = True
        elif self.format == "libsvm":
            self._libsvm_slot = self._slot_get(c.libsvm_slot.encode())

    @property
    def wants_header(self):
        """True for csv: the first line of every file is a header."""
        return self.format == "csv"

    @property
    def expects_header(self):
        """True when the next line is a header (csv, at the start of a file)."""
        return self.format == "csv" and self._header_next

    def next_file(self):
        """A new file starts: for csv its first line is a header again (the
        column order may change between files)."""
        if self.format == "csv":
            self._header_next = True

    def slot_index(self, name):
        if isinstance(name, str):
            name = name.encode()
        return self._by_name.get(name, -1)

    def _slot_get(self, name):
        """Index of slot `name` (bytes), adding it when new (parse.c slot_get)."""
        at = self._by_name.get(name)
        if at is not None:
            return at
        if not name:
            raise ParseError("empty slot name")
        if len(name) >= NAME_MAX:
            raise ParseError(f"slot name longer than {NAME_MAX - 1} bytes: '{_quote(name)}'")
        sid = keys.slot_id(name)
        other = self._by_id.get(sid)
        if other is not None:
            raise ParseError(f"slot '{_quote(name)}' has the same id 0x{sid:04x} as slot "
                             f"'{_quote(self.slots[other][0])}'")
        if len(self.slots) >= self.max_slots:
            raise ParseError(f"slot '{_quote(name)}' would exceed max_slots = {self.max_slots}")
        self.slots.append((name, sid))
        self._by_id[sid] = self._by_name[name] = len(self.slots) - 1
        return len(self.slots) - 1

    def _prep(self, line):
        """Strip "\\n" / "\\r\\n"; reject what prep_line rejects."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_bytes:
            raise ParseError(f"line longer than {self.max_line_bytes} bytes")
        if not line:
            raise ParseError("empty line")
        at = line.find(b"\0")
        try:
            line.decode("utf-8")
            bad = -1
        except UnicodeDecodeError as e:
            bad = e.start
        if at >= 0 and (bad < 0 or at <= bad):
            raise ParseError(f"embedded NUL at byte {at}")
        if bad >= 0:
            raise ParseError(f"invalid UTF-8 at byte {bad}")
        return line

    def header(self, line):
        """A CSV header line (ps_parser_header)."""
        if self.format != "csv":
            raise ParseError(f"format {self.format} has no header line")
        line = self._prep(line)
        if line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        names = line.split(b",")
        roles, seen, have_label = [], set(), False
        for i, n in enumerate(names):
            if not n:
                raise ParseError(f"header column {i + 1} has an empty name")
            if len(n) >= NAME_MAX:
                raise ParseError(f"header column {i + 1} name longer than {NAME_MAX - 1} bytes: '{_quote(n)}'")
            if n in seen:
                raise ParseError(f"header names column '{_quote(n)}' twice")
            seen.add(n)
            role = None  # a slot
            if n == self.label_column:
                role = "label" if self.labelled else "ignore"
                have_label = True
            if n in self.ignore:
                role = "ignore"
            roles.append(role)
        if self.labelled and not have_label:
            raise ParseError(f"header has no label column '{self.label_column.decode()}'")
        col_map = []
        for n, role in zip(names, roles):
            col_map.append(role if role else self._slot_get(n))
        self._col_map = col_map
        self._header_next = False

    def parse(self, line):
        """Parse one line into an Example; ParseError when the worker would
        skip it as malformed."""
        line = self._prep(line)
        if self.format == "criteo":
            return self._criteo(line)
        if self.format == "csv":
            return self._csv(line)
        if self.format == "libsvm":
            return self._libsvm(line)
        return self._slots(line)

    def _feature(self, slot, value, v=1.0):
        # keys.fid_of inlined: this runs once per feature of every line.
        sid = self.slots[slot][1]
        return ((sid << keys.FID_VALUE_BITS) | (_xxh3(value) & keys.FID_VALUE_MASK), v, sid)

    def _criteo(self, s):
        fields = s.split(b"\t")
        want = (1 if self.labelled else 0) + CRITEO_INTS + CRITEO_CATS
        if len(fields) != want:
            raise ParseError(f"expected {want} fields, got {len(fields)}")
        k = 0
        if self.labelled:
            label = _label01(fields[0])
            k = 1
        else:
            label = math.nan
        feats = []
        dense = [np.float32(0.0)] * self.ndense
        for i in range(CRITEO_INTS):
            f = fields[k + i]
            if not f:
                continue
            if not _I64.fullmatch(f):
                raise ParseError(f"I{i + 1} is not an integer: '{_quote(f)}'")
            x = int(f)
            if self._dense_pos[i] >= 0:
                dense[self._dense_pos[i]] = dense_value(x)
            else:
                feats.append(self._feature(self._int_slot[i], bucket_token(x)))
        k += CRITEO_INTS
        for i in range(CRITEO_CATS):
            f = fields[k + i]
            # empty_categories_as_value: an empty field is the value "".
            if f or self.empty_categories_as_value:
                feats.append(self._feature(self._cat_slot[i], f))
        return Example(label, feats, dense)

    def _csv(self, s):
        if self._col_map is None:
            raise ParseError("no header line read yet")
        fields = s.split(b",")
        if len(fields) != len(self._col_map):
            raise ParseError(f"expected {len(self._col_map)} fields, got {len(fields)}")
        label = math.nan
        feats = []
        for f, role in zip(fields, self._col_map):
            if role == "label":
                label = _label01(f)
            elif role != "ignore" and f:
                feats.append(self._feature(role, f))
        return Example(label, feats, [])

    def _libsvm(self, s):
        toks = _TOKENS.findall(s)
        if not toks:
            raise ParseError("empty line")
        t = toks[0]
        if t in (b"0", b"1"):
            label = float(t == b"1")
        elif t in (b"-1", b"+1"):
            label = float(t == b"+1")
        else:
            raise ParseError(f"label is not 0/1 or -1/+1: '{_quote(t)}'")
        feats = []
        for t in toks[1:]:
            colon = t.find(b":")
            if colon < 0:
                raise ParseError(f"pair '{_quote(t)}' has no ':'")
            idx, val = t[:colon], t[colon + 1:]
            if not _DIGITS20.fullmatch(idx):
                raise ParseError(f"pair '{_quote(t)}': index is not a non-negative integer")
            if not val or len(val) >= 64:
                raise ParseError(f"pair '{_quote(t)}': value is not a number")
            v = strtod_full(val.decode("latin-1"))
            with np.errstate(over="ignore"):
                ok = v is not None and math.isfinite(v) and np.isfinite(np.float32(v))
            if not ok:
                raise ParseError(f"pair '{_quote(t)}': value is not a finite number")
            feats.append(self._feature(self._libsvm_slot, idx, float(np.float32(v))))
        return Example(label, feats, [])

    def _slots(self, s):
        toks = _TOKENS.findall(s)
        if not toks:
            raise ParseError("empty line")
        label = _label01(toks[0])
        feats = []
        for t in toks[1:]:
            colon = t.find(b":")
            if colon < 0:
                raise ParseError(f"token '{_quote(t)}' has no ':'")
            if colon == 0:
                raise ParseError(f"token '{_quote(t)}' has an empty slot name")
            if colon == len(t) - 1:
                raise ParseError(f"token '{_quote(t)}' has an empty value")
            feats.append(self._feature(self._slot_get(t[:colon]), t[colon + 1:]))
        return Example(label, feats, [])
