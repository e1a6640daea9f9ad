//! Nodes sharing a destination's message rate on a real redis-server (Debian's package): two
//! Sluice processes relay to one sink limited to 10 messages/s in all; the sink sees the
//! shared rate, not twice it. With Redis stopped, each node keeps to its share (5/s) and says
//! so once; with Redis back, the rate is shared again. A 421 one node meets suspends the
//! destination on the other too; a sender's intake rate counts its messages on both; a Redis
//! that takes connections and never answers, or refuses writes, leaves each node its share;
//! the limits are shared over TLS and on a Redis Cluster too.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Client, Daemon};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::redis::Redis;

fn node(dir: &Path, name: &str, sink: &Dest, redis_port: u16) -> Daemon {
    node_with(dir, name, sink, redis_port, "")
}

fn node_with(dir: &Path, name: &str, sink: &Dest, redis_port: u16, more: &str) -> Daemon {
    node_on(dir, name, sink, &format!("{{ url: \"redis://127.0.0.1:{redis_port}\" }}"), more)
}

/// A node whose `cluster.redis` is `redis` (YAML).
fn node_on(dir: &Path, name: &str, sink: &Dest, redis: &str, more: &str) -> Daemon {
    spawn_node(dir, name, sink, "  message_rate: \"10/s\"\n", &format!("  nodes: 2\n  redis: {redis}\n"), more)
}

/// Node `name` relaying to `sink`, with `delivery` and `cluster` lines added to those
/// sections and `more` at the top level.
pub(crate) fn spawn_node(dir: &Path, name: &str, sink: &Dest, delivery: &str, cluster: &str, more: &str) -> Daemon {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let extra = format!(
        "hostname: {name}.test\ndelivery:\n  smarthost: \"[127.0.0.1]:{}\"\n  retry: [1s]\n{delivery}cluster:\n  node: {name}\n{cluster}{more}",
        sink.addr.port()
    );
    Daemon::spawn(&dir, &extra, &[])
}

/// Both nodes, started and sharing their limits.
fn pair(dir: &Path, sink: &Dest, redis_port: u16) -> (Daemon, Daemon) {
    let (a, b) = (node(dir, "a", sink, redis_port), node(dir, "b", sink, redis_port));
    wait_log(&a, "the limits are shared again");
    wait_log(&b, "the limits are shared again");
    (a, b)
}

/// `n` messages into each node at once, tagged `tags[i]` for `nodes[i]`.
pub(crate) fn inject_each(nodes: &[&Daemon], n: usize, tags: &[&str]) {
    std::thread::scope(|s| {
        for (node, tag) in nodes.iter().zip(tags) {
            s.spawn(move || inject(node, n, tag));
        }
    });
}

