//! Label metrics of a split: the decision of a binary classifier read from the label
//! choice's probability of "malicious", scored without a threshold (AUC, NLL) and at one
//! (accuracy, balanced accuracy), and the threshold that balances the classes best.

use serde::{Deserialize, Serialize};

/// One scored example: `p` is P(malicious), `label` the reference (1 = malicious).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub p: f64,
    pub label: u8,
}

/// What one split scored in one epoch. NaN marks a metric the split cannot give (AUC with
/// one class, label metrics without label rows); JSON writes it as null.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SplitMetrics {
    /// Scripts scored.
    pub n: usize,
    /// Mean negative log-likelihood of the free (summary) tokens.
    #[serde(with = "nan_as_null")]
    pub token_loss: f64,
    /// Mean negative log-likelihood of the reference label under the two-way choice.
    #[serde(with = "nan_as_null")]
    pub label_nll: f64,
    /// Accuracy at P(malicious) >= 0.5.
    #[serde(with = "nan_as_null")]
    pub label_accuracy: f64,
    /// Mean of the two classes' recalls at 0.5.
    #[serde(with = "nan_as_null")]
    pub balanced_accuracy: f64,
    /// Area under the ROC curve of P(malicious).
    #[serde(with = "nan_as_null")]
    pub auc: f64,
    /// Accuracy of the most likely language of the five.
    #[serde(with = "nan_as_null")]
    pub language_accuracy: f64,
}

impl PartialEq for SplitMetrics {
    /// Field by field, NaN equal to NaN (a resumed run must reproduce "not available" too).
    fn eq(&self, o: &Self) -> bool {
        let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        self.n == o.n
            && same(self.token_loss, o.token_loss)
            && same(self.label_nll, o.label_nll)
            && same(self.label_accuracy, o.label_accuracy)
            && same(self.balanced_accuracy, o.balanced_accuracy)
            && same(self.auc, o.auc)
            && same(self.language_accuracy, o.language_accuracy)
    }
}

/// `f64` fields whose NaN travels as JSON null (JSON has no NaN).
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

/// Accumulates a split's scores over micro-batches.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub scripts: usize,
    pub token_nll: f64,
    pub tokens: usize,
    pub labels: Vec<Scored>,
    pub languages_right: usize,
    pub languages: usize,
}

impl Tally {
    pub fn metrics(&self) -> SplitMetrics {
        let nan = f64::NAN;
        let labels = &self.labels;
        let nll = if labels.is_empty() {
            nan
        } else {
            labels
                .iter()
                .map(|s| -(if s.label == 1 { s.p } else { 1.0 - s.p }).max(1e-12).ln())
                .sum::<f64>()
                / labels.len() as f64
        };
        SplitMetrics {
            n: self.scripts,
            token_loss: if self.tokens == 0 {
                nan
            } else {
                self.token_nll / self.tokens as f64
            },
            label_nll: nll,
            label_accuracy: accuracy(labels, 0.5),
            balanced_accuracy: balanced_accuracy(labels, 0.5),
            auc: auc(labels),
            language_accuracy: if self.languages == 0 {
                nan
            } else {
                self.languages_right as f64 / self.languages as f64
            },
        }
    }
}

/// Share of examples whose decision at `threshold` (malicious when p >= threshold) is right.
pub fn accuracy(s: &[Scored], threshold: f64) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    let right = s
        .iter()
        .filter(|x| (x.p >= threshold) == (x.label == 1))
        .count();
    right as f64 / s.len() as f64
}

/// Mean of the per-class recalls at `threshold`; NaN without both classes.
pub fn balanced_accuracy(s: &[Scored], threshold: f64) -> f64 {
    let recall = |class: u8| {
        let of: Vec<&Scored> = s.iter().filter(|x| x.label == class).collect();
        let right = of
            .iter()
            .filter(|x| (x.p >= threshold) == (class == 1))
            .count();
        right as f64 / of.len() as f64
    };
    let (neg, pos) = (recall(0), recall(1));
    if neg.is_nan() || pos.is_nan() {
        f64::NAN
    } else {
        (neg + pos) / 2.0
    }
}

