#!/usr/bin/env python3
"""Cost of constrained decoding per token, against unconstrained decoding, on one server.

    python3 bench/constrained.py --bitnet target/release/bitnet \
        --model ~/.cache/bitnet-bench/models/2b4t-i2_s.gguf [--reps 5] [--max-tokens 96]

Starts `bitnet serve` (one slot, loopback) on the model, sends one warm-up request per mode (the
first constrained request also builds the vocabulary trie; its time is read from the server's
log), then --reps chat requests per mode with the same seeds, interleaved (mode A rep 1, mode B
rep 1, ...) so that drift hits every mode alike. Reports the median of the server's own
`timings.predicted_per_token_ms` per mode and its overhead against unconstrained.

Modes: none; json_object; json_schema (a record of strings, numbers and an array, sized so that a
generation runs about --max-tokens tokens); gbnf (comma-separated words). A synthetic model's
random weights make most structural tokens rejections (the full vocabulary mask), so this is the
costly end of what a trained model would see. Standard library only.
"""
import argparse, json, os, re, statistics, subprocess, sys, tempfile, time, urllib.request

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer"},
        "email": {"type": "string", "maxLength": 40},
        "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 6},
        "active": {"type": "boolean"},
        "notes": {"type": "string", "maxLength": 120},
    },
    "required": ["name", "age", "email", "scores", "active", "notes"],
}
GBNF = r'''root ::= word ("," " "? word){0,40}
word ::= [a-zA-Z]{1,12}
'''

MODES = {
    "none": {},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "record", "schema": SCHEMA}}},
    "gbnf": {"grammar": GBNF},
}


def post(url, body, timeout=600):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bitnet", default="target/release/bitnet")
    ap.add_argument("--model", required=True)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--port", type=int, default=18093)
    ap.add_argument("--json", help="write the per-request results here")
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-constrained-")
    log_path = os.path.join(work, "server.log")
    env = dict(os.environ, BITNET_MODEL=a.model, BITNET_PARALLEL="1", BITNET_CACHE_DIR=os.path.join(work, "cache"),
               BITNET_LOG_FORMAT="json")
    url = f"http://127.0.0.1:{a.port}"
    with open(log_path, "w") as log:
        srv = subprocess.Popen([a.bitnet, "serve", "--port", str(a.port)], env=env, stdout=log, stderr=log)
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            if time.time() > deadline or srv.poll() is not None:
                sys.exit(f"server not ready; log: {log_path}")
            time.sleep(0.5)

        def request(mode, seed):
            body = {"messages": [{"role": "user", "content": "Describe a person as a record."}],
                    "max_tokens": a.max_tokens, "seed": seed, "temperature": 0.8, **MODES[mode]}
            v = post(url, body)
            t = v["timings"]
            return {"mode": mode, "seed": seed, "tokens": t["predicted_n"], "ms_per_token": t["predicted_per_token_ms"],
                    "finish": v["choices"][0]["finish_reason"]}

        for mode in MODES:  # warm-up (and the trie)
            request(mode, 1000)
        rows = [request(mode, seed) for seed in range(a.reps) for mode in MODES]
    finally:
        srv.terminate()
        srv.wait(timeout=30)

    trie_ms = None
    with open(log_path) as f:
        for line in f:
            if "vocabulary trie built" in line:
                m = re.search(r'"ms":\s*([0-9.]+)', line) or re.search(r"ms=([0-9.]+)", line)
                trie_ms = float(m.group(1)) if m else None
    base = statistics.median(r["ms_per_token"] for r in rows if r["mode"] == "none")
    print(f"model {os.path.basename(a.model)}, {a.reps} reps, max_tokens {a.max_tokens}, "
          f"vocabulary trie built once in {trie_ms} ms")
    print(f"{'mode':<12} {'ms/token (median)':>18} {'tokens (median)':>16} {'overhead':>9}")
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        ms = statistics.median(r["ms_per_token"] for r in mine)
        n = statistics.median(r["tokens"] for r in mine)
        print(f"{mode:<12} {ms:>18.2f} {n:>16.0f} {100 * (ms / base - 1):>8.1f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"trie_ms": trie_ms, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
