"""Many clients at once on `bitnet serve` (tiny and small models): concurrent streams through the `openai`
client give what each gets alone, a shared prefix is reused, `n` choices share one prompt pass,
and `/metrics` parses with the Prometheus client's own parser."""
import concurrent.futures as cf
import time

import pytest
import requests

from conftest import MODEL_ID

openai = pytest.importorskip("openai")
parser = pytest.importorskip("prometheus_client.parser")


def client(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def stream_text(srv, prompt, max_tokens=24):
    parts, usage = [], None
    for chunk in client(srv).completions.create(model=MODEL_ID, prompt=prompt, max_tokens=max_tokens,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.choices:
            parts.append(chunk.choices[0].text or "")
        if chunk.usage:
            usage = chunk.usage
    return "".join(parts), usage


def metrics(srv):
    text = requests.get(srv.url + "/metrics", timeout=10).text
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


PROMPTS = [f"Story number {i}: once upon a time" for i in range(6)]


def test_concurrent_streams_give_what_each_gets_alone(start_server, tiny_model):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_PARALLEL": "4",
                            "BITNET_PREFIX_CACHE_MB": "0"}).wait_ready()
    alone = [stream_text(srv, p)[0] for p in PROMPTS]
    before = metrics(srv)
    # Six clients, four slots: two wait, all are served.
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: stream_text(srv, p), PROMPTS))
    assert [t for t, _ in together] == alone
    assert all(u.completion_tokens == 24 for _, u in together)
    after = metrics(srv)
    steps = after[("bitnet_forward_steps_total", ())] - before[("bitnet_forward_steps_total", ())]
    rows = after[("bitnet_forward_step_tokens_total", ())] - before[("bitnet_forward_step_tokens_total", ())]
    # 6 x 24 tokens plus the prompts: far fewer steps than tokens when sequences share steps.
    assert rows >= 6 * 24 and steps < rows / 2, (steps, rows)
    assert after[("bitnet_slots", ())] == 4
    assert after[("bitnet_generated_tokens_total", ())] == 12 * 24
    assert after[("bitnet_inter_token_seconds_count", ())] >= 12 * 23
    assert after[("bitnet_http_requests_total", (("code", "200"), ("route", "completions")))] == 12
    assert after[("bitnet_slots_active", ())] == 0 and after[("bitnet_queue_depth", ())] == 0


def test_a_shared_prefix_is_reused_over_http(start_server, tiny_model):
    system = "You are a terse assistant. Answer in one line. " * 8
    bodies = [{"model": MODEL_ID, "temperature": 0, "max_tokens": 8,
               "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]}
              for q in ("Capital of France?", "Largest ocean?")]
    cached = start_server(env={"BITNET_MODEL": str(tiny_model)}).wait_ready()
    cold = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_PREFIX_CACHE_MB": "0"}).wait_ready()
    a = requests.post(cached.url + "/v1/chat/completions", json=bodies[0], timeout=60).json()
    b = requests.post(cached.url + "/v1/chat/completions", json=bodies[1], timeout=60).json()
    assert a["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    hit = b["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert hit > 60, b["usage"]
    assert b["timings"]["cache_n"] == hit and b["timings"]["prompt_n"] == b["usage"]["prompt_tokens"] - hit
    ref = requests.post(cold.url + "/v1/chat/completions", json=bodies[1], timeout=60).json()
    assert ref["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert b["choices"][0]["message"]["content"] == ref["choices"][0]["message"]["content"]
    m = metrics(cached)
    assert m[("bitnet_prefix_cache_hits_total", ())] == 1
    assert m[("bitnet_prompt_tokens_cached_total", ())] == hit


def test_n_choices_through_the_openai_client(start_server, tiny_model):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model)}).wait_ready()
    r = client(srv).chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=8, temperature=1.0, seed=5, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) > 1, texts
    assert r.usage.completion_tokens == sum(1 for _ in texts) * 8 or r.usage.completion_tokens <= 24
    # Choice i of seed s is what n=1 gives with seed s + i.
    for i in range(3):
        one = client(srv).chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=8, temperature=1.0, seed=5 + i)
        assert one.choices[0].message.content == texts[i]
    m = metrics(srv)
    # The three choices read the prompt once.
    assert m[("bitnet_prompt_tokens_total", ())] + m[("bitnet_prompt_tokens_cached_total", ())] \
        == 4 * r.usage.prompt_tokens


def test_a_long_prompt_does_not_freeze_running_streams(start_server, small_model):
    """While a long prompt is read in chunks, the running streams keep getting tokens: no gap
    between their tokens is as long as reading the whole prompt."""
    srv = start_server(env={"BITNET_MODEL": str(small_model), "BITNET_PARALLEL": "3",
                            "BITNET_PREFILL_CHUNK": "16", "BITNET_PREFIX_CACHE_MB": "0"}).wait_ready()
    long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 130)
    r = requests.post(srv.url + "/v1/completions", json={"prompt": long_prompt, "max_tokens": 1}, timeout=120).json()
    prefill_s = r["timings"]["prompt_ms"] / 1000
    gaps = []

    def running_stream():
        last = None
        with requests.post(srv.url + "/v1/completions", stream=True, timeout=120,
                           json={"prompt": "Count:", "max_tokens": 200, "temperature": 0, "stream": True}) as resp:
            assert resp.status_code == 200, resp.text
            for line in resp.iter_lines():
                if line.startswith(b"data: {"):
                    now = time.monotonic()
                    if last is not None:
                        gaps.append(now - last)
                    last = now

    with cf.ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(running_stream) for _ in range(2)]
        time.sleep(0.3)
        r2 = pool.submit(lambda: requests.post(srv.url + "/v1/completions", timeout=120,
                                               json={"prompt": long_prompt + " again", "max_tokens": 1}).json())
        for f in streams:
            f.result()
        assert r2.result()["usage"]["prompt_tokens"] > 1000
    assert gaps and max(gaps) < prefill_s / 3, (max(gaps), prefill_s)
