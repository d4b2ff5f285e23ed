//! gpt2-model: GPT-2's configuration, checkpoint loading, tokenizer,
//! kernels and the inference forward pass with a KV cache.
//!
//! ```no_run
//! use gpt2_model::score::{Scorer, Windowing};
//! use gpt2_model::{Model, Tokenizer};
//! # fn main() -> gpt2_model::Result<()> {
//! let model = Model::load_dir(std::path::Path::new("my-checkpoint"))?;
//! let ids = Tokenizer::gpt2().encode("Hello world")?;
//! let scores = Scorer::new(&model).score(&ids, Windowing::Rolling, 0)?;
//! println!("first token logprob {}", scores[0].logprob);
//! # Ok(())
//! # }
//! ```

pub mod atomic;
pub mod cache;
pub mod config;
pub mod convert;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod layout;
pub mod model;
pub mod packed;
pub mod score;
pub mod storage;
pub mod tokenizer;
pub mod weights;

pub use cache::KvCache;
pub use config::{Config, END_OF_TEXT};
pub use error::{ModelError, Result};
pub use model::{Batch, Model, Output, Scratch};
pub use tokenizer::Tokenizer;
