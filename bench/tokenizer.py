#!/usr/bin/env python3
"""Tokenizer throughput: this project's tokenizer against Hugging Face `tokenizers` on the same
tokenizer.json and the same 1 MB of mixed text (prose, code, CJK, emoji), single-threaded.

    python3 bench/tokenizer.py [--bitnet target/release/bitnet] [--model MODEL.gguf]

Without --model it writes a tiny synthetic model (the tokenizer is all that is used).
Prints both medians (MB/s) and checks that both produce the same ids."""
import argparse, json, os, random, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def corpus(size=1 << 20, seed=7) -> str:
    rnd = random.Random(seed)
    prose = (ROOT / "README.md").read_text(encoding="utf-8") + "".join(
        p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))
    code = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "engine/src").rglob("*.rs")))
    cjk = "".join(chr(rnd.randint(0x4E00, 0x9FA5)) if rnd.random() < 0.9 else "，。" [rnd.randint(0, 1)] for _ in range(4000))
    emoji = " ".join("".join(chr(rnd.randint(0x1F600, 0x1F64F)) for _ in range(rnd.randint(1, 3))) for _ in range(2000))
    parts = [prose, code, cjk, emoji]
    out, n = [], 0
    while n < size:
        p = parts[len(out) % 4]
        start = rnd.randint(0, max(0, len(p) - 2000))
        chunk = p[start:start + 2000]
        out.append(chunk)
        n += len(chunk.encode("utf-8"))
    text = "".join(out).encode("utf-8")[:size].decode("utf-8", "ignore")
    # HF matches special-token text inside input; this tokenizer never does (by design), so
    # keep such text out of the comparison corpus.
    return text.replace("<|", "<")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bitnet", default=str(ROOT / "target/release/bitnet"))
    ap.add_argument("--model")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    from tokenizers import Tokenizer

    text = corpus()
    nbytes = len(text.encode("utf-8"))
    tmp = Path(tempfile.mkdtemp())
    (tmp / "text.txt").write_text(text, encoding="utf-8")
    model = a.model
    if not model:
        model = str(tmp / "tiny.gguf")
        subprocess.run([a.bitnet, "fixture", "--preset", "tiny", "-o", model], check=True, capture_output=True)

    import gzip
    hf = Tokenizer.from_str(gzip.decompress((ROOT / "engine/data/llama3-tokenizer.json.gz").read_bytes()).decode("utf-8"))
    hf_times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        hf_ids = hf.encode(text, add_special_tokens=False).ids
        hf_times.append(time.perf_counter() - t)

    out = subprocess.run([a.bitnet, "tokenize", "--model", model, "--no-bos", "--bench", str(a.reps), "-"],
                         input=text.encode("utf-8"), capture_output=True, check=True)
    ours = json.loads(out.stdout.decode().strip().splitlines()[-1])
    ids_out = subprocess.run([a.bitnet, "tokenize", "--model", model, "--no-bos", "-"],
                             input=text.encode("utf-8"), capture_output=True, check=True)
    our_ids = json.loads(ids_out.stdout)
    hf_mbs = nbytes / statistics.median(hf_times) / 1e6
    print(f"text: {nbytes} bytes (prose, code, CJK, emoji), {len(hf_ids)} tokens")
    print(f"HF tokenizers (single thread): {hf_mbs:8.2f} MB/s  (median of {a.reps})")
    print(f"bitnet tokenizer (1 thread):   {ours['mb_per_s']:8.2f} MB/s  (median of {ours['reps']})")
    print(f"same ids: {our_ids == hf_ids}")
    sys.exit(0 if our_ids == hf_ids else 1)


if __name__ == "__main__":
    main()
