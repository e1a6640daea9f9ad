//! A read-only look at a spool no daemon holds, for the offline `sluice queue` commands.
//! sled cannot open a database without writing to it, and `SledSpool::open` recovers (which
//! writes), so the index is copied into a private temporary directory and the copy opened;
//! bodies are read from their segment files, each opened read-only. Nothing in the spool is
//! created, written, recovered or given another owner.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::sled_spool::{get_envelope, scan_envelopes};
use super::{Envelope, SpoolError, SpoolRead, segments};
use crate::config::SpoolConfig;

pub struct Snapshot {
    messages: sled::Tree,
    _db: sled::Db,
    bodies: PathBuf,
    /// The private copy of the index, removed on drop.
    copy: PathBuf,
}

/// Why a snapshot could not be taken.
#[derive(Debug)]
pub enum SnapshotError {
    /// A daemon holds the spool (its index is locked).
    Locked(PathBuf),
    /// A file of the spool may not be read by this user.
    Denied(PathBuf, io::Error),
    Failed(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Locked(p) => write!(f, "the spool {} is in use by a running daemon", p.display()),
            SnapshotError::Denied(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            SnapshotError::Failed(e) => f.write_str(e),
        }
    }
}

fn failed(path: &Path) -> impl Fn(io::Error) -> SnapshotError + '_ {
    move |e| match e.kind() {
        io::ErrorKind::PermissionDenied => SnapshotError::Denied(path.to_path_buf(), e),
        _ => SnapshotError::Failed(format!("{}: {e}", path.display())),
    }
}

/// Fails with `Locked` when another process holds sled's lock on the index (sled takes an
/// exclusive flock on `index/db`); asking for a shared lock changes no file.
fn check_unlocked(db: &Path) -> Result<(), SnapshotError> {
    let file = fs::File::open(db).map_err(failed(db))?;
    // SAFETY: flock on a descriptor we own; it is released when `file` closes.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => SnapshotError::Locked(db.parent().and_then(Path::parent).unwrap_or(db).to_path_buf()),
            _ => failed(db)(e),
        });
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    fs::DirBuilder::new().mode(0o700).create(to).map_err(failed(to))?;
    for entry in fs::read_dir(from).map_err(failed(from))? {
        let entry = entry.map_err(failed(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(failed(&source))?.is_dir() {
            copy_tree(&source, &target)?;
        } else {
            fs::copy(&source, &target).map_err(failed(&source))?;
        }
    }
    Ok(())
}

impl Snapshot {
    /// `Ok(None)` when there is no spool yet (nothing was ever queued).
    pub fn open(cfg: &SpoolConfig) -> Result<Option<Snapshot>, SnapshotError> {
        let index = cfg.path.join("index");
        let db_file = index.join("db");
        match fs::metadata(&db_file) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other.map_err(failed(&db_file))?,
        };
        check_unlocked(&db_file)?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let copy = std::env::temp_dir().join(format!("sluice-snapshot-{}-{stamp}", std::process::id()));
        let taken = copy_tree(&index, &copy).and_then(|()| {
            let db = sled::Config::new().path(&copy).open().map_err(|e| SnapshotError::Failed(format!("reading the copied index: {e}")))?;
            let messages = db.open_tree("messages").map_err(|e| SnapshotError::Failed(e.to_string()))?;
            Ok((db, messages))
        });
        match taken {
            Ok((db, messages)) => Ok(Some(Snapshot { messages, _db: db, bodies: cfg.path.join("bodies"), copy })),
            Err(e) => {
                let _ = fs::remove_dir_all(&copy);
                Err(e)
            }
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.copy);
    }
}

impl SpoolRead for Snapshot {
    fn get(&self, queue_id: &str) -> Result<Envelope, SpoolError> {
        get_envelope(&self.messages, queue_id)
    }

    fn read_body(&self, envelope: &Envelope) -> Result<Vec<u8>, SpoolError> {
        let body = envelope.body.ok_or_else(|| SpoolError::Corrupt("envelope without body".into()))?;
        segments::read_from(&self.bodies, &body)
    }

    fn scan(&self) -> Box<dyn Iterator<Item = Result<Envelope, SpoolError>> + '_> {
        scan_envelopes(&self.messages)
    }
}
