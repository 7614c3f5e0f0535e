//! McNemar's test on paired outcomes of two annotators over the same scripts.
//!
//! Two questions are asked of the same pairs and reported apart:
//! - correctness: did the two get different scripts right? (b = only the first is right,
//!   c = only the second is right);
//! - predicted class, as the published script does: do the two predict different classes?
//!   (b = first says malicious and second benign, c = the reverse).
//!
//! Below 25 discordant pairs the p-value is the exact two-sided binomial one. From 25 on,
//! the correctness test uses the chi-squared statistic with continuity correction (one
//! degree of freedom), while [`McNemar::published`] computes what the published evaluation
//! script computes there: the chi-squared statistic **without** the correction (b = 29,
//! c = 24 gives 0.4717 and p = 0.4922).

use serde::{Deserialize, Serialize};

/// Discordant pairs below which the exact binomial test is used.
pub const EXACT_BELOW: u64 = 25;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Pairs where only the first side has the property.
    pub b: u64,
    /// Pairs where only the second side has it.
    pub c: u64,
    /// `min(b, c)` for the exact test, the corrected chi-squared otherwise.
    pub statistic: f64,
    pub p_value: f64,
    /// "exact-binomial", "chi2-corrected" or "chi2-uncorrected".
    pub method: String,
}

impl McNemar {
    pub fn from_counts(b: u64, c: u64) -> Self {
        Self::counts(b, c, true)
    }

    /// The published script's test: exact below 25 discordant pairs, the uncorrected
    /// chi-squared statistic from 25 on.
    pub fn published(b: u64, c: u64) -> Self {
        Self::counts(b, c, false)
    }

    /// The smallest p-value `n` paired scripts can give at all: every one discordant and all
    /// in one direction (exact test below 25 pairs). Below 0.01 needs at least 8 scripts.
    pub fn best_possible_p(n: u64) -> f64 {
        Self::from_counts(n, 0).p_value
    }

    fn counts(b: u64, c: u64, corrected: bool) -> Self {
        let n = b + c;
        if n < EXACT_BELOW {
            let k = b.min(c);
            let p = (2.0 * binomial_half_cdf(k, n)).min(1.0);
            return Self {
                b,
                c,
                statistic: k as f64,
                p_value: p,
                method: "exact-binomial".into(),
            };
        }
        let d = (b as f64 - c as f64).abs() - if corrected { 1.0 } else { 0.0 };
        let statistic = d * d / n as f64;
        Self {
            b,
            c,
            statistic,
            p_value: chi2_sf_1(statistic),
            method: if corrected {
                "chi2-corrected"
            } else {
                "chi2-uncorrected"
            }
            .into(),
        }
    }

    /// Pairs of booleans (first, second): counts where exactly one is true.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (bool, bool)>) -> Self {
        let (mut b, mut c) = (0, 0);
        for (x, y) in pairs {
            b += u64::from(x && !y);
            c += u64::from(!x && y);
        }
        Self::from_counts(b, c)
    }
}

