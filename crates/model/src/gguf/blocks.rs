//! ggml's tensor types as GGUF stores them: f32, f16, bf16, and the block
//! quantizations this project reads. A q8_0 block is an f16 scale then 32
//! signed bytes; a q4_0 block an f16 scale then 16 bytes of nibbles (the
//! layout [`crate::packed`] uses, with the scale beside the data instead of
//! in a table of its own); a q6_K block of 256 weights holds their low four
//! bits, their high two bits, sixteen 8-bit sub-scales and an f16 scale
//! (`block_q6_K` in ggml-common.h). llama-quantize writes GPT-2's tied
//! embedding as q6_K in its q4_0 files.

use crate::packed::{Format, BLOCK};
use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q8_0,
    Q6K,
    Bf16,
    /// A type this reader does not decode, by its ggml id.
    Other(u32),
}

/// Weights per q6_K block.
const QK_K: usize = 256;
const Q6K_BYTES: usize = QK_K / 2 + QK_K / 4 + QK_K / 16 + 2;

impl GgmlType {
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            8 => GgmlType::Q8_0,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            other => GgmlType::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q8_0 => 8,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    pub fn name(self) -> String {
        let known = match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q6K => "q6_K",
            GgmlType::Bf16 => "bf16",
            GgmlType::Other(id) => return other_name(id),
        };
        known.to_string()
    }

    /// (weights per block, bytes per block), for the types this reader knows.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::Bf16 => Some((1, 2)),
            GgmlType::Q8_0 => Some((BLOCK, 2 + BLOCK)),
            GgmlType::Q4_0 => Some((BLOCK, 2 + BLOCK / 2)),
            GgmlType::Q6K => Some((QK_K, Q6K_BYTES)),
            GgmlType::Other(_) => None,
        }
    }

    /// The bytes a tensor of ggml dims `dims` takes; an error names a type
    /// this reader cannot size or rows that do not split into blocks.
    pub fn bytes_for(self, dims: &[u64]) -> Result<u64, String> {
        let Some((per_block, block_bytes)) = self.block() else {
            return Err(format!(
                "ggml type {} is not one this loader reads (f32, f16, bf16, q8_0, q4_0, q6_K); \
                 requantize the file with llama-quantize to q8_0, q4_0 or f16",
                self.name()
            ));
        };
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(per_block as u64) {
            return Err(format!(
                "rows of {row} do not split into {} blocks of {per_block}",
                self.name()
            ));
        }
        let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        elements
            .and_then(|n| (n / per_block as u64).checked_mul(block_bytes as u64))
            .ok_or_else(|| format!("dims {dims:?} overflow"))
    }

    /// The packed format that serves this type directly, if one does.
    pub fn packed_format(self) -> Option<Format> {
        match self {
            GgmlType::F16 => Some(Format::F16),
            GgmlType::Bf16 => Some(Format::Bf16),
            GgmlType::Q8_0 => Some(Format::Q8_0),
            GgmlType::Q4_0 => Some(Format::Q4_0),
            _ => None,
        }
    }

    pub fn from_format(format: Format) -> GgmlType {
        match format {
            Format::F16 => GgmlType::F16,
            Format::Bf16 => GgmlType::Bf16,
            Format::Q8_0 => GgmlType::Q8_0,
            Format::Q4_0 => GgmlType::Q4_0,
        }
    }
}

/// ggml's names for the types it has and this reader does not decode.
fn other_name(id: u32) -> String {
    let name = match id {
        3 => "q4_1",
        6 => "q5_0",
        7 => "q5_1",
        9 => "q8_1",
        10 => "q2_K",
        11 => "q3_K",
        12 => "q4_K",
        13 => "q5_K",
        15 => "q8_K",
        16..=23 | 29 => "an i-quant",
        24 => "i8",
        25 => "i16",
        26 => "i32",
        27 => "i64",
        28 => "f64",
        34 => "tq1_0",
        35 => "tq2_0",
        _ => "unknown",
    };
    format!("{name} (id {id})")
}

/// The whole tensor widened to f32; `bytes` holds exactly its data.
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    Ok(match ty {
        GgmlType::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => bytes.chunks_exact(2).map(half).collect(),
        GgmlType::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::Q8_0 | GgmlType::Q4_0 => {
            let (data, scales) = split_blocks(ty, bytes);
            let format = ty.packed_format().ok_or("not a packed type")?;
            let mut out = vec![0f32; scales.len() * BLOCK];
            let row_bytes = format.row_bytes(BLOCK);
            for ((o, q), &d) in out
                .chunks_exact_mut(BLOCK)
                .zip(data.chunks_exact(row_bytes))
                .zip(&scales)
            {
                crate::packed::unpack_block(format, q, d, o);
            }
            out
        }
        GgmlType::Q6K => bytes.chunks_exact(Q6K_BYTES).flat_map(q6k_block).collect(),
        GgmlType::Other(_) => return Err(format!("cannot decode {}", ty.name())),
    })
}

