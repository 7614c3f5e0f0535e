//! The coordinator's event loop never waits on the object store: a coordinator process
//! whose object store answers every call 1 s late (the fault store's `slow` mode) wraps
//! up a finished stage (its committed-file list, its garbage, the next stage's plan from
//! the committed files' Parquet footers) for several seconds, and checks and plans a run
//! submitted meanwhile, and heartbeats and status calls are answered within milliseconds
//! all that time. The worker process runs with a store of normal speed, so only the
//! coordinator's own object-store calls are slow.

use std::time::{Duration, Instant};

use automaldesc_proto::v1;
use automaldesc_proto::v1::control_service_client::ControlServiceClient;
use automaldesc_proto::v1::worker_service_client::WorkerServiceClient;

mod support;
use support::etcd::free_port;
use support::procs::Proc;

/// The store's delay per call while the stage is wrapped up.
const DELAY_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_answered_while_a_slow_object_store_holds_a_stage_s_planning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = support::small_corpus(&d.join("corpus"), 21, 0.002).await;
    let out = d.join("out").to_str().unwrap().to_string();
    // Two echo stages: the second is planned from the first one's committed files.
    let spec = d.join("run.toml");
    let one = support::echo_spec(&corpus.unlabelled_url(), &out, corpus.total_bytes / 3, "{}");
    std::fs::write(
        &spec,
        format!("{one}\n[[stage]]\nkind = \"echo\"\nconfig = {{}}\n"),
    )
    .unwrap();
    let control_file = d.join("store-faults");
    std::fs::write(&control_file, "").unwrap();
    let grpc = free_port();
    let args: Vec<String> = [
        "coordinator",
        "--listen",
        &format!("127.0.0.1:{grpc}"),
        "--state-dir",
        d.join("state").to_str().unwrap(),
        "--run",
        spec.to_str().unwrap(),
        "--run-id",
        "slow",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut coordinator = Proc::spawn_with_env(
        d,
        "c",
        &args,
        &[("AUTOMALDESC_STORE_FAULTS", control_file.to_str().unwrap())],
    );
    let endpoint = format!("http://127.0.0.1:{grpc}");
    let (mut control, mut observer) = loop {
        let c = ControlServiceClient::connect(endpoint.clone()).await;
        let w = WorkerServiceClient::connect(endpoint.clone()).await;
        if let (Ok(c), Ok(w)) = (c, w) {
            break (c, w);
        }
        assert!(
            coordinator.try_wait().is_none(),
            "the coordinator exited: {}",
            coordinator.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let run = v1::RunRequest {
        run_id: "slow".into(),
    };
    let first = control.get_run(run.clone()).await.unwrap().into_inner();
    assert_eq!(first.stages.len(), 1);
    // The run is planned and accepted; from now on the coordinator's store is slow.
    std::fs::write(&control_file, format!("slow {DELAY_MS}")).unwrap();
    let mut worker = Proc::spawn(
        d,
        "w",
        &[
            "worker".to_string(),
            "--coordinator".into(),
            endpoint.clone(),
            "--id".into(),
            "w0".into(),
        ],
    );

    // Heartbeat and ask for the status every 50 ms, timing each answer, until stage 1 is
    // open; the wrap-up is from the moment every task of stage 0 is seen committed.
    let mut answers: Vec<Duration> = Vec::new();
    let mut finished_seen: Option<Instant> = None;
    let mut held: Option<Duration> = None;
    // A second run, submitted while the first one's stage 0 is wrapped up.
    let second_out = d.join("out2").to_str().unwrap().to_string();
    let second_spec = support::echo_spec(&corpus.unlabelled_url(), &second_out, 1 << 20, "{}");
    let mut second: Option<tokio::task::JoinHandle<_>> = None;
    let mut second_answer: Option<(Result<v1::RunStatus, tonic::Status>, Duration)> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        assert!(
            Instant::now() < deadline,
            "timed out; coordinator: {}",
            coordinator.log_text()
        );
        let t = Instant::now();
        observer
            .heartbeat(v1::HeartbeatRequest {
                worker_id: "observer".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let status = control.get_run(run.clone()).await.unwrap().into_inner();
        if held.is_none() || second_answer.is_none() {
            answers.push(t.elapsed());
            let stage0 = &status.stages[0];
            if stage0.tasks_total > 0 && stage0.tasks_done == stage0.tasks_total {
                finished_seen.get_or_insert(t);
            }
            if finished_seen.is_some() && second.is_none() {
                let mut c = control.clone();
                let request = v1::SubmitRunRequest {
                    protocol_version: automaldesc_proto::PROTOCOL_VERSION,
                    config_toml: second_spec.clone(),
                    run_id: "second".into(),
                };
                second = Some(tokio::spawn(async move {
                    let t = Instant::now();
                    let r = c.submit_run(request).await.map(|r| r.into_inner());
                    (r, t.elapsed())
                }));
            }
            if held.is_none() && status.stages.len() > 1 {
                held = Some(finished_seen.map_or(Duration::ZERO, |f| f.elapsed()));
            }
            if let Some(job) = second.take_if(|j| j.is_finished()) {
                second_answer = Some(job.await.unwrap());
            }
            if held.is_some() && second_answer.is_some() {
                // The rest may run at normal speed.
                std::fs::write(&control_file, "").unwrap();
            }
        }
        if status.state != v1::RunState::Running as i32 {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.state,
        v1::RunState::Succeeded as i32,
        "{status:?}; coordinator: {}",
        coordinator.log_text()
    );
    let held = held.expect("stage 1 was seen opening");
    let (second_status, second_took) = second_answer.expect("the second submission was answered");
    let second_status = second_status.unwrap_or_else(|e| {
        panic!(
            "second submission: {e}; coordinator: {}",
            coordinator.log_text()
        )
    });
    assert_eq!(second_status.run_id, "second");
    // Its checks and plan read the slow store.
    assert!(
        second_took >= Duration::from_millis(DELAY_MS),
        "the second submission was answered in {second_took:?}"
    );
    let slowest = answers.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_millis(DELAY_MS / 2),
        "a heartbeat and status call took {slowest:?} while the store was slow \
         ({} answered, the stage wrapped up in {held:?}, the second run answered in \
         {second_took:?})",
        answers.len()
    );
    // The wrap-up made at least three calls to the slow store: the committed-file list,
    // the listing of the stage's output for garbage, a footer of the next stage's input.
    assert!(
        held >= Duration::from_millis(3 * DELAY_MS),
        "the stage was wrapped up in {held:?}: the slow store did not hold it"
    );
    assert!(
        answers.len() >= 10,
        "{} heartbeats answered while the stage was wrapped up in {held:?}",
        answers.len()
    );
    // The second run goes through too.
    let second_run = v1::RunRequest {
        run_id: "second".into(),
    };
    let second_end = loop {
        assert!(
            Instant::now() < deadline,
            "timed out; coordinator: {}",
            coordinator.log_text()
        );
        let s = control
            .get_run(second_run.clone())
            .await
            .unwrap()
            .into_inner();
        if s.state != v1::RunState::Running as i32 {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        second_end.state,
        v1::RunState::Succeeded as i32,
        "{second_end:?}"
    );
    // Every script went through both stages, each once.
    let total: u64 = status.stages.iter().map(|s| s.scripts_total).max().unwrap();
    for s in &status.stages {
        assert_eq!(
            (s.scripts_done, s.duplicates, s.tasks_quarantined),
            (total, 0, 0),
            "{s:?}"
        );
    }
    assert_eq!(
        total as usize,
        corpus.sha_counts().await.values().sum::<usize>()
    );
    assert_eq!(second_end.stages[0].scripts_done, total);
    println!(
        "stage wrap-up held for {held:?} by the slow store, a submission answered in \
         {second_took:?}; {} heartbeats and status calls answered while the store was slow, \
         the slowest in {slowest:?}",
        answers.len()
    );
    worker.signal(libc::SIGTERM);
    worker.wait(Duration::from_secs(30));
    coordinator.signal(libc::SIGTERM);
    coordinator.wait(Duration::from_secs(30));
}
