//! `gpt2 serve` end to end, over HTTP, against the tiny fixture model
//! (2 layers, width 16, context 128): keys and scopes, quotas and rates,
//! revocation, the completions shape, streaming, echo with logprobs
//! against the scorer, the ledger before the response, bad input, a full
//! queue, the watermark, and a drain on SIGTERM.

mod common;

use common::server::*;
use common::*;
use gpt2_model::Tokenizer;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

#[test]
fn keys_scopes_and_models_decide_access() {
    let s = Server::start(&[]);
    let req = json!({"model": "tiny", "prompt": "Hello", "max_tokens": 2});
    let body = req.to_string();
    assert_eq!(get(&s.url, "/health", None).status, 200);
    let e = post(&s.url, "/v1/completions", None, body.as_bytes()).error(401);
    assert_eq!(e["error"]["code"], "invalid_api_key");
    post(
        &s.url,
        "/v1/completions",
        Some("gpt2-nope"),
        body.as_bytes(),
    )
    .error(401);
    get(&s.url, "/v1/models", None).error(401);

    let (_, gen) = s.key("generate", "tiny", &[]);
    assert_eq!(complete(&s, &gen, req.clone()).status, 200);
    let e = complete(&s, &gen, json!({"model": "tiny2", "prompt": "Hi"})).error(403);
    assert_eq!(e["error"]["code"], "model_not_allowed");
    complete(&s, &gen, json!({"model": "nope", "prompt": "Hi"})).error(404);
    let e = complete(
        &s,
        &gen,
        json!({"model": "tiny", "prompt": "Hi", "watermark": false}),
    )
    .error(403);
    assert_eq!(e["error"]["param"], "watermark");
    post(
        &s.url,
        "/v1/detect",
        Some(&gen),
        br#"{"text": "Hello there"}"#,
    )
    .error(403);
    get(&s.url, "/metrics", Some(&gen)).error(403);
    // Scoring a prompt needs `score`, not `generate`.
    let score =
        json!({"model": "tiny", "prompt": "Hi", "echo": true, "max_tokens": 0, "logprobs": 0});
    complete(&s, &gen, score.clone()).error(403);
    let (_, scorer) = s.key("score", "tiny", &[]);
    assert_eq!(complete(&s, &scorer, score).status, 200);

    let models = get(&s.url, "/v1/models", Some(&gen)).json();
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny"]);

    // Every request is audited, refusals included.
    let audit = ok(run(&[
        "audit",
        "--state",
        s.state.to_str().unwrap(),
        "--json",
        "--limit",
        "100",
    ]));
    let statuses: Vec<u64> = audit
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["status"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for code in [200, 401, 403, 404] {
        assert!(statuses.contains(&code), "{code} missing from {statuses:?}");
    }
}

#[test]
fn revocation_takes_effect_on_the_next_request() {
    let s = Server::start(&[]);
    let (id, key) = s.key("generate", "*", &[]);
    let req = json!({"prompt": "Hello", "max_tokens": 1});
    assert_eq!(complete(&s, &key, req.clone()).status, 200);
    ok(run(&[
        "keys",
        "revoke",
        "--state",
        s.state.to_str().unwrap(),
        &id,
    ]));
    complete(&s, &key, req).error(401);
    let list = ok(run(&["keys", "list", "--state", s.state.to_str().unwrap()]));
    assert!(list.contains("REVOKED"), "{list}");
    assert!(!list.contains(&key), "the secret must never be listed");
}

#[test]
fn quotas_and_rates_answer_429_with_retry_after() {
    let s = Server::start(&[]);
    let (_, quota) = s.key("generate", "*", &["--tokens-per-day", "10"]);
    let req = json!({"prompt": "Hello there", "max_tokens": 9});
    assert_eq!(complete(&s, &quota, req.clone()).status, 200);
    let r = complete(&s, &quota, req.clone());
    assert_eq!(r.error(429)["error"]["code"], "quota_exceeded");
    let wait: u64 = r.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=86_400).contains(&wait));

    // Tokens a request in flight may still use count too: while a long
    // stream holds 60 of a 50-token quota, the next request is refused.
    let slow = Server::start(&["--step-delay-ms", "20"]);
    let (_, q) = slow.key("generate", "*", &["--tokens-per-day", "50"]);
    let (url, k) = (slow.url.clone(), q.clone());
    let first = std::thread::spawn(move || {
        post(
            &url,
            "/v1/completions",
            Some(&k),
            br#"{"prompt": "A", "max_tokens": 59}"#,
        )
        .status
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = complete(&slow, &q, json!({"prompt": "B", "max_tokens": 1}));
    assert_eq!(r.error(429)["error"]["code"], "quota_exceeded");
    assert_eq!(first.join().unwrap(), 200);
    // Once a request is audited its reservation is released: 60 of 70
    // used, the next request is served.
    let (_, q) = slow.key("generate", "*", &["--tokens-per-day", "70"]);
    let long = json!({"prompt": "A", "max_tokens": 59});
    assert_eq!(complete(&slow, &q, long).status, 200);
    assert_eq!(
        complete(&slow, &q, json!({"prompt": "B", "max_tokens": 1})).status,
        200
    );

    let (_, rate) = s.key("generate", "*", &["--requests-per-minute", "2"]);
    let small = json!({"prompt": "Hi", "max_tokens": 1});
    for _ in 0..2 {
        assert_eq!(complete(&s, &rate, small.clone()).status, 200);
    }
    let r = complete(&s, &rate, small);
    assert_eq!(r.error(429)["error"]["code"], "rate_limit_exceeded");
    assert!(r.retry_after.is_some());
}

#[test]
fn completions_have_openai_shape_and_are_in_the_ledger_before_the_response() {
    let s = Server::start(&[]);
    let (id, key) = s.key("generate", "*", &[]);
    let r = complete(
        &s,
        &key,
        json!({"model": "tiny", "prompt": ["Once upon", "a time"], "n": 2, "max_tokens": 6,
               "seed": 7, "logprobs": 2, "user": "u1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "tiny");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    let tok = Tokenizer::gpt2();
    let mut completion_tokens = 0;
    // Read the ledger as soon as the response is in: every text is there.
    let mut ledger = s.ledger();
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let reason = c["finish_reason"].as_str().unwrap();
        assert!(reason == "length" || reason == "stop");
        let lp = &c["logprobs"];
        let n = lp["tokens"].as_array().unwrap().len();
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
        assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 2);
        completion_tokens += n;
        let text = c["text"].as_str().unwrap();
        if !text.is_empty() {
            let m = ledger.lookup(text).unwrap();
            assert!(m.iter().any(|m| m.exact), "{text:?} not in the ledger");
            let rec = ledger.get(m[0].record_id).unwrap().unwrap();
            assert_eq!(rec.caller.as_deref(), Some(id.as_str()));
            assert_eq!(rec.model.as_deref(), Some("tiny"));
            assert_eq!(
                rec.watermark_key_id.as_deref(),
                v["provenance"]["watermark_key_id"].as_str()
            );
        }
    }
    let audit = ok(run(&[
        "audit",
        "--state",
        s.state.to_str().unwrap(),
        "--json",
    ]));
    assert!(
        audit.contains("user=u1"),
        "the end user is audited: {audit}"
    );
    let usage = &v["usage"];
    let prompt_tokens =
        tok.encode("Once upon").unwrap().len() + tok.encode("a time").unwrap().len();
    assert_eq!(usage["prompt_tokens"], prompt_tokens);
    assert_eq!(usage["completion_tokens"], completion_tokens);
    assert_eq!(usage["total_tokens"], prompt_tokens + completion_tokens);

    // Same seed, same text; a stop string cuts it and says "stop".
    let greedy = json!({"model": "tiny", "prompt": "The", "max_tokens": 12, "temperature": 0});
    let a = complete(&s, &key, greedy.clone()).json();
    let text = a["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(a["choices"][0]["finish_reason"], "length");
    let b = complete(&s, &key, greedy.clone()).json();
    assert_eq!(b["choices"][0]["text"], text.as_str());
    let cut = text.char_indices().nth(text.chars().count() / 2).unwrap().0;
    let stop: String = text[cut..].chars().take(3).collect();
    let mut stopped = greedy;
    stopped["stop"] = json!([stop]);
    let c = complete(&s, &key, stopped).json();
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    let want = &text[..text.find(&stop).unwrap()];
    assert_eq!(c["choices"][0]["text"], want);
}

#[test]
fn a_stream_matches_the_plain_response_and_ends_with_done() {
    let s = Server::start(&[]);
    let (_, key) = s.key("generate", "*", &[]);
    let req = json!({"prompt": "Once upon a time", "max_tokens": 20, "seed": 3, "n": 2});
    let plain = complete(&s, &key, req.clone()).json();
    let mut streamed = req;
    streamed["stream"] = json!(true);
    let r = complete(&s, &key, streamed);
    assert_eq!(r.status, 200);
    let ev = events(&r.body);
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    let mut texts = [String::new(), String::new()];
    let mut ledger_ids = [None, None];
    let mut finishes = 0;
    for e in &ev[..ev.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "text_completion");
        for c in v["choices"].as_array().unwrap() {
            let i = c["index"].as_u64().unwrap() as usize;
            texts[i].push_str(c["text"].as_str().unwrap());
            if c["finish_reason"].is_string() {
                finishes += 1;
                ledger_ids[i] = v["provenance"]["ledger_id"].as_i64();
            }
        }
    }
    assert_eq!(finishes, 2);
    // As OpenAI streams: every chunk has a choice (the SDK's
    // `chunk.choices[0]` never fails) unless the usage chunk is asked for.
    for e in &ev[..ev.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["choices"].as_array().unwrap().len(), 1, "{v}");
        if v["choices"][0]["finish_reason"].is_string() {
            assert!(v["provenance"]["watermark_key_id"].is_string(), "{v}");
        }
    }
    let mut with_usage = json!({"prompt": "Once upon a time", "max_tokens": 20, "seed": 3, "n": 2,
                                "stream": true, "stream_options": {"include_usage": true}});
    let ev = events(&complete(&s, &key, with_usage.clone()).body);
    let tail: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(tail["choices"], json!([]));
    assert_eq!(
        tail["usage"]["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
    with_usage["stream_options"] = json!({"include_usage": true, "bogus": 1});
    complete(&s, &key, with_usage).error(400);
    let mut ledger = s.ledger();
    for (i, t) in texts.iter().enumerate() {
        assert_eq!(plain["choices"][i]["text"], t.as_str());
        // The last chunk names the record of the whole completion.
        let exact: Vec<i64> = ledger
            .lookup(t)
            .unwrap()
            .iter()
            .filter(|m| m.exact)
            .map(|m| m.record_id)
            .collect();
        assert!(
            ledger_ids[i].is_some_and(|id| exact.contains(&id)),
            "{:?} vs {exact:?}",
            ledger_ids[i]
        );
    }
    // `gpt2 ledger --state DIR` reads the server's ledger.
    let file = s.state.join("text.txt");
    std::fs::write(&file, &texts[0]).unwrap();
    let state = s.state.to_str().unwrap();
    let out = ok(run(&[
        "ledger",
        "lookup",
        "--state",
        state,
        "--json",
        file.to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["matches"][0]["exact"], true, "{v}");
}

#[test]
fn echo_with_logprobs_gives_the_scorers_values() {
    let s = Server::start(&[]);
    let (_, key) = s.key("score,generate", "*", &[]);
    let prompt = "The quick brown fox jumps over the lazy dog.";
    let v = complete(
        &s,
        &key,
        json!({"prompt": prompt, "echo": true, "max_tokens": 0, "logprobs": 1}),
    )
    .json();
    let c = &v["choices"][0];
    assert_eq!(c["text"], prompt);
    let ids = Tokenizer::gpt2().encode(prompt).unwrap();
    // Each token conditioned on the prompt before it; the first has none.
    let want = tiny_echo_logprobs(prompt);
    let got = c["logprobs"]["token_logprobs"].as_array().unwrap();
    assert_eq!(got.len(), ids.len());
    assert!(got[0].is_null() && c["logprobs"]["top_logprobs"][0].is_null());
    for (g, w) in got[1..].iter().zip(&want) {
        assert!((g.as_f64().unwrap() - *w as f64).abs() < 1e-5, "{g} vs {w}");
    }
    // With generation too: the prompt's scores, then the new tokens.
    let v = complete(
        &s,
        &key,
        json!({"prompt": prompt, "echo": true, "max_tokens": 3, "logprobs": 0}),
    )
    .json();
    let lp = &v["choices"][0]["logprobs"]["token_logprobs"];
    assert_eq!(lp.as_array().unwrap().len(), ids.len() + 3);
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with(prompt));
}

#[test]
fn bad_input_gets_a_4xx_json_error_never_a_crash() {
    let s = Server::start(&["--max-body", "2000"]);
    let key = s.admin();
    let send = |body: &[u8]| post(&s.url, "/v1/completions", Some(&key), body);
    send(b"{").error(400);
    send(b"").error(400);
    send(b"[]").error(400);
    let e = send(br#"{"prompt": "a", "tools": 1}"#).error(400);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown field"));
    let e = send(br#"{"prompt": 5}"#).error(400);
    assert_eq!(e["error"]["param"], "prompt");
    assert_eq!(
        send(br#"{"max_tokens": "5"}"#).error(400)["error"]["param"],
        "max_tokens"
    );
    assert_eq!(
        send(br#"{"max_tokens": 0}"#).error(400)["error"]["param"],
        "max_tokens"
    );
    assert_eq!(
        send(br#"{"max_tokens": -3}"#).error(400)["error"]["param"],
        "max_tokens"
    );
    let e = send(br#"{"max_tokens": 1000000000000}"#).error(400);
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    let long: Vec<u32> = vec![464; 200];
    let e = send(json!({"prompt": long}).to_string().as_bytes()).error(400);
    assert_eq!(e["error"]["code"], "context_length_exceeded");
    send(br#"{"prompt": [99999999]}"#).error(400);
    send(br#"{"temperature": -1}"#).error(400);
    send(br#"{"top_p": 0}"#).error(400);
    send(br#"{"n": 0}"#).error(400);
    send(br#"{"logprobs": 6}"#).error(400);
    send(br#"{"stop": ["a","b","c","d","e"]}"#).error(400);
    send(b"{\"prompt\": \"caf\xe9\"}").error(400);
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(5000));
    send(big.as_bytes()).error(413);
    post(&s.url, "/v1/detect", Some(&key), b"{\"text\": 1}").error(400);
    post(&s.url, "/v1/watermark/detect", Some(&key), b"{}").error(400);
    post(&s.url, "/v1/provenance/lookup", Some(&key), b"nope").error(400);
    get(&s.url, "/v1/nothing", Some(&key)).error(404);
    assert_eq!(get(&s.url, "/health", None).status, 200);
}

#[test]
fn slow_clients_are_cut_off() {
    use std::io::Write;
    let s = Server::start(&["--header-timeout", "1", "--body-timeout", "1"]);
    let key = s.admin();
    let addr = s.url.trim_start_matches("http://").to_string();
    // Headers that never finish: the connection is closed after 1 s.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the connection stayed open"
    );
    // A body that never finishes: 408 with a JSON error.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: 100\r\n\r\n{{\"prompt\""
    );
    slow.write_all(head.as_bytes()).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = String::new();
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"body_timeout\""), "{reply}");
    assert_eq!(get(&s.url, "/health", None).status, 200);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let s = Server::start(&["--slots", "1", "--queue", "1", "--step-delay-ms", "30"]);
    let (_, key) = s.key("generate", "*", &[]);
    // A holds the only slot for ~3 s; B waits in the queue; C finds it full.
    let url = s.url.clone();
    let k = key.clone();
    let a = std::thread::spawn(move || {
        let body = json!({"prompt": "A", "max_tokens": 100, "stream": true}).to_string();
        let r = agent()
            .post(format!("{url}/v1/completions"))
            .header("Authorization", format!("Bearer {k}"))
            .send(body.as_bytes())
            .unwrap();
        let mut all = String::new();
        r.into_body()
            .into_reader()
            .read_to_string(&mut all)
            .unwrap();
        all
    });
    std::thread::sleep(Duration::from_millis(500));
    let url = s.url.clone();
    let k = key.clone();
    let b = std::thread::spawn(move || {
        post(
            &url,
            "/v1/completions",
            Some(&k),
            br#"{"prompt": "B", "max_tokens": 2}"#,
        )
        .status
    });
    std::thread::sleep(Duration::from_millis(500));
    let c = complete(&s, &key, json!({"prompt": "C", "max_tokens": 2}));
    assert_eq!(c.error(503)["error"]["code"], "overloaded");
    assert_eq!(c.retry_after.as_deref(), Some("1"));
    assert!(a.join().unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(b.join().unwrap(), 200);
    let metrics = get(&s.url, "/metrics", Some(&s.admin())).body;
    assert!(
        metrics.contains("gpt2_requests_total{endpoint=\"/v1/completions\",status=\"503\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gpt2_queue_depth 0"));
    assert!(metrics.contains("gpt2_batch_sequences_bucket"));
}

#[test]
fn completions_are_watermarked_unless_an_admin_opts_out() {
    let s = Server::start(&[]);
    let admin = s.admin();
    let req = json!({"prompt": "The", "max_tokens": 100, "seed": 11});
    let marked = complete(&s, &admin, req.clone()).json();
    let mut plain_req = req;
    plain_req["watermark"] = json!(false);
    let plain = complete(&s, &admin, plain_req).json();
    assert!(plain["provenance"]["watermark_key_id"].is_null());
    let z = |v: &Value| {
        let text = v["choices"][0]["text"].as_str().unwrap();
        let d = post(
            &s.url,
            "/v1/watermark/detect",
            Some(&admin),
            json!({"text": text, "prompt": "The"})
                .to_string()
                .as_bytes(),
        )
        .json();
        (
            d["z_score"].as_f64().unwrap(),
            d["decision"].as_str().unwrap().to_string(),
        )
    };
    let (zm, dm) = z(&marked);
    let (zp, _) = z(&plain);
    assert_eq!(dm, "watermarked", "z = {zm}");
    assert!(zp < 4.0, "unwatermarked text has z = {zp}");
    let audit = ok(run(&[
        "audit",
        "--state",
        s.state.to_str().unwrap(),
        "--json",
    ]));
    assert!(
        audit.contains("unwatermarked"),
        "the opt-out is audited: {audit}"
    );
    // The same seed without the watermark is what `gpt2 generate` samples.
    let cli = ok(run(&[
        "generate",
        "The",
        "--model",
        tiny_model().to_str().unwrap(),
        "--max-tokens",
        "100",
        "--seed",
        "11",
        "--top-k",
        "0",
        "--json",
    ]));
    let cli: Value = serde_json::from_str(cli.trim()).unwrap();
    assert_eq!(cli["samples"][0]["text"], plain["choices"][0]["text"]);
    // And the detector endpoints answer.
    let text = marked["choices"][0]["text"].as_str().unwrap();
    let d = post(
        &s.url,
        "/v1/detect",
        Some(&admin),
        json!({"text": text}).to_string().as_bytes(),
    )
    .json();
    assert_eq!(
        d["tokens"].as_array().unwrap().len(),
        Tokenizer::gpt2().encode(text).unwrap().len()
    );
    assert!(d["statistics"]["log_rank"].is_number());
    let l = post(
        &s.url,
        "/v1/provenance/lookup",
        Some(&admin),
        json!({"text": text}).to_string().as_bytes(),
    )
    .json();
    assert_eq!(l["matches"][0]["exact"], true);
    assert_eq!(l["matches"][0]["model"], "tiny");
    assert!(l["matches"][0]["caller"]
        .as_str()
        .unwrap()
        .starts_with("key_"));
}

#[test]
fn sigterm_drains_the_requests_in_flight() {
    let mut s = Server::start(&["--step-delay-ms", "20"]);
    let (_, key) = s.key("generate", "*", &[]);
    let url = s.url.clone();
    let stream = std::thread::spawn(move || {
        let body = json!({"prompt": "A", "max_tokens": 60, "stream": true}).to_string();
        let r = agent()
            .post(format!("{url}/v1/completions"))
            .header("Authorization", format!("Bearer {key}"))
            .send(body.as_bytes())
            .unwrap();
        let mut all = String::new();
        r.into_body()
            .into_reader()
            .read_to_string(&mut all)
            .unwrap();
        all
    });
    std::thread::sleep(Duration::from_millis(400));
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let body = stream.join().unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the server did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[test]
fn batching_does_not_change_the_text() {
    // 4 slots for 8 requests of different lengths: requests queue, join a
    // running batch (prefill beside decode steps) and leave it at
    // different steps; each must get the text it gets alone.
    let s = Server::start(&["--slots", "4"]);
    let (_, key) = s.key("generate", "*", &[]);
    let reqs: Vec<Value> = (0..8)
        .map(|i| {
            json!({"prompt": format!("Request number {i} says"), "seed": 100 + i,
                   "max_tokens": 5 + 7 * i, "n": 1 + i % 2})
        })
        .collect();
    let texts = |v: Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_string())
            .collect()
    };
    let alone: Vec<Vec<String>> = reqs
        .iter()
        .map(|r| texts(complete(&s, &key, r.clone()).json()))
        .collect();
    let together: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = reqs
            .iter()
            .map(|r| scope.spawn(|| texts(complete(&s, &key, r.clone()).json())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(alone, together);
    let metrics = get(&s.url, "/metrics", Some(&s.admin())).body;
    let batched = metrics
        .lines()
        .find(|l| l.starts_with("gpt2_batch_sequences_bucket{le=\"1\"}"))
        .unwrap();
    let total = metrics
        .lines()
        .find(|l| l.starts_with("gpt2_batch_sequences_count"))
        .unwrap();
    assert_ne!(
        batched.split(' ').nth(1),
        total.split(' ').nth(1),
        "some forward passes held several sequences"
    );
}

/// Sends completions back to back (streaming or not) until the server
/// dies; returns every text received, including what a stream cut by the
/// kill had delivered in whole events.
fn client_until_dead(url: String, key: String, stream: bool, seed: u64) -> Vec<String> {
    let mut received = Vec::new();
    for i in 0.. {
        let body = json!({"prompt": "Once", "max_tokens": 40, "seed": seed * 1000 + i,
                          "stream": stream});
        let Ok(r) = agent()
            .post(format!("{url}/v1/completions"))
            .header("Authorization", format!("Bearer {key}"))
            .send(body.to_string().as_bytes())
        else {
            break;
        };
        if r.status() != 200 {
            continue;
        }
        let mut text = String::new();
        let mut reader = BufReader::new(r.into_body().into_reader());
        let mut event = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if line == "\n" {
                // A whole event: only now has the client seen it.
                if let Some(data) = event.strip_prefix("data: ") {
                    if let Ok(v) = serde_json::from_str::<Value>(data.trim_end()) {
                        for c in v["choices"].as_array().into_iter().flatten() {
                            text.push_str(c["text"].as_str().unwrap_or_default());
                        }
                    }
                }
                event.clear();
            } else {
                event.push_str(&line);
            }
        }
        if !stream && !event.is_empty() {
            if let Ok(v) = serde_json::from_str::<Value>(&event) {
                text = v["choices"][0]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
        }
        if !text.is_empty() {
            received.push(text);
        }
    }
    received
}

#[test]
fn after_kill_9_under_load_every_text_received_is_in_the_ledger() {
    let mut s = Server::start(&["--step-delay-ms", "2"]);
    let (_, key) = s.key("generate", "*", &[]);
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (url, key) = (s.url.clone(), key.clone());
            std::thread::spawn(move || client_until_dead(url, key, i % 2 == 0, i))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    let received: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    println!("{} texts received before the kill", received.len());
    assert!(received.len() >= 8, "too little load: {}", received.len());
    let mut ledger = s.ledger();
    for t in &received {
        assert!(
            ledger.lookup(t).unwrap().iter().any(|m| m.exact),
            "{t:?} was received but is not in the ledger"
        );
    }
}

/// The audit rows of `key_id`, newest first.
fn audit_rows(s: &Server, key_id: &str) -> Vec<Value> {
    let state = s.state.to_str().unwrap();
    ok(run(&["audit", "--state", state, "--key", key_id, "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Sends `body` to `path` over a raw connection and hangs up after `after`
/// without reading the answer.
fn hang_up_after(s: &Server, path: &str, key: &str, body: Value, after: Duration) {
    use std::io::Write;
    let addr = s.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(after);
    drop(c);
}

#[test]
fn more_choices_than_slots_are_served_without_stalling_others() {
    let s = Server::start(&["--slots", "4", "--step-delay-ms", "10"]);
    let (_, big) = s.key("generate", "*", &[]);
    let (_, small) = s.key("generate", "*", &[]);
    std::thread::scope(|scope| {
        let many = scope.spawn(|| {
            complete(
                &s,
                &big,
                json!({"prompt": "A", "n": 9, "max_tokens": 40, "seed": 1}),
            )
        });
        let prompts = scope.spawn(|| {
            let prompts: Vec<String> = (0..100).map(|i| format!("prompt {i}")).collect();
            complete(&s, &big, json!({"prompt": prompts, "max_tokens": 1}))
        });
        std::thread::sleep(Duration::from_millis(300));
        // Another key's short request is served while the big ones run.
        let start = Instant::now();
        let r = complete(&s, &small, json!({"prompt": "B", "max_tokens": 2}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a 2-token request waited {:?}",
            start.elapsed()
        );
        let many = many.join().unwrap();
        assert_eq!(many.status, 200, "{}", many.body);
        assert_eq!(many.json()["choices"].as_array().unwrap().len(), 9);
        // 100 prompts are one request, not 100 queue entries.
        let prompts = prompts.join().unwrap();
        assert_eq!(prompts.status, 200, "{}", prompts.body);
        assert_eq!(prompts.json()["choices"].as_array().unwrap().len(), 100);
    });
    // The 9 choices served over 4 slots are those a 16-slot server gives
    // at once (same seed and streams; unwatermarked, as the two servers'
    // keys differ).
    let wide = Server::start(&["--slots", "16"]);
    let req = json!({"prompt": "A", "n": 9, "max_tokens": 40, "seed": 1, "watermark": false});
    let a = complete(&wide, &wide.admin(), req.clone());
    let b = complete(&s, &s.admin(), req);
    assert_eq!(a.json()["choices"], b.json()["choices"]);
}

#[test]
fn a_client_that_hangs_up_is_charged_what_was_computed_and_frees_its_quota() {
    let s = Server::start(&["--step-delay-ms", "20"]);
    // Four requests reserve 4 x (1 + 100) > 400 while they run.
    let (id, key) = s.key("generate,score", "*", &["--tokens-per-day", "400"]);
    let body = json!({"prompt": "A", "max_tokens": 100});
    std::thread::scope(|scope| {
        for stream in [false, false, true, true] {
            let mut body = body.clone();
            body["stream"] = json!(stream);
            let s = &s;
            let key = &key;
            scope.spawn(move || {
                hang_up_after(s, "/v1/completions", key, body, Duration::from_millis(400))
            });
        }
    });
    // Within a step or two of the hang-ups the work stops and the rows land.
    let start = Instant::now();
    let rows = loop {
        let rows = audit_rows(&s, &id);
        if rows.len() == 4 || start.elapsed() > Duration::from_secs(5) {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in &rows {
        let generated = r["completion_tokens"].as_u64().unwrap();
        assert!(generated > 0 && generated < 100, "{r}");
        assert!(r["note"].as_str().unwrap().contains("disconnected"), "{r}");
    }
    assert_eq!(
        rows.iter().filter(|r| r["status"] == 499).count(),
        2,
        "the plain requests are 499s (streams had sent their 200): {rows:?}"
    );
    // The reservations are released: what is charged is what was computed.
    let r = complete(&s, &key, json!({"prompt": "B", "max_tokens": 8}));
    assert_eq!(r.status, 200, "{}", r.body);
    // A request that only scores is cut off and audited the same way.
    let prompts: Vec<String> = (0..60)
        .map(|i| format!("a prompt to score, number {i}"))
        .collect();
    let scoring = json!({"prompt": prompts, "echo": true, "logprobs": 5, "max_tokens": 0});
    hang_up_after(
        &s,
        "/v1/completions",
        &key,
        scoring,
        Duration::from_millis(5),
    );
    let start = Instant::now();
    while audit_rows(&s, &id).len() < 6 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(audit_rows(&s, &id).len(), 6);
}

#[test]
fn sigterm_exits_within_the_drain_timeout_whatever_is_running() {
    let mut s = Server::start(&[
        "--step-delay-ms",
        "50",
        "--drain-timeout",
        "1",
        "--slots",
        "1",
    ]);
    let (id, key) = s.key("generate", "*", &[]);
    // A 6 s stream holds the only slot; another request waits for it.
    let url = s.url.clone();
    let k = key.clone();
    let long = std::thread::spawn(move || {
        let body = json!({"prompt": "A", "max_tokens": 120, "stream": true}).to_string();
        let r = agent()
            .post(format!("{url}/v1/completions"))
            .header("Authorization", format!("Bearer {k}"))
            .send(body.as_bytes());
        if let Ok(r) = r {
            let mut all = String::new();
            let _ = r.into_body().into_reader().read_to_string(&mut all);
        }
    });
    let url = s.url.clone();
    let parked = std::thread::spawn(move || {
        let _ = agent()
            .post(format!("{url}/v1/completions"))
            .header("Authorization", format!("Bearer {key}"))
            .send(br#"{"prompt": "B", "max_tokens": 100}"#);
    });
    std::thread::sleep(Duration::from_millis(500));
    let pid = s.child.id().to_string();
    let start = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    loop {
        if s.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the server did not exit within the drain timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    long.join().unwrap();
    parked.join().unwrap();
    // Both requests are audited, with what they were given.
    assert_eq!(audit_rows(&s, &id).len(), 2);
}

#[test]
fn the_tokenizer_endpoints_speak_vllms_and_llama_cpps_shapes() {
    let s = Server::start(&[]);
    let (_, key) = s.key("score", "*", &[]);
    let tok = Tokenizer::gpt2();
    let text = "Hello world, it's GPT-2.<|endoftext|>";
    let want = tok.encode_with_special(text).unwrap();
    // lm-evaluation-harness's RemoteTokenizer (vLLM's shape).
    let body = json!({"prompt": text, "add_special_tokens": false}).to_string();
    let v = post(&s.url, "/tokenize", Some(&key), body.as_bytes()).json();
    assert_eq!(v["tokens"], json!(want));
    assert_eq!(*want.last().unwrap(), 50256);
    assert_eq!(
        (v["count"].as_u64(), v["max_model_len"].as_u64()),
        (Some(want.len() as u64), Some(128))
    );
    let body = json!({"tokens": want}).to_string();
    let v = post(&s.url, "/detokenize", Some(&key), body.as_bytes()).json();
    assert_eq!(
        (v["prompt"].as_str(), v["content"].as_str()),
        (Some(text), Some(text))
    );
    let info = get(&s.url, "/tokenizer_info", Some(&key)).json();
    assert_eq!(info["eos_token"], "<|endoftext|>");
    // llama.cpp's shape.
    let body = json!({"content": "Hi there", "with_pieces": true}).to_string();
    let v = post(&s.url, "/tokenize", Some(&key), body.as_bytes()).json();
    assert_eq!(v["tokens"][1]["piece"], " there");
    // Bad input names the field; other scopes are refused.
    let r = post(
        &s.url,
        "/detokenize",
        Some(&key),
        br#"{"tokens": [1, 99999]}"#,
    );
    assert_eq!(r.error(400)["error"]["param"], "tokens");
    let r = post(
        &s.url,
        "/tokenize",
        Some(&key),
        br#"{"prompt": "a", "content": "b"}"#,
    );
    r.error(400);
    let (_, generate) = s.key("generate", "*", &[]);
    post(&s.url, "/tokenize", Some(&generate), br#"{"prompt": "a"}"#).error(403);
    get(&s.url, "/tokenizer_info", None).error(401);
}

#[test]
fn logit_bias_penalties_and_best_of_as_openai_defines_them() {
    let s = Server::start(&[]);
    let (_, key) = s.key("generate", "*", &[]);
    // +100 on "." forces it, watermark or not.
    let v = complete(
        &s,
        &key,
        json!({"prompt": "Hello", "max_tokens": 5, "logit_bias": {"13": 100}, "seed": 1}),
    )
    .json();
    assert_eq!(v["choices"][0]["text"], ".....");
    // Penalties change the draw, and the same seed gives the same text.
    let pen = json!({"prompt": "Hello", "max_tokens": 12, "seed": 3, "presence_penalty": 2,
                     "frequency_penalty": 2, "logit_bias": {"13": 5}});
    let a = complete(&s, &key, pen.clone()).json();
    assert_eq!(
        a["choices"][0]["text"],
        complete(&s, &key, pen).json()["choices"][0]["text"]
    );
    let dots = a["choices"][0]["text"]
        .as_str()
        .unwrap()
        .matches('.')
        .count();
    assert!(
        dots <= 2,
        "the penalties should stop the repeats: {}",
        a["choices"][0]["text"]
    );
    // best_of 4, n 1: the sample of the four with the highest mean logprob.
    let body = |n: usize, best: usize| json!({"prompt": "Once", "max_tokens": 8, "seed": 9, "n": n, "best_of": best, "logprobs": 1});
    let all = complete(&s, &key, body(4, 4)).json();
    let best = complete(&s, &key, body(1, 4)).json();
    let mean = |c: &Value| {
        let lp = c["logprobs"]["token_logprobs"].as_array().unwrap();
        lp.iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / lp.len() as f64
    };
    let choices = all["choices"].as_array().unwrap();
    let top = choices
        .iter()
        .max_by(|a, b| mean(a).total_cmp(&mean(b)))
        .unwrap();
    assert_eq!(best["choices"].as_array().unwrap().len(), 1);
    assert_eq!(best["choices"][0]["text"], top["text"]);
    assert_eq!(
        best["usage"]["completion_tokens"],
        all["usage"]["completion_tokens"]
    );
    // Bad values name their field.
    for (body, param) in [
        (
            json!({"prompt": "a", "logit_bias": {"99999": 1}}),
            "logit_bias",
        ),
        (
            json!({"prompt": "a", "logit_bias": {"12": 101}}),
            "logit_bias",
        ),
        (json!({"prompt": "a", "logit_bias": {"x": 1}}), "logit_bias"),
        (
            json!({"prompt": "a", "presence_penalty": 3}),
            "presence_penalty",
        ),
        (
            json!({"prompt": "a", "frequency_penalty": -2.5}),
            "frequency_penalty",
        ),
        (json!({"prompt": "a", "n": 3, "best_of": 2}), "best_of"),
        (
            json!({"prompt": "a", "best_of": 2, "stream": true}),
            "best_of",
        ),
        (json!({"prompt": "a", "suffix": "b"}), "suffix"),
    ] {
        let r = complete(&s, &key, body.clone());
        assert_eq!(r.error(400)["error"]["param"], param, "{body}");
    }
    // gpt2 generate takes the same options.
    let out = ok(run(&[
        "generate",
        "Hello",
        "--model",
        tiny_model().to_str().unwrap(),
        "--max-tokens",
        "4",
        "--logit-bias",
        "13=100",
        "--seed",
        "1",
    ]));
    assert!(out.contains("Hello...."), "{out}");
}
