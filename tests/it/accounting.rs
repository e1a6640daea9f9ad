//! The accounting stream end to end: a message's records from the file a real relay writes,
//! each checked against `contrib/accounting.schema.json`, on virtual time for retries and
//! expiry; operators' actions through the `sluice` binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::clock::{Clock, ManualClock};

use crate::common::{TestRelay, sluice_status};
use crate::peers::dest::{Behavior, Dest};

/// The schema's checks this stream relies on: required fields, no unknown field, types,
/// enums and consts, and the per-event `if`/`then` requirements. Returns what is wrong.
fn schema_errors(record: &Value) -> Vec<String> {
    let schema: Value = serde_json::from_str(include_str!("../../contrib/accounting.schema.json")).unwrap();
    let mut errors = Vec::new();
    let Some(fields) = record.as_object() else { return vec!["not an object".into()] };
    let mut required: Vec<&Value> = schema["required"].as_array().unwrap().iter().collect();
    for rule in schema["allOf"].as_array().unwrap() {
        if rule["if"]["properties"]["event"]["const"] == record["event"] {
            required.extend(rule["then"]["required"].as_array().unwrap());
        }
    }
    for name in required {
        if !fields.contains_key(name.as_str().unwrap()) {
            errors.push(format!("{name} missing"));
        }
    }
    for (name, value) in fields {
        let Some(spec) = schema["properties"].get(name) else {
            errors.push(format!("{name} is not in the schema"));
            continue;
        };
        let typed = match spec["type"].as_str().unwrap() {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "array" => value.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
            other => panic!("type {other} not checked here"),
        };
        if !typed {
            errors.push(format!("{name}: {value} is not of type {}", spec["type"]));
        }
        if let Some(allowed) = spec["enum"].as_array()
            && !allowed.contains(value)
        {
            errors.push(format!("{name}: {value} not in {allowed:?}"));
        }
        if !spec["const"].is_null() && spec["const"] != *value {
            errors.push(format!("{name}: {value} is not {}", spec["const"]));
        }
        if let (Some(min), Some(n)) = (spec["minimum"].as_i64(), value.as_i64())
            && n < min
        {
            errors.push(format!("{name}: {n} below {min}"));
        }
    }
    errors
}

#[test]
fn the_schema_check_catches_what_it_should() {
    let good =
        serde_json::json!({"v": 1, "time": "t", "event": "dsn_sent", "queue_id": "Q", "sender": "", "recipient": "a@b", "report_id": "R"});
    assert!(schema_errors(&good).is_empty(), "{:?}", schema_errors(&good));
    for (field, value, why) in [
        ("event", serde_json::json!("sent"), "not in"),
        ("v", serde_json::json!(2), "is not 1"),
        ("port", serde_json::json!("25"), "not of type"),
        ("colour", serde_json::json!("red"), "not in the schema"),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        let errors = schema_errors(&bad);
        assert!(errors.iter().any(|e| e.contains(why)), "{field}: {errors:?}");
    }
    let mut bad = good.clone();
    bad.as_object_mut().unwrap().remove("report_id");
    assert_eq!(schema_errors(&bad), ["\"report_id\" missing"]);
}

