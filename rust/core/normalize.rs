//! Fisher scores → importances.

use super::config::Normalization;

/// Importances of `fisher` (finite, >= 0) under `mode`.
///
/// Scores are first divided by their maximum so that neither the sum nor the ratio can
/// overflow or underflow for extreme but finite inputs; both modes are invariant to scaling
/// all scores by c > 0, and the division makes that hold in floating point too.
pub fn importances(fisher: &[f64], mode: Normalization) -> Vec<f64> {
    let n = fisher.len();
    let max = fisher.iter().copied().fold(0.0_f64, f64::max);
    let scaled = fisher.iter().map(|&f| f / max);
    match mode {
        // The control: no Fisher information at all.
        Normalization::Uniform => vec![1.0 / n as f64; n],
        // No signal at all: every matrix is equally important.
        Normalization::Sum if max <= 0.0 => vec![1.0 / n as f64; n],
        Normalization::Max if max <= 0.0 => vec![1.0; n],
        Normalization::Max => scaled.collect(),
        Normalization::Sum => {
            let scaled: Vec<f64> = scaled.collect();
            let total: f64 = scaled.iter().sum();
            scaled.into_iter().map(|s| s / total).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_mode_sums_to_one() {
        let i = importances(&[1.0, 3.0], Normalization::Sum);
        assert_eq!(i, vec![0.25, 0.75]);
    }

    #[test]
    fn max_mode_peaks_at_one() {
        let i = importances(&[1.0, 4.0, 2.0], Normalization::Max);
        assert_eq!(i, vec![0.25, 1.0, 0.5]);
    }

    #[test]
    fn zero_scores_are_uniform() {
        assert_eq!(importances(&[0.0; 4], Normalization::Sum), vec![0.25; 4]);
        assert_eq!(importances(&[0.0; 4], Normalization::Max), vec![1.0; 4]);
    }

    #[test]
    fn uniform_mode_ignores_the_scores() {
        let i = importances(&[1.0, 4.0, 0.0, 3.0], Normalization::Uniform);
        assert_eq!(i, vec![0.25; 4]);
        let total: f64 = i.iter().map(|x| 1.0 - x).sum();
        assert!((total - 3.0).abs() < 1e-15, "Σ(1 − I) = M − 1");
    }

    #[test]
    fn extreme_scores_do_not_overflow() {
        let i = importances(&[f64::MAX, f64::MAX], Normalization::Sum);
        assert_eq!(i, vec![0.5, 0.5]);
        let i = importances(&[1e-320, 3e-320], Normalization::Sum);
        assert!((i[1] - 0.75).abs() < 1e-3, "{i:?}");
    }
}
