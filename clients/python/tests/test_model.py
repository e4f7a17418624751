"""Scoring exported models in numpy, end to end against the C worker.

For each model type, a real cluster is trained with ctrps-worker, which
then scores a holdout file with Lookup (nothing created; missing keys score
as zero rows) and reports its AUC and mean logloss. The model is exported
(`ctrps-cli export-model`, docs/export-format.md) and scored by ctrps.model
from the raw holdout lines: the same metrics, over the same number of
examples, show that parsing, the input layout, pooling, the CAN units, the
DCN-V2 network and the sigmoid agree with the worker's."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import PKG_ROOT, SHARED, bin_path, need_bin, run

import ctrps
from ctrps import model as cmodel

CRITEO_SLOTS = ("slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13\n"
                "slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13\n"
                "slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26\n")
COMMON = "[server]\ndurability = interval=1000\n"
EMB = "[table.emb]\ndim = 4\noptimizer = adagrad\nlr = 0.1\ninitial_accumulator_value = 1e-6\n" \
      "init = normal\ninit_std = 0.05\n"
CAN_TABLES = "[table.can_ind]\ndim = {ind}\noptimizer = adagrad\nlr = 0.05\ninit = normal\n" \
             "init_std = 0.1\n[table.can_feed]\ndim = {feed}\noptimizer = adagrad\nlr = 0.05\n" \
             "init = normal\ninit_std = 0.1\n"

# name -> (data, config body)
MODELS = {
    "lr-criteo": ("criteo", COMMON + "[model]\ntype = lr\nbatch_size = 128\nmax_in_flight = 0\n"
                  "[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.1\n" + CRITEO_SLOTS),
    # LR with dense integers log(1+x) (one weight each) and empty
    # categoricals as a value, as deploy/criteo-lr-dense.ini.
    "lr-dense-criteo": ("criteo", COMMON + "[input]\nintegers = dense\nbucketize_integers = I3\n"
                        "empty_categories_as_value = true\n[model]\ntype = lr\nbatch_size = 128\n"
                        "max_in_flight = 0\nsparse_gradient = sum\n[table.wide]\ndim = 1\n"
                        "optimizer = ftrl\nalpha = 0.1\nbeta = 1\nlambda1 = 0.5\nlambda2 = 1\n"
                        + CRITEO_SLOTS),
    "dcnv2-criteo": ("criteo", COMMON + "[model]\ntype = dcnv2\nbatch_size = 128\nmax_in_flight = 0\n"
                     "cross_layers = 2\nmlp = 16, 8\ndense_lr = 0.01\n" + EMB + CRITEO_SLOTS),
    "dcnv2-dense-moe-parallel": (
        "criteo", COMMON + "[input]\nintegers = dense\nbucketize_integers = I3, I7\n"
        "[model]\ntype = dcnv2\nbatch_size = 100\nmax_in_flight = 0\ncross_layers = 2\n"
        "cross_rank = 3\ncross_experts = 2\ncross_activation = relu\nstructure = parallel\n"
        "mlp = 8\ndense_lr = 0.01\n" + EMB + "slots = I3, I7\n" + CRITEO_SLOTS.split("\n", 1)[1]),
    "can-slots": ("slots", COMMON + "[input]\nformat = slots\n[model]\ntype = can\nbatch_size = 64\n"
                  "max_in_flight = 0\nmlp = 8\npooling = mean\ndense_lr = 0.01\ncan_induction = item, cat\n"
                  "can_feed = hist\ncan_ind_table = can_ind\ncan_feed_table = can_feed\n"
                  "can_dims = 8, 4\ncan_orders = 2\ncan_max_len = 9\n" + EMB
                  + "slots = user, item, cat, ctx, hist\n" + CAN_TABLES.format(ind=36, feed=16)),
    "dcnv2+can-slots": ("slots", COMMON + "[input]\nformat = slots\n[model]\ntype = dcnv2+can\n"
                        "batch_size = 64\nmax_in_flight = 0\ncross_layers = 1\nmlp = 8\npooling = sum\n"
                        "dense_lr = 0.01\ncan_induction = item\ncan_feed = hist, ctx\n"
                        "can_ind_table = can_ind\ncan_feed_table = can_feed\ncan_dims = 6, 4, 3\n"
                        "can_bias = false\ncan_orders = 2\ncan_order_indep = true\ncan_layers = last\n"
                        "can_combine = sum\ncan_max_len = 7\n" + EMB
                        + "slots = user, item, cat, hist\n" + CAN_TABLES.format(ind=144, feed=6)),
    "lr-libsvm": ("libsvm", COMMON + "[input]\nformat = libsvm\n[model]\ntype = lr\nbatch_size = 64\n"
                  "max_in_flight = 0\n[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.1\nslots = f\n"),
    "dcnv2-libsvm": ("libsvm", COMMON + "[input]\nformat = libsvm\nlibsvm_slot = x\n[model]\n"
                     "type = dcnv2\nbatch_size = 64\nmax_in_flight = 0\ncross_layers = 1\nmlp = 8\n"
                     "dense_lr = 0.01\n" + EMB + "slots = x\n"),
    "lr-avazu": ("avazu", COMMON + "[input]\nformat = csv\n[model]\ntype = lr\nbatch_size = 256\n"
                 "max_in_flight = 0\n[table.wide]\ndim = 1\noptimizer = ftrl\nalpha = 0.1\n"
                 "slots = hour, C1, banner_pos, site_id, site_domain, site_category, app_id\n"
                 "slots = app_domain, app_category, device_id, device_ip, device_model, device_type\n"
                 "slots = device_conn_type, C14, C15, C16, C17, C18, C19, C20, C21\n"),
}


def split(lines, n_hold, header=False):
    head = lines[:1] if header else []
    body = lines[1:] if header else lines
    return head + body[:-n_hold], head + body[-n_hold:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train/holdout files per data kind: generated criteo and slots logs,
    a synthetic libsvm file, and the shared Avazu sample when present."""
    d = tmp_path_factory.mktemp("data")
    cli = need_bin("tools/ctrps-cli")
    out = {}
    for kind, rows in (("criteo", 3000), ("slots", 2000)):
        p = d / f"{kind}.txt"
        run([cli, "gen", "--rows", str(rows), "--seed", "11", "--format", kind, "--out", str(p)])
        out[kind] = split(p.read_bytes().splitlines(keepends=True), 700)
    rng = np.random.default_rng(5)
    lines = []
    for _ in range(2000):
        k = int(rng.integers(0, 10))              # the signal: which of 10 indicator features
        idx = rng.choice(np.arange(10, 300), size=rng.integers(0, 10))
        vals = rng.normal(size=len(idx)).round(3)
        y = int(rng.random() < 1 / (1 + np.exp(-(k - 4.5) * 0.6)))
        pairs = [f"{k}:1"] + [f"{i}:{v:g}" for i, v in zip(idx, vals)]
        lines.append((("+1 " if y else "-1 ") + " ".join(pairs) + "\n").encode())
    out["libsvm"] = split(lines, 600)
    avazu = os.path.join(SHARED, "avazu", "train-first10k.csv")
    if os.path.exists(avazu):
        with open(avazu, "rb") as f:
            out["avazu"] = split(f.read().splitlines(keepends=True)[:4001], 1000, header=True)
    files = {}
    for kind, (train, hold) in out.items():
        tp, hp = d / f"{kind}.train", d / f"{kind}.holdout"
        tp.write_bytes(b"".join(train))
        hp.write_bytes(b"".join(hold))
        files[kind] = (str(tp), str(hp))
    return files


