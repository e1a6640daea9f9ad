//! The spool backend: envelopes in sled (the index), bodies in segment files.
//!
//! On disk, under the spool path: `index/` (sled: `db`, `conf`, maybe `blobs/`) and `bodies/`
//! (segment files). A commit fdatasyncs, in order, the segment files written since the last
//! commit (and their directory if a segment was created), then flushes sled and fdatasyncs its
//! `db` file and any blob file it wrote. Bodies first: an index entry never becomes durable
//! before the body it points to.
//!
//! Every change to a message is one sled key (its envelope), written with a plain insert or
//! remove: sled's `apply_batch` rolls its log buffer twice per batch, and each roll is a write
//! plus `sync_file_range` on a sled thread, which cost more CPU than the rest of a message's
//! intake. The schedule (when each queued message is next due) is therefore not kept in sled
//! but in memory, rebuilt from the envelopes when the spool opens: it always agrees with them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::commit::{Batch, CommitQueue, Request};
use super::queue_id::{self, QueueIdGenerator};
use super::scratch::{Scratch, ScratchDir};
use super::segments::Segments;
use super::{BodyRef, Changes, Durable, Envelope, Health, RecipientState, Shelf, Spool, SpoolError, SpoolRead};
use crate::config::SpoolConfig;
use crate::metrics as m;

const HIGH_WATER_KEY: &[u8] = b"queue_id_high_water";
/// Keys in the `messages` tree: `m` + queue id holds the envelope.
const ENVELOPE: u8 = b'm';
/// Schedule entries written by earlier versions (`s` + due + queue id); deleted at open.
const LEGACY_SCHEDULE: u8 = b's';

fn envelope_key(queue_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + queue_id.len());
    k.push(ENVELOPE);
    k.extend_from_slice(queue_id.as_bytes());
    k
}

/// When queued messages are next due, earliest first: (unix seconds, queue id value). Ids are
/// kept as numbers (16 bytes an entry), so a million deferred messages cost tens of MiB here.
type Schedule = BTreeSet<(u64, u64)>;

fn id_value(queue_id: &str) -> Result<u64, SpoolError> {
    queue_id::decode(queue_id).ok_or_else(|| SpoolError::Corrupt(format!("not a queue id: {queue_id:?}")))
}
/// How long a free-space reading is reused; statvfs per message would be wasted work.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub struct SledSpool {
    messages: sled::Tree,
    /// HTTP API answers by idempotency key: `expires (u64 BE) ++ answer`.
    answers: sled::Tree,
    /// MTA-STS policies by domain, the same way.
    policies: sled::Tree,
    /// TLS-RPT reports waiting for a retry, the same way.
    tls_reports: sled::Tree,
    /// The TLS-RPT period's counts at the latest stop or hour.
    tls_counts: sled::Tree,
    segments: Segments,
    commits: Arc<CommitQueue>,
    committer: Mutex<Option<JoinHandle<()>>>,
    ids: Arc<QueueIdGenerator>,
    schedule: Mutex<Schedule>,
    count: AtomicUsize,
    /// Body bytes of the messages in the spool.
    bytes: AtomicU64,
    path: PathBuf,
    min_free_space: u64,
    space: Mutex<Option<(Instant, bool)>>,
    /// `incoming/`: scratch files of bodies on their way in.
    scratches: ScratchDir,
}

