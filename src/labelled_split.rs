//! A labelled split (`scripts/` + `labels/`) read for annotation, and the score of answers
//! against its labels.

use std::collections::HashMap;
use std::fmt::Write;

use anyhow::Context;
use automaldesc_common::parquet_io::read_dataset;
use automaldesc_common::schema::{CorpusRow, LabelledRow};
use automaldesc_common::store::{block_on, open_object};
use automaldesc_loop::spec::read_labels;
use automaldesc_runtime::annotate::ScriptAnnotation;

/// Scripts as (sha256, bytes).
pub type Scripts = Vec<(String, Vec<u8>)>;

/// Scripts (name = sha256) and their labels, in label order, the first `limit` of them.
pub fn read(url: &str, limit: Option<usize>) -> anyhow::Result<(Scripts, Vec<LabelledRow>)> {
    let base = url.trim_end_matches('/');
    let labels = read_labels(base, limit)?;
    let u = format!("{base}/scripts");
    let (store, prefix) = open_object(&u).with_context(|| format!("opening {u}"))?;
    let scripts: Vec<CorpusRow> = block_on(read_dataset(store, &prefix))??;
    let by_sha: HashMap<&str, &CorpusRow> =
        scripts.iter().map(|r| (r.sha256.as_str(), r)).collect();
    let mut out = Vec::with_capacity(labels.len());
    for l in &labels {
        let row = by_sha
            .get(l.sha256.as_str())
            .with_context(|| format!("label {} has no script in {base}/scripts", l.sha256))?;
        out.push((l.sha256.clone(), row.content.clone()));
    }
    Ok((out, labels))
}

/// `n` of the pairs, evenly spaced (row `i * len / n`), in their order.
pub fn spread<T, U>(a: Vec<T>, b: Vec<U>, n: usize) -> (Vec<T>, Vec<U>) {
    let len = a.len();
    assert_eq!(len, b.len(), "scripts and labels pair up");
    if n >= len {
        return (a, b);
    }
    let keep: std::collections::HashSet<usize> = (0..n).map(|i| i * len / n).collect();
    a.into_iter()
        .zip(b)
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, pair)| pair)
        .unzip()
}

/// Counts behind [`score`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScoreCounts {
    pub scripts: usize,
    pub samples: usize,
    pub label_ok: usize,
    /// Scripts whose majority label over their samples is right.
    pub majority_ok: usize,
    pub language_ok: usize,
    pub unparsed: usize,
}

/// Label and language accuracy per sample and by majority over a script's samples.
pub fn score_counts(results: &[ScriptAnnotation], truth: &[LabelledRow]) -> ScoreCounts {
    let mut c = ScoreCounts {
        scripts: results.len(),
        ..ScoreCounts::default()
    };
    for (r, t) in results.iter().zip(truth) {
        let want = t.label.as_u8();
        let mut votes = [0usize; 2];
        for s in &r.samples {
            c.samples += 1;
            if serde_json::from_str::<serde_json::Value>(&s.response).is_err() {
                c.unparsed += 1;
            }
            if let Some(l) = s.label {
                votes[usize::from(l)] += 1;
                c.label_ok += usize::from(l == want);
            }
            c.language_ok += usize::from(s.language.as_deref() == Some(t.language.as_str()));
        }
        c.majority_ok += usize::from(u8::from(votes[1] > votes[0]) == want);
    }
    c
}

/// [`score_counts`] as a small report.
pub fn score(results: &[ScriptAnnotation], truth: &[LabelledRow]) -> String {
    let ScoreCounts {
        scripts,
        samples: n,
        label_ok,
        majority_ok,
        language_ok: lang_ok,
        unparsed,
    } = score_counts(results, truth);
    let pct = |a: usize, b: usize| 100.0 * a as f64 / b.max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scored {scripts} scripts, {n} samples against the labels:"
    );
    let _ = writeln!(
        s,
        "  label accuracy per sample     {:5.1}%",
        pct(label_ok, n)
    );
    let _ = writeln!(
        s,
        "  label accuracy, majority vote {:5.1}%",
        pct(majority_ok, scripts)
    );
    let _ = writeln!(
        s,
        "  language accuracy per sample  {:5.1}%",
        pct(lang_ok, n)
    );
    let _ = write!(
        s,
        "  unparseable answers           {:5.1}%",
        pct(unparsed, n)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn spread_takes_evenly_spaced_pairs_in_order() {
        let a: Vec<usize> = (0..10).collect();
        let b: Vec<String> = (0..10).map(|i| format!("l{i}")).collect();
        let (x, y) = spread(a.clone(), b.clone(), 4);
        assert_eq!(x, vec![0, 2, 5, 7]);
        assert_eq!(y, vec!["l0", "l2", "l5", "l7"]);
        // Five languages of 20 scripts each, stored in order: 10 picks hit every language twice.
        let langs: Vec<usize> = (0..100).map(|i| i / 20).collect();
        let (picked, _) = spread(langs, vec![(); 100], 10);
        assert_eq!(picked, vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4]);
        assert_eq!(spread(a, b, 50).0.len(), 10);
    }
}
