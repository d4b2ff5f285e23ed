//! Helpers shared by the end-to-end tests of the `gpt2` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A full-vocabulary GPT-2 of 2 layers, width 16, context 128, random
/// weights stored in f16 (tools/reference/gpt2_reference.py, shape `tiny`).
pub fn tiny_model() -> PathBuf {
    fixtures().join("tiny-gpt2")
}

pub fn gpt2() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gpt2"));
    c.env_remove("HF_ENDPOINT")
        .env_remove("HF_HOME")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE");
    c
}

pub fn run(args: &[&str]) -> Output {
    gpt2().args(args).output().expect("the gpt2 binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "gpt2 failed: {}", stderr(&o));
    stdout(&o)
}

/// Asserts a clean failure: non-zero exit, one line on stderr naming every
/// needle, no panic.
pub fn fails_with(o: Output, needles: &[&str]) {
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stdout: {}",
        stdout(&o)
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error should be one line: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "error {err:?} should mention {n:?}");
    }
}
pub mod server;

/// The tiny model's log-probability of each token of `text` after the
/// first, conditioned on the text before it (nothing in front): what the
/// server's `echo` reports, computed by the scorer directly.
pub fn tiny_echo_logprobs(text: &str) -> Vec<f32> {
    use gpt2_model::score::{Scorer, Span};
    let model = gpt2_model::Model::load_dir(&tiny_model()).unwrap();
    let ids = gpt2_model::Tokenizer::gpt2().encode(text).unwrap();
    let span = Span {
        input: ids[..ids.len() - 1].to_vec(),
        targets: ids[1..].to_vec(),
    };
    let scores = Scorer::new(&model)
        .score_spans(&[span], 0, &mut |_| {})
        .unwrap();
    scores[0].iter().map(|t| t.logprob).collect()
}