/// The records written so far, once `ready` says they are all there (10 s at most).
fn records_when(relay: &TestRelay, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let path = relay.config.accounting.path.clone().expect("accounting.path");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let records: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        if ready(&records) {
            for r in &records {
                assert_eq!(schema_errors(r), Vec::<String>::new(), "{r}");
            }
            return records;
        }
        assert!(Instant::now() < deadline, "records so far:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn of<'a>(records: &'a [Value], event: &str, recipient: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event && (r["recipient"] == recipient || recipient.is_empty())).collect()
}

fn count(records: &[Value], event: &str) -> usize {
    records.iter().filter(|r| r["event"] == event).count()
}

fn relay_on(clock: &Arc<ManualClock>, dest: &Dest, delivery: &str) -> TestRelay {
    let routes = format!("  routes: {{ \"dest.test\": \"[127.0.0.1]:{0}\", \"sender.test\": \"[127.0.0.1]:{0}\" }}\n", dest.addr.port());
    TestRelay::with_clock(&format!("accounting: {{ path: acct.jsonl }}\ndelivery:\n{routes}{delivery}"), clock.clone())
}

#[test]
fn delivered_bounced_and_deferred_then_delivered_recipients_each_get_their_records() {
    let busy = Arc::new(AtomicUsize::new(0));
    let tries = busy.clone();
    let dest = Dest::start(Behavior {
        rcpt: Arc::new(move |rcpt, _| {
            if rcpt.contains("nobody@") {
                "550 5.1.1 no such user".into()
            } else if rcpt.contains("busy@") && tries.fetch_add(1, Ordering::SeqCst) == 0 {
                "451 4.2.1 mailbox busy".into()
            } else {
                "250 2.1.5 ok".into()
            }
        }),
        ..Behavior::default()
    });
    let clock = ManualClock::at_system_time();
    let relay = relay_on(&clock, &dest, "  retry: [1h]\n");
    let body = "Message-ID: <story-1@app.test>\r\nSubject: records\r\n\r\nbody\r\n";
    let to = ["ok@dest.test", "nobody@dest.test", "busy@dest.test"];
    assert_eq!(relay.client().send_mail("app@sender.test", &to, body).code, 250);
    clock.advance(Duration::from_secs(2));

    // The first attempt: one delivered, one bounced (and its report), one deferred.
    let first = records_when(&relay, |r| count(r, "deferred") == 1 && count(r, "dsn_sent") == 1 && count(r, "delivered") >= 1);
    let received = &of(&first, "received", "")[0];
    let queue_id = received["queue_id"].as_str().unwrap().to_string();
    assert_eq!(received["message_id"], "<story-1@app.test>");
    assert_eq!(received["sender"], "app@sender.test");
    assert_eq!(received["recipients"], serde_json::json!(to));
    assert_eq!(received["identity"], "trusted-network");
    assert_eq!(received["client"], "127.0.0.1");
    assert_eq!(received["listener"], relay.addr.to_string());
    assert!(received["session"].as_str().is_some_and(|s| !s.is_empty()));
    let size = received["size"].as_u64().unwrap();
    assert!(size > body.len() as u64, "stored with the Received field: {size}");

    let delivered = of(&first, "delivered", "ok@dest.test");
    let d = delivered[0];
    assert_eq!((d["queue_id"].as_str(), d["message_id"].as_str()), (Some(queue_id.as_str()), Some("<story-1@app.test>")));
    assert_eq!((d["ip"].as_str(), d["port"].as_u64()), (Some("127.0.0.1"), Some(u64::from(dest.addr.port()))));
    assert_eq!((d["code"].as_u64(), d["dsn"].as_str(), d["tls"].as_str()), (Some(250), Some("2.0.0"), Some("none")));
    assert_eq!((d["attempt"].as_u64(), d["size"].as_u64(), d["destination"].as_str()), (Some(1), Some(size), Some("dest.test")));
    let parts: u64 = ["queued_ms", "connect_ms", "transfer_ms"].iter().map(|k| d[k].as_u64().unwrap()).sum();
    assert_eq!(parts, d["delay_ms"].as_u64().unwrap(), "the delay's parts add up: {d}");
    assert!(d["reply"].as_str().unwrap().contains("accepted"), "{d}");

    let bounced = of(&first, "bounced", "nobody@dest.test");
    assert_eq!((bounced[0]["code"].as_u64(), bounced[0]["dsn"].as_str()), (Some(550), Some("5.1.1")));
    assert!(bounced[0]["reply"].as_str().unwrap().contains("no such user"));
    let report = of(&first, "dsn_sent", "app@sender.test");
    assert_eq!(report[0]["queue_id"], queue_id.as_str(), "the report names the message it is about");
    let report_id = report[0]["report_id"].as_str().unwrap();
    assert_ne!(report_id, queue_id);

    let deferred = of(&first, "deferred", "busy@dest.test");
    assert_eq!((deferred[0]["code"].as_u64(), deferred[0]["dsn"].as_str()), (Some(451), Some("4.2.1")));
    let next = deferred[0]["next_attempt"].as_u64().unwrap();
    assert!(next >= clock.now() + 3590 && next <= clock.now() + 3610, "an hour on: {next} vs {}", clock.now());

    // The retry delivers the deferred recipient: its second attempt.
    clock.advance(Duration::from_secs(3605));
    let all = records_when(&relay, |r| !of(r, "delivered", "busy@dest.test").is_empty());
    let later = of(&all, "delivered", "busy@dest.test");
    assert_eq!((later[0]["attempt"].as_u64(), later[0]["queue_id"].as_str()), (Some(2), Some(queue_id.as_str())));
    assert!(later[0]["delay_ms"].as_u64().unwrap() >= 3_600_000, "the delay counts the hour in the queue: {}", later[0]);
    // The report itself was received (from us: bounce, null sender) and delivered.
    let report_delivered = all.iter().find(|r| r["event"] == "delivered" && r["queue_id"] == report_id).expect("the report's delivery");
    assert_eq!((report_delivered["sender"].as_str(), report_delivered["identity"].as_str()), (Some(""), Some("bounce")));
    assert_eq!(of(&all, "received", "").len(), 1, "reports are not 'received': they never crossed intake");
    // Nothing twice: one record per recipient and event.
    assert_eq!(count(&all, "delivered"), 3);
    assert_eq!(count(&all, "bounced"), 1);
}

#[test]
fn expiry_is_apart_from_bounces() {
    let dest = Dest::start(Behavior { rcpt: Arc::new(|_, _| "451 4.2.1 mailbox busy".into()), ..Behavior::default() });
    let clock = ManualClock::at_system_time();
    let relay = relay_on(&clock, &dest, "  retry: [1h]\n  max_age: 2h\n  delay_warning: 0s\n");
    assert_eq!(relay.client().send_mail("", &["late@dest.test"], "Subject: x\r\n\r\nx\r\n").code, 250);
    clock.advance(Duration::from_secs(2));
    records_when(&relay, |r| count(r, "deferred") == 1);
    clock.advance(Duration::from_secs(3605));
    records_when(&relay, |r| count(r, "deferred") == 2);
    clock.advance(Duration::from_secs(3605));
    let all = records_when(&relay, |r| count(r, "expired") == 1);
    let expired = of(&all, "expired", "late@dest.test");
    assert_eq!(
        (expired[0]["code"].as_u64(), expired[0]["dsn"].as_str(), expired[0]["attempt"].as_u64()),
        (Some(554), Some("5.4.7"), Some(3))
    );
    assert!(expired[0]["reply"].as_str().unwrap().contains("4.2.1 mailbox busy"), "the last reply is kept: {}", expired[0]);
    assert_eq!(count(&all, "bounced"), 0);
    assert_eq!(count(&all, "dsn_sent"), 0, "a null-sender message gets no report");
}

#[test]
fn an_operators_hold_release_bounce_and_delete_are_recorded_with_the_operator() {
    let dest = Dest::start(Behavior { rcpt: Arc::new(|_, _| "451 4.2.1 mailbox busy".into()), ..Behavior::default() });
    let clock = ManualClock::at_system_time();
    let relay = relay_on(&clock, &dest, "  retry: [1h]\n");
    let mut c = relay.client();
    assert_eq!(c.send_mail("app@sender.test", &["one@dest.test", "two@dest.test"], "x\r\n").code, 250);
    assert_eq!(c.send_mail("app@sender.test", &["three@dest.test"], "x\r\n").code, 250);
    clock.advance(Duration::from_secs(2));
    let first = records_when(&relay, |r| count(r, "deferred") == 3);
    let ids: Vec<String> = of(&first, "received", "").iter().map(|r| r["queue_id"].as_str().unwrap().to_string()).collect();
    let path = relay.config_path();
    let admin = |args: &[&str]| {
        let mut all = vec!["queue"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", &path]);
        let (code, out, err) = sluice_status(&all);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
    };
    admin(&["hold", &ids[0]]);
    admin(&["release", &ids[0]]);
    admin(&["bounce", &ids[0], "--reason", "spam run"]);
    admin(&["delete", &ids[1]]);
    let all = records_when(&relay, |r| count(r, "deleted") == 1 && count(r, "admin_bounce") == 2);
    let operator = of(&all, "held", "")[0]["operator"].as_str().unwrap().to_string();
    assert!(!operator.is_empty());
    for event in ["held", "released"] {
        let r = of(&all, event, "")[0];
        assert_eq!((r["queue_id"].as_str(), r["recipients"].as_array().map(Vec::len)), (Some(ids[0].as_str()), Some(2)), "{r}");
    }
    let bounced = of(&all, "admin_bounce", "one@dest.test")[0];
    assert_eq!(
        (bounced["code"].as_u64(), bounced["dsn"].as_str(), bounced["operator"].as_str()),
        (Some(550), Some("5.0.0"), Some(operator.as_str()))
    );
    assert!(bounced["reply"].as_str().unwrap().contains("spam run"), "{bounced}");
    assert_eq!(count(&all, "bounced"), 0, "an operator's bounce is not the destination's");
    assert_eq!(of(&all, "dsn_sent", "app@sender.test")[0]["queue_id"], ids[0].as_str());
    let deleted = of(&all, "deleted", "")[0];
    assert_eq!(
        (deleted["queue_id"].as_str(), deleted["recipients"].clone()),
        (Some(ids[1].as_str()), serde_json::json!(["three@dest.test"]))
    );
}

fn received_ids(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["queue_id"].as_str().unwrap().to_string()).collect()
}

fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids = received_ids(path);
        if ids.len() >= n {
            return ids;
        }
        assert!(Instant::now() < deadline, "{} has {ids:?}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigusr1_reopens_the_file_logrotate_moved_and_a_reload_moves_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = crate::common::Daemon::spawn(dir.path(), "accounting: { path: acct.jsonl }\n", &[]);
    let (file, moved) = (dir.path().join("acct.jsonl"), dir.path().join("acct.jsonl.old"));
    let mut c = crate::common::Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
    wait_for_lines(&file, 1);
    std::fs::rename(&file, &moved).unwrap();
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
    wait_for_lines(&moved, 2); // the open file, wherever it now is
    let pid = daemon.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains("reopening the accounting file") {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The reopen is asked for by the log line; give the writer its turn.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
    assert_eq!(wait_for_lines(&file, 1).len(), 1, "a new file after SIGUSR1");
    assert_eq!(received_ids(&moved).len(), 2, "nothing more in the moved one");

    // A reload that names a file that cannot be opened is refused; the stream stays.
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let path = daemon.config_path.to_str().unwrap();
    std::fs::write(&daemon.config_path, config.replace("path: acct.jsonl", "path: missing/acct.jsonl")).unwrap();
    let (code, out, err) = sluice_status(&["reload", "--config", path]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(format!("{out}{err}").contains("accounting.path"), "{out}{err}");
    std::fs::write(&daemon.config_path, config.replace("path: acct.jsonl", "path: other.jsonl")).unwrap();
    assert_eq!(sluice_status(&["reload", "--config", path]).0, 0);
    assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250);
    assert_eq!(wait_for_lines(&dir.path().join("other.jsonl"), 1).len(), 1);
    assert_eq!(received_ids(&file).len(), 1, "the old path no longer written");
}

#[test]
fn a_full_disk_under_the_accounting_file_is_logged_and_counted_and_mail_still_flows() {
    // /dev/full opens like a file and fails every write with ENOSPC.
    let dir = tempfile::tempdir().unwrap();
    let port = crate::metrics_endpoint::free_port();
    let extra = format!("accounting: {{ path: /dev/full }}\nmetrics: {{ address: \"127.0.0.1:{port}\" }}\n");
    let daemon = crate::common::Daemon::spawn(dir.path(), &extra, &[]);
    let mut c = crate::common::Client::connect(daemon.addr);
    for _ in 0..3 {
        assert_eq!(c.send_mail("a@x.test", &["b@y.test"], "x\r\n").code, 250, "mail is accepted whatever the stream does");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let dropped = loop {
        let text = crate::metrics_endpoint::scrape(port);
        let n = text.lines().find_map(|l| l.strip_prefix("sluice_accounting_dropped_total ")).and_then(|v| v.parse::<f64>().ok());
        if n == Some(3.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(dropped.contains("sluice_accounting_dropped_total 3"));
    let log = daemon.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" error ")).collect();
    assert!(
        errors
            .iter()
            .any(|l| l.contains("writing the accounting file failed") && l.contains("path=/dev/full") && l.contains("No space left")),
        "{log}"
    );
    // One summary line for the batch, not a line per record.
    let summaries: Vec<&&str> = errors.iter().filter(|l| l.contains("accounting records dropped")).collect();
    assert!(!summaries.is_empty() && summaries.len() < 3, "{log}");
    assert!(summaries[0].contains("why=\"the accounting file could not be written\""), "{log}");
}
