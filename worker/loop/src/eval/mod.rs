//! Scoring answers against references: what each iteration's evaluation report says about
//! an annotator, computable from files alone.
//!
//! Every sample (one answer of one temperature) counts once, so overall accuracies are
//! weighted by sample count, as published. An answer that is not a JSON object with a
//! non-empty `language`, a `label` of 0 or 1 and a non-empty `summary` is unparseable and
//! counts as wrong on both label and language; a reference script with no answer at all
//! counts as one unparseable sample, so a short answer file cannot raise the scores.

pub mod mcnemar;
pub mod text_metrics;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use automaldesc_common::types::{Label, Language};

pub use mcnemar::McNemar;

/// The reference of one test script.
#[derive(Clone, Debug, PartialEq)]
pub struct Reference {
    pub sha256: String,
    pub language: Language,
    pub label: Label,
    pub summary: String,
}

/// A response that parsed as a well-formed answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedAnswer {
    /// As written: not necessarily one of the five.
    pub language: String,
    pub label: Label,
    pub summary: String,
}

/// Parses one response; `None` when it is not a well-formed answer.
pub fn parse_response(response: &str) -> Option<ParsedAnswer> {
    let v: serde_json::Value = serde_json::from_str(response.trim()).ok()?;
    let o = v.as_object()?;
    let language = o.get("language")?.as_str()?.trim();
    let label = match o.get("label")? {
        serde_json::Value::Number(n) => n.as_u64().and_then(|x| u8::try_from(x).ok()),
        serde_json::Value::String(s) => s.trim().parse::<u8>().ok(),
        _ => None,
    }
    .and_then(Label::from_u8)?;
    let summary = o.get("summary")?.as_str()?.trim();
    if language.is_empty() || summary.is_empty() {
        return None;
    }
    Some(ParsedAnswer {
        language: language.to_string(),
        label,
        summary: summary.to_string(),
    })
}

/// A label-only answer (`{"language": ..., "label": ...}` with no `summary` key), as a
/// label-only evaluation writes it: it counts for label and language, not for the summary
/// metrics. `None` for anything else.
pub fn parse_label_only(response: &str) -> Option<ParsedAnswer> {
    let v: serde_json::Value = serde_json::from_str(response.trim()).ok()?;
    let o = v.as_object()?;
    if o.contains_key("summary") || o.len() != 2 {
        return None;
    }
    let language = o.get("language")?.as_str()?.trim();
    let label = o
        .get("label")?
        .as_u64()
        .and_then(|x| u8::try_from(x).ok())
        .and_then(Label::from_u8)?;
    (!language.is_empty()).then(|| ParsedAnswer {
        language: language.to_string(),
        label,
        summary: String::new(),
    })
}

/// A full answer, or a label-only one (with an empty summary).
fn parse_any(response: &str) -> Option<ParsedAnswer> {
    parse_response(response).or_else(|| parse_label_only(response))
}

/// Correct / total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub correct: u64,
    pub total: u64,
}

impl Accuracy {
    fn add(&mut self, ok: bool) {
        self.correct += u64::from(ok);
        self.total += 1;
    }

    pub fn rate(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }
}

/// Label and language accuracy of one language's scripts (or of all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub samples: u64,
    pub unparseable: u64,
    pub label: Accuracy,
    pub language: Accuracy,
}

/// Rows: the reference label (benign, malicious). Columns: predicted benign, predicted
/// malicious, no answer (unparseable or missing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub benign: [u64; 3],
    pub malicious: [u64; 3],
}

/// Precision, recall and F1 of the malicious class; an answerless sample on a malicious
/// script is a false negative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl Confusion {
    pub fn malicious_scores(&self) -> ClassScores {
        let tp = self.malicious[1] as f64;
        let fp = self.benign[1] as f64;
        let fn_ = (self.malicious[0] + self.malicious[2]) as f64;
        let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        let recall = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 0.0 };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        ClassScores {
            precision,
            recall,
            f1,
        }
    }
}

/// Summary quality of the well-formed answers against the reference summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TextScores {
    pub pairs: u64,
    pub bleu: f64,
    pub chrf: f64,
    pub rouge_l: f64,
}

