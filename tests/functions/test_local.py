"""The local server (`bitnet serve`) against the tiny model: OpenAI shapes, the `openai` client
unchanged, SSE, health/ready, every client error, auth, queueing and disconnects."""
import json
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import MODEL_ID, binary, free_port, serve_binary, Proc

CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8, "temperature": 0}


def post(srv, path, body, **kw):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(srv.url + path, data=data, headers={"content-type": "application/json", **kw.pop("headers", {})}, timeout=60, **kw)


def assert_error(r, status, param=None, code=None):
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) >= {"message", "type", "param", "code"}, e
    assert e["message"]
    if param is not None:
        assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e
    return e


def sse_events(text):
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [json.loads(e[6:]) for e in events[:-1]]


# ---- shapes -----------------------------------------------------------------------------------

def test_chat_completion(model_server):
    r = post(model_server, "/v1/chat/completions", CHAT)
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["object"] == "chat.completion" and v["model"] == MODEL_ID and v["id"].startswith("chatcmpl-")
    c = v["choices"][0]
    assert c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str)
    assert c["finish_reason"] in ("length", "stop")
    u = v["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["completion_tokens"] <= 8
    t = v["timings"]
    for k in ("prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms", "predicted_per_second"):
        assert k in t, t
    assert t["predicted_n"] == u["completion_tokens"] and t["prompt_n"] == u["prompt_tokens"]
    assert r.headers["x-request-id"]


def test_greedy_is_deterministic_and_stream_matches(model_server):
    a = post(model_server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}).json()
    b = post(model_server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["object"] == "text_completion"
    r = post(model_server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "stream": True}, stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_events(r.content.decode())
    assert "".join(c["choices"][0]["text"] for c in chunks) == a["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == a["choices"][0]["finish_reason"]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)


def test_chat_stream_chunks(model_server):
    body = dict(CHAT, stream=True, stream_options={"include_usage": True})
    r = post(model_server, "/v1/chat/completions", body, stream=True)
    chunks = sse_events(r.content.decode())
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" in c for c in chunks)
    fin = chunks[-2]
    assert fin["choices"][0]["finish_reason"] in ("length", "stop") and fin["choices"][0]["delta"] == {}
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] >= 1
    full = post(model_server, "/v1/chat/completions", CHAT).json()
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert streamed == full["choices"][0]["message"]["content"]


def test_stop_sequence(model_server):
    base = post(model_server, "/v1/completions", {"prompt": "The", "max_tokens": 16, "temperature": 0}).json()["choices"][0]["text"]
    stop = base[3:6] if len(base) > 6 else base[-1:]
    r = post(model_server, "/v1/completions", {"prompt": "The", "max_tokens": 16, "temperature": 0, "stop": [stop]}).json()
    assert r["choices"][0]["text"] == base[: base.index(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"
    s = post(model_server, "/v1/completions", {"prompt": "The", "max_tokens": 16, "temperature": 0, "stop": stop, "stream": True})
    assert "".join(c["choices"][0]["text"] for c in sse_events(s.content.decode())) == r["choices"][0]["text"]


def test_prompt_forms_and_seed(model_server):
    ids = post(model_server, "/v1/completions", {"prompt": [128000, 9906, 1917], "max_tokens": 4, "temperature": 0})
    assert ids.status_code == 200, ids.text
    assert ids.json()["usage"]["prompt_tokens"] == 3
    one = post(model_server, "/v1/completions", {"prompt": ["Hi"], "max_tokens": 4, "temperature": 0})
    assert one.status_code == 200
    s1 = post(model_server, "/v1/completions", {"prompt": "Hi", "max_tokens": 8, "temperature": 1.0, "seed": 42}).json()
    s2 = post(model_server, "/v1/completions", {"prompt": "Hi", "max_tokens": 8, "temperature": 1.0, "seed": 42}).json()
    assert s1["choices"][0]["text"] == s2["choices"][0]["text"]
    # Unknown fields are ignored; max_completion_tokens is honoured.
    r = post(model_server, "/v1/chat/completions", dict(CHAT, max_completion_tokens=2, frobnicate={"x": 1}, user="u1",
                                                        presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


def test_models_health_ready_root(model_server):
    m = requests.get(model_server.url + "/v1/models").json()
    assert m["object"] == "list" and m["data"][0]["id"] == MODEL_ID
    assert requests.get(model_server.url + f"/v1/models/{MODEL_ID}").json()["id"] == MODEL_ID
    h = requests.get(model_server.url + "/health").json()
    assert h["status"] == "ok" and h["model"]["state"] == "ready" and h["model"]["n_ctx"] == 4096
    assert requests.get(model_server.url + "/ready").status_code == 200
    assert requests.get(model_server.url + "/").status_code == 200


# ---- the openai client, unchanged -------------------------------------------------------------

def test_openai_client(model_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=model_server.url + "/v1", api_key="unused", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    r = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens <= 6
    stream = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        if chunk.usage:
            usage = chunk.usage
    assert "".join(parts) == r.choices[0].message.content
    assert usage is not None and usage.completion_tokens == r.usage.completion_tokens
    c = client.completions.create(model=MODEL_ID, prompt="Hello", max_tokens=4, temperature=0, stop=["\n\n"])
    assert c.choices[0].finish_reason in ("length", "stop")
    # A name the server does not have is the one model it has (as llama-server answers): SDK
    # defaults and tools that hard-code a name work, and the response names the real model.
    other = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=6, temperature=0)
    assert other.model == MODEL_ID and other.choices[0].message.content == r.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "x"}], n=9)
    assert e.value.param == "n"


# ---- client errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("body,status,param,code", [
    ("{not json", 400, None, "invalid_json"),
    ("", 400, None, "invalid_json"),
    ("[1,2,3]", 400, None, None),
    ({"messages": []}, 400, "messages", None),
    ({"messages": "hi"}, 400, "messages", None),
    ({}, 400, "messages", None),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content", None),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}, 400, "max_tokens", None),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400, "temperature", None),
    ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400, "stream", None),
    ({"messages": [{"role": "user", "content": "x"}], "stop": 5}, 400, "stop", None),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}, 400, "messages", "context_length_exceeded"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 9}, 400, "n", None),
    ({"messages": [{"role": "user", "content": "x"}], "echo": True}, 400, "echo", "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", None),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", "unsupported_parameter"),
])
def test_chat_client_errors(model_server, body, status, param, code):
    assert_error(post(model_server, "/v1/chat/completions", body), status, param, code)


