//! Traffic shaping seen from the destination: the message rate and the connection cap hold
//! while all mail arrives; a destination that throttles is left alone for the backoff, then
//! gets the rest; `sluice queue summary` shows the state.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::TestRelay;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

fn relay(dns: &TestDns, dest: &Dest, delivery: &str) -> TestRelay {
    TestRelay::with_config(&format!("{}delivery:\n  port: {}\n  retry: [1s]\n{delivery}", dns.config(), dest.addr.port()))
}

fn dns_for(domains: &[&str]) -> TestDns {
    let mut zone = Zone::default().a("mx.provider.test", "127.0.0.1");
    for d in domains {
        zone = zone.mx(d, &[(10, "mx.provider.test")]);
    }
    TestDns::start(zone)
}

#[test]
fn message_rate_and_connection_cap_hold_across_domains_of_one_provider() {
    let dest = Dest::start(Behavior::default());
    let dns = dns_for(&["one.test", "two.test"]);
    // One rule by MX host: both domains share 10 messages/s and 2 connections.
    let relay = relay(
        &dns,
        &dest,
        "  destinations:\n    - { name: provider, mx: [\"*.provider.test\"], message_rate: \"10/s\", max_connections: 2 }\n",
    );
    let n = 40;
    std::thread::scope(|s| {
        for t in 0..4 {
            let relay = &relay;
            s.spawn(move || {
                for i in 0..n / 4 {
                    let domain = if i % 2 == 0 { "one.test" } else { "two.test" };
                    let mut c = relay.client();
                    assert_eq!(c.send_mail("a@sender.test", &[&format!("r{t}x{i}@{domain}")], "x\r\n").code, 250);
                }
            });
        }
    });
    // While they wait their turn, the summary shows the rule's rate, cap and open connections.
    let rows = sluice::admin::queue_summary(&relay.config).unwrap();
    let row = rows.iter().find(|r| r.destination == "provider").unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!((row.message_rate.as_deref(), row.max_connections), (Some("10/s"), Some(2)), "{row:?}");
    assert!(row.connections <= 2 && row.messages > 0 && row.suspended.is_none(), "{row:?}");
    let got = dest.wait_for(n, Duration::from_secs(30));
    assert_eq!(got.len(), n, "every message arrives");
    let st = dest.state.lock().unwrap();
    assert!(st.max_open <= 2, "{} connections open at once", st.max_open);
    // 10/s, no burst: message k may leave no earlier than k × 100 ms after the first. Arrival
    // can lag its token (waiting for one of the two connections), never lead it; 150 ms of
    // slack covers the first message's own lag.
    let mut at: Vec<Instant> = got.iter().map(|t| t.at).collect();
    at.sort();
    for (k, t) in at.iter().enumerate() {
        let earliest = Duration::from_millis(100 * k as u64).saturating_sub(Duration::from_millis(150));
        assert!(*t - at[0] >= earliest, "message {k} arrived {:?} after the first: faster than 10/s", *t - at[0]);
    }
    let span = at[n - 1] - at[0];
    assert!(span <= Duration::from_secs(12), "{n} messages took {span:?}");
}

#[test]
fn a_throttling_destination_is_suspended_then_resumed() {
    // The first transaction is told to slow down (450 4.7.28); later ones are accepted.
    let refusals = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (r, t) = (refusals.clone(), times.clone());
    let dest = Dest::start(Behavior {
        rcpt: Arc::new(move |_, _| {
            t.lock().unwrap().push(Instant::now());
            if r.fetch_add(1, Ordering::SeqCst) == 0 { "450 4.7.28 rate limited, slow down".into() } else { "250 2.1.5 ok".into() }
        }),
        ..Behavior::default()
    });
    let dns = dns_for(&["slow.test"]);
    let relay = relay(&dns, &dest, "  backoff: { initial: 3s, max: 10s }\n");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["first@slow.test"], "x\r\n").code, 250);
    // Wait for the refusal, then queue two more while the destination is suspended.
    let deadline = Instant::now() + Duration::from_secs(10);
    while refusals.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no attempt reached the destination");
        std::thread::sleep(Duration::from_millis(20));
    }
    for to in ["second@slow.test", "third@slow.test"] {
        assert_eq!(c.send_mail("a@sender.test", &[to], "x\r\n").code, 250);
    }
    // The summary shows the suspension and its reason while it lasts.
    let rows = sluice::admin::queue_summary(&relay.config).unwrap();
    let row = rows.iter().find(|r| r.destination == "slow.test").unwrap_or_else(|| panic!("{rows:?}"));
    let (_, why) = row.suspended.clone().unwrap_or_else(|| panic!("not suspended: {row:?}"));
    assert!(why.contains("4.7.28"), "{why}");
    assert_eq!(row.messages, 3);
    // The postponed recipients say why in `queue list`, without an attempt counted.
    let list = sluice::admin::queue_list(&relay.config).unwrap();
    let second = list.iter().flat_map(|e| &e.recipients).find(|r| r.address == "second@slow.test").unwrap();
    assert_eq!(second.attempts, 0);
    assert!(second.last_reply.as_deref().unwrap_or("").contains("suspended"), "{second:?}");
    let got = dest.wait_for(3, Duration::from_secs(20));
    assert_eq!(got.len(), 3);
    // Nothing reached the destination during the 3 s suspension (retry alone would be 1 s).
    let times = times.lock().unwrap();
    assert!(times[1] - times[0] >= Duration::from_millis(2_900), "retried {:?} after the 4.7.28", times[1] - times[0]);
    // Resumed: the summary no longer shows it suspended.
    let rows = sluice::admin::queue_summary(&relay.config).unwrap();
    assert!(rows.iter().all(|r| r.suspended.is_none()), "{rows:?}");
}

