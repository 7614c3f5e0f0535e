//! `automaldesc loop`: the self-training loop as one run on the distributed runtime.
//!
//! A loop config (TOML, unknown keys rejected) expands into a run spec whose stages are, for
//! the base model and then for each iteration k:
//!
//! | stage | kind | input | refs |
//! |---|---|---|---|
//! | evaluate base | generate | test scripts | |
//! | report base | report | test labels, one task | answers |
//! | train Vk | train | seed (k = 1) or the training set of iteration k-1, one task | |
//! | generate | generate | unlabelled corpus | adapter |
//! | judge | judge | the generated answers | |
//! | filter | filter | the judged answers | |
//! | aggregate | aggregate | every decision, one task | adapter |
//! | evaluate Vk | generate | test scripts | adapter |
//! | report Vk | report | test labels, one task | answers, previous, funnel, history |
//!
//! Each stage is a set of tasks that workers lease; a stage resumes after a crash at its
//! last committed task. `automaldesc loop CONFIG` runs it on this machine (embedded state,
//! in-process workers) and gathers the reports; `--print-spec` writes the run spec for
//! `automaldesc submit` to a cluster's coordinator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use automaldesc_common::ids::RunId;
use automaldesc_common::parquet_io::nonempty_dataset_layout;
use automaldesc_common::store::{block_on, open_store};
use clap::Args;
use object_store::path::Path as ObjectPath;
use object_store::PutPayload;

use crate::cluster_cmd::{run_local, LeaseArgs, LOOP_EXECUTORS};
use automaldesc_coordinator::run_manager::RunStatus;
use automaldesc_coordinator::stage_manager::read_commits;
use automaldesc_coordinator::state::EmbeddedStore;

#[cfg(test)]
mod tests;

use automaldesc_loop::config::{LoopConfig, BASE_REPORT};

#[derive(Args, Debug)]
pub struct LoopArgs {
    /// The loop config (TOML; see ARCHITECTURE.md for every key and its default).
    pub config: PathBuf,
    /// Directory of the embedded state; a run interrupted here resumes when started again.
    #[arg(long, default_value = "data/loop/state")]
    pub state_dir: PathBuf,
    /// Workers in this process (default: the config's `workers`).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Print the run spec (TOML) for `automaldesc submit` instead of running it here.
    #[arg(long)]
    pub print_spec: bool,
    /// Serve the dashboard, its JSON API and `/metrics` on this address while the loop runs
    /// (no token: keep it on a loopback address such as 127.0.0.1:8080).
    #[arg(long)]
    pub http_listen: Option<String>,
    #[command(flatten)]
    pub lease: LeaseArgs,
}

/// Checks that a dataset location holds Parquet files, for a clear error before the run.
fn check_dataset(what: &str, url: &str) -> anyhow::Result<()> {
    block_on(nonempty_dataset_layout(url))?.with_context(|| format!("{what} {url}"))?;
    Ok(())
}

pub fn run(args: LoopArgs) -> anyhow::Result<()> {
    let path = &args.config;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let cfg = LoopConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
    let model = PathBuf::from(&cfg.model);
    if !model.exists() {
        bail!(
            "model {} not found: run deploy/fetch_model.sh or set `model`",
            model.display()
        );
    }
    if let Some(judge) = &cfg.judge_model {
        if !PathBuf::from(judge).exists() {
            bail!("`judge_model` {judge} not found");
        }
    }
    let model_sha256 = automaldesc_loop::stages::train::file_sha256(&model)?;
    let spec = cfg.run_spec(&model_sha256, &cfg.summary_scripts()?);
    spec.validate()?;
    if args.print_spec {
        print!("{}", toml::to_string(&spec)?);
        return Ok(());
    }
    check_dataset("corpus", &cfg.corpus)?;
    for split in [&cfg.seed, &cfg.test] {
        for part in ["labels", "scripts"] {
            check_dataset("split", &format!("{}/{part}", split.trim_end_matches('/')))?;
        }
    }
    if !crate::cluster_cmd::logs_are_json() {
        eprintln!("run {}: {} stages", cfg.name, spec.stages.len());
        for i in 0..spec.stages.len() as u32 {
            eprintln!("  stage {}: {}", i + 1, LoopConfig::stage_name(i));
        }
    }
    let started = std::time::Instant::now();
    let names: Vec<String> = LOOP_EXECUTORS.iter().map(|s| s.to_string()).collect();
    let workers = crate::cluster_cmd::LocalWorkers {
        count: args.workers.unwrap_or(cfg.workers),
        executors: names,
        label: |i, _| LoopConfig::stage_name(i),
        http_listen: args.http_listen.clone(),
    };
    let status = run_local(
        spec,
        Some(cfg.name.clone()),
        &args.state_dir,
        args.lease.policy()?,
        workers,
    )?;
    crate::cluster_cmd::ensure_succeeded(&status)?;
    let gathered = gather_reports(&cfg, &args.state_dir, &status)?;
    tracing::info!(
        run = %cfg.name,
        minutes = started.elapsed().as_secs_f64() / 60.0,
        reports = %gathered,
        "run finished"
    );
    Ok(())
}

