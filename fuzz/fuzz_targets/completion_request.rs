//! The request parser of `POST /v1/completions` (and the other JSON
//! bodies) on arbitrary bytes: it must return a value or an error, never
//! panic, and every error must be a 4xx with a message.
#![no_main]

use gpt2_serve::api::{parse_completion, parse_json, DetectRequest, LookupRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = parse_completion(data) {
        assert!(e.status.is_client_error());
        assert!(!e.message.is_empty());
    }
    let _ = parse_json::<DetectRequest>(data);
    let _ = parse_json::<LookupRequest>(data);
});
