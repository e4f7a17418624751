"""The INI config as the C binaries read it."""

import os

import pytest

from conftest import REPO, run

from ctrps import config

DEPLOY = os.path.join(REPO, "deploy")


def test_deploy_configs():
    c = config.load(os.path.join(DEPLOY, "criteo-dcnv2-dense.ini"))
    assert c.shards == ["127.0.0.1:7101", "127.0.0.1:7102"] and c.buckets == 1024
    emb = c.table("emb")
    assert emb.dim == 16 and emb.optimizer == "adagrad" and emb.state_width == 32
    assert emb.slots == [f"C{i}" for i in range(1, 27)]  # a repeated key continues the list
    assert c.input.integers == "dense" and c.model.mlp == [400, 400]
    lr = config.load(os.path.join(DEPLOY, "avazu-lr.ini"))
    assert lr.model.type == "lr" and lr.model.lr_table == "wide"  # the only dim-1 table
    assert lr.input.format == "csv" and lr.table("wide").state_fields == ["w", "z", "n"]
    can = config.load(os.path.join(DEPLOY, "slots-can.ini"))
    assert can.model.can_dims == [16, 8, 4] and can.model.can_unit_width() == 172
    assert can.model.can_induction == ["item"] and can.model.pooling == "mean"


BASE = "[cluster]\nshards = 127.0.0.1:1\n"


def test_ini_syntax_like_inih():
    c = config.loads("\ufeff" + BASE + "; comment\n# comment\n[table.t]\n  dim=4 ; inline\n"
                     "slots = a;b, c\t\nslots: d\n[model]\ntype = dcnv2\n")
    t = c.table("t")
    assert t.dim == 4 and t.slots == ["a;b", "c", "d"]
    with pytest.raises(config.ConfigError, match=r":3: syntax error"):
        config.loads(BASE + "no equals sign\n")
    with pytest.raises(config.ConfigError, match=r":4: line too long"):
        config.loads(BASE + "[server]\n; " + "x" * 198 + "\n")
    config.loads(BASE + "[table.t]\ndim = 1\n;" + "x" * 198 + "\n")  # 199 characters fit


@pytest.mark.parametrize("text, error", [
    ("[model]\ntype = fm\n", r"\[model\] key 'type': expected lr, dcnv2, can or dcnv2\+can"),
    ("[model]\nid_column = 1\n", r"\[model\] key 'id_column': unknown key"),
    ("[input]\nid_column = id\n", r"\[input\] key 'id_column': expected an integer in \[0, 65535\]"),
    ("[model]\nmlp = 400, 0\n", r"expected an integer in \[1, 65536\], got '0'"),
    ("[table.t]\ndim = 0\n", r"expected an integer in \[1, 4096\]"),
    ("[table.t]\nslots = a\n", r"\[table.t\] key 'dim': required"),
    ("[table.t]\ndim = 2\nslots = a\n[table.u]\ndim = 2\nslots = a\n", r"slot 'a' is already mapped"),
    ("[model]\ntype = lr\n", r"type lr needs a \[table.\*\] with dim = 1"),
    ("[input]\nformat = csv\nintegers = dense\n", r"key 'integers' does not apply to format = csv"),
    ("[model]\ntype = can\ncan_induction = a\ncan_feed = b\ncan_ind_table = i\ncan_feed_table = f\n"
     "[table.i]\ndim = 100\ninit = normal\n[table.f]\ndim = 16\n", r"needs dim 172, not 100"),
])
def test_rejected_like_c(text, error):
    with pytest.raises(config.ConfigError, match=error):
        config.loads(BASE + text + ("[table.x]\ndim = 1\n" if "type = lr" not in text else ""))


INPUT_VALUES = [
    ("format", "csv"), ("format", "tsv"), ("integers", "dense"), ("integers", "log"),
    ("dense_integers", "I1, I13"), ("dense_integers", "I0"), ("dense_integers", "I14"),
    ("dense_integers", "I 3"), ("dense_integers", "I+3,"), ("dense_integers", "I3x"),
    ("dense_integers", ""), ("labelled", "no"), ("labelled", "maybe"), ("label_column", "y"),
    ("label_column", "a b"), ("label_column", "é"), ("label_column", "x" * 64),
    ("ignore_columns", ""), ("ignore_columns", "a,"), ("ignore_columns", "a, "),
    ("ignore_columns", ",a"), ("ignore_columns", " a , b "), ("libsvm_slot", "f:1"),
    ("max_line_bytes", "63"), ("max_line_bytes", "64"), ("max_line_bytes", "1e3"),
    ("max_slots", "65535"), ("max_slots", "65536"), ("id_column", "id"),
    ("id_column", "3"), ("id_column", "0"), ("id_column", "65536"),
]


@pytest.mark.parametrize("key, value", INPUT_VALUES)
def test_input_values_like_c(cdriver, key, value):
    """[input] values are accepted or refused as worker/parse.c does, with
    its reason."""
    exe = cdriver("parse_driver")
    r = run([exe, f"{key}={value}"], input=b"", check=False)
    ic = config.InputConfig()
    try:
        ic.set(key, value)
        ic.check()
        got = None
    except ValueError as e:
        got = str(e)
    if r.returncode == 0:
        assert got is None
    else:
        want = r.stderr.decode().strip()
        assert got is not None, want
        assert want.endswith(": " + got), (want, got)
