//! The self-training loop end to end with a tiny random model (the real model's tokenizer
//! and chat template, two layers of width 64): two iterations run once with
//! `automaldesc loop` on this machine, and once through an `automaldesc coordinator`
//! process and two `automaldesc worker` processes, with the coordinator killed (SIGKILL)
//! mid-iteration and started again on its state. Both runs must produce every artifact,
//! put every unlabelled script in exactly one of accepted and rejected, have funnels that
//! add up, and accept the same scripts with the same answers. Both runs' datasets are then
//! exported (`automaldesc export`) and read back every way (`support/export_check.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use automaldesc_common::ids::RunId;
use automaldesc_common::parquet_io::read_dataset;
use automaldesc_common::schema::{CorpusRow, LabelledRow, RejectedRow};
use automaldesc_common::store::{child, open_store};
use automaldesc_coordinator::stage_manager::read_commits;
use automaldesc_coordinator::state::EmbeddedStore;
use automaldesc_loop::config::LoopConfig;
use automaldesc_loop::report::{FunnelSummary, IterationReport};
use automaldesc_proto::v1;
use object_store::path::Path as ObjectPath;

mod support;
use support::etcd::free_port;
use support::export_check::{
    check_exported, check_refusals, check_tampering, export, refused, run_export, Answer, Expected,
};
use support::procs::{bin, control, succeeded, wait_for, Proc};
use support::tiny_model::{
    loop_config, real_model, write_small_loop_corpus, write_spec, write_tiny_model,
};

/// What one iteration's aggregate stage committed.
struct Outcome {
    accepted: BTreeMap<String, LabelledRow>,
    rejected: BTreeMap<String, RejectedRow>,
    funnel: FunnelSummary,
}

async fn outcome(state: &EmbeddedStore, output: &str, k: u32) -> Outcome {
    let stage = LoopConfig::stages_of(k).aggregate;
    let commits = read_commits(state, &RunId("e2e".into()), stage)
        .await
        .unwrap();
    assert_eq!(commits.len(), 1, "aggregate is one task");
    let files: Vec<String> = commits[0]
        .1
        .outputs
        .iter()
        .map(|o| o.path.clone())
        .collect();
    let (store, _) = open_store(output).unwrap();
    let dir_of = |part: &str| {
        let f = files.iter().find(|f| f.contains(part)).unwrap();
        ObjectPath::from(&f[..f.rfind('/').unwrap()])
    };
    let labels: Vec<LabelledRow> = read_dataset(store.clone(), &dir_of("/train/labels/"))
        .await
        .unwrap();
    let rejected: Vec<RejectedRow> = read_dataset(store.clone(), &dir_of("/rejected/"))
        .await
        .unwrap();
    let funnel_path = files.iter().find(|f| f.ends_with("funnel.json")).unwrap();
    let bytes = store
        .get(&ObjectPath::from(funnel_path.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(files.iter().any(|f| f.ends_with("manifest.json")));
    let accepted = labels
        .into_iter()
        .filter(|l| l.provenance.starts_with(&format!("iter-{k}:")))
        .map(|l| (l.sha256.clone(), l))
        .collect();
    let mut by_sha = BTreeMap::new();
    for r in rejected {
        assert!(
            by_sha.insert(r.sha256.clone(), r).is_none(),
            "rejected twice"
        );
    }
    Outcome {
        accepted,
        rejected: by_sha,
        funnel: serde_json::from_slice(&bytes).unwrap(),
    }
}

/// What the export of iteration `k` must hold; `lineage` is the base model's sha256 and
/// the config hash.
fn expected<'a>(o: &'a Outcome, k: u32, lineage: (&'a str, &'a str)) -> Expected<'a> {
    Expected {
        iteration: k,
        accepted: &o.accepted,
        rejected: o.rejected.len(),
        funnel: &o.funnel,
        confidence: 0.45,
        model_sha256: lineage.0,
        config_hash: lineage.1,
    }
}

/// Both iterations' outcomes of a finished run.
async fn outcomes(state_dir: &Path, output: &str) -> [Outcome; 2] {
    let state = EmbeddedStore::open(state_dir).unwrap();
    [
        outcome(&state, output, 1).await,
        outcome(&state, output, 2).await,
    ]
}