def test_other_client_errors(model_server):
    assert_error(post(model_server, "/v1/completions", {"prompt": "word " * 4100}), 400, "prompt", "context_length_exceeded")
    assert_error(post(model_server, "/v1/completions", {"prompt": [999999]}), 400, "prompt")
    assert_error(post(model_server, "/v1/completions", {"prompt": ["a", "b"]}), 400, "prompt")
    assert_error(post(model_server, "/v1/completions", {"prompt": "x", "max_tokens": 0}), 400, "max_tokens")
    big = {"messages": [{"role": "user", "content": "x" * 70000}]}
    assert_error(post(model_server, "/v1/chat/completions", big), 413, None, "request_too_large")
    # Chunked upload without Content-Length is limited too.
    gen = (b"x" * 8192 for _ in range(10))
    r = requests.post(model_server.url + "/v1/chat/completions", data=gen, timeout=30,
                      headers={"content-type": "application/json"})
    assert_error(r, 413)
    assert_error(requests.get(model_server.url + "/v1/nope"), 404, None, "unknown_url")
    assert_error(requests.get(model_server.url + "/v1/chat/completions"), 405)
    assert_error(requests.get(model_server.url + "/v1/models/other"), 404, "model", "model_not_found")
    # Still alive and well.
    assert post(model_server, "/v1/chat/completions", CHAT).status_code == 200


# ---- llama-server's token endpoints ----------------------------------------------------------

