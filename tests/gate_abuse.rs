//! The attacks of the adversarial pass against the gate (issue 13), each
//! replayed against `gpt2 serve` as a key holder would try it. Every test
//! here failed on the server before the fix it names.

mod common;

use common::server::*;
use common::*;
use gpt2_model::Tokenizer;
use gpt2_provenance::watermark::{detect, Prf};
use gpt2_provenance::watermark_key::WatermarkKey;
use serde_json::{json, Value};
use std::time::Duration;

fn server_prf(s: &Server) -> Prf {
    let path = s.state.join("watermark.key");
    let text = std::fs::read_to_string(&path).unwrap();
    let key = WatermarkKey::from_json(&text, "watermark.key").unwrap();
    Prf::new(key, Tokenizer::gpt2().vocab_size())
}

/// Finding 1: text assembled from the alternatives of one-token
/// completions carries the watermark, because the alternatives are those
/// of the distribution the sampler draws from.
#[test]
fn text_assembled_from_alternatives_is_watermarked() {
    let s = Server::start(&[]);
    let (_, key) = s.key("generate", "*", &[]);
    let tok = Tokenizer::gpt2();
    let by_text: std::collections::HashMap<String, u32> = (0..tok.vocab_size() as u32)
        .map(|id| (tok.token_text(id), id))
        .collect();
    let prompt = tok.encode("Once upon a time").unwrap();
    let mut ids = prompt.clone();
    let mut rng = 12345u64;
    for _ in 0..60 {
        let v = complete(
            &s,
            &key,
            json!({"prompt": ids, "max_tokens": 1, "logprobs": 5, "seed": 1}),
        )
        .json();
        let top = v["choices"][0]["logprobs"]["top_logprobs"][0]
            .as_object()
            .unwrap()
            .clone();
        // The attacker's own draw among the alternatives, by their weights.
        let weights: Vec<(u32, f64)> = top
            .iter()
            .filter_map(|(t, lp)| Some((*by_text.get(t)?, lp.as_f64()?.exp())))
            .collect();
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut u =
            (rng >> 11) as f64 / (1u64 << 53) as f64 * weights.iter().map(|w| w.1).sum::<f64>();
        let mut pick = weights[0].0;
        for &(t, w) in &weights {
            pick = t;
            if u < w {
                break;
            }
            u -= w;
        }
        ids.push(pick);
    }
    let d = detect(&server_prf(&s), &prompt, &ids[prompt.len()..], 4.0);
    assert!(d.z_score >= 4.0, "assembled text scored z = {}", d.z_score);
}

