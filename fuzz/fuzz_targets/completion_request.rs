//! The JSON bodies a client sends (`POST /v1/completions`, `/v1/detect`,
//! `/v1/watermark/detect`, `/v1/provenance/lookup`, `/tokenize`,
//! `/detokenize`) on arbitrary bytes:
//! each parse returns a value or an error, never panics, and every error
//! is a 4xx with a message.
#![no_main]

use gpt2_serve::api::{
    parse_completion, parse_json, ApiError, DetectRequest, DetokenizeRequest, LookupRequest,
    TokenizeRequest, WatermarkDetectRequest,
};
use libfuzzer_sys::fuzz_target;

fn client_error(e: ApiError) {
    assert!(e.status.is_client_error());
    assert!(!e.message.is_empty());
}

fuzz_target!(|data: &[u8]| {
    if let Err(e) = parse_completion(data) {
        client_error(e);
    }
    if let Err(e) = parse_json::<DetectRequest>(data) {
        client_error(e);
    }
    if let Err(e) = parse_json::<LookupRequest>(data) {
        client_error(e);
    }
    if let Err(e) = parse_json::<WatermarkDetectRequest>(data) {
        client_error(e);
    }
    match parse_json::<TokenizeRequest>(data) {
        Ok(r) => {
            if let Err(e) = r.text() {
                client_error(e);
            }
        }
        Err(e) => client_error(e),
    }
    if let Err(e) = parse_json::<DetokenizeRequest>(data) {
        client_error(e);
    }
});
