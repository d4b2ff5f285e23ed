//! `gpt2 watermark`, `gpt2 generate --watermark` and `gpt2 detect` end to
//! end on the tiny fixture model (random weights: high-entropy outputs, so
//! a watermark shows clearly in a few hundred tokens).

mod common;

use common::*;
use serde_json::Value;

fn tiny() -> String {
    tiny_model().to_string_lossy().into_owned()
}

fn keygen(dir: &tempfile::TempDir, name: &str, extra: &[&str]) -> String {
    let path = dir.path().join(name).to_string_lossy().into_owned();
    let mut args = vec!["watermark", "keygen", "--out", &path];
    args.extend(extra);
    let id = ok(run(&args));
    assert_eq!(id.trim().len(), 16, "key ids are 16 hex digits: {id}");
    path
}

fn generate(key: Option<&str>, seed: &str) -> Value {
    let model = tiny();
    let mut args = vec![
        "generate",
        "Once upon a time",
        "--model",
        &model,
        "--max-tokens",
        "200",
        "--seed",
        seed,
        "--json",
    ];
    if let Some(k) = key {
        args.extend(["--watermark", k]);
    }
    serde_json::from_str(&ok(run(&args))).unwrap()
}

fn detect(key: &str, text: &str, dir: &tempfile::TempDir) -> Value {
    let file = dir.path().join("text.txt");
    std::fs::write(&file, text).unwrap();
    let out = ok(run(&[
        "watermark",
        "detect",
        "--key",
        key,
        "--prompt",
        "Once upon a time",
        file.to_str().unwrap(),
        "--json",
    ]));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn watermarked_generations_are_detected_and_plain_ones_are_not() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("kgw.key", &[][..]),
        (
            "self.key",
            &["--seeding", "self-hash", "--context", "3"][..],
        ),
        ("gumbel.key", &["--scheme", "gumbel"][..]),
    ] {
        let key = keygen(&dir, name, extra);
        let marked = generate(Some(&key), "7");
        let text = marked["samples"][0]["text"].as_str().unwrap();
        let d = detect(&key, text, &dir);
        assert_eq!(marked["watermark_key_id"], d["key_id"]);
        assert!(d["z_score"].as_f64().unwrap() >= 4.0, "{name}: {d}");
        assert_eq!(d["decision"], "watermarked", "{name}");
        let plain = generate(None, "7");
        let d = detect(&key, plain["samples"][0]["text"].as_str().unwrap(), &dir);
        assert!(d["z_score"].as_f64().unwrap() < 4.0, "{name}: {d}");
        // Another key does not see this key's mark.
        let other = keygen(&dir, &format!("other-{name}"), extra);
        assert!(
            detect(&other, text, &dir)["z_score"].as_f64().unwrap() < 4.0,
            "{name}"
        );
    }
}

#[test]
fn detection_json_has_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(&dir, "k.key", &[]);
    let d = detect(
        &key,
        "A short text that has a few words in it and then some more of them.",
        &dir,
    );
    let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "z_score",
        "p_value",
        "tokens_scored",
        "green_fraction",
        "key_id",
        "green_mask",
        "decision",
    ] {
        assert!(keys.contains(&k), "missing {k} in {d}");
    }
    assert_eq!(d["green_mask"].as_array().unwrap().len(), 17);
    // Too short for a verdict is said, not guessed.
    let d = detect(&key, "Hi", &dir);
    assert_eq!(d["decision"], "too short to decide");
    let d = detect(&key, "", &dir);
    assert_eq!(
        (d["tokens_scored"].as_u64(), d["decision"].as_str()),
        (Some(0), Some("too short to decide"))
    );
}

