//! Parity with PyTorch/transformers on committed fixtures written by
//! tools/reference/gpt2_reference.py: fixed-seed random checkpoints (std 0.1,
//! non-trivial LayerNorms) and the per-token log-probabilities, ranks,
//! entropies and top-5 that transformers computes for them in float32.

use gpt2_model::score::{Scorer, TokenScore, Windowing};
use gpt2_model::weights::{LayerWeights, Tensor};
use gpt2_model::{Batch, Model, Output, Scratch};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Reference {
    prefix: u32,
    stride: usize,
    tokens: Vec<Value>,
}

fn reference(dir: &Path) -> Reference {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    Reference {
        prefix: v["prefix_token"].as_u64().unwrap() as u32,
        stride: v["stride"].as_u64().unwrap() as usize,
        tokens: v["tokens"].as_array().unwrap().clone(),
    }
}

fn ids() -> Vec<u32> {
    serde_json::from_str(&std::fs::read_to_string(fixture("parity-small-ids.json")).unwrap())
        .unwrap()
}

/// The largest |logprob difference|, or an error naming the first position
/// whose argmax, rank or top-5 differs.
fn compare(ours: &[TokenScore], reference: &[Value]) -> Result<f64, String> {
    if ours.len() != reference.len() {
        return Err(format!(
            "{} scores vs {} in the reference",
            ours.len(),
            reference.len()
        ));
    }
    let mut max_diff = 0f64;
    for (i, (o, r)) in ours.iter().zip(reference).enumerate() {
        max_diff = max_diff.max((o.logprob as f64 - r["logprob"].as_f64().unwrap()).abs());
        let entropy_diff = (o.entropy as f64 - r["entropy"].as_f64().unwrap()).abs();
        if entropy_diff > 1e-3 {
            return Err(format!("position {i}: entropy differs by {entropy_diff}"));
        }
        if o.top[0].0 as u64 != r["argmax"].as_u64().unwrap() {
            return Err(format!(
                "position {i}: argmax {} vs {}",
                o.top[0].0, r["argmax"]
            ));
        }
        if o.rank as u64 != r["rank"].as_u64().unwrap() {
            return Err(format!("position {i}: rank {} vs {}", o.rank, r["rank"]));
        }
        let top: Vec<u64> = r["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[0].as_u64().unwrap())
            .collect();
        if o.top.iter().map(|t| t.0 as u64).collect::<Vec<_>>() != top {
            return Err(format!("position {i}: top-5 differs"));
        }
    }
    Ok(max_diff)
}

/// The reference script's convention: stride = context means rolling.
fn windowing(model: &Model, stride: usize) -> Windowing {
    if stride == model.config().n_ctx {
        Windowing::Rolling
    } else {
        Windowing::Sliding { stride }
    }
}

fn score(model: &Model, r: &Reference) -> Vec<TokenScore> {
    Scorer::new(model)
        .with_prefix_token(r.prefix)
        .score(&ids(), windowing(model, r.stride), 5)
        .unwrap()
}

#[test]
fn matches_transformers_f32_with_prefix_and_tied_head_stored() {
    let dir = fixture("parity-small");
    let model = Model::load_dir(&dir).unwrap();
    assert!(
        model.weights().wte.is_mapped(),
        "f32 weights should be used in place from the map"
    );
    let r = reference(&dir);
    let diff = compare(&score(&model, &r), &r.tokens).unwrap();
    eprintln!("f32 fixture: max |delta logprob| {diff:.2e}");
    assert!(diff < 1e-4, "max |delta logprob| = {diff}");
}

#[test]
fn matches_transformers_bf16_in_strided_windows() {
    let dir = fixture("parity-small-bf16");
    let model = Model::load_dir(&dir).unwrap();
    let r = reference(&dir);
    assert!(r.stride < model.config().n_ctx && ids().len() > model.config().n_ctx);
    let diff = compare(&score(&model, &r), &r.tokens).unwrap();
    eprintln!("bf16 fixture, stride 16: max |delta logprob| {diff:.2e}");
    assert!(diff < 1e-4, "max |delta logprob| = {diff}");
}

#[test]
fn scalar_kernels_match_too() {
    use gpt2_model::kernels::simd::{best_available, set_level, Level};
    set_level(Level::Scalar);
    let dir = fixture("parity-small");
    let model = Model::load_dir(&dir).unwrap();
    let r = reference(&dir);
    let result = compare(&score(&model, &r), &r.tokens);
    set_level(best_available());
    assert!(result.unwrap() < 1e-4);
}

/// The parity check must catch the classic loader bugs.
#[test]
fn a_broken_engine_fails_the_parity_check() {
    let dir = fixture("parity-small");
    let good = Model::load_dir(&dir).unwrap();
    let r = reference(&dir);
    let c = good.config().n_embd;
    type Breakage = fn(&mut LayerWeights, usize);
    let breakages: [(&str, Breakage); 2] = [
        ("Conv1D weight read transposed", |l, c| {
            let w = l.attn_proj_w.to_conv1d();
            let t: Vec<f32> = (0..c * c).map(|k| w[(k % c) * c + k / c]).collect();
            l.attn_proj_w = Tensor::from_vec(t, vec![c, c]).into();
        }),
        ("query and key swapped", |l, c| {
            let w = l.attn_w.to_conv1d();
            let mut s = w.to_vec();
            for row in 0..c {
                for j in 0..c {
                    s[row * 3 * c + j] = w[row * 3 * c + c + j];
                    s[row * 3 * c + c + j] = w[row * 3 * c + j];
                }
            }
            l.attn_w = Tensor::from_vec(s, vec![c, 3 * c]).into();
        }),
    ];
    for (what, break_it) in breakages {
        let mut weights = good.weights().clone();
        break_it(&mut weights.layers[0], c);
        let broken = Model::from_parts(*good.config(), weights);
        // A mismatch in argmax, rank or top-5 is already a failure (Err).
        if let Ok(diff) = compare(&score(&broken, &r), &r.tokens) {
            assert!(diff > 1e-2, "{what}: parity check passed (max diff {diff})");
        }
    }
}

/// What a missing causal mask would break: changing later tokens must not
/// change any earlier output, bit for bit; and decoding token by token with
/// the cache must give what one batched pass gives.
#[test]
fn causal_and_cache_consistent() {
    let model = Model::load_dir(&fixture("parity-small")).unwrap();
    let v = model.config().vocab_size;
    let c = model.config().n_embd;
    let a: Vec<u32> = ids()[..40].to_vec();
    let mut b = a.clone();
    for t in &mut b[20..] {
        *t = (*t + 7) % v as u32;
    }
    let hidden = |tokens: &[u32]| {
        let mut cache = model.new_cache(1);
        let mut scratch = Scratch::default();
        model
            .forward(
                &Batch::single(0, tokens),
                &mut cache,
                &mut scratch,
                Output::All,
            )
            .unwrap();
        scratch.hidden(c).to_vec()
    };
    let (ha, hb) = (hidden(&a), hidden(&b));
    assert_eq!(ha[..20 * c], hb[..20 * c]);
    assert_ne!(ha[20 * c..21 * c], hb[20 * c..21 * c]);

    let mut cache = model.new_cache(1);
    let mut scratch = Scratch::default();
    model
        .forward(
            &Batch::single(0, &a[..10]),
            &mut cache,
            &mut scratch,
            Output::Last,
        )
        .unwrap();
    for (i, t) in a[10..].iter().enumerate() {
        model
            .forward(
                &Batch::single(0, std::slice::from_ref(t)),
                &mut cache,
                &mut scratch,
                Output::Last,
            )
            .unwrap();
        let step = scratch.hidden(c);
        let full = &ha[(10 + i) * c..(11 + i) * c];
        let diff = step
            .iter()
            .zip(full)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "position {}: {diff}", 10 + i);
    }
}

/// Sequences batched together give what each gives alone.
#[test]
fn batched_segments_match_single_runs() {
    let model = Model::load_dir(&fixture("parity-small")).unwrap();
    let c = model.config().n_embd;
    let ids = ids();
    let (s1, s2, s3) = (&ids[..7], &ids[7..40], &ids[40..41]);
    let mut cache = model.new_cache(3);
    let mut scratch = Scratch::default();
    let mut segs = Batch::default();
    segs.push(2, s1);
    segs.push(0, s2);
    segs.push(1, s3);
    let n = model
        .forward(&segs, &mut cache, &mut scratch, Output::Last)
        .unwrap();
    assert_eq!(n, 3);
    let batched = scratch.hidden(c).to_vec();
    for (k, s) in [s1, s2, s3].iter().enumerate() {
        let mut cache = model.new_cache(1);
        model
            .forward(&Batch::single(0, s), &mut cache, &mut scratch, Output::Last)
            .unwrap();
        let alone = scratch.hidden(c);
        let diff = alone
            .iter()
            .zip(&batched[k * c..(k + 1) * c])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "segment {k}: {diff}");
    }
}
