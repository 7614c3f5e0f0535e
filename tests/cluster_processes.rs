//! The distributed runtime as a user deploys it: `automaldesc coordinator` and
//! `automaldesc worker` processes, with a real etcd (Debian's `etcd-server`) started on
//! loopback ports. Workers are killed with SIGKILL, paused with SIGSTOP, and told to stop
//! with SIGTERM; the leader coordinator is killed; etcd is restarted. Every time, each
//! input script ends up in the committed output exactly once or in quarantine.

use std::collections::BTreeMap;
use std::time::Duration;

use automaldesc_common::ids::RunId;
use automaldesc_coordinator::state::EmbeddedStore;
use automaldesc_proto::v1;

mod support;
use support::etcd::{free_port, Etcd};
use support::procs::{control, done_tasks, succeeded, wait_for, Proc};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The run a coordinator submits at start, and the etcd namespace it keeps it under.
struct Submit<'a> {
    namespace: &'a str,
    spec: &'a std::path::Path,
    run_id: &'a str,
}

/// A coordinator process named `name` on `port`, electing its leader through `etcd` with a
/// 2 s leader TTL, submitting `run`; `extra` flags after.
fn etcd_coordinator(
    dir: &std::path::Path,
    name: &str,
    port: u16,
    etcd: &Etcd,
    run: &Submit,
    extra: &[&str],
) -> Proc {
    let mut list = args(&[
        "coordinator",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--name",
        name,
        "--etcd",
        &etcd.endpoint(),
        "--etcd-namespace",
        run.namespace,
        "--leader-ttl",
        "2",
        "--run",
        run.spec.to_str().unwrap(),
        "--run-id",
        run.run_id,
    ]);
    list.extend(args(extra));
    Proc::spawn(dir, name, &list)
}

fn worker_args(endpoints: &str, id: &str, grace: &str) -> Vec<String> {
    args(&[
        "worker",
        "--coordinator",
        endpoints,
        "--id",
        id,
        "--patience",
        "60",
        "--grace",
        grace,
    ])
}

async fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !pred() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stage0(s: &v1::RunStatus) -> &v1::StageProgress {
    &s.stages[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_die_or_stall_lose_their_tasks_and_a_failing_task_is_quarantined() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let state = etcd.store("/die/").await;
    let dir = tempfile::tempdir().unwrap();
    let corpus = support::small_corpus(&dir.path().join("corpus"), 7, 0.003).await;
    let alone = corpus.poison(b"QUARANTINE-ME").await;
    corpus.poison_named("fails", b"FAIL-ALWAYS").await;
    let out = dir.path().join("out").to_str().unwrap().to_string();
    let spec = dir.path().join("run.toml");
    // A tenth of the corpus is lost to the failing task: allowed here, so the run ends
    // SUCCEEDED_WITH_QUARANTINE.
    let text = support::echo_spec(
        &corpus.unlabelled_url(),
        &out,
        corpus.total_bytes / 10,
        r#"{ delay_ms = 600, quarantine_marker = "QUARANTINE-ME", fail_marker = "FAIL-ALWAYS" }"#,
    );
    std::fs::write(
        &spec,
        format!("{text}\n[limits]\nmax_quarantined_fraction = 0.5\n"),
    )
    .unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _coordinator = Proc::spawn(
        dir.path(),
        "coordinator",
        &args(&[
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--etcd",
            &etcd.endpoint(),
            "--etcd-namespace",
            "/die/",
            "--lease-ttl",
            "2",
            "--max-attempts",
            "3",
            "--retry-backoff",
            "0.2",
            "--speculate-after",
            "0",
            "--run",
            spec.to_str().unwrap(),
            "--run-id",
            "r1",
        ]),
    );
    control(&endpoint, Duration::from_secs(60)).await;
    let mut w0 = Proc::spawn(dir.path(), "w0", &worker_args(&endpoint, "w0", "5"));
    let mut w1 = Proc::spawn(dir.path(), "w1", &worker_args(&endpoint, "w1", "5"));
    let _w2 = Proc::spawn(dir.path(), "w2", &worker_args(&endpoint, "w2", "5"));

    // w0 dies in the middle of its first task (each task sleeps 600 ms).
    wait_until("w0 to start a task", Duration::from_secs(60), || {
        !w0.tasks_started().is_empty()
    })
    .await;
    w0.kill9();
    // w1 stalls in the middle of a task.
    wait_until("w1 to start a task", Duration::from_secs(60), || {
        !w1.tasks_started().is_empty()
    })
    .await;
    w1.signal(libc::SIGSTOP);
    let stalled = *w1.tasks_started().last().unwrap();

    let end = wait_for(
        std::slice::from_ref(&endpoint),
        "r1",
        Duration::from_secs(180),
        "the run to end",
        |s| s.state != v1::RunState::Running as i32,
    )
    .await;
    assert_eq!(
        end.state,
        v1::RunState::SucceededWithQuarantine as i32,
        "{end:?}"
    );
    assert!(
        end.error.starts_with("quarantined stage 0 (echo)"),
        "{}",
        end.error
    );
    // The stalled worker wakes up: its lease is gone and nothing of it is committed.
    w1.signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w1.signal(libc::SIGTERM);
    // Stopped before the work was finished: 143, so a batch job would replace it.
    assert_eq!(w1.wait(Duration::from_secs(20)).code(), Some(143));
    let report = w1.report();
    assert!(report["refused"].as_u64().unwrap() >= 1, "{report}");

    let st = stage0(&end);
    assert!(
        st.leases_expired >= 2,
        "the dead and the stalled leases expired: {st:?}"
    );
    assert_eq!(st.tasks_quarantined, 1, "{st:?}");

    // The failing task is quarantined with its error after 3 attempts.
    let quarantined = support::quarantined_tasks(&state, "r1", 0).await;
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0].1.contains("failure marker"),
        "{quarantined:?}"
    );
    let lost = support::task_scripts(&state, "r1", 0, quarantined[0].0).await;
    assert!(!lost.is_empty());
    // The lone bad script is quarantined by itself, unless the planner put it in the failing
    // task, which then holds it.
    let alone_expected = if lost.contains(&alone) {
        Vec::new()
    } else {
        vec![alone.clone()]
    };
    assert_eq!(
        st.scripts_quarantined,
        (lost.len() + alone_expected.len()) as u64
    );

    // Everything else is committed exactly once; the single bad script is quarantined.
    let mut expected = corpus.sha_counts().await;
    expected.remove(&alone);
    for sha in &lost {
        expected.remove(sha);
    }
    let run = RunId("r1".into());
    let (rows, alone_q) = support::committed_rows(&state, &run, 0, &out).await;
    assert_eq!(rows, expected);
    assert_eq!(alone_q, alone_expected);
    let commits = automaldesc_coordinator::stage_manager::read_commits(&state, &run, 0)
        .await
        .unwrap();
    let by_task: BTreeMap<u32, String> = commits
        .iter()
        .map(|(t, c)| (t.0, c.worker.clone()))
        .collect();
    assert_eq!(by_task.len() as u32, st.tasks_total - 1);
    assert_ne!(by_task.get(&stalled).map(String::as_str), Some("w1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_from_a_killed_leader_and_an_etcd_restart_only_pauses_the_run() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let state = etcd.store("/ha/").await;
    let dir = tempfile::tempdir().unwrap();
    let corpus = support::small_corpus(&dir.path().join("corpus"), 8, 0.003).await;
    let out = dir.path().join("out").to_str().unwrap().to_string();
    let spec = dir.path().join("run.toml");
    std::fs::write(
        &spec,
        support::echo_spec(
            &corpus.unlabelled_url(),
            &out,
            corpus.total_bytes / 14,
            "{ delay_ms = 500 }",
        ),
    )
    .unwrap();
    let coordinator = |name: &str, port: u16| {
        let run = Submit {
            namespace: "/ha/",
            spec: &spec,
            run_id: "r2",
        };
        etcd_coordinator(dir.path(), name, port, &etcd, &run, &["--lease-ttl", "2"])
    };
    let (pa, pb) = (free_port(), free_port());
    let (ea, eb) = (
        format!("http://127.0.0.1:{pa}"),
        format!("http://127.0.0.1:{pb}"),
    );
    let mut a = coordinator("a", pa);
    control(&ea, Duration::from_secs(60)).await;
    let b = coordinator("b", pb);
    let both = format!("{ea},{eb}");
    let _w0 = Proc::spawn(dir.path(), "w0", &worker_args(&both, "w0", "5"));
    let _w1 = Proc::spawn(dir.path(), "w1", &worker_args(&both, "w1", "5"));

    let before = wait_for(
        std::slice::from_ref(&ea),
        "r2",
        Duration::from_secs(120),
        "progress under a",
        |s| done_tasks(s) >= 3,
    )
    .await;
    let total = stage0(&before).tasks_total;
    assert!(total >= 10, "{total} tasks");
    assert!(b.log_text().contains("standing by"), "{}", b.log_text());
    a.kill9();

    // b takes over, resumes from the durable records, and the workers follow it.
    let after = wait_for(
        std::slice::from_ref(&eb),
        "r2",
        Duration::from_secs(120),
        "progress under b",
        |s| done_tasks(s) >= done_tasks(&before) + 2,
    )
    .await;
    assert!(b.log_text().contains("elected leader"));
    assert!(
        stage0(&after).tasks_done < total,
        "the run must still be going"
    );

    // etcd goes away for a while and comes back with its data.
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.spawn();

    let end = wait_for(
        std::slice::from_ref(&eb),
        "r2",
        Duration::from_secs(180),
        "the run to end",
        |s| s.state != v1::RunState::Running as i32,
    )
    .await;
    assert!(succeeded(&end), "{end:?}\n{}", b.log_text());
    assert_eq!(stage0(&end).tasks_done, total);
    // The client from before the restart reconnects by itself.
    let (rows, quarantined) = support::committed_rows(&state, &RunId("r2".into()), 0, &out).await;
    assert_eq!(rows, corpus.sha_counts().await);
    assert!(quarantined.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_workers_and_a_restarted_coordinator_resumes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = support::small_corpus(&dir.path().join("corpus"), 9, 0.003).await;
    let out = dir.path().join("out").to_str().unwrap().to_string();
    let spec = dir.path().join("run.toml");
    std::fs::write(
        &spec,
        support::echo_spec(
            &corpus.unlabelled_url(),
            &out,
            corpus.total_bytes / 6,
            "{ delay_ms = 1500 }",
        ),
    )
    .unwrap();
    let state_dir = dir.path().join("state");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let coordinator_args = args(&[
        "coordinator",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--lease-ttl",
        "3",
        "--run",
        spec.to_str().unwrap(),
        "--run-id",
        "r3",
    ]);
    let mut c1 = Proc::spawn(dir.path(), "c1", &coordinator_args);
    control(&endpoint, Duration::from_secs(60)).await;
    // w0 may finish its task when told to stop; w1 must give its task back.
    let mut w0 = Proc::spawn(dir.path(), "w0", &worker_args(&endpoint, "w0", "10"));
    let mut w1 = Proc::spawn(dir.path(), "w1", &worker_args(&endpoint, "w1", "0.2"));
    wait_until(
        "both workers to hold a task",
        Duration::from_secs(60),
        || !w0.tasks_started().is_empty() && !w1.tasks_started().is_empty(),
    )
    .await;
    w0.signal(libc::SIGTERM);
    w1.signal(libc::SIGTERM);
    assert_eq!(
        w1.wait(Duration::from_secs(10)).code(),
        Some(143),
        "{}",
        w1.log_text()
    );
    assert_eq!(
        w0.wait(Duration::from_secs(20)).code(),
        Some(143),
        "{}",
        w0.log_text()
    );
    let (r0, r1) = (w0.report(), w1.report());
    assert_eq!(
        (r0["completed"].as_u64(), r0["released"].as_u64()),
        (Some(1), Some(0)),
        "{r0}"
    );
    assert_eq!(
        (r1["completed"].as_u64(), r1["released"].as_u64()),
        (Some(0), Some(1)),
        "{r1}"
    );
    let mid = wait_for(
        std::slice::from_ref(&endpoint),
        "r3",
        Duration::from_secs(10),
        "w0's commit",
        |s| stage0(s).tasks_done == 1,
    )
    .await;
    // Giving a task back is not a failure.
    assert_eq!(stage0(&mid).attempts_failed, 0);
    assert_eq!(stage0(&mid).tasks_leased, 0);

    // The coordinator stops on SIGTERM; started again on its state, it resumes the run.
    c1.signal(libc::SIGTERM);
    assert!(
        c1.wait(Duration::from_secs(20)).success(),
        "{}",
        c1.log_text()
    );
    let _c2 = Proc::spawn(dir.path(), "c2", &coordinator_args);
    control(&endpoint, Duration::from_secs(60)).await;
    let _w2 = Proc::spawn(dir.path(), "w2", &worker_args(&endpoint, "w2", "5"));
    let end = wait_for(
        std::slice::from_ref(&endpoint),
        "r3",
        Duration::from_secs(120),
        "the run to end",
        |s| s.state != v1::RunState::Running as i32,
    )
    .await;
    assert!(succeeded(&end), "{end:?}");
    drop(_c2);
    let state = EmbeddedStore::open(&state_dir).unwrap();
    let run = RunId("r3".into());
    let (rows, _) = support::committed_rows(&state, &run, 0, &out).await;
    assert_eq!(rows, corpus.sha_counts().await);
    let commits = automaldesc_coordinator::stage_manager::read_commits(&state, &run, 0)
        .await
        .unwrap();
    assert_eq!(commits.iter().filter(|(_, c)| c.worker == "w0").count(), 1);
    assert!(commits.iter().all(|(_, c)| c.worker != "w1"));
}

/// Batch mode as the Kubernetes manifests run it (a Job of two coordinators and a Job of
/// workers): with `--exit-when-done` the leader tells the worker the work is finished and
/// exits 0; its standby then leads, finds the run ended (submitting the spec again is
/// harmless), and exits 0 too; the worker exits 0. Every process ends on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_coordinators_and_workers_all_exit_0_after_the_run() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = support::small_corpus(&d.join("corpus"), 9, 0.002).await;
    let spec = d.join("run.toml");
    std::fs::write(
        &spec,
        support::echo_spec(
            &corpus.unlabelled_url(),
            d.join("out").to_str().unwrap(),
            corpus.total_bytes / 4,
            "{ delay_ms = 100 }",
        ),
    )
    .unwrap();
    let ports = [free_port(), free_port()];
    let mut coordinators: Vec<Proc> = ["a", "b"]
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            let run = Submit {
                namespace: "/batch/",
                spec: &spec,
                run_id: "b1",
            };
            let c = etcd_coordinator(d, name, port, &etcd, &run, &["--exit-when-done"]);
            // The first one leads.
            std::thread::sleep(Duration::from_millis(500));
            c
        })
        .collect();
    let endpoints = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{}",
        ports[0], ports[1]
    );
    let mut worker = Proc::spawn(d, "w", &worker_args(&endpoints, "w0", "5"));
    assert_eq!(
        worker.wait(Duration::from_secs(120)).code(),
        Some(0),
        "{}",
        worker.log_text()
    );
    for c in &mut coordinators {
        assert_eq!(
            c.wait(Duration::from_secs(60)).code(),
            Some(0),
            "{}",
            c.log_text()
        );
    }
    let logs: Vec<String> = coordinators.iter().map(Proc::log_text).collect();
    assert!(
        logs.iter().all(|l| l.contains("elected leader")),
        "both led in turn"
    );
    let report = worker.report();
    assert!(report["completed"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["stopped"], false);
}
