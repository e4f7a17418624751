#!/usr/bin/env python3
"""Every flag the deploy files pass to a ctrps binary exists in that binary.

Reads each invocation of ctrps-server, ctrps-worker or ctrps-cli in the
systemd units' ExecStart, the Containerfile's CMD and the rendered Kubernetes
containers, and looks each --flag up in the binary's --help. A flag that is
missing fails the test, except the flags of PLANNED: the deploy files were
written against issue 11's interface before the binaries have it, and while
one of those is missing the test skips (exit 77) naming it. Standard library
only (the manifests come from render.py, whose output k8s_check.py compares
with the committed files).
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("CTRPS_BUILD_ROOT", os.path.join(SRC, "build"))
BINARIES = {"ctrps-server": "server", "ctrps-worker": "worker", "ctrps-cli": "tools"}
# Flags the deploy files may use before the binaries have them (none now).
PLANNED = set()

spec = importlib.util.spec_from_file_location("render", os.path.join(SRC, "deploy", "k8s", "render.py"))
render = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render)


def invocations():
    """(where, argv) for every ctrps binary the deploy files start."""
    unit_dir = os.path.join(SRC, "deploy", "systemd")
    for name in sorted(os.listdir(unit_dir)):
        if not name.endswith(".service"):
            continue
        text = open(os.path.join(unit_dir, name)).read().replace("\\\n", " ")
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                yield f"deploy/systemd/{name}", line[len("ExecStart="):].split()
    text = open(os.path.join(SRC, "deploy", "Containerfile")).read()
    for m in re.finditer(r"^CMD\s+(\[.*\])\s*$", text, re.M):
        yield "deploy/Containerfile CMD", json.loads(m.group(1))
    files = render.render(os.path.join(SRC, "deploy", "k8s", "values.ini"))
    for fname, objs in files.items():
        for o in objs:
            tmpl = o.get("spec", {}).get("template")
            for c in (tmpl or {}).get("spec", {}).get("containers", []):
                yield f"deploy/k8s/rendered/{fname} {o['kind']}/{c['name']}", render.container_argv(c)


def main():
    helps = {}
    missing = {}
    checked = 0
    for where, argv in invocations():
        binary = os.path.basename(argv[0])
        if binary not in BINARIES:
            print(f"FAIL: {where}: starts {argv[0]}, not a ctrps binary")
            return 1
        if binary not in helps:
            path = os.path.join(BUILD, BINARIES[binary], binary)
            try:
                out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=30)
            except OSError as e:
                print(f"FAIL: {path}: {e} (build first)")
                return 1
            helps[binary] = set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout + out.stderr))
        for arg in argv[1:]:
            if arg.startswith("--"):
                checked += 1
                flag = arg.split("=", 1)[0]
                if flag not in helps[binary]:
                    missing.setdefault((binary, flag), []).append(where)
    unplanned = {k: v for k, v in missing.items() if k[1] not in PLANNED}
    for (binary, flag), wheres in sorted(unplanned.items()):
        print(f"FAIL: {binary} has no {flag}, used by {', '.join(wheres)}")
    if unplanned:
        return 1
    if missing:
        print("SKIP: the deploy files use flags planned in issue 11 that the binaries do not have yet: " +
              "; ".join(f"{b} {f} ({', '.join(sorted(set(w)))})" for (b, f), w in sorted(missing.items())))
        return 77
    print(f"OK: {checked} flags in the deploy files, each in its binary's --help")
    return 0


if __name__ == "__main__":
    sys.exit(main())
