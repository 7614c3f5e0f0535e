//! `ControlService`: what operators ask of the coordinator (submit, status, watch, cancel,
//! a run's committed files), each a command to the event loop.

use std::pin::Pin;

use automaldesc_common::ids::RunId;
use automaldesc_proto::v1;
use automaldesc_proto::v1::control_service_server::ControlService;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::wire::{check_version, files_to_proto, run_id, status, to_proto};
use super::{Command, Loop};
use crate::run_manager::RunPhase;
use automaldesc_common::run_spec::RunSpec;

#[derive(Clone)]
pub(super) struct ControlGrpc {
    pub(super) inner: Loop,
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<v1::RunStatus, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for ControlGrpc {
    async fn submit_run(
        &self,
        req: Request<v1::SubmitRunRequest>,
    ) -> Result<Response<v1::RunStatus>, Status> {
        let r = req.into_inner();
        check_version(r.protocol_version)?;
        let spec = RunSpec::from_toml(&r.config_toml)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = (!r.run_id.is_empty()).then_some(RunId(r.run_id));
        let s = self
            .inner
            .ask(|reply| Command::Submit { id, spec, reply })
            .await?
            .map_err(status)?;
        Ok(Response::new(to_proto(s)))
    }

    async fn get_run(
        &self,
        req: Request<v1::RunRequest>,
    ) -> Result<Response<v1::RunStatus>, Status> {
        let id = run_id(req.into_inner().run_id)?;
        let s = self
            .inner
            .ask(|reply| Command::Get { id, reply })
            .await?
            .map_err(status)?;
        Ok(Response::new(to_proto(s)))
    }

    async fn list_runs(
        &self,
        _req: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        let runs = self.inner.ask(|reply| Command::List { reply }).await?;
        Ok(Response::new(v1::ListRunsResponse {
            runs: runs.into_iter().map(to_proto).collect(),
        }))
    }

    type WatchRunStream = StatusStream;

    async fn watch_run(
        &self,
        req: Request<v1::RunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let id = run_id(req.into_inner().run_id)?;
        let rx = self
            .inner
            .ask(|reply| Command::Watch { id, reply })
            .await?
            .map_err(status)?;
        // The current status first, then every change, until the run ends.
        let stream =
            futures::stream::unfold((rx, true, false), |(mut rx, first, ended)| async move {
                if ended || (!first && rx.changed().await.is_err()) {
                    return None;
                }
                let s = rx.borrow_and_update().clone();
                let ended = s.phase != RunPhase::Running;
                Some((Ok(to_proto(s)), (rx, false, ended)))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_run(
        &self,
        req: Request<v1::RunRequest>,
    ) -> Result<Response<v1::RunStatus>, Status> {
        let id = run_id(req.into_inner().run_id)?;
        let s = self
            .inner
            .ask(|reply| Command::Cancel { id, reply })
            .await?
            .map_err(status)?;
        Ok(Response::new(to_proto(s)))
    }

    async fn retry_quarantined(
        &self,
        req: Request<v1::RunRequest>,
    ) -> Result<Response<v1::RunStatus>, Status> {
        let id = run_id(req.into_inner().run_id)?;
        let s = self
            .inner
            .ask(|reply| Command::Retry { id, reply })
            .await?
            .map_err(status)?;
        Ok(Response::new(to_proto(s)))
    }

    async fn get_run_files(
        &self,
        req: Request<v1::RunFilesRequest>,
    ) -> Result<Response<v1::RunFiles>, Status> {
        let r = req.into_inner();
        let id = run_id(r.run_id)?;
        let stages = r.stages;
        let files = self
            .inner
            .ask(|reply| Command::Files { id, stages, reply })
            .await?
            .map_err(status)?;
        Ok(Response::new(files_to_proto(files)?))
    }
}
