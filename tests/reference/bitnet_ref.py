#!/usr/bin/env python3
"""Independent numpy reference of the BitNet b1.58 forward pass.

Written only from docs/bitnet-format.md (shared docs), with its own GGUF decoder.
It is deliberately independent of the Rust engine under engine/.

Numerics (chosen to mirror what an f32 engine does, and documented so that the
parity test can reason about differences):

* Every activation tensor is stored as float32 (f32 "KV cache" included).
* RMSNorm: sum of the f32 squares accumulated in float64 (as ggml does), mean rounded
  to f32, scale = 1/sqrt(mean+eps) in f32, y = (x*scale)*w in f32.
* BitLinear (doc section 4), per token row, for every ternary projection:
      amax = max(1e-5, max|x|)             f32
      s    = f32(127) / amax               f32
      q    = clip(rint(x*s), -128, 127)    x*s in f32, round half to even
      D    = sum_k code_k * q_k            exact integer
      y    = (f32(D) / s) * scale          f32, in that order
  D is computed with a float32 BLAS matmul of integer-valued operands: every product
  and every partial sum is an integer of magnitude <= 128*K < 2**24, hence exact
  regardless of summation order (asserted; a self-test checks against int64).
* Per-block scales (TQ1_0 / TQ2_0 store an f16 `d` per 256-weight block): the doc
  only states the per-row activation rule (it says the rule holds "inside every
  ternary matmul") and gives the output rule for one weight scale.  We therefore use:
    - if, within an output row, every block that has at least one non-zero code
      carries the same d (always the case for files whose quantizer writes one
      per-tensor scale into every block, e.g. the project's synthetic fixtures and
      any real BitNet checkpoint converted with a per-tensor scale), the exact form
      y = (f32(D_row) / s) * d in f32, identical to I2_S;
    - otherwise (genuinely different block scales in one row) the natural
      generalisation y = f32( sum_b f64(D_b) * f64(d_b) / f64(s) ), accumulated in
      float64 and rounded once.  This branch is NOT specified by the doc.
* RoPE angles follow the doc's note on llama.cpp: theta_scale = f32(base^(-2/n_rot)),
  theta_0 = f32(pos), theta_{i+1} = f32(theta_i * theta_scale); cos/sin rounded to
  f32; rotation in f32.
* Attention (scores, causal softmax, weighted sum of V) is computed in float64 from
  the f32 q/K/V and rounded to f32 once. (The engine's runs in f32, in one order on every
  CPU: it differs from this by f32 rounding, which now and then rounds an activation
  near-tie the other way; criteria.py tolerates such cases, and most stay near-exact.)
* Output head: f32 matmul of the f16 (tied) embedding converted to f32.
"""
from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------
# GGUF parsing
# --------------------------------------------------------------------------------------

GGUF_MAGIC = b"GGUF"

# metadata value types
T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
_SCALAR_FMT = {
    T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i",
    T_F32: "<f", T_BOOL: "<?", T_U64: "<Q", T_I64: "<q", T_F64: "<d",
}
_SCALAR_NP = {
    T_U8: "<u1", T_I8: "<i1", T_U16: "<u2", T_I16: "<i2", T_U32: "<u4", T_I32: "<i4",
    T_F32: "<f4", T_BOOL: "<u1", T_U64: "<u8", T_I64: "<i8", T_F64: "<f8",
}

# ggml tensor types we know the size of
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_Q6_K, GGML_BF16 = 0, 1, 2, 8, 14, 30
GGML_TQ1_0, GGML_TQ2_0, GGML_I2_S = 34, 35, 36
TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 8: "Q8_0", 14: "Q6_K", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 36: "I2_S"}
# (block size in weights, bytes per block)
_BLOCK = {GGML_F32: (1, 4), GGML_F16: (1, 2), GGML_BF16: (1, 2), GGML_Q4_0: (32, 18), GGML_Q8_0: (32, 34), GGML_Q6_K: (256, 210),
          GGML_TQ1_0: (256, 54), GGML_TQ2_0: (256, 66)}


class GGUFError(ValueError):
    pass


@dataclass
class TensorInfo:
    name: str
    dims: tuple[int, ...]        # ne0 first (ne0 = contiguous / input dimension)
    type: int
    offset: int                  # relative to the data section
    abs_offset: int = 0
    nbytes: int = 0

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64)) if self.dims else 1


def tensor_nbytes(dims: tuple[int, ...], ttype: int) -> int:
    n = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if ttype == GGML_I2_S:
        # M*K/4 packed codes, one f32 scale, 28 padding bytes
        if n % 4:
            raise GGUFError(f"I2_S tensor with {n} elements (not a multiple of 4)")
        return n // 4 + 32
    if ttype not in _BLOCK:
        raise GGUFError(f"unsupported ggml type {ttype}")
    bs, bb = _BLOCK[ttype]
    if dims and dims[0] % bs:
        raise GGUFError(f"row length {dims[0]} not a multiple of block size {bs} for type {ttype}")
    return n // bs * bb


