use crate::input::{load_model, read_text};
use anyhow::Result;
use gpt2_model::score::{Scorer, TokenScore, Windowing};
use gpt2_model::Tokenizer;
use serde_json::{json, Value};
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    /// Text file to score; `-` or nothing reads stdin.
    file: Option<String>,
    /// Checkpoint directory, GGUF file, hub id, or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// Score long texts in Hugging Face's sliding windows, each scoring its
    /// last S tokens (default: lm-eval's rolling, disjoint windows).
    #[arg(long)]
    stride: Option<usize>,
    /// Also report the N most likely tokens at each position.
    #[arg(long, default_value_t = 0)]
    top: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let text = read_text(a.file.as_deref())?;
    let model = load_model(&a.model)?;
    let tokenizer = Tokenizer::gpt2();
    let ids = tokenizer.encode(&text)?;
    anyhow::ensure!(
        !ids.is_empty(),
        "{}: the text is empty; there is nothing to score",
        a.file.as_deref().unwrap_or("stdin")
    );
    let windowing = a
        .stride
        .map_or(Windowing::Rolling, |stride| Windowing::Sliding { stride });
    let scores = Scorer::new(&model).score(&ids, windowing, a.top)?;
    let mean = if scores.is_empty() {
        0.0
    } else {
        scores.iter().map(|s| s.logprob as f64).sum::<f64>() / scores.len() as f64
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let tokens: Vec<Value> = scores
            .iter()
            .map(|s| token_json(s, &tokenizer, a.top > 0))
            .collect();
        let doc = json!({"model": a.model, "tokens": tokens, "mean_logprob": mean, "perplexity": (-mean).exp()});
        writeln!(out, "{}", serde_json::to_string(&doc)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>6}  {:>7}  {:>10}  {:>8}  {:>8}  token",
        "pos", "id", "logprob", "rank", "entropy"
    )?;
    for (i, s) in scores.iter().enumerate() {
        let mut line = format!(
            "{:>6}  {:>7}  {:>10.4}  {:>8}  {:>8.4}  {:?}",
            i,
            s.id,
            s.logprob,
            s.rank,
            s.entropy,
            tokenizer.token_text(s.id)
        );
        for (id, lp) in &s.top {
            line.push_str(&format!("  {:?}:{:.3}", tokenizer.token_text(*id), lp));
        }
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "{} tokens, mean logprob {:.4}, perplexity {:.4}",
        scores.len(),
        mean,
        (-mean).exp()
    )?;
    Ok(())
}

fn token_json(s: &TokenScore, t: &Tokenizer, with_top: bool) -> Value {
    let mut v = json!({"id": s.id, "text": t.token_text(s.id), "logprob": s.logprob, "rank": s.rank, "entropy": s.entropy});
    if with_top {
        v["top"] = s
            .top
            .iter()
            .map(|(id, lp)| json!({"id": id, "text": t.token_text(*id), "logprob": lp}))
            .collect();
    }
    v
}
