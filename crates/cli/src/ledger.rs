//! `gpt2 ledger ...` (being written).
