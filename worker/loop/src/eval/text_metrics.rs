//! Summary quality against reference summaries: corpus BLEU and chrF as sacrebleu computes
//! them with its defaults, and ROUGE-L F1 as rouge-score computes it (no stemming), averaged
//! over pairs. Written from the published definitions; `tests/peer/text_metrics_reference.py`
//! computes the same numbers with the reference implementations for the tests.

use std::collections::HashMap;
use std::hash::Hash;

/// Whitespace as Python's `str.split()` sees it (Rust's `char::is_whitespace` lacks the
/// information separators U+001C..U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The characters sacrebleu's 13a tokenizer pads with spaces unconditionally.
fn is_13a_punct(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// One pass of a two-character pattern substitution, scanning like `re.sub` does: a match
/// consumes both characters, a miss emits one and moves on.
fn sub_pairs(
    text: &[char],
    hit: impl Fn(char, char) -> bool,
    repl: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 4);
    let mut i = 0;
    while i < text.len() {
        if i + 1 < text.len() && hit(text[i], text[i + 1]) {
            repl(text[i], text[i + 1], &mut out);
            i += 2;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// sacrebleu's default ("13a", mteval-v13a) tokenization of one segment.
pub fn tokenize_13a(segment: &str) -> Vec<String> {
    let mut line = segment
        .trim_end_matches(is_py_space)
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut padded = Vec::with_capacity(line.len() + 2);
    padded.push(' ');
    for c in line.chars() {
        if is_13a_punct(c) {
            padded.extend([' ', c, ' ']);
        } else {
            padded.push(c);
        }
    }
    padded.push(' ');
    let digit = |c: char| c.is_ascii_digit();
    let period = |c: char| c == '.' || c == ',';
    let s = sub_pairs(
        &padded,
        |a, b| !digit(a) && period(b),
        |a, b, o| o.extend([a, ' ', b, ' ']),
    );
    let s = sub_pairs(
        &s,
        |a, b| period(a) && !digit(b),
        |a, b, o| o.extend([' ', a, ' ', b]),
    );
    let s = sub_pairs(
        &s,
        |a, b| digit(a) && b == '-',
        |a, b, o| o.extend([a, ' ', b, ' ']),
    );
    let s: String = s.into_iter().collect();
    s.split(is_py_space)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn counts<T: Hash + Eq>(items: impl Iterator<Item = T>) -> HashMap<T, u64> {
    let mut m = HashMap::new();
    for it in items {
        *m.entry(it).or_insert(0) += 1;
    }
    m
}

/// Clipped matches between two n-gram count tables.
fn clipped<T: Hash + Eq>(hyp: &HashMap<T, u64>, reference: &HashMap<T, u64>) -> u64 {
    hyp.iter()
        .map(|(g, &n)| n.min(reference.get(g).copied().unwrap_or(0)))
        .sum()
}

/// Corpus BLEU (0..100): 4-gram, 13a tokens, brevity penalty over the corpus, sacrebleu's
/// default "exp" smoothing of orders without a match.
pub fn corpus_bleu(hypotheses: &[&str], references: &[&str]) -> f64 {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference per hypothesis"
    );
    const N: usize = 4;
    let (mut correct, mut total) = ([0u64; N], [0u64; N]);
    let (mut sys_len, mut ref_len) = (0u64, 0u64);
    for (h, r) in hypotheses.iter().zip(references) {
        let h = tokenize_13a(h);
        let r = tokenize_13a(r);
        sys_len += h.len() as u64;
        ref_len += r.len() as u64;
        for n in 1..=N {
            let hg = counts(h.windows(n));
            let rg = counts(r.windows(n));
            correct[n - 1] += clipped(&hg, &rg);
            total[n - 1] += h.len().saturating_sub(n - 1) as u64;
        }
    }
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    if correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let mut precisions = [0.0f64; N];
    let mut smooth = 1.0;
    for n in 0..N {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    // An order with no n-grams at all contributes log(0), as sacrebleu's `my_log` does.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / N as f64).exp()
}

/// Corpus chrF (0..100): character 6-grams without whitespace, beta 2, statistics summed
/// over the corpus, precision and recall averaged over the orders both sides have.
pub fn corpus_chrf(hypotheses: &[&str], references: &[&str]) -> f64 {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference per hypothesis"
    );
    const ORDER: usize = 6;
    const BETA: f64 = 2.0;
    let mut stats = [[0u64; 3]; ORDER];
    let squeeze = |s: &str| -> Vec<char> { s.chars().filter(|&c| !is_py_space(c)).collect() };
    for (h, r) in hypotheses.iter().zip(references) {
        let (h, r) = (squeeze(h), squeeze(r));
        for n in 1..=ORDER {
            let hg = counts(h.windows(n));
            let rg = counts(r.windows(n));
            stats[n - 1][0] += h.len().saturating_sub(n - 1) as u64;
            stats[n - 1][1] += r.len().saturating_sub(n - 1) as u64;
            stats[n - 1][2] += clipped(&hg, &rg);
        }
    }
    let (mut prec, mut rec, mut orders) = (0.0, 0.0, 0usize);
    for [n_hyp, n_ref, n_match] in stats {
        if n_hyp > 0 && n_ref > 0 {
            prec += n_match as f64 / n_hyp as f64;
            rec += n_match as f64 / n_ref as f64;
            orders += 1;
        }
    }
    if orders == 0 {
        return 0.0;
    }
    let (prec, rec) = (prec / orders as f64, rec / orders as f64);
    let f = BETA * BETA;
    if prec + rec == 0.0 {
        return 0.0;
    }
    100.0 * (1.0 + f) * prec * rec / (f * prec + rec)
}

/// rouge-score's tokens: lowercase, runs of anything but `[a-z0-9]` are separators.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diag = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[b.len()]
}

/// ROUGE-L F1 of one prediction against its reference (0..1).
pub fn rouge_l(prediction: &str, reference: &str) -> f64 {
    let (p, r) = (rouge_tokens(prediction), rouge_tokens(reference));
    if p.is_empty() || r.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&r, &p) as f64;
    let (precision, recall) = (lcs / p.len() as f64, lcs / r.len() as f64);
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// Mean ROUGE-L F1 over pairs, times 100.
pub fn mean_rouge_l(predictions: &[&str], references: &[&str]) -> f64 {
    assert_eq!(
        predictions.len(),
        references.len(),
        "one reference per prediction"
    );
    if predictions.is_empty() {
        return 0.0;
    }
    let sum: f64 = predictions
        .iter()
        .zip(references)
        .map(|(p, r)| rouge_l(p, r))
        .sum();
    100.0 * sum / predictions.len() as f64
}
