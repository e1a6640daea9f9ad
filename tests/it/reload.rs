//! Reload (`sluice reload`, SIGHUP): the config file is read again and put in force for new
//! sessions and attempts; a config that fails to load is refused and the running one kept;
//! sessions under way keep their settings.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Client, TestRelay, config_yaml, sluice_status};
use crate::peers::dest::{Behavior, Dest};

/// Rewrites the relay's config file with `extra` and asks the daemon to reload it.
pub fn reload_with(relay: &TestRelay, extra: &str) -> (i32, String, String) {
    let path = relay_config(relay);
    std::fs::write(&path, config_yaml(path.parent().unwrap(), extra)).unwrap();
    sluice_status(&["reload", "--config", path.to_str().unwrap()])
}

fn relay_config(relay: &TestRelay) -> std::path::PathBuf {
    relay.config.source.clone().expect("loaded from a file")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn an_added_listener_serves_and_a_removed_one_lets_its_sessions_finish() {
    let relay = TestRelay::start();
    let port = free_port();
    let two = format!(
        "listeners:\n  - {{ address: \"127.0.0.1:0\", mode: relay }}\n  - {{ address: \"127.0.0.1:{port}\", mode: relay, default_priority: 5 }}\n"
    );
    let (code, out, err) = reload_with(&relay, &two);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("listeners added: 127.0.0.1:{port}")), "{out}");
    let new: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut on_new = Client::connect(new);
    assert_eq!(on_new.greeting.code, 220);
    assert_eq!(on_new.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
    // The first listener was kept (same configured address), not rebound.
    assert_eq!(Client::connect(relay.addr).greeting.code, 220);

    // Removing it: new connections are refused, the open session goes on.
    let (code, out, _) = reload_with(&relay, "");
    assert_eq!(code, 0);
    assert!(out.contains(&format!("listeners removed: 127.0.0.1:{port}")), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(new).is_ok() {
        assert!(Instant::now() < deadline, "the removed listener still accepts");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(on_new.cmd("NOOP").code, 250, "an established session survives its listener");
}

#[test]
fn a_changed_trusted_network_applies_to_new_sessions_only() {
    let relay = TestRelay::start();
    let mut before = relay.client();
    before.cmd("EHLO c.test");
    let (code, out, err) = reload_with(&relay, "trusted_networks: [\"10.0.0.0/8\"]\n");
    assert_eq!(code, 0, "{out}{err}");
    let mut after = relay.client();
    after.cmd("EHLO c.test");
    after.cmd("MAIL FROM:<a@x.test>");
    let r = after.cmd("RCPT TO:<b@elsewhere.test>");
    assert_eq!((r.code, r.text().starts_with("5.7.1")), (550, true), "{r:?}");
    // The session opened before the reload keeps relaying.
    assert_eq!(before.send_mail("a@x.test", &["b@elsewhere.test"], "x\r\n").code, 250);
}

#[test]
fn a_rate_limit_added_by_a_reload_counts_from_then_on() {
    let relay = TestRelay::start();
    let (code, _, err) = reload_with(&relay, "limits: { messages_per_ip: 1/h }\n");
    assert_eq!(code, 0, "{err}");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "one\r\n").code, 250);
    let r = c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!((r.code, r.text().starts_with("4.7.0")), (451, true), "{r:?}");
    // And a connection cap lowered to one refuses a second session while one is open.
    let (code, _, err) = reload_with(&relay, "limits: { max_connections_per_trusted_ip: 1 }\n");
    assert_eq!(code, 0, "{err}");
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let mut one = relay.client();
    assert_eq!(one.greeting.code, 220);
    let (code, text) = Client::connect_refused(relay.addr, "127.0.0.1");
    assert_eq!(code, 421, "{text}");
    assert_eq!(one.cmd("NOOP").code, 250);
}

