//! `automaldesc coordinator --http-listen`: `/healthz`, `/readyz`, Prometheus `/metrics`,
//! the JSON API and the dashboard's sign-in on a coordinator process with a token, while a
//! worker process runs a run to its end.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

mod support;
use support::etcd::free_port;
use support::procs::Proc;

/// A GET over a fresh connection: (status, body).
fn get(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    get_with(port, path, &auth).map(|(status, _, body)| (status, body))
}

/// A GET with extra header lines: (status, head, body).
fn get_with(port: u16, path: &str, headers: &str) -> Option<(u16, String, String)> {
    request(port, "GET", path, headers, "")
}

/// A request with extra header lines and a body, on a connection the server closes after
/// it (the server keeps connections alive otherwise): (status, head, body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Option<(u16, String, String)> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((status, head.to_string(), body.to_string()))
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The value of the metric line that starts with `series` (name and labels).
fn metric(body: &str, series: &str) -> Option<u64> {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A coordinator process with its state in `dir`, serving gRPC and HTTP on free loopback
/// ports and submitting `spec` as `run_id`: (the process, the gRPC port, the HTTP port).
fn coordinator(dir: &Path, spec: &Path, run_id: &str, extra: &[&str]) -> (Proc, u16, u16) {
    let (grpc, http) = (free_port(), free_port());
    let mut args: Vec<String> = vec![
        "coordinator".into(),
        "--listen".into(),
        format!("127.0.0.1:{grpc}"),
        "--http-listen".into(),
        format!("127.0.0.1:{http}"),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--run".into(),
        spec.display().to_string(),
        "--run-id".into(),
        run_id.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    (Proc::spawn(dir, "c", &args), grpc, http)
}

/// The echo worker `w0` of the coordinator on `grpc`; `extra` flags after.
fn worker(dir: &Path, grpc: u16, extra: &[&str]) -> Proc {
    let mut args = vec![
        "worker".to_string(),
        "--coordinator".into(),
        format!("http://127.0.0.1:{grpc}"),
        "--id".into(),
        "w0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(dir, "w", &args)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_follow_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = support::small_corpus(&d.join("corpus"), 11, 0.002).await;
    let out = d.join("out").to_str().unwrap().to_string();
    let spec = d.join("run.toml");
    std::fs::write(
        &spec,
        support::echo_spec(
            &corpus.unlabelled_url(),
            &out,
            corpus.total_bytes / 4,
            "{ delay_ms = 200 }",
        ),
    )
    .unwrap();
    let token_file = d.join("token");
    std::fs::write(&token_file, "metrics-token-1\n").unwrap();
    let token_arg = token_file.to_str().unwrap();
    let (_coordinator, grpc, http) = coordinator(d, &spec, "m1", &["--token-file", token_arg]);
    wait_until("/healthz", || {
        get(http, "/healthz", None).is_some_and(|r| r.0 == 200)
    });
    wait_until("/readyz", || {
        get(http, "/readyz", None).is_some_and(|r| r.0 == 200)
    });
    // gRPC health answers probes without the token.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in [
        "",
        "automaldesc.v1.WorkerService",
        "automaldesc.v1.ControlService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(get(http, "/metrics", None).unwrap().0, 401, "no token");
    assert_eq!(
        get(http, "/metrics", Some("wrong")).unwrap().0,
        401,
        "wrong token"
    );
    assert_eq!(get(http, "/nothing", None).unwrap().0, 401, "no token");
    assert_eq!(
        get(http, "/nothing", Some("metrics-token-1")).unwrap().0,
        404
    );

    // The dashboard: a sign-in page without the token; POSTing the token to /login gives
    // an opaque session cookie that opens the page and the API. The token in a URL does not.
    let (status, page) = get(http, "/", None).unwrap();
    assert_eq!(status, 401);
    assert!(page.contains("method=\"post\" action=\"/login\""), "{page}");
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    assert_eq!(
        request(http, "POST", "/login", form, "token=wrong")
            .unwrap()
            .0,
        401
    );
    let (status, head, _) = get_with(http, "/login?token=metrics-token-1", "").unwrap();
    assert_eq!(status, 200, "a GET only shows the form");
    assert!(!head.contains("Set-Cookie"), "{head}");
    let (status, head, _) = request(http, "POST", "/login", form, "token=metrics-token-1").unwrap();
    assert_eq!(status, 303, "{head}");
    let set_cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .unwrap()
        .to_string();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{head}"
    );
    assert!(!set_cookie.contains("Secure"), "no TLS here: {head}");
    assert!(cookie.starts_with("automaldesc_session="), "{cookie}");
    assert!(
        !cookie.contains(&hex_of("metrics-token-1")),
        "the cookie is not the token: {cookie}"
    );
    let with_cookie = format!("Cookie: {cookie}\r\n");
    let (status, _, page) = get_with(http, "/", &with_cookie).unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/api/cluster"), "the page polls the API");
    assert_eq!(get_with(http, "/api/cluster", &with_cookie).unwrap().0, 200);
    assert_eq!(
        get_with(http, "/api/cluster", "Cookie: automaldesc_token=00\r\n")
            .unwrap()
            .0,
        401
    );

    let tasks = "automaldesc_stage_tasks{run=\"m1\",stage=\"0\",kind=\"echo\"";
    let mut before = String::new();
    wait_until("the run in the metrics", || {
        before = get(http, "/metrics", Some("metrics-token-1")).map_or(String::new(), |r| r.1);
        metric(&before, "automaldesc_runs{phase=\"running\"}") == Some(1)
    });
    let total = metric(&before, &format!("{tasks},state=\"total\"}}")).unwrap();
    assert!(total >= 2, "{before}");
    assert_eq!(
        metric(&before, &format!("{tasks},state=\"done\"}}")),
        Some(0)
    );
    assert!(before.contains("# TYPE automaldesc_stage_scripts_done counter"));

    let _worker = worker(d, grpc, &["--token-file", token_arg]);
    let mut after = String::new();
    wait_until("the run to succeed in the metrics", || {
        after = get(http, "/metrics", Some("metrics-token-1")).map_or(String::new(), |r| r.1);
        metric(&after, "automaldesc_runs{phase=\"succeeded\"}") == Some(1)
    });
    assert_eq!(
        metric(&after, &format!("{tasks},state=\"done\"}}")),
        Some(total)
    );
    assert_eq!(
        metric(&after, &format!("{tasks},state=\"pending\"}}")),
        Some(0)
    );
    let scripts = corpus.sha_counts().await.values().sum::<usize>() as u64;
    let series = "{run=\"m1\",stage=\"0\",kind=\"echo\"}";
    assert_eq!(
        metric(&after, &format!("automaldesc_stage_scripts_done{series}")),
        Some(scripts)
    );
    assert_eq!(
        metric(&after, &format!("automaldesc_stage_rows_out{series}")),
        Some(scripts)
    );

    assert_eq!(get(http, "/api/runs", None).unwrap().0, 401, "no token");
    let (status, body) = get(http, "/api/runs", Some("metrics-token-1")).unwrap();
    assert_eq!(status, 200);
    let runs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run = &runs[0];
    assert_eq!(
        (run["id"].as_str(), run["phase"].as_str()),
        (Some("m1"), Some("succeeded"))
    );
    let stage = &run["stages"][0];
    assert_eq!(stage["kind"], "echo");
    assert_eq!(stage["counts"]["done"].as_u64(), Some(total));
    assert_eq!(stage["totals"]["scripts_done"].as_u64(), Some(scripts));

    // The worker, as the metrics and /api/cluster show it: every task it committed, every
    // script its executor finished, no lease left.
    assert_eq!(
        metric(
            &after,
            "automaldesc_worker_info{worker=\"w0\",backend=\"cpu\"}"
        ),
        Some(1)
    );
    assert_eq!(metric(&after, "automaldesc_coordinator_leader"), Some(1));
    let cluster = wait_for_json(http, "the worker's totals after its last task", |c| {
        c["workers"][0]["scripts"].as_u64() == Some(scripts)
    });
    let w = &cluster["workers"][0];
    assert_eq!(w["id"], "w0");
    assert_eq!(w["backend"], "cpu");
    // The machine's memory, for the CPU backend.
    assert!(w["device_memory_bytes"].as_u64() > Some(1 << 28), "{w}");
    assert_eq!(w["tasks_completed"].as_u64(), Some(total));
    assert_eq!(w["tasks_failed"].as_u64(), Some(0));
    assert_eq!(w["leases"].as_array().map(Vec::len), Some(0));
    assert!(w["registered_ms"].as_u64() > Some(0));
    let metrics = get(http, "/metrics", Some("metrics-token-1")).unwrap().1;
    assert_eq!(
        metric(&metrics, "automaldesc_worker_scripts_total{worker=\"w0\"}"),
        Some(scripts)
    );
    assert_eq!(
        metric(&metrics, "automaldesc_worker_leases{worker=\"w0\"}"),
        Some(0)
    );
    let stage = &cluster["runs"][0]["stages"][0];
    assert_eq!(stage["name"], "stage 0 echo");
    // Each task sleeps 200 ms, one after another.
    let duration = stage["duration_s"].as_f64().unwrap();
    assert!(
        duration >= 0.2 * total as f64,
        "{duration} s for {total} tasks"
    );
    assert!(stage["eta_s"].is_null(), "a finished stage has no ETA");
    assert_eq!(cluster["leader"], true);
}

/// `/api/cluster` once `ok` holds for it.
fn wait_for_json(
    port: u16,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_for_json_with(port, Some("metrics-token-1"), what, ok)
}

fn wait_for_json_with(
    port: u16,
    token: Option<&str>,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(what, || {
        last = get(port, "/api/cluster", token)
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
            .unwrap_or_default();
        ok(&last)
    });
    last
}

/// Retries and quarantines reach `/api/cluster` with their errors: a script quarantined
/// alone inside a committed task (stage 0), and a task that fails every attempt until it is
/// quarantined (stage 1, which reads stage 0's output).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn troubles_are_listed_with_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let corpus = support::small_corpus(&d.join("corpus"), 12, 0.002).await;
    let quarantined = corpus.poison_named("q-poison", b"QUARANTINE-ME").await;
    let failing = corpus.poison_named("f-poison", b"FAIL-ME").await;
    let spec = d.join("run.toml");
    let mut text = support::echo_spec(
        &corpus.unlabelled_url(),
        d.join("out").to_str().unwrap(),
        corpus.total_bytes / 4,
        r#"{ quarantine_marker = "QUARANTINE-ME" }"#,
    );
    text.push_str("\n[[stage]]\nkind = \"echo\"\nconfig = { fail_marker = \"FAIL-ME\" }\n");
    // Both stages lose scripts: allowed, so the run goes on to the second stage.
    text.push_str("\n[limits]\nmax_quarantined_fraction = 0.9\n");
    std::fs::write(&spec, text).unwrap();
    let extra = ["--max-attempts", "2", "--retry-backoff", "0.1"];
    let (_coordinator, grpc, http) = coordinator(d, &spec, "t1", &extra);
    let _worker = worker(d, grpc, &[]);
    let end = wait_for_json_with(http, None, "the run to end", |c| {
        c["runs"][0]["phase"]
            .as_str()
            .is_some_and(|p| p != "running")
    });
    let stages = &end["runs"][0]["stages"];
    let troubles = |k: usize| {
        stages[k]["troubles"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let (first, second) = (troubles(0), troubles(1));
    assert_eq!((first.len(), second.len()), (1, 1), "{stages}");
    assert_eq!(first[0]["state"], "script quarantined");
    assert_eq!(first[0]["sha256"].as_str(), Some(quarantined.as_str()));
    assert_eq!(first[0]["error"], "echo: quarantine marker");
    assert_eq!(second[0]["state"], "quarantined");
    assert_eq!(second[0]["attempts"].as_u64(), Some(2));
    let error = second[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&failing) && error.contains("failure marker"),
        "{error}"
    );
    assert_eq!(stages[1]["counts"]["quarantined"].as_u64(), Some(1));
    assert_eq!(end["workers"][0]["tasks_failed"].as_u64(), Some(2));
    let metrics = get(http, "/metrics", None).unwrap().1;
    let series = "{run=\"t1\",stage=\"1\",kind=\"echo\"}";
    assert_eq!(
        metric(
            &metrics,
            &format!("automaldesc_stage_failed_attempts{series}")
        ),
        Some(2)
    );
}
