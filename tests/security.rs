//! The coordinator behind mutual TLS and a bearer token: certificates made by the
//! `openssl` command for a throwaway CA. Clients without the token, with a wrong one,
//! without a client certificate, or without TLS are refused with a clear status; a worker
//! with all of them runs the whole run.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use automaldesc::cluster_cmd::executors;
use automaldesc_common::ids::RunId;
use automaldesc_common::run_spec::RunSpec;
use automaldesc_coordinator::grpc_server::{serve, ServeOptions};
use automaldesc_coordinator::lease_manager::LeasePolicy;
use automaldesc_coordinator::run_manager::{RunManager, RunPhase};
use automaldesc_coordinator::state::{EmbeddedStore, StateStore};
use automaldesc_proto::security::{
    ClientSecurity, ClientTlsFiles, RequireToken, ServerTlsFiles, Token,
};
use automaldesc_proto::v1;
use automaldesc_proto::v1::control_service_client::ControlServiceClient;
use automaldesc_worker::worker_process::{run_worker, WorkerError, WorkerOptions};

mod support;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    for (name, san, usage) in [
        (
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "extendedKeyUsage=serverAuth",
        ),
        (
            "client",
            "subjectAltName=DNS:worker",
            "extendedKeyUsage=clientAuth",
        ),
    ] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend([
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=automaldesc",
            "-addext",
            san,
            "-addext",
            usage,
        ]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-copy_extensions",
                "copy",
            ],
        );
    }
}

fn client(dir: &Path, token: Option<&str>, cert: bool) -> ClientSecurity {
    ClientSecurity {
        token: token.map(|t| Token::new(t).unwrap()),
        tls: Some(ClientTlsFiles {
            ca: dir.join("ca.pem"),
            identity: cert.then(|| (dir.join("client.pem"), dir.join("client.key"))),
            domain: None,
        }),
    }
}

async fn list_runs(security: &ClientSecurity, endpoint: &str) -> Result<usize, tonic::Status> {
    let channel = security.channel(endpoint).unwrap();
    let mut c = ControlServiceClient::with_interceptor(channel, security.interceptor());
    Ok(c.list_runs(v1::ListRunsRequest {})
        .await?
        .into_inner()
        .runs
        .len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_clients_with_the_token_and_a_certificate_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    let corpus = support::small_corpus(&dir.path().join("corpus"), 11, 0.002).await;
    let spec = RunSpec::from_toml(&support::echo_spec(
        &corpus.unlabelled_url(),
        dir.path().join("out").to_str().unwrap(),
        corpus.total_bytes / 3,
        "{}",
    ))
    .unwrap();
    let policy = LeasePolicy {
        ttl: Duration::from_secs(2),
        ..LeasePolicy::default()
    };
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state")).unwrap());
    let mut manager = RunManager::open(store, policy).await.unwrap();
    let run = RunId("secure".into());
    manager.submit(Some(run.clone()), spec).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let opts = ServeOptions {
        exit_when_done: true,
        token: RequireToken::new(Some(Token::new("s3cret-token").unwrap())),
        tls: Some(ServerTlsFiles {
            cert: certs.join("server.pem"),
            key: certs.join("server.key"),
            client_ca: Some(certs.join("ca.pem")),
        }),
        ..ServeOptions::plain(policy.ttl)
    };
    let server = tokio::spawn(serve(listener, manager, opts, std::future::pending()));
    let https = format!("https://127.0.0.1:{port}");

    // Everything right: the control API answers.
    assert_eq!(
        list_runs(&client(&certs, Some("s3cret-token"), true), &https)
            .await
            .unwrap(),
        1
    );
    // No token, or a wrong one: UNAUTHENTICATED, saying which.
    let none = list_runs(&client(&certs, None, true), &https)
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated);
    assert!(none.message().contains("requires a bearer token"), "{none}");
    let wrong = list_runs(&client(&certs, Some("guess"), true), &https)
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(wrong.message().contains("not valid"), "{wrong}");
    // No client certificate, or no TLS at all: the connection itself is refused.
    let anonymous = list_runs(&client(&certs, Some("s3cret-token"), false), &https).await;
    assert!(anonymous.is_err());
    let plain = ClientSecurity {
        token: Some(Token::new("s3cret-token").unwrap()),
        tls: None,
    };
    assert!(list_runs(&plain, &format!("http://127.0.0.1:{port}"))
        .await
        .is_err());

    // A worker without the token is told so, and gives up at once.
    let mut opts = WorkerOptions::new(&https, "intruder");
    opts.security = client(&certs, None, true);
    match run_worker(
        opts,
        executors(&["echo".into()]).unwrap(),
        std::future::pending(),
    )
    .await
    {
        Err(WorkerError::Rpc { call, status }) => {
            assert_eq!(
                (call, status.code()),
                ("register", tonic::Code::Unauthenticated)
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A worker with everything does the run.
    let mut opts = WorkerOptions::new(&https, "trusted");
    opts.security = client(&certs, Some("s3cret-token"), true);
    let report = run_worker(
        opts,
        executors(&["echo".into()]).unwrap(),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert!(report.completed >= 1);
    let manager = server.await.unwrap().unwrap();
    assert_eq!(manager.status(&run).unwrap().phase, RunPhase::Succeeded);
}

/// The HTTP side serves TLS from the gRPC side's certificate and key; the session cookie a
/// POSTed sign-in returns is then `Secure`, and plain HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_serves_tls_from_the_grpc_certificate() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIP: no curl");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let tls = ServerTlsFiles {
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
        client_ca: None,
    };
    let token = RequireToken::new(Some(Token::new("http-tls-token").unwrap()));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (_view, addr) = automaldesc_coordinator::http::start_tls(
        "127.0.0.1:0",
        ready,
        token,
        Arc::new(std::sync::OnceLock::new()),
        Some(&tls),
    )
    .await
    .unwrap();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10", "--cacert"])
            .arg(dir.path().join("ca.pem"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", addr.port());
    let (ok, healthz) = curl(&[&url("/healthz")]);
    assert!(ok && healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let (ok, signed) = curl(&["--data", "token=http-tls-token", &url("/login")]);
    assert!(ok && signed.starts_with("HTTP/1.1 303"), "{signed}");
    let cookie = signed
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .unwrap_or_default();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{signed}"
    );
    let (plain, _) = curl(&[&format!("http://127.0.0.1:{}/healthz", addr.port())]);
    assert!(!plain, "plain HTTP must not be answered");
}
