//! Fitting the label head by regularised logistic regression: given each training
//! example's final hidden state at the label position and the model's own malicious-minus-
//! benign logit there (the offset), the head `(w, b)` that minimises the class-weighted
//! cross-entropy of `sigmoid(offset + h · w + b)` plus `lambda · |w|²`, by Newton's method
//! (the problem is small: hidden + 1 unknowns). This is what a linear probe on the frozen
//! features does, and it converges where a few Adam steps on the head do not.

/// One example's features at its label position.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelFeatures {
    pub hidden: Vec<f32>,
    /// The model's logit of malicious minus benign there, without the head.
    pub offset: f64,
    pub label: u8,
}

/// The head `[w.., b]` (`hidden + 1` values) for `examples`, with per-class weights
/// `class_weight` and L2 strength `lambda` on `w` (not on `b`).
pub fn fit_head(examples: &[LabelFeatures], class_weight: [f64; 2], lambda: f64) -> Vec<f32> {
    let Some(first) = examples.first() else {
        return Vec::new();
    };
    let d = first.hidden.len() + 1;
    let mut theta = vec![0f64; d];
    let x = |e: &LabelFeatures, j: usize| -> f64 {
        if j + 1 == d {
            1.0
        } else {
            f64::from(e.hidden[j])
        }
    };
    let objective = |theta: &[f64]| -> f64 {
        let mut f = 0.0;
        for e in examples {
            let z = e.offset + (0..d).map(|j| theta[j] * x(e, j)).sum::<f64>();
            let y = f64::from(e.label.min(1));
            // log(1 + exp(-z)) for y = 1, log(1 + exp(z)) for y = 0, computed stably.
            let m = if y == 1.0 { -z } else { z };
            let ce = m.max(0.0) + (-m.abs()).exp().ln_1p();
            f += class_weight[usize::from(e.label.min(1))] * ce;
        }
        f + lambda * theta[..d - 1].iter().map(|t| t * t).sum::<f64>()
    };
    let mut current = objective(&theta);
    for _ in 0..50 {
        let mut grad = vec![0f64; d];
        let mut hess = vec![0f64; d * d];
        for e in examples {
            let z = e.offset + (0..d).map(|j| theta[j] * x(e, j)).sum::<f64>();
            let p = 1.0 / (1.0 + (-z).exp());
            let w = class_weight[usize::from(e.label.min(1))];
            let r = w * (p - f64::from(e.label.min(1)));
            let s = w * p * (1.0 - p);
            let xs: Vec<f64> = (0..d).map(|j| x(e, j)).collect();
            for i in 0..d {
                grad[i] += r * xs[i];
                let si = s * xs[i];
                for j in i..d {
                    hess[i * d + j] += si * xs[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..i {
                hess[i * d + j] = hess[j * d + i];
            }
        }
        for i in 0..d - 1 {
            grad[i] += 2.0 * lambda * theta[i];
            hess[i * d + i] += 2.0 * lambda;
        }
        // A little damping on every direction keeps the system positive definite when the
        // fit saturates (separable data).
        for i in 0..d {
            hess[i * d + i] += 1e-6;
        }
        let Some(step) = solve_spd(&hess, &grad, d) else {
            break;
        };
        // Backtracking: halve the Newton step until the objective decreases.
        let mut scale = 1.0;
        let mut accepted = false;
        for _ in 0..30 {
            let trial: Vec<f64> = theta
                .iter()
                .zip(&step)
                .map(|(t, s)| t - scale * s)
                .collect();
            let f = objective(&trial);
            if f.is_finite() && f <= current {
                let change = step.iter().map(|s| (scale * s).abs()).fold(0.0, f64::max);
                theta = trial;
                accepted = current - f > 1e-12 * current.abs().max(1.0) || change > 1e-9;
                current = f;
                break;
            }
            scale /= 2.0;
        }
        if !accepted {
            break;
        }
    }
    theta.into_iter().map(|t| t as f32).collect()
}

/// Solves `A x = b` for a symmetric positive-definite `A` (`n x n`, row-major) by Cholesky;
/// `None` when `A` is not positive definite.
fn solve_spd(a: &[f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut sum = a[i * n + j];
            for k in 0..j {
                sum -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if sum <= 0.0 {
                    return None;
                }
                l[i * n + i] = sum.sqrt();
            } else {
                l[i * n + j] = sum / l[j * n + j];
            }
        }
    }
    let mut y = vec![0f64; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * n + i];
    }
    let mut x = vec![0f64; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * n + i];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_separates_a_separable_set_and_uses_the_offset() {
        // Label = sign of the first feature; the offset pushes everything to malicious.
        let ex: Vec<LabelFeatures> = (0..40)
            .map(|i| {
                let a = (i as f32 - 19.5) / 10.0;
                LabelFeatures {
                    hidden: vec![a, ((i * 7) % 5) as f32 / 5.0 - 0.4],
                    offset: 3.0,
                    label: u8::from(a > 0.0),
                }
            })
            .collect();
        let head = fit_head(&ex, [1.0, 1.0], 1e-3);
        assert_eq!(head.len(), 3);
        let right = ex
            .iter()
            .filter(|e| {
                let z =
                    e.offset + f64::from(e.hidden[0] * head[0] + e.hidden[1] * head[1] + head[2]);
                (z > 0.0) == (e.label == 1)
            })
            .count();
        assert_eq!(right, 40);
        // Strong regularisation keeps the weights small.
        let small = fit_head(&ex, [1.0, 1.0], 100.0);
        assert!(
            small[0].abs() < head[0].abs() / 5.0,
            "{small:?} vs {head:?}"
        );
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let x = solve_spd(&a, &[2.0, 1.0], 2).unwrap();
        assert!((4.0 * x[0] + 2.0 * x[1] - 2.0).abs() < 1e-12);
        assert!((2.0 * x[0] + 3.0 * x[1] - 1.0).abs() < 1e-12);
        assert!(solve_spd(&[-1.0], &[1.0], 1).is_none());
    }
}
