//! A small GGUF header check: enough to refuse an HTML error page, a truncated file or another
//! format before it is published. The full parser lives in the engine crate; the model store
//! does not depend on it.

/// Bytes of the fixed GGUF header: magic, version, tensor count, metadata key/value count.
pub const HEADER_LEN: usize = 24;

/// Checks magic `GGUF`, version 2 or 3 and plausible tensor / key-value counts for a file of
/// `file_size` bytes. Returns a reason on failure.
pub fn check_header(head: &[u8], file_size: u64) -> Result<(), String> {
    if head.len() < HEADER_LEN || file_size < HEADER_LEN as u64 {
        return Err(format!(
            "only {file_size} bytes, shorter than a GGUF header"
        ));
    }
    if &head[0..4] != b"GGUF" {
        let shown: String = head[0..4]
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        return Err(format!("bad magic {shown:?} (expected \"GGUF\")"));
    }
    let version = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (expected 2 or 3)"
        ));
    }
    let tensors = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let kvs = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    // Each tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset)
    // bytes; each key/value at least 8 (key length) + 4 (type) bytes.
    let min_bytes = (HEADER_LEN as u64)
        .saturating_add(tensors.saturating_mul(24))
        .saturating_add(kvs.saturating_mul(12));
    if tensors > 1 << 20 || kvs > 1 << 20 || min_bytes > file_size {
        return Err(format!(
            "implausible counts: {tensors} tensors, {kvs} metadata keys in {file_size} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: &[u8; 4], version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
        let mut v = magic.to_vec();
        v.extend(version.to_le_bytes());
        v.extend(tensors.to_le_bytes());
        v.extend(kvs.to_le_bytes());
        v
    }

    #[test]
    fn accepts_v2_and_v3() {
        assert!(check_header(&header(b"GGUF", 3, 10, 5), 4096).is_ok());
        assert!(check_header(&header(b"GGUF", 2, 0, 0), 24).is_ok());
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(check_header(b"<html>", 6).unwrap_err().contains("shorter"));
        assert!(
            check_header(&header(b"<!DO", 3, 1, 1), 4096)
                .unwrap_err()
                .contains("bad magic")
        );
        assert!(
            check_header(&header(b"GGUF", 1, 1, 1), 4096)
                .unwrap_err()
                .contains("version 1")
        );
        assert!(
            check_header(&header(b"GGUF", 3, 1 << 40, 1), 4096)
                .unwrap_err()
                .contains("implausible")
        );
        assert!(
            check_header(&header(b"GGUF", 3, 1000, 1), 4096)
                .unwrap_err()
                .contains("implausible")
        );
    }
}
