//! The filter funnel: which pseudo-labels are trustworthy enough to train on.
//!
//! A script's samples (one per temperature) go through the published checks in the
//! published order, and the script leaves at the first check it fails, with that check's
//! reason:
//!
//! 1. `empty`: some sample's response is empty;
//! 2. `malformed`: some sample is not a well-formed answer (not JSON, a field missing or
//!    empty), or `truncated`: cut by the token budget;
//! 3. `label-disagreement`: the samples' labels differ;
//! 4. `low-confidence`: some sample's label probability is under the threshold;
//! 5. `judge-disagreement`: the judge, reading only a summary, gives the other label for
//!    every surviving summary;
//! 6. `unknown-language`: no summary left names one of the five languages.
//!
//! Samples stopped early right after their label (decoding stops only when check 3 or 4 will
//! reject the script) have no summary; they skip check 2 and are judged by their label at
//! checks 3 and 4, where the published pipeline would have dropped the script too.
//!
//! Choice of the one summary kept for an accepted script: among the samples the judge
//! agrees with and whose language is one of the five, the highest label probability; ties
//! go to the lower temperature, then the earlier sample.

use std::collections::BTreeMap;

use crate::eval::parse_response;
use automaldesc_common::schema::{FinishReason, FunnelReason, FunnelRow};
use automaldesc_common::types::{Label, Language};

/// One sample as the filter sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterSample {
    pub temperature: f32,
    pub response: String,
    /// Probability of the sampled label token.
    pub label_prob: f32,
    /// Why the sample stopped: cut by the token budget, stopped right after its label by
    /// early stop, or ended (the answer is parsed whole).
    pub finish: FinishReason,
}

/// A rejection with a detail a person can audit.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub reason: FunnelReason,
    pub detail: String,
}

/// A script that passed checks 1-4: its agreed label and the summaries for the judge.
#[derive(Clone, Debug, PartialEq)]
pub struct Survivor {
    pub label: Label,
    /// (sample index, language as written, summary) of every sample with a summary.
    pub summaries: Vec<(usize, String, String)>,
}

/// Checks 1-4 over one script's samples.
pub fn before_judge(samples: &[FilterSample], min_label_prob: f32) -> Result<Survivor, Rejection> {
    let reject = |reason, detail: String| Err(Rejection { reason, detail });
    if samples.is_empty() {
        return reject(FunnelReason::Empty, "no samples".into());
    }
    if let Some(i) = samples.iter().position(|s| s.response.trim().is_empty()) {
        return reject(
            FunnelReason::Empty,
            format!("sample {i} (t={}) is empty", samples[i].temperature),
        );
    }
    let mut labels = Vec::with_capacity(samples.len());
    let mut summaries = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let t = s.temperature;
        match s.finish {
            FinishReason::Length => {
                return reject(
                    FunnelReason::Truncated,
                    format!("sample {i} (t={t}) hit the token budget"),
                );
            }
            FinishReason::EarlyStopDisagree | FinishReason::EarlyStopLowConfidence => {
                match early_label(&s.response) {
                    Some(l) => labels.push(l),
                    None => {
                        return reject(
                            FunnelReason::Malformed,
                            format!("sample {i} (t={t}) stopped early without a label"),
                        )
                    }
                }
            }
            FinishReason::Stop
            | FinishReason::LabelOnly
            | FinishReason::TruncatedPrompt
            | FinishReason::Error => match parse_response(&s.response) {
                Some(a) => {
                    labels.push(a.label);
                    summaries.push((i, a.language, a.summary));
                }
                None => {
                    let head: String = s.response.chars().take(60).collect();
                    return reject(
                        FunnelReason::Malformed,
                        format!("sample {i} (t={t}) is not a well-formed answer: {head:?}"),
                    );
                }
            },
        }
    }
    if labels.iter().any(|&l| l != labels[0]) {
        let list: Vec<String> = labels.iter().map(|l| l.as_u8().to_string()).collect();
        return reject(
            FunnelReason::LabelDisagreement,
            format!("labels by temperature: {}", list.join(",")),
        );
    }
    if let Some(i) = samples
        .iter()
        .position(|s| s.label_prob.is_nan() || s.label_prob < min_label_prob)
    {
        return reject(
            FunnelReason::LowConfidence,
            format!(
                "sample {i} (t={}) label probability {:.3} < {min_label_prob}",
                samples[i].temperature, samples[i].label_prob
            ),
        );
    }
    Ok(Survivor {
        label: labels[0],
        summaries,
    })
}

