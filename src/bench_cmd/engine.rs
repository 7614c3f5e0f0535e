//! `automaldesc bench engine`: the whole engine (coordinator and worker processes, leases,
//! Parquet in and out) timed on a corpus, beside the pyarrow peer doing the same I/O.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::peer_json;

#[derive(Args, Debug)]
pub struct BenchEngineArgs {
    /// Input dataset: a directory of Parquet files (e.g. a synthetic corpus's
    /// `unlabelled` split).
    #[arg(long)]
    pub input: PathBuf,
    /// Worker counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<u32>,
    /// Input bytes per task.
    #[arg(long, default_value_t = automaldesc_common::run_spec::DEFAULT_TASK_BYTES)]
    pub task_bytes: u64,
    /// Scratch directory for state and outputs (emptied first).
    #[arg(long, default_value = "data/bench/engine")]
    pub work_dir: PathBuf,
    /// The Python peer: the same dataflow with pyarrow and multiprocessing.
    #[arg(long, default_value = "tests/peer/echo_dataflow.py")]
    pub peer_script: PathBuf,
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the Python peer.
    #[arg(long)]
    pub no_peer: bool,
}

/// A child's exit, with what the kernel counted for it.
struct Exited {
    at: std::time::Instant,
    cpu_s: f64,
    max_rss_mib: f64,
    success: bool,
}

/// Waits for `pid` on a thread of its own and returns the exit time and resource usage.
fn reap(pid: i32) -> std::thread::JoinHandle<anyhow::Result<Exited>> {
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value; wait4 fills it for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        anyhow::ensure!(
            rc == pid,
            "wait4({pid}) failed: {}",
            std::io::Error::last_os_error()
        );
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Ok(Exited {
            at: std::time::Instant::now(),
            cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
            max_rss_mib: ru.ru_maxrss as f64 / 1024.0,
            success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        })
    })
}

struct EngineRun {
    scripts: u64,
    wall_s: f64,
    coordinator: Exited,
    executor_s: f64,
}

fn engine_once(args: &BenchEngineArgs, workers: u32) -> anyhow::Result<EngineRun> {
    let dir = args.work_dir.join(format!("workers-{workers}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let input = std::fs::canonicalize(&args.input)
        .with_context(|| format!("input {}", args.input.display()))?;
    let spec = dir.join("run.toml");
    std::fs::write(
        &spec,
        format!(
            "input = {:?}\noutput = {:?}\ntask_bytes = {}\n[[stage]]\nkind = \"echo\"\n",
            input.to_str().context("non-UTF-8 path")?,
            dir.join("out").to_str().context("non-UTF-8 path")?,
            args.task_bytes
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let spawn = |name: &str, a: &[&str]| -> anyhow::Result<std::process::Child> {
        Command::new(&exe)
            .args(a)
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(dir.join(format!("{name}.out")))?)
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?)
            .spawn()
            .with_context(|| format!("starting {name}"))
    };
    let started = std::time::Instant::now();
    let listen = format!("127.0.0.1:{port}");
    let state = dir.join("state");
    let coordinator = spawn(
        "coordinator",
        &[
            "coordinator",
            "--listen",
            &listen,
            "--state-dir",
            state.to_str().unwrap_or_default(),
            "--exit-when-done",
            "--run",
            spec.to_str().unwrap_or_default(),
            "--run-id",
            "bench",
        ],
    )?;
    let coordinator_exit = reap(coordinator.id() as i32);
    let endpoint = format!("http://{listen}");
    let mut reaped = Vec::new();
    for i in 0..workers {
        let name = format!("worker-{i}");
        let child = spawn(
            &name,
            &["worker", "--coordinator", &endpoint, "--id", &name],
        )?;
        reaped.push((name, reap(child.id() as i32)));
    }
    let mut last_exit = started;
    let mut executor_s = 0.0;
    for (name, handle) in reaped {
        let exit = handle
            .join()
            .map_err(|_| anyhow::anyhow!("reaper panicked"))??;
        anyhow::ensure!(
            exit.success,
            "{name} failed; see {}",
            dir.join(format!("{name}.log")).display()
        );
        last_exit = last_exit.max(exit.at);
        let report: Value = serde_json::from_str(
            std::fs::read_to_string(dir.join(format!("{name}.out")))?
                .lines()
                .last()
                .unwrap_or("{}"),
        )?;
        executor_s += report["executor_seconds"].as_f64().unwrap_or(0.0);
    }
    let coordinator = coordinator_exit
        .join()
        .map_err(|_| anyhow::anyhow!("reaper panicked"))??;
    anyhow::ensure!(
        coordinator.success,
        "the coordinator failed; see {}",
        dir.join("coordinator.log").display()
    );
    // Check the work before timing it: every input script came out once.
    let summary: Value = {
        let store = automaldesc_coordinator::state::EmbeddedStore::open(&state)?;
        let v =
            automaldesc_common::store::block_on(automaldesc_coordinator::state::StateStore::get(
                &store,
                "runs/bench/stages/000/summary",
            ))??
            .context("the run left no stage summary")?;
        serde_json::from_slice(&v.value)?
    };
    let (total, out) = (
        summary["totals"]["scripts_total"].as_u64().unwrap_or(0),
        summary["totals"]["rows_out"].as_u64().unwrap_or(u64::MAX),
    );
    anyhow::ensure!(total > 0 && total == out, "{total} scripts in, {out} out");
    Ok(EngineRun {
        scripts: total,
        wall_s: last_exit.duration_since(started).as_secs_f64(),
        coordinator,
        executor_s,
    })
}

fn peer_once(args: &BenchEngineArgs, workers: u32) -> anyhow::Result<Value> {
    let out = args.work_dir.join(format!("python-{workers}"));
    let v = peer_json(
        Command::new(&args.python)
            .arg(&args.peer_script)
            .arg("--input")
            .arg(&args.input)
            .arg("--output")
            .arg(&out)
            .args(["--workers", &workers.to_string()]),
        "the Python peer",
    )?;
    let _ = std::fs::remove_dir_all(&out);
    Ok(v)
}

/// `automaldesc bench engine`: one echo stage over a dataset, by a coordinator and N
/// worker processes, next to the same dataflow in plain pyarrow + multiprocessing.
pub fn engine(args: BenchEngineArgs) -> anyhow::Result<()> {
    println!("| workers | scripts | ours scripts/s | python scripts/s | ours / python | coordinator CPU s | coordinator max RSS MiB | wall outside executors |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &args.workers {
        let ours = engine_once(&args, n)?;
        let ours_rate = ours.scripts as f64 / ours.wall_s;
        let (py_rate, ratio) = if args.no_peer {
            ("-".to_string(), "-".to_string())
        } else {
            let py = peer_once(&args, n)?;
            let py_scripts = py["scripts"].as_u64().unwrap_or(0);
            anyhow::ensure!(
                py_scripts == ours.scripts,
                "the peer saw {py_scripts} scripts, we saw {}",
                ours.scripts
            );
            let rate = py["scripts_per_s"].as_f64().unwrap_or(f64::NAN);
            (format!("{rate:.0}"), format!("{:.2}", ours_rate / rate))
        };
        let outside = 1.0 - ours.executor_s / (n as f64 * ours.wall_s);
        println!(
            "| {n} | {} | {ours_rate:.0} | {py_rate} | {ratio} | {:.2} | {:.1} | {:.1}% |",
            ours.scripts,
            ours.coordinator.cpu_s,
            ours.coordinator.max_rss_mib,
            100.0 * outside
        );
    }
    Ok(())
}
