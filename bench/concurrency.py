#!/usr/bin/env python3
"""Concurrency benchmark for ONE running OpenAI-compatible server (`bitnet serve`, llama-server).

    python3 bench/concurrency.py --url http://127.0.0.1:8080 --scenario scaling [--json out.json]

Streams POST /v1/completions (temperature 0, stream: true, stream_options.include_usage) and
timestamps every SSE event as it arrives. Standard library only: asyncio and raw HTTP/1.1 over
one loopback connection per request, so the harness costs next to nothing.

Scenarios (--scenario, comma-separated or `all`):
  scaling      for each C in --clients (1,2,4,8): C clients each stream --requests requests back to
               back (--max-tokens 64, a distinct prompt per request). Aggregate completion tokens/s
               (server-reported counts / wall time of the phase), inter-token latency p50/p99 (gaps
               between consecutive content chunks of a stream, pooled), TTFT p50. The phase is run
               --reps times; the table shows medians.
  prefix       TTFT of a request whose ~--prefix-tokens token prompt shares all but a short suffix
               with the request before it (hit) against that first request (miss), max_tokens 1,
               a fresh random prefix per rep. Run it against a server with its prefix cache off
               to see the difference the cache makes.
  long-prompt  --streams streams generate steadily; then one ~--prefix-tokens token prompt
               arrives. Inter-token latency of the running streams: p50 over the whole run and p99
               in the window from the long prompt's arrival to its first token, and their ratio.

HTTP errors (429 when a server's queue is full, 503, ...) are counted and shown per status, never
fatal. --extra-json merges fields into every request body (default {"ignore_eos": true}, which
llama-server needs for fixed-length generations; `bitnet serve` ignores unknown fields).
"""
import argparse, asyncio, json, os, random, statistics, sys, time
from urllib.parse import urlsplit

WORDS = ("the of and to in is was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she "
         "which do their time if will way about many then them write would like so these her long "
         "make thing see him two has look more day could go come did number sound no most people my "
         "over know water than call first who may down side been now find any new work part take "
         "get place made live where after back little only round man year came show every good me "
         "give our under name very through just form sentence great think say help low line differ "
         "turn cause much mean before move right boy old too same tell does set three want air well "
         "also play small end put home read hand port large spell add even land here must big high "
         "such follow act why ask men change went light kind off need house picture try us again "
         "animal point mother world near build self earth father head stand own page should country "
         "found answer school grow study still learn plant cover food sun four between state keep "
         "eye never last let thought city tree cross farm hard start might story saw far sea draw "
         "left late run while press close night real life few north open seem together next white "
         "children begin got walk example ease paper group always music those both mark often letter "
         "until mile river car feet care second book carry took science eat room friend began idea "
         "fish mountain stop once base hear horse cut sure watch color face wood main enough plain "
         "girl usual young ready above ever red list though feel talk bird soon body dog family "
         "direct pose leave song measure door product black short numeral class wind question happen "
         "complete ship area half rock order fire south problem piece told knew pass since top whole "
         "king space heard best hour better true during hundred five remember step early hold west "
         "ground interest reach fast verb sing listen six table travel less morning ten simple "
         "several vowel toward war lay against pattern slow center love person money serve appear "
         "road map rain rule govern pull cold notice voice unit power town fine certain fly fall lead "
         "cry dark machine note wait plan figure star box noun field rest correct able pound done "
         "beauty drive stood contain front teach week final gave green quick develop ocean warm free "
         "minute strong special mind behind clear tail produce fact street inch multiply nothing "
         "course stay wheel full force blue object decide surface deep moon island foot system busy "
         "test record boat common gold possible plane stead dry wonder laugh thousand ago ran check "
         "game shape equate hot miss brought heat snow tire bring yes distant fill east paint "
         "language among").split()
TOPICS = ("a lighthouse keeper", "a lost robot", "the first snow", "a river town", "an old map",
          "a clockmaker", "a desert caravan", "a night train", "a garden on Mars", "a small dragon",
          "a violin maker", "a sunken ship", "a mountain village", "a talking fox", "a city of glass",
          "the last library")


