//! Every limit and its reply code; the session goes on after each refusal.

use crate::common::{Client, TestRelay};

#[test]
fn message_size_limit_552_after_reading_the_data() {
    let relay = TestRelay::with_config("limits: { max_message_size: 2000 }\n");
    let mut c = relay.client();
    let body = "x".repeat(100) + "\r\n";
    let r = c.send_mail("a@x.test", &["b@y.test"], &body.repeat(30));
    assert_eq!((r.code, r.text()), (552, "5.3.4 Message size exceeds fixed maximum message size".into()));
    assert_eq!(c.cmd("NOOP").code, 250);
}

#[test]
fn recipient_limit_452() {
    let relay = TestRelay::with_config("limits: { max_recipients: 2 }\n");
    let mut c = relay.client();
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(c.cmd("RCPT TO:<1@y.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<2@y.test>").code, 250);
    let r = c.cmd("RCPT TO:<3@y.test>");
    assert_eq!((r.code, r.text()), (452, "4.5.3 Too many recipients".into()));
}

#[test]
fn command_line_too_long_500_and_path_limits_553() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    let r = c.cmd(&format!("NOOP {}", "x".repeat(600)));
    assert_eq!((r.code, r.text()), (500, "5.5.2 Line too long".into()));
    c.cmd("EHLO c.test");
    let r = c.cmd(&format!("MAIL FROM:<{}@x.test>", "l".repeat(65)));
    assert_eq!((r.code, r.text()), (553, "5.1.3 Local part too long".into()));
    let long_domain = vec!["d".repeat(63); 4].join(".") + ".test";
    let r = c.cmd(&format!("MAIL FROM:<a@{long_domain}>"));
    assert_eq!(r.code, 553);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> FOO=BAR").code, 555);
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> SIZE=abc").code, 501);
    assert_eq!(c.cmd("NOOP").code, 250);
}

#[test]
fn text_line_over_998_is_refused_550_5_6_0() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    let r = c.send_mail("a@x.test", &["b@y.test"], &format!("{}\r\n", "y".repeat(999)));
    assert_eq!((r.code, r.text()), (550, "5.6.0 Message line too long".into()));
    let mut c = relay.client();
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], &format!("{}\r\n", "y".repeat(998))).code, 250);
}

#[test]
fn bare_lf_in_a_command_is_500() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    c.send(b"NOOP\n");
    let r = c.reply();
    assert_eq!(r.code, 500, "{r:?}");
    assert_eq!(c.cmd("NOOP").code, 250);
}

#[test]
fn twenty_errors_close_the_session_with_421() {
    let relay = TestRelay::start();
    let mut c = relay.client();
    for _ in 0..19 {
        assert_eq!(c.cmd("BOGUS").code, 500);
    }
    let last = c.pipeline(b"BOGUS\r\n", 2);
    assert_eq!(last[0].code, 500);
    assert_eq!((last[1].code, last[1].text()), (421, "4.7.0 Too many errors, closing connection".into()));
    assert!(c.is_closed());
}

#[test]
fn http_verbs_get_421_and_close() {
    let relay = TestRelay::start();
    for req in ["GET / HTTP/1.1", "POST /x HTTP/1.1", "CONNECT a.test:443 HTTP/1.1"] {
        let mut c = relay.client();
        let r = c.cmd(req);
        assert_eq!(r.code, 421, "{req}");
        assert!(r.text().starts_with("4.7.0"));
        assert!(c.is_closed());
    }
}

