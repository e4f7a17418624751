"""The Python parser makes of every line exactly what worker/parse.c makes
of it: the same fids, slot ids, values, dense inputs and labels, and the
same rejections with the same reasons. The C side is a small driver
(drivers/parse_driver.c) linked with the worker's parser."""

import math
import os

import pytest

from conftest import need_bin, run, shared

from ctrps import config, keys, parse



def g9(x):
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(x, ".9g")


def py_parse(data, settings):
    """The driver's output format, computed with ctrps.parse."""
    ic = config.InputConfig()
    for kv in settings:
        k, v = kv.split("=", 1)
        ic.set(k, v)
    p = parse.Parser(ic)
    out = []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for i, line in enumerate(lines):
        line += b"\n"
        if i == 0 and p.wants_header:
            try:
                p.header(line)
                out.append("header ok")
            except parse.ParseError as e:
                out.append(f"header err {e}")
            continue
        try:
            ex = p.parse(line)
        except parse.ParseError as e:
            out.append(f"err {e}")
            continue
        out.append("ok " + g9(ex.label) + "".join(f" {f}:{sid}:{g9(v)}" for f, v, sid in ex.features)
                   + " |" + "".join(" " + g9(d) for d in ex.dense))
    return out


def c_parse(cdriver, data, settings):
    exe = cdriver("parse_driver")
    return run([exe, *settings], input=data).stdout.decode("utf-8", "replace").split("\n")[:-1]


def same_as_c(cdriver, data, settings):
    want = c_parse(cdriver, data, settings)
    got = py_parse(data, settings)
    assert len(got) == len(want)
    diff = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
    assert not diff, f"{len(diff)} lines differ, first: line {diff[0][0]}\n C: {diff[0][1]}\n py: {diff[0][2]}"
    return want


def read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("settings", [[], ["integers=dense"], ["dense_integers=I2, I13"],
                                      ["integers=dense", "bucketize_integers=I1,I5"]])
def test_criteo_train_sample(cdriver, settings):
    out = same_as_c(cdriver, read(shared("criteo/train-first10k.tsv")), settings)
    assert sum(o.startswith("ok ") for o in out) > 9900


def test_criteo_unlabelled_sample(cdriver):
    out = same_as_c(cdriver, read(shared("criteo/test-first10k-unlabelled.tsv")), ["labelled=false"])
    assert all(o.startswith("ok nan ") for o in out[:100])


@pytest.mark.parametrize("settings", [["format=csv"], ["format=csv", "ignore_columns=id, hour"],
                                      ["format=csv", "labelled=false"]])
def test_avazu_sample(cdriver, settings):
    out = same_as_c(cdriver, read(shared("avazu/train-first10k.csv")), settings)
    assert out[0] == "header ok" and sum(o.startswith("ok ") for o in out) > 9900


def test_generated_slots(cdriver, tmp_path):
    cli = need_bin("tools/ctrps-cli")
    out = tmp_path / "slots.txt"
    run([cli, "gen", "--rows", "3000", "--seed", "5", "--format", "slots", "--out", str(out)])
    same_as_c(cdriver, read(out), ["format=slots"])


def colliding_names():
    """Two slot names with the same 16-bit slot id."""
    seen = {}
    for i in range(1 << 20):
        name = b"s%d" % i
        sid = keys.slot_id(name)
        if sid in seen:
            return seen[sid], name
        seen[sid] = name
    raise AssertionError("no collision found")


CRITEO_ROW = b"1\t5\t\t-3\t1024\t9999999\t123456789012345678\t0\t1\t2\t3\t\t\t7\t" + \
    b"\t".join(b"c%d" % i if i % 5 else b"" for i in range(26))

