//! A two-stage echo run through the real gRPC services in one process: a coordinator on a
//! loopback port, two workers, and a third that takes a task and goes silent. The silent
//! worker's lease expires, its task is done by another, its late completion is refused, a
//! poisoned script is quarantined alone, and each stage's committed outputs hold every
//! other input row exactly once. Files of the abandoned attempt are collected. The two
//! workers share the process, and the dashboard counts each one's own scripts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use automaldesc::cluster_cmd::executors;
use automaldesc_common::ids::RunId;
use automaldesc_common::run_spec::{RunLimits, RunSpec, StageConfig};
use automaldesc_coordinator::grpc_server::{serve, ServeOptions};
use automaldesc_coordinator::http::ClusterView;
use automaldesc_coordinator::lease_manager::LeasePolicy;
use automaldesc_coordinator::run_manager::{RunManager, RunPhase};
use automaldesc_coordinator::state::{EmbeddedStore, StateStore};
use automaldesc_proto::v1;
use automaldesc_proto::v1::control_service_client::ControlServiceClient;
use automaldesc_proto::v1::worker_service_client::WorkerServiceClient;
use automaldesc_worker::worker_process::{run_worker, WorkerOptions};

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_stage_run_commits_every_row_once_despite_a_silent_worker() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = support::small_corpus(&dir.path().join("corpus"), 5, 0.003).await;
    let poisoned = corpus.poison(b"POISON-SCRIPT").await;
    let out = dir.path().join("out").to_str().unwrap().to_string();
    let spec = RunSpec {
        input: corpus.unlabelled_url(),
        output: out.clone(),
        task_bytes: corpus.total_bytes / 8,
        stages: vec![
            StageConfig::new(
                "echo",
                serde_json::json!({ "quarantine_marker": "POISON-SCRIPT" }),
            ),
            StageConfig::new("echo", serde_json::json!({ "delay_ms": 20 })),
        ],
        // The poisoned script is 1 of a few hundred: within this budget.
        limits: RunLimits {
            max_quarantined_fraction: 0.05,
            ..RunLimits::default()
        },
    };
    let policy = LeasePolicy {
        ttl: Duration::from_millis(1500),
        max_attempts: 5,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        speculate_after: None,
    };
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state")).unwrap());
    let mut manager = RunManager::open(store.clone(), policy).await.unwrap();
    let run = RunId("run-1".into());
    let submitted = manager
        .submit(Some(run.clone()), spec.clone())
        .await
        .unwrap();
    let n_tasks = submitted.stages[0].counts.total as usize;
    assert!(n_tasks >= 8, "{n_tasks} tasks");
    // The same submission again changes nothing; another spec under that id is refused.
    assert_eq!(
        manager
            .submit(Some(run.clone()), spec.clone())
            .await
            .unwrap(),
        submitted
    );
    let mut other = spec.clone();
    other.task_bytes += 1;
    assert!(manager.submit(Some(run.clone()), other).await.is_err());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // What the dashboard shows, as the event loop publishes it.
    let (snapshot, view) = tokio::sync::watch::channel(ClusterView::default());
    let opts = ServeOptions {
        exit_when_done: true,
        snapshot: Some(Arc::new(snapshot)),
        ..ServeOptions::plain(policy.ttl)
    };
    let server = tokio::spawn(serve(listener, manager, opts, std::future::pending()));

    // The silent worker: takes the first task and never speaks again.
    let mut silent = loop {
        match WorkerServiceClient::connect(endpoint.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let stolen = silent
        .acquire_task(v1::AcquireTaskRequest {
            worker_id: "silent".into(),
            stage_kinds: vec!["echo".into()],
            progress: None,
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    // A worker that runs no echo gets nothing.
    let none = silent
        .acquire_task(v1::AcquireTaskRequest {
            worker_id: "picky".into(),
            stage_kinds: vec!["generate".into()],
            progress: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.task.is_none() && !none.finished);

    let mut control = ControlServiceClient::connect(endpoint.clone())
        .await
        .unwrap();
    let mut watch = control
        .watch_run(v1::RunRequest {
            run_id: run.0.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    let workers: Vec<_> = (0..2)
        .map(|i| {
            let opts = WorkerOptions::new(&endpoint, &format!("w{i}"));
            tokio::spawn(run_worker(
                opts,
                executors(&["echo".into()]).unwrap(),
                std::future::pending(),
            ))
        })
        .collect();
    // The watch streams until the run ends, and its last status says it succeeded.
    let mut last = None;
    while let Some(s) = tokio::time::timeout(Duration::from_secs(120), watch.message())
        .await
        .expect("the run progresses")
        .unwrap()
    {
        last = Some(s);
    }
    let last = last.unwrap();
    assert_eq!(last.state, v1::RunState::SucceededWithQuarantine as i32);
    assert_eq!(last.stages.len(), 2);
    assert_eq!(last.stages[0].scripts_quarantined, 1);
    assert!(last.stages[0].leases_expired >= 1, "{:?}", last.stages[0]);

    // The silent worker comes back too late.
    let late = silent
        .complete_task(v1::CompleteTaskRequest {
            worker_id: "silent".into(),
            lease: stolen.lease.clone(),
            outputs: vec![v1::OutputFile {
                path: "bogus".into(),
                ..Default::default()
            }],
            rows_in: 1,
            quarantined: Vec::new(),
            tokens: 0,
            duplicates: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!late.accepted, "a late completion must be refused");

    let mut done = 0;
    let mut refused = 0;
    for w in workers {
        let report = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("workers are told the work is finished")
            .unwrap()
            .unwrap();
        done += report.completed;
        refused += report.refused;
    }
    let manager = server.await.unwrap().unwrap();
    let status = manager.status(&run).unwrap();
    assert_eq!(status.phase, RunPhase::SucceededWithQuarantine);
    let stage1_tasks = status.stages[1].counts.total;
    assert_eq!(
        done,
        n_tasks as u32 + stage1_tasks,
        "every task completed once by the live workers"
    );

    // Stage 0: everything but the poisoned script, once; the poisoned one in quarantine.
    let mut expected = corpus.sha_counts().await;
    let all_rows: u64 = expected.values().map(|&n| n as u64).sum();
    expected.remove(&poisoned);
    // Each worker reports its own scripts, though both count in one process: stage 0 read
    // every row, stage 1 every row but the poisoned one, and no attempt was thrown away.
    assert_eq!(refused, 0);
    let seen = view.borrow().clone();
    let live: Vec<_> = seen
        .workers
        .iter()
        .filter(|w| w.id.starts_with('w'))
        .collect();
    assert_eq!(live.len(), 2, "{:?}", seen.workers);
    let counted: u64 = live.iter().map(|w| w.scripts).sum();
    assert_eq!(counted, 2 * all_rows - 1, "{live:?}");
    assert!(
        live.iter().all(|w| w.scripts > 0 && w.scripts < counted),
        "{live:?}"
    );
    let (rows0, quarantined0) = support::committed_rows(store.as_ref(), &run, 0, &out).await;
    assert_eq!(rows0, expected);
    assert_eq!(quarantined0, vec![poisoned.clone()]);
    // Stage 1 read stage 0's committed output: the same rows again.
    let (rows1, quarantined1) = support::committed_rows(store.as_ref(), &run, 1, &out).await;
    assert_eq!(rows1, expected);
    assert!(quarantined1.is_empty());
    // The task the silent worker held was committed by a live worker with a newer token.
    let commits = automaldesc_coordinator::stage_manager::read_commits(store.as_ref(), &run, 0)
        .await
        .unwrap();
    let lease = stolen.lease.unwrap();
    let record = &commits.iter().find(|(t, _)| t.0 == lease.task).unwrap().1;
    assert!(record.worker.starts_with('w') && record.token > lease.token);
    // Only committed files remain under the run's output.
    // Beside them, each finished stage's list of committed files (the manifest readers use).
    let (lists, on_disk): (Vec<String>, Vec<String>) = walk(&dir.path().join("out"))
        .into_iter()
        .partition(|p| p.ends_with(automaldesc_coordinator::run_manager::COMMITTED_LIST));
    assert_eq!(lists.len(), 2, "{lists:?}");
    let on_disk: BTreeMap<String, ()> = on_disk.into_iter().map(|p| (p, ())).collect();
    let mut committed = 0;
    for k in [0u32, 1] {
        let commits = automaldesc_coordinator::stage_manager::read_commits(store.as_ref(), &run, k)
            .await
            .unwrap();
        committed += commits.iter().map(|(_, c)| c.outputs.len()).sum::<usize>();
    }
    assert_eq!(on_disk.len(), committed, "{on_disk:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.to_str().unwrap().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_hands_out_nothing_and_bad_runs_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = support::small_corpus(&dir.path().join("corpus"), 6, 0.002).await;
    let out = dir.path().join("out").to_str().unwrap().to_string();
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state")).unwrap());
    let policy = LeasePolicy::default();
    let manager = RunManager::open(store.clone(), policy).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        manager,
        ServeOptions::plain(policy.ttl),
        async {
            let _ = stopped.await;
        },
    ));
    let mut control = loop {
        match ControlServiceClient::connect(endpoint.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let submit = |toml: String, id: &str| v1::SubmitRunRequest {
        protocol_version: automaldesc_proto::PROTOCOL_VERSION,
        config_toml: toml,
        run_id: id.into(),
    };
    let good = support::echo_spec(&corpus.unlabelled_url(), &out, 1 << 20, "{}");

    // Bad input is refused, saying what is wrong.
    let missing = support::echo_spec(&format!("{}/nowhere", corpus.url), &out, 1 << 20, "{}");
    let e = control
        .submit_run(submit(missing, "r-missing"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("nowhere"), "{e}");
    let e = control
        .submit_run(submit(
            good.replace("kind = \"echo\"", "kind = \"echo\"\nkinds = 1"),
            "r-typo",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("kinds"), "{e}");
    let e = control
        .submit_run(submit(good.clone(), "Bad Id!"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = control
        .get_run(v1::RunRequest {
            run_id: "r-none".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // A run is cancelled while a worker holds one of its tasks.
    let s = control
        .submit_run(submit(good, "r-cancel"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.state, v1::RunState::Running as i32);
    let mut worker = WorkerServiceClient::connect(endpoint.clone())
        .await
        .unwrap();
    let task = worker
        .acquire_task(v1::AcquireTaskRequest {
            worker_id: "w".into(),
            stage_kinds: Vec::new(),
            progress: None,
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    let c = control
        .cancel_run(v1::RunRequest {
            run_id: "r-cancel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state, v1::RunState::Cancelled as i32);
    let next = worker
        .acquire_task(v1::AcquireTaskRequest {
            worker_id: "w".into(),
            stage_kinds: Vec::new(),
            progress: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next.task.is_none());
    let hb = worker
        .heartbeat(v1::HeartbeatRequest {
            worker_id: "w".into(),
            leases: vec![task.lease.clone().unwrap()],
            progress: None,
            draining: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.lost.len(), 1, "the cancelled run's lease is gone");
    let late = worker
        .complete_task(v1::CompleteTaskRequest {
            worker_id: "w".into(),
            lease: task.lease,
            outputs: Vec::new(),
            rows_in: 0,
            quarantined: Vec::new(),
            tokens: 0,
            duplicates: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!late.accepted);
    let _ = stop.send(());
    let manager = server.await.unwrap().unwrap();
    // The cancellation is durable.
    drop(manager);
    let reopened = RunManager::open(store, policy).await.unwrap();
    assert_eq!(
        reopened.status(&RunId("r-cancel".into())).unwrap().phase,
        RunPhase::Cancelled
    );
}
