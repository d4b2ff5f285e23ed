//! Zero-shot detector statistics, all from one forward pass over a text
//! (the first token conditioned on `<|endoftext|>`, long texts in the
//! scorer's rolling windows).
//!
//! Every statistic is oriented by [`Statistic::machine_score`] so that
//! larger means "more machine-like", which is what calibration and ROC
//! evaluation use.

use gpt2_model::kernels::log_softmax_stats;
use gpt2_model::score::{Scorer, Span, TokenScore, Windowing};
use gpt2_model::{Model, ModelError};
use serde::{Deserialize, Serialize};

/// The per-text statistics of `gpt2 detect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statistics {
    /// Mean log-probability of the tokens (Solaiman et al. 2019).
    pub log_likelihood: f64,
    /// Mean natural log of the tokens' ranks, rank 1 = argmax (GLTR).
    pub log_rank: f64,
    /// Mean entropy of the predicted distributions, nats.
    pub entropy: f64,
    /// DetectLLM's log-likelihood log-rank ratio: -sum log p / sum log rank.
    pub lrr: f64,
    /// Fast-DetectGPT's analytic criterion with one model as sampler and
    /// scorer (Bao et al. 2024): (sum log p(x_t) - sum mu_t) / sqrt(sum
    /// sigma_t^2), mu and sigma^2 the mean and variance of log p under the
    /// model's own distribution at t.
    pub fast_detectgpt: f64,
    /// GLTR's rank histogram: tokens of rank <= 10, <= 100, <= 1000, rest.
    pub gltr: [u32; 4],
    /// Binoculars (Hans et al. 2024), with an observer and a performer.
    pub binoculars: Option<f64>,
}

/// One statistic, by its name in the JSON output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    LogLikelihood,
    LogRank,
    Entropy,
    Lrr,
    FastDetectgpt,
    Gltr,
    Binoculars,
}

impl Statistic {
    pub const ALL: [Statistic; 7] = [
        Statistic::LogLikelihood,
        Statistic::LogRank,
        Statistic::Entropy,
        Statistic::Lrr,
        Statistic::FastDetectgpt,
        Statistic::Gltr,
        Statistic::Binoculars,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Statistic::LogLikelihood => "log_likelihood",
            Statistic::LogRank => "log_rank",
            Statistic::Entropy => "entropy",
            Statistic::Lrr => "lrr",
            Statistic::FastDetectgpt => "fast_detectgpt",
            Statistic::Gltr => "gltr",
            Statistic::Binoculars => "binoculars",
        }
    }

    pub fn from_name(name: &str) -> Option<Statistic> {
        Statistic::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The statistic with larger meaning "more machine-like": machine text
    /// is likelier, lower-ranked, lower-entropy, and (Binoculars) less
    /// surprising relative to what a model expects. GLTR is reduced to its
    /// fraction of top-10 tokens. `None` where the text lacks it.
    pub fn machine_score(self, s: &Statistics) -> Option<f64> {
        let v = match self {
            Statistic::LogLikelihood => s.log_likelihood,
            Statistic::LogRank => -s.log_rank,
            Statistic::Entropy => -s.entropy,
            Statistic::Lrr => s.lrr,
            Statistic::FastDetectgpt => s.fast_detectgpt,
            Statistic::Gltr => {
                let total: u32 = s.gltr.iter().sum();
                f64::from(s.gltr[0]) / f64::from(total.max(1))
            }
            Statistic::Binoculars => -s.binoculars?,
        };
        v.is_finite().then_some(v)
    }
}

/// The statistics of one text's token scores (from [`Scorer`]).
/// GLTR's colour of a token by its rank: top 10, top 100, top 1,000, rest.
pub fn gltr_bucket(rank: u32) -> usize {
    match rank {
        0..=10 => 0,
        11..=100 => 1,
        101..=1000 => 2,
        _ => 3,
    }
}

