//! A message body while it arrives, over SMTP (DATA or BDAT), the sendmail socket or the
//! maildrop. Its start stays in memory: the header section, which the accept path reads and
//! rewrites, and the first bytes after it. The rest goes to a scratch file in the spool as it
//! comes, written off the async workers, so a session holds a bounded buffer whatever the
//! message's size. What bodies keep in memory beyond a small share each is bounded over all
//! sessions by `limits.intake_memory`: past it, a body goes to its scratch file sooner, and
//! only a header section that cannot fit is refused (451 4.3.0, the client tries again).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::message::{HeaderEnd, header_end};
use crate::spool::{Scratch, Spool, SpoolError};

/// What every body may keep in memory without asking the budget: typical mail never asks.
pub const FREE_BYTES: usize = 64 * 1024;
/// What a body keeps in memory at most once its header section is complete.
pub const MEMORY_PER_MESSAGE: usize = 128 * 1024;
/// The scratch file is written in pieces of at least this much (a write is a trip to a
/// blocking thread).
const SPILL_BATCH: usize = 128 * 1024;
/// Room for a batch and the piece that completes it (pieces are about one read).
const PENDING_CAPACITY: usize = SPILL_BATCH + 128 * 1024;

/// Memory the bodies in flight take beyond their free share, over every session. The limit
/// is each session's config's (`limits.intake_memory`), so a reload changes it for new ones.
#[derive(Default)]
pub struct MemoryBudget {
    used: AtomicUsize,
}

impl MemoryBudget {
    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize, limit: usize) -> bool {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(n).filter(|&u| u <= limit)).is_ok()
    }

    /// `n` bytes of the budget (of `limit` in all) for something else held in memory while it
    /// arrives (an HTTP API request), given back when the charge is dropped; `None` when the
    /// budget does not have them.
    pub fn charge(self: &Arc<Self>, n: usize, limit: usize) -> Option<Charge> {
        self.try_take(n, limit).then(|| Charge { budget: self.clone(), bytes: n })
    }
}

/// Bytes one body holds of the budget, given back when the body is dropped.
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why a body cannot be taken.
#[derive(Debug)]
pub enum BodyError {
    /// The header section is longer than `limits.max_header_size`.
    HeaderTooBig { limit: usize },
    /// The header section needed memory the budget did not have.
    OverBudget,
    /// The scratch file could not be made or written (a full disk, most likely).
    Scratch(SpoolError),
}

/// A complete body: `head` in memory (the whole header section and maybe more), then the
/// scratch file's bytes, if any.
pub struct Body {
    pub head: Vec<u8>,
    pub tail: Option<Scratch>,
    _charge: Charge,
}

impl Body {
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.tail.as_ref().map_or(0, Scratch::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Collects a body as it arrives.
pub struct BodyBuffer {
    head: Vec<u8>,
    /// Where the header section ends in `head`, or where its scan resumes.
    headers: HeaderEnd,
    charge: Charge,
    tail: Option<Scratch>,
    /// Bytes on their way to the scratch file (once one is needed, all later bytes go there).
    spilling: bool,
    pending: Vec<u8>,
    /// A piece pushed and copied on, emptied, for the caller to fill again.
    spare: Vec<u8>,
    spool: Arc<dyn Spool>,
    memory_limit: usize,
    max_header: usize,
    error: Option<BodyError>,
}

/// What a body may hold: from the session's config.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `limits.intake_memory`: the budget's size.
    pub memory: usize,
    /// `limits.max_header_size`.
    pub max_header: usize,
}

impl BodyBuffer {
    pub fn new(spool: Arc<dyn Spool>, budget: Arc<MemoryBudget>, limits: BodyLimits) -> BodyBuffer {
        BodyBuffer {
            head: Vec::new(),
            headers: HeaderEnd::Open(0),
            charge: Charge { budget, bytes: 0 },
            tail: None,
            spilling: false,
            pending: Vec::new(),
            spare: Vec::new(),
            spool,
            memory_limit: limits.memory,
            max_header: limits.max_header,
            error: None,
        }
    }

