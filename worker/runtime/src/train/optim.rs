//! AdamW on the adapter's host vector, and the learning-rate schedule: linear warmup over
//! the first `warmup` fraction of the steps, then linear decay to zero (the schedule the
//! published run used by default). Plain `f32` state, so a checkpoint holds it exactly.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Optimizer steps taken.
    pub step: u64,
    #[serde(skip)]
    pub m: Vec<f32>,
    #[serde(skip)]
    pub v: Vec<f32>,
}

impl AdamW {
    pub fn new(n: usize, weight_decay: f32) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// One update of `params` with `grads` at learning rate `lr`: decoupled weight decay,
    /// then the bias-corrected Adam step.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        assert_eq!(params.len(), grads.len());
        assert_eq!(params.len(), self.m.len());
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        for i in 0..params.len() {
            let g = grads[i];
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let m_hat = self.m[i] / c1;
            let v_hat = self.v[i] / c2;
            params[i] -= lr * self.weight_decay * params[i];
            params[i] -= lr * m_hat / (v_hat.sqrt() + self.eps);
        }
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total`.
pub fn learning_rate(peak: f32, step: u64, total: u64, warmup: f32) -> f32 {
    let total = total.max(1);
    let warm = ((total as f32 * warmup).ceil() as u64).max(1);
    if step < warm {
        return peak * (step + 1) as f32 / warm as f32;
    }
    let left = total.saturating_sub(step) as f32;
    let span = (total - warm).max(1) as f32;
    peak * (left / span).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_rises_then_decays_to_zero() {
        let lr: Vec<f32> = (0..100)
            .map(|s| learning_rate(1e-4, s, 100, 0.05))
            .collect();
        assert!((lr[0] - 2e-5).abs() < 1e-9);
        assert!((lr[4] - 1e-4).abs() < 1e-9);
        assert!(lr[5] <= 1e-4 && lr[5] > lr[50] && lr[50] > lr[99]);
        assert!(lr[99] > 0.0 && lr[99] < 2e-6);
    }

    #[test]
    fn adamw_first_step_moves_each_weight_by_the_learning_rate() {
        let mut opt = AdamW::new(3, 0.0);
        let mut p = vec![1.0, -2.0, 0.5];
        opt.update(&mut p, &[0.3, -7.0, 0.0], 0.01);
        // Bias-corrected, the first step is lr * sign(g) (and nothing where g = 0).
        assert!((p[0] - 0.99).abs() < 1e-6 && (p[1] + 1.99).abs() < 1e-6 && p[2] == 0.5);
        let mut decayed = vec![1.0];
        AdamW::new(1, 0.1).update(&mut decayed, &[0.0], 0.5);
        assert!((decayed[0] - 0.95).abs() < 1e-6);
    }
}