/// Finding 1, for a key with `score` alone: the prompt positions' raw
/// alternatives are the attack (append a dummy token, read the
/// distribution at its position); they are capped at lm-eval's one,
/// and lm-eval's loglikelihood request works without `generate` and
/// writes no ledger record.
#[test]
fn a_score_key_gets_lm_evals_numbers_and_no_more() {
    let s = Server::start(&[]);
    let (id, score) = s.key("score", "*", &[]);
    let r = complete(
        &s,
        &score,
        json!({"prompt": "The cat sat on the", "echo": true, "max_tokens": 0, "logprobs": 5}),
    );
    assert_eq!(r.error(403)["error"]["param"], "logprobs");
    let admin = s.admin();
    let r = complete(
        &s,
        &admin,
        json!({"prompt": "The cat sat on the", "echo": true, "max_tokens": 0, "logprobs": 5}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // lm-eval's request shape: token ids, echo, max_tokens 1, logprobs 1, temperature 0.
    let ids = Tokenizer::gpt2().encode("The cat sat on the mat").unwrap();
    let before = s.ledger().stats().unwrap().records;
    let v = complete(
        &s,
        &score,
        json!({"prompt": [ids.clone()], "echo": true, "max_tokens": 1, "logprobs": 1, "temperature": 0}),
    )
    .json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(
        lp["token_logprobs"].as_array().unwrap().len(),
        ids.len() + 1
    );
    for top in lp["top_logprobs"].as_array().unwrap() {
        assert!(
            top.is_null() || top.as_object().unwrap().len() <= 1,
            "{top}"
        );
    }
    assert_eq!(s.ledger().stats().unwrap().records, before);
    let rows = audit_rows(&s, Some(&id));
    assert!(
        rows[0]["note"].as_str().unwrap().contains("not recorded"),
        "{}",
        rows[0]
    );
    // Without echo it is a generation, which a score key may not do.
    let r = complete(&s, &score, json!({"prompt": [ids], "max_tokens": 1}));
    assert_eq!(r.error(403)["error"]["code"], "insufficient_scope");
}

/// Finding 2: per-token green labels are for admin keys only, and the
/// server's key has a four-token SelfHash context.
#[test]
fn a_detect_key_gets_no_green_mask() {
    let s = Server::start(&[]);
    let (_, detect_key) = s.key("detect", "*", &[]);
    let body = br#"{"text": "Some text that a person wrote, long enough to score."}"#;
    let v = post(&s.url, "/v1/watermark/detect", Some(&detect_key), body).json();
    assert!(v["z_score"].is_number(), "{v}");
    assert!(v.get("green_mask").is_none(), "{v}");
    let admin = s.admin();
    let v = post(&s.url, "/v1/watermark/detect", Some(&admin), body).json();
    assert!(v["green_mask"].is_array(), "{v}");
    let key = std::fs::read_to_string(s.state.join("watermark.key")).unwrap();
    let key: Value = serde_json::from_str(&key).unwrap();
    assert_eq!(
        (key["seeding"].as_str(), key["context_width"].as_u64()),
        (Some("self_hash"), Some(4))
    );
}

fn words(n: usize) -> String {
    (0..n)
        .map(|i| ["the ", "cat ", "sat ", "on ", "a ", "mat "][i % 6])
        .collect()
}

/// Finding 3: every path that computes is admitted against the quota
/// before it computes, so parallel requests cannot all slip under it.
#[test]
fn detection_scoring_and_lookup_are_charged_against_the_quota() {
    let s = Server::start(&[]);
    let text = words(100);
    let cases = [
        ("/v1/detect", json!({"text": text})),
        ("/v1/watermark/detect", json!({"text": text})),
        ("/v1/provenance/lookup", json!({"text": text})),
        (
            "/v1/completions",
            json!({"prompt": text, "echo": true, "max_tokens": 0, "logprobs": 1}),
        ),
    ];
    for (path, body) in cases {
        let (id, key) = s.key("detect,score", "*", &["--tokens-per-day", "30"]);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (url, key, body) = (s.url.clone(), key.clone(), body.to_string());
                std::thread::spawn(move || post(&url, path, Some(&key), body.as_bytes()).status)
            })
            .collect();
        let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let served = statuses.iter().filter(|&&c| c == 200).count();
        assert_eq!(served, 1, "{path}: {statuses:?}");
        assert!(
            statuses.iter().all(|&c| c == 200 || c == 429),
            "{path}: {statuses:?}"
        );
        // Overshoot: at most the one request's own size.
        let used = charged(&audit_rows(&s, Some(&id)));
        assert!((100..=30 + 100).contains(&used), "{path}: charged {used}");
    }
}

