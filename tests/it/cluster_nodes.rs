//! Three Sluice processes share one destination's limits on Debian's redis-server: 30
//! messages/s and 6 connections in all. Over 30 s the sink sees the shared rate within 5% and
//! never more than 6 connections, without opening connections again and again; with Redis
//! stopped each node keeps to its share of the rate (10/s) and `sluice queue summary` says so. A slow sink makes the connection cap
//! bind; a node killed while it holds leases keeps them only until they expire, and the others
//! then use the whole cap.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{inject, inject_each, rate_from, spawn_node, wait_log};
use crate::common::Daemon;
use crate::peers::dest::{Behavior, Dest};
use crate::peers::redis::Redis;

fn node(dir: &Path, name: &str, sink: &Dest, redis_port: u16, rate: &str) -> Daemon {
    node_with(dir, name, sink, redis_port, rate, "")
}

/// With `more` (YAML) at the top level.
fn node_with(dir: &Path, name: &str, sink: &Dest, redis_port: u16, rate: &str, more: &str) -> Daemon {
    let delivery = format!("{rate}  max_connections_per_destination: 6\n");
    let cluster = format!("  nodes: 3\n  lease_ttl: 3s\n  redis: {{ url: \"redis://127.0.0.1:{redis_port}\" }}\n");
    spawn_node(dir, name, sink, &delivery, &cluster, more)
}

/// The most connections the sink has seen open at once, and how many it took in all.
fn connections(sink: &Dest) -> (usize, usize) {
    let state = sink.state.lock().unwrap();
    (state.max_open, state.connections)
}

/// A sink that takes `ms` to answer each final dot: a connection carries at most 1000/ms
/// messages a second.
fn slow_sink(ms: u64) -> Dest {
    Dest::start(Behavior {
        after_dot: std::sync::Arc::new(move |_| {
            std::thread::sleep(Duration::from_millis(ms));
            "250 2.0.0 accepted".into()
        }),
        ..Behavior::default()
    })
}

fn summary(node: &Daemon) -> String {
    let (ok, out, err) = crate::common::sluice(&["queue", "summary", "--config", node.config_path.to_str().unwrap()]);
    assert!(ok, "{err}");
    out
}

#[test]
fn three_nodes_keep_to_one_shared_rate_and_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::metrics_endpoint::free_port();
    let mut redis = Redis::start(port);
    // 100 ms a message: 30/s needs about 3 of the 6 connections.
    let sink = slow_sink(100);
    let metrics = crate::metrics_endpoint::free_port();
    let rate = "  message_rate: \"30/s\"\n";
    let nodes: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|&n| {
            let more = if n == "a" { format!("metrics: {{ address: \"127.0.0.1:{metrics}\" }}\n") } else { String::new() };
            node_with(dir.path(), n, &sink, port, rate, &more)
        })
        .collect();
    for n in &nodes {
        wait_log(n, "the limits are shared again");
    }
    assert!(summary(&nodes[0]).contains("cluster: node a of 3, limits shared on redis://127.0.0.1:"), "{}", summary(&nodes[0]));
    assert!(crate::metrics_endpoint::scrape(metrics).contains("sluice_cluster_redis_up 1"));

    // 300 each at once: 900 at 30/s is 30 s (90/s, 10 s, if each kept its own rate).
    let all: Vec<&Daemon> = nodes.iter().collect();
    inject_each(&all, 300, &["a", "b", "c"]);
    let shared = rate_from(&sink, 0, 900);
    let (max_open, opened) = connections(&sink);
    eprintln!("shared: {shared:.2} messages/s, at most {max_open} connections open, {opened} opened in all");
    assert!((28.5..=31.5).contains(&shared), "the sink saw {shared:.2} messages/s, not the shared 30/s");
    assert!(max_open <= 6, "{max_open} connections were open at once");
    assert!(opened <= 12, "{opened} connections were opened for 900 messages: leases churn");

    // Redis gone: 10/s and 2 connections each, still about 30/s in all. Connections open
    // beyond a node's share close as their transactions end.
    redis.stop();
    {
        let mut state = sink.state.lock().unwrap();
        state.max_open = state.open;
    }
    inject_each(&all, 100, &["d", "e", "f"]);
    // From 20 messages after the stop on: each node's own share starts with its burst.
    let fallback = rate_from(&sink, 920, 1200);
    let (max_open, opened_in_all) = connections(&sink);
    eprintln!("fallback: {fallback:.2} messages/s, at most {max_open} connections open, {} opened", opened_in_all - opened);
    assert!((28.5..=31.5).contains(&fallback), "without Redis the sink saw {fallback:.2} messages/s");
    let scraped = crate::metrics_endpoint::scrape(metrics);
    assert!(scraped.contains("sluice_cluster_redis_up 0"), "{scraped}");
    assert!(scraped.contains("sluice_cluster_leases_held "), "{scraped}");
    let text = summary(&nodes[1]);
    assert!(text.contains("unreachable since") && text.contains("each node keeps to 1/3 of every shared limit"), "{text}");
    for n in &nodes {
        assert_eq!(n.log_text().matches("Redis cannot be reached").count(), 1, "{}", n.log_text());
    }
    let received = sink.wait_for(1200, Duration::from_secs(30));
    let mut rcpts: Vec<String> = received.iter().flat_map(|r| r.rcpts.clone()).collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), 1200, "each message delivered once");
}