/// Copies every report stage's files to `<output>/reports/<annotator>/` and writes
/// `<output>/reports/stages.md` (each stage's tasks, scripts and wall time). Prints the
/// last report.
pub fn gather_reports(
    cfg: &LoopConfig,
    state_dir: &std::path::Path,
    status: &RunStatus,
) -> anyhow::Result<String> {
    let store = EmbeddedStore::open(state_dir)?;
    let run = RunId(cfg.name.clone());
    let (out, out_prefix) = open_store(&cfg.output)?;
    let reports_url = format!("{}/reports", cfg.output.trim_end_matches('/'));
    let mut last_md = String::new();
    let mut reports: Vec<(u32, String)> = vec![(BASE_REPORT, "base".into())];
    reports
        .extend((1..=cfg.iterations).map(|k| (LoopConfig::stages_of(k).report, format!("V{k}"))));
    block_on(async {
        for (stage, name) in &reports {
            for (_, commit) in read_commits(&store, &run, *stage).await? {
                for o in commit.outputs {
                    let src = ObjectPath::from(o.path.as_str());
                    let bytes = out.get(&src).await?.bytes().await?;
                    let file = src.filename().unwrap_or("file").to_string();
                    if file == "report.md" {
                        last_md = String::from_utf8_lossy(&bytes).into_owned();
                    }
                    let dst = automaldesc_common::store::child(
                        &out_prefix,
                        &format!("reports/{name}/{file}"),
                    );
                    out.put(&dst, PutPayload::from(bytes)).await?;
                }
            }
        }
        let md = stages_markdown(status);
        let dst = automaldesc_common::store::child(&out_prefix, "reports/stages.md");
        out.put(&dst, PutPayload::from(md.clone().into_bytes()))
            .await?;
        if !crate::cluster_cmd::logs_are_json() {
            eprintln!("{md}");
        }
        Ok::<_, anyhow::Error>(())
    })??;
    println!("{last_md}");
    Ok(reports_url)
}

/// Every stage's tasks, scripts in and out, and wall time, as a Markdown table.
pub fn stages_markdown(status: &RunStatus) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Run {}: stages\n", status.id);
    let _ = writeln!(
        s,
        "| # | stage | kind | tasks | scripts in | rows out | quarantined | retries | wall s |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
    let mut paused = false;
    for (i, st) in status.stages.iter().enumerate() {
        let started = automaldesc_coordinator::http::stage_started_ms(status, i);
        let wall =
            (st.finished_ms > 0).then(|| st.finished_ms.saturating_sub(started) as f64 / 1e3);
        if let Some(w) = wall {
            *by_kind.entry(st.kind.clone()).or_default() += w;
        }
        // A stage open when the run was taken up again also counts the pause before.
        let resumed = st.finished_ms > 0
            && status
                .resumed_ms
                .iter()
                .any(|&r| r > started && r < st.finished_ms);
        paused |= resumed;
        let wall = wall.map(|w| format!("{w:.1}{}", if resumed { " *" } else { "" }));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            st.index + 1,
            LoopConfig::stage_name(st.index),
            st.kind,
            st.counts.total,
            st.totals.scripts_done,
            st.totals.rows_out,
            st.totals.scripts_quarantined + st.totals.scripts_in_quarantined_tasks,
            st.totals.attempts_failed + st.totals.leases_expired,
            wall.unwrap_or_else(|| "-".to_string())
        );
    }
    if paused {
        let _ = writeln!(
            s,
            "\n\\* the run was taken up again by a coordinator while this stage was open: its \
             wall time includes the pause before."
        );
    }
    let _ = writeln!(
        s,
        "\nwall seconds by kind: {}",
        by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}
