//! One echo stage through the real gRPC service: a coordinator on a loopback port, two
//! workers, and a third that takes a task and goes silent. The silent worker's lease
//! expires, its task is done by another, its late completion is refused, and the committed
//! outputs hold every input row exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use automaldesc_common::ids::{RunId, TaskId};
use automaldesc_common::parquet_io::read_file;
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::open_store;
use automaldesc_coordinator::grpc_server::{serve_stage, ServeOptions};
use automaldesc_coordinator::lease_manager::LeasePolicy;
use automaldesc_coordinator::planner::{plan, PlanOptions};
use automaldesc_coordinator::stage_manager::{StageManager, StageSpec};
use automaldesc_coordinator::state::{EmbeddedStore, StateStore};
use automaldesc_proto::v1;
use automaldesc_proto::v1::worker_service_client::WorkerServiceClient;
use automaldesc_worker::executor::EchoExecutor;
use automaldesc_worker::worker_process::{run_worker, WorkerOptions};
use object_store::path::Path;

mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_echo_stage_commits_every_row_once_despite_a_silent_worker() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = support::small_corpus(&dir.path().join("corpus"), 5, 0.003).await;
    let tasks = plan(
        &corpus.files,
        PlanOptions {
            target_bytes: corpus.total_bytes / 8,
        },
    );
    let n_tasks = tasks.len();
    assert!(n_tasks >= 8);

    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state")).unwrap());
    let spec = StageSpec {
        run: RunId("run-1".into()),
        stage: 0,
        kind: "echo".into(),
        input_root: corpus.url.clone(),
        output_root: dir.path().join("out").to_str().unwrap().to_string(),
        config_json: "{}".into(),
        tasks,
    };
    let policy = LeasePolicy {
        ttl: Duration::from_millis(1500),
        max_attempts: 5,
        backoff_base: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        speculate_after: None,
    };
    let manager = StageManager::open(spec, store.clone(), policy, tokio::time::Instant::now())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve_opts = ServeOptions {
        heartbeat_interval: Duration::from_millis(300),
        lease_ttl: policy.ttl,
        tick: Duration::from_millis(100),
    };
    let server = tokio::spawn(serve_stage(listener, manager, serve_opts, async {
        let _ = stop_rx.await;
    }));

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
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();

    let workers: Vec<_> = (0..2)
        .map(|i| {
            let opts = WorkerOptions {
                endpoint: endpoint.clone(),
                worker_id: format!("w{i}"),
                backend: "cpu".into(),
                slots: 1,
            };
            tokio::spawn(run_worker(
                opts,
                Arc::new(EchoExecutor),
                std::future::pending(),
            ))
        })
        .collect();
    let mut done = 0;
    for w in workers {
        let report = tokio::time::timeout(Duration::from_secs(120), w)
            .await
            .expect("workers finish")
            .unwrap()
            .unwrap();
        done += report.completed;
    }
    assert_eq!(
        done as usize, n_tasks,
        "every task completed once by the live workers"
    );

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
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!late.accepted, "a late completion must be refused");

    let _ = stop_tx.send(());
    let manager = server.await.unwrap().unwrap();
    assert!(manager.is_finished());

    // Every task committed once, by a live worker, with a newer token than the lost lease
    // for the task the silent worker held.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for t in 0..n_tasks as u32 {
        let record = manager
            .committed(TaskId(t))
            .await
            .unwrap()
            .expect("committed");
        assert!(record.worker.starts_with('w'));
        if t == stolen.lease.as_ref().unwrap().task {
            assert!(record.token > stolen.lease.as_ref().unwrap().token);
        }
        let (out_store, _) = open_store(dir.path().to_str().unwrap()).unwrap();
        let mut rows = 0;
        for f in &record.outputs {
            let path =
                Path::from_filesystem_path(&f.path).unwrap_or_else(|_| Path::from(f.path.as_str()));
            let got: Vec<CorpusRow> = read_file(out_store.clone(), &path).await.unwrap();
            rows += got.len() as u64;
            for r in got {
                *seen.entry(r.sha256).or_default() += 1;
            }
        }
        assert_eq!(rows, record.rows_in);
    }
    assert_eq!(seen, corpus.sha_counts().await);
}
