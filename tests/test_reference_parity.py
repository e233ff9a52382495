"""Engine-vs-reference parity: drives the Rust CLI (`bitnet`) and compares it with the
independent numpy reference in tests/reference/bitnet_ref.py.

    BITNET_BIN=target/release/bitnet python -m pytest tests/test_reference_parity.py -q

The engine binary must exist (CI builds it first); if it is missing every engine test FAILS.
Agreement rules: see tests/reference/criteria.py (all in units of std(reference logits)).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import bitnet_ref as br
import criteria
from criteria import REPORT_LINES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(os.environ.get("BITNET_BIN", "target/release/bitnet"))
if not BIN.is_absolute():
    BIN = REPO / BIN

PRESETS = ["tiny", "small"]
TYPES = ["i2_s", "tq2_0", "tq1_0"]
SEED = 1234
N_VOCAB = 128256
GREEDY_TOKENS = 16
NEAR_EXACT_MAJORITY = 0.75
FLIP_SEARCH = 16   # closest near-ties tried by the failure diagnostic
# Opt-in (default off, the strict rules apply): accept a case that fails the tolerance rules
# when the engine equals (near-exactly) the reference with one near-tie rounded the other way.
ALLOW_FLIP_EXPLAINED = os.environ.get("PARITY_ALLOW_FLIP_EXPLAINED") == "1"

_rng = np.random.default_rng(20240607)
PROMPTS = OrderedDict(
    one=[int(_rng.integers(0, 128000))],
    # "<|begin_of_text|>The capital of France is Paris. It is beautiful"
    sentence=[128000, 791, 6864, 315, 9822, 374, 12366, 13, 1102, 374, 6366],
    long=[int(t) for t in _rng.integers(0, 128000, 64)],
)
CASES = [(p, t, q) for p in PRESETS for t in TYPES for q in PROMPTS]
VARIANTS = {"silu": {"activation": "silu"}, "rope_adjacent": {"rope": "adjacent"},
            "no_sub_norm": {"sub_norm": False}}
# Reference options that are not mistakes: the engine runs with the matching option.
REF_OPTIONS = {**VARIANTS, "kv_f16": {"kv_f16": True}}


class EngineError(AssertionError):
    pass


class Harness:
    """Memoises every expensive step so tests can run in any order / subset."""

    def __init__(self, tmpdir: Path):
        self.dir = tmpdir
        self._models: dict = {}
        self._eng: dict = {}
        self._ref: dict = {}
        self._verdicts: dict = {}
        self._refmodels: OrderedDict = OrderedDict()
        self.timing: dict[str, float] = {}

    def _t(self, key, dt):
        self.timing[key] = self.timing.get(key, 0.0) + dt

    def run(self, args, timeout=300) -> subprocess.CompletedProcess:
        t0 = time.time()
        try:
            r = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout)
        finally:
            self._t("engine " + args[0], time.time() - t0)
        if r.returncode != 0:
            raise EngineError(f"`bitnet {' '.join(args)}` exited {r.returncode}\n"
                              f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}")
        return r

    def model(self, preset: str, typ: str) -> str:
        """The fixture of `typ`; `typ@head` is that fixture through `bitnet prepare --head`."""
        key = (preset, typ)
        if key not in self._models:
            out = self.dir / f"{preset}_{typ.replace('@', '_')}_s{SEED}.gguf"
            if "@" in typ:
                base, head = typ.split("@")
                self.run(["prepare", self.model(preset, base), "-o", str(out), "--head", head])
            else:
                self.run(["fixture", "--preset", preset, "--type", typ, "--seed", str(SEED), "-o", str(out)])
            assert out.is_file() and out.stat().st_size > 0, f"fixture did not write {out}"
            self._models[key] = str(out)
        return self._models[key]

    def engine_logits(self, preset, typ, prompt, kv="f32") -> np.ndarray:
        key = (preset, typ, prompt, kv)
        if key not in self._eng:
            out = self.dir / f"eng_{preset}_{typ}_{prompt}_{kv}.f32"
            ids = ",".join(map(str, PROMPTS[prompt]))
            self.run(["eval", "--model", self.model(preset, typ), "--ids", ids, "--logits-out", str(out),
                      "--kv", kv])
            lg = np.fromfile(out, dtype="<f4")
            assert lg.size == N_VOCAB, f"engine wrote {lg.size} logits, expected {N_VOCAB}"
            self._eng[key] = lg
        return self._eng[key]

    def engine_generate(self, preset, typ, prompt) -> list[int]:
        ids = ",".join(map(str, PROMPTS[prompt]))
        r = self.run(["generate", "--model", self.model(preset, typ), "--ids", ids,
                      "--max-tokens", str(GREEDY_TOKENS), "--temperature", "0", "--ignore-eos", "--json"])
        obj = None
        try:
            obj = json.loads(r.stdout)
        except json.JSONDecodeError:
            for line in reversed(r.stdout.strip().splitlines()):
                try:
                    obj = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
        if not isinstance(obj, dict) or "token_ids" not in obj:
            raise EngineError(f"generate --json printed no JSON object with token_ids:\n{r.stdout[-2000:]}")
        assert isinstance(obj.get("text"), str), "generate --json: missing `text`"
        return [int(t) for t in obj["token_ids"]]

    def ref_model(self, preset, typ, variant="") -> br.Model:
        key = (preset, typ, variant)
        m = self._refmodels.get(key)
        if m is None:
            t0 = time.time()
            m = br.Model(self.model(preset, typ), **REF_OPTIONS.get(variant, {}))
            self._t("reference load", time.time() - t0)
            self._refmodels[key] = m
            while len(self._refmodels) > 2:      # each holds an f32 copy of the output head
                self._refmodels.popitem(last=False)
        else:
            self._refmodels.move_to_end(key)
        return m

    def ref(self, preset, typ, prompt, variant=""):
        """(reference logits, near-ties) for a case."""
        key = (preset, typ, prompt, variant)
        if key not in self._ref:
            m = self.ref_model(preset, typ, variant)
            t0 = time.time()
            self._ref[key] = m.logits_and_ties(PROMPTS[prompt])
            self._t("reference forward", time.time() - t0)
        return self._ref[key]

    def verdict(self, preset, typ, prompt, variant="") -> criteria.Verdict:
        key = (preset, typ, prompt, variant)
        if key not in self._verdicts:
            lg, ties = self.ref(preset, typ, prompt, variant)
            kv = "f16" if variant == "kv_f16" else "f32"
            self._verdicts[key] = criteria.compare_logits(lg, self.engine_logits(preset, typ, prompt, kv), len(ties))
        return self._verdicts[key]


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    if not BIN.is_file() or not os.access(BIN, os.X_OK):
        pytest.fail(f"engine binary not found or not executable: {BIN}\n"
                    "Build it first (cargo build --release) or point BITNET_BIN at it.", pytrace=False)
    h = Harness(tmp_path_factory.mktemp("parity"))
    t0 = time.time()
    yield h
    REPORT_LINES.append(f"wall time in parity harness: {time.time() - t0:.1f}s; "
                        + ", ".join(f"{k}: {v:.1f}s" for k, v in sorted(h.timing.items())))


def _describe_ties(ties, n=5):
    return "\n".join("    near-tie " + str(t) for t in ties[:n]) or "    (no near-ties)"


# ------------------------------------------------------------------------- logits


@pytest.mark.parametrize("preset,typ,prompt", CASES)
def test_logits_agree(harness, preset, typ, prompt):
    v = harness.verdict(preset, typ, prompt)
    lg, ties = harness.ref(preset, typ, prompt)
    line = f"{preset:5s} {typ:6s} {prompt:8s} {v}"
    REPORT_LINES.append(line)
    if not v.near_exact:
        msg = (f"{preset}/{typ}/{prompt}: not near-exact; reference reports {len(ties)} activation "
               f"rounding near-ties (closest first):\n{_describe_ties(ties)}")
        print(msg)
        REPORT_LINES.append(msg)
    if v.ok:
        return
    # Diagnostic: does rounding ONE of the closest near-ties the other way reproduce the engine?
    # (On the random fixtures attention is nearly one-hot, so a single legitimate flip can move
    # the logits by whole std's; this tells an engine bug apart from a rounding tie.)
    expl = _flip_explanation(harness, preset, typ, prompt, ties)
    REPORT_LINES.append(f"    flip search: {expl or 'no single flip among the closest near-ties reproduces the engine'}")
    if expl and ALLOW_FLIP_EXPLAINED:
        return
    assert v.ok, line + "\n" + _describe_ties(ties) + f"\n    flip search: {expl}"


def _flip_explanation(harness, preset, typ, prompt, ties, k=FLIP_SEARCH):
    m = harness.ref_model(preset, typ)
    eng = harness.engine_logits(preset, typ, prompt)
    for t in ties[:k]:
        lg = m.logits(PROMPTS[prompt], flips={(t.layer, t.matmul, t.pos, t.index)})
        fv = criteria.compare_logits(lg, eng, 1)
        if fv.near_exact:
            return f"engine == reference with [{t}] rounded the other way (max|d|/std {fv.max_over_std:.2g})"
    return None


def test_near_exact_majority(harness):
    rows, n_exact = [], 0
    for preset in PRESETS:
        for typ in TYPES:
            vs = [harness.verdict(preset, typ, q) for q in PROMPTS]
            ne = sum(v.near_exact for v in vs)
            n_exact += ne
            rows.append(f"  {preset:5s} {typ:6s} | cases {len(vs)} | near-exact {ne} | "
                        f"max|d|/std {max(v.max_over_std for v in vs):.3g} | "
                        f"ok {sum(v.ok for v in vs)}")
    frac = n_exact / len(CASES)
    REPORT_LINES.append("summary (preset x type):")
    REPORT_LINES.extend(rows)
    REPORT_LINES.append(f"  near-exact {n_exact}/{len(CASES)} = {frac:.0%} (required >= {NEAR_EXACT_MAJORITY:.0%})")
    print("\n".join(rows))
    assert frac >= NEAR_EXACT_MAJORITY, f"only {n_exact}/{len(CASES)} cases near-exact"


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_engine_types_bit_identical(harness, preset, prompt):
    base = harness.engine_logits(preset, TYPES[0], prompt)
    for typ in TYPES[1:]:
        other = harness.engine_logits(preset, typ, prompt)
        assert base.tobytes() == other.tobytes(), (
            f"{preset}/{prompt}: engine logits differ between {TYPES[0]} and {typ} "
            f"(max |d| = {np.abs(base - other).max():.3g})")


@pytest.mark.parametrize("preset", PRESETS)
def test_fixture_types_hold_same_ternary_weights(harness, preset):
    """Independent decoding of the engine's fixture files: same codes and scales per tensor."""
    models = {t: harness.ref_model(preset, t) for t in TYPES}
    g = models[TYPES[0]].g
    names = [n for n, t in g.tensors.items() if t.type in (br.GGML_I2_S, br.GGML_TQ1_0, br.GGML_TQ2_0)]
    assert names, "fixture has no ternary tensors"
    for typ, m in models.items():
        assert m.g.tensors[names[0]].type == {"i2_s": 36, "tq2_0": 35, "tq1_0": 34}[typ]
    for name in names:
        ws = {t: m.W(name) for t, m in models.items()}
        base = ws[TYPES[0]]
        for typ, w in ws.items():
            assert np.array_equal(w.codes, base.codes), f"{name}: codes differ in {typ}"
            assert w.general_rows.size == 0, f"{name} ({typ}): rows with differing block scales"
            M = w.codes.shape[0]
            assert np.array_equal(np.broadcast_to(w.row_scale, (M,)), np.broadcast_to(base.row_scale, (M,))), \
                f"{name}: scales differ in {typ}"
        # a per-tensor scale: every row carries the same value
        assert np.unique(np.asarray(ws["tq2_0"].row_scale)).size <= 1
    for m in models.values():
        m._weights.clear()