#[test]
fn bad_keys_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(&dir, "k.key", &[]);
    fails_with(
        run(&["watermark", "keygen", "--out", &key]),
        &["k.key", "already exists"],
    );
    let never = dir.path().join("never.key");
    fails_with(
        run(&[
            "watermark",
            "keygen",
            "--out",
            never.to_str().unwrap(),
            "--gamma",
            "1.5",
        ]),
        &["gamma"],
    );
    assert!(!never.exists(), "a refused key is not written");
    let text = std::fs::read_to_string(&key).unwrap();
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, text.replace("\"secret\": \"", "\"secret\": \"00")).unwrap();
    let sample = fixtures().join("sample.txt");
    fails_with(
        run(&[
            "watermark",
            "detect",
            "--key",
            bad.to_str().unwrap(),
            sample.to_str().unwrap(),
        ]),
        &["bad.key", "64 hex digits"],
    );
    std::fs::write(&bad, "not json").unwrap();
    fails_with(
        run(&[
            "watermark",
            "detect",
            "--key",
            bad.to_str().unwrap(),
            sample.to_str().unwrap(),
        ]),
        &["bad.key", "not a watermark key file"],
    );
    let model = tiny();
    fails_with(
        run(&[
            "generate",
            "x",
            "--model",
            &model,
            "--watermark",
            "/nonexistent.key",
        ]),
        &["/nonexistent.key"],
    );
}

#[test]
fn detect_prints_every_statistic_and_calibrated_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny();
    let sample = fixtures().join("sample.txt");
    let out = ok(run(&[
        "detect",
        "--model",
        &model,
        "--observer",
        &model,
        "--performer",
        &model,
        "--json",
        sample.to_str().unwrap(),
    ]));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let stats = v["statistics"].as_object().unwrap();
    let mut names: Vec<&str> = stats.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "binoculars",
            "entropy",
            "fast_detectgpt",
            "gltr",
            "log_likelihood",
            "log_rank",
            "lrr"
        ]
    );
    let gltr: u64 = v["statistics"]["gltr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(gltr, v["tokens"].as_u64().unwrap());
    // One model as observer and performer: log-ppl over its own entropy.
    assert!(v["statistics"]["binoculars"].as_f64().unwrap() > 0.0);
    assert!(v["decision"].is_null());

    // Calibrate on "human" texts (the books' JSONL lines), then decide.
    let human = dir.path().join("human.jsonl");
    let machine = dir.path().join("machine.jsonl");
    let mut h = String::new();
    let mut m = String::new();
    let text = std::fs::read_to_string(&sample).unwrap();
    for (i, chunk) in text
        .split_whitespace()
        .collect::<Vec<_>>()
        .chunks(30)
        .enumerate()
    {
        h.push_str(&serde_json::json!({ "text": chunk.join(" ") }).to_string());
        h.push('\n');
        let g = generate(None, &i.to_string());
        m.push_str(&serde_json::json!({ "text": g["samples"][0]["text"] }).to_string());
        m.push('\n');
        if i == 5 {
            break;
        }
    }
    std::fs::write(&human, h).unwrap();
    std::fs::write(&machine, m).unwrap();
    let thresholds = dir.path().join("t.json");
    ok(run(&[
        "detect",
        "calibrate",
        "--model",
        &model,
        "--human",
        human.to_str().unwrap(),
        "--out",
        thresholds.to_str().unwrap(),
    ]));
    let out = ok(run(&[
        "detect",
        "--model",
        &model,
        "--thresholds",
        thresholds.to_str().unwrap(),
        "--json",
        machine.to_str().unwrap(),
    ]));
    for line in out.lines() {
        let d: Value = serde_json::from_str(line).unwrap();
        assert!(
            ["machine", "human", "abstain"].contains(&d["decision"].as_str().unwrap()),
            "{d}"
        );
    }
    let table = ok(run(&[
        "detect",
        "evaluate",
        "--model",
        &model,
        "--human",
        human.to_str().unwrap(),
        "--machine",
        machine.to_str().unwrap(),
    ]));
    assert!(table.contains("| fast_detectgpt |"), "{table}");
    // Thresholds hold only for the model they were calibrated with.
    fails_with(
        run(&[
            "detect",
            "--thresholds",
            thresholds.to_str().unwrap(),
            machine.to_str().unwrap(),
        ]),
        &["calibrated with --model"],
    );
}

