//! In-process speed measurement: prefill (last-position logits), scoring
//! (logits and log-softmax statistics at every position) and decode.

use crate::input::load_model;
use anyhow::{ensure, Result};
use gpt2_generate::{Decoder, SamplingParams, SeqSpec};
use gpt2_model::score::{Scorer, Windowing};
use gpt2_model::Model;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "default")]
    model: String,
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Sequences decoded together (the prompt prefilled once and copied).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let model = load_model(&a.model)?;
    let n_ctx = model.config().n_ctx;
    ensure!(
        // The first token is always sampled (time to first token), so the
        // prompt must leave room for it even when --gen-tokens is 0.
        a.prompt_tokens >= 1 && a.prompt_tokens + a.gen_tokens.max(1) <= n_ctx,
        "--prompt-tokens + --gen-tokens (at least 1) must be between 1 and the context length {n_ctx}"
    );
    ensure!(a.repeat >= 1, "--repeat must be at least 1");
    ensure!(a.batch >= 1, "--batch must be at least 1");
    let vocab = model.config().vocab_size.min(50257) as u32;
    let prompt: Vec<u32> = (0..a.prompt_tokens as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) % vocab)
        .collect();
    // One untimed warm-up round, then the best of `repeat` rounds.
    let mut best = Timings::worst();
    for round in 0..=a.repeat {
        let t = time_round(&model, &prompt, a.gen_tokens, a.batch)?;
        if round > 0 {
            best = best.min(&t);
        }
    }
    let threads = rayon::current_num_threads();
    let bandwidth = read_bandwidth_bytes_per_s();
    // A decode step reads every weight once (the position table aside).
    let weight_bytes = gpt2_model::convert::weight_bytes(model.weights()) as f64;
    let result = json!({
        "prefill_tokens_per_s": a.prompt_tokens as f64 / best.first_token,
        "decode_tokens_per_s": if a.gen_tokens > 1 { ((a.gen_tokens - 1) * a.batch) as f64 / best.decode } else { 0.0 },
        "batch": a.batch,
        "score_tokens_per_s": a.prompt_tokens as f64 / best.score,
        "time_to_first_token_s": best.first_token,
        "threads": threads,
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "simd": format!("{:?}", gpt2_model::kernels::simd::level()),
        "memory_bandwidth_gb_s": bandwidth / 1e9,
        "decode_bound_tokens_per_s": bandwidth / weight_bytes,
        "weight_bytes": weight_bytes,
        "weights": gpt2_model::convert::format_name(model.weights()),
        "model": a.model,
    });
    if a.json {
        println!("{result}");
    } else {
        println!(
            "prefill {:.1} tok/s, scoring {:.1} tok/s, decode {:.1} tok/s, first token after {:.3} s ({} threads)",
            result["prefill_tokens_per_s"].as_f64().unwrap_or(0.0),
            result["score_tokens_per_s"].as_f64().unwrap_or(0.0),
            result["decode_tokens_per_s"].as_f64().unwrap_or(0.0),
            best.first_token,
            threads
        );
    }
    Ok(())
}

/// Sustained read bandwidth with all pool threads: the best of ten parallel
/// vector scans over 1 GiB (far beyond the caches), in pieces small enough
/// for work stealing to even out the threads.
fn read_bandwidth_bytes_per_s() -> f64 {
    use rayon::prelude::*;
    let data = vec![1.0f32; 1 << 28];
    let mut best = f64::MAX;
    for _ in 0..10 {
        let start = Instant::now();
        let m = data
            .par_chunks(1 << 16)
            .map(|c| gpt2_model::kernels::simd::dot(c, c))
            .sum::<f32>();
        std::hint::black_box(m);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (data.len() * 4) as f64 / best
}

/// Seconds for each measured phase of one round.
struct Timings {
    /// The prompt in one pass, the last position's logits, the argmax:
    /// prefill and time to the first token are the same thing here.
    first_token: f64,
    /// The other `gen - 1` greedy tokens of every sequence, one forward
    /// pass (and one sampling step per sequence) each.
    decode: f64,
    /// The prompt scored: logits and statistics at every position.
    score: f64,
}

impl Timings {
    fn worst() -> Timings {
        Timings {
            first_token: f64::MAX,
            decode: f64::MAX,
            score: f64::MAX,
        }
    }

    fn min(&self, o: &Timings) -> Timings {
        Timings {
            first_token: self.first_token.min(o.first_token),
            decode: self.decode.min(o.decode),
            score: self.score.min(o.score),
        }
    }
}

/// Greedy decoding of `batch` copies of the prompt through the decoder
/// (the loop `gpt2 generate` and `gpt2 serve` run), `<|endoftext|>`
/// ignored, so the work does not depend on what the model writes.
fn time_round(model: &Model, prompt: &[u32], gen: usize, batch: usize) -> Result<Timings> {
    let greedy = SamplingParams {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        repetition_penalty: 1.0,
    };
    let mut decoder = Decoder::new(model, batch);
    let stop: Arc<[String]> = Arc::from(Vec::new());
    let specs = (0..batch as u64)
        .map(|i| SeqSpec {
            tag: i,
            max_tokens: gen.max(1),
            sampling: greedy,
            seed: 0,
            stream: i,
            stop: stop.clone(),
            top_logprobs: 0,
            watermark: None,
            adjust: Default::default(),
            ignore_eos: true,
        })
        .collect();
    decoder.join(prompt, specs)?;
    let start = Instant::now();
    decoder.step(&mut |_| {})?;
    let first_token = start.elapsed().as_secs_f64();
    let start = Instant::now();
    while !decoder.is_idle() {
        decoder.step(&mut |_| {})?;
    }
    let decode = start.elapsed().as_secs_f64();
    let start = Instant::now();
    Scorer::new(model).score(prompt, Windowing::Rolling, 0)?;
    Ok(Timings {
        first_token,
        decode,
        score: start.elapsed().as_secs_f64(),
    })
}
