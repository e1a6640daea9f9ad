//! The spool backend: envelopes in sled (the index), bodies in segment files.
//!
//! On disk, under the spool path: `index/` (sled: `db`, `conf`, maybe `blobs/`) and `bodies/`
//! (segment files). A commit fdatasyncs, in order, the segment files written since the last
//! commit (and their directory if a segment was created), then flushes sled and fdatasyncs its
//! `db` file and any blob file it wrote. Bodies first: an index entry never becomes durable
//! before the body it points to.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::commit::{Batch, CommitQueue, Request};
use super::queue_id::{self, QueueIdGenerator};
use super::segments::Segments;
use super::{Durable, Envelope, Health, Spool, SpoolError};
use crate::config::SpoolConfig;
use crate::metrics as m;

const HIGH_WATER_KEY: &[u8] = b"queue_id_high_water";
/// How long a free-space reading is reused; statvfs per message would be wasted work.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub struct SledSpool {
    messages: sled::Tree,
    segments: Segments,
    commits: Arc<CommitQueue>,
    committer: Mutex<Option<JoinHandle<()>>>,
    ids: Arc<QueueIdGenerator>,
    count: AtomicUsize,
    /// Body bytes of the messages in the spool.
    bytes: AtomicU64,
    path: PathBuf,
    min_free_space: u64,
    space: Mutex<Option<(Instant, bool)>>,
}

impl SledSpool {
    /// Opens (creating if needed) and recovers the spool: every stored envelope whose body is
    /// intact is kept; bodies nothing refers to are deleted.
    pub fn open(cfg: &SpoolConfig) -> Result<Arc<SledSpool>, SpoolError> {
        let index_dir = cfg.path.join("index");
        let bodies_dir = cfg.path.join("bodies");
        fs::create_dir_all(&index_dir)?;
        let db = sled::Config::new()
            .path(&index_dir)
            .cache_capacity(cfg.cache_capacity)
            // Only the committer flushes; sled's own timer would only add I/O.
            .flush_every_ms(None)
            .open()?;
        let messages = db.open_tree("messages")?;
        let meta = db.open_tree("meta")?;

        let mut refs: HashMap<u64, usize> = HashMap::new();
        let mut envelopes = Vec::new();
        let mut high_water = meta.get(HIGH_WATER_KEY)?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
        for item in messages.iter() {
            let (key, value) = item?;
            match serde_json::from_slice::<Envelope>(&value) {
                Ok(env) => envelopes.push(env),
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(&key), error = %e, "undecodable envelope left in the spool index");
                }
            }
        }
        let bodies_existing = BodyFiles::scan(&bodies_dir);
        let mut recovered = 0;
        let mut recovered_bytes = 0;
        for env in envelopes {
            high_water = high_water.max(queue_id::decode(&env.queue_id).unwrap_or(0));
            let intact = env.body.is_some_and(|b| bodies_existing.len_of(b.segment).is_some_and(|len| b.offset + b.len <= len));
            if !intact {
                // Only a message whose commit never completed (never acknowledged) can get here.
                tracing::warn!(queue_id = %env.queue_id, "dropping index entry without a complete body");
                messages.remove(env.queue_id.as_bytes())?;
                continue;
            }
            *refs.entry(env.body.expect("checked intact").segment).or_insert(0) += 1;
            recovered += 1;
            recovered_bytes += env.body.map_or(0, |b| b.len);
        }
        let (segments, _) = Segments::open(&bodies_dir, cfg.segment_size, refs)?;
        let ids = Arc::new(QueueIdGenerator::new(high_water));

        // Files created by this open (sled's, the first segment) must survive power loss too.
        let index_file = File::open(index_dir.join("db"))?;
        sync_dir(&cfg.path)?;
        sync_dir(&index_dir)?;
        sync_dir(&bodies_dir)?;

        let commits = Arc::new(CommitQueue::default());
        let committer = {
            let commits = commits.clone();
            let ids = ids.clone();
            let mut synced_blobs = HashSet::new();
            let bodies_dir = File::open(&bodies_dir)?;
            let blobs_dir = index_dir.join("blobs");
            std::thread::Builder::new().name("spool-commit".into()).spawn(move || {
                commits.run(|batch: &Batch| {
                    for file in batch.segments.values() {
                        file.sync_data()?;
                    }
                    if batch.new_segment {
                        bodies_dir.sync_all()?;
                    }
                    meta.insert(HIGH_WATER_KEY, &ids.last().to_be_bytes()).map_err(io::Error::other)?;
                    db.flush().map_err(io::Error::other)?;
                    index_file.sync_data()?;
                    sync_new_blobs(&blobs_dir, &mut synced_blobs)
                })
            })?
        };
        metrics::gauge!(m::SPOOL_MESSAGES).set(recovered as f64);
        metrics::gauge!(m::SPOOL_BYTES).set(recovered_bytes as f64);
        tracing::info!(path = %cfg.path.display(), messages = recovered, "spool opened");
        Ok(Arc::new(SledSpool {
            messages,
            segments,
            commits,
            committer: Mutex::new(Some(committer)),
            ids,
            count: AtomicUsize::new(recovered),
            bytes: AtomicU64::new(recovered_bytes),
            path: cfg.path.clone(),
            min_free_space: cfg.min_free_space,
            space: Mutex::new(None),
        }))
    }

    /// Stops the committer after it has made every pending write durable.
    pub fn close(&self) {
        self.commits.shutdown();
        if let Some(handle) = self.committer.lock().expect("committer lock").take() {
            let _ = handle.join();
        }
    }

    fn put(&self, env: &Envelope) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(env).map_err(|e| SpoolError::Io(e.to_string()))?;
        self.messages.insert(env.queue_id.as_bytes(), bytes)?;
        Ok(())
    }

    fn enough_space(&self) -> bool {
        let mut cached = self.space.lock().expect("space lock");
        if let Some((at, ok)) = *cached
            && at.elapsed() < SPACE_CHECK_INTERVAL
        {
            return ok;
        }
        let ok = free_space(&self.path).is_none_or(|free| free >= self.min_free_space);
        *cached = Some((Instant::now(), ok));
        ok
    }
}

