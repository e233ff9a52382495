"""Fixtures for the functions tests: the real binaries (bitnet serve, bootstrap, handler) started
as subprocesses on free loopback ports, and the synthetic `tiny` model.

Binaries come from $BITNET_BIN_DIR, else $CARGO_TARGET_DIR/release, else target/release.

Auth: the servers refuse to start without API_KEY unless BITNET_ALLOW_NO_AUTH=1, so every
server started here without an API_KEY gets BITNET_ALLOW_NO_AUTH=1 (see `no_auth_unless_keyed`).
"""
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
# tests/iac's readers of the deployment files (rendered Kubernetes manifests, Dockerfile
# stages), so that the end-to-end tests run what those files say without reading them again.
sys.path.insert(0, str(ROOT / "tests" / "iac"))
MODEL_ID = "bitnet-b1.58-2b-4t"


def bin_dir() -> Path:
    if os.environ.get("BITNET_BIN_DIR"):
        return Path(os.environ["BITNET_BIN_DIR"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "release"


def binary(name: str) -> Path:
    p = bin_dir() / name
    if not p.exists():
        pytest.skip(f"{p} not built (cargo build --release -p bitnet-cli -p bitnet-lambda -p bitnet-azure)")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_SERVE_CHECKED = False


def serve_binary() -> Path:
    """The `bitnet` binary, after checking that `bitnet serve --help` works: a broken
    `bitnet serve` fails the test (there is no fallback to another binary)."""
    global _SERVE_CHECKED
    p = binary("bitnet")
    if not _SERVE_CHECKED:
        r = subprocess.run([p, "serve", "--help"], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"`{p} serve --help` exited with {r.returncode}:\n{r.stdout}{r.stderr}")
        _SERVE_CHECKED = True
    return p


def no_auth_unless_keyed(env: dict) -> dict:
    """A server started without API_KEY needs the explicit opt-in BITNET_ALLOW_NO_AUTH=1."""
    if not env.get("API_KEY"):
        env.setdefault("BITNET_ALLOW_NO_AUTH", "1")
    return env


class Proc:
    """A binary under test, with its log captured to a file."""

    def __init__(self, argv, env, url, log_path):
        self.url = url
        self.env = dict(env)  # what the test set, on top of the filtered environment
        self.log_path = log_path
        self._log = open(log_path, "wb")
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "API_KEY", "FUNCTIONS_"))}
        full_env.update({"RUST_LOG": "info", "BITNET_THREADS": "2"})
        full_env.update(env)
        self.p = subprocess.Popen([str(a) for a in argv], env=full_env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_http(self, path="/health", timeout=30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"process exited with {self.p.returncode}:\n{self.log()}")
            try:
                requests.get(self.url + path, timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.05)
        raise TimeoutError(f"{self.url}{path} did not answer in {timeout}s:\n{self.log()}")

    def wait_ready(self, timeout=60.0, headers=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = requests.get(self.url + "/ready", timeout=2, headers=headers or {})
            if r.status_code == 200:
                return self
            if self.p.poll() is not None:
                raise RuntimeError(self.log())
            time.sleep(0.1)
        raise TimeoutError(f"model not ready in {timeout}s: {requests.get(self.url + '/health').text}\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return Path(self.log_path).read_text(errors="replace")[-6000:]

    def log_lines(self):
        out = []
        for line in Path(self.log_path).read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()


@pytest.fixture(scope="session")
def workdir():
    with tempfile.TemporaryDirectory(prefix="bitnet-functions-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def tiny_model(workdir) -> Path:
    """The synthetic tiny model (2 layers of 256, real Llama 3 tokenizer, n_ctx 4096)."""
    out = workdir / "tiny.gguf"
    subprocess.run([binary("bitnet"), "fixture", "--preset", "tiny", "--type", "i2_s", "--seed", "1", "-o", out],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def small_model(workdir) -> Path:
    """The `small` synthetic model (4 layers of 512): a 3,000-token prompt takes about
    0.45 s to read here on two threads, 0.9 s on one."""
    out = workdir / "small.gguf"
    subprocess.run([binary("bitnet"), "fixture", "--preset", "small", "--seed", "1", "-o", out],
                   check=True, capture_output=True)
    return out


@pytest.fixture
def start_server(workdir, request):
    """start_server(env={...}, args=[...], wrapper=[...]) -> Proc: `bitnet serve` on a free
    loopback port (run through `wrapper`, e.g. prlimit, when given); without API_KEY in env,
    with BITNET_ALLOW_NO_AUTH=1."""
    procs = []

    def start(env=None, args=(), wait=True, wrapper=()):
        port = free_port()
        env = no_auth_unless_keyed(dict(env or {}))
        env.setdefault("BITNET_CACHE_DIR", str(workdir / f"cache-{port}"))
        log = workdir / f"{request.node.name}-{port}.log"
        argv = [*wrapper, serve_binary(), "serve", "--host", "127.0.0.1", "--port", str(port), *args]
        p = Proc(argv, env, f"http://127.0.0.1:{port}", log)
        procs.append(p)
        if wait:
            p.wait_http()
        return p

    yield start
    for p in procs:
        p.stop()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            sys.stderr.write(f"--- log of {p.url}\n{p.log()}\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="module")
def model_server(tiny_model, tmp_path_factory):
    """One ready server on the tiny model for the read-only tests of a module."""
    d = tmp_path_factory.mktemp("srv")
    port = free_port()
    env = no_auth_unless_keyed({"BITNET_MODEL": str(tiny_model), "BITNET_CACHE_DIR": str(d / "cache"),
                                "BITNET_MAX_BODY_BYTES": "65536"})
    argv = [serve_binary(), "serve", "--port", str(port)]
    p = Proc(argv, env, f"http://127.0.0.1:{port}", d / "server.log")
    try:
        p.wait_http().wait_ready()
        yield p
    finally:
        p.stop()


class _SlowFile(http.server.SimpleHTTPRequestHandler):
    """Serves a directory 1 MiB at a time with a pause after each; no Range, so a client reads
    a file in one stream."""

    pause = 0.025

    def copyfile(self, source, outputfile):
        while chunk := source.read(1 << 20):
            outputfile.write(chunk)
            time.sleep(self.pause)

    def log_message(self, *args):
        pass


@pytest.fixture
def slow_model_url(tiny_model):
    """slow_model_url(mb_per_s) -> the tiny model's URL on a local HTTP server that sends it at
    about that rate (the tiny model is 74 MB)."""
    servers = []

    def start(mb_per_s):
        handler_class = type("Slow", (_SlowFile,), {"pause": 1.048576 / mb_per_s})
        handler = lambda *a, **k: handler_class(*a, directory=str(tiny_model.parent), **k)  # noqa: E731
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/{tiny_model.name}"

    yield start
    for server in servers:
        server.shutdown()