pub(crate) fn wait_log(node: &Daemon, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.log_text().contains(text) {
        assert!(Instant::now() < deadline, "no {text:?} in {}", node.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn inject(node: &Daemon, n: usize, tag: &str) {
    let mut c = Client::connect(node.addr);
    for i in 0..n {
        assert_eq!(c.send_mail("app@sender.test", &[&format!("{tag}{i}@dest.test")], "Subject: x\r\n\r\nx\r\n").code, 250);
    }
}

/// Messages per second the sink took, from the first of `from` on to the last.
pub(crate) fn rate_from(sink: &Dest, from: usize, total: usize) -> f64 {
    let got = sink.wait_for(total, Duration::from_secs(60));
    let mut at: Vec<Instant> = got.iter().map(|m| m.at).collect();
    at.sort();
    let span = at[total - 1].duration_since(at[from]).as_secs_f64();
    (total - 1 - from) as f64 / span
}

#[test]
fn two_nodes_share_one_rate_and_keep_to_their_share_while_redis_is_away() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::metrics_endpoint::free_port();
    let mut redis = Redis::start(port);
    let sink = Dest::start(Behavior::default());
    let (a, b) = pair(dir.path(), &sink, redis.port);

    // 50 messages each, at once: 10/s in all, so about 10 s (20/s, 5 s, if each kept its own).
    inject_each(&[&a, &b], 50, &["a", "b"]);
    let shared = rate_from(&sink, 0, 100);
    assert!((8.5..=11.5).contains(&shared), "the sink saw {shared:.1} messages/s, not the shared 10/s");

    // Redis gone: each node keeps to 5/s, still about 10/s in all, and says so once.
    redis.stop();
    inject_each(&[&a, &b], 30, &["c", "d"]);
    let fallback = rate_from(&sink, 102, 160);
    assert!((8.0..=12.0).contains(&fallback), "without Redis the sink saw {fallback:.1}/s");
    for n in [&a, &b] {
        let log = n.log_text();
        assert_eq!(log.matches("Redis cannot be reached").count(), 1, "{log}");
    }

    // Back: shared again.
    let _redis = Redis::start(port);
    std::thread::sleep(Duration::from_millis(1500));
    inject(&a, 10, "e");
    wait_log(&a, "Redis answers (a PING was answered)");
    let received = sink.wait_for(170, Duration::from_secs(30));
    assert_eq!(received.len(), 170, "every message delivered once");
}

#[test]
fn a_suspension_one_node_meets_holds_the_destination_on_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(crate::metrics_endpoint::free_port());
    // The sink throttles: a 421 greeting suspends the destination at once.
    let sink = Dest::start(Behavior { greeting: "421 4.7.0 too many connections, slow down".into(), ..Behavior::default() });
    let (a, b) = (node(dir.path(), "a", &sink, redis.port), node(dir.path(), "b", &sink, redis.port));
    wait_log(&a, "the limits are shared again");
    wait_log(&b, "the limits are shared again");
    inject(&a, 1, "a");
    wait_log(&a, "destination suspended");
    let connections = sink.state.lock().unwrap().connections;
    assert!(connections >= 1, "a tried the sink");

    // Told to Redis right after the log line.
    std::thread::sleep(Duration::from_millis(300));
    inject(&b, 1, "b");
    let config = sluice::config::Config::load(&b.config_path).unwrap();
    let r = crate::common::wait_for_recipient(&config, "b never considered its message", |_, r| r.last_reply.is_some());
    assert!(r.last_reply.as_deref().unwrap().contains("suspended by node a"), "{r:?}");
    assert_eq!(r.attempts, 0, "postponed, not attempted: {r:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.state.lock().unwrap().connections, connections, "b did not connect while a's suspension holds");
}

/// MAIL's reply code on a new session (the message sent when it is 250).
fn mail_code(node: &Daemon) -> u16 {
    let mut c = Client::connect(node.addr);
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    let code = c.cmd("MAIL FROM:<app@sender.test>").code;
    if code == 250 {
        assert_eq!(c.cmd("RCPT TO:<x@dest.test>").code, 250);
        assert_eq!(c.cmd("DATA").code, 354);
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n");
        assert_eq!(c.reply().code, 250);
    }
    // The count reaches Redis in the background.
    std::thread::sleep(Duration::from_millis(200));
    code
}

#[test]
fn a_senders_intake_rate_counts_its_messages_on_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(crate::metrics_endpoint::free_port());
    let sink = Dest::start(Behavior::default());
    let limit = "limits: { messages_per_ip: \"4/min burst 4\" }\n";
    let a = node_with(dir.path(), "a", &sink, redis.port, limit);
    let b = node_with(dir.path(), "b", &sink, redis.port, limit);
    wait_log(&a, "the limits are shared again");
    wait_log(&b, "the limits are shared again");
    // Four in all is the burst: two on each node.
    for node in [&a, &a, &b, &b] {
        assert_eq!(mail_code(node), 250);
    }
    // b learnt the total (4) when it counted its second: its own third is refused, which
    // alone it would have taken.
    assert_eq!(mail_code(&b), 451, "b refuses: the sender used its burst on both nodes");
    // a last heard of 2; it takes one more, learns the total, and refuses the next.
    assert_eq!(mail_code(&a), 250);
    assert_eq!(mail_code(&a), 451);
}

#[test]
fn a_redis_that_takes_connections_and_never_answers_leaves_each_node_its_share() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts and says nothing, ever.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming() {
            held.push(stream);
        }
    });
    let sink = Dest::start(Behavior::default());
    let a = node(dir.path(), "a", &sink, port);
    inject(&a, 12, "a");
    // Half of 10/s, nobody waiting on the silent Redis.
    let alone = rate_from(&sink, 1, 12);
    assert!((4.0..=6.0).contains(&alone), "the sink saw {alone:.1}/s, not this node's share of 5/s");
    assert_eq!(a.log_text().matches("Redis cannot be reached").count(), 1, "{}", a.log_text());
}

