//! gpt2-serve: `gpt2 serve`, a gated, OpenAI-compatible HTTP server for
//! GPT-2 that watermarks every completion and records it in the provenance
//! ledger before the client sees it.
//!
//! - [`state`]: the state directory (keys, audit log, ledger, watermark key);
//! - [`store`]: API keys (hashes only) and the audit log in SQLite.

pub mod state;
pub mod store;

pub use state::StateDir;
pub use store::{AuditEntry, KeyInfo, NewKey, Scope, Store};
