use crate::input::load_model;
use anyhow::{ensure, Result};
use gpt2_generate::{
    Completion, GenerateOptions, Generator, LogitAdjust, SamplingParams, Truncate,
};
use gpt2_model::Tokenizer;
use gpt2_provenance::ledger::{Ledger, NewRecord};
use gpt2_provenance::watermark::{Prf, Watermarker};
use serde_json::json;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    /// The prompt (empty: unconditional samples).
    prompt: String,
    /// Checkpoint directory, GGUF file, hub id, or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f32,
    /// 0 = off. The GPT-2 paper's samples used 40.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f32,
    /// OpenAI's presence penalty, -2 to 2 (0 = off): subtracted once from
    /// the logit of every token already generated.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// OpenAI's frequency penalty, -2 to 2 (0 = off): subtracted per
    /// occurrence of a token already generated.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// `ID=BIAS`: add BIAS (-100 to 100) to token ID's logit before
    /// sampling (repeatable; -100 all but bans a token, 100 all but forces it).
    #[arg(long, value_parser = parse_logit_bias, allow_hyphen_values = true)]
    logit_bias: Vec<(u32, f32)>,
    /// Same seed and arguments give the same text (default: drawn at random,
    /// printed with --json).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Number of samples.
    #[arg(short, default_value_t = 1)]
    n: usize,
    /// What to do with a prompt longer than the context: `error` or `left`
    /// (keep its end).
    #[arg(long, default_value = "error", value_parser = ["error", "left"])]
    truncate: String,
    /// Watermark the output with this key (`gpt2 watermark keygen`).
    #[arg(long)]
    watermark: Option<String>,
    /// Record every sample in this provenance ledger (created if missing)
    /// before printing the JSON; streamed text is recorded when it ends.
    #[arg(long)]
    ledger: Option<String>,
    /// Who asked, for the ledger record.
    #[arg(long, requires = "ledger")]
    caller: Option<String>,
    /// Print ids, text and per-token logprobs as JSON instead of streaming.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    ensure!(a.n >= 1, "-n must be at least 1");
    let model = load_model(&a.model)?;
    let tokenizer = Tokenizer::gpt2();
    let prompt = tokenizer.encode(&a.prompt)?;
    let seed = a.seed.unwrap_or_else(random_seed);
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            repetition_penalty: a.repetition_penalty,
        },
        seed,
        stop: a.stop.clone(),
        n: a.n,
        truncate: if a.truncate == "left" {
            Truncate::Left
        } else {
            Truncate::Error
        },
        adjust: LogitAdjust {
            bias: a.logit_bias.clone().into(),
            presence_penalty: a.presence_penalty,
            frequency_penalty: a.frequency_penalty,
        },
    };
    opts.adjust
        .validate(tokenizer.vocab_size().min(model.config().vocab_size))
        .map_err(|(_, m)| anyhow::Error::msg(m))?;
    // Open the ledger before generating, so a bad path fails fast.
    if let Some(path) = &a.ledger {
        Ledger::open(path)?;
    }
    let mut generator = Generator::new(&model);
    let key = a
        .watermark
        .as_deref()
        .map(crate::watermark::load_key)
        .transpose()?;
    let key_id = key.as_ref().map(|k| k.id.clone());
    if let Some(key) = key {
        let prf = Prf::new(key, model.config().vocab_size);
        generator.set_watermark(std::sync::Arc::new(Watermarker::new(prf)));
    }
    let stream = !a.json && a.n == 1;
    let mut stdout = std::io::stdout().lock();
    if stream {
        write!(stdout, "{}", a.prompt)?;
        stdout.flush()?;
    }
    let mut write_error = None;
    let completions = generator.generate(&prompt, &opts, &mut |_, piece| {
        if stream && write_error.is_none() {
            if let Err(e) = write!(stdout, "{piece}").and_then(|_| stdout.flush()) {
                write_error = Some(e);
            }
        }
    })?;
    if let Some(path) = &a.ledger {
        record(path, &completions, &a, key_id.as_deref())?;
    }
    if let Some(e) = write_error {
        return Err(e.into());
    }
    if a.json {
        let samples: Vec<_> = completions
            .iter()
            .map(|c| {
                json!({
                    "ids": c.tokens,
                    "text": c.text,
                    "logprobs": c.logprobs,
                    "tokens": c.tokens.iter().map(|&t| tokenizer.token_text(t)).collect::<Vec<_>>(),
                    "finish_reason": c.finish_reason.as_str(),
                })
            })
            .collect();
        let out = json!({"model": a.model, "prompt": a.prompt, "prompt_ids": prompt, "seed": seed, "watermark_key_id": key_id, "samples": samples});
        writeln!(stdout, "{}", serde_json::to_string(&out)?)?;
    } else if stream {
        writeln!(stdout)?;
    } else {
        for (i, c) in completions.iter().enumerate() {
            writeln!(
                stdout,
                "======== sample {} ========\n{}{}",
                i + 1,
                a.prompt,
                c.text
            )?;
        }
    }
    Ok(())
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Records every sample in the ledger, in one transaction.
fn record(path: &str, completions: &[Completion], a: &Args, key_id: Option<&str>) -> Result<()> {
    let mut ledger = Ledger::open(path)?;
    let records: Vec<NewRecord> = completions
        .iter()
        .map(|c| NewRecord {
            tokens: c.tokens.clone(),
            text: c.text.clone(),
            watermark_key_id: key_id.map(str::to_string),
            caller: a.caller.clone(),
            model: Some(a.model.clone()),
        })
        .collect();
    ledger.record_batch(&records)?;
    Ok(())
}

/// `ID=BIAS` of `--logit-bias`.
fn parse_logit_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, bias) = s
        .split_once('=')
        .ok_or_else(|| format!("--logit-bias takes ID=BIAS, got {s:?}"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("--logit-bias: {id:?} is not a token id"))?;
    let bias = bias
        .trim()
        .parse()
        .map_err(|_| format!("--logit-bias: {bias:?} is not a number"))?;
    Ok((id, bias))
}
