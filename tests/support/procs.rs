//! The `automaldesc` binary as child processes: coordinators and workers a test can kill
//! with SIGKILL, pause with SIGSTOP, or stop with SIGTERM, each logging to its own file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use automaldesc_proto::v1;
use automaldesc_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_automaldesc")
}

pub struct Proc {
    pub name: String,
    child: Option<Child>,
    /// How it exited, once it did.
    exited: Option<ExitStatus>,
    pub log: PathBuf,
    pub out: PathBuf,
}

impl Proc {
    /// Starts `automaldesc <args>` with its stderr (logs) and stdout in `dir`.
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Self {
        Self::spawn_with_env(dir, name, args, &[])
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_with_env(dir: &Path, name: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = dir.join(format!("{name}.out"));
        let child = Command::new(bin())
            .args(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .expect("start automaldesc");
        Self {
            name: name.to_string(),
            child: Some(child),
            exited: None,
            log,
            out,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.name);
    }

    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10));
    }

    /// Waits for the process to exit; panics (with its log) after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        if let Some(status) = self.exited {
            return status;
        }
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                self.exited = Some(status);
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit in {timeout:?}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            let status = self.child.as_mut()?.try_wait().ok()??;
            self.child = None;
            self.exited = Some(status);
        }
        self.exited
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// The last JSON line the process printed (a worker's report).
    pub fn report(&self) -> serde_json::Value {
        let text = self.stdout_text();
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| {
                panic!(
                    "{} printed no report:\n{text}\n{}",
                    self.name,
                    self.log_text()
                )
            });
        serde_json::from_str(line).unwrap()
    }

    /// Task numbers this worker logged as started.
    pub fn tasks_started(&self) -> Vec<u32> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("task started"))
            .filter_map(|l| {
                let at = l.find(" task=")? + 6;
                l[at..]
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A control client once the coordinator at `endpoint` answers.
pub async fn control(endpoint: &str, timeout: Duration) -> ControlServiceClient<Channel> {
    let deadline = Instant::now() + timeout;
    loop {
        let answered = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c = ControlServiceClient::connect(endpoint.to_string())
                .await
                .ok()?;
            c.list_runs(v1::ListRunsRequest {}).await.ok().map(|_| c)
        });
        if let Ok(Some(c)) = answered.await {
            return c;
        }
        assert!(Instant::now() < deadline, "no coordinator at {endpoint}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The run's status from the coordinator at `endpoint`, or `None` when it does not answer
/// within `timeout` (connecting included: a frozen coordinator accepts the TCP connection
/// and never answers).
pub async fn get_run(endpoint: &str, run: &str, timeout: Duration) -> Option<v1::RunStatus> {
    let call = async {
        let mut c = ControlServiceClient::connect(endpoint.to_string())
            .await
            .ok()?;
        let req = v1::RunRequest {
            run_id: run.to_string(),
        };
        c.get_run(req).await.ok().map(|r| r.into_inner())
    };
    tokio::time::timeout(timeout, call).await.ok().flatten()
}

/// Polls the run on any of `endpoints` until `pred` holds; returns that status.
pub async fn wait_for(
    endpoints: &[String],
    run: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&v1::RunStatus) -> bool,
) -> v1::RunStatus {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        for e in endpoints {
            if let Some(s) = get_run(e, run, Duration::from_secs(1)).await {
                if pred(&s) {
                    return s;
                }
                last = Some(s);
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last status {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn done_tasks(s: &v1::RunStatus) -> u32 {
    s.stages
        .iter()
        .map(|st| st.tasks_done + st.tasks_quarantined)
        .sum()
}

pub fn succeeded(s: &v1::RunStatus) -> bool {
    s.state == v1::RunState::Succeeded as i32
}
