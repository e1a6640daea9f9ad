//! Delivery worker threads: one per core by default, each a single-threaded runtime running
//! many connections, on io_uring (tokio-uring) or plain tokio (epoll). Jobs go round-robin, so
//! one busy destination uses every core; its connection cap is shared (see `pool.rs`).
//!
//! The queue runner and DNS stay on the main runtime; a worker only moves one message's
//! recipients to a list of targets and answers with one result per recipient.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::attempt::{Attempted, Report, Sender};
use super::connection::Settings;
use super::pool::{Limits, Pool, Slot};
use super::route::Target;
use super::transport::{Epoll, Transport};
use super::uring::{self, Uring};
use crate::config::{Config, IoBackend};
use crate::live::Live;
use crate::metrics as m;
use crate::shaping::Bucket;
use crate::shaping::health::Signal;
use crate::smtp::client::{Message, RcptOutcome, TlsPolicy};
use crate::smtp::reply::{Enhanced, Reply};

/// The backend the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Uring,
    Epoll,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "io_uring",
            Backend::Epoll => "epoll",
        }
    }

    /// `auto` takes io_uring when it can be set up; `uring` insists on it.
    pub fn choose(wanted: IoBackend) -> Result<Backend, String> {
        match wanted {
            IoBackend::Epoll => Ok(Backend::Epoll),
            IoBackend::Uring => {
                uring::probe().map(|_| Backend::Uring).map_err(|e| format!("delivery.io is uring, but io_uring is unavailable: {e}"))
            }
            IoBackend::Auto => match uring::probe() {
                Ok(()) => Ok(Backend::Uring),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring is unavailable; delivery uses epoll");
                    Ok(Backend::Epoll)
                }
            },
        }
    }
}

struct Job {
    targets: Vec<Target>,
    /// A slot for a new connection to the first target, taken at dispatch.
    slot: Option<Slot>,
    bucket: Arc<Bucket>,
    msg: Message,
    policy: TlsPolicy,
    hop: super::Hop,
    done: oneshot::Sender<Report>,
}

pub struct Workers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    limits: Arc<Limits>,
}

impl Workers {
    pub fn start(
        config: &Config,
        settings: Arc<Live<Settings>>,
        stop: watch::Receiver<bool>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> Result<Workers, String> {
        let d = &config.delivery;
        let backend = Backend::choose(d.io)?;
        let count = match d.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let limits = Arc::new(Limits::new(d.max_connections, count));
        let legacy = Arc::new(super::legacy::LegacyHosts::default());
        let mut queues = Vec::with_capacity(count);
        for worker in 0..count {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.push(tx);
            let pool = PoolConfig { limits: limits.clone(), worker, idle_timeout: d.idle_timeout.0, cluster: cluster.clone() };
            let (settings, stop, legacy) = (settings.clone(), stop.clone(), legacy.clone());
            std::thread::Builder::new()
                .name(format!("sluice-delivery-{worker}"))
                .spawn(move || run_thread(backend, settings, pool, stop, legacy, rx))
                .map_err(|e| format!("starting delivery worker {worker}: {e}"))?;
        }
        tracing::info!(backend = backend.name(), workers = count, "delivery workers started");
        metrics::gauge!(m::DELIVERY_IO_BACKEND, "backend" => backend.name()).set(1.0);
        Ok(Workers { queues, next: AtomicUsize::new(0), limits })
    }

    /// `delivery.max_connections` from now on (a reload).
    pub fn resize(&self, max_connections: usize) {
        self.limits.resize_total(max_connections);
    }

    /// Sends `msg` to the first of `targets` that takes it, on the next worker in turn.
    pub async fn send(&self, targets: Vec<Target>, bucket: Arc<Bucket>, msg: Message, policy: TlsPolicy, hop: super::Hop) -> Report {
        let n = msg.recipients.len();
        let (done, result) = oneshot::channel();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let (worker, slot) = match targets.first() {
            Some(t) => {
                let a = self.limits.assign(&bucket.cap(t), bucket.max_connections, bucket.max_deliveries, &bucket.active, start);
                (a.worker, a.slot)
            }
            None => (start, None),
        };
        let job = Job { targets, slot, bucket, msg, policy, hop, done };
        if self.queues[worker].send(job).is_ok()
            && let Ok(attempted) = result.await
        {
            return attempted;
        }
        // Only when a worker died (a bug): the recipients are tried again later.
        tracing::error!(worker, "delivery worker is gone");
        let reply = Reply::new(451, Enhanced(4, 3, 0), "Delivery worker unavailable");
        let results = vec![Some(Attempted::local(RcptOutcome::Deferred(reply))); n];
        Report { results, signal: Signal::Answered, hosts: Vec::new() }
    }
}

struct PoolConfig {
    limits: Arc<Limits>,
    worker: usize,
    idle_timeout: std::time::Duration,
    /// Where connection caps are shared with other nodes, if they are.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

fn run_thread(
    backend: Backend,
    settings: Arc<Live<Settings>>,
    pool: PoolConfig,
    stop: watch::Receiver<bool>,
    legacy: Arc<super::legacy::LegacyHosts>,
    jobs: mpsc::UnboundedReceiver<Job>,
) {
    if backend == Backend::Uring {
        match tokio_uring::Runtime::new(&tokio_uring::builder()) {
            Ok(rt) => return rt.block_on(serve::<Uring>(settings, pool, stop, legacy, jobs)),
            // The probe passed, so this is a limit (memory, rings): this worker does without.
            Err(e) => tracing::error!(worker = pool.worker, error = %e, "io_uring setup failed; this worker uses epoll"),
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return tracing::error!(worker = pool.worker, error = %e, "delivery worker could not start"),
    };
    tokio::task::LocalSet::new().block_on(&rt, serve::<Epoll>(settings, pool, stop, legacy, jobs));
}

/// A worker's loop: take jobs, run each as a task of its own, keep the pool tidy.
async fn serve<T: Transport>(
    settings: Arc<Live<Settings>>,
    pool: PoolConfig,
    stop: watch::Receiver<bool>,
    legacy: Arc<super::legacy::LegacyHosts>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let shed: Arc<Notify> = pool.limits.shed_signal(pool.worker);
    let cluster = pool.cluster.clone();
    let pool = Pool::new(pool.limits.clone(), settings.clone(), pool.worker, pool.idle_timeout);
    let sender = std::rc::Rc::new(Sender::<T> { pool, settings, stop, legacy, cluster });
    let mut reap = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { return };
                let sender = sender.clone();
                tokio::task::spawn_local(async move {
                    let attempted = sender.send(&job.targets, job.slot, &job.bucket, job.msg, job.policy, job.hop).await;
                    let _ = job.done.send(attempted);
                });
            }
            _ = reap.tick() => sender.pool.reap(),
            _ = shed.notified() => sender.pool.shed(),
        }
    }
}
