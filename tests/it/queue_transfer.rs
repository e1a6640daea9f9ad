//! `sluice queue transfer`: a node's queue handed over to another Sluice over SMTP, each
//! message leaving only once the other node took it; 1,000 queued messages arrive exactly
//! once, with their DSN parameters and MT-PRIORITY; a node that refuses keeps the mail here,
//! bounced to nobody.

use std::time::{Duration, Instant};

use crate::common::{Daemon, TestRelay, sluice_status};
use crate::peers::dest::{Behavior, Dest};

/// The node being retired: its next hop is a port nobody listens on, so everything waits.
fn retiring_node(dir: &std::path::Path) -> Daemon {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    Daemon::spawn(dir, &format!("delivery:\n  smarthost: \"[127.0.0.1]:{port}\"\n  retry: [1h]\n"), &[])
}

/// Waits until `n` messages are queued and the first has been tried (the others may be
/// under way, or waiting for the destination's suspension to end).
fn wait_all_deferred(node: &Daemon, n: usize) {
    let config = sluice::config::Config::load(&node.config_path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let q = sluice::admin::queue_list(&config).unwrap();
        if q.len() == n && q.iter().any(|e| e.recipients.iter().all(|r| r.attempts >= 1)) {
            return;
        }
        assert!(Instant::now() < deadline, "{} of {n} queued", q.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_thousand_queued_messages_move_to_the_other_node_exactly_once_with_their_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let node = retiring_node(dir.path());
    let mut c = crate::common::Client::connect(node.addr);
    let r = c.send_lines(
        "MAIL FROM:<app@sender.test> MT-PRIORITY=3 ENVID=order-7 RET=HDRS",
        &["RCPT TO:<first@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;first@dest.test"],
        "Subject: m0\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250);
    for i in 1..1000 {
        assert_eq!(c.send_mail("app@sender.test", &[&format!("r{i}@dest.test")], &format!("Subject: m{i}\r\n\r\nx\r\n")).code, 250);
    }
    wait_all_deferred(&node, 1000);

    // The other node keeps what it receives (delivery paused) so it can be counted.
    let other = TestRelay::with_config("hostname: node2.test\ndelivery: { paused: true }\n");
    let to = other.addr.to_string();
    let config = node.config_path.to_str().unwrap();
    let (code, out, err) = sluice_status(&["queue", "transfer", "--config", config, "--to", &to, "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("1000 message(s) transferred to "), "{out}");
    let here = sluice::admin::queue_list(&sluice::config::Config::load(&node.config_path).unwrap()).unwrap();
    assert!(here.is_empty(), "left here: {}", here.len());
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.lines().filter(|l| l.contains("delivered")).count() >= 1000, "{log}");

    let arrived = other.stop_and_read();
    assert_eq!(arrived.len(), 1000, "each message exactly once");
    let mut subjects: Vec<String> =
        arrived.iter().map(|(_, body)| body.lines().find(|l| l.starts_with("Subject: ")).unwrap().to_string()).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 1000);
    let (env, _) = arrived.iter().find(|(e, _)| e.recipients[0].mailbox.to_string() == "first@dest.test").unwrap();
    assert_eq!(env.params.priority, Some(3));
    assert_eq!(env.params.envid.as_deref(), Some("order-7"));
    assert_eq!(env.params.ret, Some(sluice::smtp::address::Ret::Hdrs));
    let rcpt = &env.recipients[0].params;
    assert_eq!(rcpt.orcpt.as_deref(), Some("rfc822;first@dest.test"), "ORCPT went along: {rcpt:?}");
    let notify = rcpt.notify.expect("NOTIFY went along");
    assert!(notify.success && notify.failure && !notify.delay && !notify.never, "{notify:?}");
}

#[test]
fn a_node_that_refuses_keeps_the_mail_here_and_nobody_gets_a_bounce() {
    let dir = tempfile::tempdir().unwrap();
    let node = retiring_node(dir.path());
    let mut c = crate::common::Client::connect(node.addr);
    assert_eq!(c.send_mail("app@sender.test", &["ok@dest.test", "no@dest.test"], "Subject: two\r\n\r\nx\r\n").code, 250);
    assert_eq!(c.send_mail("app@sender.test", &["no@dest.test"], "Subject: one\r\n\r\nx\r\n").code, 250);
    wait_all_deferred(&node, 2);
    let rule = |to: &str, _: usize| if to.contains("no@dest.test") { "550 5.7.1 not here" } else { "250 2.1.5 ok" }.to_string();
    let refusing = Dest::start(Behavior { rcpt: std::sync::Arc::new(rule), ..Behavior::default() });
    let config = node.config_path.to_str().unwrap();
    let (code, out, err) = sluice_status(&["queue", "transfer", "--config", config, "--to", &refusing.addr.to_string(), "--all"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("0 message(s) transferred"), "{out}");
    assert_eq!(out.matches("kept ").count(), 2, "{out}");
    assert!(out.contains("no@dest.test: 550 5.7.1 not here"), "{out}");
    let got = refusing.received();
    assert_eq!(got.len(), 1, "only ok@ was taken");
    assert_eq!(got[0].rcpts, ["ok@dest.test"]);
    // What was taken is gone; what was refused waits here, untried: no bounce, no attempt.
    let q = sluice::admin::queue_list(&sluice::config::Config::load(&node.config_path).unwrap()).unwrap();
    let waiting: Vec<(&str, u32)> = q
        .iter()
        .flat_map(|e| e.recipients.iter().filter(|r| r.state == sluice::spool::RecipientState::Queued))
        .map(|r| (r.address.as_str(), r.attempts))
        .collect();
    assert_eq!(waiting.iter().map(|w| w.0).collect::<Vec<_>>(), ["no@dest.test", "no@dest.test"], "{q:?}");
    let refused = q.iter().flat_map(|e| e.recipients.iter().filter(|r| r.state == sluice::spool::RecipientState::Queued));
    assert!(refused.clone().all(|r| r.attempts == 1 && r.history.len() == 1), "the refusal was no attempt: {q:?}");
    assert!(q.iter().all(|e| e.from == "app@sender.test"), "no bounce was queued: {q:?}");

    let (code, _, err) = sluice_status(&["queue", "transfer", "--config", config, "--to", "nowhere", "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not HOST:PORT"), "{err}");
}
