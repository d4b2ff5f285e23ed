//! `gpt2 quantize`: writes a model that loads and generates, reports what
//! the conversion costs on a text, and refuses what it cannot do cleanly.

mod common;
use common::*;

#[test]
fn quantized_default_model_generates_and_reports_its_cost() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("q8");
    let sample = fixtures().join("sample.txt");
    let report = ok(run(&[
        "quantize",
        "default",
        dir.to_str().unwrap(),
        "--to",
        "q8_0",
        "--check",
        sample.to_str().unwrap(),
        "--json",
    ]));
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(r["format"], "q8_0");
    let (before, after) = (
        r["weight_bytes_before"].as_f64().unwrap(),
        r["weight_bytes_after"].as_f64().unwrap(),
    );
    assert!(
        after < 0.3 * before,
        "q8_0 should be about a quarter of f32: {after} vs {before}"
    );
    let check = &r["check"];
    assert!(check["tokens"].as_u64().unwrap() > 100);
    let mean = check["mean_abs_delta_logprob"].as_f64().unwrap();
    assert!(mean > 0.0 && mean < 0.05, "mean |delta logprob| {mean}");
    assert!(check["top1_agreement"].as_f64().unwrap() > 0.95);

    let text = ok(run(&[
        "generate",
        "Once upon a time",
        "--model",
        dir.to_str().unwrap(),
        "--max-tokens",
        "8",
        "--seed",
        "3",
    ]));
    assert!(text.starts_with("Once upon a time") && text.len() > "Once upon a time".len());

    // A second run must not overwrite the model without --force.
    let written = std::fs::read(dir.join("model.safetensors")).unwrap();
    fails_with(
        run(&["quantize", "default", dir.to_str().unwrap(), "--to", "q4_0"]),
        &["already holds a model", "--force"],
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        written
    );
    ok(run(&[
        "quantize",
        "default",
        dir.to_str().unwrap(),
        "--to",
        "q4_0",
        "--force",
    ]));
}

#[test]
fn impossible_conversions_are_refused_by_name() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("m");
    fails_with(
        run(&["quantize", "default", dir.to_str().unwrap(), "--to", "q3_k"]),
        &["q3_k", "f32, f16, bf16, q8_0 or q4_0"],
    );
    // The tiny fixture is 16 wide: no whole blocks of 32.
    let tiny = tiny_model();
    fails_with(
        run(&[
            "quantize",
            tiny.to_str().unwrap(),
            dir.to_str().unwrap(),
            "--to",
            "q8_0",
        ]),
        &["wte.weight", "multiple of 32"],
    );
    assert!(
        !dir.join("model.safetensors").exists(),
        "nothing is written on failure"
    );
    fails_with(
        run(&[
            "quantize",
            tiny.to_str().unwrap(),
            tiny.to_str().unwrap(),
            "--to",
            "f16",
            "--force",
        ]),
        &["output is the input model"],
    );
    // f16 needs no blocks, so the tiny model converts.
    ok(run(&[
        "quantize",
        tiny.to_str().unwrap(),
        dir.to_str().unwrap(),
        "--to",
        "f16",
    ]));
}
