//! `sluice queue summary`: per destination, what is queued and how old it is (counts by age,
//! as Postfix's qshape shows them), the connections open, the message rate, and whether it
//! is suspended (until when, and why). The spool is read one envelope at a time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::shaping::{DestinationState, Shaper};
use crate::spool::{Envelope, RecipientState};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationSummary {
    pub destination: String,
    /// Messages with a recipient queued for this destination, and those recipients.
    pub messages: usize,
    pub recipients: usize,
    /// Unix seconds of the oldest such message's arrival.
    pub oldest_arrival: Option<u64>,
    pub connections: usize,
    pub max_connections: Option<usize>,
    pub message_rate: Option<String>,
    /// Messages waiting in memory for the rate.
    pub waiting: usize,
    /// Until (unix seconds) and why.
    pub suspended: Option<(u64, String)>,
    /// Messages by age: younger than each of `AGE_BUCKETS`, and older than the last.
    #[serde(default)]
    pub ages: [usize; AGE_BUCKETS.len() + 1],
    /// The TLS policy its latest attempt applied (`dane`, `mta-sts-enforce`, `mta-sts-testing`,
    /// `required`, `opportunistic`, `none`); none before an attempt since the start.
    #[serde(default)]
    pub tls_policy: Option<String>,
}

/// The age buckets' upper bounds, in seconds, with their names.
pub const AGE_BUCKETS: [(u64, &str); 5] = [(300, "5m"), (3600, "1h"), (4 * 3600, "4h"), (86400, "1d"), (3 * 86400, "3d")];

fn bucket_of(age: u64) -> usize {
    AGE_BUCKETS.iter().position(|&(bound, _)| age < bound).unwrap_or(AGE_BUCKETS.len())
}

impl DestinationSummary {
    fn new(destination: String) -> Self {
        DestinationSummary {
            destination,
            messages: 0,
            recipients: 0,
            oldest_arrival: None,
            connections: 0,
            max_connections: None,
            message_rate: None,
            waiting: 0,
            suspended: None,
            ages: Default::default(),
            tls_policy: None,
        }
    }
}

/// Counts queued recipients per destination and joins the shaper's live state.
pub fn summarize(
    envelopes: impl IntoIterator<Item = Envelope>,
    shaper: &Shaper,
    states: Vec<DestinationState>,
    now: u64,
) -> Vec<DestinationSummary> {
    let mut by_name: BTreeMap<String, DestinationSummary> = BTreeMap::new();
    for env in envelopes {
        let mut counted = Vec::new();
        for r in env.recipients.iter().filter(|r| r.state == RecipientState::Queued) {
            let name = shaper.destination_of(&r.mailbox.domain);
            let s = by_name.entry(name.clone()).or_insert_with(|| DestinationSummary::new(name.clone()));
            s.recipients += 1;
            if !counted.contains(&name) {
                s.messages += 1;
                s.ages[bucket_of(now.saturating_sub(env.arrival))] += 1;
                s.oldest_arrival = Some(s.oldest_arrival.map_or(env.arrival, |o| o.min(env.arrival)));
                counted.push(name);
            }
        }
    }
    for st in states {
        let keep = st.connections > 0 || st.waiting > 0 || st.suspended.is_some() || by_name.contains_key(&st.name);
        if !keep {
            continue;
        }
        let s = by_name.entry(st.name.clone()).or_insert_with(|| DestinationSummary::new(st.name.clone()));
        s.connections += st.connections;
        s.max_connections = Some(st.max_connections);
        s.message_rate = st.message_rate;
        s.waiting += st.waiting;
        s.suspended = st.suspended;
        s.tls_policy = st.tls_policy.map(str::to_string);
    }
    by_name.into_values().collect()
}

/// The human-readable table.
pub fn format_summary(rows: &[DestinationSummary], now: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut ages: String = AGE_BUCKETS.iter().map(|(_, name)| format!(" {:>5}", format!("<{name}"))).collect();
    ages.push_str(&format!(" {:>5}", format!(">{}", AGE_BUCKETS[AGE_BUCKETS.len() - 1].1)));
    let _ = writeln!(
        out,
        "{:<32} {:>8} {:>10} {:>10}{ages} {:>11} {:>14} {:>15}  state",
        "destination", "messages", "recipients", "oldest", "connections", "rate", "tls"
    );
    for r in rows {
        let oldest = r.oldest_arrival.map_or("-".to_string(), |a| age(now.saturating_sub(a)));
        let connections = match r.max_connections {
            Some(max) => format!("{}/{max}", r.connections),
            None => r.connections.to_string(),
        };
        let rate = r.message_rate.clone().unwrap_or_else(|| "-".into());
        let state = match &r.suspended {
            Some((until, why)) => format!("suspended until {} ({why})", crate::message::date::rfc5322_date(*until)),
            None if r.waiting > 0 => format!("active, {} waiting for the rate", r.waiting),
            None => "active".into(),
        };
        let ages: String = r.ages.iter().map(|n| format!(" {n:>5}")).collect();
        let _ = writeln!(
            out,
            "{:<32} {:>8} {:>10} {:>10}{ages} {:>11} {:>14} {:>15}  {state}",
            r.destination,
            r.messages,
            r.recipients,
            oldest,
            connections,
            rate,
            r.tls_policy.as_deref().unwrap_or("-")
        );
    }
    out
}

fn age(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The summary from the spool and, when delivery runs, its live state.
pub(super) fn from_spool(
    spool: &dyn crate::spool::SpoolRead,
    config: &Config,
    delivery: Option<&crate::delivery::Delivery>,
) -> Result<Vec<DestinationSummary>, String> {
    let now = unix_now();
    let fallback;
    let (shaper, states) = match delivery {
        Some(d) => (d.shaper(), d.shaper().states(now)),
        None => {
            fallback = crate::shaping::Shaper::new(config);
            (&fallback, Vec::new())
        }
    };
    // One envelope at a time; the first unreadable one ends the summary with its error.
    let mut failure = None;
    let envelopes = spool.scan().map_while(|e| e.map_err(|e| failure = Some(e.to_string())).ok());
    let rows = summarize(envelopes, shaper, states, now);
    match failure {
        Some(e) => Err(format!("reading the spool: {e}")),
        None => Ok(rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::Mailbox;

    #[test]
    fn messages_are_counted_by_age_per_destination() {
        let config = Config::parse("hostname: relay.test\n", std::path::Path::new("/")).unwrap();
        let shaper = Shaper::new(&config);
        let now = 10 * 86400;
        let at = |age: u64, domain: &str| {
            Envelope::report("Q".into(), Mailbox { local: "x".into(), domain: domain.into() }, "relay.test", now - age)
        };
        let queue = vec![at(10, "a.test"), at(400, "a.test"), at(3000, "a.test"), at(5 * 86400, "a.test"), at(7200, "b.test")];
        let rows = summarize(queue, &shaper, Vec::new(), now);
        assert_eq!((rows[0].destination.as_str(), rows[0].ages), ("a.test", [1, 2, 0, 0, 0, 1]));
        assert_eq!((rows[1].destination.as_str(), rows[1].ages), ("b.test", [0, 0, 1, 0, 0, 0]));
        let table = format_summary(&rows, now);
        assert!(table.lines().next().unwrap().contains("  <5m   <1h   <4h   <1d   <3d   >3d"), "{table}");
        assert!(table.contains("     1     2     0     0     0     1"), "{table}");
    }
}