# ------------------------------------------------------------------------- greedy


GREEDY_CASES = [(p, t, q) for p in PRESETS for t in TYPES for q in ("one", "sentence")]


@pytest.mark.parametrize("preset,typ,prompt", GREEDY_CASES)
def test_greedy_agrees(harness, preset, typ, prompt):
    ids = PROMPTS[prompt]
    eng = harness.engine_generate(preset, typ, prompt)
    m = harness.ref_model(preset, typ)
    t0 = time.time()
    ref_ids, margins, stds = m.greedy(ids, GREEDY_TOKENS, with_std=True)
    gv = criteria.compare_greedy(ref_ids, margins, stds, eng)
    fok, fmsgs = True, []
    if eng != ref_ids and len(eng) == GREEDY_TOKENS:
        # teacher-forced check along the engine's own path (covers the steps after a divergence)
        rows = m.head(m.forward(list(ids) + eng[:-1])[len(ids) - 1:])
        fok, fmsgs = criteria.check_forced(rows, eng)
    harness._t("reference greedy", time.time() - t0)
    line = f"greedy {preset:5s} {typ:6s} {prompt:8s}: {gv.message}"
    REPORT_LINES.append(line)
    for msg in fmsgs:
        REPORT_LINES.append("    teacher-forced " + msg)
    assert gv.ok, f"{line}\nengine    {eng}\nreference {ref_ids}"
    assert fok, f"{line}\n" + "\n".join(fmsgs)