pub fn statistics(scores: &[TokenScore]) -> Statistics {
    let n = scores.len().max(1) as f64;
    let sum_lp: f64 = scores.iter().map(|s| s.logprob as f64).sum();
    let sum_log_rank: f64 = scores.iter().map(|s| (s.rank as f64).ln()).sum();
    let sum_mu: f64 = scores.iter().map(|s| -(s.entropy as f64)).sum();
    let sum_var: f64 = scores.iter().map(|s| s.logprob_variance as f64).sum();
    let mut gltr = [0u32; 4];
    for s in scores {
        gltr[gltr_bucket(s.rank)] += 1;
    }
    Statistics {
        log_likelihood: sum_lp / n,
        log_rank: sum_log_rank / n,
        entropy: -sum_mu / n,
        // Every token the argmax gives log-rank 0 and an unbounded ratio.
        lrr: if sum_log_rank > 0.0 {
            -sum_lp / sum_log_rank
        } else {
            f64::INFINITY
        },
        fast_detectgpt: (sum_lp - sum_mu) / sum_var.max(f64::MIN_POSITIVE).sqrt(),
        gltr,
        binoculars: None,
    }
}

/// Binoculars' score as its reference code computes it: the performer's
/// log-perplexity of the text over the cross-entropy of the observer's
/// predicted distribution against the performer's log-probabilities,
/// averaged over positions. Both models must share GPT-2's vocabulary.
pub fn binoculars(observer: &Model, performer: &Model, tokens: &[u32]) -> Result<f64, ModelError> {
    let (vo, vp) = (observer.config().vocab_size, performer.config().vocab_size);
    if vo != vp {
        return Err(ModelError::InvalidRequest(format!(
            "Binoculars needs two models with the same tokenizer; the observer has a vocabulary \
             of {vo} tokens and the performer {vp}"
        )));
    }
    // Windows that fit the shorter of the two contexts.
    let shorter = if performer.config().n_ctx < observer.config().n_ctx {
        performer
    } else {
        observer
    };
    let spans: Vec<Span> = Scorer::new(shorter).text_spans(tokens, Windowing::Rolling)?;
    let (mut obs, mut perf) = (Scorer::new(observer), Scorer::new(performer));
    let (mut log_ppl, mut x_ent, mut n) = (0f64, 0f64, 0usize);
    let mut work = vec![0f32; vo];
    for span in &spans {
        let lo = obs.span_logits(span)?;
        let lp = perf.span_logits(span)?;
        for (k, &target) in span.targets.iter().enumerate() {
            let (perf_row, obs_row) = (&lp[k * vo..(k + 1) * vo], &lo[k * vo..(k + 1) * vo]);
            let (pm, pl) = log_softmax_stats(perf_row, &mut work);
            let perf_logp = |v: usize| (perf_row[v] - pm - pl) as f64;
            log_ppl -= perf_logp(target as usize);
            // work becomes exp(observer logit - max): probabilities times e^lse.
            let (_, ol) = log_softmax_stats(obs_row, &mut work);
            let weighted: f64 = work
                .iter()
                .enumerate()
                .map(|(v, &e)| e as f64 * perf_logp(v))
                .sum();
            x_ent -= weighted / (ol as f64).exp();
            n += 1;
        }
    }
    if n == 0 {
        return Err(ModelError::InvalidRequest("the text has no tokens".into()));
    }
    Ok(log_ppl / x_ent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(logprob: f32, rank: u32, entropy: f32, var: f32) -> TokenScore {
        TokenScore {
            id: 0,
            logprob,
            rank,
            entropy,
            logprob_variance: var,
            is_argmax: rank == 1,
            top: Vec::new(),
        }
    }

    #[test]
    fn statistics_follow_their_definitions() {
        let s = statistics(&[
            score(-1.0, 1, 2.0, 1.0),
            score(-3.0, 50, 1.0, 4.0),
            score(-9.0, 5000, 3.0, 2.0),
        ]);
        assert!((s.log_likelihood - (-13.0 / 3.0)).abs() < 1e-12);
        let log_ranks = (50f64).ln() + (5000f64).ln();
        assert!((s.log_rank - log_ranks / 3.0).abs() < 1e-12);
        assert!((s.entropy - 2.0).abs() < 1e-12);
        assert!((s.lrr - 13.0 / log_ranks).abs() < 1e-12);
        // sum log p = -13, sum mu = -(2 + 1 + 3) = -6, sum var = 7
        assert!((s.fast_detectgpt - (-13.0 + 6.0) / 7f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.gltr, [1, 1, 0, 1]);
        assert_eq!(
            Statistic::Lrr.machine_score(&statistics(&[score(-0.1, 1, 0.5, 0.1)])),
            None
        );
    }
}
