//! The embedded state store for one machine: the map lives in memory, and every change is
//! appended to `state.log` and fsynced before the call returns. Opening the directory again
//! replays the log, so a restarted local run resumes where it stopped. A record cut short by
//! a crash (it was never acknowledged) is detected by its checksum and dropped. When the log
//! grows well past the live data it is rewritten as a snapshot (temporary file, fsync,
//! rename).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{
    check_delete, check_key, BoxFuture, Expect, Result, StateError, StateStore, Versioned,
};

const LOG: &str = "state.log";
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// Carries the store's revision counter across compactions (a snapshot has no deletes).
const REVISION: u8 = 3;
/// tag, revision, key length, value length.
const HEADER: usize = 1 + 8 + 4 + 4;
const CHECK: usize = 4;

#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    map: BTreeMap<String, Versioned>,
    revision: u64,
    log: File,
    log_bytes: u64,
    /// Held open with an exclusive lock: one process owns the directory.
    _lock: File,
}

/// Takes the directory's lock file, or says who cannot have it.
fn lock_dir(dir: &Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // A lock just released can still be held for a moment by a child process forked (by
    // any thread of this process) before it closes its inherited descriptors at exec: try
    // for a second before saying the directory is in use.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is shared.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        if std::time::Instant::now() >= deadline {
            return Err(StateError::Unavailable(format!(
                "{} is in use by another coordinator (its LOCK file is held)",
                dir.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StateError {
    StateError::Internal(format!("{}: {e}", path.display()))
}

fn lock(inner: &Mutex<Inner>) -> Result<std::sync::MutexGuard<'_, Inner>> {
    inner
        .lock()
        .map_err(|_| StateError::Internal("state store lock poisoned".into()))
}

fn encode(tag: u8, revision: u64, key: &str, value: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEADER + key.len() + value.len() + CHECK);
    rec.push(tag);
    rec.extend_from_slice(&revision.to_le_bytes());
    rec.extend_from_slice(&(key.len() as u32).to_le_bytes());
    rec.extend_from_slice(&(value.len() as u32).to_le_bytes());
    rec.extend_from_slice(key.as_bytes());
    rec.extend_from_slice(value);
    let check = Sha256::digest(&rec);
    rec.extend_from_slice(&check[..CHECK]);
    rec
}

/// One record at the start of `bytes`: (tag, revision, key, value, length), or `None` when
/// the bytes do not hold a whole, intact record.
fn decode(bytes: &[u8]) -> Option<(u8, u64, String, Vec<u8>, usize)> {
    let head = bytes.get(..HEADER)?;
    let tag = head[0];
    let revision = u64::from_le_bytes(head[1..9].try_into().ok()?);
    let klen = u32::from_le_bytes(head[9..13].try_into().ok()?) as usize;
    let vlen = u32::from_le_bytes(head[13..17].try_into().ok()?) as usize;
    let body_end = HEADER.checked_add(klen)?.checked_add(vlen)?;
    let end = body_end.checked_add(CHECK)?;
    let rec = bytes.get(..end)?;
    if Sha256::digest(&rec[..body_end])[..CHECK] != rec[body_end..] {
        return None;
    }
    let key = String::from_utf8(rec[HEADER..HEADER + klen].to_vec()).ok()?;
    Some((
        tag,
        revision,
        key,
        rec[HEADER + klen..body_end].to_vec(),
        end,
    ))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store kept in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock = lock_dir(dir)?;
        let path = dir.join(LOG);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&path, e)),
        };
        let (mut map, mut revision, mut at) = (BTreeMap::new(), 0u64, 0usize);
        while let Some((tag, rev, key, value, len)) = decode(&bytes[at..]) {
            match tag {
                PUT => {
                    map.insert(
                        key,
                        Versioned {
                            value,
                            revision: rev,
                        },
                    );
                }
                DELETE => {
                    map.remove(&key);
                }
                REVISION => {}
                _ => break,
            }
            revision = revision.max(rev);
            at += len;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        if at < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - at,
                "state log ends in an incomplete record (an unacknowledged write cut by a crash); dropping it"
            );
            log.set_len(at as u64).map_err(|e| io_err(&path, e))?;
        }
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            map,
            revision,
            log,
            log_bytes: at as u64,
            _lock: lock,
        };
        inner.compact_if_large()?;
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    /// Runs `op` on the store on a blocking thread (it writes and fsyncs the log).
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || op(&mut *lock(&inner)?))
                .await
                .map_err(|e| StateError::Internal(format!("state store task failed: {e}")))?
        })
    }
}

