//! Takes in what `sluice sendmail` left in the maildrop while the daemon was not answering:
//! at start and every few seconds, each `*.msg` file goes through the local submission's
//! accept path (its owner is the submitting user) and is removed once the message is
//! durable in the spool. A file that can never be accepted is moved to `corrupt/` beside it,
//! with the reason in the log; one refused for now (a full spool) waits for the next round.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::IntakeContext;
use crate::live::Live;
use crate::sendmail::maildrop::{self, SUFFIX};
use crate::sendmail::{EX_TEMPFAIL, Response};

const ROUND: Duration = Duration::from_secs(5);
/// A temporary file this old was left by a writer that died.
const ABANDONED: Duration = Duration::from_secs(3600);

/// Creates the maildrop when it is missing (mode 1730: its group may add files, no one but
/// the daemon may list or read them); a failure is logged, and sendmail then cannot leave
/// mail while the daemon is down.
pub fn prepare(dir: &Path) {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return;
    }
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o1730)
        .create(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1730)));
    if let Err(e) = made {
        tracing::error!(maildrop = %dir.display(), error = %e, "maildrop unavailable: sendmail cannot queue mail while the daemon is down");
    }
}

pub async fn serve(dir: PathBuf, intake: Arc<Live<IntakeContext>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        round(&dir, &intake.get()).await;
        tokio::select! {
            _ = tokio::time::sleep(ROUND) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn round(dir: &Path, ctx: &Arc<IntakeContext>) {
    let d = dir.to_path_buf();
    let names =
        tokio::task::spawn_blocking(move || std::fs::read_dir(&d).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect::<Vec<_>>()))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let Ok(mut paths) = names else { return };
    paths.sort();
    for path in paths {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".tmp") {
            let old = std::fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() > ABANDONED);
            if old {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if !name.ends_with(SUFFIX) {
            continue;
        }
        take(&path, ctx).await;
    }
}

async fn take(path: &Path, ctx: &Arc<IntakeContext>) {
    let (p, max) = (path.to_path_buf(), ctx.config.limits.max_message_size);
    let dropped = match tokio::task::spawn_blocking(move || maildrop::read(&p, max)).await {
        Ok(Ok(d)) => d,
        Ok(Err(reason)) => return set_aside(path, &reason),
        Err(_) => return,
    };
    let response = match super::local::body_of(ctx, dropped.message).await {
        Ok(body) => super::local::accept(ctx, dropped.uid, dropped.request, body).await,
        Err(refused) => refused,
    };
    match response {
        Response::Queued(queue_id) => {
            tracing::info!(file = %path.display(), queue_id, uid = dropped.uid, "taken in from the maildrop");
            if let Err(e) = std::fs::remove_file(path) {
                // It would be taken in again: say so loudly.
                tracing::error!(file = %path.display(), error = %e, "maildrop file could not be removed after it was queued");
            }
        }
        Response::Refused { exit: EX_TEMPFAIL, text } => {
            tracing::warn!(file = %path.display(), reason = %text, "maildrop file left for the next round");
        }
        Response::Refused { text, .. } => set_aside(path, &text),
    }
}

/// Moves a file that can never be accepted out of the way, keeping it for the operator.
fn set_aside(path: &Path, reason: &str) {
    let Some(dir) = path.parent() else { return };
    let corrupt = dir.join("corrupt");
    let _ = std::fs::create_dir_all(&corrupt);
    let target = corrupt.join(path.file_name().unwrap_or_default());
    let moved = std::fs::rename(path, &target);
    tracing::error!(file = %path.display(), reason, kept = %target.display(), moved = moved.is_ok(), "maildrop file refused");
}
