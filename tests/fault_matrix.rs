//! The fault matrix: every fault an operator meets, tried on real processes (`automaldesc
//! coordinator` leader and standby on a real etcd, `automaldesc worker`s, and `automaldesc
//! submit --wait` attached as a client), each case ending with an independent count of
//! every input script from the state store and the committed files: committed exactly
//! once, or quarantined with a durable record and its reason, or the run FAILED with the
//! cause. Nothing may be lost or duplicated, and no file outside the committed ones (nor
//! an empty directory) may be left in the output.
//!
//! The cases run one after another in one test (so they do not compete for the CPU and
//! the timings mean something) and the test prints the table (and writes it to
//! `target/test-artifacts/fault-matrix.md`); a failed case fails the test after the table.
//! "recover s" is the time from the fault (or, for a fault that ends, its end) to the
//! moment the cluster dealt with it: the lost lease expired (worker faults), the standby
//! committed (leader faults), the cluster committed again (etcd, object store, disk), the
//! run failed (a disk that stays full), or the client heard the refusal (bad submissions).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use automaldesc_common::ids::RunId;
use automaldesc_common::parquet_io::{write_dataset, WriterOptions};
use automaldesc_common::schema::{CorpusRow, LabelledRow};
use automaldesc_common::store::open_store;
use automaldesc_common::{Label, Language};
use automaldesc_coordinator::state::StateStore;
use automaldesc_proto::v1;
use tokio::time::Instant;

mod support;
use support::etcd::{free_port, Etcd};
use support::procs::{done_tasks, wait_for, Proc};

const TTL: &str = "2";

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// One row of the table.
struct Row {
    case: &'static str,
    scripts_in: u64,
    committed: u64,
    quarantined: u64,
    lost: u64,
    duplicated: u64,
    phase: String,
    exit: String,
    recover: String,
}

/// A cluster for one case: etcd, a leader (and a standby), workers, a corpus, a spec.
struct Env {
    dir: tempfile::TempDir,
    etcd: Etcd,
    corpus: support::Corpus,
    out: String,
    spec: PathBuf,
    endpoints: Vec<String>,
    coordinators: Vec<Proc>,
    workers: Vec<Proc>,
    client: Option<Proc>,
    /// The fault-injection control file the processes read.
    faults: PathBuf,
    run: String,
}

struct Setup {
    coordinators: usize,
    workers: usize,
    /// The echo stage's config.
    config: &'static str,
    /// Extra spec text (a `[limits]` table).
    limits: &'static str,
    /// The processes read the fault-injection control file.
    inject: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            coordinators: 1,
            workers: 3,
            config: "{ delay_ms = 700 }",
            limits: "",
            inject: false,
        }
    }
}

impl Env {
    async fn start(name: &str, seed: u64, setup: Setup) -> anyhow::Result<Self> {
        let etcd = Etcd::start().context("etcd is required for the fault matrix")?;
        let dir = tempfile::tempdir()?;
        let corpus = support::small_corpus(&dir.path().join("corpus"), seed, 0.003).await;
        let out = dir.path().join("out").to_str().unwrap().to_string();
        let spec = dir.path().join("run.toml");
        let text = support::echo_spec(
            &corpus.unlabelled_url(),
            &out,
            corpus.total_bytes / 16,
            setup.config,
        );
        std::fs::write(&spec, format!("{text}{}", setup.limits))?;
        let faults = dir.path().join("faults");
        let mut env = Self {
            dir,
            etcd,
            corpus,
            out,
            spec,
            endpoints: Vec::new(),
            coordinators: Vec::new(),
            workers: Vec::new(),
            client: None,
            faults,
            run: format!("{name}-1"),
        };
        for i in 0..setup.coordinators {
            env.add_coordinator(&format!("c{i}"), setup.inject);
            if i == 0 {
                support::procs::control(&env.endpoints[0], Duration::from_secs(60)).await;
            }
        }
        for i in 0..setup.workers {
            env.add_worker(&format!("w{i}"), setup.inject);
        }
        Ok(env)
    }

