//! Group commit: one committer thread makes many writers' data durable with one round of
//! fsyncs.
//!
//! A writer finishes its writes, then registers with [`CommitQueue::request`]. The committer
//! takes every registration made so far, then syncs. Because registration happens after the
//! writes, every write a waiter depends on finished before the sync that resolves it started.
//! A failed sync poisons the queue: that batch and every later request fail, and nothing is
//! retried, since after a failed fsync the kernel may have dropped the dirty pages.
//!
//! The commit window: a round of fsyncs costs about the same CPU and disk work for one message
//! as for fifty, and on a fast disk the committer would otherwise start a new round for every
//! writer or two. When the last commit served several writers (so more are on their way), the
//! next one starts `window` after the last one started, or as soon as as many writers wait as
//! the last one served (with a fixed set of busy writers, all of them are back). A lone writer
//! (the last commit served one) is never held back.
//!
//! Segments emptied by a commit are deleted by a thread of their own, a few MiB at a time,
//! after the waiters have their replies (see [`shrink_then_remove`]).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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
    /// The committer sleeps waiting for a first writer: a request must wake it. Requests made
    /// while it syncs need no wake-up (and cost no futex call).
    idle: bool,
    /// The committer holds the window open until this many writers wait (as many as the last
    /// commit served: when they are all back, nobody else is coming); the request that makes
    /// the count wakes it. 0: not waiting.
    enough: usize,
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
    window: Duration,
    commits: AtomicU64,
}