#[test]
fn detect_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(
        run(&["detect", "--model", &model, empty.to_str().unwrap()]),
        &["empty.txt", "empty"],
    );
    let jsonl = dir.path().join("x.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"fine\"}\n{\"body\": 1}\n").unwrap();
    fails_with(
        run(&["detect", "--model", &model, jsonl.to_str().unwrap()]),
        &["x.jsonl:2", "\"text\""],
    );
    // Binoculars needs one tokenizer: this fixture has a 1,024-token vocabulary.
    let other = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/model/tests/fixtures/parity-small");
    let sample = fixtures().join("sample.txt");
    fails_with(
        run(&[
            "detect",
            "--model",
            &model,
            "--observer",
            &model,
            "--performer",
            other.to_str().unwrap(),
            sample.to_str().unwrap(),
        ]),
        &["same tokenizer"],
    );
}

#[test]
fn generations_are_recorded_in_the_ledger_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(&dir, "k.key", &[]);
    let db = dir.path().join("ledger.db").to_string_lossy().into_owned();
    let model = tiny();
    let out: Value = serde_json::from_str(&ok(run(&[
        "generate",
        "Hello",
        "--model",
        &model,
        "--max-tokens",
        "40",
        "-n",
        "2",
        "--seed",
        "1",
        "--watermark",
        &key,
        "--ledger",
        &db,
        "--caller",
        "org-a",
        "--json",
    ])))
    .unwrap();
    for (i, s) in out["samples"].as_array().unwrap().iter().enumerate() {
        let text = dir.path().join("g.txt");
        std::fs::write(&text, s["text"].as_str().unwrap()).unwrap();
        let found: Value = serde_json::from_str(&ok(run(&[
            "ledger",
            "lookup",
            "--db",
            &db,
            text.to_str().unwrap(),
            "--json",
        ])))
        .unwrap();
        let m = &found["matches"][0];
        assert_eq!(
            (m["exact"].as_bool(), m["record_id"].as_i64()),
            (Some(true), Some(i as i64 + 1)),
            "{found}"
        );
        let shown: Value = serde_json::from_str(&ok(run(&[
            "ledger",
            "show",
            "--db",
            &db,
            &(i + 1).to_string(),
            "--json",
        ])))
        .unwrap();
        assert_eq!(shown["caller"], "org-a");
        assert_eq!(shown["watermark_key_id"], out["watermark_key_id"]);
    }
}

#[test]
fn a_verifier_with_several_keys_learns_which_one_matched() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        keygen(&dir, "a.key", &[]),
        keygen(&dir, "b.key", &["--scheme", "gumbel"]),
    );
    let marked = generate(Some(&b), "3");
    let file = dir.path().join("t.txt");
    std::fs::write(&file, marked["samples"][0]["text"].as_str().unwrap()).unwrap();
    let out = ok(run(&[
        "watermark",
        "detect",
        "--key",
        &a,
        "--key",
        &b,
        "--prompt",
        "Once upon a time",
        file.to_str().unwrap(),
        "--json",
    ]));
    let results: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["decision"], "not watermarked");
    assert_eq!(results[1]["decision"], "watermarked");
    assert_eq!(results[1]["key_id"], marked["watermark_key_id"]);
}