#[test]
fn an_unreachable_destination_is_suspended_after_the_configured_failures() {
    // Nothing listens on the destination port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dns = dns_for(&["down.test"]);
    let relay = TestRelay::with_config(&format!(
        "{}delivery:\n  port: {port}\n  retry: [1s]\n  backoff: {{ initial: 1h, after_failures: 2 }}\n",
        dns.config()
    ));
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@sender.test", &["x@down.test"], "x\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = sluice::admin::queue_summary(&relay.config).unwrap();
        if let Some((until, why)) = rows.iter().find(|r| r.destination == "down.test").and_then(|r| r.suspended.clone()) {
            assert!(why.starts_with("unreachable"), "{why}");
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            assert!(until >= now + 3500, "suspended for the configured hour");
            break;
        }
        assert!(Instant::now() < deadline, "not suspended after two failed attempts: {rows:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = sluice::admin::queue_list(&relay.config).unwrap();
    assert_eq!(list[0].recipients[0].attempts, 2, "two attempts, then no more while suspended");
}

#[test]
fn new_connections_follow_the_connection_rate() {
    let dest = Dest::start(Behavior::default());
    let dns = dns_for(&["conn.test"]);
    // One message per connection, so every message needs a new one: at most 4 a second.
    let relay =
        relay(&dns, &dest, "  destinations:\n    - { domains: [conn.test], connection_rate: \"4/s\", max_deliveries_per_connection: 1 }\n");
    let mut c = relay.client();
    for i in 0..6 {
        assert_eq!(c.send_mail("a@sender.test", &[&format!("r{i}@conn.test")], "x\r\n").code, 250);
    }
    dest.wait_for(6, Duration::from_secs(20));
    let st = dest.state.lock().unwrap();
    assert!(st.connections >= 6, "{} connections for 6 messages at one delivery each", st.connections);
    let opened = &st.opened;
    for (k, t) in opened.iter().enumerate() {
        let earliest = Duration::from_millis(250 * k as u64).saturating_sub(Duration::from_millis(100));
        assert!(*t - opened[0] >= earliest, "connection {k} opened {:?} after the first: faster than 4/s", *t - opened[0]);
    }
}

#[test]
fn a_rules_recipients_per_transaction_split_one_message() {
    let dest = Dest::start(Behavior::default());
    let dns = dns_for(&["split.test"]);
    let relay = relay(&dns, &dest, "  destinations:\n    - { domains: [split.test], max_recipients_per_transaction: 2 }\n");
    let mut c = relay.client();
    let rcpts: Vec<String> = (0..5).map(|i| format!("r{i}@split.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    assert_eq!(c.send_mail("a@sender.test", &rcpts, "x\r\n").code, 250);
    let got = dest.wait_for(3, Duration::from_secs(20));
    let sizes: Vec<usize> = got.iter().map(|t| t.rcpts.len()).collect();
    assert_eq!(sizes, [2, 2, 1], "transactions of at most 2 recipients");
}

#[test]
fn the_global_connection_limit_holds_across_destinations() {
    // One server reached at two addresses: two per-address caps of 5, one global cap of 1.
    let dest = Dest::start_on(
        "0.0.0.0:0",
        Behavior {
            after_dot: Arc::new(|_| {
                std::thread::sleep(Duration::from_millis(30));
                "250 2.0.0 ok".into()
            }),
            ..Behavior::default()
        },
    );
    let port = dest.addr.port();
    let dns = TestDns::start(Zone::default());
    let relay = TestRelay::with_config(&format!(
        "{}delivery:\n  retry: [1s]\n  max_connections: 1\n  routes: {{ \"one.test\": \"[127.0.0.1]:{port}\", \"two.test\": \"[127.0.0.2]:{port}\" }}\n",
        dns.config()
    ));
    std::thread::scope(|s| {
        for domain in ["one.test", "two.test"] {
            let relay = &relay;
            s.spawn(move || {
                for i in 0..5 {
                    let mut c = relay.client();
                    assert_eq!(c.send_mail("a@sender.test", &[&format!("r{i}@{domain}")], "x\r\n").code, 250);
                }
            });
        }
    });
    let got = dest.wait_for(10, Duration::from_secs(30));
    assert_eq!(got.len(), 10, "all mail arrives");
    let st = dest.state.lock().unwrap();
    assert_eq!(st.max_open, 1, "never more than the one connection delivery.max_connections allows");
}
