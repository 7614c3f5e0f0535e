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
    /// Free text (the summary) never repeats an n-gram of this size (0: off).
    pub no_repeat_ngram: usize,
    /// Logits of tokens already in the free text are divided by this when positive and
    /// multiplied when negative (1: off).
    pub repetition_penalty: f32,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            no_repeat_ngram: 0,
            repetition_penalty: 1.0,
        }
    }

    /// Sampling at `temperature` with nucleus `top_p` and `seed`, no repetition control.
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Self {
            temperature,
            top_p,
            seed,
            ..Self::greedy()
        }
    }
}

/// Applies the repetition controls of `params` to the candidates of the next free-text
/// token, given the free text's tokens so far: candidates that would complete an n-gram
/// already in `history` are removed (unless that removes all of them), and the logits of
/// tokens already in `history` are penalised.
pub fn control_repetition(cands: &mut Vec<(u32, f32)>, history: &[u32], params: &SamplingParams) {
    let n = params.no_repeat_ngram;
    if n > 0 && history.len() >= n.saturating_sub(1) {
        let tail = &history[history.len() + 1 - n..];
        let banned: std::collections::HashSet<u32> = history
            .windows(n)
            .filter(|w| &w[..n - 1] == tail)
            .map(|w| w[n - 1])
            .collect();
        if !banned.is_empty() && cands.iter().any(|c| !banned.contains(&c.0)) {
            cands.retain(|c| !banned.contains(&c.0));
        }
    }
    let penalty = params.repetition_penalty;
    if penalty != 1.0 && penalty > 0.0 {
        let seen: std::collections::HashSet<u32> = history.iter().copied().collect();
        for c in cands.iter_mut().filter(|c| seen.contains(&c.0)) {
            c.1 = if c.1 > 0.0 {
                c.1 / penalty
            } else {
                c.1 * penalty
            };
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

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
            let mut s = Sampler::new(SamplingParams::new(t, 1.0, seed));
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
        let mut s = Sampler::new(SamplingParams::new(1.0, 0.5, 3));
        assert!((0..100).all(|_| s.sample(&cand) == 1));
    }

    #[test]
    fn repetition_controls_ban_a_repeated_ngram_and_penalise_seen_tokens() {
        let params = SamplingParams {
            no_repeat_ngram: 3,
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        // History "5 6 7 5 6": the 3-gram "5 6 7" exists, so 7 after "5 6" is banned.
        let mut cands = vec![(7u32, 4.0f32), (8, 1.0), (5, -1.0)];
        control_repetition(&mut cands, &[5, 6, 7, 5, 6], &params);
        assert_eq!(cands, vec![(8, 1.0), (5, -2.0)]);
        // Nothing is banned when it would leave no candidate.
        let mut only = vec![(7u32, 4.0f32)];
        control_repetition(&mut only, &[5, 6, 7, 5, 6], &params);
        assert_eq!(only, vec![(7, 2.0)]);
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