@pytest.fixture(scope="module")
def trained(data, module_cluster_factory, tmp_path_factory):
    """trained(name) -> (export dir, worker result, holdout path), once per
    model: a one-shard cluster, ctrps-worker with --holdout, an export."""
    worker = need_bin("worker/ctrps-worker")
    done = {}

    def get(name):
        if name in done:
            return done[name]
        kind, body = MODELS[name]
        if kind not in data:
            pytest.skip(f"no {kind} data")
        train, hold = data[kind]
        c = module_cluster_factory(body, nshards=1 if name != "dcnv2-criteo" else 2)
        r = run([worker, "--config", c.config, "--input", train, "--holdout", hold,
                 "--log-level", "warn"])
        result = json.loads(r.stdout.decode().strip().splitlines()[-1])
        out = str(tmp_path_factory.mktemp("export") / name)
        c.cli("export-model", "--dir", out, *(["--state"] if name == "lr-criteo" else []))
        for i in range(c.nshards):
            c.stop_shard(i)
        done[name] = (out, result, hold)
        return done[name]

    return get


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scores_like_the_worker(trained, name):
    export, result, hold = trained(name)
    m = cmodel.load(export)
    assert m.type == name.split("-")[0]
    with open(hold, "rb") as f:
        probs, z, y = m.predict_with_labels(f)
    assert not np.isnan(probs).any() and ((probs > 0) & (probs < 1)).all()
    assert len(probs) == result["holdout_examples"] > 100
    logloss = float(np.mean(cmodel.logloss_logit(z, y)))
    auc = cmodel.auc(cmodel.sigmoid(z), y)
    assert abs(logloss - result["holdout_logloss"]) <= 2e-6 + 1e-5 * abs(logloss), (logloss, result)
    # The worker's AUC comes from its bounded-memory histograms (README:
    # within 1e-3 of the exact AUC on trained models); numpy's is exact.
    assert abs(auc - result["holdout_auc"]) <= 1e-3, (auc, result)
    # The model learned something, so the comparison is not between two
    # constant predictors.
    assert np.std(probs) > 1e-3 and auc > 0.52


