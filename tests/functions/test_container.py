"""The container image's binary (infra/Dockerfile): the static musl build made by
infra/build-static.sh, run as the image runs it (its environment, `bitnet serve` on 0.0.0.0
with an API key). No Docker engine runs here, so the binary is tested directly.
tests/run.sh builds it and sets BITNET_CONTAINER_BIN."""
import json
import os
import struct
from pathlib import Path

import pytest
import requests

from conftest import MODEL_ID, Proc, free_port

CONTAINER_BIN = os.environ.get("BITNET_CONTAINER_BIN")
pytestmark = pytest.mark.skipif(not CONTAINER_BIN, reason="BITNET_CONTAINER_BIN not set (bash infra/build-static.sh builds it)")

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# The image is the binary plus the CA bundle (and empty folders); the goal is 15 MB.
IMAGE_GOAL_BYTES = 15_000_000
PT_INTERP = 3


def program_header_types(path):
    with open(path, "rb") as f:
        head = f.read(64)
        assert head[:4] == b"\x7fELF" and head[4] == 2, "not a 64-bit ELF file"
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        types = []
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            types.append(struct.unpack("<I", f.read(4))[0])
        return types


def test_static_and_within_the_image_size_goal():
    path = Path(CONTAINER_BIN)
    assert PT_INTERP not in program_header_types(path), "needs a dynamic loader: not static"
    size = path.stat().st_size + (CA_BUNDLE.stat().st_size if CA_BUNDLE.exists() else 0)
    print(f"container binary {path.stat().st_size} bytes; with the CA bundle {size}")
    assert size <= IMAGE_GOAL_BYTES, f"binary + CA bundle = {size} bytes"


@pytest.fixture(scope="module")
def image_server(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("container")
    port = free_port()
    # infra/Dockerfile's ENV, with the model mounted as the `volume` compose profile does.
    env = {
        "SSL_CERT_FILE": str(CA_BUNDLE),
        "BITNET_HOST": "0.0.0.0",
        "PORT": str(port),
        "BITNET_CACHE_DIR": str(d / "cache"),
        "BITNET_LOG_FORMAT": "json",
        "API_KEY": "container-key",
        "BITNET_MODEL": str(tiny_model),
    }
    p = Proc([CONTAINER_BIN, "serve"], env, f"http://127.0.0.1:{port}", d / "serve.log")
    try:
        p.wait_http().wait_ready(headers={"authorization": "Bearer container-key"})
        yield p
    finally:
        p.stop()


def test_serves_chat_with_auth_like_the_image(image_server):
    url = image_server.url + "/v1/chat/completions"
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}
    assert requests.post(url, json=body, timeout=30).status_code == 401
    auth = {"authorization": "Bearer container-key"}
    r = requests.post(url, json=body, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    whole = r.json()["choices"][0]["message"]["content"]
    r = requests.post(url, json=dict(body, stream=True), headers=auth, stream=True, timeout=60)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True)
              if line.startswith("data: ") and line != "data: [DONE]"]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert streamed == whole and whole
    # JSON logs, as the image sets BITNET_LOG_FORMAT=json.
    assert any(l.get("message") == "request done" for l in image_server.log_lines())
