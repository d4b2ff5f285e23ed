//! GGUF, llama.cpp's model file: a header of typed metadata and tensor
//! descriptions, then the tensors' data, each aligned (32 bytes unless
//! `general.alignment` says otherwise). Little-endian, versions 2 and 3.
//!
//! This module reads and writes the container; [`blocks`] knows ggml's
//! tensor types and [`gpt2`] maps llama.cpp's GPT-2 tensors onto
//! [`crate::weights::Weights`]. The reader trusts nothing in the file:
//! every length is checked against the bytes there are before it is used.

pub mod blocks;
pub mod gpt2;

pub use blocks::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: usize = 32;
/// Metadata array elements a file may hold in all, so that a small file
/// cannot ask for a large allocation (each element is a `Value` in memory;
/// GPT-2's tokenizer is about 150,000).
const MAX_ELEMENTS: usize = 1 << 23;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Any non-negative integer value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor's description: `dims[0]` is the fastest-varying (a ggml
/// `ne`), so a row-major `[rows, cols]` matrix has `dims == [cols, rows]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The row-major shape (`dims` reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }
}

/// A parsed GGUF header, with where its data section starts in the file.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub data_start: usize,
    pub alignment: usize,
    /// Each tensor's position in `tensors`, by name (a file may describe
    /// tens of thousands, each looked up by name).
    by_name: std::collections::HashMap<String, usize>,
}

impl Header {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of tensor `t` within `file`, checked to lie inside it.
    pub fn tensor_bytes<'f>(&self, file: &'f [u8], t: &TensorInfo) -> Result<&'f [u8], String> {
        let len = t.ggml_type.bytes_for(&t.dims)?;
        let start = (self.data_start as u64).checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= file.len() as u64 => Ok(&file[s as usize..e as usize]),
            _ => Err(format!(
                "its {len} bytes at offset {} run past the end of the file ({} bytes)",
                t.offset,
                file.len()
            )),
        }
    }
}

/// Parses the header of a GGUF file held in `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Header, String> {
    let mut r = Reader {
        bytes,
        at: 0,
        elements: 0,
    };
    if r.take(4).ok() != Some(&MAGIC[..]) {
        return Err("not a GGUF file (it does not start with `GGUF`)".into());
    }
    let version = r.u32()?;
    match version {
        2 | 3 => {}
        1 => return Err("GGUF version 1 is not supported (versions 2 and 3 are)".into()),
        v if v != 0 && v.swap_bytes() <= 3 => {
            return Err("big-endian GGUF files are not supported".into());
        }
        v => {
            return Err(format!(
                "GGUF version {v} is newer than this reader knows (3)"
            ))
        }
    }
    let n_tensors = r.count("tensor count", 8 + 4 + 4 + 8)?;
    let n_kv = r.count("metadata count", 8 + 4 + 1)?;
    let mut metadata = Vec::with_capacity(n_kv);
    let mut keys = std::collections::HashSet::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        if key.is_empty() || !keys.insert(key.clone()) {
            return Err(format!("metadata key `{key}` is empty or given twice"));
        }
        let kind = r.u32()?;
        let value = r
            .value(kind, true)
            .map_err(|e| format!("metadata `{key}`: {e}"))?;
        metadata.push((key, value));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a as usize,
            _ => {
                return Err(format!(
                    "general.alignment {v:?} is not a power of two up to 2^20"
                ))
            }
        },
    };
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut by_name = std::collections::HashMap::new();
    for _ in 0..n_tensors {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > 4 {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to 4 allowed)"
            ));
        }
        let dims = (0..n_dims)
            .map(|_| r.u64())
            .collect::<Result<Vec<_>, _>>()?;
        let ggml_type = GgmlType::from_id(r.u32()?);
        let offset = r.u64()?;
        if !offset.is_multiple_of(alignment as u64) {
            return Err(format!(
                "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        if by_name.insert(name.clone(), tensors.len()).is_some() {
            return Err(format!("tensor `{name}` is described twice"));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    check_disjoint(&tensors)?;
    Ok(Header {
        version,
        metadata,
        tensors,
        data_start: r.at.next_multiple_of(alignment),
        alignment,
        by_name,
    })
}

/// No two tensors share bytes (llama.cpp requires them packed in order):
/// otherwise a small file could stand for any number of large tensors,
/// each copied at load. Tensors of a type this reader cannot size are
/// never read, so they are left out.
fn check_disjoint(tensors: &[TensorInfo]) -> Result<(), String> {
    let mut spans: Vec<(u64, u64, &str)> = tensors
        .iter()
        .filter_map(|t| {
            let len = t.ggml_type.bytes_for(&t.dims).ok()?;
            Some((t.offset, t.offset.saturating_add(len), t.name.as_str()))
        })
        .collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            return Err(format!("tensors `{a}` and `{b}` overlap in the file"));
        }
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Array elements read so far (bounded by [`MAX_ELEMENTS`]).
    elements: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "the header is cut short at byte {} (needs {n} more)",
                self.at
            ));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// A count of items each at least `min_bytes` long, which must fit in
    /// what is left of the file (so a corrupt count cannot allocate).
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, String> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.at) as u64;
        if n > left / min_bytes as u64 {
            return Err(format!(
                "{what} {n} cannot fit in the {left} bytes left of the file"
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.count("string length", 1)?;
        let at = self.at;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("the string at byte {at} is not UTF-8"))
    }

    /// A value of type `kind`; arrays only at the top (`top`), as in
    /// llama.cpp, which refuses arrays of arrays.
    fn value(&mut self, kind: u32, top: bool) -> Result<Value, String> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("boolean byte {b} is neither 0 nor 1")),
            },
            8 => Value::Str(self.string()?),
            9 if top => {
                let inner = self.u32()?;
                if inner == 9 || inner > 12 {
                    return Err(format!("array element type {inner} is not a scalar type"));
                }
                let n = self.count("array length", 1)?;
                self.elements += n;
                if self.elements > MAX_ELEMENTS {
                    return Err(format!(
                        "the arrays hold more than {MAX_ELEMENTS} elements in all"
                    ));
                }
                let items = (0..n)
                    .map(|_| self.value(inner, false))
                    .collect::<Result<_, _>>()?;
                Value::Array(items)
            }
            9 => return Err("an array of arrays".into()),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            k => return Err(format!("unknown value type {k}")),
        })
    }
}

