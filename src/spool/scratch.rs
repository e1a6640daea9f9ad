//! Scratch files for bodies on their way in: intake keeps the first part of a message in
//! memory and appends the rest here, so a 50 MB message costs a session a bounded buffer, not
//! 50 MB of RAM. A scratch file lives in the spool's `incoming/` directory (the same file
//! system as the segments) and is unlinked the moment it is made: a session that dies, or a
//! daemon that crashes mid-body, leaves nothing behind. Nothing here is fsynced: the bytes
//! become durable when the body is copied into a segment, which the commit syncs before the 250.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The part of a body that did not stay in memory.
pub struct Scratch {
    file: File,
    len: u64,
    /// Of the bytes appended, so the copy into a segment need not read them back.
    crc: crc32fast::Hasher,
}

impl Scratch {
    /// Appends bytes (blocking: call it off the async workers).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn crc(&self) -> &crc32fast::Hasher {
        &self.crc
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Reads up to `buf.len()` bytes at `offset` (blocking).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }
}

/// Makes scratch files in one directory.
pub(super) struct ScratchDir {
    dir: PathBuf,
    next: AtomicU64,
}

impl ScratchDir {
    /// Opens (creating) the directory and deletes what an earlier run left there: a file
    /// whose unlink did not happen before a crash.
    pub fn open(dir: &Path) -> io::Result<ScratchDir> {
        fs::create_dir_all(dir)?;
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a leftover scratch file");
            }
        }
        Ok(ScratchDir { dir: dir.to_path_buf(), next: AtomicU64::new(0) })
    }

    pub fn create(&self) -> io::Result<Scratch> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}.{n}", std::process::id()));
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        fs::remove_file(&path)?;
        Ok(Scratch { file, len: 0, crc: crc32fast::Hasher::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_file_has_no_name_and_reads_back_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        let incoming = dir.path().join("incoming");
        let scratches = ScratchDir::open(&incoming).unwrap();
        let mut s = scratches.create().unwrap();
        s.append(b"hello ").unwrap();
        s.append(b"world").unwrap();
        assert_eq!(s.len(), 11);
        assert_eq!(fs::read_dir(&incoming).unwrap().count(), 0, "unlinked at once");
        let mut buf = [0u8; 5];
        assert_eq!(s.read_at(&mut buf, 6).unwrap(), 5);
        assert_eq!(&buf, b"world");
    }

    #[test]
    fn leftovers_of_a_crash_are_deleted_when_the_directory_opens() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("incoming")).unwrap();
        fs::write(dir.path().join("incoming/123.0"), b"half a body").unwrap();
        ScratchDir::open(&dir.path().join("incoming")).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("incoming")).unwrap().count(), 0);
    }
}
