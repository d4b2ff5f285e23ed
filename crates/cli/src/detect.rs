//! `gpt2 detect`: zero-shot detector statistics per text, calibrated
//! decisions, and evaluation of the detectors on labelled texts.

use crate::input::load_model;
use anyhow::{bail, ensure, Context, Result};
use gpt2_corpus::collect_documents;
use gpt2_model::score::{Scorer, Windowing};
use gpt2_model::{Model, Tokenizer};
use gpt2_provenance::roc::{auroc, bootstrap_ci, tpr_at_fpr, Thresholds};
use gpt2_provenance::stats::{binoculars, statistics, Statistic, Statistics};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Texts: files (one text each), `.jsonl` files, or directories.
    files: Vec<String>,
    #[command(flatten)]
    opts: Opts,
    /// A threshold file from `gpt2 detect calibrate`: print a decision.
    #[arg(long)]
    thresholds: Option<String>,
    /// The false-positive rate whose threshold decides (0.01 or 0.001).
    #[arg(long, default_value_t = 0.01)]
    fpr: f64,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct Opts {
    /// The scoring model.
    #[arg(long, default_value = "default")]
    model: String,
    /// The string field of `.jsonl` inputs.
    #[arg(long, default_value = "text")]
    field: String,
    /// Binoculars: the observer model (with --performer).
    #[arg(long, requires = "performer")]
    observer: Option<String>,
    /// Binoculars: the performer model (with --observer).
    #[arg(long, requires = "observer")]
    performer: Option<String>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Thresholds per length bucket at 1% and 0.1% false-positive rates.
    Calibrate {
        #[arg(long)]
        human: Vec<String>,
        /// Machine texts are not needed to set thresholds; given, the
        /// resulting true-positive rates are printed.
        #[arg(long)]
        machine: Vec<String>,
        #[arg(long, default_value = "fast_detectgpt")]
        statistic: String,
        #[arg(long)]
        out: String,
        #[command(flatten)]
        opts: Opts,
    },
    /// AUROC and TPR at 1% / 0.1% FPR of every statistic, with bootstrap 95% intervals.
    Evaluate {
        #[arg(long)]
        human: Vec<String>,
        #[arg(long)]
        machine: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        opts: Opts,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Some(Sub::Calibrate {
            human,
            machine,
            statistic,
            out,
            opts,
        }) => calibrate(&human, &machine, &statistic, &out, &opts),
        Some(Sub::Evaluate {
            human,
            machine,
            json,
            opts,
        }) => evaluate(&human, &machine, json, &opts),
        None => detect(&a.files, &a.opts, a.thresholds.as_deref(), a.fpr, a.json),
    }
}

/// (name, token count, statistics) of every text under `paths`.
fn measure(paths: &[String], opts: &Opts) -> Result<Vec<(String, usize, Statistics)>> {
    ensure!(!paths.is_empty(), "no texts given");
    let mut named = Vec::new();
    for p in paths {
        if p == "-" {
            named.push(("stdin".to_string(), crate::input::read_text(None)?));
        } else {
            let docs = collect_documents(&[PathBuf::from(p)], &opts.field)?;
            named.extend(docs.into_iter().map(|d| (d.name, d.text)));
        }
    }
    let tok = Tokenizer::gpt2();
    let mut ids = Vec::with_capacity(named.len());
    for (name, text) in &named {
        let t = tok.encode(text)?;
        ensure!(!t.is_empty(), "{name}: the text is empty");
        ids.push(t);
    }
    let model = load_model(&opts.model)?;
    let scores = Scorer::new(&model).score_texts(&ids, Windowing::Rolling, 0, &mut |_| {})?;
    let pair = binocular_models(opts)?;
    let mut out = Vec::with_capacity(named.len());
    for (((name, _), s), t) in named.into_iter().zip(scores).zip(&ids) {
        let mut stats = statistics(&s);
        if let Some((o, p)) = &pair {
            stats.binoculars = Some(binoculars(o, p, t).with_context(|| name.clone())?);
        }
        out.push((name, t.len(), stats));
    }
    Ok(out)
}

fn binocular_models(opts: &Opts) -> Result<Option<(Model, Model)>> {
    match (&opts.observer, &opts.performer) {
        (Some(o), Some(p)) => Ok(Some((load_model(o)?, load_model(p)?))),
        _ => Ok(None),
    }
}

