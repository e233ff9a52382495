"""Independent numpy reference of the BitNet embedding model (`bitnet-embedding-0.6b`),
written from microsoft/BitNet's `docs/bitnet-embeddings-qwen3-gguf-conversion.md`:

- a Qwen3 decoder (architecture `qwen3`): head size from `attention.key_length` (128, not
  width / heads), per-head RMSNorm of q and k (`attn_q_norm`, `attn_k_norm`) before NEOX
  RoPE (base 1e6), grouped-query causal attention, SiLU-gated FFN, RMSNorm eps 1e-6;
- every projection a BitLinear with its own RMSNorm in front (`x -> RMSNorm(x, norm_in) ->
  int8 per token -> ternary matmul`): `attn_{q,k,v}_norm_in` on the attention block's normed
  input, `attn_output_norm_in` on the attention output, `ffn_{gate,up}_norm_in` on the FFN
  block's normed input, `ffn_down_norm_in` on silu(gate) * up;
- no output head: the final-normed hidden state of the last token (the appended
  `<|endoftext|>`) is the embedding, L2-normalised.

The GGUF reading, tensor decoding, BitLinear and RMSNorm arithmetic are bitnet_ref's (the
W1.58A8 arithmetic is the same as 2B4T's). Variants that must NOT agree with the engine
(the parity test's teeth): `proj_norms=False`, `head_dim=64`, `pooling="mean"`,
`rope="adjacent"`.
"""
from __future__ import annotations

import math

import numpy as np

import bitnet_ref as br


