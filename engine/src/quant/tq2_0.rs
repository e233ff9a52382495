//! TQ2_0, llama.cpp's 2-bit ternary type (ggml id 35): 256-weight blocks of 66 bytes,
//! `qs[64]` then an f16 scale `d`. In half h (weights 128h..128h+127) byte m of `qs[32h..]`
//! holds weights 128h + m + 32n at shift 2n (least significant first). Weight = (t - 1) * d.

use half::f16;

pub const BLOCK: usize = 256;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockTq2_0 {
    pub qs: [u8; 64],
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockTq2_0>() == 66);
pub const BLOCK_BYTES: usize = size_of::<BlockTq2_0>();

/// Packs ternary values (-1, 0, 1), 256 per block, with one scale per block.
pub fn pack(values: &[i8], block_scales: &[f16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / BLOCK * BLOCK_BYTES);
    for (chunk, d) in values.chunks_exact(BLOCK).zip(block_scales) {
        let mut qs = [0u8; 64];
        for (i, &v) in chunk.iter().enumerate() {
            let (h, r) = (i / 128, i % 128);
            qs[32 * h + r % 32] |= ((v + 1) as u8) << (2 * (r / 32));
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&d.to_le_bytes());
    }
    out
}

pub fn block_scale(block: &[u8]) -> f16 {
    f16::from_le_bytes([block[64], block[65]])
}

/// Decodes one block's trits (0, 1, 2, or the invalid 3) into `out[..256]`.
pub fn decode_block(block: &[u8], out: &mut [u8]) {
    for i in 0..BLOCK {
        let (h, r) = (i / 128, i % 128);
        out[i] = (block[32 * h + r % 32] >> (2 * (r / 32))) & 3;
    }
}

/// The specification: per-block exact integer dots `sum (t - 1) * q`, passed to `f` with
/// the block index.
pub fn dot_blocks_scalar(row: &[u8], q: &[i8], f: impl FnMut(usize, i32)) {
    super::dot_blocks_scalar(row, q, BLOCK_BYTES, decode_block, f)
}
