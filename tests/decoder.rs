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
