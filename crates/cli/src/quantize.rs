//! `gpt2 quantize IN OUT --to FORMAT`: rewrite a model's matrices as f16,
//! bf16, q8_0 or q4_0 (or back to f32), as a checkpoint directory or, with
//! `--gguf`, as a GGUF file llama.cpp loads; optionally measure what that
//! costs on a text against the original.

use crate::input::{load_model, read_text};
use anyhow::{bail, Context, Result};
use gpt2_model::convert::{convert, format_name, to_safetensors, weight_bytes};
use gpt2_model::gguf::gpt2::to_gguf;
use gpt2_model::packed::Format;
use gpt2_model::score::{Scorer, Windowing};
use gpt2_model::{Model, Tokenizer};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The model to convert: a checkpoint directory, a GGUF file, a hub id,
    /// or `default`.
    input: String,
    /// Directory to write `config.json` and `model.safetensors` into
    /// (created if missing); with `--gguf`, the file to write.
    output: PathBuf,
    /// Storage of the token embedding and the layer matrices: f32, f16,
    /// bf16, q8_0 or q4_0.
    #[arg(long = "to")]
    to: String,
    /// Write one GGUF file (llama.cpp's format, architecture `gpt2`) at OUT
    /// instead of a checkpoint directory.
    #[arg(long)]
    gguf: bool,
    /// Replace a model already in OUT.
    #[arg(long)]
    force: bool,
    /// Score this text with both models and report the difference: mean
    /// and max |delta logprob| per token, and top-1 agreement.
    #[arg(long)]
    check: Option<String>,
    #[arg(long)]
    json: bool,
}

fn parse_format(s: &str) -> Result<Option<Format>> {
    if s == "f32" {
        return Ok(None);
    }
    Format::parse(s).map(Some).with_context(|| {
        format!("unknown format `{s}` for --to; choose f32, f16, bf16, q8_0 or q4_0")
    })
}

pub fn run(a: Args) -> Result<()> {
    let format = parse_format(&a.to)?;
    let written = if a.gguf {
        a.output.clone()
    } else {
        a.output.join("model.safetensors")
    };
    check_output(&a.input, &a.output, &written, a.force)?;
    let model = load_model(&a.input)?;
    let converted = convert(model.weights(), format).map_err(anyhow::Error::msg)?;
    let file_bytes = if a.gguf {
        let bytes = to_gguf(model.config(), &converted, &a.input).map_err(anyhow::Error::msg)?;
        write(&a.output, &bytes)?;
        bytes.len()
    } else {
        let bytes = to_safetensors(&converted, &a.to).map_err(anyhow::Error::msg)?;
        write_checkpoint(&a.output, model.config(), &bytes)?;
        bytes.len()
    };
    let out = load_model(&a.output.display().to_string())
        .context("the written model does not load back")?;
    let mut report = json!({
        "input": a.input,
        "output": a.output,
        "format": format_name(out.weights()),
        "weight_bytes_before": weight_bytes(model.weights()),
        "weight_bytes_after": weight_bytes(out.weights()),
        "file_bytes": file_bytes,
    });
    if let Some(file) = &a.check {
        report["check"] = compare(&model, &out, file)?;
    }
    print_report(&report, a.json)
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    gpt2_model::atomic::write_atomic(path, data)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_checkpoint(dir: &Path, config: &gpt2_model::Config, weights: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_json = serde_json::to_string_pretty(&config.to_hf_json())?;
    // The weights first: a config.json beside stale weights would load as a
    // different model than it claims to be.
    write(&dir.join("model.safetensors"), weights)?;
    write(&dir.join("config.json"), config_json.as_bytes())
}

/// Refuses to overwrite a model (unless `--force`) or the input itself.
fn check_output(input: &str, output: &Path, written: &Path, force: bool) -> Result<()> {
    if output.is_dir() && written == output {
        bail!("{} is a directory; --gguf writes a file", output.display());
    }
    if written.exists() && !force {
        bail!(
            "{} already holds a model; pass --force to replace it",
            output.display()
        );
    }
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(Path::new(input), output) {
        bail!("the output is the input model; write the converted model elsewhere");
    }
    Ok(())
}

/// Scores `file` with both models, token by token.
fn compare(reference: &Model, candidate: &Model, file: &str) -> Result<serde_json::Value> {
    let ids = Tokenizer::gpt2().encode(&read_text(Some(file))?)?;
    if ids.len() < 2 {
        bail!("{file}: --check needs a text of at least two tokens");
    }
    let score = |m: &Model| Scorer::new(m).score(&ids, Windowing::Rolling, 1);
    let (want, got) = (score(reference)?, score(candidate)?);
    let n = want.len();
    let mut sum_abs = 0f64;
    let mut max_abs = 0f64;
    let mut agree = 0usize;
    for (w, g) in want.iter().zip(&got) {
        let d = (w.logprob as f64 - g.logprob as f64).abs();
        sum_abs += d;
        max_abs = max_abs.max(d);
        agree += usize::from(w.top.first().map(|t| t.0) == g.top.first().map(|t| t.0));
    }
    let nll = |s: &[gpt2_model::score::TokenScore]| {
        -s.iter().map(|t| t.logprob as f64).sum::<f64>() / n as f64
    };
    Ok(json!({
        "file": file,
        "tokens": n,
        "mean_abs_delta_logprob": sum_abs / n as f64,
        "max_abs_delta_logprob": max_abs,
        "top1_agreement": agree as f64 / n as f64,
        "perplexity_before": nll(&want).exp(),
        "perplexity_after": nll(&got).exp(),
    }))
}

fn print_report(r: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    let mb = |k: &str| r[k].as_u64().unwrap_or(0) as f64 / 1e6;
    println!(
        "wrote {} ({}): weights {:.1} MB, were {:.1} MB",
        r["output"].as_str().unwrap_or(""),
        r["format"].as_str().unwrap_or(""),
        mb("weight_bytes_after"),
        mb("weight_bytes_before"),
    );
    if let Some(c) = r.get("check") {
        println!(
            "{}: {} tokens, mean |delta logprob| {:.3e}, max {:.3e}, top-1 agreement {:.2}%, perplexity {:.3} -> {:.3}",
            c["file"].as_str().unwrap_or(""),
            c["tokens"],
            c["mean_abs_delta_logprob"].as_f64().unwrap_or(f64::NAN),
            c["max_abs_delta_logprob"].as_f64().unwrap_or(f64::NAN),
            100.0 * c["top1_agreement"].as_f64().unwrap_or(f64::NAN),
            c["perplexity_before"].as_f64().unwrap_or(f64::NAN),
            c["perplexity_after"].as_f64().unwrap_or(f64::NAN),
        );
    }
    Ok(())
}
