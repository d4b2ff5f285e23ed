//! A checkpoint as `Model::from_memory` reads it: `config.json` and a
//! safetensors file (8-byte header length, JSON header, tensor bytes).
//! The first input byte picks which of the two is fuzzed; the other is a
//! valid file of a tiny GPT-2 shape, so the fuzzer reaches the shape and
//! dtype checks, not only the JSON syntax errors.
#![no_main]

use gpt2_model::Model;
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"{"n_layer": 1, "n_head": 1, "n_embd": 4, "n_ctx": 8, "n_positions": 8, "vocab_size": 8, "layer_norm_epsilon": 1e-5}"#;

/// A safetensors header naming `tensors` (name, shape), all f32, zeros.
fn safetensors(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, shape) in tensors {
        let bytes = 4 * shape.iter().product::<usize>();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.resize(out.len() + offset, 0);
    out
}

fn tiny_weights() -> Vec<u8> {
    let (c, v, t) = (4, 8, 8);
    let mut ts = vec![
        ("wte.weight", vec![v, c]),
        ("wpe.weight", vec![t, c]),
        ("ln_f.weight", vec![c]),
        ("ln_f.bias", vec![c]),
    ];
    let layer = [
        ("ln_1.weight", vec![c]),
        ("ln_1.bias", vec![c]),
        ("attn.c_attn.weight", vec![c, 3 * c]),
        ("attn.c_attn.bias", vec![3 * c]),
        ("attn.c_proj.weight", vec![c, c]),
        ("attn.c_proj.bias", vec![c]),
        ("ln_2.weight", vec![c]),
        ("ln_2.bias", vec![c]),
        ("mlp.c_fc.weight", vec![c, 4 * c]),
        ("mlp.c_fc.bias", vec![4 * c]),
        ("mlp.c_proj.weight", vec![4 * c, c]),
        ("mlp.c_proj.bias", vec![c]),
    ];
    let names: Vec<(String, Vec<usize>)> = layer
        .iter()
        .map(|(n, s)| (format!("h.0.{n}"), s.clone()))
        .collect();
    for (n, s) in &names {
        ts.push((n.as_str(), s.clone()));
    }
    safetensors(&ts)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        if let Ok(config) = std::str::from_utf8(rest) {
            let _ = Model::from_memory(config, &tiny_weights());
        }
    } else {
        let _ = Model::from_memory(CONFIG, rest);
    }
});
