"""Structured outputs and log-probabilities on the real server (`bitnet serve`, tiny model):
the `openai` SDK's `parse` with a pydantic model, `response_format`, llama-server's
`json_schema` / `grammar`, a fuzz of the schema compiler checked by `jsonschema`, and
log-probabilities checked against `bitnet eval`'s logits."""
import json
import math
import random
import re
import subprocess
from typing import List, Literal, Optional

import pytest
import requests

from conftest import MODEL_ID, binary

jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")


def post(srv, path, body):
    return requests.post(srv.url + path, json=body, timeout=120)


def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)


# ---- the openai SDK ---------------------------------------------------------------------------

class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=10)
    zip: int


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=12)
    age: int
    tags: List[Literal["friend", "colleague"]] = pydantic.Field(max_length=3)
    address: Address
    nickname: Optional[str] = pydantic.Field(max_length=6)


def test_sdk_parse_returns_the_pydantic_object(model_server):
    c = client(model_server)
    beta = getattr(getattr(c, "beta", None), "chat", None)
    parse = beta.completions.parse if beta is not None else c.chat.completions.parse
    for seed in range(3):
        r = parse(model="gpt-4o-mini", messages=[{"role": "user", "content": "Who is Ada?"}],
                  response_format=Person, max_tokens=300, seed=seed, temperature=1.0)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        p = choice.message.parsed
        assert isinstance(p, Person) and isinstance(p.address, Address), choice.message.content
        assert len(p.name) <= 12 and set(p.tags) <= {"friend", "colleague"}
        # What it parsed is the text, which the schema the SDK sent accepts.
        assert Person.model_validate_json(choice.message.content) == p


def test_json_object_and_streaming_under_a_schema(model_server):
    c = client(model_server)
    stopped = 0
    for seed in range(4):
        r = c.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "JSON please"}],
                                      response_format={"type": "json_object"}, max_tokens=200, seed=seed)
        text = r.choices[0].message.content
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(text), dict), text
            stopped += 1
        else:
            assert text.startswith("{"), text
    assert stopped >= 1
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "array", "items": {"type": "integer"}, "maxItems": 3}},
              "required": ["ok", "n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    body = dict(model=MODEL_ID, messages=[{"role": "user", "content": "x"}], response_format=fmt,
                max_tokens=150, seed=11, temperature=0.9)
    whole = c.chat.completions.create(**body)
    parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **body) if ch.choices]
    assert "".join(parts) == whole.choices[0].message.content
    jsonschema.validate(json.loads(whole.choices[0].message.content), schema)


# ---- llama-server's fields --------------------------------------------------------------------

def test_gbnf_grammar_and_json_schema_fields(model_server):
    grammar = r'''
root ::= "Answer: " answer ("." | "!")
answer ::= ("yes" | "no") | [0-9]{1,3}
'''
    for seed in range(4):
        r = post(model_server, "/v1/completions",
                 {"prompt": "Is it?", "grammar": grammar, "max_tokens": 30, "seed": seed, "temperature": 1.0})
        assert r.status_code == 200, r.text
        text = r.json()["choices"][0]["text"]
        assert re.fullmatch(r"Answer: (yes|no|[0-9]{1,3})[.!]", text), text
    schema = {"type": "array", "items": {"enum": ["red", "green", 7, None]}, "minItems": 2, "maxItems": 4}
    r = post(model_server, "/v1/completions", {"prompt": "Colors:", "json_schema": schema, "max_tokens": 60, "seed": 1})
    assert r.status_code == 200, r.text
    jsonschema.validate(json.loads(r.json()["choices"][0]["text"]), schema)


@pytest.mark.parametrize("extra,param,word", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a"}}}},
     "response_format.json_schema.schema", "pattern"),
    ({"json_schema": {"type": "integer", "minimum": 0}}, "json_schema", "minimum"),
    ({"json_schema": {"oneOf": [{"type": "string"}]}}, "json_schema", "oneOf"),
    ({"grammar": "root ::= missing"}, "grammar", "missing"),
    ({"grammar": "root ::= root \"a\" | \"a\""}, "grammar", "itself"),
    ({"grammar": "root ::= \"a\"", "json_schema": {}}, "grammar", "both"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
])
def test_what_cannot_be_guaranteed_is_refused_by_name(model_server, extra, param, word):
    r = post(model_server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and word in err["message"], err


# ---- fuzz: random schemas, every output checked by jsonschema ----------------------------------

def random_schema(rng: random.Random, depth=0) -> dict:
    kinds = ["string", "integer", "number", "boolean", "null", "enum", "const"]
    if depth < 2:
        kinds += ["object", "object", "array", "anyOf"]
    kind = rng.choice(kinds)
    if kind == "string":
        s = {"type": "string", "maxLength": rng.randint(0, 8)}
        if rng.random() < 0.3:
            s["minLength"] = rng.randint(0, s["maxLength"])
        return s
    if kind in ("integer", "number", "boolean", "null"):
        return {"type": kind}
    if kind == "enum":
        pool = ["a", "b c", "é", 1, 2.5, True, None, "quote\"d", "back\\slash"]
        return {"enum": rng.sample(pool, rng.randint(1, 4))}
    if kind == "const":
        return {"const": rng.choice(["x", 42, False, None, "ünï"])}
    if kind == "anyOf":
        return {"anyOf": [random_schema(rng, depth + 1) for _ in range(rng.randint(1, 3))]}
    if kind == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": lo, "maxItems": lo + rng.randint(0, 2)}
    props = {f"p{i}_{rng.choice(['x', 'é', 'a b'])}": random_schema(rng, depth + 1) for i in range(rng.randint(0, 4))}
    req = [k for k in props if rng.random() < 0.6]
    s = {"type": "object", "properties": props, "required": req}
    if rng.random() < 0.5:
        s["additionalProperties"] = False
    if not props and rng.random() < 0.5:
        # A map: any keys, values of one schema.
        s = {"type": "object", "additionalProperties": random_schema(rng, depth + 1)}
    return s


def test_fuzz_random_schemas_always_validate(model_server):
    rng = random.Random(20261207)
    validated = 0
    for i in range(30):
        schema = random_schema(rng)
        if i % 2:
            body = {"messages": [{"role": "user", "content": "Fill it"}], "max_tokens": 250, "seed": i, "temperature": 1.0,
                    "response_format": {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema}}}
            r = post(model_server, "/v1/chat/completions", body)
            text_of = lambda v: v["choices"][0]["message"]["content"]  # noqa: E731
        else:
            body = {"prompt": "Fill it", "max_tokens": 250, "seed": i, "temperature": 1.0, "json_schema": schema}
            r = post(model_server, "/v1/completions", body)
            text_of = lambda v: v["choices"][0]["text"]  # noqa: E731
        assert r.status_code == 200, (schema, r.text)
        v = r.json()
        if v["choices"][0]["finish_reason"] != "stop":
            continue  # cut by max_tokens (a map or anyOf can run long): a prefix, not a value
        instance = json.loads(text_of(v))
        jsonschema.validate(instance, schema)
        validated += 1
    assert validated >= 20, validated


