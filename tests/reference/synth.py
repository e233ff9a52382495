"""Test-only helpers: write small synthetic BitNet GGUF files.

* F32 / F16 / TQ2_0 / TQ1_0 files are written with the PyPI `gguf` package's GGUFWriter
  (TQ packing by `gguf.quants.quantize`, an implementation independent of ours).
* I2_S files (ggml type 36, unknown to the `gguf` package) are written with the minimal
  GGUF writer below; the I2_S packer follows docs/bitnet-format.md section 2.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

ARCH = "bitnet-b1.58"

# metadata value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
        BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


def _enc_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _enc_value(vt: int, v, elem_type: int | None = None) -> bytes:
    if vt in _FMT:
        return struct.pack(_FMT[vt], v)
    if vt == STR:
        return _enc_str(v)
    if vt == ARR:
        et, items = v if elem_type is None else (elem_type, v)
        out = struct.pack("<IQ", et, len(items))
        for it in items:
            out += _enc_value(et, it)   # nested arrays: it = (elem_type, items)
        return out
    raise ValueError(vt)


def write_gguf(path, kvs, tensors, version: int = 3, alignment: int | None = None):
    """Minimal GGUF writer.
    kvs: list of (key, value_type, value); arrays as (key, ARR, (elem_type, [items])).
    tensors: list of (name, dims (ne0 first), ggml_type, raw bytes)."""
    align = alignment or 32
    kvs = list(kvs)
    if alignment is not None:
        kvs.append(("general.alignment", U32, alignment))
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)))
    for k, vt, v in kvs:
        out += _enc_str(k) + struct.pack("<I", vt) + _enc_value(vt, v)
    offs, cur = [], 0
    for name, dims, tt, data in tensors:
        offs.append(cur)
        cur += len(data)
        cur = (cur + align - 1) // align * align
    for (name, dims, tt, data), off in zip(tensors, offs):
        out += _enc_str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", tt, off)
    out += b"\0" * ((-len(out)) % align)
    base = len(out)
    for (name, dims, tt, data), off in zip(tensors, offs):
        out += b"\0" * (base + off - len(out))
        out += bytes(data)
    out += b"\0" * ((-len(out)) % align)
    with open(path, "wb") as f:
        f.write(out)


def pack_i2s(codes: np.ndarray, scale: float, pad: bytes | None = None) -> bytes:
    """codes int [M, K] in {-1,0,1} -> M*K/4 bytes + f32 scale + 28 padding bytes.
    Per 128-weight block (32 bytes): byte p holds weights p, p+32, p+64, p+96 in bits
    7:6, 5:4, 3:2, 1:0; code = weight + 1."""
    M, K = codes.shape
    assert K % 128 == 0
    c = (codes.astype(np.int16) + 1).astype(np.uint8).reshape(M, K // 128, 4, 32)
    packed = (c[:, :, 0] << 6) | (c[:, :, 1] << 4) | (c[:, :, 2] << 2) | c[:, :, 3]
    if pad is None:
        pad = bytes(range(0xA0, 0xA0 + 28))   # garbage: the reader must ignore it
    return packed.astype(np.uint8).tobytes() + struct.pack("<f", scale) + pad


@dataclass
class SynthConfig:
    n_layer: int = 2
    dim: int = 256
    ffn: int = 512
    n_head: int = 4
    n_head_kv: int = 1
    vocab: int = 1024
    rope_base: float = 500000.0
    eps: float = 1e-5
    ctx: int = 512


def make_weights(cfg: SynthConfig, seed: int, zero_frac: float = 1 / 3):
    """Random ternary projections (codes + one f16-representable scale per tensor),
    random non-unit F32 norms, F16 embedding."""
    rng = np.random.default_rng(seed)
    d, f = cfg.dim, cfg.ffn
    hd = d // cfg.n_head
    kvd = hd * cfg.n_head_kv
    W = {"token_embd.weight": rng.standard_normal((cfg.vocab, d)).astype(np.float16),
         "output_norm.weight": rng.uniform(0.5, 1.5, d).astype(np.float32)}
    T = {}
    for l in range(cfg.n_layer):
        p = f"blk.{l}."
        for n, size in (("attn_norm", d), ("ffn_norm", d), ("attn_sub_norm", d), ("ffn_sub_norm", f)):
            W[p + n + ".weight"] = rng.uniform(0.5, 1.5, size).astype(np.float32)
        for n, (M, K) in (("attn_q", (d, d)), ("attn_k", (kvd, d)), ("attn_v", (kvd, d)),
                          ("attn_output", (d, d)), ("ffn_gate", (f, d)), ("ffn_up", (f, d)),
                          ("ffn_down", (d, f))):
            pnz = 1 - zero_frac
            codes = rng.choice(np.array([-1, 0, 1], np.int8), size=(M, K),
                               p=[pnz / 2, zero_frac, pnz / 2])
            scale = float(np.float16(rng.uniform(0.5, 2.0)))
            T[p + n + ".weight"] = (codes, scale)
    return W, T


def _meta(cfg: SynthConfig):
    hd = cfg.dim // cfg.n_head
    return [
        ("block_count", U32, cfg.n_layer), ("embedding_length", U32, cfg.dim),
        ("feed_forward_length", U32, cfg.ffn), ("attention.head_count", U32, cfg.n_head),
        ("attention.head_count_kv", U32, cfg.n_head_kv), ("rope.dimension_count", U32, hd),
        ("rope.freq_base", F32, cfg.rope_base), ("attention.layer_norm_rms_epsilon", F32, cfg.eps),
        ("context_length", U32, cfg.ctx), ("vocab_size", U32, cfg.vocab),
    ]


def write_model(path, cfg: SynthConfig, fmt: str, seed: int = 0, weights=None,
                version: int = 3, alignment: int | None = None, arch: str = ARCH):
    """fmt in f32, f16, tq2_0, tq1_0 (via gguf.GGUFWriter) or i2_s (own writer)."""
    W, T = weights if weights is not None else make_weights(cfg, seed)
    if fmt == "i2_s":
        kvs = [("general.architecture", STR, arch), ("general.name", STR, "synthetic")]
        kvs += [(arch + "." + k, vt, v) for k, vt, v in _meta(cfg)]
        tensors = []
        for name, arr in W.items():
            tt = 1 if arr.dtype == np.float16 else 0
            tensors.append((name, tuple(reversed(arr.shape)), tt, arr.tobytes()))
        for name, (codes, scale) in T.items():
            M, K = codes.shape
            tensors.append((name, (K, M), 36, pack_i2s(codes, scale)))
        write_gguf(path, kvs, tensors, version=version, alignment=alignment)
        return
    import gguf
    from gguf import GGMLQuantizationType as QT
    w = gguf.GGUFWriter(str(path), arch=arch)
    for k, vt, v in _meta(cfg):
        key = arch + "." + k
        if vt == U32:
            w.add_uint32(key, v)
        else:
            w.add_float32(key, v)
    w.add_string("general.name", "synthetic")
    for name, arr in W.items():
        w.add_tensor(name, arr)
    for name, (codes, scale) in T.items():
        dense = codes.astype(np.float32) * np.float32(scale)
        if fmt == "f32":
            w.add_tensor(name, dense)
        elif fmt == "f16":
            w.add_tensor(name, dense.astype(np.float16))
        elif fmt in ("tq2_0", "tq1_0"):
            qt = QT.TQ2_0 if fmt == "tq2_0" else QT.TQ1_0
            w.add_tensor(name, gguf.quants.quantize(dense, qt), raw_dtype=qt)
        else:
            raise ValueError(fmt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