impl Drop for SledSpool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Spool for SledSpool {
    fn new_queue_id(&self) -> String {
        self.ids.next().1
    }

    fn store(&self, mut envelope: Envelope, body_parts: &[&[u8]]) -> Result<Durable, SpoolError> {
        if self.commits.is_poisoned() {
            return Err(SpoolError::Poisoned);
        }
        let appended = self.segments.append(body_parts)?;
        envelope.body = Some(appended.body);
        if let Err(e) = self.put(&envelope) {
            self.segments.release(appended.body.segment);
            return Err(e);
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(appended.body.len, Ordering::Relaxed) + appended.body.len;
        metrics::gauge!(m::SPOOL_MESSAGES).set(n as f64);
        metrics::gauge!(m::SPOOL_BYTES).set(bytes as f64);
        Ok(self.commits.request(Request {
            segment: Some((appended.body.segment, appended.file)),
            new_segment: appended.created,
            garbage: appended.garbage,
        }))
    }

    fn update(&self, envelope: &Envelope) -> Result<Durable, SpoolError> {
        if self.commits.is_poisoned() {
            return Err(SpoolError::Poisoned);
        }
        if !self.messages.contains_key(envelope.queue_id.as_bytes())? {
            return Err(SpoolError::NotFound);
        }
        self.put(envelope)?;
        Ok(self.commits.request(Request::default()))
    }

    fn remove(&self, queue_id: &str) -> Result<Durable, SpoolError> {
        if self.commits.is_poisoned() {
            return Err(SpoolError::Poisoned);
        }
        let old = self.messages.remove(queue_id.as_bytes())?.ok_or(SpoolError::NotFound)?;
        let env: Envelope = serde_json::from_slice(&old).map_err(|e| SpoolError::Corrupt(e.to_string()))?;
        let garbage = env.body.and_then(|b| self.segments.release(b.segment));
        let n = self.count.fetch_sub(1, Ordering::Relaxed) - 1;
        let len = env.body.map_or(0, |b| b.len);
        let bytes = self.bytes.fetch_sub(len, Ordering::Relaxed) - len;
        metrics::gauge!(m::SPOOL_MESSAGES).set(n as f64);
        metrics::gauge!(m::SPOOL_BYTES).set(bytes as f64);
        Ok(self.commits.request(Request { garbage, ..Request::default() }))
    }

    fn get(&self, queue_id: &str) -> Result<Envelope, SpoolError> {
        let value = self.messages.get(queue_id.as_bytes())?.ok_or(SpoolError::NotFound)?;
        serde_json::from_slice(&value).map_err(|e| SpoolError::Corrupt(e.to_string()))
    }

    fn read_body(&self, envelope: &Envelope) -> Result<Vec<u8>, SpoolError> {
        let body = envelope.body.ok_or_else(|| SpoolError::Corrupt("envelope without body".into()))?;
        self.segments.read(&body)
    }

    fn list(&self) -> Result<Vec<Envelope>, SpoolError> {
        self.messages
            .iter()
            .map(|item| {
                let (_, value) = item?;
                serde_json::from_slice(&value).map_err(|e| SpoolError::Corrupt(e.to_string()))
            })
            .collect()
    }

    fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn health(&self) -> Health {
        if self.commits.is_poisoned() {
            Health::Failed
        } else if !self.enough_space() {
            Health::LowSpace
        } else {
            Health::Ok
        }
    }
}

/// Segment file lengths found on disk before recovery decides what to keep.
struct BodyFiles(HashMap<u64, u64>);

impl BodyFiles {
    fn scan(dir: &Path) -> BodyFiles {
        let mut map = HashMap::new();
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse::<u64>().ok());
                if let (Some(id), Ok(meta)) = (id, entry.metadata()) {
                    map.insert(id, meta.len());
                }
            }
        }
        BodyFiles(map)
    }

    fn len_of(&self, id: u64) -> Option<u64> {
        self.0.get(&id).copied()
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// sled writes nodes larger than a quarter segment to `blobs/` and never fsyncs them.
fn sync_new_blobs(dir: &Path, synced: &mut HashSet<PathBuf>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut any_new = false;
    let mut present = HashSet::new();
    for entry in entries {
        let path = entry?.path();
        if !synced.contains(&path) {
            File::open(&path)?.sync_data()?;
            any_new = true;
        }
        present.insert(path);
    }
    if any_new {
        sync_dir(dir)?;
    }
    *synced = present;
    Ok(())
}

/// Free bytes for unprivileged users on the file system holding `path`.
fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and st is a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
#[path = "sled_spool_tests.rs"]
mod tests;
