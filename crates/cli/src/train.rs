//! `gpt2 prepare` and `gpt2 train`.

use crate::input::load_model;
use anyhow::{anyhow, bail, Context, Result};
use gpt2_corpus::collect_documents;
use gpt2_model::Config;
use gpt2_train::checkpoint::{write_model, Precision};
use gpt2_train::data::read_tokens;
use gpt2_train::prepare::{split, unwrap_paragraphs, write_split};
use gpt2_train::{params_from_weights, Observer, StepReport, TrainModel, TrainOptions, Trainer};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Text files, folders of them, or JSONL files with a `text` field.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output folder for train.bin, val.bin and meta.json.
    #[arg(long)]
    out: PathBuf,
    /// Documents whose name contains this go to validation (repeatable).
    #[arg(long = "val")]
    val: Vec<String>,
    /// Without --val: the share of documents held out (every k-th one).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Join each paragraph's hard-wrapped lines into one line (for
    /// Gutenberg-style text; see `unwrap_paragraphs`).
    #[arg(long)]
    unwrap: bool,
}

pub fn prepare(a: PrepareArgs) -> Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&a.val_fraction),
        "--val-fraction must be in [0, 1)"
    );
    let mut docs = collect_documents(&a.inputs, "text")?;
    if a.unwrap {
        for d in &mut docs {
            d.text = unwrap_paragraphs(&d.text);
        }
    }
    let s = split(&docs, &a.val, a.val_fraction).map_err(|e| anyhow!(e))?;
    write_split(&a.out, &s)?;
    println!(
        "{} documents: train {} tokens ({} documents), validation {} tokens ({} documents) -> {}",
        docs.len(),
        s.train.len(),
        s.train_docs.len(),
        s.val.len(),
        s.val_docs.len(),
        a.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Folder made by `gpt2 prepare` (train.bin, val.bin).
    #[arg(long)]
    data: PathBuf,
    /// Where checkpoints, log.csv and samples go.
    #[arg(long)]
    out: PathBuf,
    /// Fine-tune this checkpoint (directory, hub id or `default`) instead of
    /// starting from random weights.
    #[arg(long, conflicts_with_all = ["preset", "layers"])]
    init: Option<String>,
    /// A released shape: 124M, 355M, 774M, 1558M.
    #[arg(long)]
    preset: Option<String>,
    #[arg(long, requires_all = ["heads", "embd"])]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    embd: Option<usize>,
    /// Context length of a new model.
    #[arg(long, default_value_t = 1024)]
    ctx: usize,
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    #[arg(long, default_value_t = 6e-4, allow_negative_numbers = true)]
    lr: f32,
    #[arg(long, default_value_t = 0.1)]
    min_lr_ratio: f32,
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    #[arg(long, default_value_t = 100)]
    eval_every: u64,
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    #[arg(long, default_value_t = 500)]
    sample_every: u64,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Continue the run saved under --out.
    #[arg(long)]
    resume: bool,
    /// Stop (with a checkpoint) after this many steps of the schedule; a
    /// later --resume continues exactly where it stopped.
    #[arg(long)]
    stop_after: Option<u64>,
    /// When done, also write the model here in f16 (a compact release copy).
    #[arg(long)]
    export_f16: Option<PathBuf>,
}

