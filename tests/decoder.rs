//! The batch decoder: a sequence's text depends only on its own seed,
//! stream, prompt and settings, never on what else shares the batch or
//! when it joined, for every sampler setting and both watermark schemes.

mod common;

use common::tiny_model;
use gpt2_generate::{Decoder, Event, SamplingParams, SeqSpec, Watermark};
use gpt2_model::{Model, Tokenizer};
use gpt2_provenance::watermark::{Prf, Watermarker};
use gpt2_provenance::watermark_key::{KeyParams, Scheme, Seeding, WatermarkKey};
use std::collections::HashMap;
use std::sync::Arc;

fn sampling(temperature: f32, top_k: usize, top_p: f32, rp: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k,
        top_p,
        repetition_penalty: rp,
    }
}

fn watermark(scheme: Scheme, seeding: Seeding, h: usize) -> Arc<dyn Watermark> {
    let key = WatermarkKey::from_secret(
        [3; 32],
        KeyParams {
            scheme,
            seeding,
            context_width: h,
            ..KeyParams::default()
        },
    );
    Arc::new(Watermarker::new(Prf::new(key, 50257)))
}

/// One sequence to decode: prompt and spec.
type Case = (Vec<u32>, SeqSpec);

fn cases() -> Vec<Case> {
    let tok = Tokenizer::gpt2();
    let settings = [
        sampling(0.0, 0, 1.0, 1.0),
        sampling(1.0, 0, 1.0, 1.0),
        sampling(0.8, 40, 1.0, 1.0),
        sampling(1.2, 0, 0.9, 1.0),
        sampling(1.0, 20, 1.0, 1.3),
        sampling(0.7, 0, 0.95, 0.8),
    ];
    let marks: Vec<Option<Arc<dyn Watermark>>> = vec![
        None,
        Some(watermark(Scheme::Kgw, Seeding::LeftHash, 1)),
        Some(watermark(Scheme::Kgw, Seeding::SelfHash, 4)),
        Some(watermark(Scheme::Gumbel, Seeding::LeftHash, 1)),
        Some(watermark(Scheme::Gumbel, Seeding::SelfHash, 2)),
    ];
    let prompts = ["Once upon a time", "The king said", "A"];
    let mut out = Vec::new();
    for (i, s) in settings.iter().enumerate() {
        for (j, w) in marks.iter().enumerate() {
            let tag = (i * marks.len() + j) as u64;
            let prompt = tok.encode(prompts[tag as usize % prompts.len()]).unwrap();
            out.push((
                prompt,
                SeqSpec {
                    tag,
                    max_tokens: 6 + (tag as usize % 5) * 4,
                    sampling: *s,
                    seed: 1000 + tag,
                    stream: tag % 3,
                    stop: Arc::from(Vec::new()),
                    top_logprobs: (tag % 3) as usize,
                    watermark: w.clone(),
                    adjust: Default::default(),
                    ignore_eos: tag.is_multiple_of(2),
                },
            ));
        }
    }
    out
}

/// Runs `cases` through a decoder of `slots` slots, admitting each case
/// when a slot is free (so they join at different steps); returns each
/// tag's tokens and logprobs.
fn decode(model: &Model, cases: &[Case], slots: usize) -> HashMap<u64, (Vec<u32>, Vec<f32>)> {
    let mut decoder = Decoder::new(model, slots);
    let mut waiting = cases.iter();
    let mut done = HashMap::new();
    loop {
        while decoder.free_slots() > 0 {
            let Some((prompt, spec)) = waiting.next() else {
                break;
            };
            decoder.join(prompt, vec![spec.clone()]).unwrap();
        }
        if decoder.is_idle() {
            return done;
        }
        decoder
            .step(&mut |e| {
                if let Event::Done {
                    tag, completion, ..
                } = e
                {
                    done.insert(tag, (completion.tokens, completion.logprobs));
                }
            })
            .unwrap();
    }
}

#[test]
fn a_sequence_decodes_the_same_alone_and_in_any_batch() {
    let model = Model::load_dir(&tiny_model()).unwrap();
    let cases = cases();
    let alone: HashMap<u64, _> = cases
        .iter()
        .flat_map(|c| decode(&model, std::slice::from_ref(c), 1))
        .collect();
    for slots in [4, 16, cases.len()] {
        let together = decode(&model, &cases, slots);
        for (tag, want) in &alone {
            let got = &together[tag];
            assert_eq!(got.0, want.0, "case {tag} with {slots} slots");
            // A batch of other rows may round the forward pass differently
            // in the last bit; the draws never depend on that.
            for (a, b) in got.1.iter().zip(&want.1) {
                assert!((a - b).abs() < 1e-4, "case {tag}: {a} vs {b}");
            }
        }
    }
    // The settings do matter: not every case wrote the same text.
    let distinct: std::collections::HashSet<_> = alone.values().map(|v| v.0.clone()).collect();
    assert!(distinct.len() > cases.len() / 2);
}