#[test]
fn a_killed_nodes_leases_expire_and_the_others_take_the_whole_cap() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::metrics_endpoint::free_port();
    let redis = Redis::start(port);
    // 400 ms a message and no rate: each node alone would open its own 6 connections.
    let sink = slow_sink(400);
    let mut nodes: Vec<Daemon> = ["a", "b", "c"].iter().map(|n| node(dir.path(), n, &sink, port, "")).collect();
    for n in &nodes {
        wait_log(n, "the limits are shared again");
    }
    let key = format!("sluice:conns:{{addr:{}}}", sink.addr);

    // c alone first: it takes the whole cap.
    inject(&nodes[2], 30, "c");
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.state.lock().unwrap().open < 6 {
        assert!(Instant::now() < deadline, "c never opened 6 connections");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(redis.cli(&["ZCARD", &key]), "6", "c holds six leases");
    nodes[2].kill9();
    let killed = Instant::now();
    // Its connections closed with it; its leases stay until they expire (3 s after their
    // last renewal, at most 1 s before the kill).
    std::thread::scope(|s| {
        s.spawn(|| inject(&nodes[0], 40, "a"));
        s.spawn(|| inject(&nodes[1], 40, "b"));
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(killed.elapsed()));
        assert_eq!(sink.state.lock().unwrap().open, 0, "a and b wait: c's leases fill the cap");
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while sink.state.lock().unwrap().open < 6 {
        assert!(Instant::now() < deadline, "a and b never took the whole cap");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waited = killed.elapsed();
    eprintln!("a and b had all 6 connections {:.1} s after c was killed", waited.as_secs_f64());
    assert!(waited >= Duration::from_secs(2), "c's leases held the cap until they expired ({waited:?})");
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.received().iter().filter(|r| !r.rcpts[0].starts_with('c')).count() < 80 {
        assert!(Instant::now() < deadline, "a and b did not deliver their 80");
        std::thread::sleep(Duration::from_millis(50));
    }
    let max_open = sink.state.lock().unwrap().max_open;
    assert!(max_open <= 6, "{max_open} connections were open at once");
    let text = summary(&nodes[0]);
    assert!(text.contains("limits shared on"), "{text}");
}

#[test]
fn a_clean_stop_gives_the_nodes_leases_back_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::metrics_endpoint::free_port();
    let redis = Redis::start(port);
    let sink = slow_sink(300);
    let mut a = node(dir.path(), "a", &sink, port, "");
    wait_log(&a, "the limits are shared again");
    let key = format!("sluice:conns:{{addr:{}}}", sink.addr);
    inject(&a, 6, "a");
    sink.wait_for(6, Duration::from_secs(20));
    // Delivered; the connections wait in the pool, each with its lease.
    let held: u32 = redis.cli(&["ZCARD", &key]).parse().unwrap();
    assert!(held >= 1, "a holds its pooled connections' leases");
    let stopped = std::process::Command::new("kill").args(["-TERM", &a.child.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    let _ = a.child.wait();
    // Given back as it stopped, not left to expire (lease_ttl 3s).
    assert_eq!(redis.cli(&["ZCARD", &key]), "0", "{}", a.log_text());
}

#[test]
fn a_421_one_node_meets_holds_the_destination_on_the_other_two() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::metrics_endpoint::free_port();
    let _redis = Redis::start(port);
    let sink = Dest::start(Behavior { greeting: "421 4.7.0 too many connections, slow down".into(), ..Behavior::default() });
    let nodes: Vec<Daemon> = ["a", "b", "c"].iter().map(|n| node(dir.path(), n, &sink, port, "")).collect();
    for n in &nodes {
        wait_log(n, "the limits are shared again");
    }
    inject(&nodes[0], 1, "a");
    wait_log(&nodes[0], "destination suspended");
    let connections = sink.connections();
    // Told to Redis right after the log line.
    std::thread::sleep(Duration::from_millis(300));
    for (n, tag) in nodes[1..].iter().zip(["b", "c"]) {
        inject(n, 1, tag);
        let config = sluice::config::Config::load(&n.config_path).unwrap();
        let r = crate::common::wait_for_recipient(&config, "never considered its message", |_, r| r.last_reply.is_some());
        assert!(r.last_reply.as_deref().unwrap().contains("suspended by node a"), "{r:?}");
        assert_eq!(r.attempts, 0, "postponed, not attempted: {r:?}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.connections(), connections, "b and c did not connect while a's suspension holds");
}
