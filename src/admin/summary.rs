//! `sluice queue summary`: per destination, what is queued, how old the oldest is, the
//! connections open, the message rate, and whether it is suspended (until when, and why).

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
        }
    }
}

/// Counts queued recipients per destination and joins the shaper's live state.
pub fn summarize(envelopes: &[Envelope], shaper: &Shaper, states: Vec<DestinationState>) -> Vec<DestinationSummary> {
    let mut by_name: BTreeMap<String, DestinationSummary> = BTreeMap::new();
    for env in envelopes {
        let mut counted = Vec::new();
        for r in env.recipients.iter().filter(|r| r.state == RecipientState::Queued) {
            let name = shaper.destination_of(&r.mailbox.domain);
            let s = by_name.entry(name.clone()).or_insert_with(|| DestinationSummary::new(name.clone()));
            s.recipients += 1;
            if !counted.contains(&name) {
                s.messages += 1;
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
    }
    by_name.into_values().collect()
}

/// The human-readable table.
pub fn format_summary(rows: &[DestinationSummary], now: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:>8} {:>10} {:>10} {:>11} {:>14}  state",
        "destination", "messages", "recipients", "oldest", "connections", "rate"
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
        let _ = writeln!(
            out,
            "{:<32} {:>8} {:>10} {:>10} {:>11} {:>14}  {state}",
            r.destination, r.messages, r.recipients, oldest, connections, rate
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
    let envelopes = spool.list().map_err(|e| e.to_string())?;
    Ok(match delivery {
        Some(d) => summarize(&envelopes, d.shaper(), d.shaper().states(unix_now())),
        None => summarize(&envelopes, &crate::shaping::Shaper::new(config), Vec::new()),
    })
}
