//! `gpt2 eval` and `gpt2 perplexity` end to end: every metric against the
//! independent Python reference (tools/reference/eval_reference.py, which
//! runs transformers with lm-evaluation-harness's own functions), and bad
//! data rejected with the file and line.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;

fn eval_dir() -> PathBuf {
    fixtures().join("eval")
}

/// (reference file, arguments after `--model TINY --json`).
const CASES: &[(&str, &[&str])] = &[
    (
        "lambada",
        &["eval", "lambada", "--data", "lambada-small.jsonl"],
    ),
    (
        "lambada_word",
        &["eval", "lambada-word", "--data", "lambada-small.jsonl"],
    ),
    (
        "wikitext_raw",
        &["eval", "wikitext", "--data", "wikitext-small.raw"],
    ),
    (
        "wikitext_tokens",
        &["eval", "wikitext", "--data", "wikitext-small.tokens"],
    ),
    (
        "wikitext_tokens_stride32",
        &[
            "eval",
            "wikitext",
            "--data",
            "wikitext-small.tokens",
            "--stride",
            "32",
        ],
    ),
    ("ptb", &["eval", "ptb", "--data", "ptb-sample.txt"]),
    ("bytes", &["eval", "bytes", "--data", "../sample.txt"]),
    (
        "perplexity_stride48",
        &["perplexity", "../sample.txt", "--stride", "48"],
    ),
];

fn run_case(args: &[&str]) -> Value {
    let dir = eval_dir();
    let model = tiny_model();
    let mut full: Vec<String> = args
        .iter()
        .map(|a| {
            if a.ends_with(".jsonl") || a.ends_with(".txt") || a.contains("wikitext-small") {
                dir.join(a).to_string_lossy().into_owned()
            } else {
                a.to_string()
            }
        })
        .collect();
    full.extend([
        "--model".into(),
        model.to_string_lossy().into_owned(),
        "--json".into(),
    ]);
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    serde_json::from_str(&ok(run(&refs))).expect("eval prints JSON")
}

#[test]
fn every_metric_matches_the_python_reference() {
    for (name, args) in CASES {
        let path = eval_dir().join("reference").join(format!("{name}.json"));
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let ours = run_case(args);
        let (task, want) = reference["results"]
            .as_object()
            .unwrap()
            .iter()
            .next()
            .unwrap();
        let got = &ours["results"][task];
        // (PTB counts sentences here, the reference one document.)
        if task != "ptb" {
            assert_eq!(
                ours["n-samples"][task], reference["n-samples"][task],
                "{name}: sample counts"
            );
        }
        let mut compared = 0;
        for (key, w) in want.as_object().unwrap() {
            if key == "alias" || key.contains("_stderr") {
                continue;
            }
            let (w, g) = (w.as_f64().unwrap(), got[key].as_f64().unwrap_or(f64::NAN));
            let rel = ((g - w) / w).abs();
            eprintln!("{name} {key}: {g:.6} vs reference {w:.6} (rel {rel:.1e})");
            assert!(
                rel < 1e-3 || (g - w).abs() < 1e-9,
                "{name} {key}: {g} vs {w}"
            );
            compared += 1;
        }
        assert!(compared > 0, "{name}: no metrics compared");
        // The accuracy's standard error follows lm-eval's mean_stderr exactly.
        if let Some(w) = want.get("acc_stderr,none").and_then(Value::as_f64) {
            assert!((got["acc_stderr,none"].as_f64().unwrap() - w).abs() < 1e-9);
        }
    }
}

#[test]
fn the_table_names_every_metric() {
    let out = ok(run(&[
        "eval",
        "lambada",
        "--data",
        eval_dir().join("lambada-small.jsonl").to_str().unwrap(),
        "--model",
        tiny_model().to_str().unwrap(),
        "--limit",
        "5",
    ]));
    assert!(out.contains("| lambada_openai | acc |"), "{out}");
    assert!(out.contains("| lambada_openai | perplexity |"), "{out}");
    // Passages longer than the context are cut as lm-eval cuts them, and said so.
    let out = ok(run(&[
        "eval",
        "lambada",
        "--data",
        eval_dir().join("lambada-small.jsonl").to_str().unwrap(),
        "--model",
        tiny_model().to_str().unwrap(),
    ]));
    assert!(
        out.contains("2 passages were longer than the context of 128 tokens"),
        "{out}"
    );
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

fn eval_fails(task: &str, data: &str, extra: &[&str], needles: &[&str]) {
    let model = tiny_model();
    let mut args = vec![
        "eval",
        task,
        "--data",
        data,
        "--model",
        model.to_str().unwrap(),
    ];
    args.extend(extra);
    fails_with(run(&args), needles);
}

#[test]
fn bad_data_is_named_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"text": "one two three"}"#;
    let broken = format!("{good}\n{{\"text\": \n");
    let field = format!("{good}\n\n{{\"txt\": \"a b\"}}\n");
    let cases: &[(&str, &[u8], &[&str])] = &[
        (
            "broken.jsonl",
            broken.as_bytes(),
            &["broken.jsonl:2", "not valid JSON"],
        ),
        (
            "field.jsonl",
            field.as_bytes(),
            &["field.jsonl:3", "\"text\""],
        ),
        (
            "number.jsonl",
            b"{\"text\": 5}\n",
            &["number.jsonl:1", "\"text\""],
        ),
        (
            "blank.jsonl",
            b"{\"text\": \"  \"}\n",
            &["blank.jsonl:1", "empty"],
        ),
        ("empty.jsonl", b"", &["empty.jsonl", "empty"]),
        (
            "latin1.jsonl",
            b"{\"text\": \"a\"}\n{\"text\": \"caf\xe9 b\"}\n",
            &["latin1.jsonl:2", "UTF-8"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let path = write(&dir, name, bytes);
        eval_fails("lambada", &path, &[], needles);
    }
    let wiki = write(&dir, "wiki.raw", b" = A = \n text \xff here \n");
    eval_fails("wikitext", &wiki, &[], &["wiki.raw:2", "UTF-8"]);
    let blank = write(&dir, "blank.txt", b"\n \n");
    eval_fails("ptb", &blank, &[], &["blank.txt", "no sentences"]);
    eval_fails(
        "wikitext",
        "/nonexistent/wiki.raw",
        &[],
        &["/nonexistent/wiki.raw"],
    );
    let lambada = eval_dir().join("lambada-small.jsonl");
    let lambada = lambada.to_str().unwrap();
    eval_fails("lambada", lambada, &["--stride", "8"], &["--stride"]);
    eval_fails("lambada", lambada, &["--limit", "0"], &["--limit"]);
    eval_fails("bytes", lambada, &["--limit", "3"], &["--limit"]);
    eval_fails(
        "wikitext",
        lambada,
        &["--stride", "128"],
        &["stride", "127"],
    );
}

#[test]
fn bytes_counts_every_byte_of_a_file_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "bin", b"text \xff\xfe more text \xc3");
    let v = run_case(&["eval", "bytes", "--data", &path]);
    assert!(v["tokens"]["bytes"].as_u64().unwrap() > 0);
    let note = v["notes"]["bytes"][0].as_str().unwrap();
    assert!(note.starts_with("3 bytes were not valid UTF-8"), "{note}");
    assert!(
        v["results"]["bytes"]["bits_per_byte,none"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn perplexity_of_an_empty_text_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "space.txt", b" \n ");
    fails_with(
        run(&[
            "perplexity",
            &path,
            "--model",
            tiny_model().to_str().unwrap(),
        ]),
        &["space.txt", "no words"],
    );
}