/// q8_0 or q4_0 blocks split into the packed data and f32 scales that
/// [`crate::packed::PackedMatrix`] keeps apart.
pub fn split_blocks(ty: GgmlType, bytes: &[u8]) -> (Vec<u8>, Vec<f32>) {
    let data_bytes = if ty == GgmlType::Q8_0 {
        BLOCK
    } else {
        BLOCK / 2
    };
    let blocks = bytes.chunks_exact(2 + data_bytes);
    let mut data = Vec::with_capacity(blocks.len() * data_bytes);
    let mut scales = Vec::with_capacity(blocks.len());
    for block in blocks {
        scales.push(f16::from_le_bytes([block[0], block[1]]).to_f32());
        data.extend_from_slice(&block[2..]);
    }
    (data, scales)
}

/// The inverse of [`split_blocks`]: each scale rounded to f16, as ggml
/// stores it (its quantizer also computes the values with the unrounded
/// scale). A scale f16 cannot hold is an error.
pub fn join_blocks(format: Format, data: &[u8], scales: &[f32]) -> Result<Vec<u8>, String> {
    let data_bytes = format.row_bytes(BLOCK);
    let mut out = Vec::with_capacity(scales.len() * (2 + data_bytes));
    for (q, &d) in data.chunks_exact(data_bytes).zip(scales) {
        let half = f16::from_f32(d);
        if !half.is_finite() {
            return Err(format!(
                "a block scale of {d} does not fit GGUF's f16 scales"
            ));
        }
        out.extend_from_slice(&half.to_le_bytes());
        out.extend_from_slice(q);
    }
    Ok(out)
}

/// One q6_K block's 256 weights (ggml's `dequantize_row_q6_K`).
fn q6k_block(b: &[u8]) -> Vec<f32> {
    let (ql, rest) = b.split_at(QK_K / 2);
    let (qh, rest) = rest.split_at(QK_K / 4);
    let (sc, d) = rest.split_at(QK_K / 16);
    let d = f16::from_le_bytes([d[0], d[1]]).to_f32();
    let mut y = vec![0f32; QK_K];
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
        let y = &mut y[128 * half..];
        for l in 0..32 {
            let is = l / 16;
            let q =
                |low: u8, shift: u32| ((low | (((qh[l] >> shift) & 3) << 4)) as i32 - 32) as f32;
            let scale = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = scale(0) * q(ql[l] & 0xF, 0);
            y[l + 32] = scale(2) * q(ql[l + 32] & 0xF, 2);
            y[l + 64] = scale(4) * q(ql[l] >> 4, 4);
            y[l + 96] = scale(6) * q(ql[l + 32] >> 4, 6);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(GgmlType::Q8_0.bytes_for(&[64, 3]).unwrap(), 3 * 2 * 34);
        assert_eq!(GgmlType::Q4_0.bytes_for(&[32]).unwrap(), 18);
        assert_eq!(GgmlType::Q6K.bytes_for(&[256, 2]).unwrap(), 420);
        assert!(GgmlType::Q8_0
            .bytes_for(&[48])
            .unwrap_err()
            .contains("blocks of 32"));
        let err = GgmlType::from_id(12).bytes_for(&[256]).unwrap_err();
        assert!(err.contains("q4_K"), "{err}");
        assert!(GgmlType::F32.bytes_for(&[u64::MAX, 4]).is_err());
    }

    #[test]
    fn blocks_split_and_join_back() {
        for format in [Format::Q8_0, Format::Q4_0] {
            let w: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.01).collect();
            let m = crate::packed::PackedMatrix::pack(format, &w, 1, 64).unwrap();
            let joined = join_blocks(format, m.data(), m.scales()).unwrap();
            let ty = GgmlType::from_format(format);
            let (data, scales) = split_blocks(ty, &joined);
            assert_eq!(data, m.data());
            for (a, b) in scales.iter().zip(m.scales()) {
                assert_eq!(*a, f16::from_f32(*b).to_f32());
            }
            let back = dequantize(ty, &joined).unwrap();
            for (a, b) in back.iter().zip(&m.unpack()) {
                assert!((a - b).abs() <= b.abs() * 1e-3 + 1e-7);
            }
        }
    }
}