/// Labelled texts for a detector: 40 human passages of a shared book
/// (60 words each) and 40 samples of the tiny model.
fn labelled_texts(dir: &std::path::Path) -> (String, String) {
    let book = std::fs::read_to_string(
        fixtures()
            .join("../../../shared/data/train/gutenberg/pg11_Alice-s-Adventures-in-Wonderland.txt"),
    )
    .unwrap();
    let words: Vec<&str> = book.split_whitespace().skip(500).collect();
    let human: String = words
        .chunks(60)
        .take(40)
        .map(|c| serde_json::json!({ "text": c.join(" ") }).to_string() + "\n")
        .collect();
    let model = tiny();
    let g: Value = serde_json::from_str(&ok(run(&[
        "generate",
        "",
        "--model",
        &model,
        "--max-tokens",
        "80",
        "--seed",
        "5",
        "-n",
        "40",
        "--json",
    ])))
    .unwrap();
    let machine: String = g["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::json!({ "text": s["text"] }).to_string() + "\n")
        .collect();
    let (h, m) = (dir.join("human.jsonl"), dir.join("machine.jsonl"));
    std::fs::write(&h, human).unwrap();
    std::fs::write(&m, machine).unwrap();
    (h.display().to_string(), m.display().to_string())
}

#[test]
fn a_feature_detector_is_trained_validated_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let (human, machine) = labelled_texts(dir.path());
    let model = tiny();
    let out = dir.path().join("detector");
    let o = out.to_str().unwrap();
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["detect", "train", "--model", &model, "--human", &human]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--machine", &machine, "--out", o, "--kind", "features"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let said = ok(run(&args(&[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()));
    assert!(said.contains("cross-validated AUROC"), "{said}");
    let d: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("detector.json")).unwrap()).unwrap();
    assert_eq!(
        (d["kind"].as_str(), d["model"].as_str()),
        (Some("features"), Some(model.as_str()))
    );
    // A random-weight model's samples are far from a book's prose.
    assert!(
        d["validation"]["auroc"].as_f64().unwrap() > 0.9,
        "{}",
        d["validation"]
    );
    // Seeded: the same command writes the same detector.
    let first = std::fs::read(out.join("detector.json")).unwrap();
    ok(run(&args(&[])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()));
    assert_eq!(std::fs::read(out.join("detector.json")).unwrap(), first);

    let decided = ok(run(&[
        "detect",
        "--model",
        &model,
        "--detector",
        o,
        "--json",
        &machine,
    ]));
    let machine_calls = decided
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["decision"] == "machine")
        .count();
    assert!(
        machine_calls > 20,
        "{machine_calls} of 40 machine texts flagged"
    );
    let table = ok(run(&[
        "detect",
        "evaluate",
        "--model",
        &model,
        "--human",
        &human,
        "--machine",
        &machine,
        "--detector",
        o,
    ]));
    assert!(table.contains("| detector (features) |"), "{table}");
    let t = dir.path().join("t.json");
    ok(run(&[
        "detect",
        "calibrate",
        "--model",
        &model,
        "--detector",
        o,
        "--human",
        &human,
        "--out",
        t.to_str().unwrap(),
    ]));
    ok(run(&[
        "detect",
        "--model",
        &model,
        "--detector",
        o,
        "--thresholds",
        t.to_str().unwrap(),
        &machine,
    ]));

    // The server reports the detector's verdict for the model it was
    // trained with, and refuses one it cannot apply.
    let srv = common::server::Server::start(&["--detector", o]);
    let (_, key) = srv.key("detect", "*", &[]);
    let text = std::fs::read_to_string(&machine).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let body = serde_json::json!({"model": "tiny", "text": first["text"]}).to_string();
    let r = common::server::post(&srv.url, "/v1/detect", Some(&key), body.as_bytes()).json();
    assert!(
        ["machine", "human", "abstain"].contains(&r["detector"]["decision"].as_str().unwrap()),
        "{r}"
    );
    assert_eq!(r["detector"]["kind"], "features");
    let other = gpt2()
        .args(["serve", "--addr", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("state"))
        .args(["--detector", o])
        .output()
        .unwrap();
    fails_with(other, &["which this server does not serve"]);

    // Bad input: a detector for another model, a directory that is no
    // detector, a class too small, an unknown kind; nothing written.
    fails_with(
        run(&["detect", "--detector", o, &machine]),
        &["trained on the statistics of --model"],
    );
    fails_with(
        run(&[
            "detect",
            "--model",
            &model,
            "--detector",
            dir.path().to_str().unwrap(),
            &machine,
        ]),
        &["detector.json"],
    );
    let few = dir.path().join("few.jsonl");
    std::fs::write(&few, "{\"text\": \"Alice was beginning to get very tired of sitting by her sister on the bank.\"}\n").unwrap();
    let fresh = dir.path().join("fresh");
    let refused = |extra: &[&str], says: &[&str]| {
        let mut a = vec![
            "detect",
            "train",
            "--model",
            &model,
            "--out",
            fresh.to_str().unwrap(),
        ];
        a.extend(extra);
        fails_with(run(&a), says);
        assert!(!fresh.exists(), "written despite the error");
    };
    refused(
        &["--human", few.to_str().unwrap(), "--machine", &machine],
        &["human texts"],
    );
    refused(
        &[
            "--human",
            &human,
            "--machine",
            &machine,
            "--kind",
            "roberta",
        ],
        &["--kind"],
    );
}

