"""The container image's binary (infra/Dockerfile): the static musl build made by
infra/build-static.sh, run as the image runs it (its environment, `bitnet serve` on 0.0.0.0
with an API key). No Docker engine runs here, so the binary is tested directly.
tests/run.sh builds it and sets BITNET_CONTAINER_BIN."""
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import MODEL_ID, Proc, free_port
import k8s_rules  # tests/iac (conftest puts it on the path)

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


# kubernetes/overlays/init-download as the kubelet would run it: the rendered init container's
# command, args and environment (ConfigMap included), then the server container's, with the
# image's `/bitnet` replaced by the container binary, the pod's volumes by folders, and the
# model URI by a local HTTP server. The server must find what `bitnet fetch` left in the cache
# (no second download), read its key from the mounted Secret, and answer the probes.

def _rendered(overlay):
    """The overlay as kubectl renders it, through tests/iac's reader (one place reads it)."""
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed (apt-get install kubectl; .ci/iac.sh installs it)")
    return k8s_rules.render(k8s_rules.K8S / "overlays" / overlay)


def _expand(words, env):
    """$(VAR) in a container's command or args, as the kubelet expands it."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), w) for w in words]


@pytest.mark.parametrize("pinned", [False, True], ids=["unpinned", "sha256-pinned"])
def test_kubernetes_init_download_then_serve(tiny_model, slow_model_url, tmp_path, pinned):
    """pinned: BITNET_MODEL_SHA256 added to the ConfigMap (base/server.env), as the component
    suggests; the init container must verify it (a wrong one fails there, with nothing cached)
    and the server then trusts the cache instead of downloading again."""
    docs = _rendered("init-download")
    if pinned:
        for cm in k8s_rules.of_kind(docs, "ConfigMap"):
            cm["data"]["BITNET_MODEL_SHA256"] = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    spec = k8s_rules.pod_spec(k8s_rules.of_kind(docs, "Deployment")[0])
    url = slow_model_url(2000)
    # The pod's volumes as folders; every path the manifests name is mapped under tmp_path.
    mounts = {}
    for c in spec["initContainers"] + spec["containers"]:
        for m in c.get("volumeMounts", []):
            mounts[m["mountPath"]] = tmp_path / m["name"]
            mounts[m["mountPath"]].mkdir(exist_ok=True)
    key = "k8s-secret-key"
    (mounts["/etc/bitnet/api-key"] / "API_KEY").write_text(key)

    def local(value):
        for path in sorted(mounts, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return str(mounts[path]) + value[len(path):]
        return value

    def run_env(c):
        env = {k: local(v) for k, v in k8s_rules.config_env(docs, c).items()}
        assert env["BITNET_MODEL"].startswith("hf://"), env
        env["BITNET_MODEL"] = url
        return dict(env, SSL_CERT_FILE=str(CA_BUNDLE), PATH=os.environ.get("PATH", ""))

    init = spec["initContainers"][0]
    assert init["command"][0] == "/bitnet"
    env = run_env(init)

    def run_init(env):
        return subprocess.run([CONTAINER_BIN, *init["command"][1:], *_expand(init["args"], env)], env=env,
                              capture_output=True, text=True, timeout=120)

    if pinned:
        bad = run_init(dict(env, BITNET_MODEL_SHA256="0" * 64))
        assert bad.returncode != 0 and "sha256" in bad.stderr.lower(), bad.stderr
        assert not any(p.suffix == ".gguf" for p in Path(env["BITNET_CACHE_DIR"]).iterdir())
    fetch = run_init(env)
    assert fetch.returncode == 0, fetch.stderr
    cached = list(Path(env["BITNET_CACHE_DIR"]).iterdir())
    assert any(p.suffix == ".gguf" for p in cached), cached

    server = spec["containers"][0]
    env = run_env(server)
    port = free_port()
    env["PORT"] = str(port)  # the pod's 8080, moved off a port the machine may use
    env["BITNET_HOST"] = "127.0.0.1"  # 0.0.0.0 in the pod; loopback here
    args = [local(a) for a in server["args"]]
    p = Proc([CONTAINER_BIN, "serve", *args], env, f"http://127.0.0.1:{port}", tmp_path / "serve.log")
    try:
        p.wait_http(spec["containers"][0]["startupProbe"]["httpGet"]["path"])
        p.wait_ready(headers={"authorization": f"Bearer {key}"})
        for probe in ("livenessProbe", "readinessProbe"):
            assert requests.get(p.url + server[probe]["httpGet"]["path"], timeout=5).status_code == 200
        assert requests.get(p.url + "/v1/models", timeout=5).status_code == 401
        assert requests.get(p.url + "/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=5).status_code == 200
        # The model came from the cache the init container filled: no download by the server.
        assert not any(l.get("message") == "download complete" for l in p.log_lines()), p.log()
    finally:
        p.stop()
