//! The parts of an iteration report that say whether the annotator learnt the label: the
//! ranking of P(malicious) (AUC) beside the accuracy, how it was trained (best epoch, the
//! validation scores of every epoch, targets cut), the prompt it read, the judge of check 5,
//! the funnel by class, and whether the test set can make McNemar speak at all.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::eval::McNemar;
use crate::report::{FunnelSummary, JudgeChoice};

/// Scores of P(malicious), from each answer's label and label probability.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabelScores {
    /// Samples with a label.
    pub samples: u64,
    /// Area under the ROC curve of P(malicious); none without both classes.
    pub auc: Option<f64>,
    /// Mean negative log-likelihood of the reference label.
    pub label_nll: Option<f64>,
}

impl LabelScores {
    /// From (P(malicious), reference label 0/1) pairs.
    pub fn of(scored: &[(f64, u8)]) -> Self {
        let mut v: Vec<&(f64, u8)> = scored.iter().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let pos = v.iter().filter(|x| x.1 == 1).count();
        let neg = v.len() - pos;
        let auc = (pos > 0 && neg > 0).then(|| {
            let mut rank_sum = 0.0;
            let mut i = 0;
            while i < v.len() {
                let mut j = i;
                while j < v.len() && v[j].0 == v[i].0 {
                    j += 1;
                }
                let mid = (i + 1 + j) as f64 / 2.0;
                rank_sum += mid * v[i..j].iter().filter(|x| x.1 == 1).count() as f64;
                i = j;
            }
            (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64
        });
        let nll = (!v.is_empty()).then(|| {
            v.iter()
                .map(|&&(p, l)| -(if l == 1 { p } else { 1.0 - p }).max(1e-12).ln())
                .sum::<f64>()
                / v.len() as f64
        });
        Self {
            samples: v.len() as u64,
            auc,
            label_nll: nll,
        }
    }
}

/// How the annotator was trained, from its lineage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    pub examples: u64,
    pub validation: u64,
    pub best_epoch: u32,
    pub label_threshold: f64,
    /// Targets the answer budget cut before their end (0 with the shipped configs).
    pub targets_cut: u64,
    pub summary_tokens: Option<usize>,
    pub seconds: f64,
    /// Per epoch: (epoch, validation label NLL, validation AUC, validation balanced
    /// accuracy, validation token loss); NaN written as null.
    pub epochs: Vec<serde_json::Value>,
}

/// The prompt the annotator read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptSummary {
    pub style: String,
    pub system_prompt_tokens: usize,
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "n/a".into()
    }
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.filter(|v| v.is_finite())
        .map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// The label scores, the training, the prompt and the summary reference as Markdown.
pub fn learning_markdown(
    label: Option<&LabelScores>,
    training: Option<&TrainingSummary>,
    prompt: Option<&PromptSummary>,
    summary_reference: Option<&str>,
) -> String {
    let mut s = String::new();
    if let Some(l) = label {
        let _ = writeln!(
            s,
            "\nP(malicious) over {} samples: AUC {}, label NLL {} (accuracy above is at the \
             annotator's calibrated threshold)",
            l.samples,
            num(l.auc, 3),
            num(l.label_nll, 4)
        );
    }
    if let Some(r) = summary_reference {
        let _ = writeln!(s, "\nsummary metrics against: {r}");
    }
    if let Some(p) = prompt {
        let _ = writeln!(
            s,
            "\nprompt: {} system message, {} tokens",
            p.style, p.system_prompt_tokens
        );
    }
    if let Some(t) = training {
        let _ = writeln!(
            s,
            "\n## Training\n\n{} examples, {} held out (stratified by label and language); best \
             epoch {} (lowest validation label NLL), label threshold {:.3}; targets cut by the \
             answer budget: {}; summaries cut to {} tokens; {:.0} s\n",
            t.examples,
            t.validation,
            t.best_epoch,
            t.label_threshold,
            t.targets_cut,
            t.summary_tokens
                .map_or("no limit".into(), |n| n.to_string()),
            t.seconds
        );
        let _ = writeln!(
            s,
            "| epoch | val label NLL | val AUC | val balanced acc | val token loss |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        for e in &t.epochs {
            let f = |k: &str| num(e.get(k).and_then(serde_json::Value::as_f64), 4);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                e.get("epoch")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
                f("label_nll"),
                f("auc"),
                f("balanced_accuracy"),
                f("token_loss")
            );
        }
    }
    s
}

/// Which judge ran check 5, its accuracy per class on the seed summaries, and the funnel
/// by class.
pub fn judge_and_classes_markdown(f: &FunnelSummary) -> String {
    let mut s = String::new();
    if let Some(j) = &f.judge {
        let _ = writeln!(s, "\n## The judge of check 5\n\n{}", judge_line(j));
    }
    if !f.accepted_by_label.is_empty() || !f.rejected_by_label.is_empty() {
        let get =
            |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let _ = writeln!(
            s,
            "\naccepted by label: benign {}, malicious {}; rejected by the label their samples \
             agreed on: benign {}, malicious {}, none {}",
            get(&f.accepted_by_label, "benign"),
            get(&f.accepted_by_label, "malicious"),
            get(&f.rejected_by_label, "benign"),
            get(&f.rejected_by_label, "malicious"),
            get(&f.rejected_by_label, "none")
        );
    }
    s
}

fn judge_line(j: &JudgeChoice) -> String {
    let score = |x: &crate::report::JudgeScore| {
        format!(
            "benign {}, malicious {}, balanced {} on {} seed summaries",
            pct(x.benign_accuracy),
            pct(x.malicious_accuracy),
            pct(x.balanced_accuracy),
            x.scripts
        )
    };
    let mut line = format!("base judge: {}", score(&j.base));
    if let Some(t) = &j.trained {
        let _ = write!(
            line,
            "; trained judge adapter (seed hold-out): {}",
            score(t)
        );
    }
    let _ = write!(
        line,
        "; required balanced accuracy {}. Check 5 {} ({} judge).",
        pct(j.min_accuracy),
        if j.check5 {
            "ran"
        } else {
            "was skipped: no judge earned its vote"
        },
        j.judge
    );
    line
}

/// A note when `scripts` paired test scripts cannot give McNemar p < 0.01 even if every
/// one were discordant in the same direction.
pub fn mcnemar_power_note(scripts: u64) -> Option<String> {
    let best = McNemar::best_possible_p(scripts);
    (best >= 0.01).then(|| {
        format!(
            "{scripts} test scripts cannot show a difference at p < 0.01 even if every one \
             changed in the same direction (best possible p = {best:.3}): use 8 or more"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_scores_rank_and_score_the_probabilities() {
        let s = LabelScores::of(&[(0.9, 1), (0.4, 1), (0.5, 0), (0.1, 0)]);
        assert_eq!(s.samples, 4);
        assert!((s.auc.unwrap() - 0.75).abs() < 1e-12);
        let want = -(0.9f64.ln() + 0.4f64.ln() + 0.5f64.ln() + 0.9f64.ln()) / 4.0;
        assert!((s.label_nll.unwrap() - want).abs() < 1e-12);
        assert_eq!(LabelScores::of(&[(0.9, 1)]).auc, None);
    }

    #[test]
    fn a_test_set_too_small_for_mcnemar_says_so() {
        let note = mcnemar_power_note(7).unwrap();
        assert!(
            note.contains("7 test scripts") && note.contains("p < 0.01"),
            "{note}"
        );
        assert_eq!(mcnemar_power_note(8), None);
    }
}
