//! Shared by the tests that need the real model or Python reference packages: where they
//! are, and what to do when they are missing. With `AUTOMALDESC_REQUIRE_MODEL=1` (CI) a
//! missing piece fails the test; otherwise the test prints why it skips and passes.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn required() -> bool {
    std::env::var("AUTOMALDESC_REQUIRE_MODEL").is_ok_and(|v| v == "1")
}

/// Fails under `AUTOMALDESC_REQUIRE_MODEL=1`, else prints the reason to skip.
pub fn skip(reason: &str) {
    assert!(!required(), "{reason} (and AUTOMALDESC_REQUIRE_MODEL=1)");
    eprintln!("SKIP: {reason}");
}

/// The GGUF of the default model (`$AUTOMALDESC_GGUF` or `models/`), if present.
pub fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("AUTOMALDESC_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.exists() {
        return Some(path);
    }
    skip(&format!(
        "model file {} absent (run deploy/fetch_model.sh or set AUTOMALDESC_GGUF)",
        path.display()
    ));
    None
}