class GGUFFile:
    """Minimal GGUF v2/v3 (little-endian) reader backed by a read-only numpy memmap."""

    def __init__(self, path: str):
        self.path = path
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")
        buf = memoryview(self.mm)
        self._buf = buf
        if bytes(buf[0:4]) != GGUF_MAGIC:
            raise GGUFError(f"{path}: not a GGUF file (magic {bytes(buf[0:4])!r})")
        (self.version,) = struct.unpack_from("<I", buf, 4)
        if self.version not in (2, 3):
            if struct.unpack_from(">I", buf, 4)[0] in (2, 3):
                raise GGUFError("big-endian GGUF is not supported")
            raise GGUFError(f"unsupported GGUF version {self.version}")
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        off = 24
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, int] = {}
        for _ in range(n_kv):
            key, off = self._read_str(off)
            (vt,) = struct.unpack_from("<I", buf, off)
            off += 4
            val, off = self._read_value(vt, off)
            self.metadata[key] = val
            self.metadata_types[key] = vt
        self.tensors: dict[str, TensorInfo] = {}
        for _ in range(n_tensors):
            name, off = self._read_str(off)
            (nd,) = struct.unpack_from("<I", buf, off)
            off += 4
            dims = struct.unpack_from(f"<{nd}Q", buf, off)
            off += 8 * nd
            ttype, toff = struct.unpack_from("<IQ", buf, off)
            off += 12
            if name in self.tensors:
                raise GGUFError(f"duplicate tensor {name}")
            self.tensors[name] = TensorInfo(name, tuple(int(d) for d in dims), ttype, toff)
        align = int(self.metadata.get("general.alignment", 32))
        if align <= 0 or align & (align - 1):
            raise GGUFError(f"bad alignment {align}")
        self.alignment = align
        self.data_offset = (off + align - 1) // align * align
        for t in self.tensors.values():
            t.abs_offset = self.data_offset + t.offset
            try:
                t.nbytes = tensor_nbytes(t.dims, t.type)
            except GGUFError:
                t.nbytes = -1
            if t.offset % align:
                raise GGUFError(f"tensor {t.name} offset {t.offset} not aligned to {align}")
            if t.nbytes > 0 and t.abs_offset + t.nbytes > len(self.mm):
                raise GGUFError(f"tensor {t.name} runs past the end of the file")

    def _read_str(self, off: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._buf, off)
        off += 8
        return bytes(self._buf[off:off + n]).decode("utf-8", errors="replace"), off + n

    def _read_value(self, vt: int, off: int):
        buf = self._buf
        if vt in _SCALAR_FMT:
            fmt = _SCALAR_FMT[vt]
            (v,) = struct.unpack_from(fmt, buf, off)
            return v, off + struct.calcsize(fmt)
        if vt == T_STR:
            return self._read_str(off)
        if vt == T_ARR:
            et, n = struct.unpack_from("<IQ", buf, off)
            off += 12
            if et in _SCALAR_NP:
                dt = np.dtype(_SCALAR_NP[et])
                arr = np.frombuffer(buf, dtype=dt, count=n, offset=off).copy()
                if et == T_BOOL:
                    arr = arr.astype(bool)
                return arr.tolist(), off + n * dt.itemsize
            if et == T_STR:
                out = []
                unpack = struct.unpack_from
                raw = buf
                for _ in range(n):
                    (ln,) = unpack("<Q", raw, off)
                    off += 8
                    out.append(bytes(raw[off:off + ln]).decode("utf-8", errors="replace"))
                    off += ln
                return out, off
            out = []
            for _ in range(n):
                v, off = self._read_value(et, off)
                out.append(v)
            return out, off
        raise GGUFError(f"unknown metadata value type {vt}")

    def raw(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        if t.nbytes < 0:
            raise GGUFError(f"tensor {name}: unsupported type {t.type}")
        return self.mm[t.abs_offset:t.abs_offset + t.nbytes]


# --------------------------------------------------------------------------------------
# Tensor decoding
# --------------------------------------------------------------------------------------

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _np_shape(dims) -> tuple[int, ...]:
    return tuple(reversed(dims)) if dims else (1,)


def decode_float(g: GGUFFile, name: str) -> np.ndarray:
    """Decode F32/F16/BF16/Q4_0/Q6_K/Q8_0 to a float32 array of numpy shape reversed(dims)."""
    t = g.tensors[name]
    raw = g.raw(name)
    shape = _np_shape(t.dims)
    if t.type == GGML_F32:
        return raw.view("<f4").reshape(shape)  # zero-copy view
    if t.type == GGML_F16:
        return raw.view("<f2").astype(np.float32).reshape(shape)
    if t.type == GGML_BF16:
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if t.type == GGML_Q8_0:
        b = raw.reshape(-1, 34)
        d = b[:, :2].copy().view("<f2").astype(np.float32)
        q = b[:, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(shape)
    if t.type == GGML_Q4_0:
        d, q = decode_q4_0(raw)
        return (d * q.astype(np.float32)).reshape(shape)
    if t.type == GGML_Q6_K:
        d, q = decode_q6_k(raw)
        return (d * q.astype(np.float32)).reshape(shape)
    if t.type in (GGML_TQ1_0, GGML_TQ2_0, GGML_I2_S):
        codes, scales = decode_ternary(g, name)
        return (codes.astype(np.float32) * scales_to_dense(codes.shape, scales)).reshape(shape)
    raise GGUFError(f"tensor {name}: cannot decode type {t.type}")


def decode_q4_0(raw: np.ndarray):
    """Q4_0 blocks -> (scales [blocks, 1] f32, values [blocks, 32] int8): byte j of a block's
    16 holds value j in its low nibble and value j + 16 in its high one, each code - 8."""
    b = raw.reshape(-1, 18)
    d = b[:, :2].copy().view("<f2").astype(np.float32)
    qs = b[:, 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int8) - 8
    return d, q


def decode_q6_k(raw: np.ndarray):
    """Q6_K super-blocks -> (scales [blocks * 16, 1] f32 = d * scale of each group of 16,
    values [blocks * 16, 16] int8 = code - 32). Per half of 128 values: ql (64 bytes) holds
    value j's low four bits in the low nibble of byte j for j < 64, in the high nibble of byte
    j - 64 after; bits 2(j // 32) .. +2 of qh byte j % 32 are its high two."""
    b = raw.reshape(-1, 210)
    n = b.shape[0]
    ql, qh = b[:, :128].reshape(n, 2, 64), b[:, 128:192].reshape(n, 2, 32)
    sc = b[:, 192:208].copy().view(np.int8).astype(np.float32)
    d = b[:, 208:210].copy().view("<f2").astype(np.float32)
    j = np.arange(128)
    low = np.where(j < 64, ql[:, :, j % 64] & 15, ql[:, :, j % 64] >> 4)
    high = (qh[:, :, j % 32] >> (2 * (j // 32)).astype(np.uint8)) & 3
    q = ((low | (high << 4)).astype(np.int16) - 32).astype(np.int8).reshape(n * 16, 16)
    return (d * sc).reshape(-1, 1), q


def quantize_q8_blocks(x: np.ndarray):
    """ggml's Q8_0 rule for a vector (the engine's input to a Q4_0 / Q8_0 head): per block of 32,
    d = max|x| / 127 in f32, q = x * (1/d) rounded half away from zero."""
    xb = np.asarray(x, np.float32).reshape(-1, 32)
    d = (np.abs(xb).max(axis=1) / np.float32(127)).astype(np.float32)
    inv = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    v = (xb * inv[:, None]).astype(np.float32)
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int32)
    return d, q


def scales_to_dense(shape, scales) -> np.ndarray:
    """Expand scales (scalar or per-256-block [M, K/256]) to a dense [M, K] float32."""
    M, K = shape
    s = np.asarray(scales, dtype=np.float32)
    if s.ndim == 0:
        return np.full((M, K), s, dtype=np.float32)
    return np.repeat(s, K // s.shape[1], axis=1)


def decode_i2s_codes(raw: np.ndarray, M: int, K: int) -> tuple[np.ndarray, np.float32]:
    """Doc section 2: rows of 128-weight blocks of 32 bytes; weight j of a block lives
    in byte j%32 at shift 6-2*(j//32); code 0,1,2 -> -1,0,+1; f32 scale after codes."""
    if K % 128:
        raise GGUFError(f"I2_S row length {K} not a multiple of 128")
    n = M * K // 4
    packed = np.asarray(raw[:n]).reshape(M, K // 128, 32)
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 1, 4, 1)
    c = (packed[:, :, None, :] >> shifts) & 3           # [M, nb, 4 (j//32), 32 (j%32)]
    if np.any(c == 3):
        raise GGUFError("I2_S code 3 found")
    codes = (c.astype(np.int8) - 1).reshape(M, K)
    scale = np.asarray(raw[n:n + 4]).copy().view("<f4")[0]
    return codes, np.float32(scale)


def decode_tq2_codes(raw: np.ndarray, M: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Doc section 3: 66-byte blocks qs[64], d(f16). In half h byte m of qs[32h..]
    holds weight 128h + m + 32n at shift 2n."""
    nb = K // 256
    b = np.asarray(raw).reshape(M, nb, 66)
    qs = b[:, :, :64].reshape(M, nb, 2, 1, 32)          # [.., h, n, m]
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 1, 4, 1)
    t = (qs >> shifts) & 3                               # [M, nb, h, n, m] -> weight 128h+32n+m
    if np.any(t == 3):
        raise GGUFError("TQ2_0 code 3 found")
    codes = (t.astype(np.int8) - 1).reshape(M, K)
    d = b[:, :, 64:66].copy().view("<f2").reshape(M, nb).astype(np.float32)
    return codes, d


def _trits(bytes_: np.ndarray, n: int) -> np.ndarray:
    """Trits of base-3 packed bytes: trit i = ((u8)(b*3^i) as u16 * 3) >> 8 (wrapping u8 mul)."""
    out = []
    for i in range(n):
        m = (bytes_.astype(np.uint16) * int(_POW3[i])) & 0xFF
        out.append(((m * 3) >> 8).astype(np.int8))
    return np.stack(out, axis=-2)                        # [..., n, bytes]


def decode_tq1_codes(raw: np.ndarray, M: int, K: int) -> tuple[np.ndarray, np.ndarray]:
    """Doc section 3: 54-byte blocks qs[48], qh[4], d(f16).
    qs[0..32] byte m: weights m+32n (n=0..4); qs[32..48] byte m: 160+m+16n;
    qh[j]: 240+j+4n (n=0..3)."""
    nb = K // 256
    b = np.asarray(raw).reshape(M, nb, 54)
    t0 = _trits(b[:, :, 0:32], 5).reshape(M, nb, 160)    # index 32n+m
    t1 = _trits(b[:, :, 32:48], 5).reshape(M, nb, 80)    # index 16n+m
    t2 = _trits(b[:, :, 48:52], 4).reshape(M, nb, 16)    # index 4n+j
    t = np.concatenate([t0, t1, t2], axis=2)
    if np.any(t > 2):
        raise GGUFError("TQ1_0 trit > 2 found")
    codes = (t - 1).astype(np.int8).reshape(M, K)
    d = b[:, :, 52:54].copy().view("<f2").reshape(M, nb).astype(np.float32)
    return codes, d


def decode_ternary(g: GGUFFile, name: str):
    """Return (codes int8 [M, K] in {-1,0,1}, scales) where scales is an np.float32 scalar
    (I2_S, or a float tensor that is exactly ternary*one scale) or a float32 [M, K/256]
    array of per-block scales (TQ1_0/TQ2_0)."""
    t = g.tensors[name]
    if len(t.dims) != 2:
        raise GGUFError(f"{name}: expected a 2-D tensor, got dims {t.dims}")
    K, M = t.dims
    raw = g.raw(name)
    if t.type == GGML_I2_S:
        return decode_i2s_codes(raw, M, K)
    if t.type == GGML_TQ2_0:
        return decode_tq2_codes(raw, M, K)
    if t.type == GGML_TQ1_0:
        return decode_tq1_codes(raw, M, K)
    w = np.asarray(decode_float(g, name), dtype=np.float32)
    scale = np.float32(np.abs(w).max()) if w.size else np.float32(0)
    if scale == 0:
        return np.zeros((M, K), np.int8), np.float32(0)
    codes = np.rint(w / scale)
    if not (np.all(np.abs(codes) <= 1) and np.array_equal(codes.astype(np.float32) * scale, w)):
        raise GGUFError(f"{name}: float projection is not ternary * one scale; "
                        "BitLinear reference needs ternary weights")
    return codes.astype(np.int8), scale


# --------------------------------------------------------------------------------------
# BitLinear
# --------------------------------------------------------------------------------------

class TernaryWeight:
    def __init__(self, codes: np.ndarray, scales):
        self.codes = codes                               # int8 [M, K]
        self.M, self.K = codes.shape
        if 128 * self.K >= 2 ** 24:
            raise ValueError("K too large for the exact f32 integer matmul")
        self.codes_f32 = codes.astype(np.float32)
        s = np.asarray(scales, dtype=np.float32)
        self.general_rows = np.zeros(0, dtype=np.int64)
        if s.ndim == 0:
            self.row_scale = s                           # scalar
            self.block_scales = None
        else:
            nb = s.shape[1]
            bs = self.K // nb
            nz = np.any(codes.reshape(self.M, nb, bs) != 0, axis=2)   # blocks that contribute
            big = np.where(nz, s, -np.inf).max(axis=1)
            small = np.where(nz, s, np.inf).min(axis=1)
            any_nz = nz.any(axis=1)
            uniform = ~any_nz | (big == small)
            self.row_scale = np.where(any_nz, big, np.float32(0)).astype(np.float32)
            self.general_rows = np.nonzero(~uniform)[0]
            self.block_scales = s
            self.block_size = bs

    def dense(self) -> np.ndarray:
        return self.codes.astype(np.float32) * scales_to_dense(
            self.codes.shape, self.row_scale if self.block_scales is None else self.block_scales)


def quantize_activations(x: np.ndarray):
    """x: f32 [T, K] -> (q f32 integer-valued [T, K], s f32 [T], v = x*s f32 [T, K])."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.maximum(np.abs(x).max(axis=1), np.float32(1e-5)).astype(np.float32)
    s = (np.float32(127.0) / amax).astype(np.float32)
    v = (x * s[:, None]).astype(np.float32)
    q = np.clip(np.rint(v), -128, 127).astype(np.float32)
    return q, s, v


def bitlinear_q(q: np.ndarray, s: np.ndarray, w: TernaryWeight) -> np.ndarray:
    """Apply a ternary weight to already-quantised activations (q, s). Returns f32 [T, M]."""
    D = q @ w.codes_f32.T                                # exact integers (see module doc)
    y = (D / s[:, None]).astype(np.float32)
    y = (y * w.row_scale).astype(np.float32)
    if w.general_rows.size:
        # rows whose non-zero blocks carry different scales: sum_b D_b * d_b / s in f64
        r = w.general_rows
        nb = w.block_scales.shape[1]
        bs = w.block_size
        qb = q.astype(np.float64).reshape(q.shape[0], nb, bs).transpose(1, 0, 2)       # [nb, T, bs]
        cb = w.codes[r].astype(np.float64).reshape(len(r), nb, bs).transpose(1, 2, 0)  # [nb, bs, R]
        Db = np.matmul(qb, cb)                                                          # [nb, T, R]
        acc = np.einsum("btr,rb->tr", Db, w.block_scales[r].astype(np.float64))
        y[:, r] = (acc / s.astype(np.float64)[:, None]).astype(np.float32)
    return y


def bitlinear(x: np.ndarray, w: TernaryWeight) -> np.ndarray:
    q, s, _ = quantize_activations(x)
    return bitlinear_q(q, s, w)


def rmsnorm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    sq = (x * x).astype(np.float64).sum(axis=1)
    mean = (sq / x.shape[1]).astype(np.float32)
    scale = (np.float32(1.0) / np.sqrt(mean + np.float32(eps))).astype(np.float32)
    y = (x * scale[:, None]).astype(np.float32)
    if w is not None:
        y = (y * w).astype(np.float32)
    return y


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------

ARCHES = ("bitnet-b1.58", "bitnet-25", "bitnet")

# Near-tie windows, in units of x*s (the row's largest |x*s| is 127).  An element is a
# near-tie when |frac(x*s) - 0.5| < TIE_REL*|x*s| + TIE_ABS (TIE_ABS_WO for the attention
# output's quantisation): an f32 engine that differs from this reference only by summation
# order / exp / rounding details can then round it the other way.  The windows come from
# a measurement (re-running this reference with f32 RMSNorm sums on random 4x512 models):
# before the first rounding flip, |delta(x*s)| stayed below ~2e-4 for the qkv / gate_up /
# down inputs, but reached ~1e-2 for the attention output, because the random ternary
# fixtures have very large attention scores (hundreds), which turn relative score errors
# of 1e-7 into relative softmax-weight errors of ~1e-4.  Windows are ~5x those maxima.
TIE_REL = 1e-4
TIE_ABS = 1e-3
TIE_ABS_WO = 5e-2


@dataclass
class Config:
    arch: str
    n_layer: int
    dim: int
    ffn: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_rot: int
    rope_base: float
    eps: float
    ctx: int
    n_vocab: int


@dataclass
class NearTie:
    layer: int
    matmul: str       # which activation quantisation: qkv, wo, gate_up, down
    pos: int          # absolute token position
    index: int        # element index inside the row
    value: float      # x*s (f32)
    dist: float       # |frac(x*s) - 0.5|
    closeness: float = 0.0   # dist / window (0 = exactly on the boundary, 1 = window edge)

    def __str__(self):
        return (f"layer {self.layer} {self.matmul} pos {self.pos} idx {self.index}: "
                f"x*s = {self.value:.7f} (|frac-0.5| = {self.dist:.2e})")


class Model:
    def __init__(self, path: str, activation: str = "relu2", rope: str = "neox",
                 sub_norm: bool = True, cache_embedding: bool = True, kv_f16: bool = False):
        if activation not in ("relu2", "silu"):
            raise ValueError("activation must be relu2 or silu")
        if rope not in ("neox", "adjacent"):
            raise ValueError("rope must be neox or adjacent")
        self.activation, self.rope_mode, self.sub_norm = activation, rope, bool(sub_norm)
        # An f16 KV cache: each cached key and value rounded to the nearest f16 (ties to even).
        self.kv_f16 = bool(kv_f16)
        self.g = g = GGUFFile(path)
        md = g.metadata
        arch = md.get("general.architecture")
        if arch not in ARCHES:
            raise GGUFError(f"unsupported architecture {arch!r}")
        p = arch + "."
        emb = g.tensors["token_embd.weight"]
        dim = int(md[p + "embedding_length"])
        if emb.dims[0] != dim:
            raise GGUFError(f"token_embd ne0 {emb.dims[0]} != embedding_length {dim}")
        n_head = int(md[p + "attention.head_count"])
        n_head_kv = int(md.get(p + "attention.head_count_kv", n_head))
        head_dim = dim // n_head
        self.cfg = Config(
            arch=arch, n_layer=int(md[p + "block_count"]), dim=dim,
            ffn=int(md[p + "feed_forward_length"]), n_head=n_head, n_head_kv=n_head_kv,
            head_dim=head_dim, n_rot=int(md.get(p + "rope.dimension_count", head_dim)),
            rope_base=float(md.get(p + "rope.freq_base", 500000.0)),
            eps=float(md.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
            ctx=int(md.get(p + "context_length", 4096)), n_vocab=int(emb.dims[1]),
        )
        c = self.cfg
        if n_head % n_head_kv or dim % n_head or c.n_rot % 2 or c.n_rot > head_dim:
            raise GGUFError(f"inconsistent attention config {c}")
        if emb.type not in (GGML_F16, GGML_F32, GGML_BF16, GGML_Q4_0, GGML_Q6_K, GGML_Q8_0):
            raise GGUFError(f"token_embd type {emb.type} not supported")
        self._emb_cache = None
        self._cache_embedding = cache_embedding
        self._weights: dict[str, TernaryWeight] = {}
        self._norms: dict[str, np.ndarray] = {}
        self.has_output = "output.weight" in g.tensors
        self._theta_scale = np.float32(c.rope_base ** (-2.0 / c.n_rot))

    # ---- weights (decoded lazily) ----
    def W(self, name: str) -> TernaryWeight:
        w = self._weights.get(name)
        if w is None:
            w = TernaryWeight(*decode_ternary(self.g, name))
            self._weights[name] = w
        return w

    def norm(self, name: str) -> np.ndarray:
        w = self._norms.get(name)
        if w is None:
            w = np.asarray(decode_float(self.g, name), dtype=np.float32).reshape(-1).copy()
            self._norms[name] = w
        return w

    def embed(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.n_vocab):
            raise ValueError(f"token id out of range [0, {self.cfg.n_vocab})")
        t = self.g.tensors["token_embd.weight"]
        if t.type in (GGML_F16, GGML_F32):
            dt = "<f2" if t.type == GGML_F16 else "<f4"
            raw = self.g.raw("token_embd.weight").view(dt).reshape(self.cfg.n_vocab, self.cfg.dim)
            return raw[ids].astype(np.float32)
        if not self.has_output:
            return np.asarray(self._head_matrix()[ids], dtype=np.float32)
        table = decode_float(self.g, "token_embd.weight").reshape(-1, self.cfg.dim)
        return np.asarray(table[ids], dtype=np.float32)

    def _head_matrix(self) -> np.ndarray:
        if self._emb_cache is None:
            name = "output.weight" if self.has_output else "token_embd.weight"
            m = decode_float(self.g, name).reshape(-1, self.cfg.dim)
            m = np.ascontiguousarray(m, dtype=np.float32)
            if not self._cache_embedding:
                return m
            self._emb_cache = m
        return self._emb_cache

    def _quantized_head(self):
        """(int codes [n_vocab, groups, n], scales [n_vocab, groups], n) of a Q4_0 / Q8_0 head
        (groups of n = 32 values) or a Q6_K one (n = 16; scale = d * the group's scale)."""
        if getattr(self, "_qhead", None) is None:
            name = "output.weight" if self.has_output else "token_embd.weight"
            t, raw = self.g.tensors[name], self.g.raw(name)
            n = 32
            if t.type == GGML_Q4_0:
                d, q = decode_q4_0(raw)
            elif t.type == GGML_Q6_K:
                d, q = decode_q6_k(raw)
                n = 16
            else:
                b = raw.reshape(-1, 34)
                d = b[:, :2].copy().view("<f2").astype(np.float32)
                q = b[:, 2:].copy().view(np.int8)
            ng = self.cfg.dim // n
            self._qhead = (q.reshape(-1, ng, n).astype(np.int32), d.reshape(-1, ng), n)
        return self._qhead

    def head(self, xn: np.ndarray) -> np.ndarray:
        """xn: final-normed hidden [T, dim] f32 -> logits [T, n_vocab] f32."""
        name = "output.weight" if self.has_output else "token_embd.weight"
        if self.g.tensors[name].type in (GGML_Q4_0, GGML_Q6_K, GGML_Q8_0):
            # As the engine: the input quantized to 8 bits per block of 32 (ggml's Q8_0 rule),
            # exact integer dots per group of values sharing a weight scale, scaled by the
            # weight group's and the input block's scales.
            q, dw, n = self._quantized_head()
            out = []
            for row in np.asarray(xn, dtype=np.float32):
                dx, qx = quantize_q8_blocks(row)
                isum = np.einsum("vgj,gj->vg", q, qx.reshape(-1, n))
                dxg = np.repeat(dx.astype(np.float64), 32 // n)
                out.append((isum * (dw.astype(np.float64) * dxg)).sum(axis=1))
            return np.stack(out).astype(np.float32)
        H = self._head_matrix()
        xn = np.asarray(xn, dtype=np.float32)
        # one matrix-vector product per row, so a position's logits do not depend on how
        # many positions are computed together (BLAS gemm vs gemv summation order)
        return np.stack([H @ row for row in xn]).astype(np.float32)

    # ---- rope ----
    def _rope_tables(self, positions: np.ndarray):
        half = self.cfg.n_rot // 2
        theta = positions.astype(np.float32)
        cos = np.empty((len(positions), half), np.float32)
        sin = np.empty((len(positions), half), np.float32)
        for i in range(half):
            cos[:, i] = np.cos(theta.astype(np.float64)).astype(np.float32)
            sin[:, i] = np.sin(theta.astype(np.float64)).astype(np.float32)
            theta = (theta * self._theta_scale).astype(np.float32)
        return cos, sin

    def _rope(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        """x: [T, H, head_dim] f32; cos/sin [T, n_rot/2]."""
        half = self.cfg.n_rot // 2
        out = x.copy()
        c = cos[:, None, :]
        s = sin[:, None, :]
        if self.rope_mode == "neox":
            i0 = np.arange(half)
            i1 = i0 + half
        else:
            i0 = np.arange(half) * 2
            i1 = i0 + 1
        x0 = x[:, :, i0]
        x1 = x[:, :, i1]
        out[:, :, i0] = (x0 * c - x1 * s).astype(np.float32)
        out[:, :, i1] = (x0 * s + x1 * c).astype(np.float32)
        return out

    # ---- forward ----
    def new_cache(self):
        return {"pos": 0, "k": [None] * self.cfg.n_layer, "v": [None] * self.cfg.n_layer}

    def forward(self, ids, cache=None, record: list | None = None, flips=None,
                tie_rel: float = TIE_REL, tie_abs: float = TIE_ABS,
                tie_abs_wo: float = TIE_ABS_WO) -> np.ndarray:
        """Run tokens `ids` (appending to `cache` if given). Returns the final normed hidden
        states [T, dim] f32 (apply self.head for logits). `record`, when a list, receives
        NearTie entries for every activation with |frac(x*s)-0.5| < tie_rel*|x*s| + tie_abs
        (tie_abs_wo instead of tie_abs for the attention output's quantisation; see TIE_*).
        `flips`: set of (layer, matmul, pos, index) whose rounding is forced the other way
        (for experiments: simulates an engine whose rounding went the other way)."""
        c = self.cfg
        if cache is None:
            cache = self.new_cache()
        ids = list(ids)
        T = len(ids)
        pos0 = cache["pos"]
        positions = np.arange(pos0, pos0 + T)
        cos, sin = self._rope_tables(positions)
        x = self.embed(ids)
        hd, nh, nkv = c.head_dim, c.n_head, c.n_head_kv
        grp = nh // nkv
        L = c.n_layer

        def quant(layer, name, h):
            q, s, v = quantize_activations(h)
            if flips:
                for (fl, fn, fp, fi) in flips:
                    if fl == layer and fn == name and pos0 <= fp < pos0 + T:
                        t = fp - pos0
                        vv = float(v[t, fi])
                        cur = q[t, fi]
                        alt = math.floor(vv) if cur == math.ceil(vv) else math.ceil(vv)
                        q[t, fi] = np.float32(min(127, max(-128, alt)))
            if record is not None:
                v64 = v.astype(np.float64)
                dist = np.abs(v64 - np.floor(v64) - 0.5)
                win = tie_rel * np.abs(v64) + (tie_abs_wo if name == "wo" else tie_abs)
                mask = dist < win
                for t, i in zip(*np.nonzero(mask)):
                    record.append(NearTie(layer, name, int(pos0 + t), int(i),
                                          float(v[t, i]), float(dist[t, i]),
                                          float(dist[t, i] / win[t, i])))
            return q, s

        for l in range(L):
            pre = f"blk.{l}."
            h = rmsnorm(x, self.norm(pre + "attn_norm.weight"), c.eps)
            q8, s = quant(l, "qkv", h)
            Q = bitlinear_q(q8, s, self.W(pre + "attn_q.weight")).reshape(T, nh, hd)
            K = bitlinear_q(q8, s, self.W(pre + "attn_k.weight")).reshape(T, nkv, hd)
            V = bitlinear_q(q8, s, self.W(pre + "attn_v.weight")).reshape(T, nkv, hd)
            Q = self._rope(Q, cos, sin)
            K = self._rope(K, cos, sin)
            if self.kv_f16:
                K = K.astype(np.float16).astype(np.float32)
                V = V.astype(np.float16).astype(np.float32)
            if cache["k"][l] is None:
                cache["k"][l], cache["v"][l] = K, V
            else:
                cache["k"][l] = np.concatenate([cache["k"][l], K], axis=0)
                cache["v"][l] = np.concatenate([cache["v"][l], V], axis=0)
            Kall = cache["k"][l].astype(np.float64)           # [S, nkv, hd]
            Vall = cache["v"][l].astype(np.float64)
            S = Kall.shape[0]
            Q64 = Q.astype(np.float64).reshape(T, nkv, grp, hd)
            sc = np.einsum("tkgd,skd->kgts", Q64, Kall) / math.sqrt(hd)   # [nkv, grp, T, S]
            mask = positions[:, None] < np.arange(S)[None, :]            # key after query
            sc = np.where(mask[None, None], -np.inf, sc)
            sc = sc - sc.max(axis=-1, keepdims=True)
            p = np.exp(sc)
            p /= p.sum(axis=-1, keepdims=True)
            att = np.einsum("kgts,skd->tkgd", p, Vall).reshape(T, nh * hd).astype(np.float32)
            if self.sub_norm:
                att = rmsnorm(att, self.norm(pre + "attn_sub_norm.weight"), c.eps)
            q8, s = quant(l, "wo", att)
            x = (x + bitlinear_q(q8, s, self.W(pre + "attn_output.weight"))).astype(np.float32)

            h = rmsnorm(x, self.norm(pre + "ffn_norm.weight"), c.eps)
            q8, s = quant(l, "gate_up", h)
            gte = bitlinear_q(q8, s, self.W(pre + "ffn_gate.weight"))
            up = bitlinear_q(q8, s, self.W(pre + "ffn_up.weight"))
            if self.activation == "relu2":
                r = np.maximum(gte, np.float32(0))
                f = ((r * r) * up).astype(np.float32)
            else:
                sig = (1.0 / (1.0 + np.exp(-gte.astype(np.float64)))).astype(np.float32)
                f = ((gte * sig) * up).astype(np.float32)
            if self.sub_norm:
                f = rmsnorm(f, self.norm(pre + "ffn_sub_norm.weight"), c.eps)
            q8, s = quant(l, "down", f)
            x = (x + bitlinear_q(q8, s, self.W(pre + "ffn_down.weight"))).astype(np.float32)

        cache["pos"] = pos0 + T
        if record is not None:
            # Near-ties that cannot influence the last position's output are dropped: in the
            # last layer only the k/v inputs of earlier positions matter.
            last = pos0 + T - 1
            record[:] = [r for r in record
                         if not (r.layer == L - 1 and r.pos < last and r.matmul != "qkv")]
            record.sort(key=lambda r: r.closeness)
        return rmsnorm(x, self.norm("output_norm.weight"), c.eps)

    # ---- public API ----
    def logits(self, ids, **kw) -> np.ndarray:
        """Logits of the last position, float32 [n_vocab]."""
        xn = self.forward(ids, **kw)
        return self.head(xn[-1:])[0]

    def all_logits(self, ids, **kw) -> np.ndarray:
        return self.head(self.forward(ids, **kw))

    def near_ties(self, ids, **tie_kw) -> list[NearTie]:
        rec: list[NearTie] = []
        self.forward(ids, record=rec, **tie_kw)
        return rec

    def logits_and_ties(self, ids, **tie_kw):
        """(last-position logits, near-ties sorted closest first)."""
        rec: list[NearTie] = []
        xn = self.forward(ids, record=rec, **tie_kw)
        return self.head(xn[-1:])[0], rec

    def greedy(self, ids, n: int, with_std: bool = False):
        """Greedy continuation of n tokens using the KV cache. Returns (generated_ids,
        top2_margins) or, with with_std, (generated_ids, margins, logit_stds)."""
        cache = self.new_cache()
        xn = self.forward(ids, cache=cache)
        lg = self.head(xn[-1:])[0]
        out, margins, stds = [], [], []
        for step in range(n):
            top = int(np.argmax(lg))
            l64 = lg.astype(np.float64)
            second = np.partition(l64, -2)[-2] if l64.size > 1 else -np.inf
            margins.append(float(l64[top] - second))
            stds.append(float(l64.std()))
            out.append(top)
            if step + 1 < n:
                xn = self.forward([top], cache=cache)
                lg = self.head(xn[-1:])[0]
        if with_std:
            return out, margins, stds
        return out, margins


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="numpy reference BitNet b1.58 forward pass")
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="comma-separated token ids")
    ap.add_argument("--logits-out", help="write last-position logits as raw little-endian f32")
    ap.add_argument("--greedy", type=int, default=0, help="generate N tokens greedily")
    ap.add_argument("--activation", choices=["relu2", "silu"], default="relu2")
    ap.add_argument("--rope", choices=["neox", "adjacent"], default="neox")
    ap.add_argument("--no-sub-norm", action="store_true")
    ap.add_argument("--near-ties", action="store_true", help="report activation rounding near-ties")
    a = ap.parse_args(argv)
    ids = [int(t) for t in a.ids.split(",") if t.strip()]
    m = Model(a.model, activation=a.activation, rope=a.rope, sub_norm=not a.no_sub_norm)
    res: dict[str, Any] = {"n_vocab": m.cfg.n_vocab, "prompt_ids": ids}
    if a.near_ties:
        lg, ties = m.logits_and_ties(ids)
        res["near_ties"] = [str(t) for t in ties[:50]]
        res["n_near_ties"] = len(ties)
    else:
        lg = m.logits(ids)
    res["argmax"] = int(np.argmax(lg))
    if a.logits_out:
        lg.astype("<f4").tofile(a.logits_out)
    if a.greedy:
        gen, margins = m.greedy(ids, a.greedy)
        res["token_ids"] = gen
        res["margins"] = margins
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
