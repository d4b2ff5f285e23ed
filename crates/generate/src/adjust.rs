//! OpenAI's additive logit adjustments, applied to a sequence's logits
//! before its sampler sees them: `logit_bias` (a constant per token id)
//! and the presence and frequency penalties (per token already generated
//! in this sequence: `c * frequency + (c > 0) * presence` subtracted, `c`
//! its count, as OpenAI's API reference defines them). All are additive,
//! so their order against the watermark's additive bias does not matter.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitAdjust {
    /// (token id, bias), ids below the vocabulary size.
    pub bias: Arc<[(u32, f32)]>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl LogitAdjust {
    /// Nothing to adjust: the sampler reads the model's logits directly.
    pub fn is_none(&self) -> bool {
        self.bias.is_empty() && self.presence_penalty == 0.0 && self.frequency_penalty == 0.0
    }

    /// Rejects values outside OpenAI's ranges: the option at fault (its
    /// API name) and what is wrong.
    pub fn validate(&self, vocab: usize) -> Result<(), (&'static str, String)> {
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err((name, format!("{name} must be -2 to 2, got {v}")));
            }
        }
        for &(id, b) in self.bias.iter() {
            if id as usize >= vocab {
                return Err((
                    "logit_bias",
                    format!("logit_bias: token id {id} is outside the vocabulary of {vocab}"),
                ));
            }
            if !(-100.0..=100.0).contains(&b) {
                return Err((
                    "logit_bias",
                    format!("logit_bias: the bias of token {id} must be -100 to 100, got {b}"),
                ));
            }
        }
        Ok(())
    }

    /// Adjusts `logits` for a sequence that has generated each token of
    /// `counts` that many times.
    pub fn apply(&self, logits: &mut [f32], counts: &HashMap<u32, u32>) {
        for &(id, b) in self.bias.iter() {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += b;
            }
        }
        if self.presence_penalty == 0.0 && self.frequency_penalty == 0.0 {
            return;
        }
        for (&id, &c) in counts {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= c as f32 * self.frequency_penalty + self.presence_penalty;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bias_then_penalties_as_openai_defines_them() {
        let a = LogitAdjust {
            bias: Arc::from(vec![(1, 5.0), (3, -100.0)]),
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
        };
        let mut l = vec![0.0f32; 4];
        let counts = HashMap::from([(1u32, 2u32), (2, 1)]);
        a.apply(&mut l, &counts);
        assert_eq!(l, vec![0.0, 5.0 - 0.5 - 0.5, -0.5 - 0.25, -100.0]);
        assert!(a.validate(4).is_ok());
        assert!(a.validate(3).unwrap_err().1.contains("token id 3"));
        let far = LogitAdjust {
            presence_penalty: 2.5,
            ..LogitAdjust::default()
        };
        assert_eq!(far.validate(4).unwrap_err().0, "presence_penalty");
    }
}