def test_predict_cli(trained, tmp_path):
    export, result, hold = trained("dcnv2-criteo")
    lines = open(hold, "rb").read().splitlines(keepends=True)
    bad = tmp_path / "with-bad.tsv"
    bad.write_bytes(b"".join(lines[:5] + [b"not\ta\tcriteo\tline\n", b"\n"] + lines[5:]))
    env = dict(os.environ, PYTHONPATH=PKG_ROOT)
    cmd = [sys.executable, "-m", "ctrps.predict", "--model", export, "--input", str(bad)]
    r1 = subprocess.run(cmd, capture_output=True, env=env, check=True)
    r2 = subprocess.run(cmd, capture_output=True, env=env, check=True)
    assert r1.stdout == r2.stdout                   # two runs, the same bytes
    out = r1.stdout.decode().splitlines()
    assert len(out) == len(lines) + 2
    assert out[5] == out[6] == "nan"
    good = np.array([float(x) for x in out[:5] + out[7:]])
    assert np.isfinite(good).all() and ((good > 0) & (good < 1)).all()
    m = cmodel.load(export)
    np.testing.assert_array_equal(good, np.array([float(f"{p:.9g}") for p in m.predict(lines)]))
    summary = json.loads(r1.stderr.decode().strip().splitlines()[-1])
    assert summary["lines"] == len(lines) + 2 and summary["malformed"] == 2
    assert abs(summary["logloss"] - result["holdout_logloss"]) < 1e-5


def test_predict_cli_csv_header_per_file(trained, tmp_path):
    export, _, hold = trained("lr-avazu")
    env = dict(os.environ, PYTHONPATH=PKG_ROOT)
    out = tmp_path / "p.txt"
    subprocess.run([sys.executable, "-m", "ctrps.predict", "--model", export, "--input", hold,
                    "--input", hold, "--output", str(out)], env=env, check=True, capture_output=True)
    probs = out.read_text().splitlines()
    n = len(open(hold, "rb").read().splitlines()) - 1
    assert len(probs) == 2 * n and probs[:n] == probs[n:] and "nan" not in probs


def test_export_is_checked(trained, tmp_path):
    export, _, hold = trained("lr-criteo")
    m = cmodel.load(export)
    assert m.tables["wide"].state.shape == (len(m.tables["wide"]), 3)
    found, w = m.tables["wide"].lookup([ctrps.fid("__bias__", "1"), 12345])
    assert found.tolist() == [True, False] and w[1, 0] == 0

    def broken(name, edit):
        d = tmp_path / name
        shutil.copytree(export, d)
        edit(str(d))
        return str(d)

    def flip_byte(d):
        p = os.path.join(d, "wide.weights.npy")
        b = bytearray(open(p, "rb").read())
        b[-1] ^= 1
        open(p, "wb").write(bytes(b))

    def set_version(d):
        p = os.path.join(d, "manifest.json")
        man = json.load(open(p))
        man["format_version"] = 2
        json.dump(man, open(p, "w"))

    def bad_slot_id(d):
        p = os.path.join(d, "manifest.json")
        man = json.load(open(p))
        man["hashing"]["slots"]["C1"] ^= 1
        json.dump(man, open(p, "w"))

    with pytest.raises(cmodel.ExportError, match="sha256 does not match"):
        cmodel.load(broken("flip", flip_byte))
    cmodel.load(str(tmp_path / "flip"), verify=False)  # a checksum-only problem
    with pytest.raises(cmodel.ExportError, match="format_version 2 is not supported"):
        cmodel.load(broken("version", set_version))
    with pytest.raises(cmodel.ExportError, match="the fid rule differs"):
        cmodel.load(broken("slot", bad_slot_id))
    with pytest.raises(cmodel.ExportError, match="no manifest.json"):
        cmodel.load(broken("nomanifest", lambda d: os.unlink(os.path.join(d, "manifest.json"))))
    with pytest.raises(cmodel.ExportError, match="missing"):
        cmodel.load(broken("nofile", lambda d: os.unlink(os.path.join(d, "wide.fids.npy"))))


