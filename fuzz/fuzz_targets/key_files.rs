//! The files an operator hands the server: the watermark key
//! (`watermark.key`) and detector thresholds (`--thresholds`), parsed and
//! then used, since a file that parses must not make use panic.
#![no_main]

use gpt2_provenance::roc::Thresholds;
use gpt2_provenance::watermark::{detect, Prf};
use gpt2_provenance::watermark_key::WatermarkKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = WatermarkKey::from_json(text, "fuzz.key") {
        let prf = Prf::new(key, 64);
        let _ = detect(&prf, &[1, 2, 3], &[4, 5, 6, 7, 8, 9, 10, 11], 4.0);
    }
    if let Ok(t) = serde_json::from_str::<Thresholds>(text) {
        for (n, score) in [(0, 0.0), (50, 1.5), (10_000, f64::NAN), (200, -3.0)] {
            let _ = t.decide(n, score, 0.01);
        }
    }
});