/// The label of an answer cut right after its label (`{"language": "...", "label": 1`).
fn early_label(response: &str) -> Option<Label> {
    let at = response.find("\"label\"")?;
    let rest = response[at + 7..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    Label::from_u8(rest.chars().next()?.to_digit(10)? as u8)
}

/// The answer kept for an accepted script.
#[derive(Clone, Debug, PartialEq)]
pub struct Accepted {
    pub sample: usize,
    pub label: Label,
    pub language: Language,
    pub summary: String,
}

/// Checks 5 and 6 and the choice of summary. `judge[k]` is the judge's label for
/// `survivor.summaries[k]`.
pub fn after_judge(
    survivor: &Survivor,
    judge: &[Label],
    samples: &[FilterSample],
) -> Result<Accepted, Rejection> {
    assert_eq!(
        judge.len(),
        survivor.summaries.len(),
        "one judge verdict per summary"
    );
    let agreed: Vec<&(usize, String, String)> = survivor
        .summaries
        .iter()
        .zip(judge)
        .filter(|(_, &j)| j == survivor.label)
        .map(|(s, _)| s)
        .collect();
    if agreed.is_empty() {
        return Err(Rejection {
            reason: FunnelReason::JudgeDisagreement,
            detail: format!(
                "the judge read {} summaries and disagreed with label {} on all",
                judge.len(),
                survivor.label.as_u8()
            ),
        });
    }
    let mut known: Vec<(usize, Language, &String)> = agreed
        .iter()
        .filter_map(|(i, lang, summary)| {
            Some((
                *i,
                lang.parse::<Language>()
                    .ok()
                    .filter(|l| l.as_str() == lang)?,
                summary,
            ))
        })
        .collect();
    if known.is_empty() {
        let langs: Vec<&str> = agreed.iter().map(|s| s.1.as_str()).collect();
        return Err(Rejection {
            reason: FunnelReason::UnknownLanguage,
            detail: format!("languages: {}", langs.join(",")),
        });
    }
    known.sort_by(|a, b| {
        let (sa, sb) = (&samples[a.0], &samples[b.0]);
        sb.label_prob
            .total_cmp(&sa.label_prob)
            .then(sa.temperature.total_cmp(&sb.temperature))
            .then(a.0.cmp(&b.0))
    });
    let (sample, language, summary) = known[0];
    Ok(Accepted {
        sample,
        label: survivor.label,
        language,
        summary: summary.clone(),
    })
}

/// Counts of the funnel: scripts entering each stage and leaving it by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Funnel {
    pub input: u64,
    pub rejected: BTreeMap<FunnelReason, u64>,
    pub accepted: u64,
}

impl Funnel {
    pub fn reject(&mut self, reason: FunnelReason) {
        self.input += 1;
        *self.rejected.entry(reason).or_default() += 1;
    }

    pub fn accept(&mut self) {
        self.input += 1;
        self.accepted += 1;
    }

    pub fn merge(&mut self, other: &Funnel) {
        self.input += other.input;
        self.accepted += other.accepted;
        for (r, n) in &other.rejected {
            *self.rejected.entry(*r).or_default() += n;
        }
    }

    /// Scripts still in the funnel after each stage, in order: (stage, remaining).
    pub fn remaining(&self) -> Vec<(&'static str, u64)> {
        let mut left = self.input;
        let mut out = Vec::new();
        let mut stages: Vec<&'static str> = FunnelReason::ALL.iter().map(|r| r.stage()).collect();
        stages.dedup();
        for stage in stages {
            let dropped: u64 = self
                .rejected
                .iter()
                .filter(|(r, _)| r.stage() == stage)
                .map(|(_, n)| n)
                .sum();
            left -= dropped;
            out.push((stage, left));
        }
        out
    }