impl SledSpool {
    /// Opens (creating if needed) and recovers the spool: every stored envelope whose body is
    /// intact is kept; bodies nothing refers to are deleted.
    pub fn open(cfg: &SpoolConfig) -> Result<Arc<SledSpool>, SpoolError> {
        let index_dir = cfg.path.join("index");
        let bodies_dir = cfg.path.join("bodies");
        fs::create_dir_all(&index_dir)?;
        let scratches = ScratchDir::open(&cfg.path.join("incoming"))?;
        let db = open_index(&index_dir, cfg.cache_capacity)?;
        let messages = db.open_tree("messages")?;
        let meta = db.open_tree("meta")?;
        let answers = db.open_tree("answers")?;
        let policies = db.open_tree("mta_sts_policies")?;
        let tls_reports = db.open_tree("tls_reports")?;
        let tls_counts = db.open_tree("tls_counts")?;

        // Recovery streams over the index and decodes only what it needs, so a spool of a
        // million deferred messages does not pass through memory all at once.
        let mut refs: HashMap<u64, usize> = HashMap::new();
        let mut high_water = meta.get(HIGH_WATER_KEY)?.and_then(|v| v.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
        let bodies_existing = BodyFiles::scan(&bodies_dir);
        let (mut recovered, mut recovered_bytes) = (0usize, 0u64);
        let mut torn = Vec::new();
        let mut schedule = Schedule::new();
        for item in messages.scan_prefix([ENVELOPE]) {
            let (key, value) = item?;
            let view: IndexView = match serde_json::from_slice(&value) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(key = %String::from_utf8_lossy(&key), error = %e, "undecodable envelope left in the spool index");
                    continue;
                }
            };
            let id = queue_id::decode(&view.queue_id);
            high_water = high_water.max(id.unwrap_or(0));
            match view.body.filter(|b| bodies_existing.len_of(b.segment).is_some_and(|len| b.offset + b.len <= len)) {
                Some(body) => {
                    *refs.entry(body.segment).or_insert(0) += 1;
                    recovered += 1;
                    recovered_bytes += body.len;
                    match (view.next_due(), id) {
                        (Some(due), Some(id)) => {
                            schedule.insert((due, id));
                        }
                        (Some(_), None) => {
                            tracing::error!(queue_id = %view.queue_id, "queued message with an invalid queue id is not scheduled")
                        }
                        (None, _) => {}
                    }
                }
                None => torn.push(view.queue_id),
            }
        }
        for queue_id in torn {
            // Only a message whose commit never completed (never acknowledged) can get here.
            tracing::warn!(queue_id = %queue_id, "dropping index entry without a complete body");
            messages.remove(envelope_key(&queue_id))?;
        }
        for key in messages.scan_prefix([LEGACY_SCHEDULE]).keys() {
            messages.remove(key?)?;
        }
        release_free_heap();
        let (segments, _) = Segments::open(&bodies_dir, cfg.segment_size, refs)?;
        let ids = Arc::new(QueueIdGenerator::new(high_water));

        // Files created by this open (sled's, the first segment) must survive power loss too.
        let index_file = File::open(index_dir.join("db"))?;
        sync_dir(&cfg.path)?;
        sync_dir(&index_dir)?;
        sync_dir(&bodies_dir)?;