    fn injection(&self, on: bool) -> Vec<(&str, &str)> {
        match on {
            true => vec![(
                automaldesc_common::fault_store::FAULTS_VAR,
                self.faults.to_str().unwrap(),
            )],
            false => Vec::new(),
        }
    }

    fn add_coordinator(&mut self, name: &str, inject: bool) {
        let port = free_port();
        let list = args(&[
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            name,
            "--etcd",
            &self.etcd.endpoint(),
            "--etcd-namespace",
            "/matrix/",
            "--leader-ttl",
            TTL,
            "--lease-ttl",
            TTL,
            "--retry-backoff",
            "0.2",
            "--speculate-after",
            "0",
        ]);
        let env = self.injection(inject);
        let p = Proc::spawn_with_env(self.dir.path(), name, &list, &env);
        self.coordinators.push(p);
        self.endpoints.push(format!("http://127.0.0.1:{port}"));
    }

    fn all(&self) -> String {
        self.endpoints.join(",")
    }

    fn client_flags(&self) -> Vec<String> {
        args(&[
            "--coordinator",
            &self.all(),
            "--request-timeout",
            TTL,
            "--patience",
            "60",
        ])
    }

    fn add_worker(&mut self, name: &str, inject: bool) {
        let mut list = args(&["worker", "--id", name, "--grace", "2"]);
        list.extend(self.client_flags());
        let env = self.injection(inject);
        let p = Proc::spawn_with_env(self.dir.path(), name, &list, &env);
        self.workers.push(p);
    }

    /// `automaldesc submit <spec> --run-id <run> --wait` as the attached client.
    fn submit(&mut self, spec: &Path) {
        let mut list = args(&["submit", spec.to_str().unwrap(), "--run-id", &self.run]);
        list.push("--wait".into());
        list.extend(self.client_flags());
        let name = format!(
            "client-{}",
            self.dir.path().read_dir().map_or(0, |d| d.count())
        );
        self.client = Some(Proc::spawn(self.dir.path(), &name, &list));
    }

    async fn status(&self) -> Option<v1::RunStatus> {
        for e in &self.endpoints {
            let got = support::procs::get_run(e, &self.run, Duration::from_millis(500)).await;
            if got.is_some() {
                return got;
            }
        }
        None
    }