#[test]
fn a_broken_config_is_refused_and_mail_keeps_flowing() {
    let relay = TestRelay::start();
    // Invalid YAML: `sluice reload` names the key and line and asks nothing.
    let (code, _, err) = reload_with(&relay, "limits: { max_recipients: many }\n");
    assert_eq!(code, 1);
    assert!(err.contains("max_recipients") && err.contains("line"), "{err}");
    assert!(err.contains("not reloaded"), "{err}");
    // Valid YAML naming a file that is not there: the daemon refuses it, changing nothing.
    let (code, _, err) = reload_with(&relay, "auth: { users_file: /nonexistent/users }\n");
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/users"), "{err}");
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "still here\r\n").code, 250);
    let ehlo = c.cmd("EHLO c.test");
    assert!(!ehlo.text().contains("AUTH"), "the refused config's AUTH is not in force: {ehlo:?}");
}

#[test]
fn settings_only_a_restart_applies_are_named_and_kept() {
    let relay = TestRelay::start();
    let spool = relay.config.spool.path.clone();
    let other = spool.with_file_name("other-spool");
    let (code, out, err) = reload_with(&relay, &format!("spool: {{ path: {} }}\n", other.display()));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("needs a restart") && out.contains("spool"), "{out}");
    assert!(!other.exists(), "no second spool was opened");
    assert_eq!(relay.client().send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
    assert_eq!(relay.stop_and_read().len(), 1, "the message went to the spool in force");
}

fn deliveries_to(dest: &Dest, port_of_other: u16) -> String {
    format!(
        "delivery:\n  retry: [1s]\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\", \"other.test\": \"[127.0.0.1]:{port_of_other}\" }}\n",
        dest.addr.port()
    )
}

#[test]
fn a_changed_route_sends_new_attempts_to_the_new_next_hop() {
    let first = Dest::start(Behavior::default());
    let second = Dest::start(Behavior::default());
    let relay = TestRelay::with_config(&deliveries_to(&first, 9));
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@x.test", &["b@dest.test"], "Subject: one\r\n\r\nx\r\n").code, 250);
    first.wait_for(1, Duration::from_secs(20));
    let (code, _, err) = reload_with(&relay, &deliveries_to(&second, 9));
    assert_eq!(code, 0, "{err}");
    assert_eq!(c.send_mail("a@x.test", &["b@dest.test"], "Subject: two\r\n\r\nx\r\n").code, 250);
    let got = second.wait_for(1, Duration::from_secs(20));
    assert!(got[0].body.contains("Subject: two"));
    assert_eq!(first.wait_for(1, Duration::from_millis(10)).len(), 1, "nothing more went to the old route");
}

#[test]
fn a_fixed_smarthost_password_is_used_after_a_reload() {
    let smart = TestRelay::with_tls("hostname: smart.test\nlisteners:\n  - { address: \"127.0.0.1:0\", mode: submission }\n");
    let dns = crate::peers::dns::TestDns::start(crate::peers::dns::Zone::default().a("smart.test", "127.0.0.1"));
    let files = tempfile::tempdir().unwrap();
    let password = files.path().join("smarthost.password");
    std::fs::write(&password, "wrong\n").unwrap();
    let extra = format!(
        "{}delivery:\n  smarthost: \"[smart.test]:{}\"\n  smarthost_auth: {{ username: alice, password_file: {} }}\n  tls_trust: [{}]\n  retry: [1h]\n",
        dns.config(),
        smart.addr.port(),
        password.display(),
        smart.certificate().display()
    );
    let relay = TestRelay::with_config(&extra);
    assert_eq!(relay.client().send_mail("a@x.test", &["b@anywhere.test"], "x\r\n").code, 250);
    let config = relay_config(&relay);
    let config = config.to_str().unwrap();
    let reply = crate::delivery_mx::first_attempt(&relay).last_reply.unwrap_or_default();
    assert!(reply.contains("login refused: 535 5.7.8"), "{reply}");
    std::fs::write(&password, "right\n").unwrap();
    let (code, _, err) = reload_with(&relay, &extra);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = sluice_status(&["queue", "flush", "--all", "--config", config]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sluice::admin::queue_list(&smart.config).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "nothing reached the smarthost after the reload");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_and_tells_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let daemon = crate::common::Daemon::spawn_with(dir.path(), "", &[], |c| {
        c.env("NOTIFY_SOCKET", &socket_path);
    });
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    write_extra(dir.path(), "trusted_networks: [\"10.0.0.0/8\"]\n");
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    let reloading = next();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    assert_eq!(next(), "READY=1");
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(c.cmd("RCPT TO:<b@elsewhere.test>").code, 550, "the reloaded trusted networks are in force");
    // A refused reload still ends with READY=1; the daemon lives on.
    std::fs::write(dir.path().join("config.yaml"), "limits: [\n").unwrap();
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
    assert!(next().starts_with("RELOADING=1"));
    assert_eq!(next(), "READY=1");
    assert_eq!(Client::connect(daemon.addr).cmd("NOOP").code, 250);
    assert!(daemon.log_text().contains("reload refused"), "{}", daemon.log_text());
}