impl Inner {
    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG)
    }

    fn check(&self, key: &str, expect: Expect) -> Result<()> {
        let found = self.map.get(key).map(|v| v.revision);
        let ok = match expect {
            Expect::Any => true,
            Expect::Absent => found.is_none(),
            Expect::Revision(r) => found == Some(r),
        };
        if ok {
            Ok(())
        } else {
            Err(StateError::Conflict {
                key: key.to_string(),
                expected: expect,
                found,
            })
        }
    }

    fn append(&mut self, rec: &[u8]) -> Result<()> {
        let path = self.log_path();
        self.log.write_all(rec).map_err(|e| io_err(&path, e))?;
        self.log.sync_data().map_err(|e| io_err(&path, e))?;
        self.log_bytes += rec.len() as u64;
        Ok(())
    }

    fn put(&mut self, key: &str, value: Vec<u8>, expect: Expect) -> Result<u64> {
        self.check(key, expect)?;
        let revision = self.revision + 1;
        self.append(&encode(PUT, revision, key, &value))?;
        self.revision = revision;
        self.map
            .insert(key.to_string(), Versioned { value, revision });
        self.compact_if_large()?;
        Ok(revision)
    }

    fn delete(&mut self, key: &str, expect: Expect) -> Result<()> {
        self.check(key, expect)?;
        if !self.map.contains_key(key) {
            return Ok(());
        }
        let revision = self.revision + 1;
        self.append(&encode(DELETE, revision, key, &[]))?;
        self.revision = revision;
        self.map.remove(key);
        self.compact_if_large()
    }

    fn live_bytes(&self) -> u64 {
        self.map
            .iter()
            .map(|(k, v)| (HEADER + k.len() + v.value.len() + CHECK) as u64)
            .sum()
    }

    /// Rewrites the log as a snapshot once it is more than twice the live data (plus 1 MiB).
    fn compact_if_large(&mut self) -> Result<()> {
        if self.log_bytes <= 2 * self.live_bytes() + (1 << 20) {
            return Ok(());
        }
        self.compact()
    }

    fn compact(&mut self) -> Result<()> {
        let path = self.log_path();
        let tmp = self.dir.join(format!("{LOG}.tmp"));
        let mut snapshot = encode(REVISION, self.revision, "", &[]);
        for (k, v) in &self.map {
            snapshot.extend_from_slice(&encode(PUT, v.revision, k, &v.value));
        }
        let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        f.write_all(&snapshot).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.dir, e))?;
        self.log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        self.log_bytes = snapshot.len() as u64;
        Ok(())
    }
}

impl StateStore for EmbeddedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Versioned>>> {
        Box::pin(async move {
            check_key(key)?;
            Ok(lock(&self.inner)?.map.get(key).cloned())
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expect: Expect,
    ) -> BoxFuture<'a, Result<u64>> {
        if let Err(e) = check_key(key) {
            return Box::pin(async move { Err(e) });
        }
        let key = key.to_string();
        self.run(move |inner| inner.put(&key, value, expect))
    }

    fn delete<'a>(&'a self, key: &'a str, expect: Expect) -> BoxFuture<'a, Result<()>> {
        if let Err(e) = check_delete(key, expect) {
            return Box::pin(async move { Err(e) });
        }
        let key = key.to_string();
        self.run(move |inner| inner.delete(&key, expect))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<(String, Versioned)>>> {
        Box::pin(async move {
            Ok(lock(&self.inner)?
                .map
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let rec = encode(PUT, 42, "runs/r1", b"{\"state\":\"running\"}");
        let (tag, rev, key, value, len) = decode(&rec).unwrap();
        assert_eq!(
            (tag, rev, key.as_str(), len),
            (PUT, 42, "runs/r1", rec.len())
        );
        assert_eq!(value, b"{\"state\":\"running\"}");
        assert!(decode(&rec[..rec.len() - 1]).is_none(), "truncated");
        let mut flipped = rec.clone();
        flipped[HEADER + 2] ^= 1;
        assert!(decode(&flipped).is_none(), "corrupted");
    }
}
