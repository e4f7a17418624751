"""The numpy forward passes reproduce the reference vectors of
tests/vectors/{dcnv2,can} (float64 reference implementation of
ALGORITHMS.md §4, §5)."""

import os

import numpy as np
import pytest

from conftest import VECTORS

from ctrps import nn


def array(path):
    with open(path) as f:
        head = f.readline().split()
        assert head[:2] == ["#", "shape"], path
        shape = tuple(int(x) for x in head[2:])
        values = np.array([float(line) for line in f if line.strip()])
    return values.reshape(shape)


def case_config(d):
    out = {}
    with open(os.path.join(d, "config.txt")) as f:
        for line in f:
            k, v = line.strip().split(" ", 1)
            out[k] = v
    return out


def sizes(text):
    return [int(x) for x in text.strip("[]").split(",") if x.strip()]


def cases(kind):
    root = os.path.join(VECTORS, kind)
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    assert names, f"no vectors under {root}"
    return [os.path.join(root, n) for n in names]


@pytest.mark.parametrize("d", cases("dcnv2"), ids=os.path.basename)
def test_dcnv2_vectors(d):
    c = case_config(d)
    cfg = nn.DcnConfig(int(c["input_dim"]), int(c["cross_layers"]), c["cross"], int(c["experts"]),
                       int(c["rank"]), c["activation"], c["use_c"] == "True", sizes(c["deep"]),
                       c["structure"])
    params = {f[len("param."):-len(".txt")]: array(os.path.join(d, f)).astype(np.float32)
              for f in os.listdir(d) if f.startswith("param.")}
    assert sorted(params) == sorted(name for name, _ in cfg.blocks())
    z = nn.dcn_forward(cfg, params, array(os.path.join(d, "x0.txt")).astype(np.float32))
    want = array(os.path.join(d, "logit.txt")).ravel()
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", cases("can"), ids=os.path.basename)
def test_can_vectors(d):
    c = case_config(d)
    cfg = nn.CanConfig(sizes(c["dims"]), c["use_bias"] == "True", int(c["orders"]),
                       c["order_indep"] == "True", c["layers"], c["combine"])
    P = array(os.path.join(d, "P.txt")).astype(np.float32)
    X = array(os.path.join(d, "X.txt")).astype(np.float32)
    mask = array(os.path.join(d, "mask.txt")).astype(np.float32)
    assert (mask == 0).any()
    X[mask == 0] = np.nan  # padding is never read
    out = nn.can_forward(cfg, P, X, mask)
    want = array(os.path.join(d, "out.txt"))
    assert out.shape == want.shape == (P.shape[0], cfg.out_width)
    np.testing.assert_allclose(out, want, rtol=5e-5, atol=5e-6)


def test_can_layers_last_and_sum():
    """layers = last keeps only h_K; combine = sum adds the orders."""
    rng = np.random.default_rng(3)
    full = nn.CanConfig([4, 3, 2], orders=2)
    P = rng.normal(size=(3, full.ind_width)).astype(np.float32)
    X = rng.normal(size=(3, 5, 4)).astype(np.float32)
    out = nn.can_forward(full, P, X)                    # [o1: h1 h2 | o2: h1 h2]
    last = nn.can_forward(nn.CanConfig([4, 3, 2], orders=2, layers="last"), P, X)
    np.testing.assert_array_equal(last, np.hstack([out[:, 3:5], out[:, 8:10]]))
    summed = nn.can_forward(nn.CanConfig([4, 3, 2], orders=2, combine="sum"), P, X)
    np.testing.assert_allclose(summed, out[:, :5] + out[:, 5:], rtol=1e-6)