/// Finding 11: three servers on one state directory enforce one quota.
#[test]
fn servers_sharing_a_state_share_one_quota() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let servers: Vec<Server> = (0..3).map(|_| Server::start_on(&state, &[])).collect();
    let (id, key) = servers[0].key("generate", "*", &["--tokens-per-day", "300"]);
    let threads: Vec<_> = (0..24)
        .map(|i| {
            let (url, key) = (servers[i % 3].url.clone(), key.clone());
            std::thread::spawn(move || {
                let body = json!({"prompt": "Hello", "max_tokens": 40, "seed": i});
                post(
                    &url,
                    "/v1/completions",
                    Some(&key),
                    body.to_string().as_bytes(),
                )
                .status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        statuses.iter().all(|&c| c == 200 || c == 429),
        "{statuses:?}"
    );
    let used = charged(&audit_rows(&servers[0], Some(&id)));
    // One request is at most 1 + 40 tokens.
    assert!(
        used <= 300 + 41,
        "charged {used} of a 300-token quota: {statuses:?}"
    );
    assert!(used >= 300 - 41, "charged only {used}: {statuses:?}");
}

/// Finding 12: a stream in flight at `kill -9` is charged (its whole
/// reservation) by the next server on the state.
#[test]
fn a_stream_cut_by_kill_9_is_charged() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut a = Server::start_on(&state, &["--step-delay-ms", "50"]);
    let (id, key) = a.key("generate", "*", &["--tokens-per-day", "1000"]);
    let url = a.url.clone();
    let k = key.clone();
    let t = std::thread::spawn(move || {
        let body = json!({"prompt": "Hello", "max_tokens": 100, "stream": true});
        // Reads until the server dies under it.
        if let Ok(mut r) = agent()
            .post(format!("{url}/v1/completions"))
            .header("Authorization", format!("Bearer {k}"))
            .send(body.to_string().as_bytes())
        {
            let _ = r.body_mut().read_to_string();
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let _ = t.join();
    let b = Server::start_on(&state, &[]);
    let rows = audit_rows(&b, Some(&id));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["status"], 599, "{}", rows[0]);
    // "Hello" and its 100 tokens, whatever was sent before the kill.
    assert_eq!(charged(&rows), 101);
}

/// Finding 4: a request of 65 to 128 prompts is one job, not 65 queue
/// entries.
#[test]
fn a_request_of_128_prompts_is_served_on_an_idle_server() {
    let s = Server::start(&[]);
    let (_, key) = s.key("generate", "*", &[]);
    let prompts: Vec<String> = (0..128).map(|i| format!("Prompt {i}")).collect();
    let r = complete(&s, &key, json!({"prompt": prompts, "max_tokens": 2}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 128);
}

/// Finding 5: a damaged database stops the server at start, naming it.
#[test]
fn a_damaged_database_stops_the_server_at_start() {
    for file in ["keys.sqlite", "ledger.sqlite"] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        {
            let s = Server::start_on(&state, &[]);
            let key = s.admin();
            for i in 0..40 {
                let body =
                    json!({"prompt": words(60), "max_tokens": 4, "seed": i, "user": words(30)});
                assert_eq!(complete(&s, &key, body).status, 200);
            }
        }
        // The last connection to close checkpoints the WAL into the file.
        let state_arg = state.to_str().unwrap();
        ok(run(&["audit", "--state", state_arg]));
        ok(run(&["ledger", "stats", "--state", state_arg]));
        let path = state.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.len() > 6 * 4096,
            "{file} is only {} bytes",
            bytes.len()
        );
        // Garbage over the pages past the schema (rows and indexes).
        for b in &mut bytes[3 * 4096..5 * 4096] {
            *b = 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        let mut child = gpt2()
            .args(["serve", "--addr", "127.0.0.1:0", "--state"])
            .arg(&state)
            .arg("--model")
            .arg(format!("tiny={}", tiny_model().display()))
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("the server runs on a damaged {file}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "served on a damaged {file}: {err}");
        assert!(err.contains(file) && !err.contains("panicked"), "{err}");
        assert!(!err.contains("listening on"), "{err}");
    }
}

/// Findings 6 and 9: requests without a valid key are counted and
/// audited at a bounded rate; free text in the audit is capped; the
/// scheme of the Authorization header is case-insensitive.
#[test]
fn the_audit_log_cannot_be_inflated() {
    let s = Server::start(&[]);
    for i in 0..150 {
        let key = format!("gpt2-bogus-{i}");
        assert_eq!(get(&s.url, "/v1/models", Some(&key)).status, 401);
    }
    let unkeyed = audit_rows(&s, None)
        .into_iter()
        .filter(|r| r["key_id"].is_null())
        .count();
    assert!(unkeyed <= 61, "{unkeyed} rows for 150 bad keys");
    let admin = s.admin();
    let metrics = get(&s.url, "/metrics", Some(&admin)).body;
    assert!(
        metrics.contains("gpt2_unauthenticated_requests_total 150"),
        "{metrics}"
    );

    let (id, key) = s.key("generate", "*", &[]);
    let big = "x".repeat(300_000);
    let r = complete(&s, &key, json!({"prompt": "a", "user": big}));
    assert_eq!(r.error(400)["error"]["param"], "user");
    let r = complete(
        &s,
        &key,
        json!({"prompt": "a", "model": "m".repeat(100_000)}),
    );
    r.error(404);
    for row in audit_rows(&s, Some(&id)) {
        let note = row["note"].as_str().unwrap_or("");
        assert!(note.len() <= 512, "a note of {} bytes", note.len());
    }
    let r = agent()
        .get(format!("{}/v1/models", s.url))
        .header("Authorization", format!("bearer {key}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Finding 7: data after the JSON body is refused. (Finding 8, server
/// paths in 500s, is a unit test of `gate::internal`, the one way a 500
/// is made.)
#[test]
fn trailing_data_is_refused() {
    let s = Server::start(&[]);
    let key = s.admin();
    let r = post(
        &s.url,
        "/v1/completions",
        Some(&key),
        br#"{"prompt": "a"} trailing"#,
    );
    assert!(r.error(400)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("after"));
}
