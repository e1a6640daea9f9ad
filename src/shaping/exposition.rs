//! Destinations on the metrics port, bounded: every configured rule by its name, the
//! busiest [`TOP`] recipient domains by theirs, and the rest added up as `other`. Rendered
//! from the live state at each scrape, so an idle domain that was pruned leaves no series.

use super::DestinationState;
use crate::metrics::text::Gauge;

/// Recipient-domain destinations shown by name; the rest are `other`.
pub const TOP: usize = 20;

/// A series family: name, help, and its value for one destination.
type Family = (&'static str, &'static str, fn(&DestinationState) -> f64);

pub fn render(states: &[DestinationState], out: &mut String) {
    let (mut named, mut domains): (Vec<&DestinationState>, Vec<&DestinationState>) = states.iter().partition(|s| s.ruled);
    // Suspended first (what an operator looks for), then by activity.
    domains.sort_by_key(|s| (s.suspended.is_none(), std::cmp::Reverse(s.connections + s.waiting), s.name.clone()));
    let rest = domains.split_off(domains.len().min(TOP));
    named.extend(domains);
    named.sort_by(|a, b| a.name.cmp(&b.name));
    let other = |f: fn(&DestinationState) -> f64| rest.iter().map(|s| f(s)).sum::<f64>();
    let families: [Family; 3] = [
        (
            "sluice_destination_suspended",
            "1 while the destination is suspended (it throttled us, or could not be reached); for other, how many are",
            |s| if s.suspended.is_some() { 1.0 } else { 0.0 },
        ),
        ("sluice_destination_connections", "Outbound connections open to the destination", |s| s.connections as f64),
        ("sluice_destination_waiting", "Messages waiting in memory for the destination's message rate", |s| s.waiting as f64),
    ];
    for (name, help, value) in families {
        let mut g = Gauge::new(out, name, help);
        for s in &named {
            g.labelled(&[("destination", &s.name)], value(s));
        }
        if !rest.is_empty() {
            g.labelled(&[("destination", "other")], other(value));
        }
    }
    let mut policies = Gauge::new(out, "sluice_destination_tls_policy", "1 for the TLS policy the destination's latest attempt applied");
    for s in named.iter().filter(|s| s.tls_policy.is_some()) {
        policies.labelled(&[("destination", &s.name), ("policy", s.tls_policy.unwrap_or_default())], 1.0);
    }
    let mut total = Gauge::new(out, "sluice_destinations_suspended", "Destinations suspended now, all of them");
    total.value(states.iter().filter(|s| s.suspended.is_some()).count() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, connections: usize, suspended: bool, ruled: bool) -> DestinationState {
        DestinationState {
            name: name.into(),
            message_rate: None,
            waiting: 0,
            connections,
            max_connections: 10,
            suspended: suspended.then(|| (0, "throttled".into())),
            ruled,
            tls_policy: (connections % 2 == 1).then_some("mta-sts-enforce"),
        }
    }

    #[test]
    fn rules_and_the_busiest_domains_by_name_the_rest_as_other() {
        let mut states: Vec<DestinationState> = (0..100).map(|n| state(&format!("d{n:03}.test"), n, false, false)).collect();
        states.push(state("quiet-but-suspended.test", 0, true, false));
        states.push(state("gmail", 0, false, true));
        let mut out = String::new();
        render(&states, &mut out);
        let series: Vec<&str> = out.lines().filter(|l| l.starts_with("sluice_destination_connections{")).collect();
        assert_eq!(series.len(), TOP + 2, "{out}"); // 20 domains, the rule, other
        assert!(out.contains("sluice_destination_suspended{destination=\"quiet-but-suspended.test\"} 1"), "{out}");
        assert!(out.contains("sluice_destination_connections{destination=\"gmail\"} 0"));
        assert!(out.contains("sluice_destination_connections{destination=\"d099.test\"} 99"));
        assert!(!out.contains("d000.test"), "the idlest are only in other");
        // 100 domains minus the 19 busiest named (the suspended one took a place): 0..=80.
        assert!(out.contains("sluice_destination_connections{destination=\"other\"} 3240"), "{out}");
        assert!(out.contains("sluice_destinations_suspended 1"));
        assert!(out.contains("sluice_destination_tls_policy{destination=\"d099.test\",policy=\"mta-sts-enforce\"} 1"), "{out}");
        assert!(!out.contains("sluice_destination_tls_policy{destination=\"d098.test\""), "none applied yet: {out}");
    }

    #[test]
    fn few_destinations_have_no_other() {
        let mut out = String::new();
        render(&[state("a.test", 1, false, false)], &mut out);
        assert!(!out.contains("destination=\"other\""), "{out}");
    }
}
