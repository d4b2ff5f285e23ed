//! gpt2-train: training GPT-2, llm.c style. Flat parameter and gradient
//! buffers (`params`), the model's forward and backward passes (`model`,
//! over the forward/backward kernel pairs of `gpt2_model::kernels`), and
//! AdamW (`adamw`); fine-tuning as a sequence classifier (`classify`).

pub mod adamw;
pub mod checkpoint;
pub mod classify;
pub mod data;
pub mod init;
pub mod model;
pub mod params;
pub mod plot;
pub mod prepare;
pub mod trainer;

pub use adamw::{clip_grad_norm, AdamW};
pub use model::{params_from_weights, TrainModel};
pub use trainer::{Observer, StepReport, TrainOptions, Trainer};
