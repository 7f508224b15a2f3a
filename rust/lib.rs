//! fwlora: the state of Fisher-Weighted LoRA for M adapter matrices.
//!
//! `core` is plain Rust (no pyo3 types) and is what `cargo test` checks; `bindings`
//! is the thin PyO3 layer compiled into the private Python module `fwlora._core`.

pub mod core;

#[cfg(feature = "python")]
mod bindings;
