//! Bad input: each case exits non-zero with one line that names the file,
//! tensor or field at fault, and never panics.

mod common;
use common::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;

/// A copy of the tiny checkpoint whose tensors `edit` may change.
fn edited_checkpoint(
    dir: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) {
    let src = tiny_model();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

fn score_with(dir: &Path) -> std::process::Output {
    let text = fixtures().join("sample.txt");
    run(&[
        "score",
        "--model",
        dir.to_str().unwrap(),
        text.to_str().unwrap(),
    ])
}

#[test]
fn missing_model_directory_and_files() {
    fails_with(
        score_with(Path::new("/nonexistent/model")),
        &["/nonexistent/model", "no such directory"],
    );
    let dir = tempfile::tempdir().unwrap();
    fails_with(score_with(dir.path()), &["config.json"]);
    std::fs::copy(
        tiny_model().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    fails_with(
        score_with(dir.path()),
        &["model.safetensors", "no model.safetensors"],
    );
    let file = dir.path().join("config.json");
    fails_with(score_with(&file), &["is a file"]);
}

#[test]
fn truncated_and_corrupt_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_model().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(tiny_model().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    fails_with(
        score_with(dir.path()),
        &["model.safetensors", "not a valid safetensors file"],
    );
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage",
    )
    .unwrap();
    fails_with(
        score_with(dir.path()),
        &["model.safetensors", "not a valid safetensors file"],
    );
    std::fs::write(dir.path().join("model.safetensors"), b"").unwrap();
    fails_with(
        score_with(dir.path()),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn missing_tensor_wrong_shape_wrong_dtype() {
    let dir = tempfile::tempdir().unwrap();
    edited_checkpoint(dir.path(), |t| {
        t.remove("h.1.mlp.c_fc.bias");
    });
    fails_with(
        score_with(dir.path()),
        &["missing tensor `h.1.mlp.c_fc.bias`"],
    );

    edited_checkpoint(dir.path(), |t| {
        let e = t.get_mut("h.0.attn.c_attn.weight").unwrap();
        e.1 = vec![e.1[1], e.1[0]];
    });
    fails_with(
        score_with(dir.path()),
        &["h.0.attn.c_attn.weight", "shape [48, 16]", "[16, 48]"],
    );

    edited_checkpoint(dir.path(), |t| {
        let e = t.get_mut("ln_f.weight").unwrap();
        e.0 = Dtype::I16;
    });
    fails_with(score_with(dir.path()), &["ln_f.weight", "dtype"]);

    edited_checkpoint(dir.path(), |t| {
        let e = t.get("wte.weight").unwrap().clone();
        let mut data = e.2.clone();
        data[0] ^= 0x40;
        t.insert("lm_head.weight".into(), (e.0, e.1, data));
    });
    fails_with(
        score_with(dir.path()),
        &["lm_head.weight", "differs from wte.weight"],
    );
}

#[test]
fn config_that_contradicts_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    edited_checkpoint(dir.path(), |_| {});
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"n_layer\": 2", "\"n_layer\": 1"),
    )
    .unwrap();
    fails_with(score_with(dir.path()), &["h.1.", "n_layer"]);
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"n_embd\": 16", "\"n_embd\": 32"),
    )
    .unwrap();
    fails_with(score_with(dir.path()), &["wte.weight", "n_embd=32"]);
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"n_layer\": 2", "\"n_layer\": 3"),
    )
    .unwrap();
    fails_with(
        score_with(dir.path()),
        &["missing tensor `h.2.ln_1.weight`"],
    );
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"n_head\": 2", "\"n_head\": 3"),
    )
    .unwrap();
    fails_with(score_with(dir.path()), &["config.json", "n_head"]);
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    fails_with(score_with(dir.path()), &["config.json", "invalid config"]);
}

#[test]
fn non_utf8_input() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.txt");
    std::fs::write(&f, b"fine text \xc3\x28 then").unwrap();
    let model = tiny_model();
    fails_with(
        run(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            f.to_str().unwrap(),
        ]),
        &["bad.txt", "not valid UTF-8", "offset 10"],
    );
    fails_with(
        run(&["tokenize", f.to_str().unwrap()]),
        &["bad.txt", "offset 10"],
    );
    fails_with(
        run(&["tokenize", "/nonexistent/file.txt"]),
        &["/nonexistent/file.txt"],
    );
}

#[test]
fn hub_id_that_cannot_be_resolved_offline() {
    let home = tempfile::tempdir().unwrap();
    let o = gpt2()
        .args(["score", "--model", "someorg/missing-model", "-"])
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    fails_with(o, &["someorg/missing-model", "HF_HUB_OFFLINE", "hub cache"]);
    // Online, but the endpoint does not answer.
    let o = gpt2()
        .args(["score", "--model", "gpt2", "-"])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    fails_with(o, &["`gpt2`", "downloading from http://127.0.0.1:9 failed"]);
}

#[test]
fn empty_text_to_score() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("empty.txt");
    std::fs::write(&f, "").unwrap();
    let model = tiny_model();
    fails_with(
        run(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            f.to_str().unwrap(),
        ]),
        &["empty.txt", "empty"],
    );
}
