"""Warm overhead and first-token latency of a running server (see docs/functions.md, Measurements).

    python tests/functions/measure_overhead.py http://127.0.0.1:8080            # bitnet serve
    python tests/functions/measure_overhead.py http://127.0.0.1:9000/lambda-url/_   # cargo lambda emulator
"""
import json, statistics, subprocess, sys, time, os, requests
url = sys.argv[1]
s = requests.Session()
def med(f, n):
    xs = []
    for _ in range(n):
        t = time.perf_counter(); f(); xs.append((time.perf_counter() - t) * 1000)
    xs.sort(); return statistics.median(xs), xs[int(len(xs) * 0.9)]
for _ in range(20): s.get(url + "/v1/models")
print("GET /v1/models  median %.3f ms p90 %.3f ms" % med(lambda: s.get(url + "/v1/models"), 300))
print("GET /health     median %.3f ms p90 %.3f ms" % med(lambda: s.get(url + "/health"), 300))
over, eng, tot = [], [], []
for _ in range(50):
    t = time.perf_counter()
    r = s.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1, "temperature": 0}).json()
    total = (time.perf_counter() - t) * 1000
    e = r["timings"]["prompt_ms"] + r["timings"]["predicted_ms"]
    tot.append(total); eng.append(e); over.append(total - e)
print("1-token completion: total median %.3f ms, engine (prompt+decode) median %.3f ms, adapter+HTTP overhead median %.3f ms" % (statistics.median(tot), statistics.median(eng), statistics.median(over)))
ft = []
# A fresh connection per stream: back to back on one kept-alive connection, Python's client
# stalls ~40 ms before the next request (delayed ACK), which is the client's, not the server's.
for _ in range(20):
    t = time.perf_counter()
    r = requests.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello there, how are you?"}], "max_tokens": 16, "temperature": 0, "stream": True}, stream=True)
    got = None
    for line in r.iter_lines():
        if got is None and line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
            got = (time.perf_counter() - t) * 1000
    if got is not None: ft.append(got)
print("first token (chat stream, 16 prompt tokens), median %.2f ms, min %.2f ms" % (statistics.median(ft), min(ft)))
