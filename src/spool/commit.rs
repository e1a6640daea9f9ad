//! Group commit: one committer thread makes many writers' data durable with one round of
//! fsyncs.
//!
//! A writer finishes its writes, then registers with [`CommitQueue::request`]. The committer
//! takes every registration made so far, then syncs. Because registration happens after the
//! writes, every write a waiter depends on finished before the sync that resolves it started.
//! A failed sync poisons the queue: that batch and every later request fail, and nothing is
//! retried, since after a failed fsync the kernel may have dropped the dirty pages.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

use super::{Durable, SpoolError};
use crate::metrics as m;

/// What one commit must make durable besides the index.
#[derive(Default)]
pub(super) struct Batch {
    /// Segment files written since the last commit.
    pub segments: HashMap<u64, Arc<File>>,
    /// A segment file was created: the segment directory must be synced.
    pub new_segment: bool,
    /// Segment files to delete once this commit made their removal durable.
    pub garbage: Vec<PathBuf>,
}

#[derive(Default)]
struct Pending {
    waiters: Vec<oneshot::Sender<Result<(), SpoolError>>>,
    batch: Batch,
    shutdown: bool,
}

/// A registration: what the writer touched.
#[derive(Default)]
pub(super) struct Request {
    pub segments: Vec<(u64, Arc<File>)>,
    pub new_segment: bool,
    pub garbage: Vec<PathBuf>,
}

#[derive(Default)]
pub(super) struct CommitQueue {
    pending: Mutex<Pending>,
    wake: Condvar,
    poisoned: AtomicBool,
}

impl CommitQueue {
    pub fn request(&self, req: Request) -> Durable {
        let (tx, rx) = oneshot::channel();
        if self.is_poisoned() {
            let _ = tx.send(Err(SpoolError::Poisoned));
            return Durable(rx);
        }
        let mut p = self.pending.lock().expect("commit lock");
        p.batch.segments.extend(req.segments);
        p.batch.new_segment |= req.new_segment;
        p.batch.garbage.extend(req.garbage);
        p.waiters.push(tx);
        drop(p);
        self.wake.notify_one();
        Durable(rx)
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub fn shutdown(&self) {
        self.pending.lock().expect("commit lock").shutdown = true;
        self.wake.notify_one();
    }

    /// The committer loop; `sync` makes a batch durable. Returns when shut down and drained.
    pub fn run(&self, mut sync: impl FnMut(&Batch) -> io::Result<()>) {
        loop {
            let (waiters, batch) = {
                let mut p = self.pending.lock().expect("commit lock");
                while p.waiters.is_empty() && !p.shutdown {
                    p = self.wake.wait(p).expect("commit lock");
                }
                if p.waiters.is_empty() {
                    return;
                }
                (std::mem::take(&mut p.waiters), std::mem::take(&mut p.batch))
            };
            let started = Instant::now();
            let result = if self.is_poisoned() { Err(SpoolError::Poisoned) } else { sync(&batch).map_err(|_| SpoolError::Poisoned) };
            match &result {
                Ok(()) => {
                    for path in &batch.garbage {
                        if let Err(e) = std::fs::remove_file(path) {
                            tracing::warn!(path = %path.display(), error = %e, "could not delete spool segment");
                        }
                    }
                }
                Err(_) => {
                    self.poisoned.store(true, Ordering::Release);
                    tracing::error!("spool fsync failed: refusing mail until the spool is reopened (restart sluice)");
                }
            }
            metrics::histogram!(m::SPOOL_FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::histogram!(m::SPOOL_MESSAGES_PER_FSYNC).record(waiters.len() as f64);
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sync_serves_every_waiter_registered_before_it() {
        let q = Arc::new(CommitQueue::default());
        let durables: Vec<Durable> = (0..5).map(|_| q.request(Request::default())).collect();
        q.shutdown();
        let mut syncs = 0;
        q.run(|_| {
            syncs += 1;
            Ok(())
        });
        assert_eq!(syncs, 1);
        for d in durables {
            assert_eq!(d.wait_blocking(), Ok(()));
        }
    }

    #[test]
    fn a_failed_fsync_poisons_the_queue_and_is_never_retried() {
        let q = Arc::new(CommitQueue::default());
        let first = q.request(Request::default());
        q.shutdown();
        let mut calls = 0;
        q.run(|_| {
            calls += 1;
            Err(io::Error::other("EIO"))
        });
        assert_eq!(first.wait_blocking(), Err(SpoolError::Poisoned));
        assert!(q.is_poisoned());
        let later = q.request(Request::default());
        q.run(|_| {
            calls += 1;
            Ok(())
        });
        assert_eq!(later.wait_blocking(), Err(SpoolError::Poisoned));
        assert_eq!(calls, 1, "no sync after the failure");
    }

    #[test]
    fn garbage_is_deleted_only_after_a_successful_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.seg");
        std::fs::write(&path, b"x").unwrap();
        let q = CommitQueue::default();
        let d = q.request(Request { garbage: vec![path.clone()], ..Request::default() });
        q.shutdown();
        q.run(|batch| {
            assert!(batch.garbage[0].exists(), "still there while syncing");
            Ok(())
        });
        d.wait_blocking().unwrap();
        assert!(!path.exists());
    }
}
