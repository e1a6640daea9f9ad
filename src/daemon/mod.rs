//! Starts and stops the relay: spool, metrics, intake listeners, admin socket; reloads it
//! (`reload.rs`) with the listeners kept in step (`listeners.rs`).

mod listeners;
mod reload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use self::listeners::Listeners;
use self::reload::Reloader;
use crate::admin::protocol::ReloadReport;
use crate::config::Config;
use crate::intake::IntakeContext;
use crate::live::Live;
use crate::spool::SledSpool;

/// A started relay. Tests start several in one process, each with its own spool.
pub struct Running {
    /// The listener addresses bound at start, in config order (port 0 resolved).
    pub listeners: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    bound: Arc<Mutex<Listeners>>,
    intake: Arc<Live<IntakeContext>>,
    config: Arc<Live<Config>>,
    spool: Arc<SledSpool>,
    runner: Option<Arc<crate::queue::runner::Runner>>,
    reloads: crate::admin::Reloads,
    accounting: Arc<crate::accounting::Accounting>,
    /// Started and not draining: what `/readyz` adds to `/healthz`.
    serving: Arc<AtomicBool>,
    /// Its connection leases are given back at a clean stop.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// What `/healthz` and `/readyz` judge, gathered when asked.
fn facts_source(spool: Arc<SledSpool>, listeners: Arc<Mutex<Listeners>>, serving: Arc<AtomicBool>) -> crate::metrics::http::FactsSource {
    Arc::new(move || {
        let (spool, listeners, serving) = (spool.clone(), listeners.clone(), serving.clone());
        Box::pin(async move {
            crate::health::Facts {
                spool: crate::spool::Spool::health(spool.as_ref()),
                listeners: listeners.lock().await.status(),
                serving: serving.load(Ordering::Relaxed),
            }
        })
    })
}

type Census = Arc<std::sync::Mutex<Option<crate::queue::census::Census>>>;

/// Counts the queue by state now and then (`queue::census`), for the scrapes.
async fn count_the_queue(
    spool: Arc<SledSpool>,
    runner: Option<Arc<crate::queue::runner::Runner>>,
    census: Census,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let in_flight = runner.as_ref().map(|r| r.in_flight_ids()).unwrap_or_default();
        let spool = spool.clone();
        let counted = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let envelopes = crate::spool::SpoolRead::scan(spool.as_ref()).filter_map(Result::ok);
            let mut c = crate::queue::census::count(envelopes, &in_flight);
            c.took = started.elapsed();
            c.taken_at = crate::clock::Clock::now(&crate::clock::SystemClock);
            c
        })
        .await;
        let pause = match counted {
            Ok(c) => {
                let pause = crate::queue::census::interval(every, c.took);
                *census.lock().expect("census lock") = Some(c);
                pause
            }
            Err(_) => Duration::from_secs(60),
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The series a scrape reads from live state: the queue census and the destinations.
fn live_series(
    census: Census,
    delivery: Option<Arc<crate::delivery::Delivery>>,
    accounting: Arc<crate::accounting::Accounting>,
) -> crate::metrics::http::ExtraSeries {
    Arc::new(move |out: &mut String| {
        accounting.render(out);
        let now = crate::clock::Clock::now(&crate::clock::SystemClock);
        crate::queue::census::render(census.lock().expect("census lock").as_ref(), now, out);
        if let Some(delivery) = &delivery {
            crate::shaping::exposition::render(&delivery.shaper().states(now), out);
        }
    })
}

pub async fn start(config: Config) -> Result<Running, String> {
    start_with_clock(config, Arc::new(crate::clock::SystemClock)).await
}

/// [`start`] with the queue runner on `clock` (tests run retries and expiry on virtual time).
pub async fn start_with_clock(config: Config, clock: Arc<dyn crate::clock::Clock>) -> Result<Running, String> {
    for warning in &config.warnings {
        tracing::warn!(warning = warning.as_str(), "config");
    }
    let path = config.source.clone();
    let config = Arc::new(config);
    let spool_cfg = config.spool.clone();
    let spool = tokio::task::spawn_blocking(move || SledSpool::open(&spool_cfg))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("spool {}: {e}", config.spool.path.display()))?;
    if let Some(settings) = config.accounting.settings() {
        crate::accounting::check(&settings)?;
    }
    let accounting = crate::accounting::Accounting::start(config.accounting.settings());
    let metrics = match config.metrics.address {
        Some(address) => {
            let handle = crate::metrics::recorder()?;
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| format!("metrics.address {address}: {e}"))?;
            Some((listener, handle))
        }
        None => None,
    };
    // Limits shared with other appliances, one connection for intake and delivery. After the
    // recorder: the connection, made in the background, sets sluice_cluster_redis_up.
    let cluster = crate::cluster::Cluster::start(&config.cluster, &config.hostname.0)?;
    let ctx = IntakeContext::new(config.clone(), spool.clone(), accounting.clone(), cluster.clone())?;
    let stored = ctx.stored.clone();
    let intake = Arc::new(Live::from_arc(ctx));
    let mut http = Vec::new();
    for l in &config.http_listeners {
        let listener = tokio::net::TcpListener::bind(l.address).await.map_err(|e| format!("http_listeners {}: {e}", l.address))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(address = %local, tls = l.tls, "http api bound");
        http.push((listener, crate::http::Listener { local, tls: l.tls }));
    }
    // Before the listeners: by the time mail is accepted, sendmail can leave mail too.
    crate::intake::pickup::prepare(&config.sendmail.maildrop);
    let (shutdown, watcher) = watch::channel(false);
    let (mut bound, plan) = Listeners::bind(&config.listeners, intake.clone(), watcher.clone()).await?;
    let admin = crate::admin::bind_admin_socket(&config.admin)?;
    // Every local user may submit; the daemon learns who from the socket.
    let sendmail = crate::admin::bind_socket(&config.sendmail.socket, 0o666)
        .map_err(|e| format!("sendmail socket {}: {e}", config.sendmail.socket.display()))?;

    let mut tasks = JoinSet::new();
    bound.commit(plan);
    let listeners = bound.addresses();
    let (delivery, runner) = if config.delivery.paused {
        tracing::warn!("delivery is paused: mail is accepted and kept in the queue");
        (None, None)
    } else {
        let delivery = crate::delivery::Delivery::new(config.clone(), listeners.clone(), spool.clone(), cluster.clone())?;
        let runner = crate::queue::runner::Runner::new(spool.clone(), delivery.clone(), stored, clock, accounting.clone());
        tasks.spawn(runner.clone().run(watcher.clone()));
        let reporter = crate::tlsrpt::send::Reporter { delivery: delivery.clone(), spool: spool.clone(), notify: runner.notify.clone() };
        tasks.spawn(crate::tlsrpt::send::run(reporter, watcher.clone()));
        (Some(delivery), Some(runner))
    };
    let bound = Arc::new(Mutex::new(bound));
    let serving = Arc::new(AtomicBool::new(false));
    if let Some((listener, handle)) = metrics {
        let census = Arc::new(std::sync::Mutex::new(None));
        let every = config.metrics.queue_census_interval.0;
        tasks.spawn(count_the_queue(spool.clone(), runner.clone(), census.clone(), every, watcher.clone()));
        let sources = crate::metrics::http::Sources {
            handle,
            extra: live_series(census, runner.as_ref().map(|r| r.delivery()), accounting.clone()),
            facts: facts_source(spool.clone(), bound.clone(), serving.clone()),
        };
        tasks.spawn(crate::metrics::http::serve(listener, sources, watcher.clone()));
    }
    let config_for_pickup = config.clone();
    let live_config = Arc::new(Live::from_arc(config));
    let (reloads, requests) = mpsc::channel(4);
    let reloader = Reloader {
        path,
        config: live_config.clone(),
        intake: intake.clone(),
        delivery,
        runner: runner.clone(),
        listeners: bound.clone(),
        accounting: accounting.clone(),
    };
    tasks.spawn(reloader.serve(requests, watcher.clone()));
    tasks.spawn(renew_certificate(live_config.clone(), watcher.clone()));
    tasks.spawn(crate::intake::local::serve(sendmail, intake.clone(), watcher.clone()));
    tasks.spawn(crate::intake::pickup::serve(config_for_pickup.sendmail.maildrop.clone(), intake.clone(), watcher.clone()));
    let daemon = crate::admin::Daemon {
        spool: spool.clone(),
        config: live_config.clone(),
        runner: runner.clone(),
        reloads: reloads.clone(),
        accounting: accounting.clone(),
        cluster: cluster.clone(),
    };
    let cluster_for_stop = cluster;
    let daemon = Arc::new(daemon);
    // The HTTP API serves the admin requests too (under the admin scope).
    for (listener, settings) in http {
        tasks.spawn(crate::http::serve(listener, settings, intake.clone(), daemon.clone(), watcher.clone()));
    }
    tasks.spawn(crate::admin::serve(admin, daemon, watcher));
    serving.store(true, Ordering::Relaxed);
    Ok(Running {
        listeners,
        shutdown,
        tasks,
        bound,
        intake,
        config: live_config,
        spool,
        runner,
        reloads,
        accounting,
        serving,
        cluster: cluster_for_stop,
    })
}