    /// Waits until `pred` holds of the run's status; returns when it did.
    async fn until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&v1::RunStatus) -> bool,
    ) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status().await {
                if pred(&s) {
                    return Ok(Instant::now());
                }
            }
            ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn done(&self) -> u32 {
        self.status().await.map_or(0, |s| done_tasks(&s))
    }

    /// Waits for the client to exit; returns the run's last status and the exit code.
    async fn finish(&mut self, timeout: Duration) -> anyhow::Result<(v1::RunStatus, i32)> {
        let client = self.client.as_mut().context("no client attached")?;
        let deadline = Instant::now() + timeout;
        let code = loop {
            if let Some(status) = client.try_wait() {
                break status.code().unwrap_or(-1);
            }
            ensure!(
                Instant::now() < deadline,
                "the client did not exit:\n{}",
                client.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let end = wait_for(
            &self.endpoints,
            &self.run,
            Duration::from_secs(30),
            "the run's end",
            |s| s.state != v1::RunState::Running as i32,
        )
        .await;
        // The workers stop now, so nothing is written while the output is checked.
        for w in &mut self.workers {
            if w.try_wait().is_none() {
                w.kill9();
            }
        }
        Ok((end, code))
    }

    async fn store(&self) -> automaldesc_coordinator::state::EtcdStore {
        self.etcd.store("/matrix/").await
    }

    /// The independent count of every input script, and the output checked for strays.
    async fn account(&self, case: &'static str, end: &v1::RunStatus, code: i32) -> Row {
        let store = self.store().await;
        let input = self.corpus.sha_counts().await;
        let run = RunId(self.run.clone());
        let (rows, alone) = support::committed_rows(&store, &run, 0, &self.out).await;
        let mut quarantined: BTreeMap<String, u64> = BTreeMap::new();
        for sha in alone {
            *quarantined.entry(sha).or_default() += 1;
        }
        for (task, reason) in support::quarantined_tasks(&store, &self.run, 0).await {
            assert!(
                !reason.is_empty(),
                "{case}: task {task} quarantined without a reason"
            );
            for sha in support::task_scripts(&store, &self.run, 0, task).await {
                *quarantined.entry(sha).or_default() += 1;
            }
        }
        let failed = end.state == v1::RunState::Failed as i32;
        let (mut lost, mut duplicated, mut unprocessed) = (0, 0, 0);
        for (sha, &n) in &input {
            let n = n as u64;
            let c = rows.get(sha).copied().unwrap_or(0) as u64;
            let q = quarantined.get(sha).copied().unwrap_or(0);
            duplicated += (c + q).saturating_sub(n);
            let missing = n.saturating_sub(c + q);
            if failed {
                unprocessed += missing;
            } else {
                lost += missing;
            }
        }
        self.check_output(case, &store, &run).await;
        let phase = v1::RunState::try_from(end.state)
            .map_or("?", |s| s.as_str_name())
            .trim_start_matches("RUN_STATE_")
            .to_string();
        Row {
            case,
            scripts_in: input.values().sum::<usize>() as u64,
            committed: rows.values().sum::<usize>() as u64,
            quarantined: quarantined.values().sum(),
            lost,
            duplicated,
            phase: if failed {
                format!("{phase} ({unprocessed} not run)")
            } else {
                phase
            },
            exit: code.to_string(),
            recover: String::new(),
        }
    }

    /// Every file under the run's output is a committed output or a stage's
    /// committed-file list, and no directory is empty.
    async fn check_output(&self, case: &str, store: &dyn StateStore, run: &RunId) {
        let root = Path::new(&self.out).join("runs").join(&run.0);
        let commits = automaldesc_coordinator::stage_manager::read_commits(store, run, 0)
            .await
            .unwrap();
        // Committed paths are paths inside the local store: absolute, without the '/'.
        let committed: Vec<PathBuf> = commits
            .iter()
            .flat_map(|(_, c)| &c.outputs)
            .map(|o| PathBuf::from(format!("/{}", o.path)))
            .collect();
        let mut files = Vec::new();
        let mut empty_dirs = Vec::new();
        walk(&root, &mut files, &mut empty_dirs);
        let files: Vec<PathBuf> = files
            .into_iter()
            .map(|f| f.canonicalize().unwrap_or(f))
            .collect();
        let strays: Vec<&PathBuf> = files
            .iter()
            .filter(|f| {
                !committed.contains(f)
                    && f.file_name().and_then(|n| n.to_str()) != Some("committed.json")
            })
            .collect();
        assert!(
            strays.is_empty(),
            "{case}: files no commit references: {strays:?}"
        );
        assert!(
            empty_dirs.is_empty(),
            "{case}: empty directories: {empty_dirs:?}"
        );
    }
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, empty: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut any = false;
    for e in entries.flatten() {
        any = true;
        if e.path().is_dir() {
            walk(&e.path(), files, empty);
        } else {
            files.push(e.path());
        }
    }
    if !any {
        empty.push(dir.to_path_buf());
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// The stage's counters from a status.
fn stage0(s: &v1::RunStatus) -> v1::StageProgress {
    s.stages.first().cloned().unwrap_or_default()
}

async fn worker_kill9() -> anyhow::Result<Row> {
    let mut env = Env::start("kill", 21, Setup::default()).await?;
    let spec = env.spec.clone();
    env.submit(&spec);
    let w0 = &env.workers[0];
    let started = Instant::now() + Duration::from_secs(60);
    while w0.tasks_started().is_empty() {
        ensure!(Instant::now() < started, "w0 took no task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.workers[0].kill9();
    let fault = Instant::now();
    let expired = env
        .until(
            "the dead worker's lease to expire",
            Duration::from_secs(30),
            |s| stage0(s).leases_expired >= 1,
        )
        .await?;
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    let mut row = env.account("worker kill -9", &end, code).await;
    row.recover = secs(expired - fault);
    ensure!(code == 0 && row.quarantined == 0, "{}", row.phase);
    Ok(row)
}

async fn worker_stop_cont() -> anyhow::Result<Row> {
    let setup = Setup {
        config: "{ delay_ms = 1500 }",
        ..Setup::default()
    };
    let mut env = Env::start("stall", 22, setup).await?;
    let spec = env.spec.clone();
    env.submit(&spec);
    let mut worst = Duration::ZERO;
    let mut seen = 0;
    for round in 1..=3u32 {
        // w0 stalls in the middle of a task, long enough to lose it; then it continues.
        let deadline = Instant::now() + Duration::from_secs(60);
        while env.workers[0].tasks_started().len() <= seen {
            ensure!(
                Instant::now() < deadline,
                "w0 took no task in round {round}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen = env.workers[0].tasks_started().len();
        env.workers[0].signal(libc::SIGSTOP);
        let fault = Instant::now();
        let expired = env
            .until(
                "the stalled lease to expire",
                Duration::from_secs(30),
                |s| stage0(s).leases_expired >= round,
            )
            .await?;
        worst = worst.max(expired - fault);
        env.workers[0].signal(libc::SIGCONT);
        if env
            .status()
            .await
            .is_some_and(|s| s.state != v1::RunState::Running as i32)
        {
            break;
        }
    }
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    let mut row = env.account("worker SIGSTOP/SIGCONT x3", &end, code).await;
    row.recover = secs(worst);
    ensure!(code == 0 && row.quarantined == 0, "{}", row.phase);
    Ok(row)
}

/// The leader is killed (`kill9`) or frozen for good (SIGSTOP) while `submit --wait` is
/// attached with both endpoints.
async fn leader_fault(case: &'static str, freeze: bool) -> anyhow::Result<Row> {
    let setup = Setup {
        coordinators: 2,
        ..Setup::default()
    };
    let mut env = Env::start(if freeze { "freeze" } else { "leader" }, 23, setup).await?;
    let spec = env.spec.clone();
    env.submit(&spec);
    env.until("progress under the leader", Duration::from_secs(60), |s| {
        done_tasks(s) >= 3
    })
    .await?;
    let before = env.done().await;
    if freeze {
        env.coordinators[0].signal(libc::SIGSTOP);
    } else {
        env.coordinators[0].kill9();
    }
    let fault = Instant::now();
    // Only the standby can answer now.
    let standby = env.endpoints[1].clone();
    let deadline = fault + Duration::from_secs(60);
    let recovered = loop {
        let got = support::procs::get_run(&standby, &env.run, Duration::from_secs(1)).await;
        if got.is_some_and(|s| done_tasks(&s) > before) {
            break Instant::now();
        }
        ensure!(Instant::now() < deadline, "the standby made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    if freeze {
        env.coordinators[0].kill9();
    }
    let mut row = env.account(case, &end, code).await;
    row.recover = secs(recovered - fault);
    ensure!(code == 0 && row.quarantined == 0, "{}", row.phase);
    Ok(row)
}

async fn etcd_down() -> anyhow::Result<Row> {
    let mut env = Env::start("etcd", 24, Setup::default()).await?;
    let spec = env.spec.clone();
    env.submit(&spec);
    env.until("progress", Duration::from_secs(60), |s| done_tasks(s) >= 2)
        .await?;
    env.etcd.stop();
    // Three lease TTLs without the state store.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = env.done().await;
    env.etcd.spawn();
    let back = Instant::now();
    let committed = env
        .until(
            "a commit after etcd is back",
            Duration::from_secs(60),
            |s| done_tasks(s) > before,
        )
        .await?;
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    let mut row = env
        .account("etcd down 6 s (3 lease TTLs)", &end, code)
        .await;
    row.recover = secs(committed - back);
    ensure!(code == 0 && row.quarantined == 0, "{}", row.phase);
    Ok(row)
}

/// The object store fails (`mode` written to the control file) for `for_s` seconds, or for
/// good with `None`.
async fn store_fault(
    case: &'static str,
    mode: &str,
    for_s: Option<u64>,
    limits: &'static str,
) -> anyhow::Result<Row> {
    let setup = Setup {
        inject: true,
        limits,
        ..Setup::default()
    };
    let mut env = Env::start(if for_s.is_some() { "store" } else { "full" }, 25, setup).await?;
    let spec = env.spec.clone();
    env.submit(&spec);
    env.until("progress", Duration::from_secs(60), |s| done_tasks(s) >= 2)
        .await?;
    std::fs::write(&env.faults, mode)?;
    let fault = Instant::now();
    let recover = match for_s {
        Some(s) => {
            tokio::time::sleep(Duration::from_secs(s)).await;
            let before = env.done().await;
            std::fs::write(&env.faults, "")?;
            let cleared = Instant::now();
            let again = env
                .until("a commit after the fault", Duration::from_secs(90), |s| {
                    done_tasks(s) > before
                })
                .await?;
            again - cleared
        }
        None => {
            let failed = env
                .until("the run to fail", Duration::from_secs(60), |s| {
                    s.state == v1::RunState::Failed as i32
                })
                .await?;
            failed - fault
        }
    };
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    std::fs::write(&env.faults, "")?;
    let injected: usize = env
        .workers
        .iter()
        .chain(&env.coordinators)
        .map(|p| p.log_text().matches("injected object-store fault").count())
        .sum();
    let mut row = env.account(case, &end, code).await;
    row.recover = secs(recover);
    ensure!(injected > 0, "no fault was injected");
    ensure!(
        stage0(&end).transient_faults > 0,
        "no transient fault counted: {end:?}"
    );
    ensure!(row.quarantined == 0, "transient faults quarantined scripts");
    match for_s {
        Some(_) => ensure!(code == 0, "{}", row.phase),
        None => {
            ensure!(code == 4, "exit {code}");
            ensure!(
                end.error.contains("no space left on device"),
                "the cause is not named: {}",
                end.error
            );
        }
    }
    row.case = case;
    row.phase = format!("{} [{injected} faults injected]", row.phase);
    Ok(row)
}

/// A task that always fails: quarantined after its attempts, more than the run allows
/// (its one script is about 0.2% of the input; the spec allows 0.1%).
async fn poison_over_budget() -> anyhow::Result<Row> {
    let setup = Setup {
        config: r#"{ delay_ms = 200, fail_marker = "FAIL-ALWAYS" }"#,
        limits: "\n[limits]\nmax_quarantined_fraction = 0.001\n",
        ..Setup::default()
    };
    let mut env = Env::start("poison", 26, setup).await?;
    env.corpus.poison_named("fails", b"FAIL-ALWAYS").await;
    let spec = env.spec.clone();
    let started = Instant::now();
    env.submit(&spec);
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    let mut row = env
        .account("a poisoned task over max_quarantined_fraction", &end, code)
        .await;
    row.recover = secs(started.elapsed());
    ensure!(code == 4, "exit {code}: {}", row.phase);
    ensure!(
        end.error.contains("max_quarantined_fraction") && end.error.contains("failure marker"),
        "{}",
        end.error
    );
    Ok(row)
}

/// A script whose content does not hash to its sha256: quarantined alone, the run ends
/// SUCCEEDED_WITH_QUARANTINE (exit 3); the file is fixed and `retry-quarantined` commits it.
async fn corrupt_then_retry() -> anyhow::Result<Vec<Row>> {
    let setup = Setup {
        config: "{ delay_ms = 100 }",
        limits: "\n[limits]\nmax_quarantined_fraction = 0.5\n",
        ..Setup::default()
    };
    let mut env = Env::start("corrupt", 27, setup).await?;
    let mut forged = CorpusRow::new(b"echo 'forged identity'".to_vec(), "test:forged", None);
    forged.sha256 = "0".repeat(64);
    let opts = WriterOptions {
        file_stem: "forged".into(),
        ..WriterOptions::default()
    };
    let (store, unlabelled) = (env.corpus.store.clone(), env.corpus.unlabelled.clone());
    write_dataset(
        store.clone(),
        &unlabelled,
        vec![forged.clone()],
        opts.clone(),
    )
    .await?;
    let spec = env.spec.clone();
    env.submit(&spec);
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    let first = env
        .account("a forged sha256 (quarantined alone)", &end, code)
        .await;
    ensure!(code == 3, "exit {code}: {}", first.phase);
    ensure!(first.quarantined == 1, "{} quarantined", first.quarantined);
    ensure!(end.error.contains("quarantined"), "{}", end.error);

    // The cause is fixed (the row gets its true sha256) and the run goes again.
    let fixed = CorpusRow::new(forged.content.clone(), "test:forged", None);
    write_dataset(store, &unlabelled, vec![fixed], opts).await?;
    for i in 0..3 {
        env.add_worker(&format!("r{i}"), false);
    }
    let mut list = args(&["retry-quarantined", &env.run, "--wait"]);
    list.extend(env.client_flags());
    let started = Instant::now();
    env.client = Some(Proc::spawn(env.dir.path(), "retry", &list));
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    let mut second = env
        .account("... fixed, then retry-quarantined", &end, code)
        .await;
    second.recover = secs(started.elapsed());
    ensure!(code == 0, "exit {code}: {}", second.phase);
    Ok(vec![first, second])
}

/// Submissions refused before anything starts: the message names what is wrong, the
/// client exits 1, and the run id stays free for the corrected spec.
async fn refused_submissions() -> anyhow::Result<Vec<Row>> {
    let setup = Setup {
        workers: 0,
        config: "{ delay_ms = 50 }",
        ..Setup::default()
    };
    let mut env = Env::start("refused", 28, setup).await?;
    // Input whose files are not scripts: a labels dataset.
    let bad_input = env.dir.path().join("labels");
    let (store, prefix) = open_store(bad_input.to_str().unwrap())?;
    let labels = vec![LabelledRow {
        sha256: "ab".repeat(32),
        language: Language::Bash,
        label: Label::Benign,
        summary: "prints a greeting".into(),
        behaviours: Vec::new(),
        provenance: "seed".into(),
    }];
    let opts = WriterOptions {
        file_stem: "labels".into(),
        ..WriterOptions::default()
    };
    write_dataset(store, &prefix, labels, opts).await?;
    let good = std::fs::read_to_string(&env.spec)?;
    let cases: [(&'static str, String, &str); 3] = [
        (
            "input with a wrong schema (refused)",
            good.replace(&env.corpus.unlabelled_url(), bad_input.to_str().unwrap()),
            "column `content` is missing",
        ),
        (
            "unknown stage kind (refused)",
            good.replace("kind = \"echo\"", "kind = \"ecoh\""),
            "no executor for stage kind \"ecoh\"",
        ),
        (
            "a typo in a stage's config (refused)",
            good.replace("delay_ms", "dealy_ms"),
            "unknown field `dealy_ms`",
        ),
    ];
    let mut rows = Vec::new();
    for (i, (case, text, expect)) in cases.into_iter().enumerate() {
        let spec = env.dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&spec, text)?;
        let started = Instant::now();
        env.submit(&spec);
        let client = env.client.as_mut().context("client")?;
        let code = client.wait(Duration::from_secs(60)).code().unwrap_or(-1);
        let heard = started.elapsed();
        let log = client.log_text();
        ensure!(code == 1, "{case}: exit {code}\n{log}");
        ensure!(
            log.contains(expect),
            "{case}: the refusal does not say {expect:?}:\n{log}"
        );
        if i == 0 {
            ensure!(
                log.contains("labels-00000.parquet"),
                "the file is not named:\n{log}"
            );
        }
        rows.push(Row {
            case,
            scripts_in: env.corpus.sha_counts().await.values().sum::<usize>() as u64,
            committed: 0,
            quarantined: 0,
            lost: 0,
            duplicated: 0,
            phase: "refused at submit".into(),
            exit: code.to_string(),
            recover: secs(heard),
        });
    }
    // Nothing was recorded: the id is free, and the corrected spec runs under it.
    let store = env.store().await;
    let keys = store.list(&format!("runs/{}/", env.run)).await?;
    ensure!(
        keys.is_empty(),
        "a refused submission left records: {keys:?}"
    );
    env.add_worker("w0", false);
    env.add_worker("w1", false);
    let spec = env.spec.clone();
    env.submit(&spec);
    let (end, code) = env.finish(Duration::from_secs(120)).await?;
    let row = env
        .account("... the corrected spec, same run id", &end, code)
        .await;
    ensure!(code == 0, "exit {code}");
    rows.push(row);
    Ok(rows)
}

/// Runs one case on its own task, so a panic in it (a helper's assertion) fails the case,
/// not the whole matrix.
async fn case(
    fut: impl std::future::Future<Output = anyhow::Result<Vec<Row>>> + Send + 'static,
) -> Result<Vec<Row>, String> {
    match tokio::spawn(fut).await {
        Ok(r) => r.map_err(|e| format!("{e:#}")),
        Err(e) => Err(format!("panicked: {e}")),
    }
}

fn table(rows: &[(String, Result<Row, String>)]) -> String {
    let mut s = String::from(
        "| case | scripts in | committed | quarantined | lost | duplicated | run phase | client exit | recover s |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, r) in rows {
        match r {
            Ok(r) => s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.case,
                r.scripts_in,
                r.committed,
                r.quarantined,
                r.lost,
                r.duplicated,
                r.phase,
                r.exit,
                r.recover
            )),
            Err(e) => s.push_str(&format!(
                "| {name} | FAILED CASE: {} | | | | | | | |\n",
                e.replace('\n', " ").chars().take(300).collect::<String>()
            )),
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_ends_with_each_script_committed_once_quarantined_or_the_run_failed() {
    if Etcd::start().is_none() {
        return;
    }
    let mut rows: Vec<(String, Result<Row, String>)> = Vec::new();
    let mut add = |name: &str, r: Result<Vec<Row>, String>| match r {
        Ok(list) => rows.extend(list.into_iter().map(|r| (name.to_string(), Ok(r)))),
        Err(e) => rows.push((name.to_string(), Err(e))),
    };
    add(
        "worker kill -9",
        case(async { worker_kill9().await.map(|r| vec![r]) }).await,
    );
    add(
        "worker SIGSTOP/SIGCONT",
        case(async { worker_stop_cont().await.map(|r| vec![r]) }).await,
    );
    add(
        "leader kill -9",
        case(async {
            leader_fault("leader kill -9 (standby, submit --wait)", false)
                .await
                .map(|r| vec![r])
        })
        .await,
    );
    add(
        "leader SIGSTOP",
        case(async {
            leader_fault(
                "leader SIGSTOP, never resumed (standby, submit --wait)",
                true,
            )
            .await
            .map(|r| vec![r])
        })
        .await,
    );
    add(
        "etcd down",
        case(async { etcd_down().await.map(|r| vec![r]) }).await,
    );
    add(
        "object store unavailable",
        case(async {
            store_fault("object store unavailable 4 s", "unavailable", Some(4), "")
                .await
                .map(|r| vec![r])
        })
        .await,
    );
    add(
        "disk full",
        case(async {
            store_fault("output disk full 4 s", "full", Some(4), "")
                .await
                .map(|r| vec![r])
        })
        .await,
    );
    add(
        "disk full for good",
        case(async {
            store_fault(
                "output disk full for good (max_stall 4 s)",
                "full",
                None,
                "\n[limits]\nmax_stall = 4\n",
            )
            .await
            .map(|r| vec![r])
        })
        .await,
    );
    add(
        "poison",
        case(async { poison_over_budget().await.map(|r| vec![r]) }).await,
    );
    add("corrupt", case(corrupt_then_retry()).await);
    add("refused", case(refused_submissions()).await);
    let text = table(&rows);
    println!("\n{text}");
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    let _ = std::fs::write(artifacts.join("fault-matrix.md"), &text);
    for (name, r) in &rows {
        if let Ok(r) = r {
            assert_eq!(
                (r.lost, r.duplicated),
                (0, 0),
                "{name}: lost or duplicated scripts"
            );
        }
    }
    let failed: Vec<&String> = rows
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(n, _)| n)
        .collect();
    assert!(failed.is_empty(), "failed cases: {failed:?}\n{text}");
}
