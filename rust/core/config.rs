//! Hyper-parameters of FW-LoRA and their validation.

use super::error::CoreError;

/// How frozen Fisher scores F become importances I.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    /// The paper: I_m = F_m / Σ_k F_k; uniform 1/M when Σ F = 0. Σ I = 1, so with many
    /// matrices every 1 − I_m is close to 1 and the penalty barely differs between them.
    Sum,
    /// I_m = F_m / max_k F_k; all ones when max F = 0. 1 − I spans [0, 1]: the most
    /// important matrix is unpenalised and the least important gets the full λ.
    Max,
    /// The control: I_m = 1/M whatever F is. The same penalty path and the same total
    /// weight Σ(1 − I_m) = M − 1 as `Sum`, without the Fisher information ("l2-lora").
    Uniform,
}

impl Normalization {
    pub const ALL: [Normalization; 3] = [
        Normalization::Sum,
        Normalization::Max,
        Normalization::Uniform,
    ];

    pub fn parse(name: &str) -> Result<Self, CoreError> {
        Self::ALL
            .into_iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| {
                CoreError::arg(
                    "normalization",
                    format!("expected one of \"sum\", \"max\", \"uniform\", got {name:?}"),
                )
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            Normalization::Sum => "sum",
            Normalization::Max => "max",
            Normalization::Uniform => "uniform",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Normalization::Sum => 0,
            Normalization::Max => 1,
            Normalization::Uniform => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.code() == code)
    }
}

/// How the penalty factors λ·(1 − I_m) are scaled over the steps after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// The paper: the full factor from step K + 1 on.
    Constant,
    /// Linear ramp-in: at optimizer step t > K the factor is scaled by min(1, (t − K) / steps).
    Ramp { steps: u64 },
}

impl Schedule {
    pub fn parse(name: &str, ramp_steps: u64) -> Result<Self, CoreError> {
        match name {
            "constant" if ramp_steps == 0 => Ok(Schedule::Constant),
            "constant" => Err(CoreError::arg(
                "ramp_steps",
                format!("only used with schedule=\"ramp\"; expected 0, got {ramp_steps}"),
            )),
            "ramp" if ramp_steps >= 1 => Ok(Schedule::Ramp { steps: ramp_steps }),
            "ramp" => Err(CoreError::arg(
                "ramp_steps",
                format!("expected an integer >= 1 with schedule=\"ramp\", got {ramp_steps}"),
            )),
            other => Err(CoreError::arg(
                "schedule",
                format!("expected one of \"constant\", \"ramp\", got {other:?}"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Ramp { .. } => "ramp",
        }
    }

    pub fn ramp_steps(self) -> u64 {
        match self {
            Schedule::Constant => 0,
            Schedule::Ramp { steps } => steps,
        }
    }

    /// Multiplier of the base factors at optimizer step `step` (1-based) for warm-up `warmup`.
    pub fn scale(self, step: u64, warmup: u64) -> f64 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Ramp { steps } => {
                let after = step.saturating_sub(warmup) as f64;
                (after / steps as f64).min(1.0)
            }
        }
    }
}

/// Every hyper-parameter of the core. Built with [`Config::new`], which validates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// EMA decay α in (0, 1).
    pub alpha: f64,
    /// Warm-up length K >= 1 in optimizer steps.
    pub warmup: u64,
    /// Global shrinkage λ >= 0. None: `lam="auto"`, not yet calibrated (see `target_ratio`).
    pub lam: Option<f64>,
    pub normalization: Normalization,
    pub schedule: Schedule,
    /// 0: importances frozen after warm-up (the paper). N >= 1: keep observing after warm-up
    /// and renormalise every N steps (the paper's future work iv).
    pub refresh_every: u64,
    /// `lam="auto"`: λ is calibrated once, at the first penalised step, so that ‖∇P‖ equals
    /// `target_ratio`·‖∇L_task‖ over the LoRA factors ([`FisherCore::calibrate`]), then
    /// frozen. None: λ is set by hand. In (0, 10].
    ///
    /// [`FisherCore::calibrate`]: super::state::FisherCore::calibrate
    pub target_ratio: Option<f64>,
}

/// The largest `target_ratio` accepted: a penalty gradient ten times the task's already
/// collapses training (docs/method.md).
pub const MAX_TARGET_RATIO: f64 = 10.0;

impl Default for Config {
    fn default() -> Self {
        Config {
            alpha: 0.98,
            warmup: 500,
            lam: Some(1e-4),
            normalization: Normalization::Sum,
            schedule: Schedule::Constant,
            refresh_every: 0,
            target_ratio: None,
        }
    }
}

impl Config {
    pub fn new(
        alpha: f64,
        warmup: u64,
        lam: Option<f64>,
        normalization: Normalization,
        schedule: Schedule,
        refresh_every: u64,
        target_ratio: Option<f64>,
    ) -> Result<Self, CoreError> {
        let config = Config {
            alpha,
            warmup,
            lam,
            normalization,
            schedule,
            refresh_every,
            target_ratio,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), CoreError> {
        // `!(x > 0.0 && x < 1.0)` also rejects NaN.
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(CoreError::arg(
                "alpha",
                format!(
                    "expected a float strictly between 0 and 1, got {}",
                    self.alpha
                ),
            ));
        }
        if self.warmup < 1 {
            return Err(CoreError::arg(
                "warmup",
                format!("expected an integer >= 1, got {}", self.warmup),
            ));
        }
        self.validate_strength()?;
        if let Schedule::Ramp { steps: 0 } = self.schedule {
            return Err(CoreError::arg(
                "ramp_steps",
                "expected an integer >= 1, got 0",
            ));
        }
        Ok(())
    }

    /// λ and `target_ratio`: a hand-set λ >= 0, or a target in (0, 10] with λ None (not yet
    /// calibrated) or > 0 (calibrated).
    fn validate_strength(&self) -> Result<(), CoreError> {
        if let Some(lam) = self.lam {
            if !(lam >= 0.0 && lam.is_finite()) {
                return Err(CoreError::arg(
                    "lam",
                    format!("expected a finite float >= 0, got {lam}"),
                ));
            }
        }
        match (self.target_ratio, self.lam) {
            (None, None) => Err(CoreError::arg(
                "lam",
                "expected a float >= 0, or target_ratio to calibrate it (lam=\"auto\"), got None",
            )),
            (Some(t), _) if !(t > 0.0 && t <= MAX_TARGET_RATIO) => Err(CoreError::arg(
                "target_ratio",
                format!("expected a float in (0, {MAX_TARGET_RATIO}], got {t}"),
            )),
            (Some(_), Some(lam)) if lam <= 0.0 => Err(CoreError::arg(
                "lam",
                format!("a calibrated λ (target_ratio set) is > 0, got {lam}"),
            )),
            _ => Ok(()),
        }
    }
}
