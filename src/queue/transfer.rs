//! Handing queued messages over to another MTA (`sluice queue transfer --to HOST:PORT`), so a
//! node can be retired without losing or doubling mail: each message is relayed over SMTP
//! with its envelope as it stands (the recipients still queued, DSN parameters, MT-PRIORITY,
//! REQUIRETLS) and its recipients count as delivered, and leave the queue, only once the other
//! node has answered 250 for them. Anything else leaves the message as it was, untried: a
//! refusal by the other node says nothing about the mail, so it bounces nobody.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::attempt::{Gathered, due_groups};
use super::runner::Runner;
use crate::delivery::Hop;
use crate::delivery::route::Target;
use crate::smtp::client::{Message, RcptOutcome, TlsPolicy};
use crate::spool::RecipientState;

/// Messages handed over at once: each waits for the other node's answer and our commit.
const AT_ONCE: usize = 8;
/// How long a transfer waits for attempts under way on selected messages to end.
const WAIT_FOR_ATTEMPTS: std::time::Duration = std::time::Duration::from_secs(30);
/// How long one transfer request starts new messages: its answer must come while the
/// operator's command waits.
const STARTING_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a transfer goes.
#[derive(Debug, Clone)]
pub struct Destination {
    /// As the operator wrote it: the name TLS verifies when REQUIRETLS asks for it.
    pub host: String,
    pub targets: Vec<Target>,
    /// Log in with `delivery.smarthost_auth`'s credentials.
    pub login: bool,
}

/// What a transfer did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferReport {
    /// Handed over whole: gone from this queue.
    pub moved: Vec<String>,
    /// Still here (some of their recipients may have gone), and why.
    pub kept: Vec<Kept>,
    /// Claimed but not started: the minute for starting new messages was over.
    #[serde(skip)]
    pub unstarted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub id: String,
    pub why: String,
}

/// `HOST:PORT` or `[IPV6]:PORT`.
pub fn parse_destination(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("{text:?} is not HOST:PORT");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) || (host.contains(':') && !text.starts_with('[')) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

impl Runner {
    /// Hands `queue_ids` over to `to` for `operator`. A message being delivered right now is
    /// handed over once that attempt is over (kept if that takes longer than 30 s).
    pub async fn transfer(self: &Arc<Self>, queue_ids: Vec<String>, to: &Destination, operator: &str) -> TransferReport {
        let mut report = TransferReport::default();
        let started = tokio::time::Instant::now();
        let (deadline, starting_until) = (started + WAIT_FOR_ATTEMPTS, started + STARTING_FOR);
        let mut pending = queue_ids;
        loop {
            let (claimed, busy) = self.claim(pending);
            self.transfer_claimed(claimed, to, operator, starting_until, &mut report).await;
            if busy.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let why = "being delivered the whole time: transfer it again afterwards";
                report.kept.extend(busy.into_iter().map(|id| Kept { id, why: why.into() }));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            pending = busy;
        }
        for id in &report.unstarted {
            self.leave_flight(id).await;
        }
        self.notify.notify_one();
        report.moved.sort();
        report.kept.sort_by(|a, b| a.id.cmp(&b.id));
        report
    }

    /// Hands over messages this transfer has claimed, a few at once.
    async fn transfer_claimed(
        self: &Arc<Self>,
        claimed: Vec<String>,
        to: &Destination,
        operator: &str,
        starting_until: tokio::time::Instant,
        report: &mut TransferReport,
    ) {
        let mut work = claimed.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            if tokio::time::Instant::now() >= starting_until {
                report.unstarted.extend(work.by_ref());
            }
            while running.len() < AT_ONCE {
                let Some(id) = work.next() else { break };
                let (runner, to, operator) = (self.clone(), to.clone(), operator.to_string());
                running.spawn(async move {
                    let outcome = runner.transfer_one(&id, &to, &operator).await;
                    runner.leave_flight(&id).await;
                    (id, outcome)
                });
            }
            let Some(done) = running.join_next().await else { break };
            match done {
                Ok((id, Ok(()))) => report.moved.push(id),
                Ok((id, Err(why))) => report.kept.push(Kept { id, why }),
                Err(e) => tracing::error!(error = %e, "a transfer task failed"),
            }
        }
    }

    /// One message: Ok once every queued recipient was taken by the other node and that is
    /// recorded here; otherwise why not (what was taken is recorded all the same).
    async fn transfer_one(&self, queue_id: &str, to: &Destination, operator: &str) -> Result<(), String> {
        let (env, body) = match self.load(queue_id).await {
            Ok(Some(loaded)) => loaded,
            Ok(None) => return Err("no longer queued".into()),
            Err(e) => return Err(format!("reading the spool: {e}")),
        };
        if env.held {
            return Err("held: release it first".into());
        }
        let config = self.config();
        let groups = due_groups(&env, &config, u64::MAX);
        if groups.is_empty() {
            return Err("no recipient left to deliver".into());
        }
        // What delivery would require of any next hop for this message, required here too.
        let tls_only = env.params.requiretls || groups.keys().any(|(_, tls_only)| *tls_only);
        let policy = match (tls_only, config.delivery.tls) {
            (true, _) | (_, crate::config::OutboundTls::Required) => TlsPolicy::Required,
            (_, crate::config::OutboundTls::Opportunistic) => TlsPolicy::Opportunistic,
            (_, crate::config::OutboundTls::None) => TlsPolicy::Never,
        };
        let delivery = self.delivery();
        let port = to.targets.first().map_or(25, |t| t.addr.port());
        let bucket = delivery.shaper().bucket(&format!("[{}]:{port}", to.host), &to.targets);
        let hop = Hop { login: to.login, implicit_tls: false, observe: false };
        let queued: Vec<usize> = (0..env.recipients.len()).filter(|&i| env.recipients[i].state == RecipientState::Queued).collect();
        let mut gathered = Gathered { operator: Some(operator.to_string()), ..Gathered::default() };
        let mut why_not = None;
        for chunk in queued.chunks(bucket.max_recipients.max(1)) {
            let msg = Message {
                from: env.from.clone(),
                params: env.params.clone(),
                recipients: chunk.iter().map(|&i| (env.recipients[i].mailbox.clone(), env.recipients[i].params.clone())).collect(),
                body: body.clone(),
            };
            let sent = delivery.send(to.targets.clone(), bucket.clone(), msg, policy, hop).await;
            for (&i, result) in chunk.iter().zip(sent.results) {
                match result {
                    Some(a) if matches!(a.outcome, RcptOutcome::Delivered(_)) => gathered.results.push((i, a)),
                    Some(a) => {
                        let reply = a.outcome.reply().map_or_else(|| "not sent".to_string(), |r| r.to_string());
                        why_not.get_or_insert_with(|| format!("{}: {reply}", env.recipients[i].mailbox));
                    }
                    None => {
                        why_not.get_or_insert_with(|| "not sent: delivery is stopping".to_string());
                    }
                }
            }
        }
        if !gathered.results.is_empty() {
            let settled = self.settle(env, gathered, &body);
            self.record(settled).await.map_err(|e| format!("the other node took it, but recording that failed: {e}"))?;
        }
        match why_not {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_host_and_port() {
        assert_eq!(parse_destination("node2.example:25"), Ok(("node2.example".into(), 25)));
        assert_eq!(parse_destination("[::1]:2525"), Ok(("::1".into(), 2525)));
        assert_eq!(parse_destination("127.0.0.1:587"), Ok(("127.0.0.1".into(), 587)));
        for bad in ["node2", "node2:", ":25", "node2:0", "node2:99999", "::1:25", "a b:25"] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
    }
}
