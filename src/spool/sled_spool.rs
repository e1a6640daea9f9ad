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
use super::{BodyRef, Changes, Durable, Envelope, Health, Spool, SpoolError};
use crate::config::SpoolConfig;
use crate::metrics as m;

const HIGH_WATER_KEY: &[u8] = b"queue_id_high_water";
/// Keys in the `messages` tree: `m` + queue id holds the envelope; `s` + next attempt (u64 BE)
/// + queue id is the schedule entry. One tree, so a sled batch changes both atomically.
const ENVELOPE: u8 = b'm';
const SCHEDULE: u8 = b's';

fn envelope_key(queue_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + queue_id.len());
    k.push(ENVELOPE);
    k.extend_from_slice(queue_id.as_bytes());
    k
}

fn schedule_key(due: u64, queue_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + queue_id.len());
    k.push(SCHEDULE);
    k.extend_from_slice(&due.to_be_bytes());
    k.extend_from_slice(queue_id.as_bytes());
    k
}
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
        let db = open_index(&index_dir, cfg.cache_capacity)?;
        let messages = db.open_tree("messages")?;
        let meta = db.open_tree("meta")?;

        // Recovery streams over the index and decodes only what it needs, so a spool of a
        // million deferred messages does not pass through memory all at once.
        let mut refs: HashMap<u64, usize> = HashMap::new();
        let mut high_water = meta.get(HIGH_WATER_KEY)?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
        let bodies_existing = BodyFiles::scan(&bodies_dir);
        let (mut recovered, mut recovered_bytes) = (0usize, 0u64);
        let mut torn = Vec::new();
        for item in messages.scan_prefix([ENVELOPE]) {
            let (key, value) = item?;
            let view: RecoveryView = match serde_json::from_slice(&value) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(&key), error = %e, "undecodable envelope left in the spool index");
                    continue;
                }
            };
            high_water = high_water.max(queue_id::decode(&view.queue_id).unwrap_or(0));
            match view.body.filter(|b| bodies_existing.len_of(b.segment).is_some_and(|len| b.offset + b.len <= len)) {
                Some(body) => {
                    *refs.entry(body.segment).or_insert(0) += 1;
                    recovered += 1;
                    recovered_bytes += body.len;
                }
                None => torn.push(view.queue_id),
            }
        }
        for queue_id in torn {
            // Only a message whose commit never completed (never acknowledged) can get here.
            tracing::warn!(queue_id = %queue_id, "dropping index entry without a complete body");
            if let Some(value) = messages.remove(envelope_key(&queue_id))?
                && let Some(due) = serde_json::from_slice::<Envelope>(&value).ok().and_then(|e| e.next_due())
            {
                messages.remove(schedule_key(due, &queue_id))?;
            }
        }
        release_free_heap();
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

    /// Writes new messages' bodies, then changes the index in one atomic batch, then asks for
    /// one commit covering all of it.
    fn apply_parts(&self, stores: Vec<(Envelope, &[&[u8]])>, updates: &[Envelope], removals: &[String]) -> Result<Durable, SpoolError> {
        if self.commits.is_poisoned() {
            return Err(SpoolError::Poisoned);
        }
        let mut batch = sled::Batch::default();
        let mut request = Request::default();
        let mut appended_segments = Vec::new();
        let (mut added, mut added_bytes) = (0usize, 0u64);
        for (mut envelope, parts) in stores {
            let appended = match self.segments.append(parts) {
                Ok(a) => a,
                Err(e) => {
                    for seg in appended_segments {
                        self.segments.release(seg);
                    }
                    return Err(e);
                }
            };
            appended_segments.push(appended.body.segment);
            envelope.body = Some(appended.body);
            added += 1;
            added_bytes += appended.body.len;
            put(&mut batch, &envelope)?;
            request.segments.push((appended.body.segment, appended.file));
            request.new_segment |= appended.created;
            request.garbage.extend(appended.garbage);
        }
        for envelope in updates {
            let old = self.get(&envelope.queue_id)?;
            if let Some(due) = old.next_due() {
                batch.remove(schedule_key(due, &old.queue_id));
            }
            put(&mut batch, envelope)?;
        }
        let (mut removed, mut removed_bytes, mut released) = (0usize, 0u64, Vec::new());
        for queue_id in removals {
            let old = self.get(queue_id)?;
            batch.remove(envelope_key(queue_id));
            if let Some(due) = old.next_due() {
                batch.remove(schedule_key(due, queue_id));
            }
            removed += 1;
            removed_bytes += old.body.map_or(0, |b| b.len);
            released.extend(old.body.map(|b| b.segment));
        }
        if let Err(e) = self.messages.apply_batch(batch) {
            for seg in appended_segments {
                self.segments.release(seg);
            }
            return Err(e.into());
        }
        for seg in released {
            request.garbage.extend(self.segments.release(seg));
        }
        let n = self.count.fetch_add(added, Ordering::Relaxed) + added - removed;
        self.count.fetch_sub(removed, Ordering::Relaxed);
        let bytes = self.bytes.fetch_add(added_bytes, Ordering::Relaxed) + added_bytes - removed_bytes;
        self.bytes.fetch_sub(removed_bytes, Ordering::Relaxed);
        metrics::gauge!(m::SPOOL_MESSAGES).set(n as f64);
        metrics::gauge!(m::SPOOL_BYTES).set(bytes as f64);
        Ok(self.commits.request(request))
    }

    /// Stops the committer after it has made every pending write durable.
    pub fn close(&self) {
        self.commits.shutdown();
        if let Some(handle) = self.committer.lock().expect("committer lock").take() {
            let _ = handle.join();
        }
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

    fn store(&self, envelope: Envelope, body_parts: &[&[u8]]) -> Result<Durable, SpoolError> {
        self.apply_parts(vec![(envelope, body_parts)], &[], &[])
    }

    fn apply(&self, changes: Changes) -> Result<Durable, SpoolError> {
        let stores = changes.store.iter().map(|(e, b)| (e.clone(), [b.as_slice()])).collect::<Vec<_>>();
        let stores = stores.iter().map(|(e, b)| (e.clone(), &b[..])).collect();
        self.apply_parts(stores, &changes.update, &changes.remove)
    }

    fn get(&self, queue_id: &str) -> Result<Envelope, SpoolError> {
        let value = self.messages.get(envelope_key(queue_id))?.ok_or(SpoolError::NotFound)?;
        serde_json::from_slice(&value).map_err(|e| SpoolError::Corrupt(e.to_string()))
    }

    fn read_body(&self, envelope: &Envelope) -> Result<Vec<u8>, SpoolError> {
        let body = envelope.body.ok_or_else(|| SpoolError::Corrupt("envelope without body".into()))?;
        self.segments.read(&body)
    }

    fn due(&self, now: u64, limit: usize) -> Result<Vec<String>, SpoolError> {
        let end = schedule_key(now.saturating_add(1), "");
        let mut ids = Vec::new();
        for item in self.messages.range(vec![SCHEDULE]..end).take(limit) {
            let (key, _) = item?;
            ids.push(String::from_utf8_lossy(&key[9..]).into_owned());
        }
        Ok(ids)
    }

    fn upcoming(&self, limit: usize) -> Result<Vec<(u64, String)>, SpoolError> {
        let mut out = Vec::new();
        for item in self.messages.scan_prefix([SCHEDULE]).take(limit) {
            let (key, _) = item?;
            let due = key.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
            out.push((due, String::from_utf8_lossy(&key[9..]).into_owned()));
        }
        Ok(out)
    }

    fn next_due(&self) -> Result<Option<u64>, SpoolError> {
        match self.messages.scan_prefix([SCHEDULE]).next() {
            Some(item) => {
                let (key, _) = item?;
                Ok(key.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes))
            }
            None => Ok(None),
        }
    }

    fn list(&self) -> Result<Vec<Envelope>, SpoolError> {
        self.messages
            .scan_prefix([ENVELOPE])
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

/// The part of an envelope recovery needs; serde skips the rest without allocating it.
#[derive(serde::Deserialize)]
struct RecoveryView {
    queue_id: String,
    body: Option<BodyRef>,
}

/// Hands heap freed after recovery back to the kernel: glibc keeps it otherwise, and a large
/// recovered spool would leave the daemon's resident size far above what it uses.
fn release_free_heap() {
    // SAFETY: malloc_trim only returns unused heap pages; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Opens sled. A spool closed a moment ago may still hold its file lock while sled's I/O
/// threads finish (they keep the database alive briefly), so a held lock is retried for up to
/// two seconds before giving up.
fn open_index(dir: &Path, cache_capacity: u64) -> Result<sled::Db, SpoolError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        // Only the committer flushes; sled's own timer would only add I/O.
        match sled::Config::new().path(dir).cache_capacity(cache_capacity).flush_every_ms(None).open() {
            // sled reports a held lock as ErrorKind::Other with this text.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.map_err(SpoolError::from),
        }
    }
}

/// Adds an envelope and its schedule entry to a batch.
fn put(batch: &mut sled::Batch, envelope: &Envelope) -> Result<(), SpoolError> {
    let bytes = serde_json::to_vec(envelope).map_err(|e| SpoolError::Io(e.to_string()))?;
    batch.insert(envelope_key(&envelope.queue_id), bytes);
    if let Some(due) = envelope.next_due() {
        batch.insert(schedule_key(due, &envelope.queue_id), &[]);
    }
    Ok(())
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
