//! The intake listeners as the config lists them, kept in step by reloads: a listener the new
//! config adds is bound, one it drops stops accepting (its sessions go on to their end), one
//! whose settings changed serves new connections with them. Binding comes first and can fail;
//! only once every new address is bound does anything change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ListenerConfig;
use crate::intake::{self, IntakeContext};
use crate::live::Live;

/// One listener that accepts.
struct Open {
    /// As the config names it (port 0 for "any"), to match it with the next config.
    configured: SocketAddr,
    bound: SocketAddr,
    /// Its settings for the next connection; dropping the sender stops the listener.
    spec: watch::Sender<ListenerConfig>,
    task: JoinHandle<()>,
    /// False while accepting fails (out of file descriptors, say).
    accepting: Arc<AtomicBool>,
}

pub struct Listeners {
    open: Vec<Open>,
    intake: Arc<Live<IntakeContext>>,
    shutdown: watch::Receiver<bool>,
}

/// A reload's listeners, bound but not yet serving.
pub struct Plan {
    wanted: Vec<(ListenerConfig, Place)>,
}

enum Place {
    /// The open listener at this index takes the new settings.
    Kept(usize),
    New(TcpListener),
}

/// What a commit changed, by bound address.
#[derive(Debug, Default)]
pub struct Changes {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    pub changed: Vec<SocketAddr>,
}

async fn bind(spec: &ListenerConfig) -> Result<TcpListener, String> {
    TcpListener::bind(spec.address).await.map_err(|e| format!("listen on {}: {e}", spec.address))
}

impl Listeners {
    /// Binds every listener of `specs` (none is serving yet: see [`Listeners::start`]).
    pub async fn bind(
        specs: &[ListenerConfig],
        intake: Arc<Live<IntakeContext>>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(Listeners, Plan), String> {
        let mut wanted = Vec::new();
        for spec in specs {
            wanted.push((spec.clone(), Place::New(bind(spec).await?)));
        }
        Ok((Listeners { open: Vec::new(), intake, shutdown }, Plan { wanted }))
    }

    /// Binds what `specs` adds to the listeners open now; changes nothing.
    pub async fn prepare(&self, specs: &[ListenerConfig]) -> Result<Plan, String> {
        let mut taken = vec![false; self.open.len()];
        let mut wanted = Vec::new();
        for spec in specs {
            let kept = self.open.iter().enumerate().position(|(i, o)| !taken[i] && o.configured == spec.address);
            let place = match kept {
                Some(i) => {
                    taken[i] = true;
                    Place::Kept(i)
                }
                None => Place::New(bind(spec).await?),
            };
            wanted.push((spec.clone(), place));
        }
        Ok(Plan { wanted })
    }

    /// Puts a plan in force; cannot fail.
    pub fn commit(&mut self, plan: Plan) -> Changes {
        let mut changes = Changes::default();
        let mut old: Vec<Option<Open>> = std::mem::take(&mut self.open).into_iter().map(Some).collect();
        for (spec, place) in plan.wanted {
            match place {
                Place::Kept(i) => {
                    let Some(open) = old[i].take() else { continue };
                    if format!("{:?}", *open.spec.borrow()) != format!("{spec:?}") {
                        changes.changed.push(open.bound);
                        tracing::info!(address = %open.bound, mode = spec.mode.name(), "listener settings changed");
                        open.spec.send_replace(spec);
                    }
                    self.open.push(open);
                }
                Place::New(listener) => {
                    let Ok(bound) = listener.local_addr() else { continue };
                    tracing::info!(address = %bound, mode = spec.mode.name(), "listening");
                    let configured = spec.address;
                    let (tx, rx) = watch::channel(spec);
                    let accepting = Arc::new(AtomicBool::new(true));
                    let task = tokio::spawn(intake::serve(listener, rx, self.intake.clone(), self.shutdown.clone(), accepting.clone()));
                    changes.added.push(bound);
                    self.open.push(Open { configured, bound, spec: tx, task, accepting });
                }
            }
        }
        for open in old.into_iter().flatten() {
            tracing::info!(address = %open.bound, "listener closed; its sessions finish");
            changes.removed.push(open.bound);
            drop(open.spec); // The accept loop sees its settings gone and returns.
        }
        changes
    }

    /// Bound addresses, in config order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.open.iter().map(|o| o.bound).collect()
    }

    /// Each listener's address and whether it accepts (its loop runs and its last accept worked).
    pub fn status(&self) -> Vec<(String, bool)> {
        self.open.iter().map(|o| (o.bound.to_string(), !o.task.is_finished() && o.accepting.load(Ordering::Relaxed))).collect()
    }

    /// The addresses a plan would leave bound, in config order.
    pub fn planned(&self, plan: &Plan) -> Vec<SocketAddr> {
        plan.wanted
            .iter()
            .filter_map(|(_, place)| match place {
                Place::Kept(i) => Some(self.open[*i].bound),
                Place::New(l) => l.local_addr().ok(),
            })
            .collect()
    }

    /// Waits for every accept loop to end (after shutdown).
    pub async fn join(&mut self) {
        for open in self.open.drain(..) {
            let _ = open.task.await;
        }
    }
}
