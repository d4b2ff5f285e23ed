//! `gpt2 score` and `gpt2 tokenize` end to end.

mod common;
use common::*;
use serde_json::Value;

/// The tiny checkpoint (f16 storage, context 128) on a 450-token text with
/// emoji, CJK and combining marks: four lm-eval rolling windows, compared
/// with transformers (tests/fixtures/tiny-gpt2-sample-reference.json).
#[test]
fn score_matches_transformers_across_windows() {
    let model = tiny_model();
    let sample = fixtures().join("sample.txt");
    let ours: Value = serde_json::from_str(&ok(run(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--top",
        "1",
        sample.to_str().unwrap(),
    ])))
    .unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny-gpt2-sample-reference.json")).unwrap(),
    )
    .unwrap();
    let (ours, theirs) = (
        ours["tokens"].as_array().unwrap(),
        reference["tokens"].as_array().unwrap(),
    );
    assert_eq!(ours.len(), theirs.len());
    assert!(ours.len() > 3 * 128, "the text should need several windows");
    let mut max_diff = 0f64;
    let mut rank_mismatches = 0;
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o["id"], t["id"]);
        max_diff =
            max_diff.max((o["logprob"].as_f64().unwrap() - t["logprob"].as_f64().unwrap()).abs());
        assert!((o["entropy"].as_f64().unwrap() - t["entropy"].as_f64().unwrap()).abs() < 1e-3);
        let rank_gap = o["rank"].as_i64().unwrap() - t["rank"].as_i64().unwrap();
        // f16 weights give near-ties; a rank may move by one across a tie.
        assert!(rank_gap.abs() <= 1, "rank {} vs {}", o["rank"], t["rank"]);
        rank_mismatches += (rank_gap != 0) as usize;
        assert_eq!(o["top"][0]["id"], t["argmax"]);
    }
    assert!(max_diff < 1e-4, "max |delta logprob| {max_diff}");
    assert!(
        rank_mismatches * 100 <= ours.len(),
        "{rank_mismatches} rank mismatches"
    );
}

#[test]
fn score_json_has_exactly_the_documented_shape() {
    let model = tiny_model();
    let out = ok(common::gpt2()
        .args(["score", "--model", model.to_str().unwrap(), "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all("Hello world, again.".as_bytes())?;
            c.wait_with_output()
        })
        .unwrap());
    let v: Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["mean_logprob", "model", "perplexity", "tokens"]);
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    for t in tokens {
        let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["entropy", "id", "logprob", "rank", "text"]);
    }
    assert_eq!(tokens[0]["text"], "Hello");
    let mean: f64 = tokens
        .iter()
        .map(|t| t["logprob"].as_f64().unwrap())
        .sum::<f64>()
        / 5.0;
    assert!((v["mean_logprob"].as_f64().unwrap() - mean).abs() < 1e-6);
    assert!((v["perplexity"].as_f64().unwrap() - (-mean).exp()).abs() < 1e-3);
}

#[test]
fn stride_changes_context_not_coverage() {
    let model = tiny_model();
    let sample = fixtures().join("sample.txt");
    let score = |stride: &[&str]| -> Vec<f64> {
        let mut args = vec!["score", "--model", model.to_str().unwrap(), "--json"];
        args.extend(stride);
        args.push(sample.to_str().unwrap());
        let v: Value = serde_json::from_str(&ok(run(&args))).unwrap();
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect()
    };
    let (full, half) = (score(&[]), score(&["--stride", "64"]));
    assert_eq!(full.len(), half.len());
    // The first window scores 127 tokens alike; later ones see other context.
    assert!(full[..127]
        .iter()
        .zip(&half[..127])
        .all(|(a, b)| (a - b).abs() < 1e-5));
    assert!(full[127..]
        .iter()
        .zip(&half[127..])
        .any(|(a, b)| (a - b).abs() > 1e-3));
    fails_with(
        run(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--stride",
            "0",
            sample.to_str().unwrap(),
        ]),
        &["stride"],
    );
    fails_with(
        run(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--stride",
            "128",
            sample.to_str().unwrap(),
        ]),
        &["stride", "127"],
    );
}

#[test]
fn tokenize_prints_tiktoken_ids() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.txt");
    std::fs::write(&f, "Hello world<|endoftext|>").unwrap();
    let f = f.to_str().unwrap();
    let json: Vec<u32> = serde_json::from_str(&ok(run(&["tokenize", "--json", f]))).unwrap();
    assert_eq!(&json[..2], &[15496, 995]);
    assert!(!json.contains(&50256));
    let special: Vec<u32> =
        serde_json::from_str(&ok(run(&["tokenize", "--json", "--special", f]))).unwrap();
    assert_eq!(special, vec![15496, 995, 50256]);
    assert_eq!(
        ok(run(&["tokenize", "--special", f])).trim(),
        "15496 995 50256"
    );
}