/// P(X <= k) for X ~ Binomial(n, 1/2).
fn binomial_half_cdf(k: u64, n: u64) -> f64 {
    // Terms C(n, i) / 2^n built up in log space, exact enough for any n used here.
    let mut log_term = -(n as f64) * std::f64::consts::LN_2;
    let mut sum = 0.0;
    for i in 0..=k.min(n) {
        if i > 0 {
            log_term += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        sum += log_term.exp();
    }
    sum.min(1.0)
}

/// Survival function of chi-squared with one degree of freedom: Q(1/2, x/2), the upper
/// regularised incomplete gamma function.
pub fn chi2_sf_1(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    upper_gamma_q_half(x / 2.0)
}

/// Q(a, x) for a = 1/2: series for P when x < a + 1, Lentz's continued fraction for Q
/// otherwise.
fn upper_gamma_q_half(x: f64) -> f64 {
    const A: f64 = 0.5;
    let ln_gamma_a = 0.5 * std::f64::consts::PI.ln();
    let prefactor = (A * x.ln() - x - ln_gamma_a).exp();
    if x < A + 1.0 {
        // P(a, x) = x^a e^-x / Γ(a+1) · Σ x^n / ((a+1)..(a+n)), Γ(a+1) = a Γ(a).
        let (mut term, mut sum, mut ap) = (1.0 / A, 1.0 / A, A);
        for _ in 0..500 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        return (1.0 - prefactor * sum).max(0.0);
    }
    let tiny = 1e-300;
    let mut b = x + 1.0 - A;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..500 {
        let an = -(i as f64) * (i as f64 - A);
        b += 2.0;
        d = an * d + b;
        if d.abs() < tiny {
            d = tiny;
        }
        c = b + an / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    prefactor * h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-300)
    }

    #[test]
    fn chi2_survival_matches_known_values() {
        // scipy.stats.chi2.sf(x, 1)
        for (x, want) in [
            (0.1, 0.7518296340458492),
            (1.0, 0.31731050786291115),
            (1.5, 0.22067136191984324),
            (3.841458820694124, 0.04999999999999989),
            (10.0, 0.001565402258002549),
            (50.0, 1.537459794428033e-12),
        ] {
            let got = chi2_sf_1(x);
            assert!(close(got, want, 1e-12), "x={x}: {got} vs {want}");
        }
    }

    #[test]
    fn small_counts_use_the_exact_binomial() {
        // statsmodels mcnemar([[0, 3], [9, 0]], exact=True): 2 * binom.cdf(3, 12, 0.5)
        let t = McNemar::from_counts(3, 9);
        assert_eq!(t.method, "exact-binomial");
        assert_eq!(t.statistic, 3.0);
        assert!(close(t.p_value, 0.145_996_093_75, 1e-12), "{}", t.p_value);
        assert_eq!(McNemar::from_counts(0, 0).p_value, 1.0);
        assert_eq!(McNemar::from_counts(5, 5).p_value, 1.0);
    }

    #[test]
    fn the_published_test_leaves_out_the_continuity_correction() {
        // The published script's numbers: b = 29, c = 24 gives 0.4717, p = 0.4922.
        let t = McNemar::published(29, 24);
        assert_eq!(t.method, "chi2-uncorrected");
        assert!(close(t.statistic, 25.0 / 53.0, 1e-12), "{}", t.statistic);
        assert!((t.p_value - 0.4922).abs() < 5e-5, "{}", t.p_value);
        // The corrected statistic of the same counts is smaller.
        let c = McNemar::from_counts(29, 24);
        assert!(close(c.statistic, 16.0 / 53.0, 1e-12) && c.p_value > t.p_value);
        // Below 25 pairs both are the exact test.
        assert_eq!(McNemar::published(3, 9), McNemar::from_counts(3, 9));
    }

    #[test]
    fn eight_scripts_are_the_fewest_that_can_reach_p_below_one_percent() {
        assert!(McNemar::best_possible_p(7) > 0.01);
        assert!(McNemar::best_possible_p(8) < 0.01);
    }

    #[test]
    fn large_counts_use_corrected_chi_squared() {
        // The published V2-vs-V1 discordance: 110 + 49 fixed against some new errors.
        let t = McNemar::from_counts(40, 159);
        assert_eq!(t.method, "chi2-corrected");
        let want_stat = (119.0f64 - 1.0).powi(2) / 199.0;
        assert!(close(t.statistic, want_stat, 1e-12));
        assert!(t.p_value < 1e-5, "{}", t.p_value);
        let t = McNemar::from_pairs([(true, false); 20].into_iter().chain([(false, true); 10]));
        assert_eq!((t.b, t.c), (20, 10));
        // scipy.stats.chi2.sf(81/30, 1)
        assert!(
            close(t.p_value, 0.10034824646229054, 1e-12),
            "{}",
            t.p_value
        );
    }
}