fn write_extra(dir: &Path, extra: &str) {
    std::fs::write(dir.join("config.yaml"), config_yaml(dir, extra)).unwrap();
}

/// SIGHUP every 50 ms while 8 clients send 800 messages through a daemon that delivers them
/// (two configs alternating: other connection caps and rates, so every reload changes the
/// pool's generation): every message accepted arrives once, no session is dropped.
#[test]
fn sighup_under_load_loses_and_duplicates_nothing() {
    const CLIENTS: usize = 8;
    const EACH: usize = 100;
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let config = |caps: usize| {
        format!(
            "delivery:\n  retry: [1s]\n  max_connections_per_destination: {caps}\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\" }}\nlimits: {{ max_connections_per_trusted_ip: {} }}\n",
            dest.addr.port(),
            CLIENTS + caps
        )
    };
    write_extra(dir.path(), &config(2));
    let daemon = crate::common::Daemon::spawn(dir.path(), "", &[]);
    let addr = daemon.addr;
    let senders: Vec<_> = (0..CLIENTS)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut accepted, mut dropped) = (0, 0);
                let mut c = Client::connect(addr);
                for i in 0..EACH {
                    let subject = format!("Subject: m-{t}-{i}\r\n\r\nbody\r\n");
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        c.send_mail("a@x.test", &["b@dest.test"], &subject).code
                    })) {
                        Ok(250) => accepted += 1,
                        _ => {
                            dropped += 1;
                            c = Client::connect(addr);
                        }
                    }
                }
                (accepted, dropped)
            })
        })
        .collect();
    let mut reloads = 0;
    while !senders.iter().all(|s| s.is_finished()) {
        write_extra(dir.path(), &config(if reloads % 2 == 0 { 4 } else { 2 }));
        unsafe { libc::kill(daemon.child.id() as i32, libc::SIGHUP) };
        reloads += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let (accepted, dropped) = senders.into_iter().map(|s| s.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let sent = Instant::now();
    let got = dest.wait_for(accepted, Duration::from_secs(60));
    eprintln!("all arrived {:?} after the last was accepted; {} connections", sent.elapsed(), dest.connections());
    std::thread::sleep(Duration::from_millis(500)); // Time for a duplicate to show.
    let got = dest.wait_for(got.len(), Duration::from_secs(1));
    let mut subjects: Vec<String> =
        got.iter().filter_map(|r| r.body.lines().find(|l| l.starts_with("Subject: m-")).map(str::to_string)).collect();
    let arrived = subjects.len();
    subjects.sort();
    subjects.dedup();
    let log = daemon.log_text();
    let reloaded = log.matches("config reloaded").count();
    eprintln!(
        "reload under load: {reloads} SIGHUPs ({reloaded} reloads logged), {accepted} accepted, {arrived} arrived, {} duplicates, {} lost, {dropped} sessions dropped",
        arrived - subjects.len(),
        accepted - subjects.len().min(accepted)
    );
    assert_eq!((accepted, dropped), (CLIENTS * EACH, 0));
    assert_eq!(subjects.len(), accepted, "lost mail");
    assert_eq!(arrived, accepted, "duplicated mail");
    assert!(reloaded >= 2 && !log.contains("reload refused"), "{log}");
}
