//! `gpt2 detect`: zero-shot detector statistics per text, calibrated
//! decisions, and evaluation of the detectors on labelled texts.

use crate::input::load_model;
use anyhow::{bail, ensure, Context, Result};
use gpt2_corpus::collect_documents;
use gpt2_model::score::{Scorer, Windowing};
use gpt2_model::{Model, Tokenizer};
use gpt2_provenance::classifier::CLASSIFIER_KIND;
use gpt2_provenance::detector::{
    features, Detector, FeatureDetector, Scored, DETECTOR_FILE, FEATURES_KIND,
};
use gpt2_provenance::roc::{auroc, bootstrap_ci, tpr_at_fpr, Thresholds, BUCKET_EDGES};
use gpt2_provenance::stats::{binoculars, statistics, Statistic, Statistics};
use gpt2_train::classify::{train_classifier, write_classifier, ClassifyOptions, Progress};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

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

/// The classifier's training settings.
#[derive(clap::Args)]
struct FineTuning {
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// The most passes over the training texts.
    #[arg(long, default_value_t = 6)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr: f32,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Warm-up steps (then linear decay to 0).
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Steps between validations (there is also one at every epoch's end).
    #[arg(long, default_value_t = 50)]
    eval_every: u64,
    /// Validations without a better AUROC before training stops.
    #[arg(long, default_value_t = 4)]
    patience: usize,
    /// The share of each class held out for validation and calibration.
    #[arg(long, default_value_t = 0.2)]
    val_share: f64,
    /// Tokens read from the start of each text (default: the model's
    /// context, at most 512).
    #[arg(long)]
    max_tokens: Option<usize>,
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
        /// `classifier`: fine-tune --model as a sequence classifier (Hugging
        /// Face's GPT2ForSequenceClassification layout); `features`:
        /// logistic regression over --model's zero-shot statistics and the
        /// GLTR histogram.
        #[arg(long, default_value = CLASSIFIER_KIND)]
        kind: String,
        /// Features: folds of the cross-validation that measures the
        /// detector and calibrates its thresholds.
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
        #[command(flatten)]
        fine_tuning: FineTuning,
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
            let scoring = Scoring::choose(&statistic, detector.is_some(), &opts)?;
            calibrate(&human, &machine, scoring, detector.as_ref(), &out, &opts)
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
            fine_tuning,
            opts,
        }) => match kind.as_str() {
            FEATURES_KIND => train_features(&human, &machine, &out, folds, seed, &opts),
            CLASSIFIER_KIND => {
                train_classifier_cmd(&human, &machine, &out, seed, &fine_tuning, &opts)
            }
            other => bail!(
                "--kind {other:?}: one of {CLASSIFIER_KIND:?} (a fine-tuned GPT-2) and \
                 {FEATURES_KIND:?} (logistic regression over the zero-shot statistics)"
            ),
        },
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
/// One text as the detectors see it.
struct Measured {
    name: String,
    /// Its length in tokens.
    tokens: usize,
    stats: Statistics,
    /// A trained detector's (tokens it read, judgement).
    detector: Option<(usize, Scored)>,
}

/// The texts under `paths` (files, `.jsonl` files, directories, `-`),
/// named, as token ids; an empty text is an error naming it.
fn tokenized(paths: &[String], opts: &Opts) -> Result<Vec<(String, Vec<u32>)>> {
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
    let mut out = Vec::with_capacity(named.len());
    for (name, text) in named {
        let t = tok.encode(&text)?;
        ensure!(!t.is_empty(), "{name}: the text is empty");
        out.push((name, t));
    }
    Ok(out)
}