/// One annotator's answers scored against the references.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub scripts: u64,
    /// Reference scripts without any answer (each counted as one unparseable sample).
    pub missing_scripts: u64,
    pub overall: Scores,
    pub per_language: BTreeMap<String, Scores>,
    pub confusion: Confusion,
    pub malicious: ClassScores,
    pub text: TextScores,
}

impl Evaluation {
    pub fn unparseable_fraction(&self) -> f64 {
        if self.overall.samples == 0 {
            0.0
        } else {
            self.overall.unparseable as f64 / self.overall.samples as f64
        }
    }
}

/// Answers keyed by script; each script may have several samples.
pub type Answers = HashMap<String, Vec<String>>;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{count} answered scripts have no reference, for example {example}")]
    UnknownScripts { count: usize, example: String },
    #[error("the references name script {0} twice")]
    DuplicateReference(String),
}

fn check_references(refs: &[Reference], answers: &Answers) -> Result<(), EvalError> {
    let mut seen = std::collections::HashSet::new();
    for r in refs {
        if !seen.insert(r.sha256.as_str()) {
            return Err(EvalError::DuplicateReference(r.sha256.clone()));
        }
    }
    let mut unknown: Vec<&String> = answers
        .keys()
        .filter(|k| !seen.contains(k.as_str()))
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        return Err(EvalError::UnknownScripts {
            count: unknown.len(),
            example: unknown[0].clone(),
        });
    }
    Ok(())
}

/// Scores `answers` against `refs`. Every answered script must have a reference.
pub fn evaluate(answers: &Answers, refs: &[Reference]) -> Result<Evaluation, EvalError> {
    check_references(refs, answers)?;
    let mut ev = Evaluation {
        scripts: refs.len() as u64,
        ..Evaluation::default()
    };
    let (mut hyps, mut golds) = (Vec::new(), Vec::new());
    for r in refs {
        // A script without any answer counts as one unparseable sample.
        let parsed: Vec<Option<ParsedAnswer>> = match answers.get(&r.sha256) {
            Some(responses) if !responses.is_empty() => {
                responses.iter().map(|s| parse_any(s)).collect()
            }
            _ => {
                ev.missing_scripts += 1;
                vec![None]
            }
        };
        let lang = ev
            .per_language
            .entry(r.language.as_str().to_string())
            .or_default();
        let truth_row = match r.label {
            Label::Benign => &mut ev.confusion.benign,
            Label::Malicious => &mut ev.confusion.malicious,
        };
        for p in &parsed {
            let (label_ok, lang_ok) = match p {
                Some(a) => (a.label == r.label, a.language == r.language.as_str()),
                None => (false, false),
            };
            truth_row[p.as_ref().map_or(2, |a| a.label.as_u8() as usize)] += 1;
            for s in [&mut ev.overall, &mut *lang] {
                s.samples += 1;
                s.unparseable += u64::from(p.is_none());
                s.label.add(label_ok);
                s.language.add(lang_ok);
            }
            if let Some(a) = p.as_ref().filter(|a| !a.summary.is_empty()) {
                hyps.push(a.summary.clone());
                golds.push(r.summary.as_str());
            }
        }
    }
    ev.malicious = ev.confusion.malicious_scores();
    let hyps: Vec<&str> = hyps.iter().map(String::as_str).collect();
    ev.text = TextScores {
        pairs: hyps.len() as u64,
        bleu: text_metrics::corpus_bleu(&hyps, &golds),
        chrf: text_metrics::corpus_chrf(&hyps, &golds),
        rouge_l: text_metrics::mean_rouge_l(&hyps, &golds),
    };
    Ok(ev)
}

/// One script's label decision: the majority of its well-formed samples' labels; a tie or
/// no well-formed sample is no decision.
pub fn script_label(responses: &[String]) -> Option<Label> {
    let mut votes = [0usize; 2];
    for a in responses.iter().filter_map(|s| parse_any(s)) {
        votes[a.label.as_u8() as usize] += 1;
    }
    match votes[1].cmp(&votes[0]) {
        std::cmp::Ordering::Greater => Some(Label::Malicious),
        std::cmp::Ordering::Less => Some(Label::Benign),
        std::cmp::Ordering::Equal => None,
    }
}