# ---- log-probabilities against `bitnet eval` ---------------------------------------------------

def eval_log_softmax(model_path, ids, tmp_path):
    out = tmp_path / "logits.f32"
    subprocess.run([binary("bitnet"), "eval", "--model", str(model_path), "--ids", ",".join(map(str, ids)),
                    "--logits-out", str(out)], check=True, capture_output=True, timeout=120)
    import array
    logits = array.array("f")
    logits.frombytes(out.read_bytes())
    m = max(logits)
    lse = m + math.log(sum(math.exp(x - m) for x in logits))
    return [x - lse for x in logits]


PROMPT_IDS = [128000, 791, 6864, 315, 9822, 374, 12366, 13]


def test_echo_scores_the_prompt_as_bitnet_eval_does(model_server, tiny_model, tmp_path):
    c = client(model_server)
    r = c.completions.create(model=MODEL_ID, prompt=PROMPT_IDS, max_tokens=0, echo=True, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(PROMPT_IDS) and lp.token_logprobs[0] is None
    assert r.usage.completion_tokens == 0
    for j in (1, 4, len(PROMPT_IDS) - 1):
        ref = eval_log_softmax(tiny_model, PROMPT_IDS[:j], tmp_path)
        assert lp.token_logprobs[j] == pytest.approx(ref[PROMPT_IDS[j]], abs=1e-3), j
        best = sorted(ref, reverse=True)[:3]
        assert sorted(lp.top_logprobs[j].values(), reverse=True) == pytest.approx(best, abs=1e-3)


def test_generated_logprobs_as_bitnet_eval_and_in_the_chat_shape(model_server, tiny_model, tmp_path):
    ref = eval_log_softmax(tiny_model, PROMPT_IDS, tmp_path)
    best = sorted(ref, reverse=True)[:5]
    # Greedy: the first token is the most likely one; sampling transforms do not change the
    # reported values (a high temperature and a penalty).
    for extra in ({"temperature": 0}, {"temperature": 1.8, "presence_penalty": 1.5, "seed": 3}):
        r = post(model_server, "/v1/completions", {"prompt": PROMPT_IDS, "max_tokens": 4, "logprobs": 5, **extra})
        lp = r.json()["choices"][0]["logprobs"]
        assert sorted(lp["top_logprobs"][0].values(), reverse=True) == pytest.approx(best, abs=1e-3)
        assert lp["token_logprobs"][0] in [pytest.approx(x, abs=1e-3) for x in ref]
        if extra["temperature"] == 0:
            assert lp["token_logprobs"][0] == pytest.approx(best[0], abs=1e-3)
        text = r.json()["choices"][0]["text"]
        assert "".join(lp["tokens"]) == text
    # Chat, through the SDK, streamed and not: token, logprob, bytes, top_logprobs.
    c = client(model_server)
    body = dict(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0,
                logprobs=True, top_logprobs=2)
    whole = c.chat.completions.create(**body)
    items = whole.choices[0].logprobs.content
    assert len(items) == whole.usage.completion_tokens
    assert b"".join(bytes(i.bytes) for i in items).decode("utf-8", "replace") == whole.choices[0].message.content
    for i in items:
        assert len(i.top_logprobs) == 2 and i.top_logprobs[0].logprob == i.logprob and i.logprob <= 0
    streamed = [x for ch in c.chat.completions.create(stream=True, **body) if ch.choices and ch.choices[0].logprobs
                for x in ch.choices[0].logprobs.content]
    assert [(x.token, x.logprob) for x in streamed] == [(x.token, x.logprob) for x in items]


def test_a_grammar_too_ambiguous_to_follow_is_cut_short_not_followed_at_any_cost(model_server):
    import time
    t = time.monotonic()
    r = post(model_server, "/v1/completions",
             {"prompt": "x", "grammar": "root ::= ([^e]{0,60}){0,60} \"!\"", "max_tokens": 200, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert time.monotonic() - t < 30
    # Several choices under one schema: each follows it.
    schema = {"type": "object", "properties": {"k": {"enum": ["a", "b"]}}, "required": ["k"]}
    r = post(model_server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 3,
                                                    "json_schema": schema, "max_tokens": 40, "seed": 5})
    for c in r.json()["choices"]:
        jsonschema.validate(json.loads(c["message"]["content"]), schema)