/// Every text under `paths` with its statistics (and `detector`'s score).
fn measure(paths: &[String], opts: &Opts, detector: Option<&Detector>) -> Result<Vec<Measured>> {
    let texts = tokenized(paths, opts)?;
    let ids: Vec<Vec<u32>> = texts.iter().map(|(_, t)| t.clone()).collect();
    let model = load_model(&opts.model)?;
    let scores = Scorer::new(&model).score_texts(&ids, Windowing::Rolling, 0, &mut |_| {})?;
    let pair = binocular_models(opts)?;
    let mut out = Vec::with_capacity(texts.len());
    for ((name, t), s) in texts.into_iter().zip(scores) {
        let mut stats = statistics(&s);
        if let Some((o, p)) = &pair {
            stats.binoculars = Some(binoculars(o, p, &t).with_context(|| name.clone())?);
        }
        out.push(Measured {
            name,
            tokens: t.len(),
            stats,
            detector: None,
        });
    }
    if let Some(d) = detector {
        let inputs: Vec<(&[u32], &Statistics)> = ids
            .iter()
            .map(|t| t.as_slice())
            .zip(out.iter().map(|m| &m.stats))
            .collect();
        let scores = d.scores(&inputs)?;
        for ((m, t), scored) in out.iter_mut().zip(&ids).zip(scores) {
            m.detector = Some((d.read_tokens(t.len()), scored));
        }
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
#[derive(Clone, Copy)]
enum Scoring {
    Statistic(Statistic),
    Detector,
}

impl Scoring {
    fn choose(statistic: &str, detector: bool, opts: &Opts) -> Result<Scoring> {
        if detector {
            return Ok(Scoring::Detector);
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
            Scoring::Detector => "detector",
        }
    }

    /// (tokens its length bucket is chosen by, score): larger is more
    /// machine-like; `None` where the text lacks it.
    fn score(&self, m: &Measured) -> Option<(usize, f64)> {
        match self {
            Scoring::Statistic(stat) => stat.machine_score(&m.stats).map(|s| (m.tokens, s)),
            Scoring::Detector => m.detector.map(|(n, d)| (n, d.score)),
        }
    }
}

/// A trained detector; a feature detector must have been trained on the
/// statistics of the model scoring now.
fn load_detector(dir: &Path, opts: &Opts) -> Result<Detector> {
    let d = Detector::load(dir)?;
    if let Some(model) = d.statistics_model() {
        ensure!(
            model == opts.model,
            "{}: the detector was trained on the statistics of --model {model}, not {}",
            dir.display(),
            opts.model
        );
    }
    Ok(d)
}

fn detect(
    files: &[String],
    opts: &Opts,
    thresholds: Option<&str>,
    detector: Option<Detector>,
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
        (Some(t), Some(_)) if t.statistic == "detector" => Some((t, Scoring::Detector)),
        (Some(t), None) if t.statistic == "detector" => {
            bail!("the thresholds are for a trained detector: give it with --detector DIR")
        }
        (Some(t), _) => {
            let scoring = Scoring::choose(&t.statistic, false, opts)
                .with_context(|| "the threshold file's statistic")?;
            Some((t, scoring))
        }
        (None, Some(d)) => Some((d.thresholds().clone(), Scoring::Detector)),
        (None, None) => None,
    };
    for m in measure(files, opts, detector.as_ref())? {
        let decision = decider
            .as_ref()
            .map(|(t, scoring)| match scoring.score(&m) {
                Some((tokens, score)) => t.decide(tokens, score, fpr),
                None => "abstain",
            });
        let (stats, tokens) = (&m.stats, m.tokens);
        let detector_score = m.detector.map(|(_, d)| d.score);
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
                       "detector_score": detector_score,
                       "detector_logits": m.detector.and_then(|(_, d)| d.logits),
                       "decision": decision})
            );
        } else {
            println!(
                "{}: {tokens} tokens, log-likelihood {:.3}, log-rank {:.3}, entropy {:.3}, LRR {:.3}, \
                 Fast-DetectGPT {:.2}, GLTR {:?}{}{}{}",
                m.name,
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

/// Texts of one class, each with its token count.
type Counted<T> = Vec<(usize, T)>;

/// The human and the machine texts worth training on (at least the first
/// length bucket's tokens), each as `item` makes it from (tokens, the
/// text's token ids); refuses classes too small or too unequal.
fn labelled<T>(human: Counted<T>, machine: Counted<T>) -> Result<(Counted<T>, Counted<T>)> {
    let min_tokens = BUCKET_EDGES[0];
    let mut kept = Vec::new();
    for (class, texts) in [("human", human), ("machine", machine)] {
        let all = texts.len();
        let long: Vec<(usize, T)> = texts
            .into_iter()
            .filter(|(n, _)| *n >= min_tokens)
            .collect();
        if long.len() < all {
            eprintln!(
                "{class}: left out {} of {all} texts shorter than {min_tokens} tokens",
                all - long.len()
            );
        }
        ensure!(
            long.len() >= MIN_CLASS_TEXTS,
            "only {} {class} texts of at least {min_tokens} tokens; a detector needs {MIN_CLASS_TEXTS} \
             (nothing was written)",
            long.len()
        );
        kept.push(long);
    }
    let (m, h) = (kept.remove(1), kept.remove(0));
    let share = h.len().min(m.len()) as f64 / (h.len() + m.len()) as f64;
    ensure!(
        share >= MIN_CLASS_SHARE,
        "{} human and {} machine texts: the smaller class is under {:.0}% of the texts; \
         give more of it (nothing was written)",
        h.len(),
        m.len(),
        MIN_CLASS_SHARE * 100.0
    );
    Ok((h, m))
}

fn train_features(
    human: &[String],
    machine: &[String],
    out: &Path,
    folds: usize,
    seed: u64,
    opts: &Opts,
) -> Result<()> {
    ensure!(
        (2..=20).contains(&folds),
        "--folds must be between 2 and 20"
    );
    ensure!(
        opts.observer.is_none(),
        "a feature detector does not use Binoculars' models"
    );
    let featured = |paths: &[String]| -> Result<Vec<(usize, Vec<f64>)>> {
        Ok(measure(paths, opts, None)?
            .into_iter()
            .map(|m| (m.tokens, features(&m.stats, m.tokens).to_vec()))
            .collect())
    };
    let (h, m) = labelled(featured(human)?, featured(machine)?)?;
    let start = std::time::Instant::now();
    let d = FeatureDetector::train(&opts.model, &h, &m, folds, seed);
    d.save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    let v = &d.validation;
    println!(
        "wrote {}: {} human, {} machine texts; {}-fold cross-validated AUROC {:.3}, TPR {:.3} at 1% FPR, \
         {:.3} at 0.1% FPR ({:.1} s to fit)",
        out.join(DETECTOR_FILE).display(),
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

fn train_classifier_cmd(
    human: &[String],
    machine: &[String],
    out: &Path,
    seed: u64,
    f: &FineTuning,
    opts: &Opts,
) -> Result<()> {
    ensure!(
        opts.observer.is_none(),
        "a fine-tuned classifier does not use Binoculars' models"
    );
    let sized = |paths: &[String]| -> Result<Vec<(usize, Vec<u32>)>> {
        Ok(tokenized(paths, opts)?
            .into_iter()
            .map(|(_, t)| (t.len(), t))
            .collect())
    };
    let (h, m) = labelled(sized(human)?, sized(machine)?)?;
    let model = load_model(&opts.model)?;
    let config = *model.config();
    let options = ClassifyOptions {
        batch: f.batch,
        epochs: f.epochs,
        lr: f.lr,
        weight_decay: f.weight_decay,
        warmup: f.warmup,
        eval_every: f.eval_every,
        patience: f.patience,
        val_share: f.val_share,
        max_tokens: f.max_tokens.unwrap_or(config.n_ctx.min(512)),
        seed,
    };
    options.validate(config.n_ctx).map_err(anyhow::Error::msg)?;
    let params = gpt2_train::params_from_weights(model.weights());
    drop(model);
    eprintln!(
        "fine-tuning {} ({:.1}M parameters) on {} human and {} machine texts, {:.0}% of each held out",
        opts.model,
        config.num_parameters() as f64 / 1e6,
        h.len(),
        m.len(),
        options.val_share * 100.0
    );
    let terminal = std::io::stderr().is_terminal();
    let mut report = |p: Progress| match p {
        Progress::Step {
            step,
            total,
            loss,
            tokens_per_s,
        } => {
            let line = format!("step {step}/{total} loss {loss:.4} {tokens_per_s:.0} tok/s");
            if terminal {
                eprint!("\r{line}   ");
                let _ = std::io::stderr().flush();
            } else if step.is_multiple_of(10) {
                eprintln!("{line}");
            }
        }
        Progress::Validation { m, best } => eprintln!(
            "{}step {} (epoch {}): train loss {:.4}, validation loss {:.4}, AUROC {:.4}{}",
            if terminal { "\n" } else { "" },
            m.step,
            m.epoch + 1,
            m.train_loss,
            m.val_loss,
            m.val_auroc,
            if best { " (best)" } else { "" }
        ),
    };
    let strip = |v: Vec<(usize, Vec<u32>)>| v.into_iter().map(|(_, t)| t).collect();
    let trained = train_classifier(
        config,
        params,
        &opts.model,
        strip(h),
        strip(m),
        &options,
        &mut report,
    )
    .map_err(anyhow::Error::msg)?;
    write_classifier(out, &trained).with_context(|| format!("writing {}", out.display()))?;
    let card = &trained.classifier.card;
    let v = &card.validation;
    println!(
        "wrote {}: kept step {} of {}; held-out {} human, {} machine texts: AUROC {:.3}, TPR {:.3} at 1% FPR, \
         {:.3} at 0.1% FPR ({:.0} s to train)",
        out.display(),
        card.training["kept_step"],
        card.training["steps_run"],
        v.human_texts,
        v.machine_texts,
        v.auroc,
        v.tpr_at_1pct_fpr,
        v.tpr_at_01pct_fpr,
        card.training["train_seconds"].as_f64().unwrap_or(f64::NAN)
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
    scoring: Scoring,
    detector: Option<&Detector>,
    out: &str,
    opts: &Opts,
) -> Result<()> {
    let scored: Vec<(usize, f64)> = measure(human, opts, detector)?
        .iter()
        .filter_map(|m| scoring.score(m))
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
        let m = measure(machine, opts, detector)?;
        for fpr in [0.01, 0.001] {
            let flagged = m
                .iter()
                .filter(|m| {
                    scoring
                        .score(m)
                        .is_some_and(|(n, v)| t.decide(n, v, fpr) == "machine")
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
    detector: Option<&Detector>,
    opts: &Opts,
) -> Result<()> {
    let (h, m) = (
        measure(human, opts, detector)?,
        measure(machine, opts, detector)?,
    );
    let mut rows = Vec::new();
    let mut scorings: Vec<Scoring> = Statistic::ALL.map(Scoring::Statistic).into();
    scorings.extend(detector.map(|_| Scoring::Detector));
    for scoring in &scorings {
        let values = |texts: &[Measured]| -> Vec<f64> {
            texts
                .iter()
                .filter_map(|t| scoring.score(t))
                .map(|(_, s)| s)
                .collect()
        };
        let (hs, ms) = (values(&h), values(&m));
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
        if let (Scoring::Detector, Some(d)) = (scoring, detector) {
            row["kind"] = json!(d.kind());
        }
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
        let name = match r["kind"].as_str() {
            Some(kind) => format!("detector ({kind})"),
            None => r["statistic"].as_str().unwrap_or_default().to_string(),
        };
        println!(
            "| {name} | {} | {} | {} |",
            cell("auroc"),
            cell("tpr_at_1pct_fpr"),
            cell("tpr_at_0.1pct_fpr")
        );
    }
    Ok(())
}
