//! `gpt2 detect`: zero-shot detector statistics per text, calibrated
//! decisions, and evaluation of the detectors on labelled texts.

use crate::input::load_model;
use anyhow::{bail, ensure, Context, Result};
use gpt2_corpus::collect_documents;
use gpt2_model::score::{Scorer, Windowing};
use gpt2_model::{Model, Tokenizer};
use gpt2_provenance::detector::{features, FeatureDetector, FEATURES_KIND};
use gpt2_provenance::roc::{auroc, bootstrap_ci, tpr_at_fpr, Thresholds, BUCKET_EDGES};
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
    /// A trained detector (`gpt2 detect train`): print its score and its
    /// calibrated decision (or the --thresholds' decision on its score).
    #[arg(long)]
    detector: Option<PathBuf>,
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
        /// Calibrate a trained detector's score instead of a statistic.
        #[arg(long, conflicts_with = "statistic")]
        detector: Option<PathBuf>,
        #[arg(long)]
        out: String,
        #[command(flatten)]
        opts: Opts,
    },
    /// Train a detector on labelled texts and write it to a directory.
    Train {
        #[arg(long, required = true)]
        human: Vec<String>,
        #[arg(long, required = true)]
        machine: Vec<String>,
        #[arg(long)]
        out: PathBuf,
        /// `features`: logistic regression over the zero-shot statistics
        /// and the GLTR histogram (the fine-tuned classifier is not built
        /// yet).
        #[arg(long, default_value = FEATURES_KIND)]
        kind: String,
        /// Folds of the cross-validation that measures it and calibrates
        /// its thresholds.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
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
        /// Also evaluate a trained detector on the same texts.
        #[arg(long)]
        detector: Option<PathBuf>,
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
            detector,
            out,
            opts,
        }) => {
            let detector = detector.map(|d| load_detector(&d, &opts)).transpose()?;
            let scoring = Scoring::choose(&statistic, detector.as_ref(), &opts)?;
            calibrate(&human, &machine, &scoring, &out, &opts)
        }
        Some(Sub::Evaluate {
            human,
            machine,
            json,
            detector,
            opts,
        }) => {
            let detector = detector.map(|d| load_detector(&d, &opts)).transpose()?;
            evaluate(&human, &machine, json, detector.as_ref(), &opts)
        }
        Some(Sub::Train {
            human,
            machine,
            out,
            kind,
            folds,
            seed,
            opts,
        }) => train(&human, &machine, &out, &kind, folds, seed, &opts),
        None => {
            let detector = a.detector.map(|d| load_detector(&d, &a.opts)).transpose()?;
            detect(
                &a.files,
                &a.opts,
                a.thresholds.as_deref(),
                detector,
                a.fpr,
                a.json,
            )
        }
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

/// What a decision is made on: one statistic, or a trained detector's
/// score.
enum Scoring<'a> {
    Statistic(Statistic),
    Detector(&'a FeatureDetector),
}

impl<'a> Scoring<'a> {
    fn choose(
        statistic: &str,
        detector: Option<&'a FeatureDetector>,
        opts: &Opts,
    ) -> Result<Scoring<'a>> {
        if let Some(d) = detector {
            return Ok(Scoring::Detector(d));
        }
        let Some(stat) = Statistic::from_name(statistic) else {
            bail!(
                "unknown statistic {statistic:?}; one of: {}",
                Statistic::ALL.map(|s| s.name()).join(", ")
            );
        };
        ensure!(
            stat != Statistic::Binoculars || opts.observer.is_some(),
            "binoculars needs --observer and --performer"
        );
        Ok(Scoring::Statistic(stat))
    }

    /// The name thresholds are calibrated under.
    fn name(&self) -> &'static str {
        match self {
            Scoring::Statistic(s) => s.name(),
            Scoring::Detector(_) => "detector",
        }
    }

    /// Larger is more machine-like; `None` where the text lacks it.
    fn score(&self, tokens: usize, s: &Statistics) -> Option<f64> {
        match self {
            Scoring::Statistic(stat) => stat.machine_score(s),
            Scoring::Detector(d) => Some(d.score(s, tokens)),
        }
    }
}

/// A trained detector, which must have been trained on the statistics of
/// the model scoring now.
fn load_detector(dir: &std::path::Path, opts: &Opts) -> Result<FeatureDetector> {
    let d = FeatureDetector::load(dir)?;
    ensure!(
        d.model == opts.model,
        "{}: the detector was trained on the statistics of --model {}, not {}",
        dir.display(),
        d.model,
        opts.model
    );
    Ok(d)
}

