//! Planning a stage from its input (the run's input, a URL, or an earlier stage's
//! committed files), and cleaning up after one: the list of committed files written next
//! to the outputs, and the files no commit references deleted.

use std::collections::BTreeSet;

use automaldesc_common::ids::RunId;
use automaldesc_common::parquet_io::{check_dataset_schema, file_layout, nonempty_dataset_layout};
use automaldesc_common::store::{local_dir, open_store, prune_empty_dirs};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use serde::Serialize;

use super::records::{data, from_json, stage_key, stage_output_url, to_json, RunError, StagePlan};
use crate::lease_manager::LeasePolicy;
use crate::planner::{plan, plan_single, InputFile, PlanOptions};
use crate::stage_manager::{read_commits, OutputRecord, StageSpec};
use crate::state::{Expect, StateError, StateStore};
use automaldesc_common::run_spec::{RunSpec, SpecError, StageCatalog, StageInput};

/// Checks `spec` against what the workers can run: every stage's kind and config, and
/// the schema of every dataset a stage reads by URL. A refusal names the stage and the
/// key, file or column.
pub(super) async fn check_spec(catalog: &dyn StageCatalog, spec: &RunSpec) -> Result<(), RunError> {
    for (k, stage) in spec.stages.iter().enumerate() {
        catalog
            .check_stage(&stage.kind, &stage.config)
            .map_err(|e| SpecError::Invalid(format!("stage {k} ({}): {e}", stage.kind)))?;
    }
    for (k, stage) in spec.stages.iter().enumerate() {
        let url = match stage.input() {
            StageInput::Previous if k == 0 => spec.input.clone(),
            StageInput::Url(url) => url,
            StageInput::Previous | StageInput::Stage(_) => continue,
        };
        let Some(schema) = catalog.input_schema(&stage.kind) else {
            continue;
        };
        if let Err(e) = check_dataset_schema(&url, &schema).await {
            let e = data(format!("input of stage {k}: {url}"))(e);
            if e.is_transient()
                || matches!(&e, RunError::Data { source, .. }
                if matches!(source, automaldesc_common::Error::NotFound(_)))
            {
                return Err(e);
            }
            let RunError::Data { source: e, .. } = e else {
                return Err(e);
            };
            return Err(SpecError::Invalid(format!(
                "stage {k} ({}) reads {url}, which does not hold scripts: {e}",
                stage.kind
            ))
            .into());
        }
    }
    Ok(())
}

/// The name of the committed-file list in each stage's output directory.
pub const COMMITTED_LIST: &str = "committed.json";

/// The plan of stage `k`: the one recorded if there is one, else a new one, recorded.
pub(super) async fn plan_stage(
    store: &dyn StateStore,
    id: &RunId,
    spec: &RunSpec,
    k: u32,
) -> Result<StagePlan, RunError> {
    let key = stage_key(id, k, "plan");
    if let Some(v) = store.get(&key).await? {
        return from_json(&key, &v.value);
    }
    let plan = new_plan(store, id, spec, k).await?;
    record_plan(store, id, k, plan).await
}

/// Records `plan` as stage `k`'s, unless one was recorded first (by a previous leader):
/// that one stands and is returned.
pub(super) async fn record_plan(
    store: &dyn StateStore,
    id: &RunId,
    k: u32,
    plan: StagePlan,
) -> Result<StagePlan, RunError> {
    let key = stage_key(id, k, "plan");
    match store.put(&key, to_json(&plan), Expect::Absent).await {
        Ok(_) => Ok(plan),
        Err(StateError::Conflict { .. }) => match store.get(&key).await? {
            Some(v) => from_json(&key, &v.value),
            None => Ok(plan),
        },
        Err(e) => Err(e.into()),
    }
}

/// Plans stage `k` from its input's footers; the plan also fixes the executor's config,
/// with the stage's refs resolved to committed files. Nothing is recorded.
pub(super) async fn new_plan(
    store: &dyn StateStore,
    id: &RunId,
    spec: &RunSpec,
    k: u32,
) -> Result<StagePlan, RunError> {
    let stage = &spec.stages[k as usize];
    let source = match stage.input() {
        StageInput::Previous if k == 0 => StageInput::Url(spec.input.clone()),
        StageInput::Previous => StageInput::Stage(k - 1),
        other => other,
    };
    let (input_root, layouts) = match source {
        StageInput::Url(url) => {
            let layouts = nonempty_dataset_layout(&url)
                .await
                .map_err(data(format!("input of stage {k}: {url}")))?;
            (url, layouts)
        }
        StageInput::Stage(n) => {
            let (objects, _) =
                open_store(&spec.output).map_err(data(format!("run output {}", spec.output)))?;
            let mut layouts = Vec::new();
            for out in committed_outputs(store, id, n).await? {
                if !out.path.ends_with(".parquet") {
                    continue;
                }
                let path = Path::from(out.path.as_str());
                let layout = file_layout(objects.clone(), &path)
                    .await
                    .map_err(data(format!("output of stage {n}")))?;
                layouts.push(layout);
            }
            (spec.output.clone(), layouts)
        }
        StageInput::Previous => unreachable!("resolved above"),
    };
    let files: Vec<InputFile> = layouts.iter().map(InputFile::from).collect();
    let tasks = if stage.single_task {
        plan_single(&files)
    } else {
        plan(
            &files,
            PlanOptions {
                target_bytes: spec.task_bytes,
            },
        )
    };
    let mut config = stage.config.clone();
    if !stage.refs.is_empty() {
        let mut refs = serde_json::Map::new();
        for (name, &n) in &stage.refs {
            let files: Vec<String> = committed_outputs(store, id, n)
                .await?
                .into_iter()
                .map(|o| o.path)
                .collect();
            refs.insert(
                name.clone(),
                serde_json::json!({ "root": spec.output, "stage": n, "files": files }),
            );
        }
        config["refs"] = serde_json::Value::Object(refs);
    }
    Ok(StagePlan {
        input_root,
        tasks,
        config_json: Some(config.to_string()),
    })
}

