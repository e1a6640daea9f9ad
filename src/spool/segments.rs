//! Append-only body segment files.
//!
//! Bodies do not go into sled: sled writes large nodes to blob files it never fsyncs, and its
//! `flush()` is only `sync_file_range`. Here a writer reserves a range of the current segment
//! under a short lock, writes its body with `pwrite` outside the lock, and the committer
//! fdatasyncs every segment written since its last commit: one fsync covers many bodies.
//! A segment is deleted once no stored message refers to it (and it is no longer current).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{BodyRef, Scratch, SpoolError};

pub(super) struct Segments {
    dir: PathBuf,
    max_size: u64,
    state: Mutex<State>,
}

struct State {
    current: Arc<File>,
    current_id: u64,
    current_len: u64,
    /// Live bodies per segment.
    refs: HashMap<u64, usize>,
    /// Open handles for reading, so a delivery does not open and close a file per message.
    readers: HashMap<u64, Arc<File>>,
}

/// What a writer must hand to the committer after an append.
pub(super) struct Appended {
    pub body: BodyRef,
    pub file: Arc<File>,
    /// A new segment file was created: its directory entry needs an fsync too.
    pub created: bool,
    /// The segment closed by this append, if nothing refers to it any more.
    pub garbage: Option<PathBuf>,
}

/// Copies a scratch file's bytes into the segment at `at`: in the kernel (copy_file_range,
/// the bytes never come up to us; their CRC was taken as they were appended), or through a
/// small buffer where the file system cannot.
fn copy_tail(tail: &Scratch, to: &File, at: u64, crc: &mut crc32fast::Hasher) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (mut from, mut out) = (0i64, at as i64);
    while (from as u64) < tail.len() {
        let left = (tail.len() - from as u64).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for as long as the borrows last; the offsets are
        // ours and copy_file_range only reads and advances them.
        let n = unsafe { libc::copy_file_range(tail.file().as_raw_fd(), &mut from, to.as_raw_fd(), &mut out, left, 0) };
        if n > 0 {
            continue;
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the scratch file is shorter than written"));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // Not here: the whole tail again by hand (what was copied is simply overwritten).
            Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => return copy_by_hand(tail, to, at, crc),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
    crc.combine(tail.crc());
    Ok(())
}

/// `copy_tail` through a small buffer, hashing as it goes.
fn copy_by_hand(tail: &Scratch, to: &File, mut at: u64, crc: &mut crc32fast::Hasher) -> std::io::Result<()> {
    let mut buf = vec![0u8; (64 * 1024).min(tail.len() as usize)];
    let mut from = 0;
    while from < tail.len() {
        let n = tail.read_at(&mut buf, from)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the scratch file is shorter than written"));
        }
        to.write_all_at(&buf[..n], at)?;
        crc.update(&buf[..n]);
        from += n as u64;
        at += n as u64;
    }
    Ok(())
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:012}.seg"))
}