# ------------------------------------------------------------------------- prepared heads

KV16_CASES = [(p, t, q) for p in PRESETS for t in ("i2_s", "tq1_0") for q in PROMPTS]


@pytest.mark.parametrize("preset,typ,prompt", KV16_CASES)
def test_f16_kv_cache_logits_agree(harness, preset, typ, prompt):
    """`--kv f16` against the reference that rounds every cached key and value to f16 (numpy's
    round-to-nearest-even, as the engine's), attention then on those values (float64 here, f32 in
    the engine)."""
    v = harness.verdict(preset, typ, prompt, "kv_f16")
    line = f"{preset:5s} {typ:6s} {prompt:8s} kv=f16 {v}"
    REPORT_LINES.append(line)
    assert v.ok, line


def test_f16_kv_cache_near_exact_majority(harness):
    """The teeth of the f16 cases: rounding the cache moves these logits by ~0.1 std (an engine
    that ignored `--kv f16` would still pass the tolerance), so most cases must be near-exact
    against the f16 reference, as the f32 cases are against the f32 one."""
    vs = [harness.verdict(p, t, q, "kv_f16") for p, t, q in KV16_CASES]
    frac = sum(v.near_exact for v in vs) / len(vs)
    REPORT_LINES.append(f"  kv=f16 near-exact {frac:.0%} (required >= {NEAR_EXACT_MAJORITY:.0%})")
    assert frac >= NEAR_EXACT_MAJORITY
    # And the f16 engine is not near-exact against the f32 reference: the option does something.
    lg, ties = harness.ref("small", "i2_s", "long")
    assert not criteria.compare_logits(lg, harness.engine_logits("small", "i2_s", "long", "f16"), len(ties)).near_exact