async fn report(state: &EmbeddedStore, output: &str, stage: u32) -> (IterationReport, Vec<String>) {
    let commits = read_commits(state, &RunId("e2e".into()), stage)
        .await
        .unwrap();
    let files: Vec<String> = commits
        .iter()
        .flat_map(|(_, c)| c.outputs.iter().map(|o| o.path.clone()))
        .collect();
    let (store, _) = open_store(output).unwrap();
    let json = files.iter().find(|f| f.ends_with("report.json")).unwrap();
    let bytes = store
        .get(&ObjectPath::from(json.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    (serde_json::from_slice(&bytes).unwrap(), files)
}

/// Checks one finished run; returns the accepted answers of each iteration.
async fn check_run(
    state_dir: &Path,
    output: &str,
    corpus: &BTreeSet<String>,
) -> Vec<BTreeMap<String, LabelledRow>> {
    let state = EmbeddedStore::open(state_dir).unwrap();
    let mut accepted = Vec::new();
    for k in 1..=2 {
        let o = outcome(&state, output, k).await;
        let acc: BTreeSet<&String> = o.accepted.keys().collect();
        let rej: BTreeSet<&String> = o.rejected.keys().collect();
        assert!(
            acc.is_disjoint(&rej),
            "iteration {k}: accepted and rejected"
        );
        let all: BTreeSet<String> = acc.union(&rej).map(|s| s.to_string()).collect();
        assert_eq!(&all, corpus, "iteration {k}: every script exactly once");
        let f = &o.funnel;
        eprintln!("iteration {k}: {} accepted; funnel {f:?}", o.accepted.len());
        assert!(f.adds_up(), "{f:?}");
        assert_eq!(f.unlabelled, corpus.len() as u64);
        assert_eq!(f.accepted, o.accepted.len() as u64 + f.accepted_in_seed);
        assert_eq!(f.training_set, f.seed + o.accepted.len() as u64);
        let rejected_by_filter: u64 = f.rejected.values().sum();
        assert_eq!(rejected_by_filter + f.unprocessed, o.rejected.len() as u64);
        assert!(f.generated_tokens > 0);
        assert!(
            o.accepted.values().all(|l| !l.summary.is_empty()),
            "accepted answers carry a summary"
        );
        accepted.push(o.accepted);
    }
    let (base, _) = report(&state, output, 1).await;
    assert_eq!(base.annotator, "base");
    assert!(base.previous.is_none() && base.funnel.is_none());
    let judge = base.judge_check.as_ref().unwrap();
    assert_eq!(
        judge.benign.total + judge.malicious.total,
        base.evaluation.scripts,
        "the judge read every reference summary"
    );
    for k in 1..=2u32 {
        let (r, files) = report(&state, output, LoopConfig::stages_of(k).report).await;
        assert_eq!(r.annotator, format!("V{k}"));
        // The judge check trained a judge (no judge reaches 1.0 on the base model here), and
        // the funnel says which judge ran and whether check 5 did.
        let j = r
            .funnel
            .as_ref()
            .unwrap()
            .judge
            .as_ref()
            .expect("the judge choice");
        assert!(j.trained.is_some(), "{j:?}");
        assert!(matches!(j.judge.as_str(), "adapter" | "none"), "{j:?}");
        assert_eq!(j.check5, j.judge == "adapter");
        if !j.check5 {
            assert_eq!(r.funnel.as_ref().unwrap().rejected["judge-disagreement"], 0);
        }
        // The training summary: targets end, the label scores are there.
        let t = r.training.as_ref().expect("the training summary");
        assert_eq!(t.targets_cut, 0);
        assert_eq!(t.summary_tokens, Some(64));
        assert!(!t.epochs.is_empty());
        assert!(r.label_scores.as_ref().is_some_and(|l| l.samples > 0));
        assert_eq!(r.history.len(), k as usize + 1, "base, V1.. in the history");
        let (prev, cmp) = r.previous.as_ref().unwrap();
        assert_eq!(prev, if k == 1 { "base" } else { "V1" });
        assert_eq!(cmp.scripts, r.evaluation.scripts);
        assert_eq!(r.evaluation.missing_scripts, 0);
        assert_eq!(r.funnel.as_ref().unwrap().unlabelled, corpus.len() as u64);
        let p = r.preference.as_ref().unwrap();
        assert_eq!(p.newer_wins + p.older_wins + p.orders_disagree, p.scripts);
        for name in ["report.md", "report.json", "funnel.svg", "languages.svg"] {
            assert!(
                files.iter().any(|f| f.ends_with(name)),
                "{name} in {files:?}"
            );
        }
    }
    accepted
}

fn worker_args(endpoint: &str, id: &str) -> Vec<String> {
    [
        "worker",
        "--coordinator",
        endpoint,
        "--id",
        id,
        "--executors",
        "train,generate,judge-train,judge,filter,aggregate,report",
        "--patience",
        "60",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_iterations_locally_and_through_a_killed_coordinator_accept_the_same_scripts() {
    let Some(real) = real_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let d = root.as_path();
    eprintln!("working in {}", d.display());
    let _dir = if std::env::var_os("AUTOMALDESC_KEEP_TEST_DIR").is_some() {
        std::mem::forget(dir); // left for inspection
        None
    } else {
        Some(dir)
    };
    let model = d.join("tiny.gguf");
    write_tiny_model(&real, &model);
    let corpus_url = write_small_loop_corpus(d).await;
    let (store, prefix) = open_store(&corpus_url).unwrap();
    let rows: Vec<CorpusRow> = read_dataset(store, &child(&prefix, "unlabelled"))
        .await
        .unwrap();
    let corpus: BTreeSet<String> = rows.into_iter().map(|r| r.sha256).collect();
    assert!(corpus.len() >= 20, "{} unlabelled scripts", corpus.len());

    // Reference: the whole loop in one process.
    let out_local = d.join("out-local");
    let cfg_local = d.join("local.toml");
    std::fs::write(&cfg_local, loop_config(d, &model, &out_local, "e2e", 2)).unwrap();
    let state_local = d.join("state-local");
    let run = Command::new(bin())
        .args(["loop", cfg_local.to_str().unwrap(), "--state-dir"])
        .arg(&state_local)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    // Progress lines name the stages.
    assert!(
        stderr.contains("stage 4/17 (iteration 1 train)"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("# Run e2e: iteration 2 (V2)"), "{stdout}");
    for name in [
        "base/report.md",
        "V1/funnel.svg",
        "V2/report.json",
        "V2/languages.svg",
        "stages.md",
    ] {
        assert!(out_local.join("reports").join(name).exists(), "{name}");
    }
    let local = check_run(&state_local, out_local.to_str().unwrap(), &corpus).await;

    // The run's product: its dataset in the release format, read back every way.
    let model_sha256 = automaldesc_common::sha256_hex(&std::fs::read(&model).unwrap());
    let config_hash = |cfg: &Path| {
        LoopConfig::from_toml(&std::fs::read_to_string(cfg).unwrap())
            .unwrap()
            .hash()
    };
    let (model_sha256, local_hash) = (model_sha256, config_hash(&cfg_local));
    let lineage = (model_sha256.as_str(), local_hash.as_str());
    let local_outcomes = outcomes(&state_local, out_local.to_str().unwrap()).await;
    let local_source = ["--state-dir", state_local.to_str().unwrap()];
    let export_v2 = d.join("export-v2");
    run_export(&local_source, &export_v2, "parquet", 2);
    let exported = check_exported(
        &export_v2,
        "parquet",
        &expected(&local_outcomes[1], 2, lineage),
        &corpus_url,
    )
    .await;
    run_export(&local_source, &d.join("export-v1"), "jsonl", 1);
    check_exported(
        &d.join("export-v1"),
        "jsonl",
        &expected(&local_outcomes[0], 1, lineage),
        &corpus_url,
    )
    .await;
    let latest = export(&[
        "e2e",
        "--state-dir",
        local_source[1],
        "--out",
        d.join("export-latest").to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&latest.stdout).contains("exported run e2e iteration 2 to"),
        "the last iteration by default: {latest:?}"
    );
    check_refusals(&state_local, &export_v2, d);
    check_tampering(&state_local, LoopConfig::stages_of(2).aggregate, d).await;

    // The same run on a coordinator process and two workers; the coordinator dies mid-run.
    let out_cluster = d.join("out-cluster");
    let cfg_cluster = d.join("cluster.toml");
    std::fs::write(&cfg_cluster, loop_config(d, &model, &out_cluster, "e2e", 2)).unwrap();
    let spec_path = d.join("spec.toml");
    write_spec(&cfg_cluster, &spec_path);
    let state_cluster = d.join("state-cluster");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let coordinator_args: Vec<String> = [
        "coordinator",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--state-dir",
        state_cluster.to_str().unwrap(),
        "--lease-ttl",
        "5",
        "--run",
        spec_path.to_str().unwrap(),
        "--run-id",
        "e2e",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut c1 = Proc::spawn(d, "c1", &coordinator_args);
    control(&endpoint, Duration::from_secs(60)).await;
    let _w0 = Proc::spawn(d, "w0", &worker_args(&endpoint, "w0"));
    let _w1 = Proc::spawn(d, "w1", &worker_args(&endpoint, "w1"));
    let generate1 = LoopConfig::stages_of(1).generate as usize;
    wait_for(
        std::slice::from_ref(&endpoint),
        "e2e",
        Duration::from_secs(600),
        "iteration 1's generate stage to commit a task",
        |s| s.stages.get(generate1).is_some_and(|st| st.tasks_done >= 1),
    )
    .await;
    c1.kill9();
    let _c2 = Proc::spawn(d, "c2", &coordinator_args);
    control(&endpoint, Duration::from_secs(60)).await;
    let early = d.join("export-running");
    let stderr = refused(&export(&[
        "e2e",
        "--coordinator",
        &endpoint,
        "--out",
        early.to_str().unwrap(),
    ]));
    assert!(
        stderr.contains("run e2e is still running (stage "),
        "{stderr}"
    );
    assert!(!early.exists());
    let end = wait_for(
        std::slice::from_ref(&endpoint),
        "e2e",
        Duration::from_secs(900),
        "the run to end",
        |s| s.state != v1::RunState::Running as i32,
    )
    .await;
    assert!(succeeded(&end), "{end:?}");
    let export_cluster = d.join("export-cluster");
    run_export(&["--coordinator", &endpoint], &export_cluster, "parquet", 2);
    drop(_c2);
    // The killed coordinator's successor took the run up once, and the record says when.
    let store = EmbeddedStore::open(&state_cluster).unwrap();
    let (_, record) = automaldesc_coordinator::run_manager::read_run(&store, &RunId("e2e".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.resumed_ms.len(), 1, "{record:?}");
    drop(store);
    let cluster = check_run(&state_cluster, out_cluster.to_str().unwrap(), &corpus).await;
    let cluster_outcomes = outcomes(&state_cluster, out_cluster.to_str().unwrap()).await;
    let cluster_hash = config_hash(&cfg_cluster);
    let cluster_lineage = (model_sha256.as_str(), cluster_hash.as_str());
    let exported_cluster: Vec<Answer> = check_exported(
        &export_cluster,
        "parquet",
        &expected(&cluster_outcomes[1], 2, cluster_lineage),
        &corpus_url,
    )
    .await;
    assert_eq!(
        exported, exported_cluster,
        "both runs export the same pseudo-labels"
    );

    assert_eq!(
        local.iter().map(BTreeMap::len).collect::<Vec<_>>(),
        cluster.iter().map(BTreeMap::len).collect::<Vec<_>>()
    );
    for (k, (a, b)) in local.iter().zip(&cluster).enumerate() {
        let strip = |m: &BTreeMap<String, LabelledRow>| -> Vec<(String, u8, String, String)> {
            m.values()
                .map(|l| {
                    (
                        l.sha256.clone(),
                        l.label.as_u8(),
                        l.language.as_str().to_string(),
                        l.summary.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(
            strip(a),
            strip(b),
            "iteration {}: the same accepted answers",
            k + 1
        );
    }
    assert!(
        local.iter().any(|m| !m.is_empty()),
        "some scripts are accepted (the check above compares something)"
    );
}
