//! The dashboard in a real headless Chromium, against a running coordinator process: one
//! iteration of the loop (a tiny random model with the real tokenizer) submitted with a
//! token, a worker process started once the page shows the run waiting. The page must sign
//! in through `/login`, show the run's progress moving without a reload, then the worker,
//! the stages' tokens, and the base and V1 evaluation tables with the funnel chart; the
//! browser must report no console error, exception or failed load. Screenshots (mid-run
//! and at the end) are kept in `target/test-artifacts/`.

use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::browser::{self, Browser};
use support::etcd::free_port;
use support::procs::Proc;
use support::tiny_model::{
    loop_config, real_model, write_small_loop_corpus, write_spec, write_tiny_model,
};

const TOKEN: &str = "dashboard-token-7";

fn get_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// What the test reads off the page.
const PAGE_STATE: &str = r#"(() => {
  const run = document.querySelector('.run[data-run="dash"]');
  const rows = sel => [...document.querySelectorAll(sel)].slice(1).map(tr => [...tr.cells].map(td => td.textContent));
  const img = document.querySelector('.iterations[data-run="dash"] img');
  return {
    polls: Number(document.body.dataset.polls || 0),
    error: document.getElementById('error').textContent,
    progress: run ? run.querySelector('.run-progress').textContent : null,
    phase: run ? run.querySelector('h3 [class^="phase-"]').textContent : null,
    stages: rows('.run[data-run="dash"] table tr'),
    workers: rows('#workers table tr'),
    workersText: document.getElementById('workers').textContent,
    evaluations: rows('.iterations[data-run="dash"] table:first-of-type tr'),
    funnelChart: img ? img.complete && img.naturalWidth > 0 : false,
  };
})()"#;