fn detect(
    files: &[String],
    opts: &Opts,
    thresholds: Option<&str>,
    fpr: f64,
    as_json: bool,
) -> Result<()> {
    let thresholds = thresholds.map(read_thresholds).transpose()?;
    let statistic = match &thresholds {
        Some(t) => {
            let Some(stat) = Statistic::from_name(&t.statistic) else {
                bail!(
                    "the threshold file names an unknown statistic {:?}",
                    t.statistic
                );
            };
            ensure!(
                stat != Statistic::Binoculars || opts.observer.is_some(),
                "the thresholds are for binoculars, which needs --observer and --performer"
            );
            ensure!(
                t.model == opts.model,
                "the thresholds were calibrated with --model {}, not {}",
                t.model,
                opts.model
            );
            Some(stat)
        }
        None => None,
    };
    for (name, tokens, stats) in measure(files, opts)? {
        let decision = match (&thresholds, statistic) {
            (Some(t), Some(stat)) => Some(match stat.machine_score(&stats) {
                Some(score) => t.decide(tokens, score, fpr),
                None => "abstain",
            }),
            _ => None,
        };
        if as_json {
            let stats_json = json!({
                "log_likelihood": stats.log_likelihood, "log_rank": stats.log_rank,
                "entropy": stats.entropy, "lrr": finite(stats.lrr),
                "fast_detectgpt": finite(stats.fast_detectgpt), "gltr": stats.gltr,
                "binoculars": stats.binoculars,
            });
            println!(
                "{}",
                json!({"tokens": tokens, "statistics": stats_json, "decision": decision})
            );
        } else {
            println!(
                "{name}: {tokens} tokens, log-likelihood {:.3}, log-rank {:.3}, entropy {:.3}, LRR {:.3}, \
                 Fast-DetectGPT {:.2}, GLTR {:?}{}{}",
                stats.log_likelihood,
                stats.log_rank,
                stats.entropy,
                stats.lrr,
                stats.fast_detectgpt,
                stats.gltr,
                stats.binoculars.map(|b| format!(", Binoculars {b:.4}")).unwrap_or_default(),
                decision.map(|d| format!(" -> {d}")).unwrap_or_default(),
            );
        }
    }
    Ok(())
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

fn read_thresholds(path: &str) -> Result<Thresholds> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{path}: not a threshold file from `gpt2 detect calibrate`"))
}

fn calibrate(
    human: &[String],
    machine: &[String],
    statistic: &str,
    out: &str,
    opts: &Opts,
) -> Result<()> {
    let Some(stat) = Statistic::from_name(statistic) else {
        bail!(
            "unknown statistic {statistic:?}; one of: {}",
            Statistic::ALL.map(|s| s.name()).join(", ")
        );
    };
    ensure!(
        stat != Statistic::Binoculars || opts.observer.is_some(),
        "calibrating binoculars needs --observer and --performer"
    );
    let scored: Vec<(usize, f64)> = measure(human, opts)?
        .iter()
        .filter_map(|(_, n, s)| stat.machine_score(s).map(|v| (*n, v)))
        .collect();
    let t = Thresholds::calibrate(statistic, &opts.model, &scored);
    gpt2_model::atomic::write_atomic(
        std::path::Path::new(out),
        serde_json::to_string_pretty(&t)?.as_bytes(),
    )
    .with_context(|| format!("writing {out}"))?;
    println!(
        "wrote {out}: {} human texts, {} length buckets",
        scored.len(),
        t.buckets.len()
    );
    if !machine.is_empty() {
        let m = measure(machine, opts)?;
        for fpr in [0.01, 0.001] {
            let flagged = m
                .iter()
                .filter(|(_, n, s)| {
                    stat.machine_score(s)
                        .is_some_and(|v| t.decide(*n, v, fpr) == "machine")
                })
                .count();
            println!(
                "at FPR {fpr}: {flagged} of {} machine texts flagged",
                m.len()
            );
        }
    }
    Ok(())
}

/// A metric of (human scores, machine scores).
type RocMetric = dyn Fn(&[f64], &[f64]) -> f64;

fn evaluate(human: &[String], machine: &[String], as_json: bool, opts: &Opts) -> Result<()> {
    let (h, m) = (measure(human, opts)?, measure(machine, opts)?);
    let mut rows = Vec::new();
    for stat in Statistic::ALL {
        let hs: Vec<f64> = h
            .iter()
            .filter_map(|(_, _, s)| stat.machine_score(s))
            .collect();
        let ms: Vec<f64> = m
            .iter()
            .filter_map(|(_, _, s)| stat.machine_score(s))
            .collect();
        if hs.len() < 2 || ms.len() < 2 {
            continue;
        }
        let metrics: [(&str, Box<RocMetric>); 3] = [
            ("auroc", Box::new(auroc)),
            (
                "tpr_at_1pct_fpr",
                Box::new(|h: &[f64], m: &[f64]| tpr_at_fpr(h, m, 0.01)),
            ),
            (
                "tpr_at_0.1pct_fpr",
                Box::new(|h: &[f64], m: &[f64]| tpr_at_fpr(h, m, 0.001)),
            ),
        ];
        let mut row = json!({"statistic": stat.name(), "human": hs.len(), "machine": ms.len()});
        for (name, f) in &metrics {
            let (lo, hi) = bootstrap_ci(&hs, &ms, f.as_ref(), 1000);
            row[*name] = json!({"value": f(&hs, &ms), "ci95": [lo, hi]});
        }
        rows.push(row);
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("| statistic | AUROC (95% CI) | TPR @ 1% FPR | TPR @ 0.1% FPR |\n|---|---|---|---|");
    for r in rows {
        let cell = |k: &str| {
            format!(
                "{:.3} ({:.3}-{:.3})",
                r[k]["value"].as_f64().unwrap_or(f64::NAN),
                r[k]["ci95"][0].as_f64().unwrap_or(f64::NAN),
                r[k]["ci95"][1].as_f64().unwrap_or(f64::NAN)
            )
        };
        println!(
            "| {} | {} | {} | {} |",
            r["statistic"].as_str().unwrap_or_default(),
            cell("auroc"),
            cell("tpr_at_1pct_fpr"),
            cell("tpr_at_0.1pct_fpr")
        );
    }
    Ok(())
}
