//! The maildrop: where `sluice sendmail` leaves a message when the daemon does not answer, so
//! cron and PHP mail is not lost during a restart (Postfix's postdrop). A file holds the
//! request line (the same JSON the socket takes) and the message; it is written under a
//! temporary name, fsynced, renamed to `*.msg` and the file system synced (the directory
//! cannot be opened to fsync it: members of its group may write into it but not read it).
//! The file's owner is the submitting user: the daemon takes the identity from it, as it
//! does from the socket's peer credentials.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::Request;

/// Files the daemon takes in end with this; others are in the making.
pub const SUFFIX: &str = ".msg";

fn unique_name() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut random = [0u8; 8];
    let _ = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
    format!("{}.{:09}-{}-{:016x}", now.as_secs(), now.subsec_nanos(), std::process::id(), u64::from_ne_bytes(random))
}

/// Leaves `message` in `dir` durably; the path of the file.
pub fn write(dir: &Path, request: &Request, message: &[u8]) -> io::Result<PathBuf> {
    let name = unique_name();
    let (tmp, done) = (dir.join(format!("{name}.tmp")), dir.join(format!("{name}{SUFFIX}")));
    let mut head = serde_json::to_vec(request).map_err(io::Error::other)?;
    head.push(b'\n');
    let written = (|| {
        // Readable by the group (the daemon's user is a member), no one else.
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o640).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
        f.write_all(&head)?;
        f.write_all(message)?;
        f.sync_all()?;
        fs::rename(&tmp, &done)?;
        // SAFETY: syncfs on a descriptor we own: the rename reaches the disk too.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(done)
}

/// A file taken from the maildrop.
#[derive(Debug)]
pub struct Dropped {
    pub request: Request,
    pub message: Vec<u8>,
    /// Who wrote it.
    pub uid: u32,
}

/// Reads one maildrop file: a regular file with one link, not a symlink, no larger than
/// `max_size` of message (a file linked in from elsewhere, or a giant, is refused).
pub fn read(path: &Path, max_size: u64) -> Result<Dropped, String> {
    let mut f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(|e| e.to_string())?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err("not a regular file with one link".into());
    }
    if meta.len() > max_size + 64 * 1024 {
        return Err(format!("{} bytes, over the message size limit", meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    let (request, message) = parse(bytes)?;
    Ok(Dropped { request, message, uid: meta.uid() })
}

/// A maildrop file's contents: the request line, then exactly as many bytes as it announces.
pub fn parse(mut bytes: Vec<u8>) -> Result<(Request, Vec<u8>), String> {
    let end = memchr::memchr(b'\n', &bytes).ok_or("no request line")?;
    let request: Request = serde_json::from_slice(&bytes[..end]).map_err(|e| format!("bad request line: {e}"))?;
    let message = bytes.split_off(end + 1);
    if message.len() != request.size {
        return Err(format!("{} bytes of message, the request says {}", message.len(), request.size));
    }
    Ok((request, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_message_reads_back_with_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let request = Request { from: None, full_name: None, extract: true, recipients: vec!["a@b.test".into()], size: 9 };
        let path = write(dir.path(), &request, b"Subject:x").unwrap();
        assert!(path.to_str().unwrap().ends_with(SUFFIX));
        let got = read(&path, 1000).unwrap();
        assert_eq!((got.request, got.message.as_slice()), (request, &b"Subject:x"[..]));
        // SAFETY: getuid has no preconditions.
        assert_eq!(got.uid, unsafe { libc::getuid() });
        // Torn (shorter than announced), linked twice, or a symlink: refused.
        fs::write(
            dir.path().join("torn.msg"),
            b"{\"from\":null,\"full_name\":null,\"extract\":false,\"recipients\":[],\"size\":50}\nshort",
        )
        .unwrap();
        assert!(read(&dir.path().join("torn.msg"), 1000).unwrap_err().contains("the request says 50"));
        fs::hard_link(&path, dir.path().join("twice.msg")).unwrap();
        assert!(read(&path, 1000).is_err());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.msg")).unwrap();
        assert!(read(&dir.path().join("link.msg"), 1000).is_err());
    }
}
