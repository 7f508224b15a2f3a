//! The numeric core of FW-LoRA, in plain Rust (no pyo3 types).
//!
//! * `config` — hyper-parameters (EMA decay, warm-up length, λ, normalisation, schedule)
//!   and their validation.
//! * `normalize` — turning Fisher scores into importances.
//! * `state` — the Fisher EMA, step counter, phase, frozen importances, penalty factors.
//! * `codec` — the state's one field schema, and the versioned, bounds-checked byte format
//!   derived from it (the binding derives its dict form from the same schema).

pub mod codec;
pub mod config;
pub mod error;
pub mod normalize;
pub mod state;

pub use config::{Config, Normalization, Schedule};
pub use error::CoreError;
pub use state::{FisherCore, Phase, StateParts};
