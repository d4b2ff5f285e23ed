//! The tokenizer against tiktoken's `gpt2` encoding (fixtures written by
//! tools/reference/tokenizer_reference.py): hand-picked edge cases, and
//! every text file in ../shared/data, compared by token count and SHA-256.

use gpt2_model::Tokenizer;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn ids_hash(ids: &[u32]) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

#[test]
fn edge_cases_match_tiktoken_and_round_trip() {
    let t = Tokenizer::gpt2();
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("edge_cases.json")).unwrap())
            .unwrap();
    assert!(cases.len() > 30);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let got = if case["special"].as_bool() == Some(true) {
            t.encode_with_special(text)
        } else {
            t.encode(text)
        }
        .unwrap();
        assert_eq!(got, want, "text {text:?}");
        assert_eq!(t.decode(&got).unwrap(), text, "round trip {text:?}");
    }
}

#[test]
fn every_shared_data_file_matches_tiktoken() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if !data.is_dir() {
        eprintln!("skipping: {} is absent", data.display());
        return;
    }
    let t = Tokenizer::gpt2();
    let expected: serde_json::Map<String, Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("shared_data.json")).unwrap(),
    )
    .unwrap();
    assert!(
        expected.len() >= 27,
        "fixture lists {} files",
        expected.len()
    );
    for (name, want) in &expected {
        let (file, per_line) = match name.strip_suffix("#lines") {
            Some(f) => (f, true),
            None => (name.as_str(), false),
        };
        let text = std::fs::read_to_string(data.join(file)).unwrap();
        let ids = if per_line {
            let mut ids = Vec::new();
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                ids.extend(t.encode(v["text"].as_str().unwrap()).unwrap());
            }
            ids
        } else {
            let ids = t.encode(&text).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), text, "{name}: round trip");
            ids
        };
        assert_eq!(
            ids.len() as u64,
            want["tokens"].as_u64().unwrap(),
            "{name}: token count"
        );
        assert_eq!(
            ids_hash(&ids),
            want["sha256"].as_str().unwrap(),
            "{name}: ids differ from tiktoken"
        );
    }
}

#[test]
fn pathological_whitespace_does_not_panic() {
    let t = Tokenizer::gpt2();
    for text in [
        " ".repeat(200_000),
        "\n".repeat(200_000),
        format!("{}x", " \t".repeat(100_000)),
    ] {
        let ids = t.encode(&text).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text);
    }
}