def pct(xs, q):
    """The q-th percentile (0..100) by linear interpolation; None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    f = int(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def words(rnd, n):
    return " ".join(rnd.choice(WORDS) for _ in range(n))


# ---------------------------------------------------------------------------------------------
# One streamed request over raw HTTP/1.1.

class Result:
    def __init__(self, tag):
        self.tag = tag
        self.status = None          # HTTP status, None when no response came
        self.error = None           # text of a transport, HTTP or in-stream error
        self.start = None           # perf_counter() when the request was sent
        self.first = None           # first event carrying a choice (the first token)
        self.end = None             # [DONE], the connection's end, or the cancellation
        self.chunks = []            # arrival times of non-empty content chunks
        self.prompt_tokens = None
        self.completion_tokens = None   # server-reported (usage, else timings.predicted_n)
        self.cached_tokens = None       # server-reported prompt tokens served from a cache
        self.done = False           # saw data: [DONE]
        self.cancelled = False

    @property
    def ok(self):
        return self.status == 200 and self.error is None and (self.done or self.cancelled)

    @property
    def ttft(self):
        return None if self.first is None else self.first - self.start

    @property
    def tokens(self):
        """Completion tokens: the server's count when it gave one, else the content chunks."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.chunks)

    def gaps(self):
        return [b - a for a, b in zip(self.chunks, self.chunks[1:])]

    def failure(self):
        if self.status is None:
            return f"no response ({self.error})"
        if self.status != 200:
            return f"HTTP {self.status}"
        if self.error:
            return "stream error"
        if not self.done and not self.cancelled:
            return "stream cut short"
        return None