        let commits = Arc::new(CommitQueue::new(cfg.commit_window.0));
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
            answers,
            policies,
            tls_reports,
            tls_counts,
            segments,
            commits,
            committer: Mutex::new(Some(committer)),
            ids,
            schedule: Mutex::new(schedule),
            count: AtomicUsize::new(recovered),
            bytes: AtomicU64::new(recovered_bytes),
            path: cfg.path.clone(),
            min_free_space: cfg.min_free_space,
            space: Mutex::new(None),
            scratches,
        }))
    }

    /// Writes new messages' bodies, then their envelopes, then the updates, then the removals,
    /// in that order (a crash keeps a prefix of them: a bounce is never lost while its cause is
    /// marked failed), then asks for one commit covering all of it.
    #[allow(clippy::type_complexity)]
    fn apply_parts(
        &self,
        stores: Vec<(Envelope, &[&[u8]], Option<&Scratch>)>,
        updates: &[Envelope],
        removals: &[String],
    ) -> Result<Durable, SpoolError> {
        if self.commits.is_poisoned() {
            return Err(SpoolError::Poisoned);
        }
        let mut request = Request::default();
        let mut appended_segments = Vec::new();
        let mut new = Vec::with_capacity(stores.len());
        for (mut envelope, parts, tail) in stores {
            let prepared = id_value(&envelope.queue_id).and_then(|id| self.segments.append(parts, tail).map(|a| (id, a)));
            let (id, appended) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    for seg in appended_segments {
                        self.segments.release(seg);
                    }
                    return Err(e);
                }
            };
            appended_segments.push(appended.body.segment);
            envelope.body = Some(appended.body);
            request.segments.push((appended.body.segment, appended.file));
            request.new_segment |= appended.created;
            request.garbage.extend(appended.garbage);
            new.push((id, envelope));
        }
        // Everything that can be refused is checked before the index changes, so a change is
        // either not written at all or (short of an I/O failure) written whole.
        let prepared = (|| {
            let new = new.iter().map(|(id, e)| Ok((*id, e, encode(e)?))).collect::<Result<Vec<_>, SpoolError>>()?;
            let updates = updates
                .iter()
                .map(|e| Ok((id_value(&e.queue_id)?, e, encode(e)?, self.view(&e.queue_id)?)))
                .collect::<Result<Vec<_>, SpoolError>>()?;
            let removals = removals.iter().map(|q| Ok((id_value(q)?, q, self.view(q)?))).collect::<Result<Vec<_>, SpoolError>>()?;
            Ok::<_, SpoolError>((new, updates, removals))
        })();
        let (new, updates, removals) = match prepared {
            Ok(p) => p,
            Err(e) => {
                for seg in appended_segments {
                    self.segments.release(seg);
                }
                return Err(e);
            }
        };
        let added = new.len();
        let added_bytes: u64 = new.iter().map(|(_, e, _)| e.body.map_or(0, |b| b.len)).sum();
        let removed = removals.len();
        let removed_bytes: u64 = removals.iter().map(|(_, _, old)| old.body.map_or(0, |b| b.len)).sum();
        let released: Vec<u64> = removals.iter().filter_map(|(_, _, old)| old.body.map(|b| b.segment)).collect();
        let written = (|| {
            for (id, envelope, bytes) in new {
                self.messages.insert(envelope_key(&envelope.queue_id), bytes)?;
                if let Some(due) = envelope.next_due() {
                    self.schedule.lock().expect("schedule lock").insert((due, id));
                }
            }
            for (id, envelope, bytes, old) in updates {
                self.messages.insert(envelope_key(&envelope.queue_id), bytes)?;
                let mut schedule = self.schedule.lock().expect("schedule lock");
                if let Some(due) = old.next_due() {
                    schedule.remove(&(due, id));
                }
                if let Some(due) = envelope.next_due() {
                    schedule.insert((due, id));
                }
            }
            for (id, queue_id, old) in removals {
                if let Some(due) = old.next_due() {
                    self.schedule.lock().expect("schedule lock").remove(&(due, id));
                }
                self.messages.remove(envelope_key(queue_id))?;
            }
            Ok::<(), sled::Error>(())
        })();
        if let Err(e) = written {
            // The index refused a write part way: it may now hold part of this change, which
            // must not become durable as if it were whole.
            self.commits.poison();
            tracing::error!(error = %e, "spool index write failed: refusing mail until the spool is reopened (restart sluice)");
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

    /// What an index change needs of a stored envelope: its body and when it is due.
    fn view(&self, queue_id: &str) -> Result<IndexView, SpoolError> {
        let value = self.messages.get(envelope_key(queue_id))?.ok_or(SpoolError::NotFound)?;
        serde_json::from_slice(&value).map_err(|e| SpoolError::Corrupt(e.to_string()))
    }

    /// Commits (rounds of fsyncs) made since the spool was opened.
    pub fn commits(&self) -> u64 {
        self.commits.commits()
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

impl SpoolRead for SledSpool {
    fn get(&self, queue_id: &str) -> Result<Envelope, SpoolError> {
        get_envelope(&self.messages, queue_id)
    }

    fn read_body(&self, envelope: &Envelope) -> Result<Vec<u8>, SpoolError> {
        let body = envelope.body.ok_or_else(|| SpoolError::Corrupt("envelope without body".into()))?;
        self.segments.read(&body)
    }

    fn scan(&self) -> Box<dyn Iterator<Item = Result<Envelope, SpoolError>> + '_> {
        scan_envelopes(&self.messages)
    }
}

/// One envelope from the `messages` tree (the spool's, or a snapshot's copy of it).
pub(super) fn get_envelope(messages: &sled::Tree, queue_id: &str) -> Result<Envelope, SpoolError> {
    let value = messages.get(envelope_key(queue_id))?.ok_or(SpoolError::NotFound)?;
    serde_json::from_slice(&value).map_err(|e| SpoolError::Corrupt(e.to_string()))
}

/// Every envelope of the `messages` tree, decoded one at a time.
pub(super) fn scan_envelopes(messages: &sled::Tree) -> Box<dyn Iterator<Item = Result<Envelope, SpoolError>> + '_> {
    Box::new(messages.scan_prefix([ENVELOPE]).map(|item| {
        let (_, value) = item?;
        serde_json::from_slice(&value).map_err(|e| SpoolError::Corrupt(e.to_string()))
    }))
}

impl SledSpool {
    fn shelf(&self, shelf: Shelf) -> &sled::Tree {
        match shelf {
            Shelf::Answers => &self.answers,
            Shelf::Policies => &self.policies,
            Shelf::TlsReports => &self.tls_reports,
            Shelf::TlsCounts => &self.tls_counts,
        }
    }
}

impl Spool for SledSpool {
    fn new_queue_id(&self) -> String {
        self.ids.next().1
    }

    fn store(&self, envelope: Envelope, body_parts: &[&[u8]]) -> Result<Durable, SpoolError> {
        self.apply_parts(vec![(envelope, body_parts, None)], &[], &[])
    }

    fn store_with_tail(&self, envelope: Envelope, body_parts: &[&[u8]], tail: &Scratch) -> Result<Durable, SpoolError> {
        self.apply_parts(vec![(envelope, body_parts, Some(tail))], &[], &[])
    }

    fn scratch(&self) -> Result<Scratch, SpoolError> {
        Ok(self.scratches.create()?)
    }

