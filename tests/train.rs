//! `gpt2 prepare` and `gpt2 train` end to end, on a one-layer model small
//! enough to train in a test.

mod common;
use common::*;
use std::path::Path;

const TINY: [&str; 8] = [
    "--layers", "1", "--heads", "2", "--embd", "16", "--ctx", "32",
];

fn prepared(dir: &Path) -> String {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let text = std::fs::read_to_string(fixtures().join("sample.txt")).unwrap();
    std::fs::write(corpus.join("a.txt"), text.repeat(3)).unwrap();
    std::fs::write(corpus.join("b.jsonl"), "{\"text\": \"A small held-out story about a cat and a dog.\"}\n{\"text\": \"Another one, with more words in it than the first.\"}\n").unwrap();
    let data = dir.join("data");
    ok(run(&[
        "prepare",
        corpus.to_str().unwrap(),
        "--out",
        data.to_str().unwrap(),
        "--val",
        "b.jsonl",
    ]));
    data.to_str().unwrap().to_string()
}

fn train(data: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--threads",
        "2",
        "train",
        "--data",
        data,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(TINY);
    let defaults = [
        ("--batch", "2"),
        ("--seq", "16"),
        ("--warmup", "2"),
        ("--eval-every", "3"),
        ("--eval-batches", "2"),
        ("--sample-every", "0"),
    ];
    for (k, v) in defaults {
        if !extra.contains(&k) {
            args.extend([k, v]);
        }
    }
    args.extend_from_slice(extra);
    run(&args)
}

/// The checkpoint `out/latest` names loads in the engine and scores a text.
fn assert_latest_loads(out: &Path) {
    let latest = std::fs::read_to_string(out.join("latest")).unwrap();
    let model = out.join(latest.trim());
    let text = fixtures().join("sample.txt");
    ok(run(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        text.to_str().unwrap(),
    ]));
}

fn losses(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("log.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect()
}

#[test]
fn prepare_splits_whole_documents() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&data).join("meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["val_documents"].as_array().unwrap().len(), 2);
    assert_eq!(meta["train_documents"].as_array().unwrap().len(), 1);
    let val = std::fs::read(Path::new(&data).join("val.bin")).unwrap();
    // Header, then <|endoftext|> before each document.
    assert_eq!(&val[..8], b"GPT2TOK\0");
    assert_eq!(u16::from_le_bytes([val[20], val[21]]), 50256);
}

#[test]
fn prepare_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let f = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    fails_with(
        run(&["prepare", &f("empty.txt", b"  \n"), "--out", o]),
        &["empty.txt", "empty"],
    );
    fails_with(
        run(&["prepare", &f("bin.txt", b"abc\0def"), "--out", o]),
        &["bin.txt", "not a text file"],
    );
    fails_with(
        run(&["prepare", &f("latin1.txt", b"caf\xe9"), "--out", o]),
        &["latin1.txt", "UTF-8", "offset 3"],
    );
    fails_with(
        run(&[
            "prepare",
            &f("bad.jsonl", b"{\"text\": \"ok\"}\n{\"txt\": 1}\n"),
            "--out",
            o,
        ]),
        &["bad.jsonl:2", "expected a string field \"text\""],
    );
    let good = f("good.txt", b"Some words.");
    fails_with(
        run(&["prepare", &good, "--out", o, "--val", "nothing-like-this"]),
        &["nothing-like-this"],
    );
    assert!(!out.exists(), "nothing is written when the input is bad");
}

#[test]
fn resume_continues_exactly_and_checkpoints_load_in_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path());
    let (straight, pieces) = (dir.path().join("straight"), dir.path().join("pieces"));
    ok(train(
        &data,
        &straight,
        &["--steps", "6", "--checkpoint-every", "3"],
    ));
    ok(train(
        &data,
        &pieces,
        &[
            "--steps",
            "6",
            "--checkpoint-every",
            "3",
            "--stop-after",
            "3",
        ],
    ));
    ok(train(
        &data,
        &pieces,
        &["--steps", "6", "--checkpoint-every", "3", "--resume"],
    ));
    let (a, b) = (losses(&straight), losses(&pieces));
    assert_eq!(a.len(), 6);
    assert_eq!(
        a, b,
        "the resumed run's losses equal the uninterrupted run's"
    );
    // The checkpoint is a Hugging Face directory the engine loads.
    assert_latest_loads(&straight);
    // A second run into the same folder must not overwrite it.
    fails_with(
        train(&data, &straight, &["--steps", "6"]),
        &["already holds a training run", "--resume"],
    );
    // Resuming with another shape is refused.
    let o = run(&[
        "--threads",
        "2",
        "train",
        "--data",
        &data,
        "--out",
        pieces.to_str().unwrap(),
        "--layers",
        "2",
        "--heads",
        "2",
        "--embd",
        "16",
        "--ctx",
        "32",
        "--batch",
        "2",
        "--seq",
        "16",
        "--warmup",
        "2",
        "--steps",
        "6",
        "--resume",
    ]);
    fails_with(o, &["shape differs"]);
}

#[test]
fn bad_training_options_and_token_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path());
    let out = dir.path().join("run");
    fails_with(train(&data, &out, &["--lr", "0"]), &["--lr"]);
    fails_with(train(&data, &out, &["--lr", "-1"]), &["--lr"]);
    fails_with(train(&data, &out, &["--batch", "0"]), &["--batch"]);
    fails_with(train(&data, &out, &["--steps", "0"]), &["--steps"]);
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(Path::new(&data).join("val.bin"), bad.join("val.bin")).unwrap();
    let mut train_bin = std::fs::read(Path::new(&data).join("train.bin")).unwrap();
    train_bin.truncate(train_bin.len() - 3);
    std::fs::write(bad.join("train.bin"), &train_bin).unwrap();
    fails_with(
        train(bad.to_str().unwrap(), &out, &["--steps", "2"]),
        &["train.bin", "truncated"],
    );
    std::fs::write(bad.join("train.bin"), b"not a token file at all").unwrap();
    fails_with(
        train(bad.to_str().unwrap(), &out, &["--steps", "2"]),
        &["train.bin", "magic"],
    );
    assert!(!out.join("latest").exists());
}

/// `kill -9` at arbitrary moments, checkpointing every step: whatever
/// `latest` names is always complete and loads.
#[test]
fn kill_during_checkpointing_leaves_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = prepared(dir.path());
    let out = dir.path().join("run");
    ok(train(
        &data,
        &out,
        &[
            "--steps",
            "1000",
            "--checkpoint-every",
            "1",
            "--stop-after",
            "1",
        ],
    ));
    for delay_ms in [150u64, 320, 470, 610, 230] {
        let mut child = gpt2()
            .args([
                "--threads",
                "2",
                "train",
                "--data",
                &data,
                "--out",
                out.to_str().unwrap(),
            ])
            .args(TINY)
            .args([
                "--batch",
                "2",
                "--seq",
                "16",
                "--warmup",
                "2",
                "--eval-every",
                "0",
                "--sample-every",
                "0",
                "--steps",
                "1000",
                "--checkpoint-every",
                "1",
                "--resume",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_latest_loads(&out);
    }
}
