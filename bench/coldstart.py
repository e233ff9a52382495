#!/usr/bin/env python3
"""Cold start as a new deployment lives it: the model behind a local server, an empty cache, the
front door started and a streamed chat request sent at once. Each run reports, in seconds from
the process start:

  download   the model store's "download complete" (last byte written)
  file       the model file verified and published ("model file ready")
  engine     the engine loaded ("model ready")
  headers    the streamed response's headers
  first      the first content token
  after_dl   first - download: the part that is ours (target: <= 0.5 s)
  warm       a second identical request's first token, on the now warm instance
  restart    the first token of a new process on the cache the first one left (no download)

Front doors: `serve` (bitnet serve), `azure` (the Functions custom handler, called as the host
forwards it), `lambda` (the bootstrap under `cargo lambda watch`, through the function-URL
emulation). Sources: `http` (nginx from Debian's packages, Range support; optionally throttled
per connection with --rate), `s3` (moto) and `azure` (Azurite) as started by .ci/services.sh,
and `file`: the model already on local disk, as in a container image that carries it
(infra/Dockerfile.lambda with MODEL_SOURCE=image); no sha256 is configured there (the image
digest pins it), and --evict drops the file from the page cache before each run (a first read
from disk instead of memory).

    bash bench/coldstart.sh [--doors serve,azure,lambda] [--sources http,s3,azure] [--runs 3]
"""
import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


class Nginx:
    """nginx serving one directory on a loopback port (Range requests built in)."""

    def __init__(self, directory, rate=None):
        self.dir = Path(tempfile.mkdtemp(prefix="coldstart-nginx-"))
        self.port = free_port()
        limit = f"limit_rate {rate};" if rate else ""
        # Started as root, nginx's workers would drop to nobody and could not read a model
        # under root's home.
        user = "user root;" if os.geteuid() == 0 else ""
        (self.dir / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 2;
error_log {self.dir}/error.log;
pid {self.dir}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {self.dir};
    proxy_temp_path {self.dir};
    fastcgi_temp_path {self.dir};
    uwsgi_temp_path {self.dir};
    scgi_temp_path {self.dir};
    server {{
        listen 127.0.0.1:{self.port};
        root {directory};
        location / {{ {limit} }}
    }}
}}
""")
        self.p = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(self.dir / "nginx.conf"),
                                   "-p", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def url(self, name):
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.p.terminate()
        self.p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def upload_s3(model, endpoint):
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket="coldstart")
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.upload_file(str(model), "coldstart", model.name)
    return f"s3://coldstart/{model.name}", {"AWS_ENDPOINT_URL": endpoint}


def upload_azure(model, endpoint):
    from azure.storage.blob import BlobServiceClient
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    conn = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={endpoint};"
    svc = BlobServiceClient.from_connection_string(conn)
    try:
        svc.create_container("coldstart")
    except Exception:  # noqa: BLE001 - already there
        pass
    with open(model, "rb") as f:
        svc.get_blob_client("coldstart", model.name).upload_blob(f, overwrite=True, max_concurrency=4)
    return f"az://devstoreaccount1/coldstart/{model.name}", {"AZURE_STORAGE_CONNECTION_STRING": conn}


class Door:
    """A front door process with its log (JSON lines on stderr), and the URL of its chat route."""

    def __init__(self, kind, bins, env, work):
        self.kind = kind
        self.work = work
        self.watch = None
        port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "API_KEY", "FUNCTIONS_", "AWS_LAMBDA"))}
        # The request sent at start-up waits for the model instead of a 503.
        full.update({"RUST_LOG": "info", "BITNET_LOG_FORMAT": "json", "BITNET_ALLOW_NO_AUTH": "1",
                     "BITNET_WAIT_FOR_MODEL_SECS": "600"})
        full.update(env)
        self.log_path = work / f"{kind}-{port}.log"
        if kind == "serve":
            argv = [bins / "bitnet", "serve", "--port", str(port)]
            self.url = f"http://127.0.0.1:{port}"
        elif kind == "azure":
            argv = [bins / "handler"]
            full["FUNCTIONS_CUSTOMHANDLER_PORT"] = str(port)
            # As bicep/main.bicep deploys it: Flex Consumption's disk is small, the model is
            # held in memory.
            full.setdefault("BITNET_MODEL_STORAGE", "memory")
            self.url = f"http://127.0.0.1:{port}"
        elif kind == "lambda":
            self.watch_log = open(work / f"watch-{port}.log", "wb")
            self.watch = subprocess.Popen(
                ["cargo", "lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1", "--invoke-port", str(port)],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=self.watch_log, stderr=subprocess.STDOUT)
            wait_port(port)
            full.update({
                "AWS_LAMBDA_FUNCTION_VERSION": "1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "10240",
                "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{port}/.rt", "AWS_LAMBDA_FUNCTION_NAME": "_",
                "BITNET_LAMBDA_MODE": "stream", "AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH": "1",
            })
            argv = [bins / "bootstrap"]
            self.url = f"http://127.0.0.1:{port}/lambda-url/_"
        else:
            raise ValueError(kind)
        self.log = open(self.log_path, "wb")
        self.t0_wall = time.time()
        self.t0 = time.monotonic()
        self.p = subprocess.Popen([str(a) for a in argv], env=full, stdout=self.log, stderr=subprocess.STDOUT)

    def since_start(self, message, field=None):
        """Seconds from the process start to the first log line with this message (and field)."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == message and (field is None or field in rec):
                ts = dt.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
                return ts - self.t0_wall
        return None

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.log.close()
        if self.watch is not None:
            self.watch.terminate()
            self.watch.wait(10)
            self.watch_log.close()