class EmbeddingModel:
    def __init__(self, path: str, proj_norms: bool = True, head_dim: int | None = None,
                 pooling: str = "last", rope: str = "neox"):
        self.g = g = br.GGUFFile(path)
        md = g.metadata
        arch = md.get("general.architecture")
        if arch != "qwen3":
            raise br.GGUFError(f"not an embedding model: architecture {arch!r}")
        p = "qwen3."
        self.dim = int(md[p + "embedding_length"])
        self.n_layer = int(md[p + "block_count"])
        self.n_head = int(md[p + "attention.head_count"])
        self.n_head_kv = int(md.get(p + "attention.head_count_kv", self.n_head))
        file_hd = int(md.get(p + "attention.key_length", self.dim // self.n_head))
        self.head_dim = head_dim or file_hd
        self.file_head_dim = file_hd
        self.eps = float(md.get(p + "attention.layer_norm_rms_epsilon", 1e-6))
        self.rope_base = float(md.get(p + "rope.freq_base", 1e6))
        self.n_vocab = int(g.tensors["token_embd.weight"].dims[1])
        self.proj_norms, self.pooling, self.rope = proj_norms, pooling, rope
        self._w: dict = {}

    def W(self, name):
        if name not in self._w:
            self._w[name] = br.TernaryWeight(*br.decode_ternary(self.g, name))
        return self._w[name]

    def norm(self, name):
        return np.asarray(br.decode_float(self.g, name), dtype=np.float32).reshape(-1)

    def _rope(self, x, positions):
        """x: [T, H, hd]; NEOX pairs (i, i + hd/2), theta_i = pos * base^(-2i/hd), the angle
        built as llama.cpp does (repeated f32 multiplication)."""
        hd = x.shape[2]
        half = hd // 2
        scale = np.float32(self.rope_base ** (-2.0 / hd))
        theta = positions.astype(np.float32)
        cos = np.empty((len(positions), half), np.float32)
        sin = np.empty((len(positions), half), np.float32)
        for i in range(half):
            cos[:, i] = np.cos(theta.astype(np.float64)).astype(np.float32)
            sin[:, i] = np.sin(theta.astype(np.float64)).astype(np.float32)
            theta = (theta * scale).astype(np.float32)
        if self.rope == "neox":
            i0 = np.arange(half)
            i1 = i0 + half
        else:
            i0 = np.arange(half) * 2
            i1 = i0 + 1
        c, s = cos[:, None, :], sin[:, None, :]
        out = x.copy()
        out[:, :, i0] = (x[:, :, i0] * c - x[:, :, i1] * s).astype(np.float32)
        out[:, :, i1] = (x[:, :, i0] * s + x[:, :, i1] * c).astype(np.float32)
        return out

    def _head_norm(self, x, w):
        """RMSNorm over each head's values; x [T, H, hd]."""
        T, H, hd = x.shape
        w = w[:hd]
        return br.rmsnorm(x.reshape(T * H, hd), w, self.eps).reshape(T, H, hd)

    def _proj(self, h, pre, name, norm_in):
        if self.proj_norms:
            h = br.rmsnorm(h, self.norm(pre + norm_in + ".weight"), self.eps)
        return br.bitlinear(h, self.W(pre + name + ".weight"))

    def embed(self, ids) -> np.ndarray:
        ids = np.asarray(list(ids), dtype=np.int64)
        T = len(ids)
        emb = br.decode_float(self.g, "token_embd.weight").reshape(-1, self.dim)
        x = np.asarray(emb[ids], dtype=np.float32)
        hd, nkv = self.head_dim, self.n_head_kv
        q_width = self.n_head * self.file_head_dim
        nh = q_width // hd
        nkv = nkv * self.file_head_dim // hd
        grp = nh // nkv
        positions = np.arange(T)
        for l in range(self.n_layer):
            pre = f"blk.{l}."
            h = br.rmsnorm(x, self.norm(pre + "attn_norm.weight"), self.eps)
            Q = self._proj(h, pre, "attn_q", "attn_q_norm_in").reshape(T, nh, hd)
            K = self._proj(h, pre, "attn_k", "attn_k_norm_in").reshape(T, nkv, hd)
            V = self._proj(h, pre, "attn_v", "attn_v_norm_in").reshape(T, nkv, hd)
            Q = self._head_norm(Q, self.norm(pre + "attn_q_norm.weight"))
            K = self._head_norm(K, self.norm(pre + "attn_k_norm.weight"))
            Q = self._rope(Q, positions)
            K = self._rope(K, positions)
            Q64 = Q.astype(np.float64).reshape(T, nkv, grp, hd)
            sc = np.einsum("tkgd,skd->kgts", Q64, K.astype(np.float64)) / math.sqrt(hd)
            mask = positions[:, None] < positions[None, :]
            sc = np.where(mask[None, None], -np.inf, sc)
            sc = sc - sc.max(axis=-1, keepdims=True)
            pr = np.exp(sc)
            pr /= pr.sum(axis=-1, keepdims=True)
            att = np.einsum("kgts,skd->tkgd", pr, V.astype(np.float64))
            att = att.reshape(T, nh * hd).astype(np.float32)
            att = br.rmsnorm(att, self.norm(pre + "attn_output_norm_in.weight"), self.eps)
            x = (x + br.bitlinear(att, self.W(pre + "attn_output.weight"))).astype(np.float32)

            h = br.rmsnorm(x, self.norm(pre + "ffn_norm.weight"), self.eps)
            gate = self._proj(h, pre, "ffn_gate", "ffn_gate_norm_in")
            up = self._proj(h, pre, "ffn_up", "ffn_up_norm_in")
            sig = (1.0 / (1.0 + np.exp(-gate.astype(np.float64)))).astype(np.float32)
            f = ((gate * sig) * up).astype(np.float32)
            f = br.rmsnorm(f, self.norm(pre + "ffn_down_norm_in.weight"), self.eps)
            x = (x + br.bitlinear(f, self.W(pre + "ffn_down.weight"))).astype(np.float32)
        xn = br.rmsnorm(x, self.norm("output_norm.weight"), self.eps)
        pooled = xn[-1] if self.pooling == "last" else xn.mean(axis=0)
        pooled = pooled.astype(np.float64)
        return (pooled / np.linalg.norm(pooled)).astype(np.float32)