    /// Takes the next bytes of the message. Errors are kept for [`BodyBuffer::finish`]: the
    /// client is still sending, and its reply comes after the end of the data.
    pub async fn push(&mut self, bytes: Vec<u8>) {
        if self.error.is_some() || bytes.is_empty() {
            return;
        }
        let mut rest = if self.spilling { bytes } else { self.keep_in_memory(bytes) };
        if rest.is_empty() || self.error.is_some() {
            return;
        }
        if let HeaderEnd::Open(_) = self.headers {
            // The header section must be in memory whole (the accept path rewrites it).
            self.error = Some(if self.head.len() >= self.max_header {
                BodyError::HeaderTooBig { limit: self.max_header }
            } else {
                BodyError::OverBudget
            });
            return;
        }
        self.spilling = true;
        if self.pending.capacity() == 0 {
            self.pending = Vec::with_capacity(PENDING_CAPACITY.max(rest.len()));
        }
        self.pending.extend_from_slice(&rest);
        rest.clear();
        self.spare = rest;
        if self.pending.len() >= SPILL_BATCH {
            self.spill().await;
        }
    }

    /// Appends what memory allows to `head`; returns the rest.
    fn keep_in_memory(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        let open = matches!(self.headers, HeaderEnd::Open(_));
        // While the header section is open it may grow to max_header (and one line more, to
        // tell that it was too long); after it, the body's start to MEMORY_PER_MESSAGE.
        let cap = if open { self.max_header.saturating_add(1).max(MEMORY_PER_MESSAGE) } else { MEMORY_PER_MESSAGE };
        let wanted = bytes.len().min(cap.saturating_sub(self.head.len()));
        let charged = self.charge.bytes;
        let needed = (self.head.len() + wanted).saturating_sub(FREE_BYTES).saturating_sub(charged);
        let kept = if needed == 0 || self.charge.budget.try_take(needed, self.memory_limit) {
            self.charge.bytes += needed;
            wanted
        } else {
            // The budget is spent: only what this body already holds of memory.
            (FREE_BYTES + charged).saturating_sub(self.head.len()).min(wanted)
        };
        if kept == 0 {
            return bytes; // All of it goes on: no copy.
        }
        let rest = bytes.split_off(kept);
        if self.head.is_empty() {
            self.head = bytes; // The usual case, a whole small message at once: no copy.
        } else {
            self.head.extend_from_slice(&bytes);
        }
        if let HeaderEnd::Open(from) = self.headers {
            self.headers = header_end(&self.head, from);
            let length = match self.headers {
                HeaderEnd::At(end) => end,
                HeaderEnd::Open(_) => self.head.len(),
            };
            if length > self.max_header {
                self.error = Some(BodyError::HeaderTooBig { limit: self.max_header });
            }
        }
        rest
    }

    /// Writes the pending bytes to the scratch file (making it first).
    async fn spill(&mut self) {
        let mut tail = match self.tail.take() {
            Some(t) => t,
            None => match self.spool.scratch() {
                Ok(t) => t,
                Err(e) => {
                    self.error = Some(BodyError::Scratch(e));
                    return;
                }
            },
        };
        // A write can wait on the disk; the async workers must not. The buffer comes back to
        // be filled again (a buffer freed on another thread is slow to be reused).
        let mut bytes = std::mem::take(&mut self.pending);
        let written = tokio::task::spawn_blocking(move || {
            let r = tail.append(&bytes);
            bytes.clear();
            (tail, bytes, r)
        })
        .await;
        match written {
            Ok((tail, bytes, Ok(()))) => {
                self.tail = Some(tail);
                self.pending = bytes;
            }
            Ok((_, _, Err(e))) => self.error = Some(BodyError::Scratch(e.into())),
            Err(e) => self.error = Some(BodyError::Scratch(SpoolError::Io(e.to_string()))),
        }
    }

    /// An empty buffer left from the last piece pushed (or a new one).
    pub fn take_spare(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.spare)
    }

    /// The body, or why it cannot be taken.
    pub async fn finish(mut self) -> Result<Body, BodyError> {
        if self.error.is_none() && !self.pending.is_empty() {
            self.spill().await;
        }
        // An over-long header section was caught as it arrived (`keep_in_memory`).
        if let Some(e) = self.error {
            return Err(e);
        }
        Ok(Body { head: self.head, tail: self.tail, _charge: self.charge })
    }
}

#[cfg(test)]
#[path = "body_tests.rs"]
mod tests;