/// The files stage `n` of run `id` committed, in task order.
pub(super) async fn committed_outputs(
    store: &dyn StateStore,
    id: &RunId,
    n: u32,
) -> Result<Vec<OutputRecord>, RunError> {
    let commits = read_commits(store, id, n).await.map_err(RunError::Stage)?;
    Ok(commits.into_iter().flat_map(|(_, c)| c.outputs).collect())
}

/// The lease policy of stage `k`: a single-task stage (training, aggregation, a report) is
/// never speculated, since a twin would redo the whole stage; a dead worker's lease still
/// expires and the task is retried.
pub(super) fn stage_policy(policy: LeasePolicy, spec: &RunSpec, k: u32) -> LeasePolicy {
    if spec.stages[k as usize].single_task {
        LeasePolicy {
            speculate_after: None,
            ..policy
        }
    } else {
        policy
    }
}

pub(super) fn stage_spec(id: &RunId, spec: &RunSpec, k: u32, plan: StagePlan) -> StageSpec {
    let stage = &spec.stages[k as usize];
    StageSpec {
        run: id.clone(),
        stage: k,
        kind: stage.kind.clone(),
        input_root: plan.input_root,
        output_root: spec.output.clone(),
        config_json: plan.config_json.unwrap_or_else(|| stage.config.to_string()),
        tasks: plan.tasks,
    }
}

/// One file in a stage's committed-file list.
#[derive(Serialize)]
struct ListedFile<'a> {
    task: u32,
    path: &'a str,
    rows: u64,
    bytes: u64,
    sha256: &'a str,
}

/// Writes `<stage output>/committed.json`: every file the stage committed (paths inside
/// the output store, with rows, bytes and sha256). Readers copy these files, not the
/// directory: anything else there is the output of an attempt that was not committed.
pub(super) async fn write_committed_list(
    store: &dyn StateStore,
    output: &str,
    run: &RunId,
    k: u32,
    kind: &str,
) -> Result<(), RunError> {
    let commits = read_commits(store, run, k).await.map_err(RunError::Stage)?;
    let files: Vec<ListedFile> = commits
        .iter()
        .flat_map(|(task, c)| {
            c.outputs.iter().map(|o| ListedFile {
                task: task.0,
                path: &o.path,
                rows: o.rows,
                bytes: o.bytes,
                sha256: &o.sha256,
            })
        })
        .collect();
    let list = serde_json::json!({ "run": run.0, "stage": k, "kind": kind, "files": files });
    let url = stage_output_url(output, run, k);
    let (objects, prefix) = open_store(&url).map_err(data(format!("stage output {url}")))?;
    let path = automaldesc_common::store::child(&prefix, COMMITTED_LIST);
    objects
        .put(&path, to_json(&list).into())
        .await
        .map_err(|e| RunError::Data {
            context: format!("writing {path}"),
            source: e.into(),
        })?;
    Ok(())
}

/// Deletes the files under stage `k`'s output that no commit references (outputs of
/// refused, abandoned and failed attempts, even ones written after the stage finished),
/// and on local disk the directories left empty. Returns how many files; failures are
/// logged, since garbage left behind costs space, not correctness.
pub(super) async fn sweep_stage(store: &dyn StateStore, output: &str, run: &RunId, k: u32) -> u64 {
    let url = stage_output_url(output, run, k);
    if local_dir(&url).is_some_and(|d| !d.exists()) {
        return 0;
    }
    let result: Result<u64, RunError> = async {
        let (objects, prefix) = open_store(&url).map_err(data(format!("stage output {url}")))?;
        let mut keep: BTreeSet<String> = committed_outputs(store, run, k)
            .await?
            .into_iter()
            .map(|o| o.path)
            .collect();
        keep.insert(automaldesc_common::store::child(&prefix, COMMITTED_LIST).to_string());
        let all: Vec<_> = objects
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| RunError::Data {
                context: format!("listing {url}"),
                source: e.into(),
            })?;
        let mut deleted = 0;
        for meta in all {
            if keep.contains(meta.location.as_ref()) {
                continue;
            }
            match objects.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    return Err(RunError::Data {
                        context: format!("deleting {}", meta.location),
                        source: e.into(),
                    })
                }
            }
        }
        Ok(deleted)
    }
    .await;
    if let Some(dir) = local_dir(&url) {
        prune_empty_dirs(&dir);
    }
    result.unwrap_or_else(|e| {
        tracing::warn!(run = %run, stage = k, error = %e, "collecting unreferenced files failed");
        0
    })
}
