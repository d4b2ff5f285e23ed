//! Model shape: the four released GPT-2 sizes as presets, and the Hugging
//! Face `config.json` reader.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The token that separates documents; also the context the first token of a
/// scored text is conditioned on.
pub const END_OF_TEXT: u32 = 50256;
/// GPT-2's vocabulary size (50,000 merges + 256 bytes + `<|endoftext|>`).
pub const GPT2_VOCAB_SIZE: usize = 50257;

/// The shape of a GPT-2 model. Names follow the Hugging Face config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    /// Context length (`n_positions` in config.json).
    pub n_ctx: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
}

/// GPT-2's LayerNorm epsilon; config.json may not say otherwise.
pub const LAYER_NORM_EPSILON: f32 = 1e-5;

impl Config {
    /// GPT-2 small, 124M parameters.
    pub const GPT2: Config = Config::released(12, 12, 768);
    /// GPT-2 medium, 355M parameters.
    pub const GPT2_MEDIUM: Config = Config::released(24, 16, 1024);
    /// GPT-2 large, 774M parameters.
    pub const GPT2_LARGE: Config = Config::released(36, 20, 1280);
    /// GPT-2 XL, 1558M parameters.
    pub const GPT2_XL: Config = Config::released(48, 25, 1600);

    const fn released(n_layer: usize, n_head: usize, n_embd: usize) -> Config {
        Config {
            vocab_size: GPT2_VOCAB_SIZE,
            n_ctx: 1024,
            n_embd,
            n_layer,
            n_head,
        }
    }

    /// A preset by its common names: `124M`/`gpt2`, `355M`/`gpt2-medium`,
    /// `774M`/`gpt2-large`, `1558M`/`gpt2-xl`.
    pub fn preset(name: &str) -> Option<Config> {
        match name.to_ascii_lowercase().as_str() {
            "124m" | "117m" | "gpt2" | "small" => Some(Self::GPT2),
            "355m" | "345m" | "gpt2-medium" | "medium" => Some(Self::GPT2_MEDIUM),
            "774m" | "762m" | "gpt2-large" | "large" => Some(Self::GPT2_LARGE),
            "1558m" | "1542m" | "1.5b" | "gpt2-xl" | "xl" => Some(Self::GPT2_XL),
            _ => None,
        }
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Number of parameters, counting the tied LM head once.
    pub fn num_parameters(&self) -> usize {
        let c = self.n_embd;
        let per_layer = 2 * c
            + (3 * c * c + 3 * c)
            + (c * c + c)
            + 2 * c
            + (4 * c * c + 4 * c)
            + (4 * c * c + c);
        self.vocab_size * c + self.n_ctx * c + self.n_layer * per_layer + 2 * c
    }

    /// Checks that the shape is usable; `source` names where it came from.
    pub fn validate(&self, source: &Path) -> Result<()> {
        let bad = |reason: String| ModelError::Config {
            path: source.to_path_buf(),
            reason,
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_ctx),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ] {
            if v == 0 {
                return Err(bad(format!("`{name}` must be positive")));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(bad(format!(
                "`n_embd` ({}) is not divisible by `n_head` ({})",
                self.n_embd, self.n_head
            )));
        }
        if self.vocab_size > u32::MAX as usize
            || self.n_ctx > 1 << 20
            || self.n_embd > 1 << 16
            || self.n_layer > 1 << 12
        {
            return Err(bad("shape is implausibly large".into()));
        }
        Ok(())
    }

    /// Reads a Hugging Face GPT-2 `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    pub fn from_json_str(text: &str, path: &Path) -> Result<Config> {
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(t) = &raw.model_type {
            if t != "gpt2" {
                return Err(bad(format!("`model_type` is \"{t}\", expected \"gpt2\"")));
            }
        }
        if let Some(act) = &raw.activation_function {
            if !matches!(act.as_str(), "gelu_new" | "gelu_pytorch_tanh") {
                return Err(bad(format!(
                    "`activation_function` \"{act}\" is not supported (GPT-2 uses \"gelu_new\")"
                )));
            }
        }
        if let Some(eps) = raw.layer_norm_epsilon {
            if (eps - LAYER_NORM_EPSILON as f64).abs() > 1e-12 {
                return Err(bad(format!(
                    "`layer_norm_epsilon` {eps} is not supported (GPT-2 uses 1e-5)"
                )));
            }
        }
        for (flag, name) in [
            (
                raw.scale_attn_by_inverse_layer_idx,
                "scale_attn_by_inverse_layer_idx",
            ),
            (raw.reorder_and_upcast_attn, "reorder_and_upcast_attn"),
        ] {
            if flag == Some(true) {
                return Err(bad(format!("`{name}: true` is not supported")));
            }
        }
        if let (Some(inner), Some(embd)) = (raw.n_inner, raw.n_embd) {
            if inner != 4 * embd {
                return Err(bad(format!(
                    "`n_inner` {inner} is not supported (GPT-2 uses 4 * n_embd)"
                )));
            }
        }
        if raw.scale_attn_weights == Some(false) {
            return Err(bad("`scale_attn_weights: false` is not supported".into()));
        }
        let n_ctx = match (raw.n_positions, raw.n_ctx) {
            (Some(p), Some(c)) if p != c => {
                return Err(bad(format!(
                    "`n_positions` ({p}) and `n_ctx` ({c}) disagree"
                )))
            }
            (Some(p), _) => p,
            (None, Some(c)) => c,
            (None, None) => return Err(bad("missing field `n_positions`".into())),
        };
        let required =
            |v: Option<usize>, name: &str| v.ok_or_else(|| bad(format!("missing field `{name}`")));
        let config = Config {
            vocab_size: required(raw.vocab_size, "vocab_size")?,
            n_ctx,
            n_embd: required(raw.n_embd, "n_embd")?,
            n_layer: required(raw.n_layer, "n_layer")?,
            n_head: required(raw.n_head, "n_head")?,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// The `config.json` that `transformers` loads as a `GPT2LMHeadModel`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_ctx,
            "n_ctx": self.n_ctx,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": null,
            "activation_function": "gelu_new",
            "layer_norm_epsilon": LAYER_NORM_EPSILON,
            "resid_pdrop": 0.1,
            "embd_pdrop": 0.1,
            "attn_pdrop": 0.1,
            "initializer_range": 0.02,
            "bos_token_id": END_OF_TEXT,
            "eos_token_id": END_OF_TEXT,
            "tie_word_embeddings": true,
        })
    }
}