BODY = {"messages": [{"role": "user", "content": "Hello, who are you?"}], "max_tokens": 8, "stream": True,
        "temperature": 0}


def streamed_request(url, t0, timeout=600):
    """Sends the request as soon as the port answers; (headers, first token) in seconds from t0."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = requests.post(url + "/v1/chat/completions", json=BODY, stream=True, timeout=timeout)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    headers = time.monotonic() - t0
    if r.status_code != 200:
        raise RuntimeError(f"{r.status_code}: {r.text[:500]}")
    first = None
    for line in r.iter_lines():
        if first is None and line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            if delta.get("content"):
                first = time.monotonic() - t0
    return headers, first


def evict(path):
    """Drops a file's clean pages from the page cache (no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def one_run(kind, bins, uri, env, sha, work, extra, evict_path=None):
    cache = Path(tempfile.mkdtemp(prefix="coldstart-cache-", dir=work))
    door_env = {"BITNET_MODEL": uri, "BITNET_CACHE_DIR": str(cache), "BITNET_THREADS": "2", **env, **extra}
    if sha:
        door_env["BITNET_MODEL_SHA256"] = sha
    if evict_path is not None:
        evict(evict_path)
    door = Door(kind, bins, door_env, work)
    try:
        headers, first = streamed_request(door.url, door.t0)
        t = time.monotonic()
        _, warm_first = streamed_request(door.url, t)
        row = {
            "download": door.since_start("download complete"),
            "file": door.since_start("model file ready; loading engine"),
            "engine": door.since_start("model ready", "load_ms"),
            "headers": headers,
            "first": first,
            "warm": warm_first,
        }
        row["after_dl"] = row["first"] - row["download"] if row["download"] is not None else None
    finally:
        door.stop()
    # A restart on the cache it left (a persistent volume): no download; without a configured
    # sha256 the cached file is not hashed again.
    row["restart"] = None
    if kind != "azure":
        again = Door(kind, bins, {k: v for k, v in door_env.items() if k != "BITNET_MODEL_SHA256"}, work)
        try:
            row["restart"] = streamed_request(again.url, again.t0)[1]
        finally:
            again.stop()
    shutil.rmtree(cache, ignore_errors=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--bins", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--doors", default="serve")
    ap.add_argument("--sources", default="http")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", help="nginx limit_rate per connection (e.g. 100m)")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--evict", action="store_true", help="source file: drop the model from the page cache before each run")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="extra environment for the front door (repeatable), e.g. BITNET_CACHE_FSYNC=0")
    a = ap.parse_args()
    model = a.model.resolve()
    sha = sha256_of(model)
    work = Path(tempfile.mkdtemp(prefix="coldstart-"))
    sources = {}
    nginx = None
    try:
        for s in a.sources.split(","):
            if s == "http":
                nginx = Nginx(model.parent, a.rate)
                sources[s] = (nginx.url(model.name), {})
            elif s == "s3":
                sources[s] = upload_s3(model, os.environ["BITNET_TEST_S3_ENDPOINT"])
            elif s == "azure":
                sources[s] = upload_azure(model, os.environ["BITNET_TEST_AZURITE_ENDPOINT"])
            elif s == "file":
                sources[s] = (str(model), {})
            else:
                raise SystemExit(f"unknown source {s}")
        results = []
        cols = ["download", "file", "engine", "headers", "first", "after_dl", "warm", "restart"]
        print(f"model {model.name} ({model.stat().st_size / 1e9:.2f} GB); seconds from process start, "
              f"median of {a.runs} runs (min-max)")
        print(f"{'door':8} {'source':7} " + " ".join(f"{c:>16}" for c in cols))
        for kind in a.doors.split(","):
            for s, (uri, env) in sources.items():
                extra = dict(kv.split("=", 1) for kv in a.env)
                local = s == "file"
                runs = [one_run(kind, a.bins, uri, env, None if local else sha, work, extra,
                                evict_path=model if local and a.evict else None) for _ in range(a.runs)]
                results.append({"door": kind, "source": s, "runs": runs})
                cells = []
                for c in cols:
                    vals = [r[c] for r in runs if r[c] is not None]
                    cells.append(f"{statistics.median(vals):6.3f} ({min(vals):.2f}-{max(vals):.2f})" if vals else f"{'-':>16}")
                print(f"{kind:8} {s:7} " + " ".join(f"{c:>16}" for c in cells), flush=True)
        if a.json:
            a.json.write_text(json.dumps(results, indent=1))
    finally:
        if nginx:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