/// Two nodes inject 20 messages each and the sink sees the shared 10/s.
fn share_one_rate(a: &Daemon, b: &Daemon, sink: &Dest) {
    wait_log(a, "the limits are shared again");
    wait_log(b, "the limits are shared again");
    inject_each(&[a, b], 20, &["a", "b"]);
    let shared = rate_from(sink, 0, 40);
    assert!((8.5..=11.5).contains(&shared), "the sink saw {shared:.1} messages/s, not the shared 10/s");
    // Shared, not each node's share of it: Redis answered every command.
    for n in [a, b] {
        let log = n.log_text();
        assert!(!log.contains("Redis refused") && !log.contains("Redis cannot be reached"), "{log}");
    }
}

#[test]
fn nodes_share_their_limits_on_a_redis_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::peers::test_ca::TestCa::new(dir.path());
    let issued = ca.issue(dir.path(), "redis", &["127.0.0.1"], 2099);
    let redis = Redis::start_tls(crate::metrics_endpoint::free_port(), &issued.cert, &issued.key);
    let sink = Dest::start(Behavior::default());
    let url = format!("{{ url: \"rediss://127.0.0.1:{}\", ca_file: \"{}\" }}", redis.port, ca.pem_path.display());
    let (a, b) = (node_on(dir.path(), "a", &sink, &url, ""), node_on(dir.path(), "b", &sink, &url, ""));
    share_one_rate(&a, &b, &sink);

    // Without the CA, the system's roots do not know the server's certificate: no Redis.
    let untrusted = format!("{{ url: \"rediss://127.0.0.1:{}\" }}", redis.port);
    let c = node_on(dir.path(), "c", &sink, &untrusted, "");
    wait_log(&c, "Redis cannot be reached");
    assert!(!c.log_text().contains("the limits are shared again"), "{}", c.log_text());
}

#[test]
fn nodes_share_their_limits_on_a_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| crate::metrics_endpoint::free_port()).collect();
    let servers: Vec<Redis> = ports.iter().map(|&p| Redis::start_cluster_node(p, dir.path())).collect();
    crate::peers::redis::create_cluster(&servers.iter().collect::<Vec<_>>());
    let sink = Dest::start(Behavior::default());
    // One names a node by the scheme, the other two nodes by a list.
    let one = format!("{{ url: \"redis+cluster://127.0.0.1:{}\" }}", ports[0]);
    let list = format!("{{ url: [\"redis://127.0.0.1:{}\", \"redis://127.0.0.1:{}\"] }}", ports[1], ports[2]);
    let (a, b) = (node_on(dir.path(), "a", &sink, &one, ""), node_on(dir.path(), "b", &sink, &list, ""));
    share_one_rate(&a, &b, &sink);
    // The rate's key and the connection cap's lease set live on the cluster.
    let keys: String = servers.iter().map(|s| s.cli(&["--scan"])).collect::<Vec<_>>().join("\n");
    assert!(keys.contains("sluice:rate:dest.test"), "{keys}");
    let summary = crate::common::sluice(&["queue", "summary", "--config", b.config_path.to_str().unwrap()]).1;
    assert!(summary.contains(&format!("limits shared on redis://127.0.0.1:{} (and 1 more)", ports[1])), "{summary}");
}

#[test]
fn a_redis_that_refuses_writes_keeps_each_node_to_its_share_and_the_summary_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A replica of a master that is gone, as after a failover: it answers, and refuses every
    // write (READONLY).
    let gone = crate::metrics_endpoint::free_port().to_string();
    let redis = Redis::start_with(crate::metrics_endpoint::free_port(), &["--replicaof", "127.0.0.1", &gone]);
    let sink = Dest::start(Behavior::default());
    let (a, b) = pair(dir.path(), &sink, redis.port);
    inject_each(&[&a, &b], 15, &["a", "b"]);
    // Each at its share, 5/s: about 10/s in all, as while Redis is away.
    let rate = rate_from(&sink, 2, 30);
    assert!((8.0..=12.0).contains(&rate), "the sink saw {rate:.1}/s");
    // The connections granted at the node's share are kept: Redis never came back, it
    // only refuses (one connection per message would mean each was closed after its first).
    let opened = sink.connections();
    assert!(opened <= 10, "{opened} connections for 30 messages");
    for n in [&a, &b] {
        let log = n.log_text();
        assert_eq!(log.matches("Redis refused a command").count(), 1, "logged once a minute: {log}");
        assert!(log.contains("read only replica"), "{log}");
        assert!(!log.contains("Redis cannot be reached"), "it answers: not away: {log}");
    }
    let summary = crate::common::sluice(&["queue", "summary", "--config", a.config_path.to_str().unwrap()]).1;
    assert!(summary.contains("refuses commands (") && summary.contains("kept to 1/2 of the limit"), "{summary}");
}