    fn apply(&self, changes: Changes) -> Result<Durable, SpoolError> {
        let stores = changes.store.iter().map(|(e, b)| (e.clone(), [b.as_slice()])).collect::<Vec<_>>();
        let stores = stores.iter().map(|(e, b)| (e.clone(), &b[..], None)).collect();
        self.apply_parts(stores, &changes.update, &changes.remove)
    }

    fn remember(&self, shelf: Shelf, key: &str, expires: u64, value: &[u8]) -> Result<Durable, SpoolError> {
        if self.commits.is_poisoned() {
            return Err(SpoolError::Poisoned);
        }
        let mut record = expires.to_be_bytes().to_vec();
        record.extend_from_slice(value);
        self.shelf(shelf).insert(key.as_bytes(), record)?;
        Ok(self.commits.request(Request::default()))
    }

    fn recall(&self, shelf: Shelf, key: &str, now: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        let Some(value) = self.shelf(shelf).get(key.as_bytes())? else { return Ok(None) };
        let expires = value.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
        Ok((expires > now).then(|| value[8..].to_vec()))
    }

    fn shelved(&self, shelf: Shelf, now: u64) -> Result<Vec<(String, Vec<u8>, u64)>, SpoolError> {
        let mut kept = Vec::new();
        for item in self.shelf(shelf).iter() {
            let (key, value) = item?;
            let expires = value.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
            if expires > now {
                kept.push((String::from_utf8_lossy(&key).into_owned(), value[8..].to_vec(), expires));
            }
        }
        Ok(kept)
    }

    fn forget(&self, shelf: Shelf, key: &str) -> Result<(), SpoolError> {
        self.shelf(shelf).remove(key.as_bytes())?;
        Ok(())
    }

    fn forget_expired(&self, shelf: Shelf, now: u64) -> Result<usize, SpoolError> {
        let mut gone = 0;
        let tree = self.shelf(shelf);
        for item in tree.iter() {
            let (key, value) = item?;
            let expires = value.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
            if expires <= now {
                // Not made durable by itself: a forgotten record that comes back after a crash
                // is expired and forgotten again.
                tree.remove(key)?;
                gone += 1;
            }
        }
        Ok(gone)
    }

    fn due(&self, now: u64, limit: usize) -> Result<Vec<String>, SpoolError> {
        let schedule = self.schedule.lock().expect("schedule lock");
        Ok(schedule.range(..=(now, u64::MAX)).take(limit).map(|&(_, id)| queue_id::encode(id)).collect())
    }

    fn upcoming(&self, limit: usize) -> Result<Vec<(u64, String)>, SpoolError> {
        let schedule = self.schedule.lock().expect("schedule lock");
        Ok(schedule.iter().take(limit).map(|&(due, id)| (due, queue_id::encode(id))).collect())
    }

    fn next_due(&self) -> Result<Option<u64>, SpoolError> {
        Ok(self.schedule.lock().expect("schedule lock").first().map(|&(due, _)| due))
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

/// The part of an envelope recovery and index changes need; serde skips the rest without
/// allocating it.
#[derive(serde::Deserialize)]
struct IndexView {
    queue_id: String,
    body: Option<BodyRef>,
    arrival: u64,
    recipients: Vec<RecoveryRecipient>,
    #[serde(default)]
    held: bool,
}

#[derive(serde::Deserialize)]
struct RecoveryRecipient {
    state: RecipientState,
    next_attempt: Option<u64>,
}

impl IndexView {
    /// As [`Envelope::next_due`].
    fn next_due(&self) -> Option<u64> {
        if self.held {
            return None;
        }
        self.recipients.iter().filter(|r| r.state == RecipientState::Queued).map(|r| r.next_attempt.unwrap_or(self.arrival)).min()
    }
}

/// Hands heap freed after recovery back to the kernel: glibc keeps it otherwise, and a large
/// recovered spool would leave the resident size far above what is used. This matters where
/// glibc's malloc is the allocator (the library in tests, embedders); the `sluice` binary uses
/// mimalloc, which returns freed pages by itself, and there this only trims C allocations.
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

fn encode(envelope: &Envelope) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(envelope).map_err(|e| SpoolError::Io(e.to_string()))
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

/// sled writes nodes larger than a quarter segment to `blobs/` and never fsyncs them. A blob
/// listed and then gone (sled deletes one once the node it held is superseded, on its own
/// threads, at any moment) needs no sync: what replaced it is in `db` or in a newer blob. (Taken
/// for a failed fsync, it poisoned the spool under load with envelopes of 100 recipients.)
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
            match File::open(&path) {
                Ok(file) => file.sync_data()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
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
