#!/usr/bin/env python3
"""A vanilla Qwen3 GGUF (what upstream llama.cpp loads) with the shapes of
bitnet-embedding-0.6b: 28 layers of 1,024, 16 heads of 128 (8 KV heads), FFN 3,072, the Qwen2
tokenizer, last-token pooling; random F16 weights (or Q8_0 with --q8_0), no per-projection
norms. The baseline file for bench/embeddings.sh's llama-embedding rows: same arithmetic
shapes, llama.cpp's own (non-ternary) kernels.

    python3 bench/qwen3_same_shape.py VOCAB.gguf OUT.gguf [--layers 28]
Needs numpy and gguf (pip install gguf numpy); VOCAB.gguf is llama.cpp's
models/ggml-vocab-qwen2.gguf.
"""
import argparse

import numpy as np
import gguf


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("vocab")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=28)
    a = ap.parse_args()
    src = gguf.GGUFReader(a.vocab)
    field = lambda k: src.fields[k]  # noqa: E731
    tokens = [bytes(field("tokenizer.ggml.tokens").parts[i]).decode("utf-8") for i in field("tokenizer.ggml.tokens").data]
    types = [int(field("tokenizer.ggml.token_type").parts[i][0]) for i in field("tokenizer.ggml.token_type").data]
    merges = [bytes(field("tokenizer.ggml.merges").parts[i]).decode("utf-8") for i in field("tokenizer.ggml.merges").data]
    d, f, nh, nkv, hd, n_vocab = 1024, 3072, 16, 8, 128, len(tokens)
    w = gguf.GGUFWriter(a.out, "qwen3")
    w.add_name("qwen3-0.6b-shape-random")
    w.add_context_length(32768)
    w.add_embedding_length(d)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(f)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_pooling_type(gguf.PoolingType.LAST)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(151643)
    w.add_bos_token_id(151643)
    w.add_add_bos_token(False)
    rng = np.random.default_rng(1)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm(n):
        return (0.5 + rng.random(n, dtype=np.float32)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, d))
    for i in range(a.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(d))
        w.add_tensor(p + "attn_q.weight", mat(nh * hd, d))
        w.add_tensor(p + "attn_k.weight", mat(nkv * hd, d))
        w.add_tensor(p + "attn_v.weight", mat(nkv * hd, d))
        w.add_tensor(p + "attn_q_norm.weight", norm(hd))
        w.add_tensor(p + "attn_k_norm.weight", norm(hd))
        w.add_tensor(p + "attn_output.weight", mat(d, nh * hd))
        w.add_tensor(p + "ffn_norm.weight", norm(d))
        w.add_tensor(p + "ffn_gate.weight", mat(f, d))
        w.add_tensor(p + "ffn_up.weight", mat(f, d))
        w.add_tensor(p + "ffn_down.weight", mat(d, f))
    w.add_tensor("output_norm.weight", norm(d))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
