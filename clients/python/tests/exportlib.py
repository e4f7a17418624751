"""A test-only writer of the model export format (export-format.md),
through the Python client: every table's rows (Export, page by page) and the
dense blocks (DensePull). It stands in for `ctrps-cli export-model` so the
Python scorer can be checked against the worker before that command exists;
it takes no checkpoint barrier, so it is only right on an idle cluster."""

import hashlib
import json
import os
import shutil
import time

import numpy as np

import ctrps
from ctrps import keys, model, parse


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def write_export(client, config_path, out, with_state=False):
    cfg = ctrps.config.load(config_path)
    os.makedirs(out)
    shutil.copyfile(config_path, os.path.join(out, "config.ini"))
    tables = []
    for t in cfg.tables.values():
        ks, ws, ss = [], [], []
        for page in client.export(t.name, with_state=with_state, page_rows=1000):
            ks.append(page[0])
            ws.append(page[1])
            if with_state:
                ss.append(page[2])
        fids = np.concatenate(ks) if ks else np.zeros(0, np.uint64)
        w = np.concatenate(ws) if ws else np.zeros((0, t.dim), np.float32)
        files = {"fids": f"{t.name}.fids.npy", "weights": f"{t.name}.weights.npy"}
        np.save(os.path.join(out, files["fids"]), fids.astype("<u8"))
        np.save(os.path.join(out, files["weights"]), w.astype("<f4"))
        if with_state:
            files["state"] = f"{t.name}.state.npy"
            s = np.concatenate(ss) if ss else np.zeros((0, t.state_width), np.float32)
            np.save(os.path.join(out, files["state"]), s.astype("<f4"))
        tables.append({"name": t.name, "dim": t.dim, "optimizer": t.optimizer, "rows": len(fids),
                       "state_width": t.state_width, "state_fields": t.state_fields,
                       "slots": t.slots, "files": files})
    dense = []
    layout = model.Layout(cfg, parse.Parser(cfg.input).ndense)
    if not layout.lr_table:
        shapes = dict(layout.dcn.blocks())
        for name, values in client.dense_pull(list(shapes)).items():
            fname = f"{name}.npy"
            np.save(os.path.join(out, fname), values.astype("<f4"))
            dense.append({"name": name, "len": int(values.size), "file": fname,
                          "shape": list(shapes[name])})
    files = {}
    for name in sorted(os.listdir(out)):
        p = os.path.join(out, name)
        files[name] = {"bytes": os.path.getsize(p), "sha256": _sha256(p)}
    slots = {s: keys.slot_id(s) for t in cfg.tables.values() for s in t.slots}
    manifest = {
        "format": "ctrps-model", "format_version": 1,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ctrps_version": ctrps.__version__, "source": {"kind": "cluster"},
        "config": cfg.sections, "model": {"type": cfg.model.type},
        "hashing": {"fid": "(slot_id << 48) | (XXH3_64(value, seed=0) & (2**48 - 1))",
                    "hash": "xxh3_64", "seed": 0, "value_bits": 48,
                    "slot_id": "low 16 bits of XXH3_64(slot name, seed=0)",
                    "slots": slots, "buckets": cfg.buckets},
        "tables": tables, "dense": dense, "files": files,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return out
