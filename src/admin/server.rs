//! The daemon's side of the admin socket: reads one request, runs its handler, answers.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::protocol::{Request, Response};
use super::summary::from_spool;
use super::{DestinationSummary, list};
use crate::config::Config;
use crate::spool::Spool;

/// Serves the admin socket until shutdown: one task per connection, one request each.
pub async fn serve(
    listener: UnixListener,
    spool: Arc<dyn Spool>,
    config: Arc<Config>,
    delivery: Option<Arc<crate::delivery::Delivery>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let (spool, config, delivery) = (spool.clone(), config.clone(), delivery.clone());
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(line.trim()) {
                Ok(request) => handle(request, &Handlers { spool, config, delivery }).await,
                Err(e) => Response::Error(format!("bad request: {e}")),
            };
            let bytes = serde_json::to_vec(&response).unwrap_or_default();
            let _ = reader.into_inner().write_all(&bytes).await;
        });
    }
}

/// What the handlers work with.
struct Handlers {
    spool: Arc<dyn Spool>,
    config: Arc<Config>,
    delivery: Option<Arc<crate::delivery::Delivery>>,
}

async fn handle(request: Request, h: &Handlers) -> Response {
    match request {
        Request::QueueList => queue_list(h).await,
        Request::QueueSummary => queue_summary(h).await,
    }
}

/// Reads the spool on a blocking thread (sled reads block).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(e.to_string()))
}

async fn queue_list(h: &Handlers) -> Response {
    let spool = h.spool.clone();
    match blocking(move || list(spool.as_ref())).await {
        Ok(entries) => Response::Queue(entries),
        Err(e) => Response::Error(e),
    }
}

async fn queue_summary(h: &Handlers) -> Response {
    let (spool, config, delivery) = (h.spool.clone(), h.config.clone(), h.delivery.clone());
    let rows: Result<Vec<DestinationSummary>, String> = blocking(move || from_spool(spool.as_ref(), &config, delivery.as_deref())).await;
    match rows {
        Ok(rows) => Response::Summary(rows),
        Err(e) => Response::Error(e),
    }
}