/// A GGUF file being assembled: metadata in order, then tensors.
#[derive(Default)]
pub struct Writer {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
}

impl Writer {
    /// Adds a metadata entry. Arrays must hold one scalar type (what the
    /// callers build). `general.alignment` is dropped: this writer always
    /// aligns to 32, the default.
    pub fn meta(&mut self, key: &str, value: Value) {
        if key != "general.alignment" {
            self.metadata.push((key.to_string(), value));
        }
    }

    /// Adds a tensor of row-major `shape` whose ggml data is `data`.
    pub fn tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), String> {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let want = ggml_type.bytes_for(&dims)?;
        if want != data.len() as u64 {
            return Err(format!(
                "tensor `{name}`: {} bytes of {} data for shape {shape:?}, expected {want}",
                data.len(),
                ggml_type.name()
            ));
        }
        let offset = self.tensors.last().map_or(0, |(t, d)| {
            (t.offset + d.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT as u64)
        });
        let info = TensorInfo {
            name: name.to_string(),
            dims,
            ggml_type,
            offset,
        };
        self.tensors.push((info, data));
        Ok(())
    }

    /// The whole file, version 3, with the default alignment.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut out, value);
        }
        for (t, _) in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        let data_start = out.len().next_multiple_of(DEFAULT_ALIGNMENT);
        for (t, data) in &self.tensors {
            out.resize(data_start + t.offset as usize, 0);
            out.extend_from_slice(data);
        }
        // llama.cpp reads the data section whole, padding included.
        out.resize(out.len().next_multiple_of(DEFAULT_ALIGNMENT), 0);
        out
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::Str(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array's element type is not observable; u8 will do.
            let inner = items.first().map_or(0, Value::type_id);
            out.extend_from_slice(&inner.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::default();
        w.meta("general.architecture", Value::Str("gpt2".into()));
        w.meta("n", Value::U32(7));
        w.meta(
            "list",
            Value::Array(vec![Value::Str("a".into()), Value::Str("bc".into())]),
        );
        let data: Vec<u8> = [1f32, 2.0, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        w.tensor("v", &[3], GgmlType::F32, data).unwrap();
        w.tensor("m", &[2, 2], GgmlType::F16, vec![0; 8]).unwrap();
        w.to_bytes()
    }

    #[test]
    fn written_files_parse_back() {
        let bytes = sample();
        let h = parse(&bytes).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.get("n").and_then(Value::as_u64), Some(7));
        assert_eq!(
            h.get("list").and_then(Value::as_array).map(|a| a.len()),
            Some(2)
        );
        let v = h.tensor("v").unwrap();
        assert_eq!(v.shape(), vec![3]);
        assert_eq!(h.tensor_bytes(&bytes, v).unwrap().len(), 12);
        let m = h.tensor("m").unwrap();
        assert_eq!(m.offset % 32, 0);
        assert_eq!(h.tensor_bytes(&bytes, m).unwrap().len(), 8);
    }

    /// A file written field by field, for headers the writer never makes.
    fn raw(kvs: &[(&str, Value)], tensors: &[(&str, u64)]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
        for (k, v) in kvs {
            put_string(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut out, v);
        }
        for (name, offset) in tensors {
            put_string(&mut out, name);
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&64u64.to_le_bytes());
            out.extend_from_slice(&GgmlType::F32.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out.resize(out.len().next_multiple_of(32) + 1024, 0);
        out
    }

    #[test]
    fn headers_llama_cpp_refuses_are_refused() {
        let n = || Value::U32(1);
        let overlap = raw(&[], &[("a", 0), ("b", 128)]);
        assert!(parse(&overlap).unwrap_err().contains("`a` and `b` overlap"));
        assert!(parse(&raw(&[], &[("a", 0), ("b", 256)])).is_ok());
        let twice = raw(&[("k", n()), ("k", n())], &[]);
        assert!(parse(&twice).unwrap_err().contains("given twice"));
        let nested = raw(&[("k", Value::Array(vec![Value::Array(vec![])]))], &[]);
        assert!(parse(&nested).unwrap_err().contains("not a scalar type"));
    }

    #[test]
    fn damaged_headers_are_errors_not_panics() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let _ = parse(&bytes[..cut]).map(|h| {
                for t in &h.tensors {
                    let _ = h.tensor_bytes(&bytes[..cut], t);
                }
            });
        }
        assert!(parse(b"GGML....").unwrap_err().contains("not a GGUF"));
        let mut big_endian = bytes.clone();
        big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(parse(&big_endian).unwrap_err().contains("big-endian"));
        // A metadata count no file could hold is refused before allocating.
        let mut huge = bytes.clone();
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().contains("metadata count"));
    }
}
