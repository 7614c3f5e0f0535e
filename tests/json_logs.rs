//! `--log-format json`: every line a process writes to stderr is a JSON object, and the
//! run, stage, task and worker ids are fields of the events that concern them.

use std::process::Command;

mod support;
use support::procs::bin;

#[tokio::test]
async fn a_local_run_logs_json_lines_with_its_ids_as_fields() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = support::small_corpus(&dir.path().join("corpus"), 3, 0.002).await;
    let out = dir.path().join("out").to_str().unwrap().to_string();
    let spec = dir.path().join("run.toml");
    std::fs::write(
        &spec,
        support::echo_spec(&corpus.unlabelled_url(), &out, corpus.total_bytes / 3, "{}"),
    )
    .unwrap();
    let run = Command::new(bin())
        .args(["--log-format", "json", "local"])
        .arg(&spec)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--workers", "1", "--run-id", "j1"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert!(run.status.success(), "{stderr}");
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
    let started: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["message"] == "task started")
        .collect();
    assert!(!started.is_empty(), "{stderr}");
    for e in &started {
        assert_eq!(e["run"], "j1", "{e}");
        assert_eq!(e["worker_id"], "local-0", "{e}");
        assert!(e["task"].is_u64() && e["stage"].is_u64(), "{e}");
    }
    let progress = events
        .iter()
        .rfind(|e| e["message"] == "progress")
        .expect("progress events");
    assert_eq!(progress["run"], "j1");
    assert_eq!(progress["phase"], "Succeeded");
    assert_eq!(progress["tasks_done"], progress["tasks_total"]);
    assert_eq!(progress["scripts_done"], progress["scripts_total"]);
}