/// Replaces a generated certificate before it ends, for a daemon that runs for months (the
/// TLS acceptors pick the new files up by themselves).
async fn renew_certificate(config: Arc<Live<Config>>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(12 * 3600)) => {}
            _ = shutdown.changed() => return,
        }
        let config = config.get();
        let Some(tls) = config.tls.clone() else { continue };
        let hostname = config.hostname.0.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || crate::intake::tls::ensure_certificate(&tls, &hostname)).await {
            tracing::error!(error = %e, "renewing the generated TLS certificate failed; the current one stays");
        }
    }
}

impl Running {
    /// Reads the config file again and puts it in force (as SIGHUP and `sluice reload` do).
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        let (tx, rx) = oneshot::channel();
        self.reloads.send(tx).await.map_err(|_| "the daemon is shutting down".to_string())?;
        rx.await.map_err(|_| "the daemon is shutting down".to_string())?
    }

    /// Waits until every accounting record emitted so far is in the file.
    pub async fn flush_accounting(&self) {
        let accounting = self.accounting.clone();
        let _ = tokio::task::spawn_blocking(move || accounting.flush()).await;
    }

    /// Opens the accounting file again, as SIGUSR1 does.
    pub fn reopen_accounting(&self) {
        self.accounting.reopen();
    }

    /// The listener addresses bound now, in config order.
    pub async fn addresses(&self) -> Vec<SocketAddr> {
        self.bound.lock().await.addresses()
    }

    /// Stops accepting and starting deliveries, tells open sessions to close (421 4.3.2),
    /// waits up to `grace` for them and for deliveries under way (so their outcomes are
    /// recorded, not repeated after the restart), then lets the committer finish every commit.
    pub async fn stop(mut self, grace: Duration) {
        self.serving.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        self.bound.lock().await.join().await;
        let deadline = Instant::now() + grace;
        let busy = |r: &Option<Arc<crate::queue::runner::Runner>>| r.as_ref().map_or(0, |r| r.in_flight());
        while (self.intake.get().limits.active() > 0 || busy(&self.runner) > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.release_all().await;
        }
        let _ = std::fs::remove_file(&self.config.get().admin.socket);
        let spool = self.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.close()).await;
        let accounting = self.accounting.clone();
        let _ = tokio::task::spawn_blocking(move || accounting.close()).await;
    }
}

/// `sluice run`: start, then serve until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    // Before anything else, so a signal during start-up is not fatal (SIGHUP's default is).
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(|e| e.to_string())?;
    let running = start(config).await?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "ready");
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
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            // The reload habit: re-read the config; the outcome goes to the log.
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = running.reload().await;
            }
            // logrotate's habit: the accounting file was moved away; open it again.
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the accounting file");
                running.accounting.reopen();
            }
        }
    }
    tracing::info!("shutting down");
    crate::notify::notify("STOPPING=1");
    running.stop(Duration::from_secs(10)).await;
    tracing::info!("stopped");
    Ok(())
}
