//! The accounting file: appended to, rotated by size, reopened when logrotate moved it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
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
    out: BufWriter<File>,
    /// Octets in the current file.
    size: u64,
}

impl RotatingFile {
    pub fn open(settings: Settings) -> io::Result<RotatingFile> {
        let (out, size) = open_append(&settings.path)?;
        Ok(RotatingFile { settings, out, size })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Appends one line, rotating first when it would not fit (a line longer than
    /// `max_size` gets a file of its own rather than being lost).
    pub fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.settings.max_size {
            self.rotate()?;
        }
        self.out.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Hands what is buffered to the kernel (records are not fsynced one by one: they
    /// describe mail whose own state is durable in the spool).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Opens the path again (after logrotate renamed the file: SIGUSR1).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let (out, size) = open_append(&self.settings.path)?;
        self.out = out;
        self.size = size;
        Ok(())
    }

    /// `path` -> `path.1` -> ... -> `path.KEEP` (the oldest removed), then a new `path`. When
    /// `path` is no longer the file we write (logrotate moved it and SIGUSR1 has not come yet,
    /// or it was deleted), nothing is renamed: the path is just opened afresh.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        let path = &self.settings.path;
        let ours = self.out.get_ref().metadata()?;
        let there = std::fs::metadata(path).ok();
        if there.is_none_or(|t| (t.dev(), t.ino()) != (ours.dev(), ours.ino())) {
            return self.reopen();
        }
        let keep = self.settings.keep;
        if keep == 0 {
            remove_if_there(path)?;
        } else {
            remove_if_there(&numbered(path, keep))?;
            for n in (1..keep).rev() {
                rename_if_there(&numbered(path, n), &numbered(path, n + 1))?;
            }
            std::fs::rename(path, numbered(path, 1))?;
        }
        self.reopen()
    }
}

impl Drop for RotatingFile {
    fn drop(&mut self) {
        let _ = self.out.flush();
        let _ = self.out.get_ref().sync_data();
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

fn open_append(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let file = open(path)?;
    let size = file.metadata()?.len();
    Ok((BufWriter::with_capacity(64 * 1024, file), size))
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
}
