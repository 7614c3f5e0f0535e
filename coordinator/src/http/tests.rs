use super::*;
use crate::run_manager::{RunPhase, StageSummary};
use crate::workers::WorkerState;
use std::collections::BTreeSet;

use crate::lease_manager::StageCounts;
use crate::stage_manager::StageTotals;

fn stage(done: u32, total: u32, totals: StageTotals) -> StageSummary {
    StageSummary {
        index: 1,
        kind: "generate".into(),
        counts: StageCounts {
            total,
            done,
            leased: 1,
            quarantined: 0,
        },
        totals,
        garbage_files_deleted: 0,
        finished_ms: 0,
        troubles: Vec::new(),
    }
}

/// Sends `requests` on one connection and reads until the server closes it.
async fn exchange(addr: std::net::SocketAddr, requests: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(requests.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut out))
        .await
        .expect("the server answers and closes")
        .unwrap();
    out
}

#[tokio::test]
async fn one_connection_carries_several_requests_and_bad_ones_get_their_status() {
    let ready = Arc::new(AtomicBool::new(true));
    let (_view, addr) = start(
        "127.0.0.1:0",
        ready,
        RequireToken::default(),
        Default::default(),
    )
    .await
    .unwrap();
    // Two requests on one connection, the second asking to close it.
    let out = exchange(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(
        out.contains("\r\n\r\nok\n") && out.ends_with("ready\n"),
        "{out}"
    );
    assert!(out.contains("Cache-Control: no-store"), "{out}");
    // A method the server does not take, a body over the cap, a path it does not have.
    let out = exchange(
        addr,
        "DELETE /api/runs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    let big = "x".repeat(MAX_BODY + 1);
    let out = exchange(
        addr,
        &format!("POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{big}", big.len()),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    let out = exchange(
        addr,
        "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 404") && out.ends_with("not found\n"),
        "{out}"
    );
    // Not HTTP at all: an error status, and the connection closed.
    let out = exchange(addr, "hello\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
}

#[test]
fn the_eta_rests_on_tokens_then_scripts_then_tasks() {
    // 40 of 100 scripts done with 8000 tokens: 200 tokens a script, 60 left = 12000
    // tokens; at 400 tokens/s, 30 s.
    let totals = StageTotals {
        scripts_total: 100,
        scripts_done: 40,
        tokens: 8000,
        ..StageTotals::default()
    };
    assert_eq!(
        stage_eta(&stage(4, 10, totals), 99.0, (400.0, 2.0), &[]),
        Some((30.0, "tokens"))
    );
    // No tokens (a stage that does not generate): 60 scripts at 2 scripts/s.
    let no_tokens = StageTotals {
        tokens: 0,
        ..totals
    };
    assert_eq!(
        stage_eta(&stage(4, 10, no_tokens), 99.0, (400.0, 2.0), &[]),
        Some((30.0, "scripts"))
    );
    // No rate either: 4 tasks in 20 s, 6 left.
    assert_eq!(
        stage_eta(&stage(4, 10, no_tokens), 20.0, (0.0, 0.0), &[]),
        Some((30.0, "tasks"))
    );
    // Nothing known yet; and nothing left.
    assert_eq!(
        stage_eta(&stage(0, 10, StageTotals::default()), 5.0, (0.0, 0.0), &[]),
        None
    );
    assert_eq!(
        stage_eta(&stage(10, 10, totals), 5.0, (400.0, 2.0), &[]),
        None
    );
    // A training stage: one task, in flight for 60 s, 20 of 50 steps done: 90 s left,
    // whatever the scripts rate says.
    let train = StageTotals {
        scripts_total: 20,
        ..StageTotals::default()
    };
    let steps = |done| InFlight {
        task: 0,
        held_s: 60.0,
        done,
        total: 50,
    };
    assert_eq!(
        stage_eta(&stage(0, 1, train), 60.0, (0.0, 2.0), &[steps(20)]),
        Some((90.0, "task progress"))
    );
    // No step done yet, or a task left that is not in flight: other bases.
    assert_eq!(
        stage_eta(&stage(0, 1, train), 60.0, (0.0, 2.0), &[steps(0)]),
        Some((10.0, "scripts"))
    );
    assert_eq!(
        stage_eta(&stage(0, 2, train), 60.0, (0.0, 0.0), &[steps(20)]),
        None
    );
}

/// The metric names and label names of a metrics text.
fn exported(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut names, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series = line.rsplit_once(' ').unwrap().0;
        let (name, rest) = series.split_once('{').unwrap_or((series, ""));
        names.insert(name.to_string());
        for pair in rest
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
        {
            labels.insert(pair.split_once('=').unwrap().0.to_string());
        }
    }
    (names, labels)
}

#[test]
fn the_grafana_dashboard_uses_only_exported_metrics_and_labels() {
    let mut run_totals = StageTotals {
        scripts_total: 10,
        scripts_done: 4,
        tokens: 100,
        ..StageTotals::default()
    };
    run_totals.attempts_failed = 1;
    let run = RunStatus {
        id: RunId("r".into()),
        phase: RunPhase::Running,
        error: String::new(),
        stages: vec![stage(2, 5, run_totals)],
        stages_total: 3,
        submitted_ms: 1_000,
        output: String::new(),
        stage_names: Vec::new(),
        resumed_ms: Vec::new(),
    };
    let worker = WorkerView {
        id: "w0".into(),
        state: WorkerState::Busy,
        backend: "cuda".into(),
        device_memory_bytes: 0,
        slots: 1,
        kinds: Vec::new(),
        registered_ms: 1_000,
        last_seen_ms: 2_000,
        leases: Vec::new(),
        tasks_completed: 2,
        tasks_failed: 0,
        scripts: 4,
        tokens: 100,
        tokens_per_s: 10.0,
        scripts_per_s: 0.5,
        model_loads: 1,
        model_load_s: 0.5,
    };
    let view = ClusterView {
        at_ms: 3_000,
        runs: vec![run],
        workers: vec![worker],
    };
    let text = metrics_text(&view, true);
    let (names, labels) = exported(&text);
    assert!(names.contains("automaldesc_stage_eta_seconds"), "{text}");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/automaldesc.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut queries = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("expr" | "query" | "definition", Some(q)) => out.push(q.to_string()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut queries);
    assert!(queries.len() >= 10, "{queries:?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let mut rest = q.as_str();
        while let Some(i) = rest.find("automaldesc_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(names.contains(&name), "{q}: {name} is not exported");
            used.insert(name.clone());
            rest = &rest[i + name.len()..];
        }
        // Labels in selectors and in by (...) / label_values(..., label).
        for group in q.split(['{', '(']).skip(1) {
            let inner = group.split(['}', ')']).next().unwrap_or("");
            for part in inner.split(',') {
                let label = part.split(['=', '!', '~']).next().unwrap_or("").trim();
                let is_label = !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && part.contains(['=', '~'])
                    || q.contains(&format!("by ({inner})"));
                if is_label && !label.starts_with("automaldesc") && label != "le" {
                    assert!(labels.contains(label), "{q}: label {label} is not exported");
                }
            }
        }
    }
    // The panels cover the throughput, progress, worker and failure series.
    for name in [
        "automaldesc_stage_tasks",
        "automaldesc_stage_tokens",
        "automaldesc_stage_eta_seconds",
        "automaldesc_worker_tokens_per_second",
        "automaldesc_worker_heartbeat_age_seconds",
        "automaldesc_stage_lease_expiries",
        "automaldesc_worker_model_load_seconds_total",
    ] {
        assert!(used.contains(name), "no panel shows {name}");
    }
}
