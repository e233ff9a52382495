"""Agreement criteria between engine logits and reference logits.

All thresholds are expressed in units of std = std(reference logits) (float64, population std).

compare_logits(ref, eng, n_near_ties):
  * fail if shapes differ or the engine produced a non-finite value;
  * d = eng - ref (float64);
  * NEAR-EXACT  if max|d| <= 1e-4 * std                        -> ok;
  * otherwise ok only if ALL of
      rms|d|                       <= 0.2  * std,
      max|d|                       <= 1.0  * std,
      ref.max() - ref[argmax(eng)] <= 0.25 * std,
      n_near_ties >= 1  (the reference found at least one activation whose x*s lies
                         within tie tolerance of a .5 rounding boundary, which can make an
                         f32 engine legitimately round the other way); pass None to skip
                         this last rule (unit tests only).

compare_greedy(ref_ids, ref_margins, ref_stds, eng_ids): equal, or the first divergence happens
  at a step where the reference's top-2 margin < 0.25 * std of that step's reference logits.

check_forced(ref_logits_rows, eng_ids): teacher-forced check along the engine's own path:
  at every step, the engine's token must be the reference argmax or have a reference logit
  within 0.25 std of the reference max.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EXACT_TOL = 1e-4
RMS_TOL = 0.2
MAX_TOL = 1.0
ARGMAX_TOL = 0.25
MARGIN_TOL = 0.25

# Lines appended here by tests are printed in pytest's terminal summary (tests/conftest.py).
REPORT_LINES: list[str] = []


@dataclass
class Verdict:
    ok: bool
    near_exact: bool
    std: float = float("nan")
    max_over_std: float = float("nan")
    rms_over_std: float = float("nan")
    argmax_gap_over_std: float = float("nan")
    same_argmax: bool = False
    n_near_ties: int | None = None
    reasons: list = field(default_factory=list)

    def __str__(self):
        kind = "near-exact" if self.near_exact else ("tolerated" if self.ok else "FAIL")
        s = (f"{kind}: max|d|/std={self.max_over_std:.3g} rms|d|/std={self.rms_over_std:.3g} "
             f"argmax_gap/std={self.argmax_gap_over_std:.3g} same_argmax={self.same_argmax} "
             f"near_ties={self.n_near_ties}")
        if self.reasons:
            s += " reasons: " + "; ".join(self.reasons)
        return s


def compare_logits(ref, eng, n_near_ties: int | None = None, *, exact_tol=EXACT_TOL,
                   rms_tol=RMS_TOL, max_tol=MAX_TOL, argmax_tol=ARGMAX_TOL) -> Verdict:
    ref = np.asarray(ref, dtype=np.float64).reshape(-1)
    eng = np.asarray(eng, dtype=np.float64).reshape(-1)
    if ref.shape != eng.shape:
        return Verdict(False, False, reasons=[f"shape mismatch ref {ref.shape} engine {eng.shape}"])
    if not np.all(np.isfinite(eng)):
        return Verdict(False, False, reasons=["engine logits contain NaN/Inf"])
    if not np.all(np.isfinite(ref)):
        return Verdict(False, False, reasons=["reference logits contain NaN/Inf"])
    std = float(ref.std())
    if not std > 0:
        return Verdict(False, False, std=std, reasons=["reference logits have zero std"])
    d = eng - ref
    mx = float(np.abs(d).max()) / std
    rms = float(np.sqrt(np.mean(d * d))) / std
    ea = int(np.argmax(eng))
    gap = float(ref.max() - ref[ea]) / std
    v = Verdict(ok=False, near_exact=False, std=std, max_over_std=mx, rms_over_std=rms,
                argmax_gap_over_std=gap, same_argmax=ea == int(np.argmax(ref)),
                n_near_ties=n_near_ties)
    if mx <= exact_tol:
        v.ok = v.near_exact = True
        return v
    if rms > rms_tol:
        v.reasons.append(f"rms|d| = {rms:.3g} std > {rms_tol}")
    if mx > max_tol:
        v.reasons.append(f"max|d| = {mx:.3g} std > {max_tol}")
    if gap > argmax_tol:
        v.reasons.append(f"engine argmax {ea} is {gap:.3g} std below the reference max > {argmax_tol}")
    if n_near_ties is not None and n_near_ties < 1:
        v.reasons.append("not near-exact and the reference found no activation rounding near-tie")
    v.ok = not v.reasons
    return v


@dataclass
class GreedyVerdict:
    ok: bool
    diverged_at: int | None
    message: str


def compare_greedy(ref_ids, ref_margins, ref_stds, eng_ids, margin_tol=MARGIN_TOL) -> GreedyVerdict:
    ref_ids, eng_ids = list(ref_ids), list(eng_ids)
    if len(eng_ids) != len(ref_ids):
        return GreedyVerdict(False, None, f"engine produced {len(eng_ids)} tokens, reference {len(ref_ids)}")
    for i, (a, b) in enumerate(zip(ref_ids, eng_ids)):
        if a != b:
            m = ref_margins[i] / ref_stds[i]
            msg = (f"diverged at step {i}: reference {a}, engine {b}; reference top-2 margin "
                   f"{ref_margins[i]:.4g} = {m:.3g} std (tolerance {margin_tol})")
            return GreedyVerdict(m < margin_tol, i, msg)
    return GreedyVerdict(True, None, "identical")


def check_forced(ref_rows, eng_ids, tol=ARGMAX_TOL):
    """ref_rows[i]: reference logits predicting engine token i (teacher-forced on the engine's
    own continuation). Returns (ok, list of messages)."""
    ok, msgs = True, []
    for i, (row, t) in enumerate(zip(ref_rows, eng_ids)):
        row = np.asarray(row, dtype=np.float64)
        am = int(np.argmax(row))
        if am == t:
            continue
        gap = (row[am] - row[t]) / row.std()
        good = gap <= tol
        ok &= good
        msgs.append(f"step {i}: engine {t}, reference argmax {am}, gap {gap:.3g} std"
                    f" ({'tolerated' if good else 'FAIL'})")
    return ok, msgs
