//! Intake: listeners, connection limits, and the driver of the sans-IO SMTP session.

mod connection;
mod limits;
pub mod trace;

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::metrics as m;
use crate::smtp::reply::codes;
use crate::smtp::server::SessionConfig;
use crate::spool::Spool;

pub use limits::ConnectionLimits;

/// What every intake connection shares.
pub struct IntakeContext {
    pub config: Arc<Config>,
    pub session: Arc<SessionConfig>,
    pub spool: Arc<dyn Spool>,
    pub limits: Arc<ConnectionLimits>,
}

impl IntakeContext {
    pub fn new(config: Arc<Config>, spool: Arc<dyn Spool>) -> Arc<Self> {
        let l = &config.limits;
        let session = Arc::new(SessionConfig {
            hostname: config.hostname.0.clone(),
            max_message_size: usize::try_from(l.max_message_size).unwrap_or(usize::MAX),
            max_recipients: l.max_recipients,
            max_line: l.max_line_length,
            max_errors: l.max_errors,
            postmaster: config.postmaster(),
        });
        let limits = ConnectionLimits::new(l.max_connections, l.max_connections_per_ip);
        Arc::new(IntakeContext {
            config,
            session,
            spool,
            limits,
        })
    }
}

/// Accepts connections until `shutdown` turns true; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<IntakeContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let listener_label = local.to_string();
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        metrics::counter!(m::CONNECTIONS_TOTAL, "listener" => listener_label.clone()).increment(1);
        match ctx.limits.acquire(peer.ip()) {
            Ok(slot) => {
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    connection::serve(stream, peer, local, ctx, shutdown).await;
                    drop(slot);
                });
            }
            Err(refusal) => {
                metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => refusal.label()).increment(1);
                tokio::spawn(async move {
                    let reply = codes::closing("Too many connections, try again later");
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        stream.write_all(&reply.to_bytes()),
                    )
                    .await;
                });
            }
        }
    }
}
