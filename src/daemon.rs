//! Starts and stops the relay: spool, metrics, intake listeners, admin socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::intake::{self, IntakeContext};
use crate::spool::SledSpool;

/// A started relay. Tests start several in one process, each with its own spool.
pub struct Running {
    /// The bound listener addresses, in config order (port 0 resolved).
    pub listeners: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    ctx: Arc<IntakeContext>,
    spool: Arc<SledSpool>,
    runner: Option<Arc<crate::queue::runner::Runner>>,
}

pub async fn start(config: Config) -> Result<Running, String> {
    let config = Arc::new(config);
    let spool_cfg = config.spool.clone();
    let spool = tokio::task::spawn_blocking(move || SledSpool::open(&spool_cfg))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("spool {}: {e}", config.spool.path.display()))?;
    let ctx = IntakeContext::new(config.clone(), spool.clone())?;
    if let Some(address) = config.metrics.address {
        crate::metrics::install(address)?;
    }
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = TcpListener::bind(l.address).await.map_err(|e| format!("listen on {}: {e}", l.address))?;
        bound.push(listener);
    }
    let admin = crate::admin::bind_admin_socket(&config.admin)?;
    // Every local user may submit; the daemon learns who from the socket.
    let sendmail = crate::admin::bind_socket(&config.sendmail.socket, 0o666)
        .map_err(|e| format!("sendmail socket {}: {e}", config.sendmail.socket.display()))?;

    let (shutdown, watcher) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for (listener, cfg) in bound.into_iter().zip(&config.listeners) {
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%address, mode = ?cfg.mode, "listening");
        listeners.push(address);
        tasks.spawn(intake::serve(listener, cfg.clone(), ctx.clone(), watcher.clone()));
    }
    let runner = if config.delivery.paused {
        tracing::warn!("delivery is paused: mail is accepted and kept in the queue");
        None
    } else {
        let delivery = crate::delivery::Delivery::new(config.clone(), listeners.clone())?;
        let runner = crate::queue::runner::Runner::new(spool.clone(), delivery, ctx.stored.clone(), Arc::new(crate::clock::SystemClock));
        tasks.spawn(runner.clone().run(watcher.clone()));
        Some(runner)
    };
    tasks.spawn(crate::intake::local::serve(sendmail, ctx.clone(), watcher.clone()));
    tasks.spawn(crate::admin::serve(admin, spool.clone(), config.clone(), runner.clone(), watcher));
    Ok(Running { listeners, shutdown, tasks, ctx, spool, runner })
}

impl Running {
    /// Stops accepting and starting deliveries, tells open sessions to close (421 4.3.2),
    /// waits up to `grace` for them and for deliveries under way (so their outcomes are
    /// recorded, not repeated after the restart), then lets the committer finish every commit.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        let deadline = Instant::now() + grace;
        let busy = |r: &Option<Arc<crate::queue::runner::Runner>>| r.as_ref().map_or(0, |r| r.in_flight());
        while (self.ctx.limits.active() > 0 || busy(&self.runner) > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(&self.ctx.config.admin.socket);
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.close()).await;
    }
}

/// `sluice run`: start, then serve until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let running = start(config).await?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    tracing::info!("ready");
    crate::notify::notify("READY=1");
    if let Some(every) = crate::notify::watchdog_interval() {
        // Fed while the runtime runs and the spool can commit; a failed fsync poisons the
        // spool for good, and then a restart (which systemd makes on a starved watchdog)
        // reopens and recovers it.
        let spool = running.spool.clone();
        tokio::spawn(async move {
            let mut warned = false;
            loop {
                tokio::time::sleep(every).await;
                if crate::spool::Spool::health(spool.as_ref()) == crate::spool::Health::Failed {
                    if !warned {
                        tracing::error!("the spool has failed; the watchdog is no longer fed, so systemd restarts the daemon");
                        warned = true;
                    }
                } else {
                    crate::notify::notify("WATCHDOG=1");
                }
            }
        });
    }
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
    crate::notify::notify("STOPPING=1");
    running.stop(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    Ok(())
}
