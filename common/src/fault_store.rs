//! An object store that fails on demand, for fault-injection tests of real processes.
//! When the environment names a control file (`AUTOMALDESC_STORE_FAULTS=<path>`), every
//! store [`crate::store`] opens is wrapped: while that file holds `unavailable`, every call
//! fails as an unreachable store would; while it holds `full`, every write fails with "no
//! space left on device" (reads still work); while it holds `slow <ms>`, every call waits
//! that many milliseconds and then passes through (a store that answers, slowly); absent or
//! empty, calls pass through. Each injected fault (not a delay) is logged (`injected
//! object-store fault`) and counted. Without the variable nothing is wrapped.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The environment variable naming the control file.
pub const FAULTS_VAR: &str = "AUTOMALDESC_STORE_FAULTS";

static INJECTED: AtomicU64 = AtomicU64::new(0);

/// Faults injected by this process so far.
pub fn injected() -> u64 {
    INJECTED.load(Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unavailable,
    Full,
    Slow(Duration),
}

/// Wraps `store` when the environment asks for fault injection.
pub fn maybe_wrap(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    match std::env::var_os(FAULTS_VAR) {
        Some(path) if !path.is_empty() => Arc::new(FaultStore {
            inner: store,
            control: PathBuf::from(path),
        }),
        _ => store,
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    control: PathBuf,
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

impl FaultStore {
    fn mode(&self) -> Option<Mode> {
        let text = std::fs::read_to_string(&self.control).ok()?;
        match text.trim() {
            "unavailable" => Some(Mode::Unavailable),
            "full" => Some(Mode::Full),
            other => {
                let ms = other.strip_prefix("slow")?.trim().parse().ok()?;
                Some(Mode::Slow(Duration::from_millis(ms)))
            }
        }
    }

    /// What a call of `op` on `path` meets now: a delay, then the fault to inject, if any.
    async fn gate(&self, op: &'static str, path: &Path, write: bool) -> Result<()> {
        let mode = self.mode();
        if let Some(Mode::Slow(delay)) = mode {
            tokio::time::sleep(delay).await;
        }
        fault(mode, op, path, write)
    }
}

/// The fault `mode` injects into `op` on `path`, if any.
fn fault(mode: Option<Mode>, op: &'static str, path: &Path, write: bool) -> Result<()> {
    let (kind, msg) = match mode {
        Some(Mode::Unavailable) => (
            std::io::ErrorKind::ConnectionRefused,
            "connection refused (injected)",
        ),
        Some(Mode::Full) if write => (
            std::io::ErrorKind::StorageFull,
            "no space left on device (injected)",
        ),
        _ => return Ok(()),
    };
    let n = INJECTED.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(op, path = %path, injected = n, "injected object-store fault");
    Err(object_store::Error::Generic {
        store: "faults",
        source: Box::new(std::io::Error::new(kind, msg)),
    })
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.gate("put", location, true).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.gate("put_multipart", location, true).await?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.gate("get", location, false).await?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.gate("get_ranges", location, false).await?;
        self.inner.get_ranges(location, ranges).await
    }

    async fn head(&self, location: &Path) -> Result<ObjectMeta> {
        self.gate("head", location, false).await?;
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> Result<()> {
        self.gate("delete", location, false).await?;
        self.inner.delete(location).await
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        let mode = self.mode();
        if let Some(Mode::Slow(delay)) = mode {
            let inner = self.inner.clone();
            let prefix = prefix.cloned();
            return futures::stream::once(tokio::time::sleep(delay))
                .flat_map(move |()| inner.list(prefix.as_ref()))
                .boxed();
        }
        match fault(mode, "list", &at, false) {
            Ok(()) => self.inner.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.gate("list", &prefix.cloned().unwrap_or_default(), false)
            .await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<()> {
        self.gate("copy", to, true).await?;
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> Result<()> {
        self.gate("copy", to, true).await?;
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::fault::FaultKind;

    #[tokio::test]
    async fn faults_follow_the_control_file_and_are_transient() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("faults");
        let store = FaultStore {
            inner: Arc::new(object_store::memory::InMemory::new()),
            control: control.clone(),
        };
        let p = Path::from("a/b");
        store.put(&p, b"x".to_vec().into()).await.unwrap();
        let before = injected();

        std::fs::write(&control, "full\n").unwrap();
        let e = store.put(&p, b"y".to_vec().into()).await.unwrap_err();
        assert!(e.to_string().contains("no space left"), "{e}");
        assert_eq!(Error::from(e).fault_kind(), FaultKind::Transient);
        // Reads still work on a full disk.
        assert_eq!(
            &store.get(&p).await.unwrap().bytes().await.unwrap()[..],
            b"x"
        );

        std::fs::write(&control, "unavailable").unwrap();
        assert!(store.get(&p).await.is_err());
        assert!(store.list(None).next().await.unwrap().is_err());

        std::fs::write(&control, "").unwrap();
        store.put(&p, b"z".to_vec().into()).await.unwrap();
        assert_eq!(injected() - before, 3);

        // A slow store answers, late, and injects no fault.
        std::fs::write(&control, "slow 300").unwrap();
        let t = std::time::Instant::now();
        assert_eq!(
            &store.get(&p).await.unwrap().bytes().await.unwrap()[..],
            b"z"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        let t = std::time::Instant::now();
        let listed: Vec<_> = store.list(None).collect().await;
        assert_eq!(listed.len(), 1);
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(injected() - before, 3);
    }
}