pub fn train(a: TrainArgs) -> Result<()> {
    let (config, params) = initial_model(&a)?;
    let options = TrainOptions {
        batch: a.batch,
        seq: a.seq,
        grad_accum: a.grad_accum,
        steps: a.steps,
        lr: a.lr,
        min_lr_ratio: a.min_lr_ratio,
        warmup: a.warmup,
        eval_every: a.eval_every,
        eval_batches: a.eval_batches,
        sample_every: a.sample_every,
        checkpoint_every: a.checkpoint_every,
        seed: a.seed,
    };
    options.validate(config.n_ctx).map_err(|e| anyhow!(e))?;
    let train = read_tokens(&a.data.join("train.bin"), config.vocab_size)?;
    let val = read_tokens(&a.data.join("val.bin"), config.vocab_size)?;
    for (name, t) in [("train.bin", &train), ("val.bin", &val)] {
        anyhow::ensure!(
            t.len() > a.seq + 1,
            "{}: {} tokens, fewer than --seq + 1",
            a.data.join(name).display(),
            t.len()
        );
    }
    if !a.resume && a.out.join("latest").exists() {
        bail!("{} already holds a training run; pass --resume to continue it, or choose another --out", a.out.display());
    }
    let model = TrainModel::new(config, params, a.batch, a.seq);
    let mut trainer = Trainer::new(model, options, &train, &val, &a.out);
    if a.resume {
        trainer.resume().map_err(|e| anyhow!(e))?;
        eprintln!("resuming at step {}", trainer.step);
    }
    eprintln!(
        "model: {} layers, {} heads, width {}, context {} ({:.1}M parameters); {} train / {} validation tokens",
        config.n_layer,
        config.n_head,
        config.n_embd,
        config.n_ctx,
        config.num_parameters() as f64 / 1e6,
        train.len(),
        val.len()
    );
    let mut progress = Progress::new(a.steps);
    trainer.run(&mut progress, a.stop_after)?;
    if progress.terminal {
        eprintln!();
    }
    if let Some(dir) = &a.export_f16 {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_model(dir, &config, &trainer.model.params, Precision::F16)?;
        eprintln!("exported f16 weights to {}", dir.display());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A training run's log.csv.
    log: PathBuf,
    /// The PNG to write.
    #[arg(long, default_value = "loss.png")]
    out: PathBuf,
}

pub fn plot(a: PlotArgs) -> Result<()> {
    gpt2_train::plot::plot_losses(&a.log, &a.out).map_err(|e| anyhow!(e))?;
    println!("wrote {}", a.out.display());
    Ok(())
}

/// The starting point: a loaded checkpoint, or a new model of the asked
/// shape with GPT-2's initialisation.
fn initial_model(a: &TrainArgs) -> Result<(Config, Vec<f32>)> {
    if let Some(spec) = &a.init {
        let m = load_model(spec)?;
        return Ok((*m.config(), params_from_weights(m.weights())));
    }
    let config = match (&a.preset, a.layers) {
        (Some(p), _) => Config::preset(p)
            .ok_or_else(|| anyhow!("unknown --preset {p:?} (124M, 355M, 774M, 1558M)"))?,
        (None, Some(layers)) => Config {
            vocab_size: gpt2_model::config::GPT2_VOCAB_SIZE,
            n_ctx: a.ctx,
            n_embd: a.embd.unwrap_or(0),
            n_layer: layers,
            n_head: a.heads.unwrap_or(0),
        },
        (None, None) => bail!("give --init CHECKPOINT, --preset NAME, or --layers/--heads/--embd"),
    };
    config.validate(Path::new("the command line"))?;
    Ok((config, gpt2_train::init::gpt2_init(&config, a.seed)))
}

/// Progress on stderr: a line rewritten in place on a terminal, one line
/// every few steps otherwise.
struct Progress {
    steps: u64,
    terminal: bool,
}

impl Progress {
    fn new(steps: u64) -> Progress {
        Progress {
            steps,
            terminal: std::io::stderr().is_terminal(),
        }
    }
}

impl Observer for Progress {
    fn step(&mut self, r: &StepReport) {
        let done = r.step + 1;
        // Whole seconds first, so 59.6 s shows as 1m00s, not 0m60s.
        let eta = ((self.steps - done) as f64 * r.elapsed_s / done.max(1) as f64).round() as u64;
        let line = format!(
            "step {done}/{} loss {:.4} lr {:.2e} norm {:.2} | {:.0} tok/s | ETA {}m{:02}s",
            self.steps,
            r.loss,
            r.lr,
            r.grad_norm,
            r.tokens_per_s,
            eta / 60,
            eta % 60
        );
        if self.terminal {
            eprint!("\r{line}   ");
            let _ = std::io::stderr().flush();
        } else if done.is_multiple_of(10) || done == self.steps {
            eprintln!("{line}");
        }
    }

    fn validation(&mut self, step: u64, loss: f32) {
        eprintln!(
            "{}step {} validation loss {loss:.4} (perplexity {:.2})",
            if self.terminal { "\n" } else { "" },
            step + 1,
            loss.exp()
        );
    }

    fn sample(&mut self, step: u64, text: &str) {
        eprintln!("sample at step {}: {text:?}", step + 1);
    }

    fn checkpoint(&mut self, step: u64, dir: &Path) {
        eprintln!("checkpoint at step {step}: {}", dir.display());
    }

    fn warning(&mut self, message: &str) {
        eprintln!("warning: {message}");
    }
}