def c_side_predicts():
    """The C side of issue 9 exists in this build: ctrps-worker --predict and
    ctrps-cli export-model."""
    try:
        w = subprocess.run([bin_path("worker/ctrps-worker"), "--help"], capture_output=True)
        c = subprocess.run([bin_path("tools/ctrps-cli"), "--help"], capture_output=True)
    except OSError:
        return False
    return b"--predict" in w.stdout + w.stderr and b"export-model" in c.stdout + c.stderr


@pytest.mark.skipif(not c_side_predicts(), reason="ctrps-worker --predict / ctrps-cli export-model "
                    "not in this build yet")
@pytest.mark.parametrize("name", ["lr-criteo", "lr-dense-criteo", "dcnv2-criteo", "dcnv2-dense-moe-parallel",
                                  "can-slots", "dcnv2+can-slots"])
def test_matches_worker_predict_per_line(data, module_cluster_factory, tmp_path, name):
    """python3 -m ctrps.predict on `ctrps-cli export-model` output reproduces
    `ctrps-worker --predict` within 1e-5 on every line."""
    kind, body = MODELS[name]
    train, clean = data[kind]
    # Lines either side rejects keep their place: "nan" on both sides.
    lines = open(clean, "rb").read().splitlines(keepends=True)
    hold = str(tmp_path / "holdout")
    with open(hold, "wb") as f:
        f.write(b"".join(lines[:3] + [b"not a line\n", b"\n"] + lines[3:] + [b"1\tx\n"]))
    # Each output line starts with an id column: C1, or a slots line's first feature.
    col = 15 if kind == "criteo" else 2
    idcol = f"id_column = {col}\n"
    body = body.replace("[input]\n", "[input]\n" + idcol) if "[input]\n" in body \
        else body + "[input]\n" + idcol
    c = module_cluster_factory(body, nshards=2)
    worker = bin_path("worker/ctrps-worker")
    run([worker, "--config", c.config, "--input", train, "--log-level", "warn"])
    want = tmp_path / "worker.txt"
    run([worker, "--config", c.config, "--input", hold, "--predict", str(want), "--log-level", "warn"])
    export = tmp_path / "export"
    c.cli("export-model", "--dir", str(export))
    got = tmp_path / "python.txt"
    env = dict(os.environ, PYTHONPATH=PKG_ROOT)
    subprocess.run([sys.executable, "-m", "ctrps.predict", "--model", str(export), "--input", hold,
                    "--output", str(got)], env=env, check=True, capture_output=True)
    wl, gl = want.read_bytes().splitlines(), got.read_bytes().splitlines()
    assert [x.rsplit(b"\t", 1)[0] for x in gl] == [x.rsplit(b"\t", 1)[0] for x in wl]
    sep = b"\t" if kind == "criteo" else None
    assert [x.rsplit(b"\t", 1)[0] for x in wl[:3]] == [x.split(sep)[col - 1] for x in lines[:3]]
    w = np.array([float(x.rsplit(b"\t", 1)[-1]) for x in wl])
    g = np.array([float(x.rsplit(b"\t", 1)[-1]) for x in gl])
    assert len(w) == len(g) == len(lines) + 3
    assert np.isnan(w[[3, 4, -1]]).all() and np.isfinite(np.delete(w, [3, 4, len(w) - 1])).all()
    np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)
