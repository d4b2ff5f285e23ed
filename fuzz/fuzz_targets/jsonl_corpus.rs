//! The corpus reader (`gpt2 prepare`, `gpt2 detect`, `gpt2 ledger
//! import`): a UTF-8 text file, or JSONL with a string field per line,
//! with file:line errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    for name in ["fuzz.jsonl", "fuzz.txt"] {
        let mut docs = Vec::new();
        let _ = gpt2_corpus::parse_documents(Path::new(name), data, "text", &mut docs);
    }
});