fn artifacts() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn save_png(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
    assert!(png.len() > 10_000, "{name}: {} bytes", png.len());
    let path = artifacts().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// The loop's stages for one iteration: the base model's evaluation and report, the judge
/// check on the seed, then train, generate, judge, filter, aggregate, evaluate and report.
const STAGES: u32 = 3 + 7;

/// (finished stages, stages) from the run's progress text "k/n".
fn progress(v: &Value) -> Option<(u32, u32)> {
    let (k, n) = v["progress"].as_str()?.split_once('/')?;
    Some((k.trim().parse().ok()?, n.trim().parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_run_live_in_a_real_browser() {
    let Some(chromium) = browser::find() else {
        assert!(
            std::env::var_os("AUTOMALDESC_REQUIRE_BROWSER").is_none(),
            "AUTOMALDESC_REQUIRE_BROWSER is set but no chromium was found (apt-get install chromium)"
        );
        eprintln!("skipping: no chromium (apt-get install chromium)");
        return;
    };
    let Some(real) = real_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("tiny.gguf");
    write_tiny_model(&real, &model);
    write_small_loop_corpus(d).await;
    let cfg = d.join("loop.toml");
    std::fs::write(&cfg, loop_config(d, &model, &d.join("out"), "dash", 1)).unwrap();
    write_spec(&cfg, &d.join("spec.toml"));
    std::fs::write(d.join("token"), TOKEN).unwrap();

    let (grpc, http) = (free_port(), free_port());
    let arg = |s: &str| s.to_string();
    let _coordinator = Proc::spawn(
        d,
        "c",
        &[
            arg("coordinator"),
            arg("--listen"),
            format!("127.0.0.1:{grpc}"),
            arg("--http-listen"),
            format!("127.0.0.1:{http}"),
            arg("--state-dir"),
            d.join("state").display().to_string(),
            arg("--token-file"),
            d.join("token").display().to_string(),
            arg("--lease-ttl"),
            arg("5"),
            arg("--run"),
            d.join("spec.toml").display().to_string(),
            arg("--run-id"),
            arg("dash"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_status(http, "/readyz") != Some(200) {
        assert!(Instant::now() < deadline, "the coordinator never got ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut page = Browser::launch(&chromium, &d.join("profile"), 1500, 1100);
    // Sign in as a person does: the form POSTs the token, the session cookie comes back.
    page.navigate(&format!("http://127.0.0.1:{http}/login"));
    page.eval(&format!(
        "(() => {{ const f = document.querySelector('form'); \
         f.querySelector('input[name=token]').value = '{TOKEN}'; f.submit(); return true; }})()"
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    // The submit navigates: an evaluation can land while the old page goes away.
    let signed_in = "document.readyState === 'complete' && !document.querySelector('form')";
    while page.eval_while_navigating(signed_in) != Some(Value::Bool(true)) {
        assert!(
            Instant::now() < deadline,
            "the sign-in did not open the dashboard"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    page.navigate(&format!("http://127.0.0.1:{http}/?poll=250"));
    let wait = |page: &mut Browser, what: &str, limit: Duration, ok: &dyn Fn(&Value) -> bool| {
        let deadline = Instant::now() + limit;
        loop {
            let v = page.eval(PAGE_STATE);
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {v:#}\nerrors: {:?}",
                page.errors
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Signed in (the cookie) and polling: the run waits for a worker.
    let first = wait(
        &mut page,
        "the run on the page",
        Duration::from_secs(30),
        &|v| v["polls"].as_u64() >= Some(1) && !v["progress"].is_null(),
    );
    assert_eq!(progress(&first), Some((0, STAGES)), "{first:#}");
    assert_eq!(first["phase"], "running");
    assert!(
        first["workersText"].as_str().unwrap().contains("No worker"),
        "{first:#}"
    );
    let polls_before = first["polls"].as_u64().unwrap();

    let _worker = Proc::spawn(
        d,
        "w",
        &[
            "worker",
            "--coordinator",
            &format!("http://127.0.0.1:{grpc}"),
            "--token-file",
            d.join("token").to_str().unwrap(),
            "--id",
            "w0",
            "--executors",
            "train,generate,judge-train,judge,filter,aggregate,report",
        ]
        .map(arg),
    );
    // Watch the same page (no reload) until the run ends, noting every progress shown.
    let mut seen = vec![progress(&first).unwrap().0];
    let mut mid_shot = false;
    let deadline = Instant::now() + Duration::from_secs(600);
    let last = loop {
        let v = page.eval(PAGE_STATE);
        if let Some((k, n)) = progress(&v) {
            if seen.last() != Some(&k) {
                seen.push(k);
            }
            if !mid_shot && k >= 3 && k < n {
                save_png("dashboard-running.png", &page.screenshot());
                mid_shot = true;
            }
        }
        if v["phase"] != "running" && !v["phase"].is_null() {
            break v;
        }
        assert!(Instant::now() < deadline, "the run did not end: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(last["phase"], "succeeded", "{last:#}");
    assert!(
        last["polls"].as_u64().unwrap() > polls_before + 3,
        "the page kept polling"
    );
    // Progress moved on the live page through intermediate values, never backwards.
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(
        seen.iter().any(|&k| k > 0 && k < STAGES),
        "no intermediate progress seen: {seen:?}"
    );

    // The end state: every stage finished, the worker, tokens, evaluations and the funnel.
    let end = wait(
        &mut page,
        "the iteration tables and the funnel chart",
        Duration::from_secs(30),
        &|v| {
            progress(v) == Some((STAGES, STAGES))
                && v["evaluations"].as_array().is_some_and(|e| e.len() == 2)
                && v["funnelChart"] == true
        },
    );
    let stages = end["stages"].as_array().unwrap();
    assert_eq!(stages.len(), STAGES as usize);
    let generate = stages
        .iter()
        .find(|r| r[1] == "iteration 1 generate")
        .unwrap_or_else(|| panic!("{stages:?}"));
    assert_eq!(generate[3], "finished");
    let tokens: u64 = generate[8].as_str().unwrap().parse().unwrap();
    assert!(tokens > 0, "{generate:?}");
    let workers = end["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let w = &workers[0];
    assert_eq!((w[0].as_str(), w[2].as_str()), (Some("w0"), Some("cpu")));
    let worker_tokens: u64 = w[8].as_str().unwrap().parse().unwrap();
    assert!(
        worker_tokens >= tokens,
        "the worker generated at least the committed tokens"
    );
    let tasks_done: u64 = w[10].as_str().unwrap().parse().unwrap();
    let stage_tasks: u64 = stages
        .iter()
        .map(|r| {
            r[4].as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(tasks_done, stage_tasks, "the worker did every task");
    let annotators: Vec<&str> = end["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(annotators, ["base", "V1"]);
    assert_eq!(end["error"], "");
    save_png("dashboard.png", &page.screenshot());
    assert!(
        page.errors.is_empty(),
        "the browser reported: {:#?}",
        page.errors
    );
}