impl Segments {
    /// Opens the segment directory. `refs` counts the bodies the recovered index points to;
    /// every other segment file holds nothing anyone acknowledged, and is deleted.
    pub fn open(dir: &Path, max_size: u64, refs: HashMap<u64, usize>) -> Result<(Segments, u64), SpoolError> {
        fs::create_dir_all(dir)?;
        let mut highest = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            highest = highest.max(id);
            if !refs.contains_key(&id) {
                fs::remove_file(entry.path())?;
            }
        }
        // Never append to a segment from an earlier run: its tail may be torn.
        let current_id = highest + 1;
        let current = create(dir, current_id)?;
        let current = Arc::new(current);
        let readers = HashMap::from([(current_id, current.clone())]);
        let state = State { current, current_id, current_len: 0, refs, readers };
        Ok((Segments { dir: dir.to_path_buf(), max_size, state: Mutex::new(state) }, current_id))
    }

    /// Appends one body made of `parts`.
    pub fn append(&self, parts: &[&[u8]], tail: Option<&Scratch>) -> Result<Appended, SpoolError> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum::<u64>() + tail.map_or(0, Scratch::len);
        let (file, id, offset, created, garbage) = {
            let mut s = self.state.lock().expect("segment lock");
            let (mut created, mut garbage) = (false, None);
            if s.current_len > 0 && s.current_len + total > self.max_size {
                let closed = s.current_id;
                if !s.refs.contains_key(&closed) {
                    garbage = Some(segment_path(&self.dir, closed));
                    s.readers.remove(&closed);
                }
                let id = s.current_id + 1;
                s.current = Arc::new(create(&self.dir, id)?);
                s.current_id = id;
                let current = s.current.clone();
                s.readers.insert(id, current);
                s.current_len = 0;
                created = true;
            }
            let offset = s.current_len;
            s.current_len += total;
            let id = s.current_id;
            *s.refs.entry(id).or_insert(0) += 1;
            (s.current.clone(), id, offset, created, garbage)
        };
        let mut crc = crc32fast::Hasher::new();
        let mut at = offset;
        let written = (|| {
            for part in parts {
                file.write_all_at(part, at)?;
                crc.update(part);
                at += part.len() as u64;
            }
            if let Some(tail) = tail {
                copy_tail(tail, &file, at, &mut crc)?;
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = written {
            // The reserved range stays unused; the reference is dropped.
            self.release(id);
            return Err(e.into());
        }
        Ok(Appended { body: BodyRef { segment: id, offset, len: total, crc32: crc.finalize() }, file, created, garbage })
    }

    /// Drops one reference; returns the segment's path when nothing refers to it any more and
    /// it is not the one being written, so the committer can delete it after the next commit.
    pub fn release(&self, id: u64) -> Option<PathBuf> {
        let mut s = self.state.lock().expect("segment lock");
        let count = s.refs.get_mut(&id)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        s.refs.remove(&id);
        if id == s.current_id {
            return None;
        }
        s.readers.remove(&id);
        Some(segment_path(&self.dir, id))
    }

    fn reader(&self, id: u64) -> Result<Arc<File>, SpoolError> {
        let mut s = self.state.lock().expect("segment lock");
        if let Some(f) = s.readers.get(&id) {
            return Ok(f.clone());
        }
        let f = Arc::new(File::open(segment_path(&self.dir, id))?);
        s.readers.insert(id, f.clone());
        Ok(f)
    }

    pub fn read(&self, body: &BodyRef) -> Result<Vec<u8>, SpoolError> {
        read_at(&*self.reader(body.segment)?, body)
    }
}

/// A body from the segment directory `dir`, its file opened read-only for this read alone.
pub fn read_from(dir: &Path, body: &BodyRef) -> Result<Vec<u8>, SpoolError> {
    read_at(&File::open(segment_path(dir, body.segment))?, body)
}

fn read_at(file: &File, body: &BodyRef) -> Result<Vec<u8>, SpoolError> {
    let len = usize::try_from(body.len).map_err(|_| SpoolError::Corrupt("body length".into()))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, body.offset)?;
    if crc32fast::hash(&buf) != body.crc32 {
        return Err(SpoolError::Corrupt(format!("checksum mismatch in segment {}", body.segment)));
    }
    Ok(buf)
}

fn create(dir: &Path, id: u64) -> Result<File, SpoolError> {
    Ok(OpenOptions::new().read(true).write(true).create_new(true).open(segment_path(dir, id))?)
}

#[cfg(test)]
mod copy_tests {
    use super::*;

    #[test]
    fn both_copies_of_a_tail_write_the_same_bytes_and_crc() {
        let dir = tempfile::tempdir().unwrap();
        let scratches = super::super::scratch::ScratchDir::open(&dir.path().join("incoming")).unwrap();
        let mut tail = scratches.create().unwrap();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        tail.append(&bytes[..100_000]).unwrap();
        tail.append(&bytes[100_000..]).unwrap();
        let want = crc32fast::hash(&[&b"head"[..], &bytes].concat());
        for by_hand in [false, true] {
            let out = File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("seg")).unwrap();
            out.write_all_at(b"head", 0).unwrap();
            let mut crc = crc32fast::Hasher::new();
            crc.update(b"head");
            if by_hand { copy_by_hand(&tail, &out, 4, &mut crc) } else { copy_tail(&tail, &out, 4, &mut crc) }.unwrap();
            assert_eq!(crc.finalize(), want, "by hand: {by_hand}");
            assert!(std::fs::read(dir.path().join("seg")).unwrap()[4..] == bytes[..], "by hand: {by_hand}");
        }
    }
}