#[test]
fn connection_limits_total_and_per_ip_421() {
    // Clients outside trusted_networks, no reserve.
    let relay = TestRelay::with_config(
        "trusted_networks: [\"10.0.0.0/8\"]\nlimits: { max_connections: 3, max_connections_per_ip: 2, reserved_for_trusted: 0 }\n",
    );
    let _a = relay.client();
    let _b = relay.client();
    let mut refused = Client::connect_refused(relay.addr, "127.0.0.1");
    assert_eq!(refused.0, 421);
    assert!(refused.1.starts_with("4.7.0"), "{}", refused.1);
    let _c = Client::connect_from(relay.addr, "127.0.0.3");
    refused = Client::connect_refused(relay.addr, "127.0.0.4");
    assert_eq!(refused.0, 421, "total limit");
    drop(_a);
    // The slot is released when the connection ends.
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(relay.client().greeting.code, 220);
}

/// Trusted networks have a per-IP cap of their own and a reserve of slots anonymous clients
/// cannot take; one application server may open hundreds of sessions.
#[test]
fn trusted_clients_keep_their_reserve_and_their_own_per_ip_cap() {
    let relay = TestRelay::with_config(
        "trusted_networks: [\"127.0.0.2/32\"]\nlimits: { max_connections: 10, max_connections_per_ip: 2, max_connections_per_trusted_ip: 8, reserved_for_trusted: 4 }\n",
    );
    let mut anonymous = Vec::new();
    for i in [1, 1, 3, 3, 4, 4] {
        let c = Client::connect_from(relay.addr, &format!("127.0.0.{i}"));
        assert_eq!(c.greeting.code, 220);
        anonymous.push(c);
    }
    assert_eq!(Client::connect_refused(relay.addr, "127.0.0.5").0, 421, "the rest is the trusted reserve");
    assert_eq!(Client::connect_refused(relay.addr, "127.0.0.1").0, 421, "per-IP cap");
    let trusted: Vec<Client> = (0..4).map(|_| Client::connect_from(relay.addr, "127.0.0.2")).collect();
    assert!(trusted.iter().all(|c| c.greeting.code == 220));
    assert_eq!(Client::connect_refused(relay.addr, "127.0.0.2").0, 421, "all ten in use");
}

#[test]
fn one_trusted_application_server_may_open_a_hundred_sessions() {
    // The defaults: 20 per anonymous IP, 1000 per trusted IP.
    let relay = TestRelay::start();
    let mut sessions: Vec<Client> = (0..150).map(|_| relay.client()).collect();
    assert!(sessions.iter().all(|c| c.greeting.code == 220));
    for c in sessions.iter_mut().take(3) {
        assert_eq!(c.send_mail("app@x.test", &["b@y.test"], "x\r\n").code, 250);
    }
}

/// With 80% of the slots in use, an idle anonymous session is cut after the stress timeout;
/// one with a transaction under way, or from a trusted network, is not.
#[test]
fn under_pressure_idle_anonymous_sessions_get_a_short_timeout() {
    let relay = TestRelay::with_config(
        "trusted_networks: [\"127.0.0.2/32\"]\nlimits: { max_connections: 10, max_connections_per_ip: 10, reserved_for_trusted: 0, stress_command_timeout: 1s }\n",
    );
    let mut busy = Client::connect_from(relay.addr, "127.0.0.1");
    busy.cmd("EHLO c.test");
    assert_eq!(busy.cmd("MAIL FROM:<a@x.test>").code, 250);
    let mut trusted = Client::connect_from(relay.addr, "127.0.0.2");
    let mut idle: Vec<Client> = (0..6).map(|_| Client::connect_from(relay.addr, "127.0.0.1")).collect();
    // Eight of ten in use: from the next command wait on, idle anonymous sessions get 1 s.
    for c in idle.iter_mut() {
        assert_eq!(c.cmd("NOOP").code, 250);
    }
    std::thread::sleep(std::time::Duration::from_millis(1600));
    for c in idle.iter_mut() {
        let r = c.reply();
        assert_eq!(r.code, 421, "{r:?}");
    }
    assert_eq!(trusted.cmd("NOOP").code, 250, "a trusted session keeps command_timeout");
    assert_eq!(busy.cmd("RCPT TO:<Postmaster>").code, 250, "a transaction under way keeps command_timeout");
}
