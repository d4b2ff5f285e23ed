//! GGUF from the command line (issue 14): `gpt2 quantize --gguf` writes a
//! file that every command loads with `--model FILE.gguf`, that generates
//! what the checkpoint generates, that `gpt2 perplexity --llama-chunks`
//! scores in llama-perplexity's windows, and that llama.cpp's own Python
//! reader (the `gguf` package) reads as GPT-2; it skips, saying why, where
//! python3 or the package is missing.

mod common;
use common::*;

#[test]
fn an_exported_gguf_is_the_same_model_everywhere() {
    let out = tempfile::tempdir().unwrap();
    let gguf = out.path().join("default-f32.gguf");
    let dir = out.path().join("default-f32");
    let (gguf_s, dir_s) = (gguf.to_str().unwrap(), dir.to_str().unwrap());
    let report = ok(run(&[
        "quantize", "default", gguf_s, "--to", "f32", "--gguf", "--json",
    ]));
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(r["format"], "f32", "{r}");
    ok(run(&["quantize", "default", dir_s, "--to", "f32"]));

    let generate = |model: &str| {
        ok(run(&[
            "generate",
            "Once upon a time",
            "--model",
            model,
            "--max-tokens",
            "12",
            "--seed",
            "5",
        ]))
    };
    assert_eq!(generate(gguf_s), generate("default"));

    let sample = fixtures().join("sample.txt");
    let perplexity = |model: &str, extra: &[&str]| -> f64 {
        let mut args = vec![
            "perplexity",
            sample.to_str().unwrap(),
            "--model",
            model,
            "--json",
        ];
        args.extend_from_slice(extra);
        let v: serde_json::Value = serde_json::from_str(&ok(run(&args))).unwrap();
        v["results"]["perplexity"]["token_perplexity,none"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(perplexity(gguf_s, &[]), perplexity("default", &[]));
    let chunked = perplexity(gguf_s, &["--llama-chunks", "64"]);
    assert!(chunked.is_finite() && chunked != perplexity(gguf_s, &[]));
    fails_with(
        run(&[
            "perplexity",
            sample.to_str().unwrap(),
            "--llama-chunks",
            "256",
        ]),
        &["at least 512 tokens"],
    );

    fails_with(
        run(&["quantize", "default", gguf_s, "--to", "q8_0", "--gguf"]),
        &["already holds a model", "--force"],
    );
    fails_with(
        run(&[
            "quantize",
            "default",
            out.path().to_str().unwrap(),
            "--to",
            "q8_0",
            "--gguf",
        ]),
        &["is a directory", "--gguf writes a file"],
    );

    let script = fixtures().join("../clients/gguf_read.py");
    let bpe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/bpe");
    let read = match std::process::Command::new("python3")
        .arg(&script)
        .args([gguf_s, bpe.to_str().unwrap(), dir_s])
        .output()
    {
        Ok(o) => o,
        Err(e) => return eprintln!("skipped the gguf-package check: python3 cannot run ({e})"),
    };
    if read.status.code() == Some(77) {
        return eprintln!("skipped the gguf-package check: pip install gguf");
    }
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(
        stdout(&read).contains("\"tensors\": 76"),
        "{}",
        stdout(&read)
    );
}
