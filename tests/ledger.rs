//! `gpt2 ledger` end to end: recording, exact and fuzzy lookup, hash-only
//! mode, refusing files that are not ledgers, and a writer killed with
//! SIGKILL in the middle of a bulk import.

mod common;

use common::*;
use gpt2_provenance::ledger::Ledger;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Public-domain prose (Lewis Carroll) standing in for a generation.
const ALICE: &str = "Either the well was very deep, or she fell very slowly, for she had \
plenty of time as she went down to look about her and to wonder what was going to happen \
next. First, she tried to look down and make out what she was coming to, but it was too \
dark to see anything; then she looked at the sides of the well, and noticed that they were \
filled with cupboards and book-shelves; here and there she saw maps and pictures hung upon \
pegs. She took down a jar from one of the shelves as she passed; it was labelled 'ORANGE \
MARMALADE', but to her great disappointment it was empty: she did not like to drop the jar \
for fear of killing somebody, so managed to put it into one of the cupboards as she fell \
past it.";

const OZ: &str = "When Aunt Em came there to live she was a young, pretty wife. The sun and \
wind had changed her, too. They had taken the sparkle from her eyes and left them a sober \
gray; they had taken the red from her cheeks and lips, and they were gray also. She was thin \
and gaunt, and never smiled now.";

struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `contents` to `name` and returns its path as a string.
    fn file(&self, name: &str, contents: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p.to_string_lossy().into_owned()
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn lookup_json(db: &str, file: &str) -> Value {
    serde_json::from_str(&ok(run(&["ledger", "lookup", "--db", db, file, "--json"]))).unwrap()
}

/// Every 6th word replaced, every 9th removed: about 28% of the words
/// touched.
fn edited(text: &str) -> String {
    text.split_whitespace()
        .enumerate()
        .filter(|(i, _)| (i + 1) % 9 != 0)
        .map(|(i, w)| if (i + 1) % 6 == 0 { "umbrella" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn add_then_lookup_exact_fuzzy_and_unrelated() {
    let d = Dir::new();
    let db = s(&d.path("l.db"));
    let alice = d.file("alice.txt", ALICE);
    let id = ok(run(&[
        "ledger", "add", "--db", &db, &alice, "--caller", "c1", "--key-id", "k1",
    ]));
    assert_eq!(id.trim(), "1");
    ok(run(&["ledger", "add", "--db", &db, &d.file("oz.txt", OZ)]));

    // Exact: the documented shape, keys in order.
    let out = ok(run(&["ledger", "lookup", "--db", &db, &alice, "--json"]));
    assert_eq!(
        out.trim(),
        r#"{"matches":[{"record_id":1,"score":1.0,"exact":true}]}"#
    );
    // Fuzzy.
    let v = lookup_json(&db, &d.file("edited.txt", &edited(ALICE)));
    let m = v["matches"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{v}");
    assert_eq!(m[0]["record_id"], 1);
    assert_eq!(m[0]["exact"], false);
    let score = m[0]["score"].as_f64().unwrap();
    assert!(score > 0.1 && score < 1.0, "{score}");
    // Unrelated.
    let other = d.file(
        "other.txt",
        "The committee will meet on Tuesday to review the budget for the new bridge.",
    );
    assert_eq!(lookup_json(&db, &other), serde_json::json!({"matches": []}));
    assert!(ok(run(&["ledger", "lookup", "--db", &db, &other])).contains("no match"));

    // The record as stored.
    let r: Value =
        serde_json::from_str(&ok(run(&["ledger", "show", "--db", &db, "1", "--json"]))).unwrap();
    assert_eq!(r["text"], ALICE);
    assert_eq!(r["caller"], "c1");
    assert_eq!(r["watermark_key_id"], "k1");
    assert!(r["tokens"].as_array().unwrap().len() > 150);
    let stats = ok(run(&["ledger", "stats", "--db", &db]));
    assert!(stats.contains("records    2"), "{stats}");
    ok(run(&["ledger", "check", "--db", &db]));
}

#[test]
fn hash_only_stores_no_text() {
    let d = Dir::new();
    let db = d.path("h.db");
    let alice = d.file("alice.txt", ALICE);
    let dbs = s(&db);
    ok(run(&["ledger", "add", "--db", &dbs, &alice, "--hash-only"]));
    // Later adds without the flag stay hash-only.
    ok(run(&["ledger", "add", "--db", &dbs, &d.file("oz.txt", OZ)]));
    let r: Value =
        serde_json::from_str(&ok(run(&["ledger", "show", "--db", &dbs, "1", "--json"]))).unwrap();
    assert_eq!(r["text"], Value::Null);
    assert_eq!(r["tokens"], Value::Null);
    assert!(ok(run(&["ledger", "show", "--db", &dbs, "2"])).contains("not stored"));
    assert_eq!(
        lookup_json(&dbs, &alice)["matches"][0]["exact"],
        Value::Bool(true)
    );
    let edited = d.file("edited.txt", &edited(ALICE));
    assert_eq!(lookup_json(&dbs, &edited)["matches"][0]["record_id"], 1);
    let bytes = std::fs::read(&db).unwrap();
    for needle in ["MARMALADE", "cupboards", "Aunt Em", "sparkle"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is in the file"
        );
    }
    assert!(ok(run(&["ledger", "stats", "--db", &dbs])).contains("hash-only"));
}

#[test]
fn files_that_are_not_ledgers_are_refused_and_untouched() {
    let d = Dir::new();
    let alice = d.file("alice.txt", ALICE);
    let text = d.file("notes.db", "my notes\n");
    let empty = d.file("empty.db", "");
    for (db, why) in [
        (&text, "not a SQLite database"),
        (&empty, "empty"),
        (&alice, "not a SQLite database"),
    ] {
        let before = std::fs::read(db).unwrap();
        fails_with(
            run(&["ledger", "add", "--db", db, &alice]),
            &[db, "not a gpt2 ledger", why],
        );
        fails_with(
            run(&["ledger", "lookup", "--db", db, &alice]),
            &[db, "not a gpt2 ledger"],
        );
        assert_eq!(std::fs::read(db).unwrap(), before);
    }
    let missing = s(&d.path("missing.db"));
    fails_with(
        run(&["ledger", "lookup", "--db", &missing, &alice]),
        &[&missing, "no such ledger"],
    );
    assert!(!d.path("missing.db").exists(), "lookup must not create");
}

#[test]
fn bad_input_is_a_clear_error() {
    let d = Dir::new();
    let db = s(&d.path("l.db"));
    let empty = d.file("empty.txt", "");
    fails_with(
        run(&["ledger", "add", "--db", &db, &empty]),
        &["empty.txt", "empty"],
    );
    let jsonl = d.file(
        "in.jsonl",
        &format!("{}\n\n{{\"text\": 3}}\n", serde_json::json!({"text": OZ})),
    );
    fails_with(
        run(&["ledger", "import", "--db", &db, "--jsonl", &jsonl]),
        &["in.jsonl:3", "\"text\""],
    );
    let broken = d.file("broken.jsonl", "{\"text\": \"a b c\"}\n{not json\n");
    fails_with(
        run(&["ledger", "import", "--db", &db, "--jsonl", &broken]),
        &["broken.jsonl:2", "not valid JSON"],
    );
    let other_field = d.file("f.jsonl", "{\"body\": \"one two three four\"}\n");
    ok(run(&[
        "ledger",
        "import",
        "--db",
        &db,
        "--jsonl",
        &other_field,
        "--field",
        "body",
    ]));
    fails_with(
        run(&["ledger", "show", "--db", &db, "999"]),
        &["l.db", "no record 999"],
    );
    fails_with(
        run(&[
            "ledger",
            "lookup",
            "--db",
            &db,
            &d.file("q.txt", OZ),
            "--min-score",
            "1.5",
        ]),
        &["--min-score"],
    );
}

/// A unique, deterministic pseudo-text for line `i`: words drawn from a
/// small vocabulary by an LCG, so that records share words and n-grams
/// the way prose does.
fn synthetic_text(i: u64) -> String {
    const WORDS: [&str; 32] = [
        "the", "river", "of", "light", "ran", "under", "a", "stone", "bridge", "and", "she",
        "said", "that", "nothing", "was", "ever", "lost", "in", "winter", "garden", "old", "house",
        "by", "sea", "long", "after", "morning", "came", "to", "town", "with", "bells",
    ];
    let mut x = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = vec![format!("line{i}")];
    for _ in 0..40 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(WORDS[(x >> 59) as usize].to_string());
    }
    out.join(" ")
}

/// Records in the ledger, read the way the server would (a second
/// connection while the writer works).
fn count(db: &Path) -> i64 {
    match Ledger::open(db) {
        Ok(mut l) => l.stats().map(|s| s.records).unwrap_or(0),
        Err(_) => 0,
    }
}

#[test]
fn a_writer_killed_mid_transaction_leaves_whole_batches() {
    const LINES: u64 = 60_000;
    const BATCH: i64 = 500;
    let d = Dir::new();
    let db = d.path("k.db");
    let jsonl = d.path("big.jsonl");
    let mut body = String::new();
    for i in 0..LINES {
        body.push_str(&serde_json::json!({"text": synthetic_text(i)}).to_string());
        body.push('\n');
    }
    std::fs::write(&jsonl, body).unwrap();

    let mut child = gpt2()
        .args(["ledger", "import", "--db", &s(&db), "--jsonl", &s(&jsonl)])
        .args(["--batch", &BATCH.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few batches are committed, i.e. in the middle of a
    // later one (tokenizing and inserting are the import's whole work).
    let started = Instant::now();
    while count(&db) < 3 * BATCH {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "import made no progress"
        );
        assert!(child.try_wait().unwrap().is_none(), "import ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(37));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    // Reopen: SQLite's integrity check and the ledger's own consistency
    // check (hashes, signatures, index rows) pass.
    let out = ok(run(&["ledger", "check", "--db", &s(&db)]));
    assert!(out.contains("ok:"), "{out}");
    let mut l = Ledger::open(&db).unwrap();
    let n = l.stats().unwrap().records;
    assert!(n >= 3 * BATCH && n < LINES as i64, "{n} records");
    assert_eq!(n % BATCH, 0, "{n} records is not a whole number of batches");
    // Every record present is complete: line i is record i + 1, its text
    // is stored, and looking the text up finds it.
    for id in 1..=n {
        let r = l.get(id).unwrap().unwrap();
        let want = synthetic_text((id - 1) as u64);
        assert_eq!(r.text.as_deref(), Some(want.as_str()));
        assert!(!r.tokens.unwrap().is_empty());
        let m = l.lookup(&want).unwrap();
        assert!(
            m.iter().any(|m| m.record_id == id && m.exact),
            "record {id}"
        );
    }
    // And the ledger takes new records after the crash.
    drop(l);
    let again = d.file("one.txt", ALICE);
    let id = ok(run(&["ledger", "add", "--db", &s(&db), &again]));
    assert_eq!(id.trim(), (n + 1).to_string());
}
