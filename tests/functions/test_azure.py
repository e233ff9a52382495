"""The Azure Functions custom handler (`handler`) started as the Functions host starts it:
FUNCTIONS_CUSTOMHANDLER_PORT, probe `/`, then proxied requests and invocation payloads."""
import json
import time

import pytest
import requests

from conftest import MODEL_ID, Proc, ROOT, binary, free_port, no_auth_unless_keyed


@pytest.fixture(scope="module")
def handler(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("azure")
    port = free_port()
    # No API_KEY (the host checks function keys): the handler needs the explicit opt-in.
    env = no_auth_unless_keyed({"FUNCTIONS_CUSTOMHANDLER_PORT": str(port), "BITNET_MODEL": str(tiny_model),
                                "BITNET_CACHE_DIR": str(d / "cache")})
    p = Proc([binary("handler")], env, f"http://127.0.0.1:{port}", d / "handler.log")
    try:
        # The host probes `/` until any answer arrives.
        t0 = time.time()
        p.wait_http("/", timeout=30)
        assert time.time() - t0 < 10
        assert requests.get(p.url + "/").status_code == 200
        p.wait_ready()
        yield p
    finally:
        p.stop()


def test_listens_on_loopback_only(handler):
    port = handler.url.rsplit(":", 1)[1]
    assert any(l.get("message", "").startswith("bitnet azure custom handler listening") and f"127.0.0.1:{port}" in l.get("addr", "")
               for l in handler.log_lines()), handler.log()


def test_proxied_requests(handler):
    inv = {"X-Azure-Functions-InvocationId": "3f1c4b9e-0000-4000-8000-000000000001"}
    h = requests.get(handler.url + "/health", headers=inv)
    assert h.status_code == 200 and h.json()["model"]["state"] == "ready"
    assert h.headers["x-request-id"] == inv["X-Azure-Functions-InvocationId"]
    r = requests.post(handler.url + "/v1/chat/completions", headers=inv,
                      json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"
    s = requests.post(handler.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4, "stream": True}, stream=True)
    body = s.content.decode()
    assert body.endswith("data: [DONE]\n\n") and body.startswith("data: {")
    bad = requests.post(handler.url + "/v1/chat/completions", data="{oops", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"


def test_invocation_payload(handler):
    chat = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    payload = {
        "Data": {"req": {
            "Url": "https://bitnet-func.azurewebsites.net/v1/chat/completions",
            "Method": "POST",
            "Query": {},
            "Headers": {"Content-Type": ["application/json"], "User-Agent": ["OpenAI/Python 1.54.0"]},
            "Params": {"path": "v1/chat/completions"},
            "Body": json.dumps(chat),
        }},
        "Metadata": {"sys": {"MethodName": "api", "UtcNow": "2026-11-26T16:00:00Z", "RandGuid": "0b0c0d0e-0000-4000-8000-00000000000f"}},
    }
    r = requests.post(handler.url + "/api", json=payload,
                      headers={"X-Azure-Functions-InvocationId": "0b0c0d0e-0000-4000-8000-00000000000f"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"Outputs", "Logs", "ReturnValue"}
    res = out["Outputs"]["res"]
    assert res["statusCode"] == 200 and res["headers"]["content-type"] == "application/json"
    body = json.loads(res["body"])
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] >= 1
    # Health through the payload, path taken from the Url when there is no route parameter.
    payload2 = {"Data": {"req": {"Url": "http://localhost:7071/health", "Method": "GET", "Query": {}, "Headers": {}, "Params": {}, "Body": None}}, "Metadata": {}}
    res = requests.post(handler.url + "/api", json=payload2).json()["Outputs"]["res"]
    assert res["statusCode"] == 200 and json.loads(res["body"])["status"] == "ok"
    # A client error keeps its status inside the envelope.
    payload3 = {"Data": {"req": {"Url": "http://localhost:7071/v1/completions", "Method": "POST", "Headers": {"Content-Type": ["application/json"]}, "Params": {}, "Body": "{\"prompt\": 5}"}}, "Metadata": {}}
    res = requests.post(handler.url + "/api", json=payload3).json()["Outputs"]["res"]
    assert res["statusCode"] == 400 and json.loads(res["body"])["error"]["param"] == "prompt"


def test_app_folder_is_valid():
    host = json.loads((ROOT / "functions/azure/app/host.json").read_text())
    assert host["customHandler"]["description"]["defaultExecutablePath"] == "handler"
    assert host["customHandler"]["enableProxyingHttpRequest"] is True
    assert host["extensions"]["http"]["routePrefix"] == ""
    fn = json.loads((ROOT / "functions/azure/app/api/function.json").read_text())
    trig = [b for b in fn["bindings"] if b["type"] == "httpTrigger"][0]
    assert trig["route"] == "{*path}" and trig["authLevel"] == "function" and "post" in trig["methods"]
    assert any(b["type"] == "http" and b["direction"] == "out" for b in fn["bindings"])


def test_refuses_to_start_without_a_key_or_the_opt_in(tiny_model, workdir):
    """The host exposes the handler although it listens on loopback: no key is no start."""
    port = free_port()
    p = Proc([binary("handler")], {"FUNCTIONS_CUSTOMHANDLER_PORT": str(port), "BITNET_MODEL": str(tiny_model)},
             f"http://127.0.0.1:{port}", workdir / f"handler-nokey-{port}.log")
    try:
        assert p.p.wait(20) != 0
        assert "without an API key" in p.log() and "BITNET_ALLOW_NO_AUTH" in p.log(), p.log()
    finally:
        p.stop()
