"""`bitnet serve` against hostile clients, over loopback, with bounded loops: one request must
not be able to stall the server for everyone else. Each test fails on the server before the
hardening (it hangs until its bound, or the server does the unbounded work)."""
import json
import random
import socket
import string
import time

import pytest
import requests

from conftest import binary

JSON = {"content-type": "application/json"}


def raw_request(port, path, body: bytes, rcvbuf=None):
    """An HTTP/1.1 POST on a fresh socket, returned unread."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    s.sendall(head + body)
    return s


def port_of(srv):
    return int(srv.url.rsplit(":", 1)[1])


def timed_post(srv, path, body, timeout=30, **kw):
    t0 = time.time()
    r = requests.post(srv.url + path, json=body, timeout=timeout, **kw)
    return r, time.time() - t0




def long_prompt(n_words=3000):
    rnd = random.Random(5)
    return " ".join(rnd.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(n_words))


# ---- work per request ----------------------------------------------------------------------------

def test_a_megabyte_piece_is_tokenized_in_bounded_time(start_server, tiny_model):
    """One pre-tokenizer piece of ~1 MB (letters, spaces, punctuation, two letters): the
    quadratic merge loop took about an hour on such a prompt; the answer (400: longer than the
    context) must come at once."""
    srv = start_server(env={"BITNET_MODEL": str(tiny_model)})
    srv.wait_ready()
    rnd = random.Random(2)
    for alphabet in (string.ascii_letters, " ", string.punctuation.replace("\\", "").replace('"', ""), "ab"):
        text = "".join(rnd.choice(alphabet) for _ in range((1 << 20) - 100))
        r, took = timed_post(srv, "/v1/completions", {"prompt": text, "max_tokens": 1})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
        assert took < 5, (alphabet, took)


def test_the_queue_refuses_before_reading_the_body(start_server, tiny_model):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_PARALLEL": "1", "BITNET_MAX_QUEUE": "0"})
    srv.wait_ready()
    running = requests.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 3000, "stream": True},
                            stream=True, timeout=30)
    # Keep the line iterator: a dropped one makes urllib3 close the connection.
    lines = running.iter_lines()
    next(l for l in lines if l)
    # Headers announce a 900 KB body that never comes: the 429 cannot wait for it.
    s = socket.create_connection(("127.0.0.1", port_of(srv)))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 900000\r\n\r\n{")
    s.settimeout(3)
    answer = s.recv(4096)
    s.close()
    assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
    running.close()


# ---- clients that stop reading or leave ----------------------------------------------------------

def test_a_client_that_stops_reading_loses_its_slot(start_server, tiny_model):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_MAX_QUEUE": "1",
                            "BITNET_STREAM_STALL_SECS": "1"})
    srv.wait_ready()
    body = json.dumps({"prompt": "Tell me a story", "max_tokens": 4000, "stream": True,
                       "temperature": 1.0, "seed": 3}).encode()
    # A small receive buffer, never read: the server's writes back up within a few hundred tokens.
    stalled = raw_request(port_of(srv), "/v1/completions", body, rcvbuf=4096)
    try:
        r, took = timed_post(srv, "/v1/completions", {"prompt": "x", "max_tokens": 2}, timeout=30)
        assert r.status_code == 200, r.text
        assert took < 20, took
        deadline = time.time() + 10
        while time.time() < deadline and not any("stopped reading" in l.get("message", "") for l in srv.log_lines()):
            time.sleep(0.1)
        assert any("stopped reading" in l.get("message", "") for l in srv.log_lines()), srv.log()
    finally:
        stalled.close()


def test_a_client_that_leaves_during_the_prompt_stops_the_prefill(start_server, small_model):
    # The same prompt twice: without the prefix cache the second is read in full again. One
    # kernel thread: the prompt pass lasts long enough to interrupt (about 0.45 s on two).
    srv = start_server(env={"BITNET_MODEL": str(small_model), "BITNET_MAX_QUEUE": "1",
                            "BITNET_PREFIX_CACHE_MB": "0", "BITNET_THREADS": "1"})
    srv.wait_ready()
    # Time of the full prompt pass, for comparison.
    r, full = timed_post(srv, "/v1/completions", {"prompt": long_prompt(), "max_tokens": 1})
    assert r.status_code == 200, r.text
    prefill_ms = r.json()["timings"]["prompt_ms"]
    assert prefill_ms > 500, f"the prompt pass is too short to interrupt: {prefill_ms} ms"
    body = json.dumps({"prompt": long_prompt(), "max_tokens": 5, "stream": True}).encode()
    s = raw_request(port_of(srv), "/v1/completions", body)
    time.sleep(0.1)
    s.close()
    deadline = time.time() + 20
    while time.time() < deadline and not any("client gone" in l.get("message", "") for l in srv.log_lines()):
        time.sleep(0.05)
    gone = [l for l in srv.log_lines() if l.get("message") == "client gone; generation stopped"]
    assert gone and gone[-1]["completion_tokens"] == 0, srv.log()
    # Stopped between layers, well before the prompt pass would have ended.
    assert gone[-1]["prompt_ms"] < prefill_ms * 0.9, (gone[-1], prefill_ms)


def test_the_generation_deadline_cuts_the_prompt_and_finishes_the_response(start_server, small_model):
    srv = start_server(env={"BITNET_MODEL": str(small_model), "BITNET_GENERATION_TIMEOUT_SECS": "0.3"})
    srv.wait_ready()
    r, took = timed_post(srv, "/v1/completions", {"prompt": long_prompt(), "max_tokens": 100})
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["choices"][0]["finish_reason"] == "length" and v["usage"]["completion_tokens"] == 0, v
    assert v["timings"]["prompt_ms"] < 800, v["timings"]
    r = requests.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 4000, "stream": True}, timeout=30)
    events = [l for l in r.text.split("\n\n") if l.startswith("data: {")]
    last = json.loads(events[-1][6:])
    assert last["choices"][0]["finish_reason"] == "length", last
    assert r.text.endswith("data: [DONE]\n\n")
    assert 0 < last["timings"]["predicted_n"] < 4000, last["timings"]


# ---- sockets -------------------------------------------------------------------------------------

def test_idle_connections_do_not_lock_out_a_real_client(start_server, tiny_model, workdir):
    """300 idle sockets (half of them with a partial request line) against a server whose file
    descriptor limit is 128: a real client is still served at once."""
    srv = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_IDLE_TIMEOUT_SECS": "60",
                            "BITNET_HEADER_TIMEOUT_SECS": "60"}, wrapper=["prlimit", "--nofile=128:128", "--"])
    srv.wait_ready()
    idle = []
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", port_of(srv)), timeout=5)
            if i % 2:
                s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
            idle.append(s)
        time.sleep(0.5)
        for _ in range(3):
            r = requests.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=5)
            assert r.status_code == 200, r.text
            assert requests.get(srv.url + "/health", timeout=5).status_code == 200
    finally:
        for s in idle:
            s.close()
    assert srv.p.poll() is None, srv.log()
    assert any(l.get("max_connections") == 64 for l in srv.log_lines()), "cap = 128 fds - 64 reserved"


def test_slow_headers_and_idle_connections_are_closed(start_server, tiny_model):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_HEADER_TIMEOUT_SECS": "1",
                            "BITNET_IDLE_TIMEOUT_SECS": "1"})
    slow = socket.create_connection(("127.0.0.1", port_of(srv)))
    idle = socket.create_connection(("127.0.0.1", port_of(srv)))
    t0 = time.time()
    slow.settimeout(0.3)
    closed_at = None
    # One header byte every 0.2 s: never a whole request within the timeout.
    for b in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
        try:
            slow.sendall(bytes([b]))
            data = slow.recv(100)
            if data == b"" or data.startswith(b"HTTP/1.1 408"):
                closed_at = time.time() - t0
                break
        except socket.timeout:
            continue
        except OSError:
            closed_at = time.time() - t0
            break
    assert closed_at is not None and closed_at < 5, closed_at
    # A connection that never sent a byte is closed after the idle timeout.
    idle.settimeout(5)
    assert idle.recv(100) == b""
    assert time.time() - t0 < 6


# ---- what a browser can send ---------------------------------------------------------------------

def test_browser_simple_requests_and_cors(start_server, tiny_model):
    srv = start_server(env={"BITNET_MODEL": str(tiny_model)})
    srv.wait_ready()
    chat = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    for ct in ("text/plain", "application/x-www-form-urlencoded"):
        r = requests.post(srv.url + "/v1/chat/completions", data=chat, headers={"content-type": ct}, timeout=30)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    pre = requests.options(srv.url + "/v1/chat/completions", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"}, timeout=10)
    assert "access-control-allow-origin" not in pre.headers and pre.status_code >= 400
    srv2 = start_server(env={"BITNET_MODEL": str(tiny_model), "BITNET_CORS_ORIGINS": "https://app.example",
                             "API_KEY": "k"})
    pre = requests.options(srv2.url + "/v1/chat/completions", headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type"}, timeout=10)
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
    evil = requests.options(srv2.url + "/v1/chat/completions", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"}, timeout=10)
    assert evil.headers.get("access-control-allow-origin") != "https://evil.example"
