//! The FW-LoRA state for M adapter matrices: Fisher EMA, phase, importances, factors.

use super::config::Config;
use super::error::CoreError;
use super::normalize::importances;

/// Where training is with respect to the warm-up. The core is the only judge of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Steps 1..=K: observing, no penalty.
    Warmup,
    /// After step K with `refresh_every = 0` (the paper): importances fixed, no observation.
    Frozen,
    /// After step K with `refresh_every = N`: still observing, importances recomputed every
    /// N steps.
    Refreshing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Warmup => "warmup",
            Phase::Frozen => "frozen",
            Phase::Refreshing => "refreshing",
        }
    }

    /// Whether every optimizer step of this phase brings an observation.
    pub fn observing(self) -> bool {
        !matches!(self, Phase::Frozen)
    }
}

/// Every field of a state, for (de)serialisation. [`FisherCore::from_parts`] validates it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateParts {
    pub config: Config,
    pub fisher: Vec<f64>,
    pub step: u64,
    pub skipped: u64,
    pub importance: Option<Vec<f64>>,
}

/// Fisher EMA state of M matrices, and the optimizer's step counter.
///
/// Every optimizer step reaches the core once: as an observation while the phase is
/// observing (warm-up, refreshing), through [`advance`](Self::advance) once frozen. So
/// `step` is the number of optimizer steps taken. Each observation advances the step and,
/// when every value is finite, F ← α·F + (1 − α)·g. An observation holding NaN or ±inf is *skipped and
/// counted* (`skipped`): the step still advances, F is untouched, so one overflowing batch
/// cannot poison the scores. Negative values are errors (squared norms cannot be negative).
/// Right after step K the importances are computed and frozen; with `refresh_every = N`
/// observation goes on and they are recomputed at steps K + N, K + 2N, ...
#[derive(Debug, Clone, PartialEq)]
pub struct FisherCore {
    config: Config,
    fisher: Vec<f64>,
    step: u64,
    skipped: u64,
    importance: Option<Vec<f64>>,
}

impl FisherCore {
    pub fn new(num_matrices: usize, config: Config) -> Result<Self, CoreError> {
        if num_matrices == 0 {
            return Err(CoreError::arg(
                "num_matrices",
                "expected at least one adapter matrix, got 0",
            ));
        }
        config.validate()?;
        Ok(FisherCore {
            config,
            fisher: vec![0.0; num_matrices],
            step: 0,
            skipped: 0,
            importance: None,
        })
    }

    /// Rebuilds a state from its parts, checking that they are consistent.
    pub fn from_parts(parts: StateParts) -> Result<Self, CoreError> {
        let StateParts {
            config,
            fisher,
            step,
            skipped,
            importance,
        } = parts;
        config.validate()?;
        if fisher.is_empty() {
            return Err(CoreError::arg(
                "fisher",
                "expected at least one value, got 0",
            ));
        }
        if let Some(bad) = fisher.iter().find(|f| !(f.is_finite() && **f >= 0.0)) {
            return Err(CoreError::arg(
                "fisher",
                format!("expected finite values >= 0, found {bad}"),
            ));
        }
        if skipped > step {
            return Err(CoreError::arg(
                "skipped",
                format!("expected at most step={step} skipped observations, got {skipped}"),
            ));
        }
        let frozen = step >= config.warmup;
        match (&importance, frozen) {
            (Some(imp), true) => {
                if imp.len() != fisher.len() {
                    return Err(CoreError::arg(
                        "importance",
                        format!("expected {} values, got {}", fisher.len(), imp.len()),
                    ));
                }
                if let Some(bad) = imp.iter().find(|i| !(**i >= 0.0 && **i <= 1.0)) {
                    return Err(CoreError::arg(
                        "importance",
                        format!("expected values in [0, 1], found {bad}"),
                    ));
                }
            }
            (None, false) => {}
            (Some(_), false) => {
                return Err(CoreError::arg(
                    "importance",
                    format!(
                        "expected None during warm-up (step {step} < warmup {})",
                        config.warmup
                    ),
                ))
            }
            (None, true) => {
                return Err(CoreError::arg(
                    "importance",
                    format!(
                        "expected frozen importances after warm-up (step {step} >= warmup {})",
                        config.warmup
                    ),
                ))
            }
        }
        Ok(FisherCore {
            config,
            fisher,
            step,
            skipped,
            importance,
        })
    }

