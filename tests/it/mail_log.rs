//! The mail log, read as an operator reads it: one line per event, a session id on every line
//! of a session, refusals with their code, enhanced code, reason and addresses, and fields no
//! client value can add to.

use std::collections::BTreeMap;

use crate::common::{Client, Daemon};

/// An event line's name and fields, splitting as a log reader would: at spaces outside
/// double quotes, `\` escaping inside them.
fn parse(line: &str) -> (String, BTreeMap<String, Vec<String>>) {
    let rest = line.splitn(3, ' ').nth(2).expect("time and level first");
    let mut tokens = Vec::new();
    let (mut token, mut quoted, mut escaped) = (String::new(), false, false);
    for c in rest.chars() {
        match c {
            _ if escaped => {
                token.push(c);
                escaped = false;
            }
            '\\' if quoted => {
                token.push(c);
                escaped = true;
            }
            '"' => {
                token.push(c);
                quoted = !quoted;
            }
            ' ' if !quoted => tokens.push(std::mem::take(&mut token)),
            _ => token.push(c),
        }
    }
    tokens.push(token);
    let mut name = Vec::new();
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in tokens {
        match t.split_once('=') {
            Some((k, v)) if fields.contains_key(k) || !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
                fields.entry(k.to_string()).or_default().push(v.to_string())
            }
            _ if fields.is_empty() => name.push(t),
            _ => panic!("a token that is not a field after the fields began: {t:?} in {line:?}"),
        }
    }
    (name.join(" "), fields)
}

fn field<'a>(fields: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    let values = fields.get(key).unwrap_or_else(|| panic!("no {key} in {fields:?}"));
    assert_eq!(values.len(), 1, "{key} given {} times: {fields:?}", values.len());
    &values[0]
}

fn events(log: &str, name: &str) -> Vec<BTreeMap<String, Vec<String>>> {
    log.lines().map(parse).filter(|(n, _)| n == name).map(|(_, f)| f).collect()
}

/// From `ip` (not a trusted network): EHLO, MAIL FROM `from`, a RCPT for each of `to`, each
/// refused 550 (relaying denied), QUIT.
fn refused_rcpts(daemon: &Daemon, ip: &str, from: &str, to: &[&str]) {
    let mut c = Client::connect_from(daemon.addr, ip);
    c.cmd("EHLO scanner.lan");
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).code, 250);
    for rcpt in to {
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).code, 550, "{rcpt}");
    }
    c.cmd("QUIT");
}

#[test]
fn a_refused_relay_attempt_is_one_line_with_its_session_code_reason_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(dir.path(), "", &[]);
    // The second recipient tries to look like more fields.
    refused_rcpts(&daemon, "127.0.0.2", "scanner@lan.test", &["boss@example.com", "\"x code=250 reason=ok\\\"\"@example.com"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = daemon.log_text();
    let connect = events(&log, "connect").into_iter().find(|f| field(f, "client").starts_with("127.0.0.2:")).expect(&log);
    let session = field(&connect, "session").to_string();
    assert_eq!(field(&connect, "mode"), "relay");
    let refused: Vec<_> = events(&log, "refused").into_iter().filter(|f| field(f, "session") == session).collect();
    assert_eq!(refused.len(), 2, "{log}");
    let first = &refused[0];
    assert_eq!(
        [field(first, "client"), field(first, "command"), field(first, "code"), field(first, "dsn"), field(first, "reason")],
        ["127.0.0.2", "rcpt", "550", "5.7.1", "relay_denied"]
    );
    assert_eq!((field(first, "from"), field(first, "to")), ("<scanner@lan.test>", "<boss@example.com>"));
    assert!(field(first, "text").contains("Relaying denied"), "{first:?}");
    // The hostile recipient is one quoted value; the line has each field once.
    let second = &refused[1];
    assert_eq!(field(second, "to"), r#""<\"x code=250 reason=ok\\\"\"@example.com>""#);
    assert_eq!(field(second, "code"), "550");
    let disconnect = events(&log, "disconnect").into_iter().find(|f| field(f, "session") == session).expect(&log);
    assert_eq!(field(&disconnect, "end"), "closed");
    assert_eq!(field(&disconnect, "commands"), "5");
    assert_eq!(field(&disconnect, "verbs"), "ehlo:1,mail:1,rcpt:2,quit:1");
    assert_eq!(field(&disconnect, "messages"), "0");
    // A refusal at 5xx is a warning (journald priority 4), not an error.
    let line = log.lines().find(|l| l.contains(" refused ") && l.contains(&session)).unwrap();
    assert!(line.split(' ').nth(1) == Some("warning"), "{line}");
}

#[test]
fn an_accepted_message_names_its_session_and_no_line_has_a_module_path() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(dir.path(), "", &[]);
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("app@lan.test", &["user@example.com"], "Subject: hi\r\n\r\nbody\r\n").code, 250);
    c.cmd("QUIT");
    drop(c);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = daemon.log_text();
    let accepted = events(&log, "accepted").pop().expect(&log);
    let session = field(&accepted, "session");
    assert_eq!(field(&accepted, "from"), "<app@lan.test>");
    assert_eq!(field(&accepted, "identity"), "trusted-network");
    let disconnect = events(&log, "disconnect").into_iter().find(|f| field(f, "session") == session).expect(&log);
    assert_eq!(field(&disconnect, "messages"), "1");
    assert_eq!(field(&disconnect, "verbs"), "ehlo:1,mail:1,rcpt:1,data:1,quit:1");
    for line in log.lines() {
        assert!(!line.contains("sluice::"), "a module path: {line}");
        let level = line.split(' ').nth(1).unwrap_or("");
        assert!(["info", "warning", "error"].contains(&level), "{line}");
    }
    assert!(log.lines().any(|l| l.ends_with(" info ready version=0.1.0")), "{log}");
}

