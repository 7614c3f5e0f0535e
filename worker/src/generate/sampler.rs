//! Seeded token sampling on the CPU: temperature, nucleus (top-p), greedy at temperature 0.
//! Each sample owns its RNG, so its tokens do not depend on what else is in the batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Probabilities below this fraction of the most likely token's are never kept in a
/// nucleus; it bounds the sort to a few hundred candidates instead of the whole vocabulary.
const NUCLEUS_FLOOR: f32 = 1e-6;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    /// Picks a token among `allowed` (ids with their raw logits). Returns the id.
    pub fn sample(&mut self, allowed: &[(u32, f32)]) -> u32 {
        assert!(!allowed.is_empty(), "sampling from an empty candidate set");
        let best = allowed
            .iter()
            .copied()
            .fold((allowed[0].0, f32::NEG_INFINITY), |a, b| {
                if b.1 > a.1 {
                    b
                } else {
                    a
                }
            });
        if self.params.temperature <= 0.0 {
            return best.0;
        }
        let inv_t = 1.0 / self.params.temperature;
        let mut cand: Vec<(u32, f32)> = allowed
            .iter()
            .map(|&(id, l)| (id, ((l - best.1) * inv_t).exp()))
            .filter(|&(_, p)| p >= NUCLEUS_FLOOR)
            .collect();
        if self.params.top_p < 1.0 {
            cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let total: f32 = cand.iter().map(|c| c.1).sum();
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                acc += c.1;
                if acc >= self.params.top_p * total {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(id, p) in &cand {
            if r < p {
                return id;
            }
            r -= p;
        }
        cand[cand.len() - 1].0
    }
}

/// `log softmax(logits)[id]` over the whole vocabulary.
pub fn log_prob(logits: &[f32], id: u32) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    logits[id as usize] - max - sum.ln()
}

/// Softmax over a few candidate ids only: the distribution of a choice once decoding is
/// restricted to those candidates.
pub fn choice_probs(logits: &[f32], ids: &[u32]) -> Vec<f32> {
    let max = ids
        .iter()
        .map(|&i| logits[i as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = ids
        .iter()
        .map(|&i| (logits[i as usize] - max).exp())
        .collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[(3, 0.5), (7, 2.0), (9, 1.9)]), 7);
    }

    #[test]
    fn same_seed_same_tokens_and_temperature_spreads() {
        let cand: Vec<(u32, f32)> = (0..50).map(|i| (i, (i % 7) as f32 * 0.3)).collect();
        let draw = |seed, t| {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                top_p: 1.0,
                seed,
            });
            (0..200).map(|_| s.sample(&cand)).collect::<Vec<_>>()
        };
        assert_eq!(draw(5, 0.8), draw(5, 0.8));
        assert_ne!(draw(5, 0.8), draw(6, 0.8));
        let distinct = |v: Vec<u32>| {
            let mut v = v;
            v.sort();
            v.dedup();
            v.len()
        };
        assert!(distinct(draw(1, 2.0)) > distinct(draw(1, 0.05)));
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Token 1 has ~88% of the mass: top_p 0.5 must always pick it.
        let cand = [(0u32, 0.0f32), (1, 3.0), (2, 0.0), (3, 0.0)];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 3,
        });
        assert!((0..100).all(|_| s.sample(&cand) == 1));
    }

    #[test]
    fn choice_probs_renormalise() {
        let logits = [0.0, 1.0, 5.0, 1.0];
        let p = choice_probs(&logits, &[1, 3]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6);
        let lp = log_prob(&logits, 2);
        assert!(lp < 0.0 && lp > -0.1);
    }
}