    /// As rows of the funnel dataset: every stage's drops by reason, then `accepted`.
    pub fn rows(&self) -> Vec<FunnelRow> {
        let mut rows: Vec<FunnelRow> = FunnelReason::ALL
            .iter()
            .map(|r| FunnelRow {
                stage: r.stage().into(),
                reason: r.as_str().into(),
                count: self.rejected.get(r).copied().unwrap_or(0),
            })
            .collect();
        rows.push(FunnelRow {
            stage: "input".into(),
            reason: "scripts".into(),
            count: self.input,
        });
        rows.push(FunnelRow {
            stage: "output".into(),
            reason: "accepted".into(),
            count: self.accepted,
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f32, label: u8, prob: f32, language: &str) -> FilterSample {
        let response = serde_json::json!({"language": language, "label": label, "summary": format!("summary at {t}")}).to_string();
        FilterSample {
            temperature: t,
            response,
            label_prob: prob,
            finish: FinishReason::Stop,
        }
    }

    fn three(label: u8) -> Vec<FilterSample> {
        vec![
            sample(0.4, label, 0.97, "bash"),
            sample(0.6, label, 0.99, "bash"),
            sample(0.8, label, 0.95, "bash"),
        ]
    }

    fn reason(samples: &[FilterSample]) -> FunnelReason {
        before_judge(samples, 0.9).unwrap_err().reason
    }

    #[test]
    fn checks_apply_in_the_published_order() {
        // Empty beats malformed beats disagreement beats low confidence.
        let mut s = three(1);
        s[2].response.clear();
        s[0].response = "{\"language\":".into();
        s[1] = sample(0.6, 0, 0.5, "bash");
        assert_eq!(reason(&s), FunnelReason::Empty);
        s[2] = sample(0.8, 1, 0.99, "bash");
        assert_eq!(reason(&s), FunnelReason::Malformed);
        s[0] = sample(0.4, 1, 0.99, "bash");
        assert_eq!(reason(&s), FunnelReason::LabelDisagreement);
        s[1] = sample(0.6, 1, 0.5, "bash");
        let err = before_judge(&s, 0.9).unwrap_err();
        assert_eq!(err.reason, FunnelReason::LowConfidence);
        assert!(err.detail.contains("0.500 < 0.9"), "{}", err.detail);
        let mut t = three(0);
        t[1].finish = FinishReason::Length;
        assert_eq!(reason(&t), FunnelReason::Truncated);
        // NaN probabilities never pass.
        let mut n = three(0);
        n[0].label_prob = f32::NAN;
        assert_eq!(reason(&n), FunnelReason::LowConfidence);
    }

    #[test]
    fn early_stopped_samples_count_at_the_label_checks() {
        let mut s = three(1);
        s[2] = FilterSample {
            temperature: 0.8,
            response: "{\"language\": \"bash\", \"label\": 0".into(),
            label_prob: 0.99,
            finish: FinishReason::EarlyStopDisagree,
        };
        assert_eq!(reason(&s), FunnelReason::LabelDisagreement);
        s[2].response = "{\"language\": \"bash\", \"label\": 1".into();
        s[2].label_prob = 0.6;
        assert_eq!(reason(&s), FunnelReason::LowConfidence);
    }

    #[test]
    fn the_judge_and_language_checks_then_pick_the_most_confident_summary() {
        let s = vec![
            sample(0.4, 1, 0.97, "bash"),
            sample(0.6, 1, 0.99, "cobol"),
            sample(0.8, 1, 0.99, "bash"),
        ];
        let survivor = before_judge(&s, 0.9).unwrap();
        assert_eq!(survivor.label, Label::Malicious);
        assert_eq!(survivor.summaries.len(), 3);
        let m = Label::Malicious;
        let b = Label::Benign;
        let err = after_judge(&survivor, &[b, b, b], &s).unwrap_err();
        assert_eq!(err.reason, FunnelReason::JudgeDisagreement);
        // The judge agrees only with the unknown-language sample.
        assert_eq!(
            after_judge(&survivor, &[b, m, b], &s).unwrap_err().reason,
            FunnelReason::UnknownLanguage
        );
        // 0.99 at t=0.8 beats 0.97 at t=0.4; the 0.99 at t=0.6 has no known language.
        let a = after_judge(&survivor, &[m, m, m], &s).unwrap();
        assert_eq!(
            (a.sample, a.language, a.summary.as_str()),
            (2, Language::Bash, "summary at 0.8")
        );
        // Ties in probability go to the lower temperature.
        let s = three(0)
            .into_iter()
            .map(|mut x| {
                x.label_prob = 0.95;
                x
            })
            .collect::<Vec<_>>();
        let survivor = before_judge(&s, 0.9).unwrap();
        assert_eq!(after_judge(&survivor, &[b, b, b], &s).unwrap().sample, 0);
        // Short names are not the answer's schema: "sh" is not a language here.
        let s = vec![sample(0.4, 0, 0.97, "sh")];
        let survivor = before_judge(&s, 0.9).unwrap();
        assert_eq!(
            after_judge(&survivor, &[b], &s).unwrap_err().reason,
            FunnelReason::UnknownLanguage
        );
    }

    #[test]
    fn funnel_counts_add_up() {
        let mut f = Funnel::default();
        for r in [
            FunnelReason::Empty,
            FunnelReason::Malformed,
            FunnelReason::Truncated,
            FunnelReason::LowConfidence,
            FunnelReason::LowConfidence,
        ] {
            f.reject(r);
        }
        f.accept();
        f.accept();
        let mut g = Funnel::default();
        g.reject(FunnelReason::JudgeDisagreement);
        f.merge(&g);
        assert_eq!(f.input, 8);
        let rem = f.remaining();
        assert_eq!(rem[0], ("1-empty", 7));
        assert_eq!(rem[1], ("2-well-formed", 5));
        assert_eq!(rem.last().copied(), Some(("6-language", 2)));
        assert_eq!(rem.last().unwrap().1, f.accepted);
        let rows = f.rows();
        let dropped: u64 = rows
            .iter()
            .filter(|r| r.stage.starts_with(char::is_numeric))
            .map(|r| r.count)
            .sum();
        assert_eq!(dropped + f.accepted, f.input);
    }
}
