//! The accounting file: appended to, rotated by size, reopened when logrotate moved it.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where records go and when the file is rotated (from `accounting` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub path: PathBuf,
    /// The file is rotated before a record would take it past this many octets.
    pub max_size: u64,
    /// Rotated files kept (`path.1` the newest); 0 keeps none.
    pub keep: u32,
}

pub struct RotatingFile {
    settings: Settings,
    file: File,
    /// Whole lines not yet handed to the kernel, and how many records they are.
    pending: Vec<u8>,
    pending_records: u64,
    /// Octets in the current file (not counting `pending`).
    size: u64,
}

/// A write that failed, and how many records went with it (counted as dropped by the caller).
#[derive(Debug)]
pub struct WriteFailed {
    pub error: io::Error,
    pub lost: u64,
}

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Records are handed to the kernel in batches of about this many octets.
const BATCH: usize = 64 * 1024;

impl RotatingFile {
    pub fn open(settings: Settings) -> io::Result<RotatingFile> {
        let (file, size) = open_append(&settings.path)?;
        Ok(RotatingFile { settings, file, pending: Vec::with_capacity(BATCH), pending_records: 0, size })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Appends one line, rotating first when it would not fit (a line longer than
    /// `max_size` gets a file of its own rather than being lost).
    pub fn write(&mut self, line: &[u8]) -> Result<(), WriteFailed> {
        let held = self.size + self.pending.len() as u64;
        if held > 0 && held + line.len() as u64 > self.settings.max_size {
            self.rotate().map_err(|mut failed| {
                failed.lost += 1; // this line too
                failed
            })?;
        }
        self.pending.extend_from_slice(line);
        self.pending_records += 1;
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Hands what is pending to the kernel (records are not fsynced one by one: they describe
    /// mail whose own state is durable in the spool). When that fails (a full disk), the
    /// pending records are given up and counted, and a line written only in part is cut off
    /// again, so the file stays whole lines a reader can parse.
    pub fn flush(&mut self) -> Result<(), WriteFailed> {
        let mut written = 0;
        while written < self.pending.len() {
            match self.file.write(&self.pending[written..]) {
                Ok(0) => return Err(self.give_up(written, io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.give_up(written, e)),
            }
        }
        self.size += written as u64;
        self.pending.clear();
        self.pending_records = 0;
        Ok(())
    }

    /// The whole lines the kernel took stay; a line it took only in part is cut off (the cut
    /// is measured from the file's real end, as someone else may have appended or emptied it),
    /// and the records not written are counted lost.
    fn give_up(&mut self, written: usize, error: io::Error) -> WriteFailed {
        let whole = self.pending[..written].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let kept = self.pending[..whole].iter().filter(|&&b| b == b'\n').count() as u64;
        let lost = self.pending_records - kept;
        self.pending.clear();
        self.pending_records = 0;
        let torn = (written - whole) as u64;
        let end = self.file.metadata().map(|m| m.len()).unwrap_or(self.size + written as u64);
        self.size = end.saturating_sub(torn);
        if torn > 0 && self.file.set_len(self.size).is_err() {
            // Truncating needs no space, but if even that fails, the next record still starts
            // on a line of its own.
            self.pending.push(b'\n');
            self.size = end;
        }
        WriteFailed { error, lost }
    }

    /// What the old file could not take is reported, but the path is opened all the same (a
    /// full disk must not keep the stream on a file logrotate has moved away).
    pub fn reopen(&mut self) -> Result<(), WriteFailed> {
        let flushed = self.flush();
        let (file, size) = open_append(&self.settings.path).map_err(|error| WriteFailed { error, lost: 0 })?;
        let _ = self.file.sync_data();
        self.file = file;
        self.size = size;
        flushed
    }

    /// `path` -> `path.1` -> ... -> `path.KEEP` (the oldest removed), then a new `path`. When
    /// `path` is no longer the file we write (logrotate moved it and SIGUSR1 has not come yet,
    /// or it was deleted), nothing is renamed: the path is just opened afresh.
    fn rotate(&mut self) -> Result<(), WriteFailed> {
        self.flush()?;
        let failed = |error| WriteFailed { error, lost: 0 };
        self.file.sync_data().map_err(failed)?;
        let path = &self.settings.path;
        let ours = self.file.metadata().map_err(failed)?;
        let there = std::fs::metadata(path).ok();
        if there.is_none_or(|t| (t.dev(), t.ino()) != (ours.dev(), ours.ino())) {
            return self.reopen();
        }
        let keep = self.settings.keep;
        if keep == 0 {
            remove_if_there(path).map_err(failed)?;
        } else {
            remove_if_there(&numbered(path, keep)).map_err(failed)?;
            for n in (1..keep).rev() {
                rename_if_there(&numbered(path, n), &numbered(path, n + 1)).map_err(failed)?;
            }
            std::fs::rename(path, numbered(path, 1)).map_err(failed)?;
        }
        self.reopen()
    }

    /// Flushes and syncs before the file is let go; what could not be written is returned.
    pub fn close(mut self) -> Result<(), WriteFailed> {
        let flushed = self.flush();
        let _ = self.file.sync_data();
        flushed
    }
}

impl Drop for RotatingFile {
    fn drop(&mut self) {
        let _ = self.flush();
        let _ = self.file.sync_data();
    }
}

/// Opens `path` for appending; a file it creates is mode 0640 whatever the umask: readable by
/// the daemon's group (log shippers run in it), not by everyone, as records name senders and
/// recipients. An existing file keeps the mode its owner gave it.
pub fn open(path: &Path) -> io::Result<File> {
    match OpenOptions::new().append(true).create_new(true).mode(0o640).open(path) {
        Ok(file) => {
            file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
            Ok(file)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => OpenOptions::new().append(true).open(path),
        Err(e) => Err(e),
    }
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rename_if_there(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).map(|s| s.lines().map(str::to_string).collect()).unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_keeping_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.jsonl");
        let mut f = RotatingFile::open(Settings { path: path.clone(), max_size: 20, keep: 2 }).unwrap();
        for n in 0..7 {
            f.write(format!("record-{n}\n").as_bytes()).unwrap(); // 9 octets each: two per file
        }
        f.flush().unwrap();
        assert_eq!(lines(&path), ["record-6"]);
        assert_eq!(lines(&numbered(&path, 1)), ["record-4", "record-5"]);
        assert_eq!(lines(&numbered(&path, 2)), ["record-2", "record-3"]);
        assert!(!numbered(&path, 3).exists(), "only two rotated files are kept");
    }

    #[test]
    fn a_file_moved_away_before_its_rotation_is_not_renamed_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.jsonl");
        let mut f = RotatingFile::open(Settings { path: path.clone(), max_size: 20, keep: 2 }).unwrap();
        std::fs::write(numbered(&path, 1), "older\n").unwrap();
        f.write(b"record-0\n").unwrap();
        f.write(b"record-1\n").unwrap();
        std::fs::rename(&path, dir.path().join("moved")).unwrap(); // logrotate, no SIGUSR1 yet
        for n in 2..6 {
            f.write(format!("record-{n}\n").as_bytes()).unwrap();
        }
        f.flush().unwrap();
        assert_eq!(lines(&dir.path().join("moved")), ["record-0", "record-1"]);
        // The moved file was not renamed over path.1; the next rotation is an ordinary one.
        assert_eq!(lines(&numbered(&path, 2)), ["older"]);
        assert_eq!(lines(&numbered(&path, 1)), ["record-2", "record-3"]);
        assert_eq!(lines(&path), ["record-4", "record-5"]);
    }

    #[test]
    fn a_new_file_is_0640_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.jsonl");
        drop(open(&path).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    }

    #[test]
    fn a_line_longer_than_the_limit_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.jsonl");
        let mut f = RotatingFile::open(Settings { path: path.clone(), max_size: 4, keep: 0 }).unwrap();
        f.write(b"0123456789\n").unwrap();
        f.write(b"x\n").unwrap();
        f.flush().unwrap();
        assert_eq!(lines(&path), ["x"], "keep 0: the full file is dropped at rotation");
    }

    #[test]
    fn reopen_follows_a_renamed_file_and_appends_to_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let mut f = RotatingFile::open(Settings { path: path.clone(), max_size: 1 << 20, keep: 1 }).unwrap();
        f.write(b"a\n").unwrap();
        f.flush().unwrap();
        std::fs::rename(&path, dir.path().join("moved")).unwrap(); // what logrotate does
        f.write(b"b\n").unwrap(); // still to the moved file
        f.reopen().unwrap();
        f.write(b"c\n").unwrap();
        f.flush().unwrap();
        assert_eq!(lines(&dir.path().join("moved")), ["old", "a", "b"]);
        assert_eq!(lines(&path), ["c"]);
    }

    #[test]
    fn a_full_disk_loses_the_pending_records_and_says_how_many() {
        let mut f = RotatingFile::open(Settings { path: "/dev/full".into(), max_size: 1 << 20, keep: 0 }).unwrap();
        for n in 0..3 {
            f.write(format!("record-{n}\n").as_bytes()).unwrap();
        }
        let failed = f.flush().unwrap_err();
        assert_eq!((failed.error.raw_os_error(), failed.lost), (Some(libc::ENOSPC), 3));
        f.write(b"record-3\n").unwrap();
        assert_eq!(f.flush().unwrap_err().lost, 1, "the records already counted are not counted again");
        assert!(f.flush().is_ok(), "nothing pending");
    }

    /// The child half of the next test: under a 100-octet file size limit, a batch that fits
    /// only in part is written in part by the kernel.
    #[test]
    fn torn_line_child() {
        let Some(path) = std::env::var_os("SLUICE_TORN_LINE_CHILD") else { return };
        // SAFETY: plain libc calls in a process running this one test; SIGXFSZ ignored so the
        // write past the limit fails with EFBIG instead of killing the process.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: 100, rlim_max: 100 };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        let mut f = RotatingFile::open(Settings { path: path.into(), max_size: 1 << 20, keep: 0 }).unwrap();
        f.write(&[b'a'; 59].iter().copied().chain([b'\n']).collect::<Vec<u8>>()).unwrap();
        f.flush().unwrap();
        f.write(&[b'b'; 19].iter().copied().chain([b'\n']).collect::<Vec<u8>>()).unwrap();
        f.write(&[b'c'; 59].iter().copied().chain([b'\n']).collect::<Vec<u8>>()).unwrap();
        let failed = f.flush().unwrap_err(); // the kernel took the b line and 20 octets of c
        assert_eq!((failed.error.raw_os_error(), failed.lost), (Some(libc::EFBIG), 1));
    }

    #[test]
    fn a_line_written_in_part_is_cut_off_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acct.jsonl");
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "accounting::file::tests::torn_line_child", "--test-threads=1"])
            .env("SLUICE_TORN_LINE_CHILD", &path)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&child.stdout);
        assert!(child.status.success() && out.contains("1 passed"), "{out}{}", String::from_utf8_lossy(&child.stderr));
        // The whole line of the failed batch stays (not counted lost); the torn one is cut off.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n{}\n", "a".repeat(59), "b".repeat(19)));
    }
}
