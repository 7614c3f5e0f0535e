//! The per-iteration report of a self-training run: the evaluation of annotator k on the
//! test set, McNemar's tests against the annotator before it, the filter funnel of the
//! iteration, and accuracies across iterations; as JSON, Markdown and SVG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

mod charts;
pub use charts::{grouped_bars_svg, hbar_svg};

use crate::eval::{self, Comparison, Evaluation};
use crate::filter::Funnel;
use crate::report_sections::{
    judge_and_classes_markdown, learning_markdown, mcnemar_power_note, LabelScores, PromptSummary,
    TrainingSummary,
};
use automaldesc_common::schema::FunnelReason;

/// What the filter did to one iteration's unlabelled corpus.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FunnelSummary {
    /// Distinct scripts of the unlabelled corpus.
    pub unlabelled: u64,
    /// Scripts that never reached the filter (quarantined by an earlier stage).
    pub unprocessed: u64,
    /// Scripts the filter saw.
    pub filtered: u64,
    /// Rejections by reason (`FunnelReason::as_str`).
    pub rejected: BTreeMap<String, u64>,
    /// Scripts left after each funnel stage, in order.
    pub remaining: Vec<(String, u64)>,
    pub accepted: u64,
    /// Accepted scripts that are also seed scripts (the seed's label is kept).
    pub accepted_in_seed: u64,
    pub seed: u64,
    /// Rows of the next training set (seed plus accepted).
    pub training_set: u64,
    /// Decode tokens of the generate stage, and the ones early stop saved (an upper bound).
    pub generated_tokens: u64,
    pub saved_tokens: u64,
    /// Accepted pseudo-labels by label ("benign", "malicious").
    #[serde(default)]
    pub accepted_by_label: BTreeMap<String, u64>,
    /// Rejected scripts by the label their samples agreed on, where they did ("benign",
    /// "malicious"; "none" otherwise).
    #[serde(default)]
    pub rejected_by_label: BTreeMap<String, u64>,
    /// The judge of check 5, as the run chose it on the seed summaries.
    #[serde(default)]
    pub judge: Option<JudgeChoice>,
}

/// Which judge a run uses for check 5, and how well each candidate did on the seed split's
/// reference summaries (never the test split's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeChoice {
    /// "base", "adapter" or "none" (check 5 skipped).
    pub judge: String,
    pub check5: bool,
    /// The balanced accuracy a judge needs to vote.
    pub min_accuracy: f64,
    /// The base judge on every seed summary.
    pub base: JudgeScore,
    /// The trained judge on the seed hold-out, when one was trained.
    pub trained: Option<JudgeScore>,
    pub seconds: f64,
}

/// A judge's accuracy per class and balanced, at P(malicious) >= 0.5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JudgeScore {
    pub scripts: usize,
    pub benign_accuracy: f64,
    pub malicious_accuracy: f64,
    pub balanced_accuracy: f64,
}

impl JudgeScore {
    /// From (P(malicious), reference label 0/1) pairs.
    pub fn of(scores: &[(f64, u8)]) -> Self {
        let recall = |c: u8| {
            let of: Vec<&(f64, u8)> = scores.iter().filter(|s| s.1 == c).collect();
            let right = of.iter().filter(|s| (s.0 >= 0.5) == (c == 1)).count();
            if of.is_empty() {
                f64::NAN
            } else {
                right as f64 / of.len() as f64
            }
        };
        let (b, m) = (recall(0), recall(1));
        Self {
            scripts: scores.len(),
            benign_accuracy: b,
            malicious_accuracy: m,
            balanced_accuracy: (b + m) / 2.0,
        }
    }

    pub fn passes(&self, min: f64) -> bool {
        self.balanced_accuracy >= min
    }
}

impl FunnelSummary {
    /// The funnel's table rows (after the header): the unlabelled scripts, the row named
    /// `unprocessed` for scripts quarantined before the filter, then each check with its
    /// rejections by reason and what remains.
    pub fn write_rows(&self, s: &mut String, unprocessed: &str) {
        let _ = writeln!(s, "| unlabelled scripts | | {} |", self.unlabelled);
        let _ = writeln!(
            s,
            "| {unprocessed} | {} | {} |",
            self.unprocessed, self.filtered
        );
        for (stage, left) in &self.remaining {
            let dropped: Vec<String> = FunnelReason::ALL
                .iter()
                .filter(|r| r.stage() == stage)
                .map(|r| {
                    let n = self.rejected.get(r.as_str()).copied().unwrap_or(0);
                    format!("{} {n}", r.as_str())
                })
                .collect();
            let _ = writeln!(s, "| {stage} | {} | {left} |", dropped.join(", "));
        }
    }

