//! A worker-local store of computed model states that outlives one stage, for states that
//! later stages compute again over the same tokens with the same frozen blocks:
//! - training's frozen prefix (`train::prefix`): every training run over the same base
//!   model and the same lowest adapted block sees the seed examples with the same tokens
//!   (V1's training, V2's, a stage retried after a crash);
//! - a prompt's prefill below the adapted blocks (`generate::engine`): the base model's
//!   evaluation and V1's and V2's run the same blocks over the same test prompts, and V1's
//!   and V2's generation over the same unlabelled prompts.
//!
//! An entry is one file named by the SHA-256 of the model's identity (its content hash and
//! what the states are), the block the states enter and the token ids: raw little-endian
//! f32. Files are written to a temporary name and renamed, so a reader never sees half a
//! file; one whose size is wrong is ignored and rewritten. Beyond the byte cap the least
//! recently used files go.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

#[derive(Clone, Debug)]
pub struct StateStore {
    dir: PathBuf,
    model_id: String,
    cap_bytes: u64,
}

impl StateStore {
    /// The store in `dir` for the model `model_id` (its content hash), keeping at most
    /// `cap_bytes` on disk.
    pub fn new(dir: &Path, model_id: &str, cap_bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            model_id: model_id.to_string(),
            cap_bytes,
        }
    }

    fn path(&self, start: usize, tokens: &[u32]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(self.model_id.as_bytes());
        h.update([0]);
        h.update((start as u64).to_le_bytes());
        for t in tokens {
            h.update(t.to_le_bytes());
        }
        self.dir.join(format!("{:x}.f32", h.finalize()))
    }

    /// The states of `tokens` entering block `start`, `len` values, when stored.
    pub fn get(&self, start: usize, tokens: &[u32], len: usize) -> Option<Vec<f32>> {
        let path = self.path(start, tokens);
        let bytes = std::fs::read(&path).ok()?;
        if bytes.len() != len * 4 {
            tracing::warn!(path = %path.display(), "a stored model state has the wrong size: computed again");
            return None;
        }
        // Recently used files survive eviction longest.
        if let Ok(f) = std::fs::File::options().write(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    /// Stores the states of `tokens` entering block `start`. A failure to write only costs
    /// the reuse, so it is logged, not returned.
    pub fn put(&self, start: usize, tokens: &[u32], states: &[f32]) {
        let path = self.path(start, tokens);
        // Unique per writer: workers of one process (`local --workers N`) share the pid.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
        let bytes: Vec<u8> = states.iter().flat_map(|x| x.to_le_bytes()).collect();
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|_| std::fs::write(&tmp, &bytes))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not store a model state");
        }
    }

    /// Deletes the least recently used entries until the store holds at most its cap, and
    /// temporary files a crashed writer left (older than an hour).
    pub fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let stale = SystemTime::now() - std::time::Duration::from_secs(3600);
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for e in entries.filter_map(Result::ok) {
            let (path, Ok(m)) = (e.path(), e.metadata()) else {
                continue;
            };
            let Ok(modified) = m.modified() else { continue };
            let ext = path.extension().map(|x| x.to_string_lossy().into_owned());
            match ext.as_deref() {
                Some("f32") => files.push((modified, m.len(), path)),
                Some(x) if x.starts_with("tmp-") && modified < stale => {
                    let _ = std::fs::remove_file(&path);
                }
                _ => {}
            }
        }
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        files.sort_by_key(|(modified, _, _)| *modified);
        for (_, len, path) in files {
            if total <= self.cap_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}
