"""python3 -m ctrps.predict --model D --input FILE [--format F] [--unlabelled] [--output OUT]

Scores every input line with the exported model in D and writes one
probability per line ("%.9g"), in input order, like `ctrps-worker --predict`.
A line the worker would reject as malformed gets "nan", so output line k
always belongs to input line k (a CSV file's header line gets none). With
[input] id_column = N in the model's config, the N-th column's raw text and
a tab come first, as from the worker. At the
end one JSON line goes to stderr: lines, malformed, and for labelled input
the AUC and mean logloss over the scored lines.

Exit status: 0 success, 1 an unreadable input or a bad export, 2 bad usage.
"""

import argparse
import json
import math
import sys

import numpy as np

from . import config as _config, model as _model, parse as _parse


def _lines(path):
    f = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        for line in f:
            yield line
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def fmt_prob(p):
    """%.9g, as the C side prints it; NaN as "nan"."""
    return "nan" if math.isnan(p) else format(p, ".9g")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python3 -m ctrps.predict",
                                 description="Score input lines with an exported ctrps model.")
    ap.add_argument("--model", required=True, help="export directory (ctrps-cli export-model --dir)")
    ap.add_argument("--input", action="append", required=True,
                    help="input file, - for stdin; repeat for more (each CSV file has its header)")
    ap.add_argument("--format", choices=_config.INPUT_FORMATS, help="overrides [input] format")
    ap.add_argument("--unlabelled", action="store_true",
                    help="the input has no label column ([input] labelled = false; criteo, csv)")
    ap.add_argument("--output", default="-", help="where the probabilities go (default - : stdout)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the export")
    args = ap.parse_args(argv)
    try:
        m = _model.load(args.model, verify=not args.no_verify, input_format=args.format)
        if args.unlabelled:
            m.config.input.set("labelled", "false")
            m.config.input.check()
    except (_model.ExportError, _config.ConfigError) as e:
        print(f"ctrps.predict: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"ctrps.predict: --unlabelled: {e}", file=sys.stderr)
        return 2
    inp = m.config.input
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")
    logits, labels = [], []
    n = malformed = 0
    try:
        parser = m.parser()
        for path in args.input:
            parser.next_file()
            lines = _lines(path)
            if inp.id_column:
                lines = list(lines)
                body = lines[1:] if parser.expects_header else lines
                ids = [_parse.column(x, inp.format, inp.id_column, inp.max_line_bytes) + b"\t"
                       for x in body]
            probs, z, y = m.predict_with_labels(lines, args.batch_size, parser)
            text = [fmt_prob(p).encode() + b"\n" for p in probs]
            out.write(b"".join(a + b for a, b in zip(ids, text)) if inp.id_column else b"".join(text))
            n += len(probs)
            malformed += int(np.isnan(z).sum())
            logits.append(z)
            labels.append(y)
    except OSError as e:
        print(f"ctrps.predict: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    except _parse.ParseError as e:
        print(f"ctrps.predict: bad header: {e}", file=sys.stderr)
        return 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()
    z = np.concatenate(logits) if logits else np.zeros(0, np.float32)
    y = np.concatenate(labels) if labels else np.zeros(0)
    ok = ~np.isnan(z) & ~np.isnan(y)
    res = {"lines": n, "malformed": malformed}
    if ok.any():
        res["auc"] = _model.auc(_model.sigmoid(z[ok]), y[ok])
        res["logloss"] = float(np.mean(_model.logloss_logit(z[ok], y[ok])))
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v)
                      for k, v in res.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