    pub fn from_funnel(f: &Funnel) -> Self {
        Self {
            filtered: f.input,
            rejected: FunnelReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_string(),
                        f.rejected.get(r).copied().unwrap_or(0),
                    )
                })
                .collect(),
            remaining: f
                .remaining()
                .into_iter()
                .map(|(s, n)| (s.to_string(), n))
                .collect(),
            accepted: f.accepted,
            ..Self::default()
        }
    }

    /// Every unlabelled script is accepted, rejected by the filter, or unprocessed.
    pub fn adds_up(&self) -> bool {
        let rejected: u64 = self.rejected.values().sum();
        self.filtered == self.accepted + rejected
            && self.unlabelled == self.filtered + self.unprocessed
            && self.remaining.last().map(|r| r.1) == Some(self.accepted)
    }
}

/// One annotator's accuracies, for the across-iterations chart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// "base", "V1", "V2"...
    pub annotator: String,
    pub label_accuracy: f64,
    pub language_accuracy: f64,
    /// Label accuracy per language.
    pub per_language: BTreeMap<String, f64>,
}

impl HistoryPoint {
    pub fn of(annotator: &str, ev: &Evaluation) -> Self {
        Self {
            annotator: annotator.to_string(),
            label_accuracy: ev.overall.label.rate(),
            language_accuracy: ev.overall.language.rate(),
            per_language: ev
                .per_language
                .iter()
                .map(|(l, s)| (l.clone(), s.label.rate()))
                .collect(),
        }
    }
}

/// The judge's preference between two annotators' summaries of the same scripts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Preference {
    pub scripts: u64,
    /// Scripts where both orders preferred the newer summary / the older one.
    pub newer_wins: u64,
    pub older_wins: u64,
    /// Scripts where the two orders disagreed (position bias): counted as ties.
    pub orders_disagree: u64,
    /// `newer_wins / (newer_wins + older_wins)`; none without decided scripts.
    pub win_rate: Option<f64>,
}

/// The judge's accuracy on the test references' own summaries: how far its verdicts (check
/// 5 of the filter) can be trusted. The published judge: 99.5%.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeCheck {
    pub model_id: String,
    /// Correct verdicts on benign and on malicious references.
    pub benign: crate::eval::Accuracy,
    pub malicious: crate::eval::Accuracy,
}

