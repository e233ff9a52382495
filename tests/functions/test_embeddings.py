"""`POST /v1/embeddings` on the real server with a synthetic embedding model (`embed-tiny`:
the BitNet embedding architecture and the Qwen2 tokenizer): the `openai` SDK (base64 by
default) and plain HTTP (float), texts and token ids, the same vectors as `bitnet embed`,
and every refusal naming its field."""
import json
import math
import subprocess
import time

import pytest
import requests

from conftest import binary

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def embed_model(workdir):
    out = workdir / "embed-tiny.gguf"
    if not out.exists():
        subprocess.run([binary("bitnet"), "fixture", "--preset", "embed-tiny", "--seed", "3", "-o", out],
                       check=True, capture_output=True)
    return out


@pytest.fixture
def embed_server(start_server, embed_model):
    srv = start_server(env={"BITNET_MODEL": str(embed_model), "BITNET_MODEL_ID": "bitnet-embedding-0.6b"})
    srv.wait_ready()
    return srv


def post(srv, path, body):
    return requests.post(srv.url + path, json=body, timeout=120)


def cli_embedding(model, text):
    out = subprocess.run([binary("bitnet"), "embed", "--model", model, "--text", text], check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout)


def test_sdk_embeddings_are_the_cli_vectors(embed_server, embed_model):
    client = openai.OpenAI(base_url=embed_server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["What is BitNet?", "Ternary weights: -1, 0 and 1.", "Ünïcödé and 12345"]
    r = client.embeddings.create(model="text-embedding-3-small", input=texts)
    assert r.model == "bitnet-embedding-0.6b"
    assert [d.index for d in r.data] == [0, 1, 2]
    for d, text in zip(r.data, texts):
        assert len(d.embedding) == 256
        assert math.isclose(math.fsum(x * x for x in d.embedding), 1.0, rel_tol=1e-5)
        # Served (base64 f32 through the SDK) = the command line's (float JSON).
        assert d.embedding == pytest.approx(cli_embedding(embed_model, text), abs=1e-7)
    assert r.usage.prompt_tokens == r.usage.total_tokens > len(texts)
    assert r.data[0].embedding != r.data[1].embedding


def test_input_forms_and_float_encoding(embed_server):
    tok = post(embed_server, "/tokenize", {"content": "What is BitNet?"}).json()["tokens"]
    ids = tok + [151643]   # token ids are used as given: the caller appends the end of text
    by_text = post(embed_server, "/v1/embeddings", {"input": "What is BitNet?", "encoding_format": "float"}).json()
    by_ids = post(embed_server, "/v1/embeddings", {"input": ids}).json()
    by_lists = post(embed_server, "/v1/embeddings", {"input": [ids, ids[:2]]}).json()
    assert by_text["data"][0]["embedding"] == by_ids["data"][0]["embedding"] == by_lists["data"][0]["embedding"]
    assert by_lists["data"][1]["embedding"] != by_lists["data"][0]["embedding"]
    assert by_ids["usage"]["prompt_tokens"] == len(ids)
    h = requests.get(embed_server.url + "/health").json()
    assert h["model"]["embedding_dim"] == 256


@pytest.mark.parametrize("body,param,code", [
    ({}, "input", None),
    ({"input": []}, "input", None),
    ({"input": ["ok", ""]}, "input[1]", None),
    ({"input": [[1, 2], []]}, "input[1]", None),
    ({"input": ["ok", 5]}, "input[1]", None),
    ({"input": [[1, 2], [999999]]}, "input[1]", None),
    ({"input": ["x", "word " * 5000]}, "input[1]", "context_length_exceeded"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", None),
    ({"input": "x", "dimensions": 64}, "dimensions", None),
    ({"input": ["x"] * 257}, "input", None),
])
def test_refusals_name_the_field(embed_server, body, param, code):
    r = post(embed_server, "/v1/embeddings", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    if code:
        assert err["code"] == code
    # The server is fine afterwards.
    assert post(embed_server, "/v1/embeddings", {"input": "fine"}).status_code == 200


def test_each_model_does_only_its_kind(embed_server, model_server):
    r = post(embed_server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    r = post(model_server, "/v1/embeddings", {"input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text


def test_one_process_serves_a_chat_model_and_an_embedding_model(start_server, tiny_model, embed_model):
    """--model for chat and completions, --embedding-model for /v1/embeddings: both through
    the model store, both in /v1/models and /health; /ready waits for both."""
    srv = start_server(env={"BITNET_EMBEDDING_MODEL_ID": "my-embedder"},
                       args=["--model", str(tiny_model), "--embedding-model", str(embed_model)])
    srv.wait_ready()
    models = requests.get(srv.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["bitnet-b1.58-2b-4t", "my-embedder"]
    assert requests.get(srv.url + "/v1/models/my-embedder").status_code == 200
    h = requests.get(srv.url + "/health").json()
    assert h["model"]["state"] == "ready" and "embedding_dim" not in h["model"]
    assert h["embedding_model"]["state"] == "ready" and h["embedding_model"]["embedding_dim"] == 256
    chat = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert chat.status_code == 200 and chat.json()["model"] == "bitnet-b1.58-2b-4t"
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    e = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert e.model == "my-embedder" and len(e.data) == 2 and len(e.data[0].embedding) == 256
    # Naming the other kind's model is refused, not answered by the wrong one.
    r = post(srv, "/v1/chat/completions", {"model": "my-embedder", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    r = post(srv, "/v1/embeddings", {"model": "bitnet-b1.58-2b-4t", "input": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text


def test_ready_waits_for_the_embedding_model(start_server, tiny_model, workdir):
    """An embedding model that cannot be had keeps /ready at 503 (naming it), while chat
    still works."""
    srv = start_server(env={"BITNET_LOAD_RETRY_MAX_SECS": "600"},
                       args=["--model", str(tiny_model), "--embedding-model", str(workdir / "missing.gguf")])
    deadline = time.time() + 30
    while time.time() < deadline:
        h = requests.get(srv.url + "/health").json()
        if h["model"]["state"] == "ready" and h["embedding_model"]["state"] == "failed":
            break
        time.sleep(0.2)
    assert h["embedding_model"]["state"] == "failed", h
    r = requests.get(srv.url + "/ready")
    assert r.status_code == 503 and r.json()["embedding_model"]["state"] == "failed"
    assert post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                              "max_tokens": 2}).status_code == 200
    r = post(srv, "/v1/embeddings", {"input": "x"})
    assert r.status_code == 503, r.text
