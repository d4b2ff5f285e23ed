//! The real `openai` Python SDK against `gpt2 serve` (issue 14): its
//! completions call with `n`, its streaming idiom, `stream_options`, echo
//! with logprobs, `logit_bias` forcing a token, and a refused field. Skips,
//! saying why, where python3 or the `openai` package is missing (`.ci/run`
//! installs it).

mod common;

use common::server::*;
use common::*;
use gpt2_model::Tokenizer;
use serde_json::Value;

#[test]
fn the_openai_sdk_works_unchanged() {
    let s = Server::start(&[]);
    let (_, key) = s.key("generate,score", "*", &[]);
    let script = fixtures().join("../clients/openai_sdk.py");
    let out = match std::process::Command::new("python3")
        .arg(&script)
        .args([&s.url, &key])
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: python3 cannot run ({e})");
            return;
        }
    };
    if out.status.code() == Some(77) {
        eprintln!("skipped: the openai package is not installed (pip install openai)");
        return;
    }
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["n"], 3, "{v}");
    assert_eq!(v["usage"], 24, "{v}");
    assert_eq!(v["stream_text"], v["plain_text"], "{v}");
    assert!(v["stream_usage"].as_u64().is_some_and(|u| u <= 4), "{v}");
    assert_eq!(v["echo_text"], "The cat sat");
    let ids = Tokenizer::gpt2().encode("The cat sat").unwrap();
    let want = tiny_echo_logprobs("The cat sat");
    let got = v["echo_logprobs"].as_array().unwrap();
    assert_eq!(got.len(), ids.len());
    assert!(got[0].is_null(), "{v}");
    for (g, w) in got[1..].iter().zip(&want) {
        assert!((g.as_f64().unwrap() - *w as f64).abs() < 1e-5);
    }
    assert_eq!(v["forced"], ".....");
    assert_eq!(
        (v["suffix_status"].as_u64(), v["suffix_param"].as_str()),
        (Some(400), Some("suffix"))
    );
}