    pub fn to_parts(&self) -> StateParts {
        StateParts {
            config: self.config,
            fisher: self.fisher.clone(),
            step: self.step,
            skipped: self.skipped,
            importance: self.importance.clone(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn num_matrices(&self) -> usize {
        self.fisher.len()
    }
    pub fn fisher(&self) -> &[f64] {
        &self.fisher
    }
    /// Optimizer steps observed so far.
    pub fn step(&self) -> u64 {
        self.step
    }
    /// Observations skipped because they held a non-finite value.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
    pub fn importance(&self) -> Option<&[f64]> {
        self.importance.as_deref()
    }
    pub fn phase(&self) -> Phase {
        match (&self.importance, self.config.refresh_every) {
            (None, _) => Phase::Warmup,
            (Some(_), 0) => Phase::Frozen,
            (Some(_), _) => Phase::Refreshing,
        }
    }

    /// Observations until the core next (re)computes the importances: K − step in warm-up,
    /// the steps to the next refresh when refreshing, None once frozen for good.
    pub fn steps_until_update(&self) -> Option<u64> {
        let k = self.config.warmup;
        let n = self.config.refresh_every;
        match self.phase() {
            Phase::Warmup => Some(k - self.step),
            Phase::Refreshing => Some(n - (self.step - k) % n),
            Phase::Frozen => None,
        }
    }

    /// Counts `steps` optimizer steps that bring no observation: only once frozen for good
    /// (observing phases need every step's statistics). Returns the new step.
    pub fn advance(&mut self, steps: u64) -> Result<u64, CoreError> {
        if self.phase().observing() {
            return Err(CoreError::arg(
                "steps",
                format!(
                    "the phase is {:?} (step {}): every step needs an observation, not advance()",
                    self.phase().name(),
                    self.step
                ),
            ));
        }
        self.step = self.step.checked_add(steps).ok_or_else(|| {
            CoreError::arg("steps", format!("step {} + {steps} overflows", self.step))
        })?;
        Ok(self.step)
    }

    /// One optimizer step's squared gradient norms. Returns false when skipped (non-finite).
    pub fn observe(&mut self, g: &[f64]) -> Result<bool, CoreError> {
        self.observe_batch(g, 1).map(|skipped| skipped == 0)
    }

    /// `steps` observations laid out row-major in `g` (steps × M), applied in order; equal to
    /// that many calls of [`observe`](Self::observe). Validated whole before anything
    /// changes, so a rejected call leaves the state as it was. Returns the number skipped.
    pub fn observe_batch(&mut self, g: &[f64], steps: usize) -> Result<u64, CoreError> {
        let m = self.fisher.len();
        if g.len() != steps * m {
            return Err(CoreError::arg(
                "g",
                format!(
                    "expected {steps} x {m} = {} values (steps x num_matrices), got {}",
                    steps * m,
                    g.len()
                ),
            ));
        }
        // −inf, like +inf and NaN, is a non-finite statistic: skipped below, not an error.
        if let Some(bad) = g.iter().find(|v| **v < 0.0 && v.is_finite()) {
            return Err(CoreError::arg(
                "g",
                format!("expected squared norms >= 0, found {bad}"),
            ));
        }
        if self.phase() == Phase::Frozen {
            return Err(CoreError::arg(
                "g",
                format!(
                    "{steps} observation(s) after warm-up (step {} of warmup {}); importances \
                     are frozen unless refresh_every > 0",
                    self.step, self.config.warmup
                ),
            ));
        }
        if self.phase() == Phase::Warmup && self.config.refresh_every == 0 {
            let remaining = self.config.warmup - self.step;
            if steps as u64 > remaining {
                return Err(CoreError::arg(
                    "g",
                    format!(
                        "{steps} observation(s) but only {remaining} warm-up step(s) remain \
                         (step {} of warmup {}); importances are frozen after warm-up \
                         unless refresh_every > 0",
                        self.step, self.config.warmup
                    ),
                ));
            }
        }
        let mut skipped = 0;
        for row in g.chunks_exact(m.max(1)).take(steps) {
            if self.apply_one(row) {
                skipped += 1;
            }
        }
        Ok(skipped)
    }

    /// Applies one validated row; returns true when it was skipped.
    fn apply_one(&mut self, row: &[f64]) -> bool {
        self.step += 1;
        let skip = row.iter().any(|v| !v.is_finite());
        if skip {
            self.skipped += 1;
        } else {
            let alpha = self.config.alpha;
            for (f, &g) in self.fisher.iter_mut().zip(row) {
                *f = alpha * *f + (1.0 - alpha) * g;
            }
        }
        let k = self.config.warmup;
        let refresh = self.config.refresh_every;
        if self.step == k || (refresh > 0 && self.step > k && (self.step - k) % refresh == 0) {
            self.importance = Some(importances(&self.fisher, self.config.normalization));
        }
        skip
    }

    /// λ·(1 − I_m) before the schedule's scale; None during warm-up and, with
    /// `target_ratio`, until λ is calibrated.
    pub fn base_factors(&self) -> Option<Vec<f64>> {
        let lam = self.config.lam?;
        self.importance
            .as_ref()
            .map(|imp| imp.iter().map(|i| lam * (1.0 - i)).collect())
    }

    /// `lam="auto"`: sets λ = target_ratio · sqrt(task_sq / unit_penalty_sq), once.
    ///
    /// `task_sq` is ‖∇L_task‖² over the LoRA factors (the task-gradient scale), and
    /// `unit_penalty_sq` is ‖∇P‖² at λ = 1 and full strength (schedule scale 1), so that at λ
    /// the penalty's gradient is `target_ratio` times the task's. Returns the λ set, or None
    /// (state unchanged) when the inputs give none: either is 0 or not finite, or the λ
    /// overflows. Refused outside auto mode, once calibrated, and during warm-up.
    pub fn calibrate(
        &mut self,
        task_sq: f64,
        unit_penalty_sq: f64,
    ) -> Result<Option<f64>, CoreError> {
        let Some(target) = self.config.target_ratio else {
            return Err(CoreError::arg(
                "target_ratio",
                "calibration needs lam=\"auto\" (a target_ratio); λ was set by hand",
            ));
        };
        if let Some(lam) = self.config.lam {
            return Err(CoreError::arg(
                "lam",
                format!("already calibrated (λ = {lam}); it is frozen for the rest of training"),
            ));
        }
        if self.importance.is_none() {
            return Err(CoreError::arg(
                "step",
                format!(
                    "calibration happens after warm-up (step {} of warmup {})",
                    self.step, self.config.warmup
                ),
            ));
        }
        for (name, v) in [("task_sq", task_sq), ("unit_penalty_sq", unit_penalty_sq)] {
            if v < 0.0 {
                return Err(CoreError::arg(
                    name,
                    format!("expected a squared norm >= 0, got {v}"),
                ));
            }
        }
        let lam = target * (task_sq / unit_penalty_sq).sqrt();
        if !(lam.is_finite() && lam > 0.0) {
            return Ok(None);
        }
        self.config.lam = Some(lam);
        Ok(Some(lam))
    }

    /// The schedule's multiplier at optimizer step `step` (1-based); 0 during warm-up.
    pub fn schedule_scale(&self, step: u64) -> f64 {
        if step <= self.config.warmup {
            0.0
        } else {
            self.config.schedule.scale(step, self.config.warmup)
        }
    }

    /// Penalty factors λ·(1 − I_m)·scale(step) for optimizer step `step`; None in warm-up.
    pub fn factors(&self, step: u64) -> Option<Vec<f64>> {
        let scale = self.schedule_scale(step);
        self.base_factors()
            .map(|base| base.into_iter().map(|f| f * scale).collect())
    }

    /// Replaces this state by `other`, refusing one for a different number of matrices.
    pub fn load(&mut self, other: FisherCore) -> Result<(), CoreError> {
        if other.num_matrices() != self.num_matrices() {
            return Err(CoreError::arg(
                "state",
                format!(
                    "state is for {} adapter matrices, this one has {}",
                    other.num_matrices(),
                    self.num_matrices()
                ),
            ));
        }
        *self = other;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{Normalization, Schedule};

    fn cfg(warmup: u64) -> Config {
        Config {
            warmup,
            ..Config::default()
        }
    }

    #[test]
    fn ema_follows_the_update_rule() {
        let mut s = FisherCore::new(2, cfg(10)).unwrap();
        s.observe(&[1.0, 2.0]).unwrap();
        s.observe(&[3.0, 0.0]).unwrap();
        let a: f64 = 0.98;
        let f0 = a * (1.0 - a) * 1.0 + (1.0 - a) * 3.0;
        let f1 = a * (1.0 - a) * 2.0;
        assert!((s.fisher()[0] - f0).abs() < 1e-15);
        assert!((s.fisher()[1] - f1).abs() < 1e-15);
        assert_eq!(s.step(), 2);
        assert_eq!(s.phase(), Phase::Warmup);
        assert!(s.factors(3).is_none());
    }

    #[test]
    fn freezes_right_after_step_k() {
        let mut s = FisherCore::new(2, cfg(2)).unwrap();
        s.observe(&[1.0, 3.0]).unwrap();
        assert!(s.importance().is_none());
        s.observe(&[1.0, 3.0]).unwrap();
        let imp = s.importance().unwrap().to_vec();
        assert!((imp[0] - 0.25).abs() < 1e-12 && (imp[1] - 0.75).abs() < 1e-12);
        let f = s.factors(3).unwrap();
        assert!((f[0] - 1e-4 * 0.75).abs() < 1e-18);
        // Frozen: a further observation is refused and changes nothing.
        let before = s.clone();
        assert!(s.observe(&[5.0, 5.0]).is_err());
        assert_eq!(s, before);
    }

    #[test]
    fn non_finite_is_skipped_and_counted() {
        let mut s = FisherCore::new(2, cfg(5)).unwrap();
        s.observe(&[1.0, 1.0]).unwrap();
        let f = s.fisher().to_vec();
        assert!(!s.observe(&[f64::NAN, 1.0]).unwrap());
        assert!(!s.observe(&[1.0, f64::INFINITY]).unwrap());
        assert_eq!(s.fisher(), &f[..]);
        assert_eq!((s.step(), s.skipped()), (3, 2));
    }

    #[test]
    fn rejected_input_changes_nothing() {
        let mut s = FisherCore::new(3, cfg(5)).unwrap();
        s.observe(&[1.0, 2.0, 3.0]).unwrap();
        let before = s.clone();
        assert!(s.observe(&[1.0, 2.0]).is_err());
        assert!(s.observe(&[1.0, -2.0, 3.0]).is_err());
        assert!(s.observe_batch(&[1.0; 9], 2).is_err());
        assert!(s.observe_batch(&[1.0; 15], 5).is_err()); // only 4 warm-up steps remain
        assert_eq!(s, before);
    }

    #[test]
    fn ramp_schedule_scales_in() {
        let config = Config {
            warmup: 1,
            schedule: Schedule::Ramp { steps: 4 },
            normalization: Normalization::Max,
            ..Config::default()
        };
        let mut s = FisherCore::new(2, config).unwrap();
        s.observe(&[1.0, 2.0]).unwrap();
        assert_eq!(s.schedule_scale(1), 0.0);
        assert_eq!(s.schedule_scale(2), 0.25);
        assert_eq!(s.schedule_scale(5), 1.0);
        assert_eq!(s.schedule_scale(50), 1.0);
        let f = s.factors(3).unwrap();
        assert!((f[0] - 1e-4 * 0.5 * 0.5).abs() < 1e-18 && f[1] == 0.0);
    }

    #[test]
    fn refresh_renormalises_every_n_steps() {
        let config = Config {
            warmup: 2,
            refresh_every: 2,
            ..Config::default()
        };
        let mut s = FisherCore::new(2, config).unwrap();
        s.observe_batch(&[1.0, 1.0, 1.0, 1.0], 2).unwrap();
        assert_eq!(s.importance().unwrap(), &[0.5, 0.5]);
        s.observe(&[0.0, 100.0]).unwrap();
        assert_eq!(s.importance().unwrap(), &[0.5, 0.5]); // step 3: not yet
        s.observe(&[0.0, 100.0]).unwrap();
        let imp = s.importance().unwrap();
        assert!(imp[1] > imp[0], "{imp:?}");
    }

    #[test]
    fn the_core_counts_every_optimizer_step() {
        let mut s = FisherCore::new(2, cfg(2)).unwrap();
        assert_eq!(s.steps_until_update(), Some(2));
        assert!(s.advance(1).is_err(), "warm-up steps need observations");
        s.observe(&[1.0, 1.0]).unwrap();
        assert_eq!(s.steps_until_update(), Some(1));
        s.observe(&[1.0, 3.0]).unwrap();
        assert_eq!((s.phase(), s.steps_until_update()), (Phase::Frozen, None));
        assert_eq!(s.advance(3).unwrap(), 5);
        assert_eq!(s.step(), 5);
        assert!(s.observe(&[1.0, 1.0]).is_err());
        assert_eq!(s.step(), 5);
    }

    #[test]
    fn refreshing_is_its_own_phase() {
        let config = Config {
            warmup: 2,
            refresh_every: 3,
            ..Config::default()
        };
        let mut s = FisherCore::new(1, config).unwrap();
        s.observe_batch(&[1.0, 1.0], 2).unwrap();
        assert_eq!(s.phase(), Phase::Refreshing);
        assert_eq!(s.steps_until_update(), Some(3));
        s.observe(&[1.0]).unwrap();
        assert_eq!(s.steps_until_update(), Some(2));
        assert!(s.advance(1).is_err(), "refreshing steps need observations");
    }

    #[test]
    fn negative_infinity_is_skipped_like_other_non_finite_values() {
        let mut s = FisherCore::new(2, cfg(5)).unwrap();
        assert!(!s.observe(&[f64::NEG_INFINITY, 1.0]).unwrap());
        assert_eq!((s.step(), s.skipped()), (1, 1));
        assert!(s.observe(&[-1.0, 1.0]).is_err());
    }

    #[test]
    fn invalid_config_is_rejected() {
        for (alpha, warmup, lam, target_ratio) in [
            (0.0, 1, Some(0.0), None),
            (1.0, 1, Some(0.0), None),
            (f64::NAN, 1, Some(0.0), None),
            (0.5, 0, Some(0.0), None),
            (0.5, 1, Some(-1.0), None),
            (0.5, 1, Some(f64::INFINITY), None),
            (0.5, 1, None, None),
            (0.5, 1, None, Some(0.0)),
            (0.5, 1, None, Some(10.5)),
            (0.5, 1, None, Some(f64::NAN)),
            (0.5, 1, Some(0.0), Some(0.1)),
        ] {
            let c = Config {
                alpha,
                warmup,
                lam,
                target_ratio,
                ..Config::default()
            };
            assert!(FisherCore::new(1, c).is_err(), "{c:?}");
        }
        assert!(FisherCore::new(0, Config::default()).is_err());
    }

    fn auto(warmup: u64) -> Config {
        Config {
            warmup,
            lam: None,
            target_ratio: Some(0.1),
            ..Config::default()
        }
    }

    #[test]
    fn calibration_sets_lambda_once_after_warmup() {
        let mut s = FisherCore::new(2, auto(1)).unwrap();
        assert!(
            s.calibrate(4.0, 1.0).is_err(),
            "warm-up: nothing to calibrate"
        );
        s.observe(&[1.0, 3.0]).unwrap();
        assert!(s.base_factors().is_none(), "no factors before calibration");
        let before = s.clone();
        for (task, unit) in [
            (0.0, 1.0),
            (4.0, 0.0),
            (f64::NAN, 1.0),
            (4.0, f64::INFINITY),
        ] {
            assert_eq!(s.calibrate(task, unit).unwrap(), None);
        }
        assert!(s.calibrate(-1.0, 1.0).is_err());
        assert_eq!(s, before);
        let lam = s.calibrate(4.0, 1.0).unwrap().unwrap();
        assert!((lam - 0.1 * 2.0).abs() < 1e-15);
        let f = s.base_factors().unwrap();
        assert!((f[0] - lam * 0.75).abs() < 1e-15);
        assert!(
            s.calibrate(4.0, 1.0).is_err(),
            "λ is frozen once calibrated"
        );
        let mut fixed = FisherCore::new(2, cfg(1)).unwrap();
        fixed.observe(&[1.0, 3.0]).unwrap();
        assert!(fixed.calibrate(4.0, 1.0).is_err(), "λ set by hand");
    }

    #[test]
    fn load_refuses_other_size() {
        let mut a = FisherCore::new(2, cfg(3)).unwrap();
        let b = FisherCore::new(3, cfg(3)).unwrap();
        let before = a.clone();
        assert!(a.load(b).is_err());
        assert_eq!(a, before);
    }
}
