//! Whether this relay can do its job, for `/healthz` and `/readyz` on the metrics port: the
//! spool commits and has room, and every configured listener accepts. Pure: the daemon
//! gathers the facts ([`Facts`]), this judges them.

use serde::Serialize;

use crate::spool::Health as SpoolHealth;

/// What the daemon knows right now.
#[derive(Debug, Clone)]
pub struct Facts {
    pub spool: SpoolHealth,
    /// Listener addresses, and whether each accepts (false: its accept loop ended or its last
    /// accept failed, out of file descriptors, say).
    pub listeners: Vec<(String, bool)>,
    /// Started and not draining for shutdown.
    pub serving: bool,
}

/// The answer's body: overall status and each check, so a monitor can say which failed.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub status: &'static str,
    pub spool: &'static str,
    /// Listeners that are down (empty when all accept).
    pub listeners_down: Vec<String>,
    pub serving: bool,
}

impl Verdict {
    pub fn healthy(&self) -> bool {
        self.status == "ok"
    }
}

/// `/healthz`: 503 while the spool has failed or is low on space, or a listener is down.
pub fn health(facts: &Facts) -> Verdict {
    let spool = match facts.spool {
        SpoolHealth::Ok => "ok",
        SpoolHealth::LowSpace => "low_space",
        SpoolHealth::Failed => "failed",
    };
    let listeners_down: Vec<String> = facts.listeners.iter().filter(|(_, up)| !up).map(|(a, _)| a.clone()).collect();
    let ok = spool == "ok" && listeners_down.is_empty();
    Verdict { status: if ok { "ok" } else { "failing" }, spool, listeners_down, serving: facts.serving }
}

/// `/readyz`: healthy, and serving (a load balancer should send no mail to a relay that is
/// starting or draining).
pub fn readiness(facts: &Facts) -> Verdict {
    let mut verdict = health(facts);
    if !facts.serving {
        verdict.status = "failing";
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(spool: SpoolHealth, up: bool, serving: bool) -> Facts {
        Facts { spool, listeners: vec![("127.0.0.1:25".into(), true), ("127.0.0.1:587".into(), up)], serving }
    }

    #[test]
    fn each_failure_alone_fails_health_and_says_which() {
        assert!(health(&facts(SpoolHealth::Ok, true, true)).healthy());
        assert_eq!(health(&facts(SpoolHealth::Failed, true, true)).spool, "failed");
        assert!(!health(&facts(SpoolHealth::Failed, true, true)).healthy());
        assert!(!health(&facts(SpoolHealth::LowSpace, true, true)).healthy());
        let down = health(&facts(SpoolHealth::Ok, false, true));
        assert_eq!((down.healthy(), down.listeners_down), (false, vec!["127.0.0.1:587".to_string()]));
    }

    #[test]
    fn draining_is_healthy_but_not_ready() {
        let draining = facts(SpoolHealth::Ok, true, false);
        assert!(health(&draining).healthy());
        assert!(!readiness(&draining).healthy());
        assert!(readiness(&facts(SpoolHealth::Ok, true, true)).healthy());
    }
}
