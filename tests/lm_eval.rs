//! lm-evaluation-harness's `local-completions` model against `gpt2 serve`
//! (issue 14): a LAMBADA-shaped loglikelihood task over 24 real LAMBADA
//! passages (their last 30 words, to fit the tiny model's context), run by
//! a key holding only `score`, with lm-eval's remote tokenizer on the
//! server's /tokenize. Every passage's loglikelihood must equal what
//! `gpt2 eval lambada` computes (its encode_pair and span scoring) within
//! 1e-3, acc must agree, and no ledger record may be written. Skips,
//! saying why, without lm_eval (`.ci/run` installs it) or ../shared.

mod common;

use common::server::*;
use common::*;
use gpt2_eval::lambada::{encode_pair, split_passage};
use gpt2_model::score::{Scorer, Span};
use gpt2_model::{Model, Tokenizer};
use serde_json::Value;
use std::path::Path;

#[test]
fn lm_evals_loglikelihoods_equal_gpt2_eval_lambadas() {
    let lambada = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/eval/lambada/lambada_test.jsonl");
    let Ok(all) = std::fs::read_to_string(&lambada) else {
        eprintln!("skipped: {} is missing", lambada.display());
        return;
    };
    let s = Server::start(&[]);
    let (_, key) = s.key("score", "*", &[]);
    let dir = tempfile::tempdir().unwrap();
    let texts: Vec<String> = all
        .lines()
        .take(24)
        .map(|l| {
            let t: Value = serde_json::from_str(l).unwrap();
            let words: Vec<&str> = t["text"].as_str().unwrap().split(' ').collect();
            words[words.len().saturating_sub(30)..].join(" ")
        })
        .collect();
    let data = dir.path().join("data.jsonl");
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({"text": t}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let out_dir = dir.path().join("out");
    let script = fixtures().join("../clients/lm_eval_lambada.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&s.url)
        .arg(&key)
        .arg(&data)
        .arg(&out_dir)
        .output()
        .unwrap();
    if out.status.code() == Some(77) {
        eprintln!("skipped: lm_eval is not installed (pip install 'lm-eval[api]')");
        return;
    }
    assert!(out.status.success(), "lm_eval failed: {}", stderr(&out));
    let samples_file = std::fs::read_dir(out_dir.join("results/tiny"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("samples_")
        })
        .expect("lm_eval wrote its samples");
    let samples: Vec<Value> = std::fs::read_to_string(samples_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), texts.len());
    let model = Model::load_dir(&tiny_model()).unwrap();
    let tok = Tokenizer::gpt2();
    let mut scorer = Scorer::new(&model);
    for sample in &samples {
        let i = sample["doc_id"].as_u64().unwrap() as usize;
        let (context, target) = split_passage(&texts[i]);
        let (ctx, cont) = encode_pair(&tok, context, &target).unwrap();
        let mut all = ctx;
        all.extend_from_slice(&cont);
        let span = Span {
            input: all[..all.len() - 1].to_vec(),
            targets: cont,
        };
        let scores = scorer.score_spans(&[span], 0, &mut |_| {}).unwrap();
        let want: f64 = scores[0].iter().map(|t| t.logprob as f64).sum();
        let greedy = scores[0].iter().all(|t| t.is_greedy());
        let resp = &sample["resps"][0][0];
        let got: f64 = resp[0].as_str().unwrap().parse().unwrap();
        assert!(
            (got - want).abs() < 1e-3,
            "passage {i}: lm-eval {got}, gpt2 eval {want}"
        );
        assert_eq!(resp[1].as_str().unwrap() == "True", greedy, "passage {i}");
    }
    assert_eq!(
        s.ledger().stats().unwrap().records,
        0,
        "scoring wrote ledger records"
    );
}
