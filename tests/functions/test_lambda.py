"""The Lambda `bootstrap` under cargo-lambda's local Runtime API (`cargo lambda watch
--only-lambda-apis`): the prebuilt release binary connects to it as it would to Lambda's, so
no second build is needed. Events from events/ go through `cargo lambda invoke --data-file`;
streaming goes through the function-URL emulation (`/lambda-url/<name>/...`)."""
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import MODEL_ID, ROOT, Proc, binary, free_port, no_auth_unless_keyed
from test_container import CONTAINER_BIN, PT_INTERP, program_header_types
from test_dockerfile_lambda import env_of, stages  # tests/iac (conftest puts it on the path)

EVENTS = ROOT / "events"


def cargo_lambda_ok():
    return shutil.which("cargo-lambda") is not None


pytestmark = pytest.mark.skipif(not cargo_lambda_ok(), reason="cargo-lambda not installed (pip install cargo-lambda)")


class LambdaEnv:
    def __init__(self, workdir, tiny_model, mode, extra_env=None, start_function=True, bootstrap=None):
        self.bootstrap = bootstrap or binary("bootstrap")
        self.port = free_port()
        self.workdir = workdir
        self.name = "_"  # cargo lambda's function name with --only-lambda-apis
        self.watch_log = open(workdir / f"watch-{self.port}.log", "wb")
        self.watch = subprocess.Popen(
            ["cargo", "lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1", "--invoke-port", str(self.port)],
            # cargo lambda watch stops its scheduler when its standard input closes (CI runs
            # with none): hand it a pipe that stays open until stop().
            cwd=ROOT, stdin=subprocess.PIPE, stdout=self.watch_log, stderr=subprocess.STDOUT)
        # Wait for the emulator's port with a bare TCP connect: an HTTP probe would be queued as
        # a function-URL invocation, time out, and leave the bootstrap answering a caller that
        # has gone (the emulator then answers its response post with 500).
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        env = {
            "AWS_LAMBDA_FUNCTION_VERSION": "1",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "4096",
            "AWS_LAMBDA_RUNTIME_API": f"http://127.0.0.1:{self.port}/.rt",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "BITNET_MODEL": str(tiny_model),
            "BITNET_CACHE_DIR": str(workdir / f"lambda-cache-{self.port}"),
            "BITNET_LAMBDA_MODE": mode,
            "AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH": "1",
        }
        env.update(extra_env or {})
        # The adapter refuses to start without API_KEY unless BITNET_ALLOW_NO_AUTH=1.
        self.fn_env = no_auth_unless_keyed(env)
        self.fn_url = f"http://127.0.0.1:{self.port}/lambda-url/{self.name}"
        self.fn = None
        if start_function:
            self.start_function()

    def start_function(self):
        self.fn = Proc([self.bootstrap], self.fn_env, self.fn_url, self.workdir / f"bootstrap-{self.port}.log")

    def invoke(self, event_file, timeout=120):
        r = subprocess.run(["cargo", "lambda", "invoke", self.name, "--invoke-address", "127.0.0.1", "--invoke-port", str(self.port),
                            "--data-file", str(EVENTS / event_file), "--output-format", "json"],
                           cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr + "\n" + self.fn.log()
        return json.loads(r.stdout)

    def wait_ready(self, event="alb-health.json", timeout=120):
        """Invoke a health event until the model is ready (it loads in the background)."""
        deadline = time.time() + timeout
        while True:
            status, health = body_of(self.invoke(event))
            assert status == 200, health
            state = health["model"]["state"]
            assert state != "failed", health
            if state == "ready":
                return
            if time.time() > deadline:
                raise TimeoutError(f"model not ready in {timeout}s: {health}\n{self.fn.log()}")
            time.sleep(0.2)

    def stop(self):
        if self.fn is not None:
            self.fn.stop()
        if self.watch.poll() is None:
            self.watch.terminate()
            try:
                self.watch.wait(10)
            except subprocess.TimeoutExpired:
                self.watch.kill()
        self.watch_log.close()


@pytest.fixture(scope="module")
def lambda_stream(tiny_model, tmp_path_factory):
    env = LambdaEnv(tmp_path_factory.mktemp("lambda-stream"), tiny_model, "stream")
    yield env
    env.stop()


@pytest.fixture(scope="module")
def lambda_buffered(tiny_model, tmp_path_factory):
    env = LambdaEnv(tmp_path_factory.mktemp("lambda-buffered"), tiny_model, "buffered")
    try:
        env.wait_ready()
    except BaseException:
        env.stop()
        raise
    yield env
    env.stop()


def body_of(out):
    """A buffered invoke returns the HTTP integration response ({statusCode, headers, body});
    a streaming one returns the body itself."""
    if isinstance(out, dict) and "statusCode" in out:
        return out["statusCode"], json.loads(out["body"]) if out.get("body") else None
    return 200, out


def test_function_url_health_and_chat(lambda_stream):
    # The first request waits for the model (BITNET_WAIT_FOR_MODEL_SECS defaults to 900 here).
    status, chat = body_of(lambda_stream.invoke("function-url-chat.json"))
    assert status == 200 and chat["object"] == "chat.completion", chat
    assert chat["model"] == MODEL_ID and chat["usage"]["completion_tokens"] <= 8
    status, health = body_of(lambda_stream.invoke("function-url-health.json"))
    assert status == 200 and health["status"] == "ok" and health["model"]["state"] == "ready", health


def test_function_url_streams(lambda_stream):
    url = lambda_stream.fn.url + "/v1/chat/completions"
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.time()
    r = requests.post(url, json=body, stream=True, timeout=60)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    first_at = None
    raw = b""
    for chunk in r.iter_content(chunk_size=None):
        if first_at is None:
            first_at = time.time() - t0
        raw += chunk
    text = raw.decode()
    assert text.endswith("data: [DONE]\n\n"), text
    events = [json.loads(e[6:]) for e in text.split("\n\n") if e and e != "data: [DONE]"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["usage"]["completion_tokens"] >= 1
    # The Lambda request id is the response id's suffix and in the logs.
    rid = events[0]["id"].removeprefix("chatcmpl-")
    assert any(l.get("span", {}).get("request_id") == rid for l in lambda_stream.fn.log_lines())
    # Same text as the non-streaming answer.
    r2 = requests.post(url, json=dict(body, stream=False), timeout=60).json()
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert streamed == r2["choices"][0]["message"]["content"]


def test_function_url_errors(lambda_stream):
    r = requests.post(lambda_stream.fn.url + "/v1/chat/completions", data="{nope", timeout=30,
                      headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = requests.get(lambda_stream.fn.url + "/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


@pytest.mark.parametrize("event,check", [
    ("apigw-v2-chat.json", lambda b: b["object"] == "chat.completion"),
    # The fixture waited for the model: every health answer says ready.
    ("apigw-v2-health.json", lambda b: b["status"] == "ok" and b["model"]["state"] == "ready"),
    ("alb-completions.json", lambda b: b["object"] == "text_completion"),
    ("alb-health.json", lambda b: b["status"] == "ok" and b["model"]["state"] == "ready"),
    ("apigw-rest-models.json", lambda b: b["data"][0]["id"] == MODEL_ID),
])
def test_buffered_events(lambda_buffered, event, check):
    out = lambda_buffered.invoke(event)
    assert "statusCode" in out, out
    status, body = body_of(out)
    assert status == 200, out
    assert check(body), body


def test_buffered_sse_is_returned_whole(lambda_buffered):
    out = lambda_buffered.invoke("function-url-chat-stream.json")
    assert out["statusCode"] == 200
    assert out["headers"]["content-type"].startswith("text/event-stream")
    assert out["body"].endswith("data: [DONE]\n\n")


def test_function_url_caller_gone_keeps_the_instance(tiny_model, tmp_path):
    """Callers that leave (a request queued before the function polled, a stream closed after
    its first chunk) must not take the warm instance down: the same process, with the model
    loaded once, answers the next request."""
    env = LambdaEnv(tmp_path, tiny_model, "stream", start_function=False)
    try:
        url = env.fn_url + "/v1/chat/completions"
        body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400, "stream": True}
        # Queued while no function polls; the callers give up before the answer. (Several: the
        # emulator then cuts the runtime's connection, which used to end the process.)
        for _ in range(4):
            with pytest.raises(requests.Timeout):
                requests.post(url, json=body, timeout=0.3)
        env.start_function()
        # A stream abandoned after its first chunk. The emulator hands over the abandoned
        # invocations back to back (the real service waits for each response): until the
        # engine has cancelled them at its next step the slot and queue place may be taken,
        # and a 429 with Retry-After says so.
        deadline = time.time() + 15
        while True:
            r = requests.post(url, json=body, stream=True, timeout=60)
            if r.status_code != 429 or time.time() > deadline:
                break
            assert "retry-after" in r.headers
            r.close()
            time.sleep(0.2)
        assert r.status_code == 200, r.text + env.fn.log()
        next(r.iter_content(chunk_size=None))
        r.close()
        time.sleep(1.0)
        for _ in range(3):
            r = requests.post(url, json=dict(body, max_tokens=4, stream=False), timeout=60)
            assert r.status_code == 200, r.text + env.fn.log()
            assert r.json()["usage"]["completion_tokens"] >= 1
        assert env.fn.p.poll() is None, env.fn.log()
        loads = [l for l in env.fn.log_lines() if l.get("message") == "model ready" and "load_ms" in l]
        assert len(loads) == 1, env.fn.log()
    finally:
        env.stop()


def test_refuses_to_start_without_a_key_or_the_opt_in(tiny_model, workdir):
    """Behind API Gateway or a function URL the API would be open: no key is no start, before
    the runtime loop (the Runtime API address here answers nothing)."""
    port = free_port()
    env = {"AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}", "AWS_LAMBDA_FUNCTION_NAME": "f",
           "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "4096", "AWS_LAMBDA_FUNCTION_VERSION": "1",
           "BITNET_MODEL": str(tiny_model)}
    p = Proc([binary("bootstrap")], env, f"http://127.0.0.1:{port}", workdir / f"bootstrap-nokey-{port}.log")
    try:
        assert p.p.wait(20) != 0
        assert "without an API key" in p.log() and "BITNET_ALLOW_NO_AUTH" in p.log(), p.log()
    finally:
        p.stop()


@pytest.mark.parametrize("init_wait, ready_at_first_call", [("8", True), ("0.5", False)])
def test_init_waits_for_the_model_up_to_its_budget(tiny_model, tmp_path, slow_model_url, init_wait, ready_at_first_call):
    """A sandbox is frozen between invocations: INIT finishes the download when it can (here
    about 3.5 s at 20 MB/s, < 8 s), so the first invocation, even a health check, finds the
    model ready; with a budget shorter than the download, INIT ends on time and the first call
    sees it loading."""
    env = LambdaEnv(tmp_path, tiny_model, "buffered",
                    extra_env={"BITNET_MODEL": slow_model_url(20), "BITNET_INIT_WAIT_SECS": init_wait})
    try:
        t0 = time.time()
        status, health = body_of(env.invoke("alb-health.json"))
        assert status == 200, health
        assert (health["model"]["state"] == "ready") == ready_at_first_call, health
        lines = env.fn.log_lines()
        if ready_at_first_call:
            assert any(l.get("message") == "model ready within INIT" for l in lines), env.fn.log()
        else:
            assert time.time() - t0 < 3.0, "INIT kept to its budget"
            assert any(l.get("message", "").startswith("model not ready within INIT") for l in lines), env.fn.log()
            env.wait_ready()
    finally:
        env.stop()


def test_init_ends_when_the_model_fails(tiny_model, tmp_path, slow_model_url):
    """A model that fails (here its sha256 does not match) ends INIT at once instead of the
    whole 8 s budget: nothing retries before an invocation asks again."""
    env = LambdaEnv(tmp_path, tiny_model, "buffered",
                    extra_env={"BITNET_MODEL": slow_model_url(200), "BITNET_MODEL_SHA256": "0" * 64,
                               "BITNET_INIT_WAIT_SECS": "8"})
    try:
        t0 = time.time()
        status, health = body_of(env.invoke("alb-health.json"))
        assert status == 200 and health["model"]["state"] == "failed", health
        assert "sha256" in health["model"]["error"], health
        assert time.time() - t0 < 5.0, "INIT waited out its budget after the failure"
        lines = env.fn.log_lines()
        assert any(l.get("message", "").startswith("model failed within INIT") for l in lines), env.fn.log()
    finally:
        env.stop()


# The container image (infra/Dockerfile.lambda): its static `bootstrap`, built by
# infra/build-static.sh beside the container's `bitnet`, run with the image's environment.

def dockerfile_env(stage_of_model):
    """ENV of infra/Dockerfile.lambda's final image, with the model stage it was built from."""
    st = stages()
    return {**env_of(st[stage_of_model]), **env_of(st["final"])}


def test_image_bootstrap_serves_the_model_baked_in_without_copying_it(tiny_model, tmp_path):
    if not CONTAINER_BIN:
        pytest.skip("BITNET_CONTAINER_BIN not set (bash infra/build-static.sh builds it)")
    bootstrap = Path(CONTAINER_BIN).parent / "bootstrap"
    assert bootstrap.exists(), "infra/build-static.sh builds bootstrap beside bitnet"
    assert PT_INTERP not in program_header_types(bootstrap), "the image's bootstrap must be static"
    image_env = dockerfile_env("model-image")
    # The image keeps the model at /opt/bitnet/model.gguf; here it is the tiny model's path.
    assert image_env["BITNET_MODEL"] == "/opt/bitnet/model.gguf", image_env
    cache = tmp_path / "tmp-cache"
    env = dict(image_env, BITNET_MODEL=str(tiny_model), BITNET_CACHE_DIR=str(cache),
               SSL_CERT_FILE=image_env["SSL_CERT_FILE"] if os.path.exists(image_env["SSL_CERT_FILE"]) else "")
    assert dockerfile_env("model-s3").get("BITNET_MODEL") is None, "the S3 image must take BITNET_MODEL from the function"
    lam = LambdaEnv(tmp_path, tiny_model, "stream", extra_env=env, bootstrap=bootstrap)
    try:
        status, chat = body_of(lam.invoke("function-url-chat.json"))
        assert status == 200 and chat["object"] == "chat.completion", chat
        status, health = body_of(lam.invoke("function-url-health.json"))
        assert health["model"]["state"] == "ready" and health["model"]["source"] == str(tiny_model), health
        # Mapped where the image holds it: nothing copied into /tmp.
        assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())
    finally:
        lam.stop()
