//! The one value of each default that a stage config, the loop config and a command's flag
//! share. The stage configs fall back on these when a key is absent; the loop config and
//! `automaldesc annotate` / `train` start from them, so the same setting means the same
//! number everywhere.

/// The base model: `$AUTOMALDESC_MODEL`, else the model `deploy/fetch_model.sh` fetches.
pub fn model_path() -> std::path::PathBuf {
    std::env::var("AUTOMALDESC_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// Sampling temperatures, one sample each (the published setting).
pub const TEMPERATURES: [f32; 3] = [0.4, 0.6, 0.8];
/// Nucleus sampling's probability mass.
pub const TOP_P: f32 = 0.95;
/// Answer tokens a sample may generate, and a training example's answer budget.
pub const MAX_NEW_TOKENS: usize = 512;
/// Prompt tokens per script, in inference and in training (longer scripts keep their head
/// and tail).
pub const PROMPT_TOKENS: usize = 1536;
/// The filter's threshold on the calibrated label probability (the published 0.90).
pub const MIN_LABEL_PROB: f32 = 0.90;
/// Sequences decoded together.
pub const SLOTS: usize = 8;
/// Penalty on tokens already in the summary (1: off).
pub const REPETITION_PENALTY: f32 = 1.0;
/// Summary tokens the judge reads.
pub const JUDGE_SUMMARY_TOKENS: usize = 512;
/// The balanced accuracy on the seed's summaries a judge needs to vote.
pub const JUDGE_MIN_ACCURACY: f64 = 0.8;
/// Test scripts on which the judge compares two annotators' summaries.
pub const PREFERENCE_SCRIPTS: usize = 16;
/// Script bytes shown to the preference judge (longer scripts are cut).
pub const PREFERENCE_BYTES: usize = 2000;
/// Scripts per generate engine call (bounds memory; results do not depend on it).
pub const CHUNK: usize = 64;
