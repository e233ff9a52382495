"""Embedding-model parity: `bitnet embed` (the Rust engine) against the independent numpy
reference in tests/reference/embed_ref.py, on synthetic `embed-tiny` files in the layout of
Microsoft's converter, for every ternary type; and the teeth: a reference with one wrong
choice (no per-projection norms, head size from width / heads, mean pooling, adjacent RoPE)
must disagree.

    BITNET_BIN=target/release/bitnet python -m pytest tests/test_embedding_parity.py -q

Measured agreement: max |engine - reference| ~1e-8 per component (the same W1.58A8
arithmetic; the threshold below leaves room for an activation rounding the other way).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import embed_ref as er

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("BITNET_BIN", "target/release/bitnet"))
if not BIN.is_absolute():
    BIN = REPO / BIN

TYPES = ["i2_s", "tq2_0", "tq1_0"]
SEED = 77
EOS = 151643
_rng = np.random.default_rng(20261207)
INPUTS = {
    "eos": [EOS],
    "sentence": [785, 6722, 315, 9625, 374, 12095, 13, EOS],   # "The capital of France is Paris."
    "long": [int(t) for t in _rng.integers(0, 151000, 60)] + [EOS],
}
MAX_ABS = 1e-3
MIN_COS = 0.99999


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    out = {}
    for t in TYPES:
        p = d / f"embed-tiny-{t}.gguf"
        subprocess.run([str(BIN), "fixture", "--preset", "embed-tiny", "--type", t, "--seed", str(SEED),
                        "-o", str(p)], check=True, capture_output=True, timeout=300)
        out[t] = p
    return out


def engine(path, ids):
    r = subprocess.run([str(BIN), "embed", "--model", str(path), "--ids", ",".join(map(str, ids)), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["tokens"] == len(ids)
    return np.array(v["embedding"], dtype=np.float64)


@pytest.mark.parametrize("typ", TYPES)
@pytest.mark.parametrize("name", list(INPUTS))
def test_embeddings_agree_with_the_reference(files, typ, name):
    ids = INPUTS[name]
    e = engine(files[typ], ids)
    r = er.EmbeddingModel(str(files[typ])).embed(ids).astype(np.float64)
    assert e.shape == r.shape == (256,)
    assert abs(np.linalg.norm(e) - 1) < 1e-5
    assert np.abs(e - r).max() <= MAX_ABS and e @ r >= MIN_COS, (np.abs(e - r).max(), e @ r)


@pytest.mark.parametrize("name", list(INPUTS))
def test_every_type_gives_the_same_vector(files, name):
    vs = [engine(files[t], INPUTS[name]) for t in TYPES]
    for v in vs[1:]:
        assert np.array_equal(v, vs[0])


@pytest.mark.parametrize("variant", [{"proj_norms": False}, {"head_dim": 64}, {"pooling": "mean"},
                                     {"rope": "adjacent"}])
def test_teeth_a_wrong_reference_disagrees(files, variant):
    ids = INPUTS["sentence"]
    e = engine(files["i2_s"], ids)
    wrong = er.EmbeddingModel(str(files["i2_s"]), **variant).embed(ids).astype(np.float64)
    assert e @ wrong < 0.99 and np.abs(e - wrong).max() > 10 * MAX_ABS, variant