impl JudgeCheck {
    pub fn accuracy(&self) -> f64 {
        let total = self.benign.total + self.malicious.total;
        if total == 0 {
            0.0
        } else {
            (self.benign.correct + self.malicious.correct) as f64 / total as f64
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IterationReport {
    pub run: String,
    pub iteration: u32,
    /// "V1", "V2"... ("base" for the model before training).
    pub annotator: String,
    pub model_id: String,
    pub evaluation: Evaluation,
    /// McNemar against the previous annotator, and its name.
    pub previous: Option<(String, Comparison)>,
    pub funnel: Option<FunnelSummary>,
    pub preference: Option<Preference>,
    /// The judge on the references' summaries (in the base model's report).
    #[serde(default)]
    pub judge_check: Option<JudgeCheck>,
    /// Every annotator so far, this one last.
    pub history: Vec<HistoryPoint>,
    /// AUC and NLL of P(malicious) over the test samples.
    #[serde(default)]
    pub label_scores: Option<LabelScores>,
    /// How the annotator was trained (none for the base model).
    #[serde(default)]
    pub training: Option<TrainingSummary>,
    #[serde(default)]
    pub prompt: Option<PromptSummary>,
    /// What the summary metrics compared the answers against.
    #[serde(default)]
    pub summary_reference: Option<String>,
}

impl IterationReport {
    pub fn markdown(&self, funnel_chart: Option<&str>, languages_chart: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Run {}: iteration {} ({})\n\nmodel `{}`\n",
            self.run, self.iteration, self.annotator, self.model_id
        );
        let _ = writeln!(s, "## Test set\n");
        s.push_str(&eval::markdown(&self.evaluation));
        s.push_str(&learning_markdown(
            self.label_scores.as_ref(),
            None,
            self.prompt.as_ref(),
            self.summary_reference.as_deref(),
        ));
        if let Some((name, cmp)) = &self.previous {
            let _ = writeln!(
                s,
                "\n## McNemar: {name} (A) against {} (B), {} scripts\n",
                self.annotator, cmp.scripts
            );
            s.push_str(&eval::comparison_markdown(cmp));
            if let Some(note) = mcnemar_power_note(cmp.scripts) {
                let _ = writeln!(s, "\n{note}");
            }
        }
        if self.training.is_some() {
            s.push_str(&learning_markdown(None, self.training.as_ref(), None, None));
        }
        if let Some(j) = &self.judge_check {
            let _ = writeln!(
                s,
                "\n## The judge on the reference summaries\n\n`{}` read the {} test \
                 references' summaries: {:.1}% correct (benign {}/{}, malicious {}/{}); the \
                 published judge: 99.5%",
                j.model_id,
                j.benign.total + j.malicious.total,
                100.0 * j.accuracy(),
                j.benign.correct,
                j.benign.total,
                j.malicious.correct,
                j.malicious.total
            );
        }
        if let Some(p) = &self.preference {
            let _ = writeln!(
                s,
                "\n## Judge preference, {} against the previous annotator\n\n{} short test \
                 scripts, both orders asked: newer preferred {}, older preferred {}, orders \
                 disagree {} ({:.1}%); win rate {}",
                self.annotator,
                p.scripts,
                p.newer_wins,
                p.older_wins,
                p.orders_disagree,
                100.0 * p.orders_disagree as f64 / (p.scripts.max(1) as f64),
                p.win_rate
                    .map_or("undefined (no script decided)".to_string(), |w| format!(
                        "{w:.3}"
                    ))
            );
        }
        if let Some(f) = &self.funnel {
            let _ = writeln!(s, "\n## Filter funnel\n");
            let _ = writeln!(s, "| stage | rejected | remaining |");
            let _ = writeln!(s, "|---|---|---|");
            f.write_rows(&mut s, "0-unprocessed (quarantined)");
            let _ = writeln!(
                s,
                "\naccepted {} of {} ({:.1}%); next training set {} rows (seed {}, accepted \
                 {}, of which {} already in the seed)",
                f.accepted,
                f.unlabelled,
                100.0 * f.accepted as f64 / f.unlabelled.max(1) as f64,
                f.training_set,
                f.seed,
                f.accepted,
                f.accepted_in_seed
            );
            let _ = writeln!(
                s,
                "\ndecode tokens: {} generated, early stop saved at most {} ({:.1}% of what \
                 decoding would have cost without it)",
                f.generated_tokens,
                f.saved_tokens,
                100.0 * f.saved_tokens as f64 / (f.generated_tokens + f.saved_tokens).max(1) as f64
            );
            s.push_str(&judge_and_classes_markdown(f));
            if let Some(chart) = funnel_chart {
                let _ = writeln!(s, "\n![funnel]({chart})");
            }
        }
        let _ = writeln!(s, "\n## Across iterations (label accuracy %)\n");
        let langs: Vec<&String> = self
            .history
            .iter()
            .flat_map(|h| h.per_language.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = write!(s, "| annotator | all | language acc |");
        for l in &langs {
            let _ = write!(s, " {l} |");
        }
        let _ = writeln!(s, "\n|---|---|---|{}", "---|".repeat(langs.len()));
        for h in &self.history {
            let _ = write!(
                s,
                "| {} | {:.1} | {:.1} |",
                h.annotator,
                100.0 * h.label_accuracy,
                100.0 * h.language_accuracy
            );
            for l in &langs {
                match h.per_language.get(*l) {
                    Some(a) => {
                        let _ = write!(s, " {:.1} |", 100.0 * a);
                    }
                    None => s.push_str(" |"),
                }
            }
            s.push('\n');
        }
        let _ = writeln!(s, "\n![accuracy per language]({languages_chart})");
        s
    }

    /// Scripts left after each funnel stage, as a horizontal bar chart.
    pub fn funnel_svg(&self) -> Option<String> {
        let f = self.funnel.as_ref()?;
        let mut bars = vec![("unlabelled".to_string(), f.unlabelled as f64)];
        bars.push(("reached filter".to_string(), f.filtered as f64));
        bars.extend(f.remaining.iter().map(|(s, n)| (s.clone(), *n as f64)));
        Some(hbar_svg(
            &format!(
                "Filter funnel, iteration {}: scripts remaining",
                self.iteration
            ),
            &bars,
        ))
    }

    /// Label accuracy per language (and overall) for every annotator so far.
    pub fn languages_svg(&self) -> String {
        let mut cats: Vec<String> = self
            .history
            .iter()
            .flat_map(|h| h.per_language.keys().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        cats.push("all".into());
        let series: Vec<(String, Vec<f64>)> = self
            .history
            .iter()
            .map(|h| {
                let vals = cats
                    .iter()
                    .map(|c| {
                        if c == "all" {
                            h.label_accuracy
                        } else {
                            h.per_language.get(c).copied().unwrap_or(0.0)
                        }
                    })
                    .map(|v| 100.0 * v)
                    .collect();
                (h.annotator.clone(), vals)
            })
            .collect();
        grouped_bars_svg("Label accuracy % per language", &cats, &series, 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{evaluate, Reference};
    use automaldesc_common::types::{Label, Language};

    fn funnel() -> FunnelSummary {
        let mut f = Funnel::default();
        for r in [
            FunnelReason::Truncated,
            FunnelReason::LabelDisagreement,
            FunnelReason::LabelDisagreement,
        ] {
            f.reject(r);
        }
        f.accept();
        f.accept();
        FunnelSummary {
            unlabelled: 6,
            unprocessed: 1,
            seed: 3,
            training_set: 5,
            generated_tokens: 900,
            saved_tokens: 100,
            ..FunnelSummary::from_funnel(&f)
        }
    }

    #[test]
    fn a_funnel_adds_up_only_when_every_script_is_counted_once() {
        let f = funnel();
        assert_eq!(f.filtered, 5);
        assert_eq!(f.rejected["label-disagreement"], 2);
        assert_eq!(f.remaining.last(), Some(&("6-language".to_string(), 2)));
        assert!(f.adds_up());
        let lost = FunnelSummary {
            unlabelled: 7,
            ..f.clone()
        };
        assert!(!lost.adds_up(), "a script neither filtered nor unprocessed");
        let mut double = f;
        double.accepted += 1;
        assert!(!double.adds_up());
    }

    fn report() -> IterationReport {
        let refs = vec![
            Reference {
                sha256: "a".into(),
                language: Language::Bash,
                label: Label::Malicious,
                summary: "Downloads and runs a payload.".into(),
            },
            Reference {
                sha256: "b".into(),
                language: Language::Python,
                label: Label::Benign,
                summary: "Prints a greeting.".into(),
            },
        ];
        let answers = [
            (
                "a",
                r#"{"language": "bash", "label": 1, "summary": "Downloads a payload."}"#,
            ),
            (
                "b",
                r#"{"language": "bash", "label": 1, "summary": "Prints."}"#,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect();
        let ev = evaluate(&answers, &refs).unwrap();
        IterationReport {
            run: "r".into(),
            iteration: 1,
            annotator: "V1".into(),
            model_id: "m".into(),
            history: vec![
                HistoryPoint {
                    annotator: "base".into(),
                    label_accuracy: 0.25,
                    language_accuracy: 0.5,
                    per_language: [("bash".to_string(), 0.0), ("python".to_string(), 0.5)]
                        .into_iter()
                        .collect(),
                },
                HistoryPoint::of("V1", &ev),
            ],
            evaluation: ev,
            previous: None,
            funnel: Some(funnel()),
            preference: Some(Preference {
                scripts: 4,
                newer_wins: 2,
                older_wins: 1,
                orders_disagree: 1,
                win_rate: Some(2.0 / 3.0),
            }),
            judge_check: Some(JudgeCheck {
                model_id: "j".into(),
                benign: crate::eval::Accuracy {
                    correct: 3,
                    total: 4,
                },
                malicious: crate::eval::Accuracy {
                    correct: 4,
                    total: 4,
                },
            }),
            label_scores: None,
            training: None,
            prompt: None,
            summary_reference: None,
        }
    }

    #[test]
    fn the_markdown_carries_the_figures() {
        let r = report();
        assert_eq!(r.history[1].label_accuracy, 0.5);
        assert_eq!(r.history[1].per_language["python"], 0.0);
        let md = r.markdown(Some("funnel.svg"), "languages.svg");
        for needle in [
            "# Run r: iteration 1 (V1)",
            "| 3-label-agreement | label-disagreement 2 | 2 |",
            "| 2-well-formed | malformed 0, truncated 1 | 4 |",
            "accepted 2 of 6 (33.3%)",
            "early stop saved at most 100 (10.0%",
            "newer preferred 2, older preferred 1, orders disagree 1 (25.0%); win rate 0.667",
            "| base | 25.0 | 50.0 | 0.0 | 50.0 |",
            "| V1 | 50.0 | 50.0 | 100.0 | 0.0 |",
            "![funnel](funnel.svg)",
            "read the 8 test references' summaries: 87.5% correct (benign 3/4, malicious 4/4)",
        ] {
            assert!(md.contains(needle), "{needle:?} missing from\n{md}");
        }
    }

    #[test]
    fn the_charts_have_a_bar_per_value() {
        let r = report();
        let funnel = r.funnel_svg().unwrap();
        // unlabelled, reached filter, and the six funnel stages.
        assert_eq!(funnel.matches("<rect").count(), 8);
        assert!(funnel.starts_with("<svg") && funnel.trim_end().ends_with("</svg>"));
        let langs = r.languages_svg();
        // (bash, python, all) × (base, V1) bars plus a legend swatch per annotator.
        assert_eq!(langs.matches("<rect").count(), 3 * 2 + 2);
        // The base model's python bar is half the plot height (200 px).
        assert!(langs.contains("height=\"100.0\""), "{langs}");
        let none = IterationReport { funnel: None, ..r };
        assert!(none.funnel_svg().is_none());
    }
}
