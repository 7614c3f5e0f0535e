//! Opens the object store behind a dataset URL, so every stage reads and writes local
//! directories, in-memory test stores and S3-compatible buckets through one interface.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

use crate::error::{Error, Result};

/// Process-wide in-memory stores by name, so `memory://name/...` written by one call can be
/// read back by another.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let map = STORES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    map.entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// Opens the store for `url` (an output location) and returns it with the path prefix inside it.
///
/// Accepted forms: a local path (relative or absolute), `file:///abs/path`,
/// `memory://<name>/<prefix>` (a named process-wide store), and `s3://bucket/prefix`, configured
/// from the `AWS_*` environment (including `AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP` for
/// S3-compatible servers). Local directories are created when missing.
pub fn open_store(url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    open(url, true, &[])
}

/// Like [`open_store`] for reading an existing input (a file or a dataset): local paths must exist
/// and nothing is created.
pub fn open_object(url: &str) -> Result<(Arc<dyn ObjectStore>, Path)> {
    open(url, false, &[])
}

/// Like [`open_store`], with store options given explicitly instead of (or on top of) the
/// environment: for `s3://` these are the `AWS_*` names in either case (`aws_endpoint`,
/// `AWS_ALLOW_HTTP`, `aws_virtual_hosted_style_request`...), and they override the variables
/// of the same name. Local and `memory://` stores take no options and ignore them.
pub fn open_store_with(
    url: &str,
    options: &[(&str, &str)],
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    open(url, true, options)
}

fn open(url: &str, create: bool, options: &[(&str, &str)]) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let (store, prefix) = open_unwrapped(url, create, options)?;
    Ok((crate::fault_store::maybe_wrap(store), prefix))
}

fn open_unwrapped(
    url: &str,
    create: bool,
    options: &[(&str, &str)],
) -> Result<(Arc<dyn ObjectStore>, Path)> {
    if let Some(rest) = url.strip_prefix("memory://") {
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if name.is_empty() {
            return Err(Error::invalid(format!(
                "memory url {url:?} needs a store name: memory://<name>/<prefix>"
            )));
        }
        return Ok((memory_store(name), Path::parse(prefix)?));
    }
    if let Some(rest) = url.strip_prefix("file://") {
        return open_local(rest, create);
    }
    match Url::parse(url) {
        Ok(u) if u.scheme().len() > 1 => {
            // The builder applies options in order, so explicit ones come last and win.
            let opts: Vec<(String, String)> = std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .chain(options.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect();
            let (store, path) = object_store::parse_url_opts(&u, opts)?;
            Ok((Arc::from(store), path))
        }
        // No scheme (or a Windows drive letter): a local path.
        _ => open_local(url, create),
    }
}

fn open_local(path: &str, create: bool) -> Result<(Arc<dyn ObjectStore>, Path)> {
    let p = std::path::Path::new(path);
    if !p.exists() {
        if !create {
            return Err(Error::NotFound(format!("local file {path}")));
        }
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    let abs = std::fs::canonicalize(p).map_err(|e| Error::io(p, e))?;
    let store = object_store::local::LocalFileSystem::new();
    let prefix = Path::from_absolute_path(&abs)
        .map_err(|e| Error::invalid(format!("local path {}: {e}", abs.display())))?;
    Ok((Arc::new(store), prefix))
}

/// Joins a file name (or relative path) onto a prefix.
pub fn child(prefix: &Path, name: &str) -> Path {
    name.split('/')
        .filter(|s| !s.is_empty())
        .fold(prefix.clone(), |p, part| p.child(part))
}

/// Reads a whole object into memory.
pub async fn get_bytes(store: &dyn ObjectStore, path: &Path) -> Result<bytes::Bytes> {
    match store.get(path).await {
        Ok(r) => Ok(r.bytes().await?),
        Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound(format!("object {path}"))),
        Err(e) => Err(e.into()),
    }
}

/// Writes a whole object.
pub async fn put_bytes(store: &dyn ObjectStore, path: &Path, data: Vec<u8>) -> Result<()> {
    store.put(path, data.into()).await?;
    Ok(())
}

/// The local directory behind `url`, when it names one (a path or `file://`).
pub fn local_dir(url: &str) -> Option<std::path::PathBuf> {
    if url.starts_with("memory://") {
        return None;
    }
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(rest.into());
    }
    match Url::parse(url) {
        Ok(u) if u.scheme().len() > 1 => None,
        _ => Some(url.into()),
    }
}

