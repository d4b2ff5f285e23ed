//! Weight matrices stored in fewer bytes than f32: f16 and bf16 halves, and
//! llama.cpp-style block quantization (q8_0: 32 signed bytes per block with
//! one scale; q4_0: 32 four-bit values per block with one scale). Decode
//! streams every weight once per token, so bytes per weight set its speed.
//!
//! A packed matrix is `[rows, cols]` with each row one output of the layer
//! (the transpose of the checkpoint's Conv1D `[in, out]`), so an output is a
//! dot product over one contiguous row and quantization blocks run along
//! the reduction. Scales are f32 `[rows, cols / 32]`: read in place from the
//! file with no conversion per block.
//!
//! q4_0's byte `i` of a block holds element `i` in its low nibble and
//! element `i + 16` in its high nibble; an element is `(nibble - 8) * scale`
//! (llama.cpp's `block_q4_0`).

use crate::storage::Storage;
use safetensors::Dtype;

/// Weights per quantization block.
pub const BLOCK: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    F16,
    Bf16,
    Q8_0,
    Q4_0,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::F16, Format::Bf16, Format::Q8_0, Format::Q4_0];

    pub fn name(self) -> &'static str {
        match self {
            Format::F16 => "f16",
            Format::Bf16 => "bf16",
            Format::Q8_0 => "q8_0",
            Format::Q4_0 => "q4_0",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Whether rows are split into blocks of 32 with a scale each.
    pub fn is_blocked(self) -> bool {
        matches!(self, Format::Q8_0 | Format::Q4_0)
    }

    /// Bytes of packed data in a row of `cols` weights.
    pub fn row_bytes(self, cols: usize) -> usize {
        match self {
            Format::F16 | Format::Bf16 => 2 * cols,
            Format::Q8_0 => cols,
            Format::Q4_0 => cols / 2,
        }
    }

    /// Columns of the stored `.packed` tensor for rows of `cols` weights
    /// (q4_0 holds two weights per byte).
    pub fn stored_cols(self, cols: usize) -> usize {
        if self == Format::Q4_0 {
            cols / 2
        } else {
            cols
        }
    }

    /// The safetensors dtype the packed data is stored as.
    pub fn dtype(self) -> Dtype {
        match self {
            Format::F16 => Dtype::F16,
            Format::Bf16 => Dtype::BF16,
            Format::Q8_0 => Dtype::I8,
            Format::Q4_0 => Dtype::U8,
        }
    }

    pub fn from_dtype(dtype: Dtype) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.dtype() == dtype)
    }

    /// Average bytes per weight, scales included (for reports).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            Format::F16 | Format::Bf16 => 2.0,
            Format::Q8_0 => 1.0 + 4.0 / BLOCK as f64,
            Format::Q4_0 => 0.5 + 4.0 / BLOCK as f64,
        }
    }
}

#[derive(Clone)]
pub struct PackedMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    data: Storage<u8>,
    /// `[rows, cols / 32]` for blocked formats, empty otherwise.
    scales: Storage<f32>,
}

