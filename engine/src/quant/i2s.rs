//! I2_S, BitNet's 2-bit ternary type (ggml id 36 in the BitNet fork).
//!
//! A tensor of M rows × K weights is `M*K/4` bytes of codes, one little-endian f32 scale,
//! then 28 padding bytes. Each row is a run of 128-weight blocks of 32 bytes: weight j of a
//! block lives in byte `j % 32` at bit shift `6 - 2*(j / 32)`. Code 0 = -1, 1 = 0, 2 = +1;
//! code 3 never occurs (rejected at load).

pub const BLOCK: usize = 128;
pub const BLOCK_BYTES: usize = 32;

/// Bytes of codes per row of `k` weights.
pub fn row_bytes(k: usize) -> usize {
    k / 4
}

/// Packs ternary values (-1, 0, 1) of `rows × k` weights plus the scale into I2_S bytes.
pub fn pack(values: &[i8], k: usize, scale: f32) -> Vec<u8> {
    assert_eq!(k % BLOCK, 0);
    let mut out = vec![0u8; values.len() / 4 + 32];
    for (b, chunk) in values.chunks_exact(BLOCK).enumerate() {
        let dst = &mut out[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        for (j, &v) in chunk.iter().enumerate() {
            let code = (v + 1) as u8;
            dst[j % 32] |= code << (6 - 2 * (j / 32));
        }
    }
    let n = values.len() / 4;
    out[n..n + 4].copy_from_slice(&scale.to_le_bytes());
    out
}

/// The per-tensor scale stored after the codes (only the first 4 bytes of the tail count).
pub fn scale(data: &[u8], rows: usize, k: usize) -> f32 {
    let n = rows * k / 4;
    f32::from_le_bytes([data[n], data[n + 1], data[n + 2], data[n + 3]])
}

/// Decodes one row's codes (0, 1, 2 or the invalid 3) into `out` (length k).
pub fn decode_row_codes(row: &[u8], out: &mut [u8]) {
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        for j in 0..BLOCK {
            out[b * BLOCK + j] = (blk[j % 32] >> (6 - 2 * (j / 32))) & 3;
        }
    }
}

/// True when some code in the row is 3 (not a valid ternary code).
pub fn has_invalid_code(codes: &[u8]) -> bool {
    // A byte holds four codes; code 3 = both bits of a pair set. OR-folding chunks lets the
    // compiler vectorise the scan (it runs over every tensor on first use).
    codes
        .chunks(4096)
        .any(|c| c.iter().fold(0u8, |acc, &b| acc | (b & (b >> 1))) & 0x55 != 0)
}

/// The specification: `sum (code - 1) * q` over one row, exact in integers.
pub fn dot_scalar(row: &[u8], q: &[i8]) -> i32 {
    let mut sum = 0i32;
    for (b, blk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let qb = &q[b * BLOCK..(b + 1) * BLOCK];
        for j in 0..BLOCK {
            let code = ((blk[j % 32] >> (6 - 2 * (j / 32))) & 3) as i32;
            sum += (code - 1) * qb[j] as i32;
        }
    }
    sum
}