impl CommitQueue {
    pub fn new(window: Duration) -> CommitQueue {
        CommitQueue { window, ..CommitQueue::default() }
    }

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
        let wake = std::mem::take(&mut p.idle) || (p.enough > 0 && p.waiters.len() >= p.enough);
        if wake {
            p.enough = 0;
        }
        drop(p);
        if wake {
            self.wake.notify_one();
        }
        Durable(rx)
    }

    /// Fails this and every later request: something the next commit would cover is broken.
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Rounds of fsyncs made so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    pub fn shutdown(&self) {
        self.pending.lock().expect("commit lock").shutdown = true;
        self.wake.notify_one();
    }

    /// The committer loop; `sync` makes a batch durable. Returns when shut down and drained.
    pub fn run(&self, sync: impl FnMut(&Batch) -> io::Result<()>) {
        // Unlinking a full segment frees its blocks, milliseconds on ext4 that neither the
        // writers nor the next commit should wait for: a thread of its own does it. A segment it
        // had not deleted at a crash holds nothing referenced, and the next open deletes it.
        let (unlink, paths) = mpsc::channel::<Vec<PathBuf>>();
        // Set once the committer is done: what is left is unlinked in one go, so that a backlog
        // of emptied segments does not hold up the exit.
        let hurry = Arc::new(AtomicBool::new(false));
        let unlinker = {
            let hurry = hurry.clone();
            std::thread::Builder::new().name("spool-unlink".into()).spawn(move || {
                // Between steps: a pause for the commits, unless it is time to hurry.
                let between_steps = || {
                    std::thread::sleep(SHRINK_PAUSE);
                    !hurry.load(Ordering::Relaxed)
                };
                for path in paths.iter().flatten() {
                    if let Err(e) = shrink_then_remove(&path, between_steps) {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete spool segment");
                    }
                }
            })
        };
        self.commit_loop(sync, &unlink);
        hurry.store(true, Ordering::Relaxed);
        drop(unlink);
        match unlinker {
            Ok(thread) => {
                let _ = thread.join();
            }
            Err(e) => tracing::warn!(error = %e, "could not start the segment unlinker: emptied segments are deleted at the next start"),
        }
    }

    fn commit_loop(&self, mut sync: impl FnMut(&Batch) -> io::Result<()>, unlink: &mpsc::Sender<Vec<PathBuf>>) {
        let mut last: Option<(Instant, usize)> = None;
        loop {
            let (waiters, batch) = {
                let mut p = self.pending.lock().expect("commit lock");
                while p.waiters.is_empty() && !p.shutdown {
                    p.idle = true;
                    p = self.wake.wait(p).expect("commit lock");
                }
                p.idle = false;
                if p.waiters.is_empty() {
                    return;
                }
                if let Some((last_start, served)) = last
                    && served > 1
                {
                    let opens = last_start + self.window;
                    while !p.shutdown && p.waiters.len() < served {
                        let now = Instant::now();
                        if now >= opens {
                            break;
                        }
                        p.enough = served;
                        p = self.wake.wait_timeout(p, opens - now).expect("commit lock").0;
                    }
                    p.enough = 0;
                }
                (std::mem::take(&mut p.waiters), std::mem::take(&mut p.batch))
            };
            let started = Instant::now();
            last = Some((started, waiters.len()));
            let result = if self.is_poisoned() { Err(SpoolError::Poisoned) } else { sync(&batch).map_err(|_| SpoolError::Poisoned) };
            self.commits.fetch_add(1, Ordering::Relaxed);
            metrics::histogram!(m::SPOOL_FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::histogram!(m::SPOOL_MESSAGES_PER_FSYNC).record(waiters.len() as f64);
            if result.is_err() {
                self.poisoned.store(true, Ordering::Release);
                tracing::error!("spool fsync failed: refusing mail until the spool is reopened (restart sluice)");
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
            if result.is_ok() && !batch.garbage.is_empty() {
                let _ = unlink.send(batch.garbage);
            }
        }
    }
}

/// How much of a segment one truncation frees. On a file system mounted with `discard`, freeing
/// blocks sends the disk a discard for them (64 MiB took 10-15 ms on the virtio disk here), and
/// the flush of every fdatasync meanwhile waits behind it.
const SHRINK_STEP: u64 = 4 << 20;
const SHRINK_PAUSE: Duration = Duration::from_millis(5);

/// Deletes a segment a step at a time, so that no single discard holds up the commits.
/// `between_steps` runs before each truncation; once it answers false, the rest goes at once.
fn shrink_then_remove(path: &std::path::Path, mut between_steps: impl FnMut() -> bool) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > SHRINK_STEP && between_steps() {
        len -= SHRINK_STEP;
        file.set_len(len)?;
    }
    drop(file);
    std::fs::remove_file(path)
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

    /// A first commit serving `first` writers, then `later` requests `gap` apart: how many
    /// syncs in all, and how long the later ones took from the first of them.
    fn spaced_requests(window: Duration, first: usize, later: usize, gap: Duration) -> (usize, Duration) {
        let q = Arc::new(CommitQueue::new(window));
        let initial: Vec<Durable> = (0..first).map(|_| q.request(Request::default())).collect();
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let committer = {
            let (q, syncs) = (q.clone(), syncs.clone());
            std::thread::spawn(move || {
                q.run(|_| {
                    syncs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
            })
        };
        for d in initial {
            d.wait_blocking().unwrap();
        }
        let started = Instant::now();
        let later: Vec<Durable> = (0..later)
            .map(|i| {
                if i > 0 {
                    std::thread::sleep(gap);
                }
                q.request(Request::default())
            })
            .collect();
        for d in later {
            d.wait_blocking().unwrap();
        }
        let took = started.elapsed();
        q.shutdown();
        committer.join().unwrap();
        (syncs.load(Ordering::SeqCst), took)
    }

    #[test]
    fn when_every_busy_writer_is_back_the_commit_starts_without_waiting_out_the_window() {
        let (syncs, took) = spaced_requests(Duration::from_secs(5), 3, 3, Duration::from_millis(5));
        assert_eq!(syncs, 2, "one commit for the three");
        assert!(took < Duration::from_secs(4), "waited out the window: {took:?}");
    }

    #[test]
    fn while_fewer_writers_are_back_the_commit_waits_for_the_window_and_covers_them_all() {
        let window = Duration::from_millis(300);
        let (syncs, took) = spaced_requests(window, 3, 2, Duration::from_millis(5));
        assert_eq!(syncs, 2, "one commit for the two");
        assert!(took >= window - Duration::from_millis(20), "did not wait for a third writer: {took:?}");
    }

    #[test]
    fn without_a_window_each_spaced_request_gets_a_commit_of_its_own() {
        // 1 + 5 unless the committer thread was kept off the CPU for 20 ms.
        assert!(spaced_requests(Duration::ZERO, 2, 5, Duration::from_millis(20)).0 >= 4);
    }

    #[test]
    fn a_lone_writer_is_never_held_back_by_the_window() {
        let q = Arc::new(CommitQueue::new(Duration::from_secs(30)));
        let committer = {
            let q = q.clone();
            std::thread::spawn(move || q.run(|_| Ok(())))
        };
        let started = Instant::now();
        for _ in 0..3 {
            q.request(Request::default()).wait_blocking().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "a writer alone waited for the window");
        q.shutdown();
        committer.join().unwrap();
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

    /// A sparse segment of `len` bytes.
    fn segment_of(dir: &std::path::Path, len: u64) -> PathBuf {
        let path = dir.join("big.seg");
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        path
    }

    #[test]
    fn a_segment_is_shrunk_one_step_at_a_time_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_of(dir.path(), 2 * SHRINK_STEP + 1);
        let mut seen = Vec::new();
        shrink_then_remove(&path, || {
            seen.push(std::fs::metadata(&path).unwrap().len());
            true
        })
        .unwrap();
        assert_eq!(seen, [2 * SHRINK_STEP + 1, SHRINK_STEP + 1], "each step frees SHRINK_STEP bytes");
        assert!(!path.exists());
        assert!(shrink_then_remove(&path, || true).is_err(), "a missing segment is reported");
    }

    #[test]
    fn in_a_hurry_the_rest_of_a_segment_goes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_of(dir.path(), 3 * SHRINK_STEP);
        let mut steps = 0;
        shrink_then_remove(&path, || {
            steps += 1;
            steps < 2
        })
        .unwrap();
        assert_eq!(steps, 2, "one truncation, then the answer to hurry");
        assert!(!path.exists());
    }

    /// One commit, shut down after it, of a request whose removal makes `path` garbage: the
    /// writer's result, once `sync` has answered.
    fn commit_with_garbage(path: &std::path::Path, sync: impl FnMut(&Batch) -> io::Result<()>) -> Result<(), SpoolError> {
        std::fs::write(path, b"x").unwrap();
        let q = CommitQueue::default();
        let d = q.request(Request { garbage: vec![path.to_path_buf()], ..Request::default() });
        q.shutdown();
        q.run(sync);
        d.wait_blocking()
    }

    #[test]
    fn garbage_is_deleted_only_after_a_successful_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.seg");
        let result = commit_with_garbage(&path, |batch| {
            assert!(batch.garbage[0].exists(), "still there while syncing");
            Ok(())
        });
        assert_eq!(result, Ok(()));
        assert!(!path.exists());
    }

    #[test]
    fn garbage_is_kept_when_the_commit_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.seg");
        assert_eq!(commit_with_garbage(&path, |_| Err(io::Error::other("EIO"))), Err(SpoolError::Poisoned));
        assert!(path.exists(), "its removal was never made durable");
    }
}