PREPARED = ["i2_s@q4_0", "i2_s@q6_k", "i2_s@q8_0"]


@pytest.mark.parametrize("preset,typ,prompt", [(p, t, q) for p in PRESETS for t in PREPARED
                                               for q in PROMPTS])
def test_prepared_head_logits_agree(harness, preset, typ, prompt):
    """`bitnet prepare --head q4_0|q6_k|q8_0` (tied embedding and head quantized, the engine's
    integer head kernels) against the reference reading the same file (its own Q4_0 / Q6_K /
    Q8_0 decoders, ggml's input quantization, float64 sums)."""
    v = harness.verdict(preset, typ, prompt)
    line = f"{preset:5s} {typ:10s} {prompt:8s} {v}"
    REPORT_LINES.append(line)
    assert v.ok, line


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("head", ["q4_0", "q8_0"])
def test_prepared_embedding_is_ggml_quantization(harness, preset, head):
    """The prepared tensor is what gguf-py's ggml quantizers make of the F16 embedding, byte
    for byte, and every other tensor is unchanged."""
    import gguf
    from gguf import GGMLQuantizationType as QT
    src = br.GGUFFile(harness.model(preset, "i2_s"))
    out = br.GGUFFile(harness.model(preset, f"i2_s@{head}"))
    qt = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0}[head]
    emb = br.decode_float(src, "token_embd.weight")
    want = gguf.quants.quantize(emb, qt)
    assert out.tensors["token_embd.weight"].type == int(qt)
    assert np.array_equal(out.raw("token_embd.weight"), want.reshape(-1))
    assert "output.weight" not in out.tensors
    assert set(out.tensors) == set(src.tensors)
    for name in src.tensors:
        if name != "token_embd.weight":
            assert np.array_equal(out.raw(name), src.raw(name)), name


