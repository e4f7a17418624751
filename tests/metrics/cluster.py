#!/usr/bin/python3
"""Metrics, health and readiness through the real binaries (issue 11).

Starts two shards that share one config (whose [server] metrics_listen
both would collide on), each with its own --metrics-listen 127.0.0.1:0 (the
port is read from the "metrics on" log line), and a worker with
--metrics-listen following an input the test keeps appending to, then runs
one check:

  promtool    `promtool check metrics` passes on a shard's and the worker's
              /metrics, which carry the families the README lists
  health      /healthz and /readyz answer 200 (and 404 elsewhere); with a
              shard stopped the worker's /readyz says 503 while its
              /healthz stays 200, and 200 again once the shard is back
  prometheus  Debian's prometheus scrapes the three on loopback (config
              generated here); every query of deploy/grafana/ctrps.json
              returns at least one series through /api/v1/query

Each skips (exit 77) saying why when the tool it needs is missing; "all"
runs the three on one cluster (what the test suite does: one cluster start
instead of three) and skips only the parts whose tool is missing.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("CTRPS_BUILD_ROOT", os.path.join(SRC, "build"))
SERVER = os.path.join(BUILD, "server", "ctrps-server")
WORKER = os.path.join(BUILD, "worker", "ctrps-worker")
CLI = os.path.join(BUILD, "tools", "ctrps-cli")
DASHBOARD = os.path.join(SRC, "deploy", "grafana", "ctrps.json")
# Under the sanitizers everything is slower; these are deadlines, not timings.
DEADLINE = 120


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def fail(why):
    print(f"FAIL: {why}")
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=10):
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what, fn, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.2)
    fail(f"timed out waiting for {what}")


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ctrps-metrics-")
        self.procs = {}
        self.metrics = {}           # name -> "127.0.0.1:PORT"
        self.rpc = [None, None]
        self.config = os.path.join(self.dir, "cluster.ini")
        # One metrics_listen for both shards, as a shared config has: each
        # shard's --metrics-listen must override it, or the second cannot bind.
        self.shared_metrics = f"127.0.0.1:{free_port()}"

    def write_config(self, ports):
        with open(self.config, "w") as f:
            f.write(f"""[cluster]