/// Area under the ROC curve: the probability that a random malicious example scores above a
/// random benign one, ties counting half. NaN without both classes.
pub fn auc(s: &[Scored]) -> f64 {
    let mut v: Vec<&Scored> = s.iter().collect();
    v.sort_by(|a, b| a.p.total_cmp(&b.p));
    let (npos, nneg) = (
        v.iter().filter(|x| x.label == 1).count(),
        v.iter().filter(|x| x.label == 0).count(),
    );
    if npos == 0 || nneg == 0 {
        return f64::NAN;
    }
    // Sum of the positives' mid-ranks (1-based), ties sharing their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].p == v[i].p {
            j += 1;
        }
        let mid = (i + 1 + j) as f64 / 2.0;
        rank_sum += mid * v[i..j].iter().filter(|x| x.label == 1).count() as f64;
        i = j;
    }
    let u = rank_sum - (npos * (npos + 1)) as f64 / 2.0;
    u / (npos * nneg) as f64
}

/// The threshold on P(malicious) that maximises balanced accuracy on `s` (ties: the one
/// nearest 0.5), placed halfway between neighbouring scores; 0.5 without both classes.
pub fn calibrated_threshold(s: &[Scored]) -> f64 {
    let mut ps: Vec<f64> = s.iter().map(|x| x.p).collect();
    ps.sort_by(f64::total_cmp);
    ps.dedup();
    if balanced_accuracy(s, 0.5).is_nan() || ps.is_empty() {
        return 0.5;
    }
    let mut candidates = vec![0.5];
    candidates.extend(ps.windows(2).map(|w| (w[0] + w[1]) / 2.0));
    candidates.push(ps[0] / 2.0);
    candidates.push((ps[ps.len() - 1] + 1.0) / 2.0);
    let mut best: (f64, f64) = (f64::NEG_INFINITY, 0.5);
    for t in candidates {
        let b = balanced_accuracy(s, t);
        let better = b > best.0 + 1e-12
            || ((b - best.0).abs() <= 1e-12 && (t - 0.5).abs() < (best.1 - 0.5).abs());
        if better {
            best = (b, t);
        }
    }
    best.1
}

/// The logit shift that moves `threshold` to 0.5: added to the malicious label's logit
/// (against the benign one's), it turns raw probabilities into calibrated ones.
pub fn threshold_bias(threshold: f64) -> f64 {
    let t = threshold.clamp(1e-6, 1.0 - 1e-6);
    -(t / (1.0 - t)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: f64, label: u8) -> Scored {
        Scored { p, label }
    }

    #[test]
    fn auc_counts_ordered_pairs_and_half_ties() {
        // Positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1).
        let v = [s(0.9, 1), s(0.4, 1), s(0.5, 0), s(0.1, 0)];
        assert!((auc(&v) - 0.75).abs() < 1e-12);
        let tie = [s(0.5, 1), s(0.5, 0)];
        assert!((auc(&tie) - 0.5).abs() < 1e-12);
        assert!(auc(&[s(0.3, 1)]).is_nan());
    }

    #[test]
    fn balanced_accuracy_weighs_the_classes_equally() {
        // Always "malicious": every positive right, every negative wrong.
        let v = [s(0.9, 1), s(0.9, 1), s(0.9, 1), s(0.8, 0)];
        assert!((accuracy(&v, 0.5) - 0.75).abs() < 1e-12);
        assert!((balanced_accuracy(&v, 0.5) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_calibrated_threshold_separates_a_shifted_ranking() {
        // Perfectly ranked, but every score above 0.5.
        let v = [s(0.97, 1), s(0.95, 1), s(0.93, 0), s(0.92, 0)];
        let t = calibrated_threshold(&v);
        assert!((t - 0.94).abs() < 1e-9, "{t}");
        assert!((balanced_accuracy(&v, t) - 1.0).abs() < 1e-12);
        // The bias maps the threshold to even odds.
        let b = threshold_bias(t);
        let logit = (t / (1.0 - t)).ln();
        assert!((logit + b).abs() < 1e-9);
        // One class only: no information, no shift.
        assert_eq!(calibrated_threshold(&[s(0.9, 1)]), 0.5);
    }
}