#[test]
fn a_flood_of_refusals_from_one_address_is_cut_to_twenty_lines() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(dir.path(), "", &[]);
    let victims: Vec<String> = (0..10).map(|i| format!("victim{i}@example.com")).collect();
    let victims: Vec<&str> = victims.iter().map(String::as_str).collect();
    for _ in 0..4 {
        refused_rcpts(&daemon, "127.0.0.3", "p@x.test", &victims);
    }
    // Another address still gets its lines.
    refused_rcpts(&daemon, "127.0.0.4", "o@x.test", &["someone@example.com"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = daemon.log_text();
    let from = |ip: &str| events(&log, "refused").iter().filter(|f| field(f, "client") == ip).count();
    assert_eq!(from("127.0.0.3"), 20, "{log}");
    assert_eq!(from("127.0.0.4"), 1, "{log}");
    // Every session still gets its connect and disconnect lines.
    assert_eq!(events(&log, "disconnect").iter().filter(|f| field(f, "client").starts_with("127.0.0.3:")).count(), 4);
}

#[test]
fn under_the_journal_lines_carry_syslog_priorities_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().to_path_buf();
    // systemd names the stream it connected in JOURNAL_STREAM (device:inode): here the log file.
    let daemon = Daemon::spawn_with(dir.path(), "", &[], |command| {
        let log = std::fs::read_dir(&logs).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("daemon-")).unwrap();
        let meta = log.metadata().unwrap();
        command.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    });
    let mut c = Client::connect_from(daemon.addr, "127.0.0.2");
    c.cmd("EHLO x");
    c.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(c.cmd("RCPT TO:<b@example.com>").code, 550);
    c.cmd("QUIT");
    drop(c);
    // A config the daemon refuses to reload: an error.
    std::fs::write(&daemon.config_path, "listeners: [").unwrap();
    let pid = daemon.child.id() as i32;
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = daemon.log_text();
    assert!(log.lines().any(|l| l.starts_with("<6>connect session=")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("<4>refused session=")), "{log}");
    assert!(log.lines().any(|l| l.starts_with("<3>reload refused")), "{log}");
    assert!(log.lines().all(|l| l.starts_with('<')), "{log}");
}