shards = 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}
buckets = 16
[server]
data_dir = {self.dir}/data
metrics_listen = {self.shared_metrics}
[table.emb]
dim = 1
init = zero
optimizer = ftrl
slots = I1, I2, I3, I4, I5, I6, I7, I8, I9, I10, I11, I12, I13
slots = C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13
slots = C14, C15, C16, C17, C18, C19, C20, C21, C22, C23, C24, C25, C26
[input]
format = criteo
integers = bucketize
[model]
type = lr
batch_size = 64
[worker]
progress_interval_s = 1
""")

    def log(self, name):
        return os.path.join(self.dir, f"{name}.log")

    def metrics_addr(self, name, proc, since=0):
        """The address in the "metrics on" line the process logged after byte since."""
        def find():
            if proc.poll() is not None:
                fail(f"{name} exited ({proc.returncode}): {open(self.log(name)).read()}")
            m = re.search(r"metrics on http://([^/\s]+)/metrics", open(self.log(name)).read()[since:])
            return m and m.group(1)
        return wait_for(f"{name}'s metrics line", find)

    def start_shard(self, i):
        name = f"shard-{i}"
        ready = os.path.join(self.dir, f"ready-{i}")
        if os.path.exists(ready):
            os.unlink(ready)
        port = self.rpc[i] or 0
        since = os.path.getsize(self.log(name)) if os.path.exists(self.log(name)) else 0
        p = subprocess.Popen([SERVER, "--config", self.config, "--shard", str(i),
                              "--listen", f"127.0.0.1:{port}", "--ready-file", ready,
                              "--metrics-listen", "127.0.0.1:0"],
                             stdout=subprocess.DEVNULL, stderr=open(self.log(name), "a"))
        self.procs[name] = p
        self.metrics[name] = self.metrics_addr(name, p, since)
        if self.metrics[name] == self.shared_metrics:
            fail(f"{name} listens on [server] metrics_listen, not on its --metrics-listen")

        def rpc_port():
            if p.poll() is not None:
                fail(f"{name} exited: {open(self.log(name)).read()}")
            return os.path.exists(ready) and open(ready).read().strip().rpartition(":")[2]
        self.rpc[i] = int(wait_for(f"{name}'s ready file", rpc_port))

    def start(self):
        self.write_config([0, 0])
        for i in range(2):
            self.start_shard(i)
        self.write_config(self.rpc)
        # The worker follows a file a feeder thread keeps appending to, so
        # that it trains (and ends progress windows) as long as the test runs.
        source = os.path.join(self.dir, "source.tsv")
        subprocess.run([CLI, "gen", "--rows", "5000", "--seed", "7", "--format", "criteo",
                        "--out", source], check=True, stdout=subprocess.DEVNULL)
        self.lines = open(source).read().splitlines(keepends=True)
        self.input = os.path.join(self.dir, "clicks.tsv")
        open(self.input, "w").writelines(self.lines[:1000])
        self.feeding = threading.Event()
        self.feeder = threading.Thread(target=self.feed, daemon=True)
        self.feeder.start()
        p = subprocess.Popen([WORKER, "--config", self.config, "--input", self.input, "--follow",
                              "--metrics-listen", "127.0.0.1:0"],
                             stdout=subprocess.DEVNULL, stderr=open(self.log("worker"), "a"))
        self.procs["worker"] = p
        self.metrics["worker"] = self.metrics_addr("worker", p)

    def feed(self):
        at = 1000
        while not self.feeding.wait(0.3):
            chunk = [self.lines[(at + k) % len(self.lines)] for k in range(200)]
            at += 200
            with open(self.input, "a") as f:
                f.writelines(chunk)

    def url(self, name, path):
        return f"http://{self.metrics[name]}{path}"

    def stop(self, name, sig=signal.SIGTERM):
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self):
        if hasattr(self, "feeding"):
            self.feeding.set()
            self.feeder.join()
        for name in list(self.procs):
            self.stop(name)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_trained(c):
    """The worker has trained and ended a progress window (AUC known)."""
    def trained():
        code, page = get(c.url("worker", "/metrics"))
        m = re.search(r'^ctrps_worker_window_auc\{[^}]*\} (\S+)$', page, re.M)
        return code == 200 and m and m.group(1) != "NaN"
    wait_for("a progress window on the worker", trained)


def check_promtool(c):
    promtool = shutil.which("promtool")
    if not promtool:
        skip("promtool is not installed (Debian package prometheus)")
    wait_trained(c)
    for name, want in [("shard-0", ["ctrps_requests_total{shard=\"0\",method=\"pull\"}",
                                    "ctrps_request_duration_seconds_bucket{shard=\"0\",method=\"push\",le=\"+Inf\"}",
                                    "ctrps_table_memory_rows{shard=\"0\",table=\"emb\"}",
                                    "ctrps_rocksdb_pending_compaction_bytes{shard=\"0\"}",
                                    "ctrps_pushlog_appended_bytes_total{shard=\"0\"}",
                                    "ctrps_recovery_replayed_records_total{shard=\"0\"}"]),
                       ("worker", ["ctrps_worker_examples_total{worker=",
                                   "ctrps_worker_pull_duration_seconds_count{worker=",
                                   "ctrps_worker_push_duration_seconds_bucket{worker=",
                                   "ctrps_worker_window_logloss{worker=",
                                   "ctrps_worker_input_offset_bytes{worker=",
                                   "ctrps_worker_input_lag_bytes{worker="])]:
        code, page = get(c.url(name, "/metrics"))
        if code != 200:
            fail(f"{name} /metrics: HTTP {code}")
        r = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, text=True)
        if r.returncode != 0 or r.stdout.strip() or r.stderr.strip():
            fail(f"promtool check metrics on {name}'s /metrics:\n{r.stdout}{r.stderr}")
        for w in want:
            if w not in page:
                fail(f"{name}'s /metrics has no {w}:\n{page}")
        families = len(re.findall(r"^# TYPE ", page, re.M))
        print(f"{name}: promtool clean, {families} families")
    # The worker counted what it pulled: some pulls took some time.
    page = get(c.url("worker", "/metrics"))[1]
    n = int(re.search(r"^ctrps_worker_pull_duration_seconds_count\{[^}]*\} (\d+)$", page, re.M).group(1))
    if n == 0:
        fail("the worker trained, yet its pull histogram is empty")


def check_health(c):
    for name in ["shard-0", "shard-1", "worker"]:
        if get(c.url(name, "/healthz"))[0] != 200:
            fail(f"{name} /healthz is not 200")
        if get(c.url(name, "/nothing-here"))[0] != 404:
            fail(f"{name} /nothing-here is not 404")
    for name in ["shard-0", "shard-1"]:
        code, body = get(c.url(name, "/readyz"))
        if code != 200:
            fail(f"{name} /readyz: {code} {body}")
    wait_for("the worker's /readyz 200", lambda: get(c.url("worker", "/readyz"))[0] == 200)
    print("all /healthz and /readyz 200")
    # A shard goes: the worker is alive but not ready, and ready again after.
    c.stop("shard-1")
    wait_for("the worker's /readyz 503 with shard 1 down",
             lambda: get(c.url("worker", "/readyz"))[0] == 503)
    if get(c.url("worker", "/healthz"))[0] != 200:
        fail("the worker's /healthz is not 200 while a shard is down")
    print("shard 1 stopped: worker /readyz 503, /healthz 200")
    c.start_shard(1)
    wait_for("the worker's /readyz 200 again", lambda: get(c.url("worker", "/readyz"))[0] == 200)
    if get(c.url("shard-1", "/readyz"))[0] != 200:
        fail("restarted shard 1's /readyz is not 200")
    print("shard 1 back: worker /readyz 200")


def dashboard_queries():
    d = json.load(open(DASHBOARD))
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((p.get("title", "?"), t["expr"]))
    walk(d["panels"])
    return out


def check_prometheus(c):
    prom = shutil.which("prometheus")
    if not prom:
        skip("prometheus is not installed (Debian package prometheus)")
    queries = dashboard_queries()
    if not queries:
        fail(f"{DASHBOARD} has no queries")
    port = free_port()
    pdir = os.path.join(c.dir, "prometheus")
    os.makedirs(pdir)
    cfg = os.path.join(pdir, "prometheus.yml")
    targets = lambda names: ", ".join(f"'{c.metrics[n]}'" for n in names)
    with open(cfg, "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: ctrps-server
    static_configs:
      - targets: [{targets(["shard-0", "shard-1"])}]
  - job_name: ctrps-worker
    static_configs:
      - targets: [{targets(["worker"])}]
""")
    log = open(os.path.join(pdir, "log"), "w")
    p = subprocess.Popen([prom, f"--config.file={cfg}", f"--storage.tsdb.path={pdir}/data",
                          f"--web.listen-address=127.0.0.1:{port}"],
                         stdout=log, stderr=subprocess.STDOUT)
    c.procs["prometheus"] = p
    api = f"http://127.0.0.1:{port}/api/v1"

    def api_get(path):
        if p.poll() is not None:
            fail(f"prometheus exited: {open(os.path.join(pdir, 'log')).read()}")
        try:
            code, body = get(api + path)
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            return None
        return json.loads(body) if code == 200 else None

    def targets_up():
        r = api_get("/targets")
        active = r and r["data"]["activeTargets"]
        return active and len(active) == 3 and all(t["health"] == "up" for t in active)
    wait_for("3 targets up in prometheus", targets_up)
    print("prometheus: 3 targets up")
    wait_trained(c)
    empty = {}
    end = time.monotonic() + DEADLINE
    pending = list(queries)
    # rate() needs two scrapes in its window: poll until each query has data.
    while pending and time.monotonic() < end:
        still = []
        for title, expr in pending:
            q = expr.replace("$__rate_interval", "15s").replace("$__interval", "5s")
            r = api_get("/query?" + urllib.parse.urlencode({"query": q}))
            if r is None or r.get("status") != "success":
                still.append((title, expr))
                empty[(title, expr)] = f"query failed: {r}"
            elif not r["data"]["result"]:
                still.append((title, expr))
                empty[(title, expr)] = "no series"
            else:
                print(f"  {len(r['data']['result'])} series: {title}: {expr}")
        pending = still
        if pending:
            time.sleep(1)
    if pending:
        fail("dashboard queries without data:\n" +
             "\n".join(f"  {t}: {e}: {empty[(t, e)]}" for t, e in pending))
    print(f"prometheus: all {len(queries)} dashboard queries return series")


def main():
    modes = ("promtool", "prometheus", "health")
    if len(sys.argv) != 2 or sys.argv[1] not in modes + ("all",):
        print(__doc__)
        return 2
    for b in (SERVER, WORKER, CLI):
        if not os.access(b, os.X_OK):
            fail(f"{b} missing (build first)")
    mode = sys.argv[1]
    if mode == "promtool" and not shutil.which("promtool"):
        skip("promtool is not installed (Debian package prometheus)")
    if mode == "prometheus" and not shutil.which("prometheus"):
        skip("prometheus is not installed (Debian package prometheus)")
    checks = {"promtool": check_promtool, "health": check_health, "prometheus": check_prometheus}
    c = Cluster()
    try:
        c.start()
        if mode != "all":
            checks[mode](c)
            return 0
        # One cluster for all three (health last: it restarts a shard); a
        # missing tool skips its part only, and says so.
        for m in modes:
            tool = {"promtool": "promtool", "prometheus": "prometheus"}.get(m)
            if tool and not shutil.which(tool):
                print(f"SKIP part {m}: {tool} is not installed (Debian package prometheus)")
                continue
            checks[m](c)
    finally:
        c.close()
    return 0


if __name__ == "__main__":
    import urllib.parse
    sys.exit(main())
