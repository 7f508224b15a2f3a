//! The numeric core of FW-LoRA, in plain Rust (no pyo3 types).
//!
//! * `config` — hyper-parameters (EMA decay, warm-up length, λ, normalisation, schedule)
//!   and their validation.
//! * `normalize` — turning Fisher scores into importances.
//! * `state` — the Fisher EMA, step counter, phase, frozen importances, penalty factors.
//! * `codec` — a versioned, bounds-checked byte format for the whole state.

pub mod codec;
pub mod config;
pub mod error;
pub mod normalize;
pub mod state;

pub use config::{Config, Normalization, Schedule};
pub use error::CoreError;
pub use state::{FisherState, Phase, StateParts};