fn detect(
    files: &[String],
    opts: &Opts,
    thresholds: Option<&str>,
    detector: Option<FeatureDetector>,
    fpr: f64,
    as_json: bool,
) -> Result<()> {
    let thresholds = thresholds.map(read_thresholds).transpose()?;
    if let Some(t) = &thresholds {
        ensure!(
            t.model == opts.model,
            "the thresholds were calibrated with --model {}, not {}",
            t.model,
            opts.model
        );
    }
    // The decision: --thresholds on their statistic (or on the detector's
    // score), else the detector's own calibrated thresholds.
    let decider: Option<(Thresholds, Scoring)> = match (thresholds, &detector) {
        (Some(t), Some(d)) if t.statistic == "detector" => Some((t, Scoring::Detector(d))),
        (Some(t), None) if t.statistic == "detector" => {
            bail!("the thresholds are for a trained detector: give it with --detector DIR")
        }
        (Some(t), _) => {
            let scoring = Scoring::choose(&t.statistic, None, opts)
                .with_context(|| "the threshold file's statistic")?;
            Some((t, scoring))
        }
        (None, Some(d)) => Some((d.thresholds.clone(), Scoring::Detector(d))),
        (None, None) => None,
    };
    for (name, tokens, stats) in measure(files, opts)? {
        let decision = decider
            .as_ref()
            .map(|(t, scoring)| match scoring.score(tokens, &stats) {
                Some(score) => t.decide(tokens, score, fpr),
                None => "abstain",
            });
        let detector_score = detector.as_ref().map(|d| d.score(&stats, tokens));
        if as_json {
            let stats_json = json!({
                "log_likelihood": stats.log_likelihood, "log_rank": stats.log_rank,
                "entropy": stats.entropy, "lrr": finite(stats.lrr),
                "fast_detectgpt": finite(stats.fast_detectgpt), "gltr": stats.gltr,
                "binoculars": stats.binoculars,
            });
            println!(
                "{}",
                json!({"tokens": tokens, "statistics": stats_json,
                       "detector_score": detector_score, "decision": decision})
            );
        } else {
            println!(
                "{name}: {tokens} tokens, log-likelihood {:.3}, log-rank {:.3}, entropy {:.3}, LRR {:.3}, \
                 Fast-DetectGPT {:.2}, GLTR {:?}{}{}{}",
                stats.log_likelihood,
                stats.log_rank,
                stats.entropy,
                stats.lrr,
                stats.fast_detectgpt,
                stats.gltr,
                stats.binoculars.map(|b| format!(", Binoculars {b:.4}")).unwrap_or_default(),
                detector_score.map(|d| format!(", detector {d:.3}")).unwrap_or_default(),
                decision.map(|d| format!(" -> {d}")).unwrap_or_default(),
            );
        }
    }
    Ok(())
}

/// The least share of the smaller class: below it, a detector would learn
/// the class balance more than the texts.
const MIN_CLASS_SHARE: f64 = 0.1;
/// The fewest texts of each class a detector is trained on.
const MIN_CLASS_TEXTS: usize = 20;

fn train(
    human: &[String],
    machine: &[String],
    out: &std::path::Path,
    kind: &str,
    folds: usize,
    seed: u64,
    opts: &Opts,
) -> Result<()> {
    ensure!(
        kind == FEATURES_KIND,
        "--kind {kind:?}: this gpt2 trains `features` detectors (logistic regression over the \
         zero-shot statistics); the fine-tuned classifier is not built yet"
    );
    ensure!(
        (2..=20).contains(&folds),
        "--folds must be between 2 and 20"
    );
    ensure!(
        opts.observer.is_none(),
        "a feature detector does not use Binoculars' models"
    );
    let min_tokens = BUCKET_EDGES[0];
    let mut labelled = Vec::new();
    for (class, paths) in [("human", human), ("machine", machine)] {
        let measured = measure(paths, opts)?;
        let all = measured.len();
        let kept: Vec<(usize, Vec<f64>)> = measured
            .into_iter()
            .filter(|(_, n, _)| *n >= min_tokens)
            .map(|(_, n, s)| (n, features(&s, n).to_vec()))
            .collect();
        if kept.len() < all {
            eprintln!(
                "{class}: left out {} of {all} texts shorter than {min_tokens} tokens",
                all - kept.len()
            );
        }
        ensure!(
            kept.len() >= MIN_CLASS_TEXTS,
            "only {} {class} texts of at least {min_tokens} tokens; a detector needs {MIN_CLASS_TEXTS}",
            kept.len()
        );
        labelled.push(kept);
    }
    let (h, m) = (&labelled[0], &labelled[1]);
    let share = h.len().min(m.len()) as f64 / (h.len() + m.len()) as f64;
    ensure!(
        share >= MIN_CLASS_SHARE,
        "{} human and {} machine texts: the smaller class is under {:.0}% of the texts; \
         give more of it (nothing was written)",
        h.len(),
        m.len(),
        MIN_CLASS_SHARE * 100.0
    );
    let start = std::time::Instant::now();
    let d = FeatureDetector::train(&opts.model, h, m, folds, seed);
    d.save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    let v = &d.validation;
    println!(
        "wrote {}: {} human, {} machine texts; {}-fold cross-validated AUROC {:.3}, TPR {:.3} at 1% FPR, \
         {:.3} at 0.1% FPR ({:.1} s to fit)",
        out.join(gpt2_provenance::detector::DETECTOR_FILE).display(),
        v.human_texts,
        v.machine_texts,
        v.folds,
        v.auroc,
        v.tpr_at_1pct_fpr,
        v.tpr_at_01pct_fpr,
        start.elapsed().as_secs_f64()
    );
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
    scoring: &Scoring,
    out: &str,
    opts: &Opts,
) -> Result<()> {
    let scored: Vec<(usize, f64)> = measure(human, opts)?
        .iter()
        .filter_map(|(_, n, s)| scoring.score(*n, s).map(|v| (*n, v)))
        .collect();
    let t = Thresholds::calibrate(scoring.name(), &opts.model, &scored);
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
                    scoring
                        .score(*n, s)
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

fn evaluate(
    human: &[String],
    machine: &[String],
    as_json: bool,
    detector: Option<&FeatureDetector>,
    opts: &Opts,
) -> Result<()> {
    let (h, m) = (measure(human, opts)?, measure(machine, opts)?);
    let mut rows = Vec::new();
    let mut scorings: Vec<Scoring> = Statistic::ALL.map(Scoring::Statistic).into();
    scorings.extend(detector.map(Scoring::Detector));
    for scoring in &scorings {
        let hs: Vec<f64> = h
            .iter()
            .filter_map(|(_, n, s)| scoring.score(*n, s))
            .collect();
        let ms: Vec<f64> = m
            .iter()
            .filter_map(|(_, n, s)| scoring.score(*n, s))
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
        let mut row = json!({"statistic": scoring.name(), "human": hs.len(), "machine": ms.len()});
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