/// `gpt2 detect --detector` on a GPT2ForSequenceClassification that
/// transformers itself wrote (tools/reference/classifier_fixture.py): the
/// class logits transformers computed, within 1e-4.
#[test]
fn a_classifier_written_by_transformers_gives_transformers_logits() {
    let fixture = fixtures().join("tiny-classifier");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("reference.json")).unwrap())
            .unwrap();
    let texts = reference["texts"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("texts.jsonl");
    let lines: String = texts
        .iter()
        .map(|t| serde_json::json!({"text": t["text"]}).to_string() + "\n")
        .collect();
    std::fs::write(&input, lines).unwrap();
    let out = ok(run(&[
        "detect",
        "--model",
        &tiny(),
        "--detector",
        fixture.to_str().unwrap(),
        "--json",
        input.to_str().unwrap(),
    ]));
    let ours: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ours.len(), texts.len());
    for (mine, theirs) in ours.iter().zip(texts) {
        for k in 0..2 {
            let (a, b) = (
                mine["detector_logits"][k].as_f64().unwrap(),
                theirs["logits"][k].as_f64().unwrap(),
            );
            assert!((a - b).abs() < 1e-4, "logit {k}: {a} vs transformers {b}");
        }
        let score = mine["detector_score"].as_f64().unwrap();
        let expected =
            theirs["logits"][1].as_f64().unwrap() - theirs["logits"][0].as_f64().unwrap();
        assert!((score - expected).abs() < 2e-4, "{score} vs {expected}");
    }
}

