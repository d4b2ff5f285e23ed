//! GGUF files in and out, against fixtures the `gguf` package wrote
//! (tools/reference/gguf_fixtures.py) and values gguf-py and transformers
//! computed from them.

use gpt2_model::convert::{convert, format_name};
use gpt2_model::gguf::gpt2::to_gguf;
use gpt2_model::gguf::{blocks, parse, GgmlType, Value, Writer};
use gpt2_model::packed::Format;
use gpt2_model::score::{Scorer, Windowing};
use gpt2_model::weights::{Embedding, Linear};
use gpt2_model::Model;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/gguf")
        .join(name)
}

fn expected() -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture("tiny.expected.json")).unwrap()).unwrap()
}

fn ids() -> Vec<u32> {
    expected()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn logprobs(model: &Model) -> Vec<f32> {
    Scorer::new(model)
        .score(&ids(), Windowing::Rolling, 0)
        .unwrap()
        .iter()
        .map(|s| s.logprob)
        .collect()
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gpt2-gguf-test-{}-{name}", std::process::id()))
}

#[test]
fn a_gguf_written_by_the_gguf_package_scores_as_transformers_does() {
    let model = Model::load_gguf(&fixture("tiny.gguf")).unwrap();
    let c = model.config();
    assert_eq!((c.n_layer, c.n_head, c.n_embd, c.n_ctx), (2, 2, 32, 32));
    let w = model.weights();
    assert!(matches!(&w.wte, Embedding::Packed(m) if m.format() == Format::Q4_0));
    assert!(matches!(&w.layers[0].attn_w, Linear::Conv1D(_)));
    match &w.layers[0].attn_proj_w {
        Linear::Packed(m) => assert!(m.format() == Format::F16 && m.is_mapped()),
        _ => panic!("an f16 matrix is served packed"),
    }
    assert!(w.ln_f_w.is_mapped(), "f32 vectors are read in place");
    let want = expected();
    let want: Vec<f64> = want["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let got = logprobs(&model);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((*g as f64 - w).abs() < 1e-4, "token {i}: {g} vs {w}");
    }
}

#[test]
fn block_types_dequantize_as_gguf_py_does() {
    let bytes = std::fs::read(fixture("blocks.gguf")).unwrap();
    let h = parse(&bytes).unwrap();
    let mut seen = Vec::new();
    for t in h.tensors.iter().filter(|t| !t.name.ends_with(".f32")) {
        let reference = h.tensor(&format!("{}.f32", t.name)).unwrap();
        let want = blocks::dequantize(GgmlType::F32, h.tensor_bytes(&bytes, reference).unwrap());
        let got = blocks::dequantize(t.ggml_type, h.tensor_bytes(&bytes, t).unwrap());
        assert_eq!(got.unwrap(), want.unwrap(), "{}", t.name);
        seen.push(t.ggml_type);
    }
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q6K,
        GgmlType::F16,
        GgmlType::Bf16,
    ] {
        assert!(seen.contains(&ty), "{ty:?} is in the fixture");
    }
}

#[test]
fn exported_ggufs_load_back_as_the_same_model() {
    let tiny = Model::load_gguf(&fixture("tiny.gguf")).unwrap();
    for format in [
        None,
        Some(Format::F16),
        Some(Format::Bf16),
        Some(Format::Q8_0),
        Some(Format::Q4_0),
    ] {
        let converted = Model::from_parts(*tiny.config(), convert(tiny.weights(), format).unwrap());
        let path = temp(&format!("{format:?}.gguf"));
        std::fs::write(
            &path,
            to_gguf(tiny.config(), converted.weights(), "test").unwrap(),
        )
        .unwrap();
        let back = Model::load_gguf(&path).unwrap();
        assert_eq!(
            format_name(back.weights()),
            format_name(converted.weights())
        );
        let (want, got) = (logprobs(&converted), logprobs(&back));
        // GGUF rounds block scales to f16; everything else is stored exactly.
        let bound = if format.is_some_and(Format::is_blocked) {
            2e-3
        } else {
            0.0
        };
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() <= bound, "{format:?}: {w} vs {g}");
        }
        std::fs::remove_file(path).unwrap();
    }
}

/// The fixture's metadata and tensors, to edit and write again.
struct Parts {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<usize>, GgmlType, Vec<u8>)>,
}

fn parts() -> Parts {
    let bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    let h = parse(&bytes).unwrap();
    let tensors = h
        .tensors
        .iter()
        .map(|t| {
            let data = h.tensor_bytes(&bytes, t).unwrap().to_vec();
            (t.name.clone(), t.shape(), t.ggml_type, data)
        })
        .collect();
    Parts {
        metadata: h.metadata.clone(),
        tensors,
    }
}

