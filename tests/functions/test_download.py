"""Health and readiness before, during and after a slow model download: the tiny model in a local
S3 (moto), served through a throttling proxy so that the download takes a few seconds."""
import hashlib
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import free_port

RATE = 12 * 1024 * 1024  # bytes/s through the proxy: the 74 MB tiny model takes ~6 s


class ThrottlingProxy:
    """A TCP proxy whose server→client bytes share one rate limit."""

    def __init__(self, upstream_port: int, rate: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _throttle(self, n):
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
            delay = self.next_free - now
        if delay > 0:
            time.sleep(delay)

    def _pipe(self, src, dst, throttle):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if throttle:
                    self._throttle(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def close(self):
        self.closed = True
        self.sock.close()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """BITNET_TEST_S3_ENDPOINT (from .ci/services.sh), else a moto server started here."""
    pytest.importorskip("boto3")
    if os.environ.get("BITNET_TEST_S3_ENDPOINT"):
        yield os.environ["BITNET_TEST_S3_ENDPOINT"]
        return
    moto = shutil.which("moto_server")
    if not moto:
        pytest.skip("no moto_server and no BITNET_TEST_S3_ENDPOINT")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    p = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests.get(url, timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.1)
    try:
        yield url
    finally:
        p.terminate()
        p.wait(10)


def test_health_before_during_after_download(s3_endpoint, tiny_model, start_server):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    bucket = f"bitnet-functions-{int(time.time() * 1000)}"
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(tiny_model), bucket, "models/tiny.gguf")
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    port = int(s3_endpoint.rsplit(":", 1)[1].split("/")[0])
    proxy = ThrottlingProxy(port, RATE)
    try:
        env = {
            "BITNET_MODEL": f"s3://{bucket}/models/tiny.gguf",
            "BITNET_MODEL_SHA256": sha,
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "BITNET_DOWNLOAD_PART_SIZE": "8MiB",
        }
        t0 = time.time()
        srv = start_server(env=env)
        assert time.time() - t0 < 5, "the server must answer before the model is there"
        seen = set()
        progress = []
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        checked_503 = False
        deadline = time.time() + 120
        while time.time() < deadline:
            h = requests.get(srv.url + "/health", timeout=5)
            assert h.status_code == 200
            m = h.json()["model"]
            seen.add(m["state"])
            if m["state"] == "downloading":
                progress.append(m["bytes_done"])
                assert m["bytes_total"] == tiny_model.stat().st_size
                if not checked_503:
                    r = requests.get(srv.url + "/ready", timeout=5)
                    assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= 60
                    g = requests.post(srv.url + "/v1/chat/completions", json=chat, timeout=5)
                    assert g.status_code == 503, g.text
                    assert g.json()["error"]["code"] == "model_not_ready" and "retry-after" in g.headers
                    checked_503 = True
            if m["state"] == "ready":
                break
            assert m["state"] != "failed", m
            time.sleep(0.1)
        assert "downloading" in seen and "ready" in seen, seen
        assert checked_503
        assert progress == sorted(progress) and progress[-1] > 0
        assert requests.get(srv.url + "/ready").status_code == 200
        r = requests.post(srv.url + "/v1/chat/completions", json=chat, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        proxy.close()


def test_wait_for_model(s3_endpoint, tiny_model, start_server):
    """With BITNET_WAIT_FOR_MODEL_SECS (what the Lambda adapter sets), the first request waits."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="test", aws_secret_access_key="test")
    bucket = f"bitnet-wait-{int(time.time() * 1000)}"
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(tiny_model), bucket, "tiny.gguf")
    port = int(s3_endpoint.rsplit(":", 1)[1].split("/")[0])
    proxy = ThrottlingProxy(port, RATE * 2)
    try:
        srv = start_server(env={
            "BITNET_MODEL": f"s3://{bucket}/tiny.gguf",
            "BITNET_MODEL_SHA256": hashlib.sha256(tiny_model.read_bytes()).hexdigest(),
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "BITNET_WAIT_FOR_MODEL_SECS": "120",
        })
        assert requests.get(srv.url + "/health").json()["model"]["state"] != "ready"
        r = requests.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, timeout=130)
        assert r.status_code == 200, r.text
    finally:
        proxy.close()