/// McNemar's tests of annotator A against annotator B over the reference scripts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub scripts: u64,
    /// Correctness: b = only A right, c = only B right.
    pub correctness: McNemar,
    /// Predicted class, as the published script tests it: b = A malicious and B benign,
    /// c = A benign and B malicious (scripts where either has no decision are left out).
    pub predicted_class: McNemar,
    /// Scripts left out of the predicted-class test.
    pub undecided: u64,
}

/// Compares two annotators script by script (see [`script_label`]).
pub fn compare(a: &Answers, b: &Answers, refs: &[Reference]) -> Result<Comparison, EvalError> {
    check_references(refs, a)?;
    check_references(refs, b)?;
    let none = Vec::new();
    let decisions: Vec<(Label, Option<Label>, Option<Label>)> = refs
        .iter()
        .map(|r| {
            let da = script_label(a.get(&r.sha256).unwrap_or(&none));
            let db = script_label(b.get(&r.sha256).unwrap_or(&none));
            (r.label, da, db)
        })
        .collect();
    let correctness = McNemar::from_pairs(
        decisions
            .iter()
            .map(|&(t, x, y)| (x == Some(t), y == Some(t))),
    );
    let decided: Vec<(Label, Label)> = decisions
        .iter()
        .filter_map(|&(_, x, y)| Some((x?, y?)))
        .collect();
    let (mut pb, mut pc) = (0, 0);
    for &(x, y) in &decided {
        pb += u64::from(x == Label::Malicious && y == Label::Benign);
        pc += u64::from(x == Label::Benign && y == Label::Malicious);
    }
    let predicted_class = McNemar::published(pb, pc);
    Ok(Comparison {
        scripts: refs.len() as u64,
        correctness,
        predicted_class,
        undecided: (decisions.len() - decided.len()) as u64,
    })
}

#[cfg(test)]
mod tests;

/// The evaluation as Markdown tables.
pub fn markdown(ev: &Evaluation) -> String {
    let pct = |x: f64| format!("{:.1}", 100.0 * x);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} scripts, {} samples, {} unparseable ({}%), {} scripts without an answer\n",
        ev.scripts,
        ev.overall.samples,
        ev.overall.unparseable,
        pct(ev.unparseable_fraction()),
        ev.missing_scripts
    );
    let _ = writeln!(
        s,
        "| language | samples | label acc % | language acc % | unparseable |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for (lang, sc) in ev
        .per_language
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain([("all", &ev.overall)])
    {
        let _ = writeln!(
            s,
            "| {lang} | {} | {} | {} | {} |",
            sc.samples,
            pct(sc.label.rate()),
            pct(sc.language.rate()),
            sc.unparseable
        );
    }
    let c = &ev.confusion;
    let _ = writeln!(
        s,
        "\n| truth \\ predicted | benign | malicious | no answer |"
    );
    let _ = writeln!(s, "|---|---|---|---|");
    let _ = writeln!(
        s,
        "| benign | {} | {} | {} |",
        c.benign[0], c.benign[1], c.benign[2]
    );
    let _ = writeln!(
        s,
        "| malicious | {} | {} | {} |",
        c.malicious[0], c.malicious[1], c.malicious[2]
    );
    let m = &ev.malicious;
    let _ = writeln!(
        s,
        "\nmalicious: precision {:.3}, recall {:.3}, F1 {:.3}",
        m.precision, m.recall, m.f1
    );
    let t = &ev.text;
    let _ = writeln!(
        s,
        "summaries ({} pairs): BLEU {:.2}, chrF {:.2}, ROUGE-L {:.2}",
        t.pairs, t.bleu, t.chrf, t.rouge_l
    );
    s
}

/// Both McNemar tests of a comparison as a Markdown table.
pub fn comparison_markdown(cmp: &Comparison) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| test | b | c | statistic | p-value | method |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for (name, t) in [
        (
            "correctness (b: only A right, c: only B right)",
            &cmp.correctness,
        ),
        (
            "predicted class, as published (b: A malicious / B benign, c: reverse)",
            &cmp.predicted_class,
        ),
    ] {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {:.4} | {:.4e} | {} |",
            t.b, t.c, t.statistic, t.p_value, t.method
        );
    }
    let _ = writeln!(
        s,
        "\nscripts without a decision on either side (left out of the class test): {}",
        cmp.undecided
    );
    s
}