def test_tokenize_detokenize_round_trip(model_server):
    text = "Hello, world! Ünïcödé 👋"
    r = post(model_server, "/tokenize", {"content": text})
    assert r.status_code == 200, r.text
    ids = r.json()["tokens"]
    assert all(isinstance(i, int) for i in ids) and len(ids) > 3
    # The same ids a completion prompt is made of: the prompt's token count matches (+ BOS).
    c = post(model_server, "/v1/completions", {"prompt": text, "max_tokens": 1, "temperature": 0}).json()
    assert c["usage"]["prompt_tokens"] == len(ids) + 1
    special = post(model_server, "/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    assert special[1:] == ids and special[0] not in ids
    assert post(model_server, "/detokenize", {"tokens": ids}).json() == {"content": text}
    assert post(model_server, "/detokenize", {"tokens": special}).json()["content"] == "<|begin_of_text|>" + text
    pieces = post(model_server, "/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert joined.decode() == text


@pytest.mark.parametrize("path,body,param", [
    ("/tokenize", {}, "content"),
    ("/tokenize", {"content": ["a"]}, "content"),
    ("/tokenize", {"content": "a", "parse_special": True}, "parse_special"),
    ("/detokenize", {"tokens": [1, "2"]}, "tokens"),
    ("/detokenize", {"tokens": [10 ** 9]}, "tokens"),
])
def test_token_endpoint_errors(model_server, path, body, param):
    assert_error(post(model_server, path, body), 400, param)


# ---- lifecycle, auth, queue, disconnect --------------------------------------------------------

def test_missing_model_reports_failed(start_server, workdir):
    srv = start_server(env={"BITNET_MODEL": str(workdir / "does-not-exist.gguf")})
    deadline = time.time() + 20
    while time.time() < deadline:
        h = requests.get(srv.url + "/health")
        assert h.status_code == 200
        if h.json()["model"]["state"] == "failed":
            break
        time.sleep(0.1)
    assert h.json()["model"]["state"] == "failed", h.text
    error = h.json()["model"]["error"]
    # The model store's NotFound names the file: "<path>: not found (no such file)".
    assert "does-not-exist.gguf" in error and "not found" in error, error
    r = requests.get(srv.url + "/ready")
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    e = assert_error(post(srv, "/v1/chat/completions", CHAT), 503, None, "model_unavailable")
    # The 503 carries the load error itself, not a generic message.
    assert error in e["message"], (error, e["message"])
    assert requests.get(srv.url + "/v1/models").status_code == 200


def test_auth(start_server, tiny_model):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model), "API_KEY": "s3cret"})
    assert "BITNET_ALLOW_NO_AUTH" not in srv.env, "a keyed server must not also get the no-auth opt-in"
    for path in ("/", "/health", "/ready"):  # exempt from auth: any answer but 401
        assert requests.get(srv.url + path).status_code != 401, path
    srv.wait_ready()
    assert_error(post(srv, "/v1/chat/completions", CHAT), 401, None, "invalid_api_key")
    assert_error(requests.get(srv.url + "/v1/models", headers={"authorization": "Bearer nope"}), 401)
    ok = post(srv, "/v1/chat/completions", CHAT, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
    assert client.models.list().data[0].id == MODEL_ID
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_non_loopback_needs_a_key(tiny_model, workdir):
    """Deliberately started without API_KEY and without BITNET_ALLOW_NO_AUTH: the refusal is
    what is tested; then --no-auth (the flag form of the opt-in) and then a key."""
    port = free_port()
    p = Proc([serve_binary(), "serve", "--host", "0.0.0.0", "--port", str(port)],
             {"BITNET_MODEL": str(tiny_model)}, f"http://127.0.0.1:{port}", workdir / "nokey.log")
    assert p.p.wait(20) != 0
    assert "API key" in p.log() or "api-key" in p.log()
    p.stop()
    p = Proc([binary("bitnet"), "serve", "--host", "0.0.0.0", "--port", str(port), "--no-auth"],
             {"BITNET_MODEL": str(tiny_model)}, f"http://127.0.0.1:{port}", workdir / "noauth.log")
    try:
        p.wait_http()
    finally:
        p.stop()
    p = Proc([binary("bitnet"), "serve", "--host", "0.0.0.0", "--port", str(port)],
             {"BITNET_MODEL": str(tiny_model), "API_KEY": "k"}, f"http://127.0.0.1:{port}", workdir / "key.log")
    try:
        p.wait_http()
    finally:
        p.stop()


def test_disconnect_stops_generation_and_queue(start_server, tiny_model):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_PARALLEL": "1", "BITNET_MAX_QUEUE": "0"})
    srv.wait_ready()
    long_req = {"prompt": "Tell me a long story", "max_tokens": 3000, "temperature": 0.8, "stream": True, "stop": []}
    r = post(srv, "/v1/completions", long_req, stream=True)
    it = r.iter_lines()
    first = next(l for l in it if l)
    assert first.startswith(b"data: ")
    # While it runs, the one slot is taken and the queue (0 waiting) is full.
    busy = post(srv, "/v1/completions", {"prompt": "x", "max_tokens": 1})
    assert_error(busy, 429, None, "rate_limit_exceeded")
    assert "retry-after" in busy.headers
    t0 = time.time()
    r.close()
    # The engine is freed within a few tokens of the disconnect.
    deadline = time.time() + 20
    while time.time() < deadline:
        ok = post(srv, "/v1/completions", {"prompt": "x", "max_tokens": 1})
        if ok.status_code == 200:
            break
        time.sleep(0.05)
    assert ok.status_code == 200, ok.text
    assert time.time() - t0 < 10
    msgs = [l.get("message", "") for l in srv.log_lines()]
    assert any("client gone" in m for m in msgs), srv.log()
    # Non-streaming: a client that times out also stops its generation.
    with pytest.raises(requests.Timeout):
        requests.post(srv.url + "/v1/completions", json=dict(long_req, stream=False), timeout=0.5)
    deadline = time.time() + 20
    while time.time() < deadline:
        if sum("client gone" in l.get("message", "") for l in srv.log_lines()) >= 2:
            break
        time.sleep(0.1)
    assert sum("client gone" in l.get("message", "") for l in srv.log_lines()) >= 2, srv.log()


def test_request_id_in_logs(model_server):
    r = post(model_server, "/v1/chat/completions", CHAT, headers={"x-request-id": "test-rid-42"})
    assert r.headers["x-request-id"] == "test-rid-42"
    time.sleep(0.2)
    lines = [l for l in model_server.log_lines() if l.get("span", {}).get("request_id") == "test-rid-42"]
    assert any(l.get("message") == "request done" and l.get("status") == 200 for l in lines), model_server.log()
    assert any(l.get("message") == "generation done" for l in lines), model_server.log()


@pytest.mark.parametrize("head", ["q4_0", "q6_k", "q8_0"])
def test_head_converted_at_load_equals_prepared_file(start_server, tiny_model, workdir, head):
    """`BITNET_HEAD=q4_0|q6_k|q8_0` (conversion at load) and a file from `bitnet prepare --head` serve
    the same model: identical greedy text and usage. The prepared file is smaller (the tied
    embedding and head stored once, quantized) and keeps its tensors tied."""
    import subprocess
    prepared = workdir / f"tiny-{head}.gguf"
    args = ["prepare", tiny_model, "-o", prepared] + (["--head", head] if head != "q8_0" else [])
    r = subprocess.run([binary("bitnet"), *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not prepared.with_suffix(".gguf.partial").exists()
    info = json.loads(subprocess.run([binary("bitnet"), "inspect", "--json", prepared], capture_output=True,
                                     text=True, check=True).stdout)
    types = {t["name"]: t["type"] for t in info["tensors"]}
    assert types["token_embd.weight"] == head.upper() and "output.weight" not in types
    assert prepared.stat().st_size < Path(tiny_model).stat().st_size
    converted = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_HEAD": head}).wait_ready()
    from_file = start_server(env={"BITNET_MODEL": str(prepared)}).wait_ready()
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}
    a = requests.post(converted.url + "/v1/completions", json=body, timeout=60).json()
    b = requests.post(from_file.url + "/v1/completions", json=body, timeout=60).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"] and a["usage"] == b["usage"]
    # A file that is not a model is refused with a clear message, and nothing is left behind.
    bad = workdir / "not-a-model.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    r = subprocess.run([binary("bitnet"), "prepare", bad, "-o", workdir / "out.gguf"], capture_output=True, text=True)
    assert r.returncode != 0 and "not-a-model.gguf" in r.stderr
    assert not (workdir / "out.gguf").exists()


def test_prepared_tq1_0_file_serves_what_the_i2s_one_does(start_server, tiny_model, workdir):
    """`bitnet prepare --ternary tq1_0` repacks the ternary projections as TQ1_0 with the same values
    (the synthetic model's scales are f16 values, so nothing is rounded): a smaller file that
    serves the same greedy text and usage as the prepared I2_S file."""
    import subprocess
    files = {}
    for ternary in ("keep", "tq1_0"):
        out = workdir / f"tiny-{ternary}.gguf"
        r = subprocess.run([binary("bitnet"), "prepare", tiny_model, "-o", out, "--ternary", ternary],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        files[ternary] = out
    assert "ternary weights as TQ1_0" in r.stderr
    info = json.loads(subprocess.run([binary("bitnet"), "inspect", "--json", files["tq1_0"]], capture_output=True,
                                     text=True, check=True).stdout)
    types = {t["name"]: t["type"] for t in info["tensors"]}
    assert types["token_embd.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == "TQ1_0" and types["blk.0.attn_q.weight"] == "TQ1_0"
    assert files["tq1_0"].stat().st_size < files["keep"].stat().st_size
    body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}
    texts = []
    for f in files.values():
        server = start_server(env={"BITNET_MODEL": str(f)}).wait_ready()
        r = requests.post(server.url + "/v1/completions", json=body, timeout=60).json()
        texts.append((r["choices"][0]["text"], r["usage"]))
    assert texts[0] == texts[1]
    r = subprocess.run([binary("bitnet"), "prepare", tiny_model, "-o", workdir / "x.gguf", "--ternary", "q2_k"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "q2_k" in r.stderr and not (workdir / "x.gguf").exists()


def test_f16_kv_cache_halves_each_sequence_and_serves(start_server, tiny_model):
    """`BITNET_KV=f16` (the default): the server sizes each sequence's cache at half the bytes
    of `f32` (what the batching budget counts) and serves completions from either; an unknown
    value keeps the default."""
    per_seq = {}
    for kv in ("f32", "f16", "f8", None):
        env = {"BITNET_MODEL": str(tiny_model)} | ({"BITNET_KV": kv} if kv else {})
        s = start_server(env=env).wait_ready()
        body = {"model": MODEL_ID, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        r = requests.post(s.url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8, r.text
        ready = [l for l in s.log_lines() if l.get("message") == "model ready"]
        assert ready, s.log()
        per_seq[kv] = ready[-1]["kv_bytes_per_sequence"]
    assert per_seq["f16"] * 2 == per_seq["f32"], per_seq
    assert per_seq["f8"] == per_seq[None] == per_seq["f16"], per_seq