#[test]
fn a_classifier_is_fine_tuned_validated_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let (human, machine) = labelled_texts(dir.path());
    let model = tiny();
    let out = dir.path().join("classifier");
    let o = out.to_str().unwrap();
    let train = |out: &str| {
        run(&[
            "detect",
            "train",
            "--model",
            &model,
            "--human",
            &human,
            "--machine",
            &machine,
            "--out",
            out,
            "--epochs",
            "4",
            "--eval-every",
            "4",
            "--max-tokens",
            "64",
            "--lr",
            "1e-3",
        ])
    };
    let trained = train(o);
    let said = ok(trained);
    assert!(
        said.contains("held-out") && said.contains("AUROC"),
        "{said}"
    );
    let card: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("detector.json")).unwrap()).unwrap();
    assert_eq!(
        (
            card["kind"].as_str(),
            card["base_model"].as_str(),
            card["max_tokens"].as_u64()
        ),
        (Some("classifier"), Some(model.as_str()), Some(64))
    );
    // The book's prose against a random-weight model's samples.
    let v = &card["validation"];
    assert_eq!(
        (v["human_texts"].as_u64(), v["machine_texts"].as_u64()),
        (Some(8), Some(8))
    );
    assert!(v["auroc"].as_f64().unwrap() > 0.9, "{v}");
    // Transformers' layout, and the run's record beside the weights.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "GPT2ForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "machine");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let history = metrics["history"].as_array().unwrap();
    assert!(history.len() >= 2, "{metrics}");
    let kept = card["training"]["kept_step"].as_u64().unwrap();
    assert!(history.iter().any(|m| m["step"].as_u64() == Some(kept)));
    // Seeded: a second run writes the same weights.
    let again = dir.path().join("again");
    ok(train(again.to_str().unwrap()));
    assert!(
        std::fs::read(out.join("model.safetensors")).unwrap()
            == std::fs::read(again.join("model.safetensors")).unwrap(),
        "the same seed trained different weights"
    );

    // Used: detect (no --model needed: the classifier reads the text
    // itself), evaluate, calibrate.
    let decided = ok(run(&["detect", "--detector", o, "--json", &machine]));
    let calls: Vec<Value> = decided
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 40);
    assert!(calls
        .iter()
        .all(|c| c["detector_logits"].as_array().unwrap().len() == 2));
    let flagged = calls.iter().filter(|c| c["decision"] == "machine").count();
    assert!(flagged > 20, "{flagged} of 40 machine texts flagged");
    let table = ok(run(&[
        "detect",
        "evaluate",
        "--model",
        &model,
        "--human",
        &human,
        "--machine",
        &machine,
        "--detector",
        o,
    ]));
    assert!(table.contains("| detector (classifier) |"), "{table}");
    let t = dir.path().join("t.json");
    let cal = ok(run(&[
        "detect",
        "calibrate",
        "--model",
        &model,
        "--detector",
        o,
        "--human",
        &human,
        "--machine",
        &machine,
        "--out",
        t.to_str().unwrap(),
    ]));
    assert!(cal.contains("machine texts flagged"), "{cal}");

    // The server gives the classifier's verdict for any served model.
    let srv = common::server::Server::start(&["--detector", o]);
    let (_, key) = srv.key("detect", "*", &[]);
    let text = std::fs::read_to_string(&machine).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let body = serde_json::json!({"model": "tiny", "text": first["text"]}).to_string();
    let r = common::server::post(&srv.url, "/v1/detect", Some(&key), body.as_bytes()).json();
    assert_eq!(r["detector"]["kind"], "classifier", "{r}");
    let served = r["detector"]["score"].as_f64().unwrap();
    assert!(
        (served - calls[0]["detector_score"].as_f64().unwrap()).abs() < 1e-4,
        "{r}"
    );

    // Bad input: nothing written.
    let fresh = dir.path().join("fresh");
    let refused = |extra: &[&str], says: &[&str]| {
        let mut a = vec![
            "detect",
            "train",
            "--model",
            &model,
            "--out",
            fresh.to_str().unwrap(),
        ];
        a.extend(extra);
        fails_with(run(&a), says);
        assert!(!fresh.exists(), "written despite the error");
    };
    let few = dir.path().join("few.jsonl");
    let first_lines: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&few, first_lines).unwrap();
    refused(
        &["--human", &human, "--machine", few.to_str().unwrap()],
        &["machine texts"],
    );
    refused(
        &[
            "--human",
            &human,
            "--machine",
            &machine,
            "--max-tokens",
            "4096",
        ],
        &["--max-tokens"],
    );
    refused(
        &[
            "--human",
            &human,
            "--machine",
            &machine,
            "--val-share",
            "0.9",
        ],
        &["--val-share"],
    );
    // A directory whose head is missing is refused with its name.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for f in ["config.json", "detector.json"] {
        std::fs::copy(out.join(f), broken.join(f)).unwrap();
    }
    std::fs::copy(
        tiny_model().join("model.safetensors"),
        broken.join("model.safetensors"),
    )
    .unwrap();
    fails_with(
        run(&["detect", "--detector", broken.to_str().unwrap(), &machine]),
        &["score.weight", "not a sequence classifier"],
    );
}