class Client:
    def __init__(self, url, extra, api_key=None, timeout=600.0, read_timeout=300.0):
        u = urlsplit(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.base = u.path.rstrip("/")
        self.extra = extra
        self.api_key = api_key
        self.timeout = timeout
        self.read_timeout = read_timeout

    def body(self, prompt, max_tokens):
        b = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
             "stream_options": {"include_usage": True}}
        b.update(self.extra)
        return b

    async def get(self, path, timeout=5.0):
        """Status of a GET (None when the connection fails)."""
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout)
        except (OSError, asyncio.TimeoutError):
            return None
        try:
            w.write(f"GET {self.base}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                    f"Connection: close\r\n\r\n".encode())
            await w.drain()
            line = await asyncio.wait_for(r.readline(), timeout)
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        except (OSError, asyncio.TimeoutError, ValueError):
            return None
        finally:
            w.close()

    async def wait_ready(self, path, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if await self.get(path) == 200:
                return True
            await asyncio.sleep(0.25)
        return False

    async def complete(self, prompt, max_tokens, tag=None, on_chunk=None, res=None):
        """Streams one completion into `res` (a new Result by default) and returns it; never
        raises but for cancellation, which marks `res` cancelled and re-raises.
        `on_chunk(res)` runs after each content chunk."""
        res = res if res is not None else Result(tag)
        try:
            await asyncio.wait_for(self._complete(res, prompt, max_tokens, on_chunk), self.timeout)
        except asyncio.TimeoutError:
            res.error = res.error or f"timed out after {self.timeout:.0f} s"
        except asyncio.CancelledError:
            res.cancelled = True
            res.end = time.perf_counter()
            raise
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            res.error = res.error or f"{type(e).__name__}: {e}"
        if res.end is None:
            res.end = time.perf_counter()
        return res

    async def _complete(self, res, prompt, max_tokens, on_chunk):
        payload = json.dumps(self.body(prompt, max_tokens)).encode()
        head = (f"POST {self.base}/v1/completions HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n")
        if self.api_key:
            head += f"Authorization: Bearer {self.api_key}\r\n"
        res.start = time.perf_counter()
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        try:
            writer.write(head.encode() + b"\r\n" + payload)
            await writer.drain()
            rt = self.read_timeout
            status_line = await asyncio.wait_for(reader.readline(), rt)
            parts = status_line.decode("latin-1").split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"bad status line {status_line[:80]!r}")
            res.status = int(parts[1])
            headers = {}
            while True:
                line = await asyncio.wait_for(reader.readline(), rt)
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            length = int(headers["content-length"]) if "content-length" in headers else None

            async def pieces():
                """The body as it arrives, de-chunked."""
                if chunked:
                    while True:
                        size_line = await asyncio.wait_for(reader.readline(), rt)
                        if not size_line:
                            return
                        size = int(size_line.split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            return
                        data = await asyncio.wait_for(reader.readexactly(size + 2), rt)
                        yield data[:-2]
                elif length is not None:
                    left = length
                    while left > 0:
                        data = await asyncio.wait_for(reader.read(min(left, 65536)), rt)
                        if not data:
                            return
                        left -= len(data)
                        yield data
                else:
                    while True:
                        data = await asyncio.wait_for(reader.read(65536), rt)
                        if not data:
                            return
                        yield data

            if res.status != 200 or "text/event-stream" not in headers.get("content-type", ""):
                body = b""
                async for p in pieces():
                    body += p
                    if len(body) > 1 << 20:
                        break
                res.error = _error_text(body) if res.status != 200 else "not an event stream: " + body[:200].decode("utf-8", "replace")
                return
            buf = b""
            async for p in pieces():
                now = time.perf_counter()
                buf += p
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    line = line.rstrip(b"\r")
                    if not line.startswith(b"data:"):
                        continue          # event boundaries, `: keep-alive` comments
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        res.done = True
                        res.end = now
                        return
                    try:
                        ev = json.loads(data)
                    except ValueError:
                        continue
                    if "error" in ev:
                        res.error = _error_text(data)
                        continue
                    _usage(res, ev)
                    choices = ev.get("choices") or []
                    if not choices:
                        continue
                    if res.first is None:
                        res.first = now
                    text = choices[0].get("text")
                    if text is None:
                        text = (choices[0].get("delta") or {}).get("content")
                    if text:
                        res.chunks.append(now)
                        if on_chunk:
                            on_chunk(res)
            # The body ended without [DONE].
            res.end = time.perf_counter()
        finally:
            writer.close()


def _usage(res, ev):
    u = ev.get("usage")
    if isinstance(u, dict):
        if u.get("completion_tokens") is not None:
            res.completion_tokens = u["completion_tokens"]
        if u.get("prompt_tokens") is not None:
            res.prompt_tokens = u["prompt_tokens"]
        d = u.get("prompt_tokens_details")
        if isinstance(d, dict) and d.get("cached_tokens") is not None:
            res.cached_tokens = d["cached_tokens"]
    t = ev.get("timings")
    if isinstance(t, dict):
        if res.completion_tokens is None and t.get("predicted_n") is not None:
            res.completion_tokens = t["predicted_n"]
        if res.prompt_tokens is None and t.get("prompt_n") is not None:
            # llama-server's prompt_n counts only the tokens it evaluated; cache_n the rest.
            res.prompt_tokens = t["prompt_n"] + (t.get("cache_n") or 0)
        if res.cached_tokens is None and t.get("cache_n") is not None:
            res.cached_tokens = t["cache_n"]


def _error_text(body):
    try:
        v = json.loads(body)
        e = v.get("error", v)
        if isinstance(e, dict):
            return str(e.get("message") or e)[:200]
        return str(e)[:200]
    except ValueError:
        return body[:200].decode("utf-8", "replace") if isinstance(body, bytes) else str(body)[:200]


def failures(results):
    """{reason: count} of the failed results, e.g. {"HTTP 429": 3}."""
    out = {}
    for r in results:
        f = r.failure()
        if f:
            out[f] = out.get(f, 0) + 1
    return out


def first_errors(results, n=2):
    seen = []
    for r in results:
        if r.failure() and r.error and r.error not in seen:
            seen.append(r.error)
        if len(seen) >= n:
            break
    return seen


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ms(x):
    return None if x is None else round(x * 1000.0, 2)


# ---------------------------------------------------------------------------------------------
# Scenarios.

async def warm_up(cl, args):
    for i in range(args.warmup):
        r = await cl.complete(f"Warm-up {random.random():.6f}: say hello.", 8)
        if not r.ok:
            log(f"  warm-up request failed: {r.failure()} {r.error or ''}")


async def scaling(cl, args):
    out = {"max_tokens": args.max_tokens, "requests_per_client": args.requests, "reps": args.reps,
           "by_clients": {}}
    await warm_up(cl, args)
    for c in args.clients:
        reps = []
        for rep in range(args.reps):
            nonce = random.getrandbits(32)

            async def client(i):
                rs = []
                for j in range(args.requests):
                    prompt = (f"{nonce:08x}-{i}-{j} Client {i} request {j}: tell a story about "
                              f"{TOPICS[(i * args.requests + j) % len(TOPICS)]}.")
                    rs.append(await cl.complete(prompt, args.max_tokens, tag=(i, j)))
                return rs

            t0 = time.perf_counter()
            per_client = await asyncio.gather(*(client(i) for i in range(c)))
            wall = time.perf_counter() - t0
            rs = [r for rr in per_client for r in rr]
            good = [r for r in rs if r.ok]
            gaps = [g for r in good for g in r.gaps()]
            toks = sum(r.tokens for r in good)
            row = {
                "clients": c, "wall_s": round(wall, 3), "loadavg_1m": _load(), "requests": len(rs), "ok": len(good),
                "failures": failures(rs), "errors": first_errors(rs),
                "completion_tokens": toks,
                "token_counts_from_server": all(r.completion_tokens is not None for r in good),
                "content_chunks": sum(len(r.chunks) for r in good),
                "agg_tok_s": round(toks / wall, 3) if wall > 0 else None,
                "itl_p50_ms": ms(pct(gaps, 50)), "itl_p99_ms": ms(pct(gaps, 99)),
                "ttft_p50_ms": ms(pct([r.ttft for r in good if r.ttft is not None], 50)),
                "ttft_max_ms": ms(max((r.ttft for r in good if r.ttft is not None), default=None)),
                "per_stream_tok_s_p50": _p50([(r.tokens - 1) / (r.end - r.first)
                                             for r in good if r.first and r.end > r.first and r.tokens > 1]),
            }
            reps.append(row)
            fl = f"  FAILED {row['failures']} {row['errors']}" if row["failures"] else ""
            log(f"  scaling C={c} rep {rep + 1}/{args.reps} (load {row['loadavg_1m']}): {row['agg_tok_s']} tok/s aggregate, "
                f"ITL p50 {row['itl_p50_ms']} ms p99 {row['itl_p99_ms']} ms, TTFT p50 {row['ttft_p50_ms']} ms, "
                f"{row['ok']}/{row['requests']} ok in {row['wall_s']} s{fl}")
        keys = ("agg_tok_s", "itl_p50_ms", "itl_p99_ms", "ttft_p50_ms", "per_stream_tok_s_p50", "wall_s")
        med = {k: _round(median([r[k] for r in reps])) for k in keys}
        med["failed_requests"] = sum(sum(r["failures"].values()) for r in reps)
        med["requests"] = sum(r["requests"] for r in reps)
        out["by_clients"][str(c)] = {"median": med, "reps": reps}
    return out


def _load():
    """The machine's 1-minute load average, to spot runs that shared the CPUs (None off Unix)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _p50(xs):
    v = pct(xs, 50)
    return None if v is None else round(v, 3)


def _round(x):
    return None if x is None else round(x, 3)


def long_text(rnd, n_words, tag):
    return f"{tag} Here is a list of words to remember: {words(rnd, n_words)}."


async def prefix(cl, args):
    out = {"prefix_words": args.prefix_tokens, "reps": []}
    await warm_up(cl, args)
    for rep in range(args.reps):
        rnd = random.Random(random.getrandbits(64))
        base = long_text(rnd, args.prefix_tokens, f"[{rnd.getrandbits(32):08x}]")
        a = await cl.complete(base + " Question A: which word came first?", 1)
        b = await cl.complete(base + " Question B: which word came last?", 1)
        row = {}
        for name, r in (("miss", a), ("hit", b)):
            row[name] = {"ok": r.ok, "failure": r.failure(), "error": r.error,
                         "ttft_ms": ms(r.ttft), "total_ms": ms(r.end - r.start) if r.end else None,
                         "prompt_tokens": r.prompt_tokens, "cached_tokens": r.cached_tokens}
        out["reps"].append(row)
        log(f"  prefix rep {rep + 1}/{args.reps}: miss TTFT {row['miss']['ttft_ms']} ms "
            f"({a.prompt_tokens} prompt tokens, {a.cached_tokens} cached), hit TTFT {row['hit']['ttft_ms']} ms "
            f"({b.prompt_tokens} prompt tokens, {b.cached_tokens} cached)"
            + ("" if a.ok and b.ok else f"  FAILED: {a.failure() or ''} {a.error or ''} / {b.failure() or ''} {b.error or ''}"))
    for name in ("miss", "hit"):
        ok = [r[name] for r in out["reps"] if r[name]["ok"]]
        out[name] = {"ttft_ms_median": _round(median([r["ttft_ms"] for r in ok])),
                     "total_ms_median": _round(median([r["total_ms"] for r in ok])),
                     "prompt_tokens": median([r["prompt_tokens"] for r in ok]),
                     "cached_tokens": median([r["cached_tokens"] for r in ok]),
                     "ok": len(ok), "n": len(out["reps"])}
    m, h = out["miss"]["ttft_ms_median"], out["hit"]["ttft_ms_median"]
    out["speedup"] = round(m / h, 3) if m and h else None
    return out


async def long_prompt(cl, args):
    out = {"streams": args.streams, "stream_max_tokens": args.long_max_tokens,
           "prompt_words": args.prefix_tokens}
    await warm_up(cl, args)
    going = asyncio.Event()
    started = set()

    def on_chunk(r):
        if len(r.chunks) >= args.settle_tokens:
            started.add(r.tag)
            if len(started) >= args.streams:
                going.set()

    nonce = random.getrandbits(32)
    rs = [Result(i) for i in range(args.streams)]
    streams = [asyncio.ensure_future(cl.complete(
        f"{nonce:08x}-{i} Stream {i}: tell a long story about {TOPICS[i % len(TOPICS)]}.",
        args.long_max_tokens, on_chunk=on_chunk, res=rs[i])) for i in range(args.streams)]
    # Bounded: streams a server queues rather than runs may never all be going.
    try:
        await asyncio.wait_for(going.wait(), args.settle_timeout)
    except asyncio.TimeoutError:
        log(f"  long-prompt: only {len(started)}/{args.streams} streams were generating after "
            f"{args.settle_timeout:.0f} s; going on with those")
    await asyncio.sleep(args.baseline_s)   # some steady-state gaps before the long prompt
    rnd = random.Random(random.getrandbits(64))
    t_arrive = time.perf_counter()
    lp = asyncio.ensure_future(cl.complete(long_text(rnd, args.prefix_tokens, f"[{rnd.getrandbits(32):08x}]")
                                           + " Which word came first?", 1, tag="long"))
    done, _ = await asyncio.wait([lp], timeout=args.timeout)
    long_res = lp.result() if done else None
    if long_res is None:
        lp.cancel()
        await asyncio.gather(lp, return_exceptions=True)
    await asyncio.sleep(args.baseline_s)   # and some after
    for s in streams:
        s.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    t_first = long_res.first if long_res is not None else None
    t_win_end = t_first if t_first is not None else time.perf_counter()
    active = [r.tag for r in rs if r.first is not None and r.first < t_arrive
              and (r.cancelled or r.end is None or r.end > t_arrive)]
    ended_early = [r.tag for r in rs if not r.cancelled and r.end is not None and r.end < t_win_end]
    all_gaps, win_gaps = [], []
    for r in rs:
        for a, b in zip(r.chunks, r.chunks[1:]):
            all_gaps.append(b - a)
            if b > t_arrive and a < t_win_end:
                win_gaps.append(b - a)
    p50 = pct(all_gaps, 50)
    p99w = pct(win_gaps, 99)
    out.update({
        "long_prompt": None if long_res is None else {
            "ok": long_res.ok, "failure": long_res.failure(), "error": long_res.error,
            "ttft_ms": ms(long_res.ttft), "prompt_tokens": long_res.prompt_tokens},
        "long_prompt_answered": long_res is not None and long_res.first is not None,
        "streams_generating": len(started),
        "streams_active_at_arrival": len(active),
        "streams_ended_before_window_end": [t for t in ended_early],
        "stream_failures": failures([r for r in rs if not r.cancelled]),
        "itl_p50_ms": ms(p50), "window_itl_p99_ms": ms(p99w),
        "window_itl_max_ms": ms(max(win_gaps, default=None)),
        "window_gaps": len(win_gaps), "gaps": len(all_gaps),
        "ratio_p99_window_over_p50": round(p99w / p50, 2) if p50 and p99w else None,
    })
    log(f"  long-prompt: {len(active)}/{args.streams} streams generating at its arrival; long prompt "
        f"{out['long_prompt']}; ITL p50 {out['itl_p50_ms']} ms, window p99 {out['window_itl_p99_ms']} ms "
        f"(max {out['window_itl_max_ms']} ms, {len(win_gaps)} gaps)")
    return out


# ---------------------------------------------------------------------------------------------

def table(report):
    lines = [f"\n{report['label']} at {report['url']}"]
    sc = report["scenarios"]
    if "scaling" in sc:
        s = sc["scaling"]
        lines.append(f"scaling: {s['requests_per_client']} request(s) of {s['max_tokens']} tokens per client, "
                     f"median of {s['reps']} rep(s)")
        lines.append(f"{'clients':>8}{'agg tok/s':>11}{'ITL p50 ms':>12}{'ITL p99 ms':>12}{'TTFT p50 ms':>13}"
                     f"{'stream tok/s':>14}{'failed':>9}")
        for c, v in s["by_clients"].items():
            m = v["median"]
            lines.append(f"{c:>8}{_f(m['agg_tok_s']):>11}{_f(m['itl_p50_ms']):>12}{_f(m['itl_p99_ms']):>12}"
                         f"{_f(m['ttft_p50_ms']):>13}{_f(m['per_stream_tok_s_p50']):>14}"
                         f"{str(m['failed_requests']) + '/' + str(m['requests']):>9}")
            errs = {}
            for r in v["reps"]:
                for k, n in r["failures"].items():
                    errs[k] = errs.get(k, 0) + n
            if errs:
                ex = next((e for r in v["reps"] for e in r["errors"]), "")
                lines.append(f"{'':>8}  failures: {errs} {ex}")
    if "prefix" in sc:
        p = sc["prefix"]
        lines.append(f"prefix: ~{p['prefix_words']}-word shared prefix, max_tokens 1, median of {len(p['reps'])} rep(s)")
        for name in ("miss", "hit"):
            v = p[name]
            lines.append(f"  {name:<5} TTFT {_f(v['ttft_ms_median'])} ms, total {_f(v['total_ms_median'])} ms, "
                         f"{_f(v['prompt_tokens'])} prompt tokens ({_f(v['cached_tokens'])} cached), {v['ok']}/{v['n']} ok")
        lines.append(f"  miss/hit TTFT: {_f(p['speedup'])}x")
    if "long-prompt" in sc:
        lp = sc["long-prompt"]
        L = lp["long_prompt"] or {}
        lines.append(f"long-prompt: {lp['streams_active_at_arrival']}/{lp['streams']} streams generating when "
                     f"a {_f(L.get('prompt_tokens'))}-token prompt arrives")
        lines.append(f"  long prompt TTFT {_f(L.get('ttft_ms'))} ms{'' if lp['long_prompt_answered'] else ' (NO FIRST TOKEN)'}; "
                     f"streams' ITL p50 {_f(lp['itl_p50_ms'])} ms, p99 in the window {_f(lp['window_itl_p99_ms'])} ms "
                     f"(max {_f(lp['window_itl_max_ms'])} ms), ratio {_f(lp['ratio_p99_window_over_p50'])}")
        if lp["streams_ended_before_window_end"]:
            lines.append(f"  WARNING: streams {lp['streams_ended_before_window_end']} ended before the window closed; "
                         f"raise --long-max-tokens")
        if lp["stream_failures"]:
            lines.append(f"  stream failures: {lp['stream_failures']}")
    return "\n".join(lines)


def _f(x):
    if x is None:
        return "-"
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    if isinstance(x, float):
        return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"
    return str(x)


async def main_async(args):
    try:
        extra = json.loads(args.extra_json)
        assert isinstance(extra, dict)
    except (ValueError, AssertionError):
        sys.exit(f"--extra-json must be a JSON object, not {args.extra_json!r}")
    api_key = None
    if args.api_key_file:
        api_key = open(args.api_key_file).read().strip()
    cl = Client(args.url, extra, api_key, args.timeout, args.read_timeout)
    if args.wait_ready:
        log(f"waiting up to {args.wait_ready:.0f} s for {args.url}{args.ready_path}")
        if not await cl.wait_ready(args.ready_path, args.wait_ready):
            sys.exit(f"{args.url}{args.ready_path} did not answer 200 within {args.wait_ready:.0f} s")
    names = ["scaling", "prefix", "long-prompt"] if args.scenario == "all" else args.scenario.split(",")
    report = {"label": args.label, "url": args.url, "extra_json": extra, "scenarios": {},
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for n in names:
        log(f"== {args.label}: {n}")
        if n == "scaling":
            report["scenarios"][n] = await scaling(cl, args)
        elif n == "prefix":
            report["scenarios"][n] = await prefix(cl, args)
        elif n in ("long-prompt", "long_prompt"):
            report["scenarios"]["long-prompt"] = await long_prompt(cl, args)
        else:
            sys.exit(f"unknown scenario {n!r}")
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (default %(default)s)")
    ap.add_argument("--label", default="server", help="name shown in the table and the JSON")
    ap.add_argument("--scenario", default="scaling", help="scaling, prefix, long-prompt (comma-separated) or all")
    ap.add_argument("--clients", default="1,2,4,8", help="scaling: concurrencies (default %(default)s)")
    ap.add_argument("--requests", type=int, default=2, help="scaling: requests per client per phase (default %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=64, help="scaling: max_tokens (default %(default)s)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each phase (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up requests before each scenario (default %(default)s)")
    ap.add_argument("--prefix-tokens", type=int, default=1000,
                    help="prefix / long-prompt: words of the long prompt, about one token each (default %(default)s)")
    ap.add_argument("--streams", type=int, default=4, help="long-prompt: running streams (default %(default)s)")
    ap.add_argument("--long-max-tokens", type=int, default=1024,
                    help="long-prompt: max_tokens of the running streams (default %(default)s)")
    ap.add_argument("--settle-tokens", type=int, default=4,
                    help="long-prompt: tokens each stream must have produced before the long prompt (default %(default)s)")
    ap.add_argument("--settle-timeout", type=float, default=60.0,
                    help="long-prompt: longest wait for the streams to be going (default %(default)s s)")
    ap.add_argument("--baseline-s", type=float, default=2.0,
                    help="long-prompt: seconds of steady streaming before and after the long prompt (default %(default)s)")
    ap.add_argument("--extra-json", default='{"ignore_eos": true}',
                    help="JSON object merged into every request body (default %(default)s)")
    ap.add_argument("--api-key-file", help="file holding a bearer token")
    ap.add_argument("--timeout", type=float, default=600.0, help="longest a request may take (default %(default)s s)")
    ap.add_argument("--read-timeout", type=float, default=300.0,
                    help="longest silence on a connection (default %(default)s s)")
    ap.add_argument("--wait-ready", type=float, default=0.0, help="first wait up to this many seconds for GET --ready-path to answer 200")
    ap.add_argument("--ready-path", default="/health", help="(default %(default)s; `bitnet serve`: /ready)")
    ap.add_argument("--seed", type=int, help="random seed of the prompts (default: random)")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.seed is not None:
        random.seed(args.seed)
    report = asyncio.run(main_async(args))
    print(table(report), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
