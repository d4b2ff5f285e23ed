//! Packed weights (f16, bf16, q8_0, q4_0) end to end: converted from the
//! f32 parity fixture, written as `gpt2 quantize` writes them, loaded in
//! place from the file, and scored against the transformers reference the
//! f32 model matches to 1e-4. The bounds are each format's rounding error
//! on this deliberately hard checkpoint (std-0.1 weights), with room.

use gpt2_model::convert::{convert, format_name, to_safetensors};
use gpt2_model::packed::Format;
use gpt2_model::score::{Scorer, Windowing};
use gpt2_model::{Batch, Model, Scratch};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity-small")
}

fn ids() -> Vec<u32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity-small-ids.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The reference log-probabilities and argmaxes (rolling windows, prefix
/// token as in tests/parity.rs).
fn reference() -> (u32, Vec<(f64, u64)>) {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
            .unwrap();
    let tokens = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["logprob"].as_f64().unwrap(),
                t["argmax"].as_u64().unwrap(),
            )
        })
        .collect();
    (v["prefix_token"].as_u64().unwrap() as u32, tokens)
}

/// A scratch directory holding `model` written in `format`.
fn write(model: &Model, format: Option<Format>, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gpt2-packed-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let weights = convert(model.weights(), format).unwrap();
    let bytes = to_safetensors(&weights, name).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir
}

#[test]
fn every_format_loads_in_place_and_tracks_transformers() {
    let f32_model = Model::load_dir(&fixture()).unwrap();
    let (prefix, want) = reference();
    let n_ctx = f32_model.config().n_ctx;
    assert!(ids().len() > n_ctx, "the text must span several windows");
    // (format, bound on mean |delta logprob|, least top-1 agreement)
    for (format, mean_bound, agree_bound) in [
        (Format::F16, 2e-3, 0.99),
        (Format::Bf16, 1e-2, 0.95),
        (Format::Q8_0, 2e-2, 0.95),
        (Format::Q4_0, 0.3, 0.7),
    ] {
        let dir = write(&f32_model, Some(format), format.name());
        let model = Model::load_dir(&dir).unwrap();
        assert_eq!(format_name(model.weights()), format.name());
        assert!(
            model.weights().wte.is_mapped(),
            "{format:?}: packed data should be read in place"
        );
        let got = Scorer::new(&model)
            .with_prefix_token(prefix)
            .score(&ids(), Windowing::Rolling, 1)
            .unwrap();
        assert_eq!(got.len(), want.len());
        let mean = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g.logprob as f64 - w.0).abs())
            .sum::<f64>()
            / want.len() as f64;
        let agree = got
            .iter()
            .zip(&want)
            .filter(|(g, w)| g.top[0].0 as u64 == w.1)
            .count() as f64
            / want.len() as f64;
        eprintln!("{format:?}: mean |delta logprob| {mean:.2e}, top-1 agreement {agree:.3}");
        assert!(mean < mean_bound, "{format:?}: mean |delta logprob| {mean}");
        assert!(agree >= agree_bound, "{format:?}: top-1 agreement {agree}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// Decoding one token at a time (few-row kernels, 8-bit activations for
/// q8_0/q4_0) agrees with one pass over the whole sequence (tiled gemm on
/// widened weights, f32 activations).
#[test]
fn decode_steps_agree_with_one_pass() {
    let f32_model = Model::load_dir(&fixture()).unwrap();
    let tokens: Vec<u32> = ids()[..24].to_vec();
    let c = f32_model.config().n_embd;
    for format in Format::ALL {
        let model = Model::from_parts(
            *f32_model.config(),
            convert(f32_model.weights(), Some(format)).unwrap(),
        );
        let mut scratch = Scratch::default();
        let mut cache = model.new_cache(1);
        let rows = model
            .forward(
                &Batch::single(0, &tokens),
                &mut cache,
                &mut scratch,
                gpt2_model::Output::All,
            )
            .unwrap();
        let whole = scratch.hidden(c)[(rows - 1) * c..].to_vec();
        let mut cache = model.new_cache(1);
        for &t in &tokens {
            model
                .forward(
                    &Batch::single(0, &[t]),
                    &mut cache,
                    &mut scratch,
                    gpt2_model::Output::Last,
                )
                .unwrap();
        }
        let stepped = scratch.hidden(c);
        let diff = whole
            .iter()
            .zip(stepped)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let bound = if format.is_blocked() { 0.1 } else { 1e-3 };
        assert!(
            diff < bound,
            "{format:?}: last hidden state differs by {diff}"
        );
    }
}

/// Packed back to f32 gives exactly the widened values, and an f32 file
/// written by `to_safetensors` loads into an identical model.
#[test]
fn conversions_round_trip() {
    let f32_model = Model::load_dir(&fixture()).unwrap();
    let dir = write(&f32_model, None, "f32");
    let again = Model::load_dir(&dir).unwrap();
    assert!(again.weights().wte.to_f32() == f32_model.weights().wte.to_f32());
    assert!(
        again.weights().layers[1].fc_w.to_conv1d()
            == f32_model.weights().layers[1].fc_w.to_conv1d()
    );
    std::fs::remove_dir_all(dir).unwrap();

    let q8 = convert(f32_model.weights(), Some(Format::Q8_0)).unwrap();
    let back = convert(&q8, None).unwrap();
    assert_eq!(format_name(&back), "f32");
    assert!(back.layers[0].attn_w.to_conv1d() == q8.layers[0].attn_w.to_conv1d());
}

/// A damaged packed file is refused with the tensor named.
#[test]
fn bad_packed_tensors_are_named() {
    let f32_model = Model::load_dir(&fixture()).unwrap();
    let dir = write(&f32_model, Some(Format::Q8_0), "damaged");
    let path = dir.join("model.safetensors");
    let original = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&original).unwrap();
    let rewrite = |skip: &str, replace: Option<(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)>| {
        let mut views: Vec<(String, safetensors::tensor::TensorView)> = Vec::new();
        for (name, view) in st.tensors() {
            if name == skip {
                continue;
            }
            views.push((name, view));
        }
        let extra;
        if let Some((name, dtype, shape, bytes)) = &replace {
            extra = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).unwrap();
            views.push((name.to_string(), extra));
        }
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        Model::load_dir(&dir)
            .err()
            .expect("a damaged file must not load")
            .to_string()
    };
    let err = rewrite("h.0.attn.c_attn.weight.scales", None);
    assert!(err.contains("h.0.attn.c_attn.weight.scales"), "{err}");
    let err = rewrite(
        "h.1.mlp.c_fc.weight.packed",
        Some((
            "h.1.mlp.c_fc.weight.packed",
            safetensors::Dtype::F32,
            vec![256, 64],
            vec![0; 256 * 64 * 4],
        )),
    );
    assert!(
        err.contains("h.1.mlp.c_fc.weight.packed") && err.contains("F32"),
        "{err}"
    );
    let err = rewrite(
        "h.1.mlp.c_fc.weight.packed",
        Some((
            "h.1.mlp.c_fc.weight.packed",
            safetensors::Dtype::I8,
            vec![64, 256],
            vec![0; 256 * 64],
        )),
    );
    assert!(
        err.contains("h.1.mlp.c_fc.weight.packed") && err.contains("shape"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