@pytest.mark.parametrize("preset", PRESETS)
def test_prepared_q6_k_embedding_decodes_close_to_the_original(harness, preset):
    """gguf-py has no Q6_K quantizer: the prepared tensor, decoded by gguf-py, is within the
    type's error of the F16 embedding (an rms below plain 6-bit rounding's), and the reference's
    own decoder reads it identically."""
    import gguf
    from gguf import GGMLQuantizationType as QT
    src = br.GGUFFile(harness.model(preset, "i2_s"))
    out = br.GGUFFile(harness.model(preset, "i2_s@q6_k"))
    assert out.tensors["token_embd.weight"].type == int(QT.Q6_K)
    emb = br.decode_float(src, "token_embd.weight")
    got = gguf.quants.dequantize(out.raw("token_embd.weight").reshape(emb.shape[0], -1), QT.Q6_K)
    np.testing.assert_array_equal(br.decode_float(out, "token_embd.weight"), got)
    blocks = emb.reshape(-1, 16)
    step = np.abs(blocks).max(axis=1, keepdims=True) / 32
    err = (got.reshape(-1, 16) - blocks) / np.where(step > 0, step, 1)
    assert np.sqrt((err ** 2).mean()) < 1 / np.sqrt(12), np.sqrt((err ** 2).mean())
    assert "output.weight" not in out.tensors
    assert set(out.tensors) == set(src.tensors)
    for name in src.tensors:
        if name != "token_embd.weight":
            assert np.array_equal(out.raw(name), src.raw(name)), name


# ------------------------------------------------------------------------- batching


def _batched_generate(harness, preset, typ, prompts, prefill_chunk):
    batch = ";".join(",".join(map(str, PROMPTS[q])) for q in prompts)
    r = harness.run(["generate", "--model", harness.model(preset, typ), "--batch-ids", batch,
                     "--prefill-chunk", str(prefill_chunk), "--max-tokens", str(GREEDY_TOKENS),
                     "--temperature", "0", "--ignore-eos", "--json"])
    lines = [json.loads(l) for l in r.stdout.strip().splitlines() if l.startswith("{")]
    assert len(lines) == len(prompts), r.stdout
    return [[int(t) for t in o["token_ids"]] for o in lines]


@pytest.mark.parametrize("preset,typ", [(p, t) for p in PRESETS for t in TYPES])
def test_batched_greedy_is_the_solo_greedy_and_agrees_with_the_reference(harness, preset, typ):
    """Continuous batching: every prompt generated together (one forward pass per step, the
    64-token prompt read in chunks of 5 while the others decode) gives each prompt exactly the
    tokens it gets alone, and those pass the reference's greedy criteria."""
    prompts = ["sentence", "long", "one"]
    batched = _batched_generate(harness, preset, typ, prompts, prefill_chunk=5)
    for q, got in zip(prompts, batched):
        solo = harness.engine_generate(preset, typ, q)
        assert got == solo, f"{preset}/{typ}/{q}: batched {got} vs alone {solo}"
        m = harness.ref_model(preset, typ)
        ref_ids, margins, stds = m.greedy(PROMPTS[q], GREEDY_TOKENS, with_std=True)
        gv = criteria.compare_greedy(ref_ids, margins, stds, got)
        REPORT_LINES.append(f"batched greedy {preset:5s} {typ:6s} {q:8s}: {gv.message}")
        assert gv.ok, f"{preset}/{typ}/{q}: {gv.message}\nengine    {got}\nreference {ref_ids}"


# ------------------------------------------------------------------------- teeth


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_teeth_wrong_reference_fails(harness, variant):
    """A deliberately wrong reference must fail the same criteria on at least one case."""
    seen = []
    for preset in PRESETS:
        for prompt in ["long", "sentence", "one"]:
            typ = TYPES[0]
            v = harness.verdict(preset, typ, prompt, variant)
            seen.append(f"{preset}/{typ}/{prompt}: {v}")
            if not v.ok:
                REPORT_LINES.append(f"teeth {variant}: fails as it must on {seen[-1]}")
                return
    pytest.fail(f"reference variant {variant!r} passes the agreement criteria on every case; "
                "the criteria have no teeth:\n" + "\n".join(seen))


# ------------------------------------------------------------------------- no engine needed


def test_criteria_selfcheck():
    """The criteria function on synthetic arrays (runs without the engine)."""
    rng = np.random.default_rng(1)
    ref = (rng.standard_normal(N_VOCAB) * 2).astype(np.float32)
    std = ref.astype(np.float64).std()
    assert criteria.compare_logits(ref, ref + np.float32(1e-6), 0).near_exact
    flipped = ref + (rng.standard_normal(N_VOCAB) * 0.02 * std).astype(np.float32)
    flipped[np.argmax(ref)] += np.float32(0.05 * std)
    assert not criteria.compare_logits(ref, flipped, 0).ok          # needs a near-tie
    assert criteria.compare_logits(ref, flipped, 2).ok
    assert not criteria.compare_logits(ref, ref + (rng.standard_normal(N_VOCAB) * 0.5 * std).astype(np.float32), 9).ok
    assert not criteria.compare_logits(ref, -ref, 9).ok
