//! `gpt2 eval TASK --data FILE` and `gpt2 perplexity FILE`.

use crate::input::{load_model, read_text};
use anyhow::Result;
use gpt2_eval::{data, lambada, rolling, Progress, TaskResult};
use gpt2_model::score::Windowing;
use gpt2_model::Model;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// lm-eval's lambada_openai: acc and perplexity of the last word.
    Lambada,
    /// The paper's word-level LAMBADA: greedy decoding must write the word.
    LambadaWord,
    /// WikiText (wiki.test.raw or wiki.test.tokens): word/byte perplexity, bits per byte.
    Wikitext,
    /// Mikolov's Penn Treebank (ptb.test.txt): word perplexity.
    Ptb,
    /// Bits per byte and per character of any file (enwik8, text8).
    Bytes,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    #[arg(value_enum)]
    task: Task,
    /// The task's data file.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    common: Common,
    /// Only the first N passages (LAMBADA), articles (WikiText) or
    /// sentences (PTB).
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// Text file; `-` reads stdin.
    file: String,
    /// Score in llama.cpp's `llama-perplexity -c N` windows instead: disjoint
    /// chunks of N tokens, each scoring its second half (token perplexity
    /// only; for comparing with llama.cpp).
    #[arg(long, value_name = "N", conflicts_with = "stride")]
    llama_chunks: Option<usize>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct Common {
    /// Checkpoint directory, GGUF file, hub id, or `default`.
    #[arg(long, default_value = "default")]
    model: String,
    /// Hugging Face's sliding window: each window scores its last S tokens
    /// (default: lm-eval's rolling, disjoint windows).
    #[arg(long)]
    stride: Option<usize>,
    /// Print lm-evaluation-harness-shaped JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let model = load_model(&a.common.model)?;
    let windowing = windowing(a.common.stride);
    let by_example = matches!(a.task, Task::Lambada | Task::LambadaWord);
    anyhow::ensure!(
        !(by_example && a.common.stride.is_some()),
        "--stride applies to the document tasks (wikitext, ptb, bytes), not to LAMBADA"
    );
    anyhow::ensure!(
        !(a.task == Task::Bytes && a.limit.is_some()),
        "--limit applies to tasks with passages, articles or sentences, not to bytes"
    );
    anyhow::ensure!(a.limit != Some(0), "--limit must be at least 1");
    let started = Instant::now();
    let mut bar = Bar::default();
    let result = match a.task {
        Task::Lambada | Task::LambadaWord => {
            let mut passages = data::lambada_passages(&a.data)?;
            let original = passages.len();
            passages.truncate(a.limit.unwrap_or(usize::MAX));
            let name = a.data.display().to_string();
            let mut r = if a.task == Task::Lambada {
                lambada::lambada_openai(&model, &passages, &name, &mut bar)?
            } else {
                lambada::lambada_word(&model, &passages, &mut bar)?
            };
            r.original = original;
            r
        }
        Task::Wikitext => rolling::wikitext(&model, &a.data, a.limit, windowing, &mut bar)?,
        Task::Ptb => rolling::ptb(&model, &a.data, a.limit, windowing, &mut bar)?,
        Task::Bytes => rolling::bytes(&model, &a.data, windowing, &mut bar)?,
    };
    let mut config = config(&a.common, &model, started, &result);
    config["data"] = json!(a.data.display().to_string());
    config["limit"] = json!(a.limit);
    print(&result, config, a.common.json)
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let text = read_text(Some(&a.file))?;
    let model = load_model(&a.common.model)?;
    let started = Instant::now();
    let windowing = match a.llama_chunks {
        Some(ctx) => Windowing::LlamaPerplexity { ctx },
        None => windowing(a.common.stride),
    };
    let result = rolling::perplexity(&model, &a.file, &text, windowing, &mut Bar::default())?;
    let mut config = config(&a.common, &model, started, &result);
    if let Some(ctx) = a.llama_chunks {
        config["windows"] = json!(format!("llama-perplexity chunks of {ctx}"));
    }
    config["data"] = json!(a.file);
    print(&result, config, a.common.json)
}

fn windowing(stride: Option<usize>) -> Windowing {
    stride.map_or(Windowing::Rolling, |stride| Windowing::Sliding { stride })
}

/// What was run and how long it took, for the JSON's `config`.
fn config(c: &Common, model: &Model, started: Instant, r: &TaskResult) -> Value {
    let seconds = started.elapsed().as_secs_f64();
    json!({
        "model": c.model,
        "n_ctx": model.config().n_ctx,
        "windows": match c.stride {
            Some(s) => format!("sliding, stride {s}"),
            None => "rolling (lm-eval)".into(),
        },
        "threads": rayon::current_num_threads(),
        "wall_seconds": seconds,
        "tokens_per_second": r.tokens as f64 / seconds,
        "gpt2_version": env!("CARGO_PKG_VERSION"),
    })
}

fn print(r: &TaskResult, config: Value, as_json: bool) -> Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(&r.to_json(config))?);
    } else {
        println!(
            "model {}, {}, {} tokens in {:.1} s ({:.0} tokens/s)\n",
            config["model"].as_str().unwrap_or_default(),
            config["data"].as_str().unwrap_or_default(),
            r.tokens,
            config["wall_seconds"].as_f64().unwrap_or_default(),
            config["tokens_per_second"].as_f64().unwrap_or_default(),
        );
        print!("{}", r.to_markdown());
    }
    Ok(())
}

/// A progress bar on stderr; indicatif hides it when stderr is not a terminal.
#[derive(Default)]
struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, total: usize, unit: &str) {
        let bar = ProgressBar::new(total as u64);
        let template = format!(
            "{{elapsed_precise}} {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
        );
        if let Ok(style) = ProgressStyle::with_template(&template) {
            bar.set_style(style);
        }
        self.0 = Some(bar);
    }
    fn advance(&mut self, n: usize) {
        if let Some(b) = &self.0 {
            b.inc(n as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.0.take() {
            b.finish_and_clear();
        }
    }
}
