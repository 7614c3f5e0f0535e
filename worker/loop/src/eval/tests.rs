use super::text_metrics::{corpus_bleu, corpus_chrf, mean_rouge_l, rouge_l, tokenize_13a};
use super::*;

fn repo_file(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// The reference values: a fresh file from the reference implementations when CI made one
/// (`AUTOMALDESC_TEXT_METRICS_REFERENCE`), else the committed one.
fn reference() -> serde_json::Value {
    let path = std::env::var_os("AUTOMALDESC_TEXT_METRICS_REFERENCE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_file("tests/data/text_metrics_reference.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn examples() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_file("tests/data/text_metrics_examples.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: {got} vs reference {want}"
    );
}

#[test]
fn text_metrics_match_sacrebleu_and_rouge_score() {
    let reference = reference();
    let pairs = examples();
    for (i, (h, r)) in pairs.iter().enumerate() {
        let want = &reference["pairs"][i];
        let tokens: Vec<String> =
            serde_json::from_value(reference["tokens_13a"][i].clone()).unwrap();
        assert_eq!(tokenize_13a(h), tokens, "13a tokens of pair {i}");
        assert_close(
            &format!("BLEU {i}"),
            corpus_bleu(&[h], &[r]),
            want["bleu"].as_f64().unwrap(),
        );
        assert_close(
            &format!("chrF {i}"),
            corpus_chrf(&[h], &[r]),
            want["chrf"].as_f64().unwrap(),
        );
        assert_close(
            &format!("ROUGE-L {i}"),
            rouge_l(h, r),
            want["rouge_l"].as_f64().unwrap(),
        );
    }
    let hyps: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let refs: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    let c = &reference["corpus"];
    assert_close(
        "corpus BLEU",
        corpus_bleu(&hyps, &refs),
        c["bleu"].as_f64().unwrap(),
    );
    assert_close(
        "corpus chrF",
        corpus_chrf(&hyps, &refs),
        c["chrf"].as_f64().unwrap(),
    );
    assert_close(
        "mean ROUGE-L",
        mean_rouge_l(&hyps, &refs),
        100.0 * c["mean_rouge_l"].as_f64().unwrap(),
    );
    // Identical text scores full marks on all three.
    let same = ["Deletes shadow copies with vssadmin, then encrypts documents."];
    assert_close("BLEU of identical", corpus_bleu(&same, &same), 100.0);
    assert_close("chrF of identical", corpus_chrf(&same, &same), 100.0);
    assert_close("ROUGE-L of identical", mean_rouge_l(&same, &same), 100.0);
}

fn answer(language: &str, label: u8, summary: &str) -> String {
    serde_json::json!({"language": language, "label": label, "summary": summary}).to_string()
}

fn reference_row(sha: &str, language: Language, label: Label) -> Reference {
    Reference {
        sha256: sha.into(),
        language,
        label,
        summary: format!("reference summary of {sha}"),
    }
}

#[test]
fn responses_parse_only_when_well_formed() {
    assert!(parse_response(&answer("bash", 1, "x")).is_some());
    assert_eq!(
        parse_response(r#"{"language":"bash","label":"0","summary":"s"}"#)
            .unwrap()
            .label,
        Label::Benign
    );
    // A label-only answer is not a full answer, but counts as one of its own kind.
    let label_only = parse_label_only(r#"{"language": "bash", "label": 1}"#).unwrap();
    assert_eq!(
        (label_only.language.as_str(), label_only.label),
        ("bash", Label::Malicious)
    );
    assert!(parse_label_only(r#"{"language":"bash","label":1,"summary":"s"}"#).is_none());
    assert!(parse_label_only(r#"{"language":"bash","label":3}"#).is_none());
    for bad in [
        "",
        "not json",
        r#"{"language":"bash","label":1}"#,
        r#"{"language":"bash","label":2,"summary":"s"}"#,
        r#"{"language":"","label":1,"summary":"s"}"#,
        r#"{"language":"bash","label":1,"summary":"  "}"#,
        r#"{"language":"bash","label":1,"summary":"cut"#,
        r#"["bash",1,"s"]"#,
    ] {
        assert!(parse_response(bad).is_none(), "{bad:?} parsed");
    }
}

#[test]
fn accuracies_are_weighted_by_samples_and_unanswered_scripts_count_as_wrong() {
    let refs = vec![
        reference_row("a", Language::Bash, Label::Malicious),
        reference_row("b", Language::Bash, Label::Benign),
        reference_row("c", Language::Python, Label::Malicious),
        reference_row("d", Language::Python, Label::Benign),
    ];
    let mut answers = Answers::new();
    // a: 3 samples, 2 right labels, languages right; one says python.
    answers.insert(
        "a".into(),
        vec![
            answer("bash", 1, "s"),
            answer("bash", 1, "s"),
            answer("python", 0, "s"),
        ],
    );
    // b: one malformed, one false positive with the right language.
    answers.insert("b".into(), vec!["{broken".into(), answer("bash", 1, "s")]);
    // c: right label, wrong language.
    answers.insert("c".into(), vec![answer("javascript", 1, "s")]);
    // d: no answer at all.
    let ev = evaluate(&answers, &refs).unwrap();
    assert_eq!(ev.scripts, 4);
    assert_eq!(ev.missing_scripts, 1);
    assert_eq!(ev.overall.samples, 7);
    assert_eq!(ev.overall.unparseable, 2);
    assert_eq!(
        ev.overall.label,
        Accuracy {
            correct: 3,
            total: 7
        }
    );
    assert_eq!(
        ev.overall.language,
        Accuracy {
            correct: 3,
            total: 7
        }
    );
    let bash = ev.per_language["bash"];
    assert_eq!(
        (bash.samples, bash.label.correct, bash.language.correct),
        (5, 2, 3)
    );
    let py = ev.per_language["python"];
    assert_eq!(
        (
            py.samples,
            py.unparseable,
            py.label.correct,
            py.language.correct
        ),
        (2, 1, 1, 0)
    );
    assert_eq!(ev.confusion.malicious, [1, 3, 0]);
    assert_eq!(ev.confusion.benign, [0, 1, 2]);
    let m = ev.malicious;
    assert!(
        (m.precision - 0.75).abs() < 1e-12 && (m.recall - 0.75).abs() < 1e-12,
        "{m:?}"
    );
    assert_eq!(ev.text.pairs, 5);
    assert!((ev.unparseable_fraction() - 2.0 / 7.0).abs() < 1e-12);
}

#[test]
fn answers_for_unknown_scripts_are_refused() {
    let refs = vec![reference_row("a", Language::Bash, Label::Benign)];
    let mut answers = Answers::new();
    answers.insert("zz".into(), vec![answer("bash", 0, "s")]);
    let err = evaluate(&answers, &refs).unwrap_err().to_string();
    assert!(err.contains("zz") && err.contains("no reference"), "{err}");
    let twice = vec![refs[0].clone(), refs[0].clone()];
    assert!(evaluate(&Answers::new(), &twice)
        .unwrap_err()
        .to_string()
        .contains("twice"));
}

#[test]
fn comparison_counts_correctness_and_predicted_class_apart() {
    let mut refs = Vec::new();
    let (mut a, mut b) = (Answers::new(), Answers::new());
    // 6 scripts only A gets right (A and B disagree on the class), 2 only B, 3 both right,
    // 1 where B has no decision (A right), 1 where both are wrong with the same class.
    let mut add = |i: usize, truth: Label, la: Option<u8>, lb: Option<u8>| {
        let sha = format!("s{i}");
        refs.push(reference_row(&sha, Language::Batch, truth));
        if let Some(l) = la {
            a.insert(sha.clone(), vec![answer("batch", l, "s")]);
        }
        b.insert(
            sha,
            lb.map_or_else(
                || vec!["oops".to_string()],
                |l| vec![answer("batch", l, "s")],
            ),
        );
    };
    let mut i = 0;
    for _ in 0..6 {
        add(i, Label::Malicious, Some(1), Some(0));
        i += 1;
    }
    for _ in 0..2 {
        add(i, Label::Benign, Some(1), Some(0));
        i += 1;
    }
    for _ in 0..3 {
        add(i, Label::Benign, Some(0), Some(0));
        i += 1;
    }
    add(i, Label::Benign, Some(0), None);
    add(i + 1, Label::Benign, Some(1), Some(1));
    let cmp = compare(&a, &b, &refs).unwrap();
    assert_eq!(cmp.scripts, 13);
    assert_eq!((cmp.correctness.b, cmp.correctness.c), (7, 2));
    // Predicted class: A says malicious where B says benign on all 8 disagreements.
    assert_eq!((cmp.predicted_class.b, cmp.predicted_class.c), (8, 0));
    assert_eq!(cmp.undecided, 1);
    assert_eq!(cmp.correctness.method, "exact-binomial");
    // 2 * P(X <= 2), X ~ Bin(9, 1/2) = 2 * 46 / 512
    assert!((cmp.correctness.p_value - 92.0 / 512.0).abs() < 1e-12);
    // A tie between samples is no decision.
    assert_eq!(
        script_label(&[answer("bash", 1, "s"), answer("bash", 0, "s")]),
        None
    );
    assert_eq!(
        script_label(&[
            answer("bash", 1, "s"),
            answer("bash", 1, "s"),
            answer("bash", 0, "s")
        ]),
        Some(Label::Malicious)
    );
}