/// Deletes every object under `url` (an attempt's output prefix); on local disk the
/// directory itself goes too, and its parent when that is left empty, so an abandoned
/// attempt leaves no empty directories behind. Returns how many files were deleted.
pub async fn remove_prefix(url: &str) -> Result<u64> {
    if let Some(dir) = local_dir(url) {
        let files = count_files(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&dir, e)),
        }
        if let Some(parent) = dir.parent() {
            // Fails when other attempts live there: then it stays, as it should.
            let _ = std::fs::remove_dir(parent);
        }
        return Ok(files);
    }
    let (store, prefix) = open_store(url)?;
    let metas: Vec<object_store::ObjectMeta> =
        futures::TryStreamExt::try_collect(store.list(Some(&prefix))).await?;
    for m in &metas {
        match store.delete(&m.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(metas.len() as u64)
}

fn count_files(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// Removes the empty directories under `dir` (not `dir` itself), deepest first: what is
/// left when the files of abandoned attempts were deleted one by one. Returns how many.
pub fn prune_empty_dirs(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let sub = e.path();
            removed += prune_empty_dirs(&sub);
            if std::fs::remove_dir(&sub).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Runs a future to completion on a fresh runtime: the synchronous entry point for CLIs.
pub fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start async runtime: {e}")))?;
    Ok(rt.block_on(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_is_shared_by_name() {
        let (s1, p1) = open_store("memory://shared-test/a/b").unwrap();
        s1.put(&child(&p1, "x.txt"), b"hello".to_vec().into())
            .await
            .unwrap();
        let (s2, p2) = open_store("memory://shared-test/a").unwrap();
        let got = get_bytes(s2.as_ref(), &child(&p2, "b/x.txt"))
            .await
            .unwrap();
        assert_eq!(&got[..], b"hello");
        let (s3, _) = open_store("memory://other-store/a").unwrap();
        assert!(matches!(
            get_bytes(s3.as_ref(), &child(&p2, "b/x.txt")).await,
            Err(Error::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn local_relative_path_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("nested/out");
        let url = format!("file://{}", target.display());
        let (store, prefix) = open_store(&url).unwrap();
        assert!(target.is_dir());
        put_bytes(store.as_ref(), &child(&prefix, "f.bin"), vec![1, 2, 3])
            .await
            .unwrap();
        assert_eq!(std::fs::read(target.join("f.bin")).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn opening_a_missing_input_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("labels.jsonl");
        assert!(matches!(
            open_object(missing.to_str().unwrap()),
            Err(Error::NotFound(_))
        ));
        assert!(!missing.exists());
    }

    #[tokio::test]
    async fn removing_an_attempt_leaves_no_empty_directory() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("stage-000/task-00001");
        let attempt = task.join("attempt-7");
        std::fs::create_dir_all(attempt.join("sub")).unwrap();
        std::fs::write(attempt.join("part-0.parquet"), b"x").unwrap();
        std::fs::write(attempt.join("sub/part-1.parquet"), b"y").unwrap();
        let url = attempt.to_str().unwrap().to_string();
        assert_eq!(remove_prefix(&url).await.unwrap(), 2);
        assert!(!attempt.exists());
        assert!(!task.exists(), "the emptied task directory goes too");
        assert!(dir.path().join("stage-000").exists());
        assert_eq!(remove_prefix(&url).await.unwrap(), 0);

        // A sibling attempt keeps the task directory.
        let (a, b) = (task.join("attempt-8"), task.join("attempt-9"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("f"), b"z").unwrap();
        remove_prefix(a.to_str().unwrap()).await.unwrap();
        assert!(b.join("f").exists());

        // In an object store the objects under the prefix go, the others stay.
        let (mem, p) = open_store("memory://remove-prefix-test/out").unwrap();
        for name in ["t1/attempt-1/a", "t1/attempt-1/b", "t1/attempt-2/a"] {
            put_bytes(mem.as_ref(), &child(&p, name), vec![1])
                .await
                .unwrap();
        }
        assert_eq!(
            remove_prefix("memory://remove-prefix-test/out/t1/attempt-1")
                .await
                .unwrap(),
            2
        );
        assert!(get_bytes(mem.as_ref(), &child(&p, "t1/attempt-2/a"))
            .await
            .is_ok());
    }

    #[test]
    fn empty_directories_are_pruned_below_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::create_dir_all(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/keep"), b"1").unwrap();
        assert_eq!(prune_empty_dirs(dir.path()), 3);
        assert!(!dir.path().join("a").exists());
        assert!(dir.path().join("d/keep").exists());
        assert!(dir.path().exists());
    }

    #[test]
    fn s3_url_is_configured_from_env_options() {
        // Building an S3 client does no IO; only the bucket and prefix are checked here.
        let (_, path) = open_store("s3://bucket/some/prefix").unwrap();
        assert_eq!(path.as_ref(), "some/prefix");
    }

    #[test]
    fn explicit_s3_options_reach_the_client() {
        // Path-style addressing against a custom endpoint: the bucket follows the endpoint.
        let opts = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("aws_region", "eu-west-3"),
            ("AWS_ALLOW_HTTP", "true"),
            ("aws_virtual_hosted_style_request", "false"),
            ("aws_access_key_id", "test-key"),
            ("aws_secret_access_key", "test-secret"),
        ];
        let (store, path) = open_store_with("s3://bkt/a/b", &opts).unwrap();
        assert_eq!(path.as_ref(), "a/b");
        let debug = format!("{store:?}");
        assert!(debug.contains("\"http://127.0.0.1:9/bkt\""), "{debug}");
        assert!(debug.contains("\"eu-west-3\""), "{debug}");
        assert_eq!(store.to_string(), "AmazonS3(bkt)");

        // Virtual-hosted style takes the endpoint as the bucket's own address.
        let vhost = [
            ("aws_endpoint", "http://bkt.127.0.0.1:9"),
            ("aws_virtual_hosted_style_request", "true"),
        ];
        let (store, _) = open_store_with("s3://bkt/a", &vhost).unwrap();
        let debug = format!("{store:?}");
        assert!(
            debug.contains("bucket_endpoint: \"http://bkt.127.0.0.1:9\""),
            "{debug}"
        );

        // A value the builder cannot parse is an error, not silently dropped.
        let bad = [("aws_virtual_hosted_style_request", "sometimes")];
        assert!(open_store_with("s3://bkt/a", &bad).is_err());

        // Local stores ignore options.
        let dir = tempfile::tempdir().unwrap();
        let (_, local) = open_store_with(dir.path().to_str().unwrap(), &opts).unwrap();
        assert!(local
            .as_ref()
            .ends_with(dir.path().file_name().unwrap().to_str().unwrap()));
    }
}
