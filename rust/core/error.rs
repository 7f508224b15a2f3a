use std::fmt;

/// Every failure of the core. Each names the argument at fault and what was expected,
/// so the binding layer can pass the message through unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// A caller-supplied argument is out of its domain.
    InvalidArgument { arg: &'static str, msg: String },
    /// Serialised state that cannot be decoded (corrupt, truncated, wrong version).
    Decode(String),
}

impl CoreError {
    pub fn arg(arg: &'static str, msg: impl Into<String>) -> Self {
        CoreError::InvalidArgument {
            arg,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidArgument { arg, msg } => write!(f, "invalid `{arg}`: {msg}"),
            CoreError::Decode(msg) => write!(f, "cannot decode FW-LoRA state: {msg}"),
        }
    }
}

impl std::error::Error for CoreError {}