/// The fields of a Hugging Face GPT-2 config that change the computation.
/// Unknown fields (dropout rates, task settings) are ignored.
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    n_positions: Option<usize>,
    n_ctx: Option<usize>,
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    scale_attn_weights: Option<bool>,
    scale_attn_by_inverse_layer_idx: Option<bool>,
    reorder_and_upcast_attn: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_released_parameter_counts() {
        assert_eq!(Config::GPT2.num_parameters(), 124_439_808);
        assert_eq!(Config::GPT2_MEDIUM.num_parameters(), 354_823_168);
        assert_eq!(Config::GPT2_LARGE.num_parameters(), 774_030_080);
        assert_eq!(Config::GPT2_XL.num_parameters(), 1_557_611_200);
        assert_eq!(Config::preset("gpt2-medium"), Some(Config::GPT2_MEDIUM));
        assert_eq!(Config::preset("nope"), None);
    }

    #[test]
    fn reads_the_official_gpt2_config() {
        let text = r#"{"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"],
            "attn_pdrop": 0.1, "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256,
            "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
            "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
            "resid_pdrop": 0.1, "summary_activation": null, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
            "vocab_size": 50257}"#;
        let c = Config::from_json_str(text, Path::new("config.json")).unwrap();
        assert_eq!(c, Config::GPT2);
        let round = Config::from_json_str(&c.to_hf_json().to_string(), Path::new("x")).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn rejects_configs_it_cannot_run_naming_the_field() {
        let p = Path::new("cfg.json");
        let cases = [
            (
                r#"{"n_positions": 8, "n_embd": 10, "n_layer": 1, "n_head": 3, "vocab_size": 5}"#,
                "not divisible",
            ),
            (
                r#"{"n_positions": 8, "n_embd": 12, "n_layer": 1, "n_head": 3}"#,
                "vocab_size",
            ),
            (
                r#"{"n_positions": 8, "n_embd": 12, "n_layer": 0, "n_head": 3, "vocab_size": 5}"#,
                "n_layer",
            ),
            (
                r#"{"n_positions": 8, "n_embd": 12, "n_layer": 1, "n_head": 3, "vocab_size": 5, "activation_function": "relu"}"#,
                "activation_function",
            ),
            (
                r#"{"n_positions": 8, "n_embd": 12, "n_layer": 1, "n_head": 3, "vocab_size": 5, "model_type": "llama"}"#,
                "model_type",
            ),
            (r#"{"n_positions": "8"}"#, "invalid type"),
            ("not json", "expected"),
        ];
        for (text, needle) in cases {
            let err = Config::from_json_str(text, p).unwrap_err().to_string();
            assert!(err.contains(needle) && err.contains("cfg.json"), "{err}");
        }
    }
}