impl Parts {
    fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key.into(), value)),
        }
        self
    }

    fn edit_array(&mut self, key: &str, f: impl FnOnce(&mut Vec<Value>)) -> &mut Self {
        let (_, v) = self.metadata.iter_mut().find(|(k, _)| k == key).unwrap();
        let Value::Array(items) = v else {
            panic!("{key} is an array")
        };
        f(items);
        self
    }

    fn tensor(&mut self, name: &str) -> &mut (String, Vec<usize>, GgmlType, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }

    fn write(&self, name: &str) -> PathBuf {
        let mut w = Writer::default();
        for (k, v) in &self.metadata {
            w.meta(k, v.clone());
        }
        for (name, shape, ty, data) in &self.tensors {
            w.tensor(name, shape, *ty, data.clone()).unwrap();
        }
        let path = temp(name);
        std::fs::write(&path, w.to_bytes()).unwrap();
        path
    }

    /// The loader's error for this file.
    fn error(&self, name: &str) -> String {
        let path = self.write(name);
        let err = match Model::load_gguf(&path) {
            Ok(_) => panic!("{name}: loaded"),
            Err(e) => e.to_string(),
        };
        std::fs::remove_file(path).unwrap();
        err
    }
}

fn f32_bytes(n: usize) -> Vec<u8> {
    vec![0; 4 * n]
}

#[test]
fn files_that_are_not_gpt2_are_refused_by_name() {
    let string = |s: &str| Value::Str(s.into());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "arch",
            parts()
                .set("general.architecture", string("llama"))
                .error("arch"),
            "architecture is `llama`",
        ),
        (
            "ffn",
            parts()
                .set("gpt2.feed_forward_length", Value::U32(100))
                .error("ffn"),
            "feed_forward_length is 100",
        ),
        (
            "tokenizer model",
            parts()
                .set("tokenizer.ggml.model", string("llama"))
                .error("tok"),
            "tokenizer is `llama`",
        ),
        (
            "pre-tokenizer",
            parts()
                .set("tokenizer.ggml.pre", string("llama-bpe"))
                .error("pre"),
            "pre-tokenizer is `llama-bpe`",
        ),
        (
            "a token",
            parts()
                .edit_array("tokenizer.ggml.tokens", |t| t[1000] = string("xyz"))
                .error("token"),
            "token 1000 is",
        ),
        (
            "merges",
            parts()
                .edit_array("tokenizer.ggml.merges", |m| m.truncate(10))
                .error("merges"),
            "tokenizer.ggml.merges holds 10 entries",
        ),
        (
            "missing tensor",
            {
                let mut p = parts();
                p.tensors.retain(|t| t.0 != "blk.1.ffn_down.weight");
                p.error("missing")
            },
            "missing tensor `blk.1.ffn_down.weight`",
        ),
        (
            "wrong shape",
            {
                let mut p = parts();
                *p.tensor("position_embd.weight") = (
                    "position_embd.weight".into(),
                    vec![16, 32],
                    GgmlType::F32,
                    f32_bytes(512),
                );
                p.error("shape")
            },
            "`position_embd.weight`: dims [32, 16] do not match [32, 32]",
        ),
        (
            "extra layer",
            {
                let mut p = parts();
                p.tensors.push((
                    "blk.2.attn_norm.weight".into(),
                    vec![32],
                    GgmlType::F32,
                    f32_bytes(32),
                ));
                p.error("extra")
            },
            "beyond the 2 that gpt2.block_count declares",
        ),
        (
            "unknown type",
            unknown_type_error(),
            "q4_K (id 12) is not one this loader reads",
        ),
        (
            "untied head",
            {
                let mut p = parts();
                let (_, shape, ty, mut data) = p.tensor("token_embd.weight").clone();
                data[100] ^= 1;
                p.tensors.push(("output.weight".into(), shape, ty, data));
                p.error("head")
            },
            "differs from token_embd.weight",
        ),
    ];
    for (what, err, want) in cases {
        assert!(err.contains(want), "{what}: {err}");
    }
    // A tied head equal to the embedding is accepted.
    let mut p = parts();
    let head = p.tensor("token_embd.weight").clone();
    p.tensors
        .push(("output.weight".into(), head.1, head.2, head.3));
    let path = p.write("tied");
    assert!(Model::load_gguf(&path).is_ok());
    std::fs::remove_file(path).unwrap();
}

/// The fixture with one tensor's type id patched to q4_K's (12) in the
/// written header (the writer itself refuses a type it cannot size).
fn unknown_type_error() -> String {
    let path = parts().write("type");
    let mut bytes = std::fs::read(&path).unwrap();
    let name = b"blk.0.attn_output.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    bytes[ty..ty + 4].copy_from_slice(&12u32.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let err = Model::load_gguf(&path).err().unwrap().to_string();
    std::fs::remove_file(path).unwrap();
    err
}

#[test]
fn cut_files_are_errors() {
    let bytes = std::fs::read(fixture("tiny.gguf")).unwrap();
    let path = temp("cut.gguf");
    for cut in [10, 5000, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = Model::load_gguf(&path).err().unwrap().to_string();
        assert!(
            err.contains("cut short") || err.contains("past the end") || err.contains("cannot fit"),
            "cut at {cut}: {err}"
        );
    }
    std::fs::remove_file(path).unwrap();
}