#[test]
fn grep_for_the_queue_id_tells_the_message_story_with_relay_delays_and_dsn() {
    use crate::peers::dest::{Behavior, Dest};
    use crate::peers::dns::{TestDns, Zone};
    let dest = Dest::start(Behavior::default());
    // The first MX refuses connections (nothing listens on 127.0.0.9), the second takes it.
    let zone = Zone::default()
        .mx("dest.test", &[(10, "mx1.dest.test"), (20, "mx2.dest.test")])
        .a("mx1.dest.test", "127.0.0.9")
        .a("mx2.dest.test", "127.0.0.1");
    let dns = TestDns::start(zone);
    let dir = tempfile::tempdir().unwrap();
    let extra = delivering_with_accounting(&dns, dest.addr.port());
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let mut c = Client::connect(daemon.addr);
    let reply = c.send_mail("app@lan.test", &["user@dest.test"], "Subject: story\r\n\r\nbody\r\n");
    assert_eq!(reply.code, 250);
    let queue_id = queue_id_of(&reply);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let story = loop {
        let log = daemon.log_text();
        let story: Vec<String> = log.lines().filter(|l| l.contains(&format!("queue_id={queue_id} "))).map(str::to_string).collect();
        if story.iter().any(|l| l.contains(" delivery ")) || std::time::Instant::now() > deadline {
            break story;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Shown with --nocapture: the lines an operator's grep finds.
    eprintln!("{}", story.join("\n"));
    let names: Vec<String> = story.iter().map(|l| parse(l).0).collect();
    assert_eq!(names, ["accepted", "destination host failed; trying the next", "delivery"], "{story:#?}");
    let failed = parse(&story[1]).1;
    assert_eq!(field(&failed, "relay"), format!("mx1.dest.test[127.0.0.9]:{}", dest.addr.port()));
    assert!(field(&failed, "error").contains("refused"), "{failed:?}");
    let delivery = parse(&story[2]).1;
    assert_eq!(field(&delivery, "relay"), format!("mx2.dest.test[127.0.0.1]:{}", dest.addr.port()));
    assert_eq!(
        [
            field(&delivery, "to"),
            field(&delivery, "status"),
            field(&delivery, "dsn"),
            field(&delivery, "code"),
            field(&delivery, "attempt")
        ],
        ["<user@dest.test>", "delivered", "2.0.0", "250", "1"]
    );
    assert_eq!(field(&delivery, "tls"), "none");
    assert!(field(&delivery, "size").parse::<u64>().unwrap() > 20, "{delivery:?}");
    let delay: f64 = field(&delivery, "delay").parse().unwrap();
    let parts: Vec<f64> = field(&delivery, "delays").split('/').map(|p| p.parse().unwrap()).collect();
    assert_eq!(parts.len(), 3, "{delivery:?}");
    assert!((parts.iter().sum::<f64>() - delay).abs() < 0.03, "the parts add up to the delay: {delivery:?}");
    // The same story in the accounting file: `jq 'select(.queue_id == "ID")'`.
    let records = records_when(&dir.path().join("acct.jsonl"), |t| t.contains("\"event\":\"delivered\""));
    let mine: Vec<&str> = records.lines().filter(|l| l.contains(&format!("\"queue_id\":\"{queue_id}\""))).collect();
    eprintln!("{}", mine.join("\n"));
    let events: Vec<String> =
        mine.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string()).collect();
    assert_eq!(events, ["received", "delivered"], "{records}");
    let record: serde_json::Value = serde_json::from_str(mine[1]).unwrap();
    let ms = record["delay_ms"].as_u64().unwrap();
    assert_eq!(format!("{}.{:02}", ms / 1000, ms % 1000 / 10), field(&delivery, "delay"), "the line and the record say the same delay");
}

/// The accounting file's text once `ready` holds for it (records are written in batches).
/// Config for a daemon delivering through `dns` to `port`, with accounting to acct.jsonl.
fn delivering_with_accounting(dns: &crate::peers::dns::TestDns, port: u16) -> String {
    format!("{}delivery:\n  port: {port}\n  retry: [1s]\naccounting: {{ path: acct.jsonl }}\n", dns.config())
}

/// The queue id a 250 to the final dot ends with.
fn queue_id_of(reply: &crate::common::Reply) -> String {
    reply.text().rsplit(' ').next().unwrap().trim().to_string()
}

fn records_when(path: &std::path::Path, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if ready(&text) {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "{}: {text}", path.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_hostile_reply_from_the_next_hop_cannot_add_a_field_to_the_delivery_line() {
    use std::sync::Arc;

    use crate::peers::dest::{Behavior, Dest};
    let hostile = "550 5.1.1 no\" status=delivered dsn=2.0.0 code=250 x=\\";
    let dest = Dest::start(Behavior { rcpt: Arc::new(move |_, _| hostile.into()), ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "delivery:\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\" }}\n  retry: [1h]\naccounting: {{ path: acct.jsonl }}\n",
        dest.addr.port()
    );
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    assert_eq!(Client::connect(daemon.addr).send_mail("", &["user@dest.test"], "x\r\n").code, 250);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let line = loop {
        let log = daemon.log_text();
        if let Some(l) = log.lines().find(|l| parse(l).0 == "delivery") {
            break l.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let fields = parse(&line).1;
    for key in ["status", "dsn", "code"] {
        assert_eq!(fields.get(key).map(Vec::len), Some(1), "{key} twice in {line}");
    }
    assert_eq!([field(&fields, "status"), field(&fields, "dsn"), field(&fields, "code")], ["bounced", "5.1.1", "550"], "{line}");
    assert!(field(&fields, "reply").contains("status=delivered"), "the text stays inside its value: {line}");
    assert!(!fields.contains_key("x"), "{line}");
    let records = records_when(&dir.path().join("acct.jsonl"), |t| t.contains("\"event\":\"bounced\""));
    let bounced: serde_json::Value =
        records.lines().map(|l| serde_json::from_str(l).unwrap()).find(|r: &serde_json::Value| r["event"] == "bounced").unwrap();
    assert_eq!((bounced["code"].as_u64(), bounced["dsn"].as_str()), (Some(550), Some("5.1.1")));
    assert!(bounced["reply"].as_str().unwrap().contains("no\" status=delivered"), "{bounced}");
}

#[test]
fn a_tls_session_and_a_tls_delivery_log_their_version_and_cipher() {
    use crate::common::{TestRelay, tls_auth_yaml};
    use crate::peers::dns::{TestDns, Zone};
    // The next hop offers STARTTLS (a Sluice of its own, keeping what it receives).
    let destination = TestRelay::with_tls("hostname: dest.test\n");
    let dns = TestDns::start(Zone::default().mx("dest.test", &[(10, "mx.dest.test")]).a("mx.dest.test", "127.0.0.1"));
    let dir = tempfile::tempdir().unwrap();
    let delivery = delivering_with_accounting(&dns, destination.addr.port());
    let daemon = Daemon::spawn(dir.path(), &tls_auth_yaml(dir.path(), &delivery), &[]);
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.cmd("EHLO client.test").code, 250);
    assert_eq!(c.cmd("STARTTLS").code, 220);
    c.start_tls(&dir.path().join("cert.pem"));
    let reply = c.send_mail("app@lan.test", &["user@dest.test"], "Subject: tls story\r\n\r\nbody\r\n");
    assert_eq!(reply.code, 250);
    let queue_id = queue_id_of(&reply);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let log = loop {
        let log = daemon.log_text();
        if log.lines().any(|l| l.contains(" delivery ") && l.contains(&queue_id)) {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "no delivery line:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // Intake: the handshake is a line of the session, and the accepted line names the TLS.
    let accepted = events(&log, "accepted").into_iter().find(|f| field(f, "queue_id") == queue_id).unwrap();
    let session = field(&accepted, "session");
    let established = events(&log, "TLS established");
    assert_eq!(established.len(), 1, "{log}");
    assert_eq!(field(&established[0], "session"), session);
    assert_eq!(field(&established[0], "version"), "TLSv1.3");
    assert!(field(&established[0], "cipher").starts_with("TLS13_"), "{established:?}");
    assert!(field(&accepted, "tls").contains("TLSv1.3"), "{accepted:?}");
    // Delivery: version and cipher of the outbound session, on the line and in the record.
    let line = events(&log, "delivery").into_iter().find(|f| field(f, "queue_id") == queue_id).unwrap();
    assert_eq!(field(&line, "status"), "delivered", "{line:?}");
    let tls = field(&line, "tls").trim_matches('"').to_string();
    let (version, cipher) = tls.split_once('/').unwrap_or_else(|| panic!("version and cipher: {tls:?}"));
    assert_eq!(version, "TLSv1.3");
    assert!(cipher.starts_with("TLS13_"), "{tls}");
    let records = records_when(&dir.path().join("acct.jsonl"), |t| t.contains("\"event\":\"delivered\""));
    let delivered: serde_json::Value =
        serde_json::from_str(records.lines().find(|l| l.contains("\"event\":\"delivered\"")).unwrap()).unwrap();
    assert_eq!(delivered["tls"].as_str(), Some(tls.as_str()), "{records}");
    let received: serde_json::Value = serde_json::from_str(records.lines().next().unwrap()).unwrap();
    assert!(received["tls"].as_str().unwrap().starts_with("TLSv1.3"), "{records}");
}