impl PackedMatrix {
    /// Packs a row-major `[rows, cols]` f32 matrix. Blocked formats need
    /// `cols` to be a multiple of 32.
    pub fn pack(
        format: Format,
        w: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<PackedMatrix, String> {
        check_shape(format, rows, cols)?;
        if w.len() != rows * cols {
            return Err(format!("{} values for a {rows}x{cols} matrix", w.len()));
        }
        let mut data = Vec::with_capacity(rows * format.row_bytes(cols));
        let mut scales = Vec::with_capacity(if format.is_blocked() {
            rows * cols / BLOCK
        } else {
            0
        });
        for row in w.chunks_exact(cols.max(1)) {
            pack_row(format, row, &mut data, &mut scales);
        }
        Ok(PackedMatrix {
            format,
            rows,
            cols,
            data: Storage::owned(data),
            scales: Storage::owned(scales),
        })
    }

    /// A matrix over bytes read from a checkpoint; `data` and `scales` must
    /// have the lengths the shape implies.
    pub(crate) fn from_parts(
        format: Format,
        rows: usize,
        cols: usize,
        data: Storage<u8>,
        scales: Storage<f32>,
    ) -> Result<PackedMatrix, String> {
        check_shape(format, rows, cols)?;
        let want = rows * format.row_bytes(cols);
        if data.as_slice().len() != want {
            return Err(format!(
                "{} bytes of packed data, expected {want}",
                data.as_slice().len()
            ));
        }
        let want_scales = if format.is_blocked() {
            rows * cols / BLOCK
        } else {
            0
        };
        if scales.as_slice().len() != want_scales {
            return Err(format!(
                "{} scales, expected {want_scales}",
                scales.as_slice().len()
            ));
        }
        Ok(PackedMatrix {
            format,
            rows,
            cols,
            data,
            scales,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All packed rows, `rows * format.row_bytes(cols)` bytes.
    pub fn data(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// Per-block scales, `[rows, cols / 32]` (empty for f16 and bf16).
    pub fn scales(&self) -> &[f32] {
        self.scales.as_slice()
    }

    /// The packed bytes of row `j`.
    pub fn row(&self, j: usize) -> &[u8] {
        let n = self.format.row_bytes(self.cols);
        &self.data()[j * n..(j + 1) * n]
    }

    /// The scales of row `j` (empty for f16 and bf16).
    pub fn row_scales(&self, j: usize) -> &[f32] {
        if !self.format.is_blocked() {
            return &[];
        }
        let n = self.cols / BLOCK;
        &self.scales()[j * n..(j + 1) * n]
    }

    /// Bytes this matrix occupies: packed data and scales.
    pub fn stored_bytes(&self) -> usize {
        self.data().len() + 4 * self.scales().len()
    }

    /// True when the packed data is read in place from the checkpoint file.
    pub fn is_mapped(&self) -> bool {
        self.data.is_mapped()
    }

    /// Row `j` widened to f32 into `out` (`cols` long).
    pub fn unpack_row(&self, j: usize, out: &mut [f32]) {
        unpack_row(self.format, self.row(j), self.row_scales(j), out);
    }

    /// The whole matrix as row-major f32 `[rows, cols]`.
    pub fn unpack(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (j, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.unpack_row(j, row);
        }
        out
    }
}

fn check_shape(format: Format, rows: usize, cols: usize) -> Result<(), String> {
    if format.is_blocked() && !cols.is_multiple_of(BLOCK) {
        return Err(format!(
            "{} needs rows whose length is a multiple of {BLOCK}; this matrix is {rows}x{cols}",
            format.name()
        ));
    }
    Ok(())
}

fn pack_row(format: Format, row: &[f32], data: &mut Vec<u8>, scales: &mut Vec<f32>) {
    match format {
        Format::F16 => data.extend(
            row.iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes()),
        ),
        Format::Bf16 => data.extend(
            row.iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()),
        ),
        Format::Q8_0 => {
            for block in row.chunks_exact(BLOCK) {
                let (q, d) = quantize_q8_block(block);
                data.extend(q.iter().map(|&v| v as u8));
                scales.push(d);
            }
        }
        Format::Q4_0 => {
            for block in row.chunks_exact(BLOCK) {
                let (q, d) = quantize_q4_block(block);
                data.extend_from_slice(&q);
                scales.push(d);
            }
        }
    }
}

/// f16 or bf16 values (little-endian pairs of bytes) widened into `out`;
/// a SIMD kernel's tail uses it too.
pub(crate) fn unpack_halves(format: Format, bytes: &[u8], out: &mut [f32]) {
    let widen = |b: &[u8]| {
        if format == Format::F16 {
            half::f16::from_le_bytes([b[0], b[1]]).to_f32()
        } else {
            half::bf16::from_le_bytes([b[0], b[1]]).to_f32()
        }
    };
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = widen(b);
    }
}

/// Symmetric 8-bit quantization of one block: `x ≈ q * d`, `|q| <= 127`
/// (llama.cpp's `quantize_row_q8_0`). Also quantizes activations.
pub fn quantize_q8_block(x: &[f32]) -> ([i8; BLOCK], f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; BLOCK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    (q, d)
}

/// 4-bit quantization of one block (llama.cpp's `quantize_row_q4_0`): the
/// element of largest magnitude maps exactly to -8, so its sign decides
/// which end of the range is used in full.
fn quantize_q4_block(x: &[f32]) -> ([u8; BLOCK / 2], f32) {
    let max = x
        .iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let nibble = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    let mut q = [0u8; BLOCK / 2];
    for (i, q) in q.iter_mut().enumerate() {
        *q = nibble(x[i]) | (nibble(x[i + BLOCK / 2]) << 4);
    }
    (q, d)
}

fn unpack_row(format: Format, bytes: &[u8], scales: &[f32], out: &mut [f32]) {
    if !format.is_blocked() {
        return unpack_halves(format, bytes, out);
    }
    let block_bytes = format.row_bytes(BLOCK);
    for ((o, q), &d) in out
        .chunks_exact_mut(BLOCK)
        .zip(bytes.chunks_exact(block_bytes))
        .zip(scales)
    {
        unpack_block(format, q, d, o);
    }
}

/// One q8_0 or q4_0 block of 32 weights widened into `out`.
pub(crate) fn unpack_block(format: Format, q: &[u8], d: f32, out: &mut [f32]) {
    match format {
        Format::Q8_0 => {
            for (o, &q) in out.iter_mut().zip(q) {
                *o = q as i8 as f32 * d;
            }
        }
        Format::Q4_0 => {
            for (i, &b) in q.iter().enumerate() {
                out[i] = ((b & 0x0F) as i32 - 8) as f32 * d;
                out[i + BLOCK / 2] = ((b >> 4) as i32 - 8) as f32 * d;
            }
        }
        Format::F16 | Format::Bf16 => unpack_halves(format, q, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wave(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect()
    }

    #[test]
    fn every_format_round_trips_within_its_step() {
        let (rows, cols) = (3, 64);
        let w = wave(rows * cols);
        for format in Format::ALL {
            let m = PackedMatrix::pack(format, &w, rows, cols).unwrap();
            assert_eq!(m.data().len(), rows * format.row_bytes(cols));
            let back = m.unpack();
            let amax = w.iter().fold(0f32, |a, v| a.max(v.abs()));
            let step = match format {
                Format::F16 => amax / 1024.0,
                Format::Bf16 => amax / 128.0,
                Format::Q8_0 => amax / 127.0 / 2.0,
                // The end opposite the largest magnitude clamps at 7 steps.
                Format::Q4_0 => amax / 8.0,
            };
            for (a, b) in w.iter().zip(&back) {
                assert!((a - b).abs() <= step * 1.001, "{format:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn q4_maps_the_largest_magnitude_exactly() {
        let mut block = [0.1f32; BLOCK];
        block[5] = -2.0;
        block[20] = 1.5;
        let m = PackedMatrix::pack(Format::Q4_0, &block, 1, BLOCK).unwrap();
        let back = m.unpack();
        assert_eq!(back[5], -2.0);
        assert!((back[20] - 1.5).abs() <= 0.125 + 1e-6);
    }

    #[test]
    fn zero_blocks_and_bad_shapes() {
        let m = PackedMatrix::pack(Format::Q8_0, &[0.0; BLOCK], 1, BLOCK).unwrap();
        assert!(m.unpack().iter().all(|&v| v == 0.0));
        let err = PackedMatrix::pack(Format::Q4_0, &[0.0; 48], 1, 48)
            .err()
            .unwrap();
        assert!(err.contains("multiple of 32"), "{err}");
        assert!(PackedMatrix::pack(Format::F16, &[0.0; 48], 1, 48).is_ok());
    }
}
