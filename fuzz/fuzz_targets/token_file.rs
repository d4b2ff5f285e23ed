//! `gpt2 train`'s token files (`gpt2 prepare` writes them): magic,
//! version, count, then little-endian u16 ids; every id is checked
//! against the vocabulary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(tokens) = gpt2_train::data::parse_tokens(Path::new("fuzz.bin"), data, 50257) {
        assert!(tokens.iter().all(|&t| (t as usize) < 50257));
    }
});
