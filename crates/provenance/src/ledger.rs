//! The provenance ledger (being written).