#[test]
fn siblings_share_one_prefill_and_leaving_frees_the_slot() {
    let model = Model::load_dir(&tiny_model()).unwrap();
    let (prompt, spec) = cases().swap_remove(7);
    let specs: Vec<SeqSpec> = (0..3)
        .map(|i| SeqSpec {
            tag: i,
            stream: i,
            max_tokens: 20,
            ignore_eos: true,
            ..spec.clone()
        })
        .collect();
    let mut decoder = Decoder::new(&model, 3);
    decoder.join(&prompt, specs.clone()).unwrap();
    assert_eq!(decoder.free_slots(), 0);
    let stats = decoder.step(&mut |_| {}).unwrap();
    // One prefill row set for three sequences.
    assert_eq!((stats.sequences, stats.rows), (1, prompt.len()));
    let dropped = decoder.retain(|tag| tag != 1);
    assert_eq!(dropped, vec![(1, 1)]);
    assert_eq!(decoder.free_slots(), 1);
    let stats = decoder.step(&mut |_| {}).unwrap();
    assert_eq!((stats.sequences, stats.rows), (2, 2));
    // A full decoder refuses more sequences than it has free slots.
    assert!(decoder.join(&prompt, specs).is_err());
}

/// A token's reported log-probability and alternatives are those of the
/// distribution the sampler draws from: the model's logits plus the KGW
/// bias, checked against the bias recomputed token by token from the
/// keyed function (not the watermarker's cached green lists).
#[test]
fn reported_alternatives_are_the_watermarked_distribution() {
    let model = Model::load_dir(&tiny_model()).unwrap();
    let key = WatermarkKey::from_secret(
        [9; 32],
        KeyParams {
            scheme: Scheme::Kgw,
            seeding: Seeding::SelfHash,
            context_width: 4,
            ..KeyParams::default()
        },
    );
    let prf = Prf::new(key.clone(), 50257);
    let wm: Arc<dyn Watermark> = Arc::new(Watermarker::new(Prf::new(key, 50257)));
    let prompt = Tokenizer::gpt2()
        .encode("The king and the queen said")
        .unwrap();
    let spec = SeqSpec {
        tag: 0,
        max_tokens: 1,
        sampling: sampling(1.0, 0, 1.0, 1.0),
        seed: 5,
        stream: 0,
        stop: Arc::from(Vec::new()),
        top_logprobs: 5,
        watermark: Some(wm),
        adjust: Default::default(),
        ignore_eos: true,
    };
    let mut decoder = Decoder::new(&model, 1);
    decoder.join(&prompt, vec![spec]).unwrap();
    let mut got = None;
    while got.is_none() {
        decoder
            .step(&mut |e| {
                if let Event::Token { token, .. } = e {
                    got = Some(token.clone());
                }
            })
            .unwrap();
    }
    let got = got.unwrap();
    let mut cache = model.new_cache(1);
    let mut scratch = gpt2_model::Scratch::default();
    let raw = model
        .next_token_logits(
            &gpt2_model::Batch::single(0, &prompt),
            &mut cache,
            &mut scratch,
        )
        .unwrap()
        .to_vec();
    let context = &prompt[prompt.len() - 4..];
    let biased: Vec<f64> = raw
        .iter()
        .enumerate()
        .map(|(t, &l)| {
            l as f64
                + if prf.is_green(context, t as u32) {
                    2.0
                } else {
                    0.0
                }
        })
        .collect();
    let max = biased.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + biased.iter().map(|b| (b - max).exp()).sum::<f64>().ln();
    let mut order: Vec<usize> = (0..biased.len()).collect();
    order.sort_by(|a, b| biased[*b].total_cmp(&biased[*a]));
    assert!((got.logprob as f64 - (biased[got.id as usize] - lse)).abs() < 1e-4);
    assert_eq!(got.top.len(), 5);
    for (&(id, lp), &want) in got.top.iter().zip(&order) {
        assert_eq!(id as usize, want);
        assert!((lp as f64 - (biased[want] - lse)).abs() < 1e-4, "{lp}");
    }
    // The bias is in play: the five most likely are green.
    assert!(order[..5].iter().all(|&t| prf.is_green(context, t as u32)));
}
