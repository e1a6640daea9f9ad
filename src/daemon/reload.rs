//! Reload: read the config file again, load everything it names (TLS files, users, DNS,
//! trust anchors, the smarthost password) and bind the listeners it adds; only when all of
//! that worked is anything changed, so a config that fails anywhere leaves the running one
//! whole. Sessions and deliveries under way finish under the settings they started with.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::listeners::Listeners;
use crate::admin::protocol::ReloadReport;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::intake::IntakeContext;
use crate::live::Live;
use crate::queue::runner::Runner;

pub struct Reloader {
    pub(super) path: Option<PathBuf>,
    pub(super) config: Arc<Live<Config>>,
    pub(super) intake: Arc<Live<IntakeContext>>,
    pub(super) delivery: Option<Arc<Delivery>>,
    pub(super) runner: Option<Arc<Runner>>,
    pub(super) listeners: Arc<Mutex<Listeners>>,
    pub(super) accounting: Arc<crate::accounting::Accounting>,
}

/// Settings only a restart puts in force: what was opened, bound or started once (the spool,
/// the metrics listener, the admin and sendmail sockets, the delivery threads). The running
/// values are kept in the new config, so it says what is in force; the keys are reported.
fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<String> {
    let mut keys = Vec::new();
    macro_rules! keep {
        ($($field:ident).+) => {
            if format!("{:?}", running.$($field).+) != format!("{:?}", new.$($field).+) {
                keys.push(stringify!($($field).+).replace(' ', ""));
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!(spool);
    keep!(http_listeners);
    keep!(metrics.address);
    keep!(metrics.queue_census_interval);
    keep!(admin.socket);
    keep!(admin.group);
    keep!(sendmail.socket);
    keep!(sendmail.maildrop);
    keep!(delivery.paused);
    keep!(delivery.io);
    keep!(delivery.workers);
    keep!(delivery.idle_timeout);
    keep!(cluster);
    keys
}

impl Reloader {
    /// Serves reload requests (the admin socket's, SIGHUP's) one at a time until the senders
    /// are gone or shutdown begins.
    pub async fn serve(
        self,
        mut requests: mpsc::Receiver<oneshot::Sender<Result<ReloadReport, String>>>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let answer = tokio::select! {
                r = requests.recv() => match r { Some(a) => a, None => return },
                _ = shutdown.changed() => return,
            };
            let _ = answer.send(self.reload().await);
        }
    }

    /// One reload, told to systemd (RELOADING=1 ... READY=1) and logged.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        crate::notify::notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", crate::notify::monotonic_usec()));
        let result = self.try_reload().await;
        match &result {
            Ok(r) => tracing::info!(
                listeners = r.listeners.join(",").as_str(),
                added = r.added.join(",").as_str(),
                removed = r.removed.join(",").as_str(),
                changed = r.changed.join(",").as_str(),
                needs_restart = r.needs_restart.join(",").as_str(),
                "config reloaded"
            ),
            Err(e) => tracing::error!(error = %e, "reload refused; the running config stays in force"),
        }
        crate::notify::notify("READY=1");
        result
    }

    async fn try_reload(&self) -> Result<ReloadReport, String> {
        let path = self.path.clone().ok_or("the daemon was not started from a config file")?;
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await.map_err(|e| e.to_string())?;
        let mut new = loaded.map_err(|e| e.to_string())?;
        let running = self.config.get();
        let needs_restart = keep_restart_only(&running, &mut new);
        let new = Arc::new(new);
        // Everything that can fail, before anything changes.
        let intake = self.intake.get().next(new.clone())?;
        if let Some(settings) = new.accounting.settings() {
            crate::accounting::check(&settings)?;
        }
        let mut listeners = self.listeners.lock().await;
        let plan = listeners.prepare(&new.listeners).await?;
        let own = listeners.planned(&plan);
        let delivery = match &self.delivery {
            Some(d) => Some((d, d.prepare(new.clone(), own.clone())?)),
            None => None,
        };
        // In force from here on; nothing below fails.
        self.intake.replace(intake);
        let changes = listeners.commit(plan);
        if let Some((d, prepared)) = delivery {
            d.install(prepared);
        }
        if let Some(runner) = &self.runner {
            runner.reconfigure(&new);
        }
        self.accounting.configure(new.accounting.settings());
        self.config.replace(new);
        let names = |v: &[std::net::SocketAddr]| v.iter().map(ToString::to_string).collect();
        Ok(ReloadReport {
            listeners: names(&listeners.addresses()),
            added: names(&changes.added),
            removed: names(&changes.removed),
            changed: names(&changes.changed),
            needs_restart,
        })
    }
}
