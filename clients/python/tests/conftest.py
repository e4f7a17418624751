"""Fixtures for the Python client's tests: paths, C drivers built with the
system cc, and loopback clusters of real ctrps-server processes.

Like tests/harness.c: shards listen on 127.0.0.1 port 0 and report the port
in a ready file, which is polled; the client config is written once the
ports are known; every shard is stopped by its PID (SIGTERM, then SIGKILL
after 20 s) at teardown, and dies with the test process (PR_SET_PDEATHSIG)
if that is killed. Binaries come from $CTRPS_BUILD_ROOT (default
<repo>/build); tests that need them skip when they are not built, tests that
need ../shared/data skip when it is absent.
"""

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)                    # clients/python
REPO = os.path.normpath(os.path.join(PKG_ROOT, "..", ".."))
sys.path.insert(0, PKG_ROOT)

BUILD = os.environ.get("CTRPS_BUILD_ROOT") or os.path.join(REPO, "build")
SHARED = os.environ.get("CTRPS_SHARED_DATA") or os.path.join(REPO, "..", "shared", "data")
VECTORS = os.path.join(REPO, "tests", "vectors")

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def bin_path(rel):
    return os.path.join(BUILD, rel)


def need_bin(rel):
    p = bin_path(rel)
    if not os.access(p, os.X_OK):
        pytest.skip(f"{p} is not built (meson setup build && ninja -C build)")
    return p


def shared(rel):
    p = os.path.join(SHARED, rel)
    if not os.path.exists(p):
        pytest.skip(f"{p} absent")
    return p


def _die_with_parent():
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(argv, input=None, check=True, timeout=120):
    """Run a command, capture text output; fail the test on a non-zero exit
    when check is set."""
    r = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if check and r.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {r.returncode}:\n"
                    f"{r.stderr.decode(errors='replace')}")
    return r


@pytest.fixture(scope="session")
def cdriver():
    """cdriver(name) -> path of the C reference driver tests/drivers/NAME.c,
    built by meson with the project's libraries (clients/python/meson.build)."""
    return lambda name: need_bin(os.path.join("clients", "python", name))


class Cluster:
    """Shards of ctrps-server on loopback; .config is the client config."""

    def __init__(self, body, nshards=2, secret=None):
        self.server = need_bin("server/ctrps-server")
        self.dir = tempfile.mkdtemp(prefix="ctrps-pytest-")
        self.body = body
        self.nshards = nshards
        self.pids = [0] * nshards
        self.procs = [None] * nshards
        self.ports = [0] * nshards
        self.config = os.path.join(self.dir, "cluster.ini")
        self.secret_file = None
        if secret is not None:
            self.secret_file = os.path.join(self.dir, "secret")
            with open(self.secret_file, "wb") as f:
                f.write(secret)
        self._write_config()
        try:
            for i in range(nshards):     # open the stores in parallel
                self._spawn(i)
            for i in range(nshards):
                self._wait_ready(i)
        except BaseException:
            self.destroy()
            raise
        self._write_config()

    def _write_config(self, path=None, secret_file=None):
        shards = ", ".join(f"127.0.0.1:{p or 1 + i}" for i, p in enumerate(self.ports))
        body = self.body
        sf = secret_file or self.secret_file
        if sf:
            body = body.replace("[server]\n", f"[server]\nauth_secret_file = {sf}\n", 1)
            if "[server]" not in self.body:
                body += f"\n[server]\nauth_secret_file = {sf}\n"
        with open(path or self.config, "w") as f:
            f.write(f"[cluster]\nshards = {shards}\n{body}\n")
        return path or self.config

    def client_config(self, name, secret_file=None):
        """Another client config for the same shards (e.g. another secret)."""
        return self._write_config(os.path.join(self.dir, name), secret_file)

    def set_body(self, body):
        """Rewrite the config with another body (the shard list stays): shards
        started from now on read it."""
        self.body = body
        self._write_config()

    def start_shard(self, i):
        """Start shard i (again: on the port it had, so clients reconnect)."""
        self._spawn(i)
        self._wait_ready(i)

    def _spawn(self, i):
        ready = os.path.join(self.dir, f"ready-{i}")
        if os.path.exists(ready):
            os.unlink(ready)
        log = open(os.path.join(self.dir, f"shard-{i}.log"), "ab")
        argv = [self.server, "--config", self.config, "--shard", str(i),
                "--listen", f"127.0.0.1:{self.ports[i]}", "--ready-file", ready,
                "--data-dir", os.path.join(self.dir, "data")]
        p = subprocess.Popen(argv, stdout=log, stderr=log, preexec_fn=_die_with_parent)
        log.close()
        self.procs[i], self.pids[i] = p, p.pid

    def _wait_ready(self, i):
        """Poll shard i's ready file; fail fast if it exits instead."""
        p = self.procs[i]
        ready = os.path.join(self.dir, f"ready-{i}")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if p.poll() is not None:
                self.pids[i] = 0
                raise RuntimeError(f"shard {i} exited during start:\n{self.log(i)}")
            try:
                with open(ready) as f:
                    text = f.read()
                port = int(text.rsplit(":", 1)[1]) if ":" in text else 0
            except (OSError, ValueError):
                port = 0
            if port > 0:
                self.ports[i] = port
                return
            time.sleep(0.01)
        self.stop_shard(i, signal.SIGKILL)
        raise RuntimeError(f"shard {i} not ready within {READY_TIMEOUT} s")

    def stop_shard(self, i, sig=signal.SIGTERM):
        p = self.procs[i]
        if p is None or self.pids[i] == 0:
            return None
        os.kill(self.pids[i], sig)
        try:
            rc = p.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.pids[i], signal.SIGKILL)
            rc = p.wait()
        self.pids[i] = 0
        return rc

    def log(self, i):
        try:
            with open(os.path.join(self.dir, f"shard-{i}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def cli(self, *args, check=True, config=None):
        cli = need_bin("tools/ctrps-cli")
        return run([cli, "--config", config or self.config, *args], check=check)

    def destroy(self):
        problems = []
        for i in range(self.nshards):
            rc = self.stop_shard(i)
            if rc not in (None, 0):
                problems.append(f"shard {i} exited {rc} after SIGTERM:\n{self.log(i)}")
        if not problems and not os.environ.get("CTRPS_TEST_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        return problems


def _factory():
    made = []

    def make(body, nshards=2, secret=None):
        c = Cluster(body, nshards, secret)
        made.append(c)
        return c

    def close():
        problems = []
        for c in made:
            problems += c.destroy()
        if problems:
            pytest.fail("\n".join(problems))

    return make, close


@pytest.fixture
def cluster_factory():
    """cluster_factory(body, nshards=2, secret=None) -> Cluster, stopped
    (and checked to exit 0 on SIGTERM) at teardown."""
    make, close = _factory()
    yield make
    close()


@pytest.fixture(scope="module")
def module_cluster_factory():
    """cluster_factory for clusters shared by a module's tests."""
    make, close = _factory()
    yield make
    close()
