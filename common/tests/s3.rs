//! The `s3://` path of the Parquet IO against a real S3-compatible server on loopback: moto's
//! standalone server (`pip install 'moto[server]'`) runs as a child process and every request
//! goes over HTTP, so URL parsing, `AWS_*` configuration, signing, path-style addressing,
//! single and multipart uploads, listing and ranged reads are all exercised for real.
//!
//! Without moto installed the test prints a SKIP line and passes; CI installs it
//! (`.ci/run`). Set `AUTOMALDESC_REQUIRE_S3=1` to make a missing server a failure instead.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use automaldesc_common::parquet_io::*;
use automaldesc_common::schema::CorpusRow;
use automaldesc_common::store::{get_bytes, open_object, open_store, open_store_with};
use automaldesc_common::{sha256_hex, Language};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStore;
use rand::{Rng, SeedableRng};

const BUCKET: &str = "automaldesc-it";

/// The Python interpreter to run moto with.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Whether `python3 -m moto.server` can run here (moto and its server extras importable).
fn moto_available() -> bool {
    Command::new(python())
        .args(["-c", "import moto.server, flask, werkzeug"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The moto server child process, killed (and reaped) on drop.
struct MotoServer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl MotoServer {
    fn start() -> MotoServer {
        // A free loopback port: bind to port 0, note the port, release it for the server.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(python())
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start moto server");
        let mut server = MotoServer {
            child,
            port,
            log,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls until the server answers an HTTP request (or fails the test after 60 s).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("moto server exited early ({status}):\n{}", self.log());
            }
            if let Ok((code, _)) = http(self.port, "GET", "/") {
                if code > 0 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "moto server did not answer within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain, unsigned HTTP/1.1 request with the standard library (moto does not check
/// signatures): the status code and body. Used to create the bucket and to list it
/// independently of object_store.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The object keys of a ListObjectsV2 answer, sorted.
fn keys_in_listing(xml: &str) -> Vec<String> {
    let mut keys: Vec<String> = xml
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect();
    keys.sort();
    keys
}

/// Scripts of 0.5-2.5 KiB of pseudo-random text; every 5th one is not valid UTF-8 (a UTF-16
/// BOM, stray continuation bytes and raw high bytes), and one is empty.
fn scripts(n: usize) -> Vec<CorpusRow> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    (0..n)
        .map(|i| {
            let len = rng.random_range(512..2560);
            let mut body: Vec<u8> = (0..len).map(|_| rng.random_range(b' '..=b'~')).collect();
            if i % 5 == 0 {
                body.splice(0..0, [0xFF, 0xFE, 0x80, 0xC3]);
                let at = body.len() / 2;
                body.splice(at..at, (0..16).map(|_| rng.random_range(0x80..=0xFF)));
            }
            if i == 7 {
                body.clear();
            }
            let lang = (i % 3 != 2).then(|| Language::ALL[i % 5]);
            CorpusRow::new(body, format!("s3:src/{i:04}/é"), lang)
        })
        .collect()
}

async fn list_keys(store: &dyn ObjectStore, prefix: Option<&Path>) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(prefix)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

#[test]
fn parquet_dataset_roundtrips_through_a_real_s3_server() {
    if !moto_available() {
        assert!(
            std::env::var_os("AUTOMALDESC_REQUIRE_S3").is_none(),
            "AUTOMALDESC_REQUIRE_S3 is set but moto's server is not installed"
        );
        println!("SKIP parquet_dataset_roundtrips_through_a_real_s3_server: moto server not installed (python3 -m pip install 'moto[server]')");
        return;
    }
    let server = MotoServer::start();
    println!("moto server at {}", server.endpoint());

    // Bucket creation with a plain HTTP PUT, so the bucket exists before object_store is used.
    let (code, body) = http(server.port, "PUT", &format!("/{BUCKET}")).unwrap();
    assert_eq!(code, 200, "create bucket: {body}");

    // The configuration the CLIs get: AWS_* variables, set once here before any runtime or
    // client thread exists (this binary holds this single test).
    for k in [
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ] {
        std::env::remove_var(k);
    }
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", server.endpoint());
    std::env::set_var("AWS_ALLOW_HTTP", "true");
    std::env::set_var("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(roundtrip(&server));
    drop(rt);
    drop(server);
}

async fn roundtrip(server: &MotoServer) {
    let url = format!("s3://{BUCKET}/runs/corpus");
    let rows = scripts(300);
    assert!(
        rows.iter()
            .filter(|r| std::str::from_utf8(&r.content).is_err())
            .count()
            >= 60
    );

    // Write through the output path, with a small target so several files are produced.
    let (store, prefix) = open_store(&url).unwrap();
    assert_eq!(store.to_string(), format!("AmazonS3({BUCKET})"));
    assert_eq!(prefix.as_ref(), "runs/corpus");
    let opts = WriterOptions {
        target_file_bytes: 48 * 1024,
        row_group_bytes: 8 * 1024,
        ..Default::default()
    };
    let files = write_dataset(store.clone(), &prefix, rows.clone(), opts)
        .await
        .unwrap();
    println!(
        "wrote {} files: {:?}",
        files.len(),
        files.iter().map(|f| (f.rows, f.bytes)).collect::<Vec<_>>()
    );
    assert!(
        files.len() >= 4,
        "expected several files, got {}",
        files.len()
    );
    assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), rows.len() as u64);
    let expected_keys: Vec<String> = (0..files.len())
        .map(|i| format!("runs/corpus/part-{i:05}.parquet"))
        .collect();

    // Read back through the input path: a fresh client, nothing shared with the writer.
    let (input, in_prefix) = open_object(&url).unwrap();
    assert!(!Arc::ptr_eq(&store, &input));
    for (f, key) in files.iter().zip(&expected_keys) {
        let bytes = get_bytes(input.as_ref(), &Path::from(key.as_str()))
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, f.bytes, "{key}");
        assert_eq!(sha256_hex(&bytes), f.sha256, "{key}");
        assert_eq!(&bytes[..4], b"PAR1");
    }
    let back: Vec<CorpusRow> = read_dataset(input.clone(), &in_prefix).await.unwrap();
    assert_eq!(back.len(), rows.len());
    assert_eq!(back, rows);

    // Footers and row groups: every row group on its own, concatenated, gives the rows back.
    let layout = dataset_layout(input.clone(), &in_prefix).await.unwrap();
    assert_eq!(
        layout
            .iter()
            .map(|l| l.path.to_string())
            .collect::<Vec<_>>(),
        expected_keys
    );
    let mut by_group: Vec<CorpusRow> = Vec::new();
    let mut groups = 0;
    for (l, f) in layout.iter().zip(&files) {
        assert_eq!(l.num_rows(), f.rows);
        assert_eq!(l.size_bytes, f.bytes);
        for g in 0..l.num_row_groups() {
            let part: Vec<CorpusRow> = read_row_groups(input.clone(), &l.path, g..g + 1)
                .await
                .unwrap();
            assert_eq!(part.len() as u64, l.row_group_rows[g]);
            by_group.extend(part);
            groups += 1;
        }
    }
    assert!(
        groups > files.len(),
        "files should hold several row groups ({groups} in {})",
        files.len()
    );
    assert_eq!(by_group, rows);
    // A range in the middle of the first multi-group file: exactly those rows.
    let (fi, l) = layout
        .iter()
        .enumerate()
        .find(|(_, l)| l.num_row_groups() >= 3)
        .unwrap();
    let start: u64 = files[..fi].iter().map(|f| f.rows).sum::<u64>() + l.row_group_rows[0];
    let n = l.row_group_rows[1] + l.row_group_rows[2];
    let mid: Vec<CorpusRow> = read_row_groups(input.clone(), &l.path, 1..3).await.unwrap();
    assert_eq!(mid, rows[start as usize..(start + n) as usize].to_vec());
    let too_far = l.num_row_groups() + 1;
    assert!(
        read_row_groups::<CorpusRow>(input.clone(), &l.path, 0..too_far)
            .await
            .is_err()
    );

    // A file larger than object_store's 10 MB write buffer goes up as a multipart upload.
    let (big_store, big_prefix) = open_store(&format!("s3://{BUCKET}/runs/big")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let big: Vec<CorpusRow> = (0..3)
        .map(|i| {
            let content: Vec<u8> = (0..4_500_000).map(|_| rng.random::<u8>()).collect();
            CorpusRow::new(content, format!("big/{i}"), None)
        })
        .collect();
    let big_files = write_dataset(
        big_store.clone(),
        &big_prefix,
        big.clone(),
        WriterOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(big_files.len(), 1);
    assert!(
        big_files[0].bytes > 12_000_000,
        "{} bytes",
        big_files[0].bytes
    );
    let big_key = Path::from("runs/big/part-00000.parquet");
    let meta = big_store.head(&big_key).await.unwrap();
    assert_eq!(meta.size, big_files[0].bytes);
    // S3 gives multipart objects an ETag of `<md5 of part md5s>-<parts>`.
    let etag = meta.e_tag.unwrap_or_default();
    assert!(
        etag.trim_matches('"').contains('-'),
        "not a multipart ETag: {etag}"
    );
    let big_back: Vec<CorpusRow> = read_dataset(big_store.clone(), &big_prefix).await.unwrap();
    assert_eq!(big_back, big);

    // Options passed explicitly reach a working client as well.
    let endpoint = server.endpoint();
    let explicit = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_virtual_hosted_style_request", "false"),
        ("aws_region", "us-east-1"),
    ];
    let (ex_store, ex_prefix) =
        open_store_with(&format!("s3://{BUCKET}/runs/explicit"), &explicit).unwrap();
    let ex_files = write_dataset(
        ex_store.clone(),
        &ex_prefix,
        rows[..10].to_vec(),
        WriterOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(ex_files.len(), 1);
    let ex_back: Vec<CorpusRow> = read_dataset(ex_store.clone(), &ex_prefix).await.unwrap();
    assert_eq!(ex_back, rows[..10].to_vec());

    // The bucket holds exactly these objects, seen through object_store...
    let mut all_keys = expected_keys.clone();
    all_keys.push("runs/big/part-00000.parquet".to_string());
    all_keys.push("runs/explicit/part-00000.parquet".to_string());
    all_keys.sort();
    let (bucket_store, root) = open_object(&format!("s3://{BUCKET}")).unwrap();
    assert_eq!(root.as_ref(), "");
    assert_eq!(list_keys(bucket_store.as_ref(), None).await, all_keys);
    assert_eq!(
        list_keys(input.as_ref(), Some(&in_prefix)).await,
        expected_keys
    );
    let listed = list_parquet(input.as_ref(), &in_prefix).await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.size).collect::<Vec<_>>(),
        files.iter().map(|f| f.bytes).collect::<Vec<_>>()
    );

    // ...and through the server's own ListObjectsV2, with no object_store involved.
    let (code, xml) = http(server.port, "GET", &format!("/{BUCKET}?list-type=2")).unwrap();
    assert_eq!(code, 200, "{xml}");
    assert_eq!(keys_in_listing(&xml), all_keys);

    // The server's request log shows the uploads came over the wire: one PUT per small file,
    // and a multipart upload (create, parts, complete) for the big one.
    let log = server.log();
    let puts = log
        .lines()
        .filter(|l| l.contains(&format!("\"PUT /{BUCKET}/runs/corpus/part-")))
        .count();
    assert_eq!(puts, files.len(), "{log}");
    let big_path = format!("/{BUCKET}/runs/big/part-00000.parquet");
    assert!(log.contains(&format!("\"POST {big_path}?uploads")), "{log}");
    let parts = log
        .lines()
        .filter(|l| l.contains(&format!("\"PUT {big_path}?partNumber=")))
        .count();
    assert!(parts >= 2, "{parts} parts:\n{log}");
    assert!(
        log.contains(&format!("\"POST {big_path}?uploadId=")),
        "{log}"
    );

    // A missing dataset reads as empty, a missing file as not found.
    let (empty_store, empty_prefix) = open_object(&format!("s3://{BUCKET}/runs/none")).unwrap();
    assert!(
        read_dataset::<CorpusRow>(empty_store.clone(), &empty_prefix)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        read_row_groups::<CorpusRow>(
            empty_store,
            &Path::from("runs/none/part-00000.parquet"),
            0..1
        )
        .await,
        Err(automaldesc_common::Error::NotFound(_))
    ));
}
