//! The loop config's checks: every bad value refused before a run starts, naming its key.

use anyhow::bail;

use super::LoopConfig;

/// The smallest `summary_tokens`: about one short sentence.
const MIN_SUMMARY_TOKENS: usize = 16;

impl LoopConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let id_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !id_ok {
            bail!(
                "`name` {:?} must be 1 to 64 characters of a-z, 0-9, '-', '_' and '.'",
                self.name
            );
        }
        for (k, v) in [
            ("corpus", &self.corpus),
            ("seed", &self.seed),
            ("test", &self.test),
            ("output", &self.output),
            ("model", &self.model),
        ] {
            if v.trim().is_empty() {
                bail!("`{k}` must not be empty");
            }
        }
        if self.iterations == 0 {
            bail!("`iterations` must be at least 1");
        }
        let lists = std::iter::once(&self.temperatures).chain(&self.eval_temperatures);
        for temps in lists {
            if temps.is_empty() || temps.iter().any(|t| t.is_nan() || *t < 0.0) {
                bail!("temperatures must be non-empty lists of non-negative numbers");
            }
        }
        let thresholds = std::iter::once(&self.confidence).chain(&self.confidence_schedule);
        for t in thresholds {
            if !(0.0..=1.0).contains(t) {
                bail!("confidence thresholds must lie in [0, 1], got {t}");
            }
        }
        if self.adapter.is_empty() {
            bail!("`adapter` needs at least one entry");
        }
        for (i, a) in self
            .adapter
            .iter()
            .chain(std::iter::once(&self.judge_adapter))
            .enumerate()
        {
            let name = if i == self.adapter.len() {
                "judge_adapter".to_string()
            } else {
                format!("adapter {i}")
            };
            if a.rank == 0 || a.epochs == 0 || !(0.0..1.0).contains(&a.dropout) {
                bail!("{name}: rank and epochs must be positive and dropout in [0, 1)");
            }
            if !(a.label_weight > 0.0 && a.label_weight.is_finite()) {
                bail!(
                    "{name}: `label_weight` must be a positive number, got {}",
                    a.label_weight
                );
            }
            if !(a.language_weight >= 0.0 && a.language_weight.is_finite()) {
                bail!(
                    "{name}: `language_weight` must be zero or positive, got {}",
                    a.language_weight
                );
            }
        }
        if let Some(n) = self.summary_tokens {
            if n < MIN_SUMMARY_TOKENS {
                bail!(
                    "`summary_tokens` = {n} is below the length of one sentence (at least {MIN_SUMMARY_TOKENS})"
                );
            }
            if let Some(a) = self.adapter.iter().find(|a| a.answer_tokens < n + 24) {
                bail!(
                    "`answer_tokens` = {} cannot hold a summary of `summary_tokens` = {n} and the answer around it (at least {})",
                    a.answer_tokens,
                    n + 24
                );
            }
        }
        if !(0.0..=1.0).contains(&self.judge_min_accuracy) {
            bail!(
                "`judge_min_accuracy` must lie in [0, 1], got {}",
                self.judge_min_accuracy
            );
        }
        if self.max_new_tokens == 0 || self.prompt_tokens == 0 || self.slots == 0 {
            bail!("`max_new_tokens`, `prompt_tokens` and `slots` must be positive");
        }
        Ok(())
    }
}
