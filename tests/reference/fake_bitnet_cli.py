#!/usr/bin/env python3
"""A stand-in for the Rust `bitnet` CLI, built on the numpy reference, used ONLY to exercise
tests/test_reference_parity.py's harness before / without the real engine:

    BITNET_BIN=tests/reference/fake_bitnet_cli.py python -m pytest tests/test_reference_parity.py

Implements the CLI contract's `fixture`, `eval` and `generate` subcommands.  With
FAKE_BITNET_F32_RMS=1 its RMSNorm accumulates in f32 (8 lanes), which imitates an engine whose
summation order differs from the reference; with FAKE_BITNET_FLIP=1, `eval` on prompts longer
than 30 tokens rounds the reference's closest activation near-tie the other way.
It is not an engine and proves nothing about one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bitnet_ref as br  # noqa: E402
import synth  # noqa: E402

PRESETS = {
    "tiny": synth.SynthConfig(n_layer=2, dim=256, ffn=512, n_head=2, n_head_kv=1, vocab=128256, ctx=4096),
    "small": synth.SynthConfig(n_layer=4, dim=512, ffn=1536, n_head=4, n_head_kv=1, vocab=128256, ctx=4096),
}


def _rms_f32(x, w, eps):
    x = np.asarray(x, np.float32)
    acc = np.zeros((x.shape[0], 8), np.float32)
    for j in range(0, x.shape[1], 8):
        acc += x[:, j:j + 8] * x[:, j:j + 8]
    mean = (acc.sum(axis=1, dtype=np.float32) / np.float32(x.shape[1])).astype(np.float32)
    sc = (np.float32(1) / np.sqrt(mean + np.float32(eps))).astype(np.float32)
    y = (x * sc[:, None]).astype(np.float32)
    return (y * w).astype(np.float32) if w is not None else y


def main():
    if os.environ.get("FAKE_BITNET_F32_RMS") == "1":
        br.rmsnorm = _rms_f32
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("--preset", choices=list(PRESETS), required=True)
    f.add_argument("--type", choices=["i2_s", "tq2_0", "tq1_0", "f16"], required=True)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("-o", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--model", required=True)
    e.add_argument("--ids", required=True)
    e.add_argument("--logits-out", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", required=True)
    g.add_argument("--ids", required=True)
    g.add_argument("--max-tokens", type=int, default=16)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.cmd == "fixture":
        synth.write_model(a.o, PRESETS[a.preset], a.type, seed=a.seed)
        return
    ids = [int(t) for t in a.ids.split(",")]
    m = br.Model(a.model)
    if a.cmd == "eval":
        if os.environ.get("FAKE_BITNET_FLIP") == "1" and len(ids) > 30:
            # emulate an engine whose rounding went the other way at the closest near-tie
            t = m.near_ties(ids)[0]
            lg = m.logits(ids, flips={(t.layer, t.matmul, t.pos, t.index)})
        else:
            lg = m.logits(ids)
        lg.astype("<f4").tofile(a.logits_out)
    else:
        gen, _ = m.greedy(ids, a.max_tokens)
        print(json.dumps({"token_ids": gen, "text": ""}))


if __name__ == "__main__":
    main()