EDGE = {
    "criteo": [
        CRITEO_ROW, CRITEO_ROW + b"\r", CRITEO_ROW + b"\textra", CRITEO_ROW.replace(b"\t", b"", 1),
        b"", b"\r", b"2" + CRITEO_ROW[1:], b"" + CRITEO_ROW[1:],
        CRITEO_ROW.replace(b"\t5\t", b"\t+5\t"), CRITEO_ROW.replace(b"\t5\t", b"\t-\t"),
        CRITEO_ROW.replace(b"\t5\t", b"\t1234567890123456789\t"),
        CRITEO_ROW.replace(b"\t5\t", b"\t5x\t"), CRITEO_ROW.replace(b"c1", b"c\x00x"),
        CRITEO_ROW.replace(b"c1", b"caf\xc3\xa9"), CRITEO_ROW.replace(b"c1", b"bad\xc3"),
        CRITEO_ROW.replace(b"c1", b"\xed\xa0\x80"), CRITEO_ROW.replace(b"c1", b"\xc0\xaf"),
        CRITEO_ROW.replace(b"c1", b"\xf4\x90\x80\x80"), CRITEO_ROW.replace(b"c1", b"\x1b[31m"),
        b"\t".join([b"0"] + [b""] * 39), b"\t" * 40, CRITEO_ROW.replace(b"c1", b"c" * 100),
    ],
    "csv": [
        b"\xef\xbb\xbfid,click,a,b,c", b"1,0,x,y,z", b"2,1,,,", b"3,2,x,y,z", b"4,1,x,y",
        b"5,1,x,y,z,w", b"6,1,x,\"y,z\"", b"7,0,x:1,y y,z\r", b"", b",,,,",
    ],
    "libsvm": [
        b"1 1:1 2:0.5 3:-2", b"-1 007:1e5 8:0x1p3 9:.5 10:5. 11:-.5e-3", b"+1\t4:1\t\t5:2  ",
        b"0 1:nan", b"0 1:inf", b"0 1:1e39", b"0 1:1e-50", b"0 1:1e400", b"0 1:1_0", b"0 1:",
        b"0 1:1e", b"0 :1", b"0 a:1", b"0 123456789012345678901:1", b"0 12345678901234567890:1",
        b"0 1", b"2 1:1", b"   ", b"1", b"0 1:1.5\x0b", b"0 1:" + b"1" * 70,
    ],
    "slots": [
        b"1 user:u1 item:i9 hist:a hist:b hist:a", b"0 a:b:c", b"0 :x", b"0 x:", b"0 x",
        b"1", b"2 a:b", b"1\tq:1\t\tr:2 ", b"1 " + b"n" * 63 + b":v", b"1 " + b"n" * 64 + b":v",
        b"1 s1:a s2:b s3:c", b"1 s4:a",
    ],
}


@pytest.mark.parametrize("fmt", sorted(EDGE))
def test_edge_cases(cdriver, fmt):
    lines = list(EDGE[fmt])
    settings = [f"format={fmt}", "max_line_bytes=200"]
    if fmt == "slots":
        settings.append("max_slots=9")
        a, b = colliding_names()
        lines += [b"1 " + a + b":x", b"1 " + b + b":y", b"1 " + a + b":z"]
    if fmt == "csv":
        lines.append(b"9," + b"y" * 200 + b",1,2,3")
    data = b"\n".join(lines) + b"\n"
    out = same_as_c(cdriver, data, settings)
    assert any(o.startswith("err ") for o in out) and any(o.startswith("ok ") for o in out)


def test_csv_header_errors(cdriver):
    for header in [b"id,click,,a", b"id,click,a,a", b"id,a,b", b"id,click," + b"x" * 64]:
        out = same_as_c(cdriver, header + b"\n1,0,x\n", ["format=csv"])
        assert out[0].startswith("header err ")


def test_fids_are_the_key_rule():
    ic = config.InputConfig()
    p = parse.Parser(ic)
    ex = p.parse(b"1\t5\t" + b"\t" * 12 + b"68fd1e64" + b"\t" * 25)
    assert ex.label == 1.0
    assert ex.fids == [keys.fid("I1", "2"), keys.fid("C1", "68fd1e64")]
    assert parse.bucket_token(1000) == b"47" and parse.bucket_token(2) == b"2"
    assert parse.bucket_token(-3) == b"-3"
