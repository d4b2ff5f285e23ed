//! A GGUF file as `--model FILE.gguf` reads it: the header parser, every
//! tensor's bytes and decoding, then the whole GPT-2 loader. Seeded with
//! the block-type fixture and the start of the tiny model's header.
#![no_main]

use gpt2_model::gguf::{blocks, gpt2, parse};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse(data) {
        for t in &h.tensors {
            if let Ok(bytes) = h.tensor_bytes(data, t) {
                let _ = blocks::dequantize(t.ggml_type, bytes);
            }
        }
    }
    let _ = gpt2::from_bytes(Path::new("fuzz.gguf"), data);
});
