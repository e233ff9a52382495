//! TQ1_0, llama.cpp's 1.6-bit ternary type (ggml id 34): 256-weight blocks of 54 bytes,
//! `qs[48]`, `qh[4]`, f16 `d`. Base 3, five trits per byte: `qs[0..32]` byte m holds weights
//! m + 32n (n = 0..4), `qs[32..48]` byte m holds 160 + m + 16n, `qh[j]` holds 240 + j + 4n
//! (n = 0..3, then a 0 trit). A byte stores `ceil(v * 256 / 243)` with
//! `v = sum t_n * 3^(4-n)`; trit n decodes as `((u8)(b * 3^n) as u16 * 3) >> 8`.

use half::f16;

pub const BLOCK: usize = 256;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockTq1_0 {
    pub qs: [u8; 48],
    pub qh: [u8; 4],
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockTq1_0>() == 54);
pub const BLOCK_BYTES: usize = size_of::<BlockTq1_0>();

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

fn encode5(t: [u8; 5]) -> u8 {
    let v: u16 = t
        .iter()
        .zip(POW3.iter().rev())
        .map(|(&t, &p)| t as u16 * p as u16)
        .sum();
    // ceil(v * 256 / 243)
    (v * 256).div_ceil(243) as u8
}

/// Trit n (0 = most significant) of a packed byte.
#[inline]
pub fn trit(b: u8, n: usize) -> u8 {
    ((b.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as u8
}

/// Packs ternary values (-1, 0, 1), 256 per block, with one scale per block.
pub fn pack(values: &[i8], block_scales: &[f16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() / BLOCK * BLOCK_BYTES);
    for (chunk, d) in values.chunks_exact(BLOCK).zip(block_scales) {
        let t = |i: usize| (chunk[i] + 1) as u8;
        let mut blk = [0u8; BLOCK_BYTES];
        for m in 0..32 {
            blk[m] = encode5(std::array::from_fn(|n| t(m + 32 * n)));
        }
        for m in 0..16 {
            blk[32 + m] = encode5(std::array::from_fn(|n| t(160 + m + 16 * n)));
        }
        for j in 0..4 {
            blk[48 + j] = encode5(std::array::from_fn(|n| {
                if n < 4 { t(240 + j + 4 * n) } else { 0 }
            }));
        }
        blk[52..54].copy_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&blk);
    }
    out
}

pub fn block_scale(block: &[u8]) -> f16 {
    f16::from_le_bytes([block[52], block[53]])
}

/// Decodes one block's trits (0, 1, 2) into `out[..256]`.
pub fn decode_block(block: &[u8], out: &mut [u8]) {
    for m in 0..32 {
        for n in 0..5 {
            out[m + 32 * n] = trit(block[m], n);
        }
    }
    for m in 0..16 {
        for n in 0..5 {
            out[160 + m + 16 * n] = trit(block[32 + m], n);
        }
    }
    for j in 0..4 {
        for n in 0..4 {
            out[240 + j + 4 * n] = trit(block[48 + j], n);
        }
    }
}

/// The specification: per-block exact integer dots `sum (t - 1) * q`, passed to `f` with
/// the block index.
pub fn dot_blocks_scalar(row: &[u8], q: &[i8], f: impl FnMut(usize, i32)) {
    super::dot_blocks_scalar(row, q, BLOCK_BYTES, decode_block, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_five_trit_combination_round_trips() {
        for v in 0..243u16 {
            let t: [u8; 5] = std::array::from_fn(|n| ((v / POW3[4 - n] as u16) % 3) as u8);
            let b = encode5(t);
            for n in 0..5 {
                assert_eq!(trit(b, n), t[n], "v={v} n={n}");
            }
        }
    }
}
