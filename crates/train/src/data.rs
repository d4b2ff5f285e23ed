//! Token files: GPT-2 ids as little-endian u16 after a 20-byte header
//! (magic `GPT2TOK\0`, format version as u32, token count as u64, all
//! little-endian), and the seeded batches a training run draws from them.

use std::path::Path;

pub const MAGIC: &[u8; 8] = b"GPT2TOK\0";
pub const VERSION: u32 = 1;
/// magic (8) + version (4) + token count (8).
pub const HEADER: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
}

fn io(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn format(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::Format {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Writes `tokens` atomically (temporary file, fsync, rename).
pub fn write_tokens(path: &Path, tokens: &[u32]) -> Result<(), DataError> {
    let mut bytes = Vec::with_capacity(HEADER + 2 * tokens.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
    for &t in tokens {
        let t = u16::try_from(t)
            .map_err(|_| format(path, format!("token id {t} does not fit in 16 bits")))?;
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    write_atomic(path, &bytes)
}

/// `gpt2_model::atomic::write_atomic`, with the file named in the error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    gpt2_model::atomic::write_atomic(path, bytes).map_err(|e| io(path, e))
}

/// Reads a token file, checking the header against the file's length and
/// every id against `vocab_size`.
pub fn read_tokens(path: &Path, vocab_size: usize) -> Result<Vec<u16>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    parse_tokens(path, &bytes, vocab_size)
}

/// As [`read_tokens`], on the file's bytes (`path` names it in errors).
pub fn parse_tokens(path: &Path, bytes: &[u8], vocab_size: usize) -> Result<Vec<u16>, DataError> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(format(
            path,
            "not a token file (bad magic; make one with `gpt2 prepare`)",
        ));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(format(
            path,
            format!("token file version {version}, this build reads version {VERSION}"),
        ));
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&bytes[12..20]);
    let count = u64::from_le_bytes(count);
    let body = (bytes.len() - HEADER) as u64;
    if count.checked_mul(2) != Some(body) {
        return Err(format(
            path,
            format!(
                "header says {count} tokens but the file holds {} bytes of tokens (truncated?)",
                body
            ),
        ));
    }
    let tokens: Vec<u16> = bytes[HEADER..]
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(format(
            path,
            format!("token id {bad} is outside the model's vocabulary of {vocab_size}"),
        ));
    }
    Ok(tokens)
}

/// Batches of `batch` windows of `seq + 1` tokens at offsets drawn from a
/// generator seeded by (seed, step): step `k` gets the same batch whether
/// or not the run was interrupted and resumed before it.
pub fn batch_at(
    tokens: &[u16],
    batch: usize,
    seq: usize,
    seed: u64,
    step: u64,
    inputs: &mut Vec<u32>,
    targets: &mut Vec<u32>,
) {
    inputs.clear();
    targets.clear();
    let span = tokens.len() - seq - 1;
    let mut state = splitmix(seed ^ splitmix(step.wrapping_add(0x9E37_79B9)));
    for _ in 0..batch {
        state = splitmix(state);
        let at = (state % (span as u64 + 1)) as usize;
        inputs.extend(tokens[at..at + seq].iter().map(|&t| t as u32));
        targets.extend(tokens[at + 1..at + seq + 1].iter().map(|&t| t as u32));
    }
}

/// SplitMix64: a tiny, fully specified mixing function (so batches are the
/// same on every platform).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        write_tokens(&p, &[1, 2, 50256]).unwrap();
        assert_eq!(read_tokens(&p, 50257).unwrap(), vec![1, 2, 50256]);
        assert!(read_tokens(&p, 100)
            .unwrap_err()
            .to_string()
            .contains("50256"));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_tokens(&p, 50257)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        std::fs::write(&p, b"hello world, not tokens").unwrap();
        assert!(read_tokens(&p, 50257)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        bytes[8] = 9;
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_tokens(&p, 50257)
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        assert!(write_tokens(&p, &[70000])
            .unwrap_err()
            .to_string()
            .contains("70000"));
    }

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let tokens: Vec<u16> = (0..1000).map(|i| (i % 500) as u16).collect();
        let (mut a, mut b, mut c, mut d) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        batch_at(&tokens, 4, 16, 7, 3, &mut a, &mut b);
        batch_at(&tokens, 4, 16, 7, 3, &mut c, &mut d);
        assert_eq!((a.clone(), b.clone()), (c.clone(), d.clone()));
        assert_eq!(a.len(), 64);
        assert_eq!(&a[1..16], &b[..15]);
        batch_at(&tokens, 4, 16, 7, 4, &mut c, &mut d);
        assert_ne!(a, c);
    }
}
