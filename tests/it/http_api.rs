//! The HTTP injection API, driven by curl: structured and raw messages accepted with 202 and
//! their queue ids, delivered, signed (dkimpy verifies) and traced to the key; every refusal a
//! problem document (RFC 9457) naming the field at fault.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{Daemon, sluice};
use crate::peers::dest::{Behavior, Dest};
use crate::peers::dns::{TestDns, Zone};

pub struct Api {
    pub addr: SocketAddr,
    pub key: String,
    /// A key with the admin scope only.
    pub admin_key: String,
}

/// (status, headers, body) of a curl request; `key` None sends no Authorization.
pub fn curl(addr: SocketAddr, method: &str, path: &str, key: Option<&str>, content_type: &str, body: &[u8]) -> (u16, String, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(body).unwrap();
    let mut cmd = Command::new("curl");
    // -g: no globbing, so a path such as /api/v1/queue/{id} goes as written.
    cmd.args(["-s", "-S", "-g", "-D", "-", "-X", method, "-H", &format!("Content-Type: {content_type}"), "--max-time", "30"]);
    if let Some(key) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    if method != "GET" {
        cmd.args(["--data-binary", &format!("@{}", file.path().display())]);
    }
    let out = cmd.arg(format!("http://{addr}{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) =
        text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

impl Api {
    pub fn post(&self, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let (status, _, text) =
            curl(self.addr, "POST", "/api/v1/messages", Some(&self.key), "application/json", body.to_string().as_bytes());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }
}

/// The key line of `sluice api-key`'s output, and the key.
pub fn new_key(name: &str, scopes: &str) -> (String, String) {
    let (ok, out, err) = sluice(&["api-key", name, "--scopes", scopes]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    (lines[0].to_string(), lines[1].to_string())
}

fn start(dir: &Path, dest: &Dest) -> (Daemon, Api, TestDns) {
    start_with(dir, dest, "")
}

pub fn start_with(dir: &Path, dest: &Dest, more: &str) -> (Daemon, Api, TestDns) {
    start_custom(dir, dest, Custom { limits: more, ..Custom::default() })
}

/// What a test adds to the API daemon's config.
#[derive(Default)]
pub struct Custom<'a> {
    /// More `limits:` entries, each starting with ", ".
    pub limits: &'a str,
    /// More `delivery:` lines, indented; `retry:` here replaces the default `[1s]`.
    pub delivery: &'a str,
    /// More top-level YAML.
    pub extra: &'a str,
}

pub fn start_custom(dir: &Path, dest: &Dest, custom: Custom) -> (Daemon, Api, TestDns) {
    let (key, line) = new_key("shop", "inject");
    let (admin_key, admin_line) = new_key("ops", "admin");
    std::fs::write(dir.join("api.keys"), format!("# API keys\n{line}\n{admin_line}\n")).unwrap();
    let (ok, out, err) = sluice(&[
        "dkim",
        "keygen",
        "--domain",
        "shop.test",
        "--selector",
        "ed",
        "--algorithm",
        "ed25519",
        "--out",
        dir.join("ed.key").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let record: String = out.lines().find(|l| l.contains(" IN TXT ")).unwrap().split('"').skip(1).step_by(2).collect();
    let dns = TestDns::start(Zone::default().txt("ed._domainkey.shop.test", &record));
    let extra = format!(
        "http_listeners: [{{ address: \"127.0.0.1:0\" }}]\napi: {{ keys_file: {d}/api.keys, max_recipients: 5, max_request_size: 200000 }}\nlimits: {{ intake_memory: 100000{more} }}\ndkim:\n  sign:\n    - {{ domain: shop.test, selector: ed, key: {d}/ed.key }}\ndelivery:\n  smarthost: \"[127.0.0.1]:{port}\"\n{retry}{delivery}{extra}",
        d = dir.display(),
        port = dest.addr.port(),
        more = custom.limits,
        retry = if custom.delivery.contains("retry:") { "" } else { "  retry: [1s]\n" },
        delivery = custom.delivery,
        extra = custom.extra,
    );
    let daemon = Daemon::spawn(dir, &extra, &[]);
    let addr = http_addr(&daemon);
    (daemon, Api { addr, key, admin_key }, dns)
}

pub fn http_addr(daemon: &Daemon) -> SocketAddr {
    let log = daemon.log_text();
    log.lines()
        .find(|l| l.contains("http api bound"))
        .and_then(|l| l.split("address=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no http listener in {log}"))
        .parse()
        .unwrap()
}

/// (status, headers, JSON body) of a POST with an Idempotency-Key header.
fn post_once(addr: SocketAddr, key: &str, idempotency_key: &str, body: &serde_json::Value) -> (u16, String, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-s", "-S", "-D", "-", "-H", "Content-Type: application/json", "-H", &format!("Authorization: Bearer {key}")])
        .args(["-H", &format!("Idempotency-Key: {idempotency_key}"), "--data-binary", &body.to_string()])
        .arg(format!("http://{addr}/api/v1/messages"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), serde_json::from_str(body).unwrap())
}

#[test]
fn a_retried_request_with_an_idempotency_key_gets_the_first_answer_even_after_a_crash() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let (mut daemon, api, _dns) = start(dir.path(), &dest);
    let order = serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "subject": "order 7", "text": "once"});
    let (status, head, first) = post_once(api.addr, &api.key, "order-7", &order);
    assert_eq!(status, 202, "{first}");
    assert!(!head.contains("idempotent-replayed"), "{head}");
    let (status, head, again) = post_once(api.addr, &api.key, "order-7", &order);
    assert_eq!((status, &again), (202, &first));
    assert!(head.contains("idempotent-replayed: true"), "{head}");
    // The same key for another request is refused; a key with a space is not a key.
    let other = serde_json::json!({"from": "a@shop.test", "to": ["c@dest.test"], "subject": "order 8", "text": "x"});
    let (status, _, p) = post_once(api.addr, &api.key, "order-7", &other);
    assert_eq!((status, p["type"].as_str()), (422, Some("/api/v1/problems/idempotency-key-reused")), "{p}");
    let (status, _, p) = post_once(api.addr, &api.key, "two words", &order);
    assert_eq!((status, p["type"].as_str()), (400, Some("/api/v1/problems/invalid-idempotency-key")), "{p}");
    // Killed and started again: the answer was kept durably.
    daemon.kill9();
    let daemon = Daemon::spawn(dir.path(), "", &[]);
    let (status, head, after) = post_once(http_addr(&daemon), &api.key, "order-7", &order);
    assert_eq!((status, &after), (202, &first), "{head}");
    let got = dest.wait_for(1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let sent = dest.state.lock().unwrap().transactions.iter().filter(|t| t.body.contains("Subject: order 7")).count();
    assert_eq!(sent, 1, "queued once for three requests: {got:?}");
}

fn verify_dkim(message: &str, dns: &TestDns) -> bool {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(message.as_bytes()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/peers/dkim_verify.py");
    let out = Command::new("/usr/bin/python3")
        .args([script, file.path().to_str().unwrap(), &dns.addr.ip().to_string(), &dns.addr.port().to_string()])
        .output()
        .unwrap();
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    !results.is_empty() && results.iter().all(|r| r["ok"] == true)
}

#[test]
fn structured_and_raw_messages_are_accepted_after_the_commit_delivered_signed_and_traced_to_the_key() {
    let mut behavior = Behavior::default();
    behavior.extensions.push("DSN".into());
    let dest = Dest::start(behavior);
    let dir = tempfile::tempdir().unwrap();
    let (daemon, api, dns) = start(dir.path(), &dest);
    let pdf = base64_encode(b"%PDF-1.4 not really\n");
    let (status, answer) = api.post(&serde_json::json!({
        "from": {"email": "orders@shop.test", "name": "Shop"},
        "to": ["Ann <ann@dest.test>", {"email": "bob@dest.test", "name": "Bob Bö"}],
        "subject": "Your order, {{name}}",
        "text": "Hello {{name}},\nyour order {{order}} has shipped.\n",
        "html": "<p>Hello {{name}}, order <b>{{order}}</b> has shipped.</p>",
        "attachments": [{"filename": "invoice.pdf", "content_type": "application/pdf", "content": pdf}],
        "headers": {"X-Campaign": "autumn"},
        "substitutions": {"ann@dest.test": {"name": "Ann", "order": "A-1"}, "bob@dest.test": {"name": "Bob", "order": "B-2"}},
        "dsn": {"ret": "hdrs", "envid": "order+1", "notify": ["failure", "delay"]},
        "priority": 3
    }));
    assert_eq!(status, 202, "{answer}");
    let messages = answer["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "one message per recipient: {answer}");
    assert_eq!(messages[0]["recipients"], serde_json::json!(["ann@dest.test"]));
    // The 202 came after the commit: the mail log's accepted line for each id precedes it.
    let log = daemon.log_text();
    for m in messages {
        let id = m["queue_id"].as_str().unwrap();
        assert!(log.lines().any(|l| l.contains("accepted") && l.contains(id) && l.contains("identity=api-key:shop")), "{log}");
    }

    let (status, answer) = api.post(&serde_json::json!({
        "envelope": {"from": "bounces@shop.test", "to": ["carol@dest.test"]},
        "raw": "From: orders@shop.test\nTo: carol@dest.test\nBcc: hidden@dest.test\nSubject: raw\n\nraw body\n.\nafter a dot line\n"
    }));
    assert_eq!(status, 202, "{answer}");

    let got = dest.wait_for(3, Duration::from_secs(30));
    let ann = got.iter().find(|m| m.rcpts == ["ann@dest.test"]).expect("ann's message");
    assert!(ann.body.contains("Subject: Your order, Ann\r\n"), "{}", ann.body);
    assert!(ann.body.contains("To: \"Ann\" <ann@dest.test>\r\n") || ann.body.contains("To: Ann <ann@dest.test>\r\n"), "{}", ann.body);
    assert!(!ann.body.contains("bob@dest.test"), "each message to its own recipient: {}", ann.body);
    assert!(ann.body.contains("X-Campaign: autumn\r\n"), "{}", ann.body);
    assert!(ann.body.contains("application/pdf") && ann.body.contains("invoice.pdf"), "{}", ann.body);
    assert!(ann.body.contains("with HTTP id") && ann.body.contains("(authenticated as api-key=shop)"), "{}", ann.body);
    assert!(ann.rcpt_lines[0].contains("NOTIFY=FAILURE,DELAY"), "{:?}", ann.rcpt_lines);
    assert!(verify_dkim(&ann.body, &dns), "dkimpy verifies the API's message:\n{}", ann.body);
    let bob = got.iter().find(|m| m.rcpts == ["bob@dest.test"]).unwrap();
    assert!(bob.body.contains("Subject: Your order, Bob\r\n") && bob.body.contains("B-2"), "{}", bob.body);
    assert_eq!(bob.from, "orders@shop.test", "the From address is the return path by default");
    let carol = got.iter().find(|m| m.rcpts == ["carol@dest.test"]).unwrap();
    assert_eq!(carol.from, "bounces@shop.test");
    assert!(!carol.body.contains("Bcc:") && carol.body.contains("\r\nraw body\r\n.\r\nafter a dot line\r\n"), "{}", carol.body);
    assert!(verify_dkim(&carol.body, &dns), "{}", carol.body);
}

#[test]
fn every_refusal_is_a_problem_document_naming_what_is_wrong() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, api, _dns) = start(dir.path(), &dest);
    let good = serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "subject": "s", "text": "t"});
    let body = good.to_string();
    let problem = |status: u16, head: &str, text: &str| -> serde_json::Value {
        assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
        let p: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(p["status"], status, "{p}");
        assert!(p["type"].as_str().unwrap().starts_with("/api/v1/problems/") && p["title"].is_string(), "{p}");
        p
    };
    // No key, an unknown key, a key without the scope.
    let (status, head, text) = curl(api.addr, "POST", "/api/v1/messages", None, "application/json", body.as_bytes());
    assert_eq!(status, 401);
    assert!(head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{head}");
    problem(401, &head, &text);
    let (status, head, text) = curl(api.addr, "POST", "/api/v1/messages", Some("sk_nottheone"), "application/json", body.as_bytes());
    assert_eq!(status, 401);
    problem(401, &head, &text);
    let (status, head, text) = curl(api.addr, "POST", "/api/v1/messages", Some(&api.admin_key), "application/json", body.as_bytes());
    assert_eq!(status, 403, "an admin key cannot send mail");
    problem(403, &head, &text);
    // Not JSON, the wrong media type, too large, the wrong method, no such path.
    let (status, head, text) = curl(api.addr, "POST", "/api/v1/messages", Some(&api.key), "application/json", b"{\"from\": ");
    assert_eq!(status, 400);
    assert!(problem(400, &head, &text)["detail"].as_str().unwrap().contains("line 1"), "{text}");
    let (status, head, text) = curl(api.addr, "POST", "/api/v1/messages", Some(&api.key), "text/plain", body.as_bytes());
    assert_eq!(status, 415);
    problem(415, &head, &text);
    let huge = serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "subject": "s", "text": "x".repeat(300_000)});
    let (status, head, text) = curl(api.addr, "POST", "/api/v1/messages", Some(&api.key), "application/json", huge.to_string().as_bytes());
    assert_eq!(status, 413);
    problem(413, &head, &text);
    // Within api.max_request_size but more than the intake memory budget has: 503, and the
    // budget is whole again afterwards.
    let big = serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "subject": "s", "text": "x".repeat(180_000)});
    let (status, head, text) = curl(api.addr, "POST", "/api/v1/messages", Some(&api.key), "application/json", big.to_string().as_bytes());
    assert_eq!(status, 503);
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(problem(503, &head, &text)["type"], "/api/v1/problems/busy");
    let (status, head, text) = curl(api.addr, "GET", "/api/v1/messages", Some(&api.key), "application/json", b"");
    assert_eq!(status, 405);
    problem(405, &head, &text);
    let (status, head, text) = curl(api.addr, "GET", "/api/v1/nothing", Some(&api.key), "application/json", b"");
    assert_eq!(status, 404);
    problem(404, &head, &text);
    // The OpenAPI document is served, and every endpoint it lists answers (neither 404 nor 405).
    let (status, _, text) = curl(api.addr, "GET", "/api/v1/openapi.json", None, "application/json", b"");
    assert_eq!(status, 200);
    let served: serde_json::Value = serde_json::from_str(&text).unwrap();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap()).unwrap();
    assert_eq!(served, committed);
    for (path, item) in committed["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let (status, _, _) = curl(api.addr, &method.to_ascii_uppercase(), path, Some(&api.key), "application/json", b"{}");
            assert!(status != 404 && status != 405, "{method} {path}: {status}");
        }
    }
    // Fields at fault, each named by its JSON Pointer.
    let cases = [
        (serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test", "not an address"], "text": "t"}), 422, "/to/1"),
        (serde_json::json!({"from": "a@shop.test", "to": [{"email": "b@"}], "text": "t"}), 422, "/to/0/email"),
        (serde_json::json!({"to": ["b@dest.test"], "text": "t"}), 422, "/from"),
        (serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"]}), 422, "/text"),
        (serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "text": "t", "subject": "a\r\nBcc: x@y.test"}), 422, "/subject"),
        (
            serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "text": "t", "headers": {"From": "x@evil.test"}}),
            422,
            "/headers/From",
        ),
        (serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "text": "hi {{name}}"}), 422, "/substitutions"),
        (
            serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "text": "hi {{name}}", "substitutions": {"b@dest.test": {}}}),
            422,
            "/substitutions/b@dest.test",
        ),
        (serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "text": "t", "priority": 12}), 422, "/priority"),
        (
            serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "text": "t", "dsn": {"notify": ["never", "success"]}}),
            422,
            "/dsn/notify",
        ),
        (
            serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "attachments": [{"filename": "f", "content": "%%%"}]}),
            422,
            "/attachments/0/content",
        ),
        (serde_json::json!({"raw": "Subject: x\n\nbody\n"}), 422, "/envelope"),
        (serde_json::json!({"raw": "Subject: x\n\nbody\n", "envelope": {"from": "a@shop.test", "to": []}}), 422, "/envelope/to"),
        (serde_json::json!({"raw": "no header\n", "envelope": {"from": "a@shop.test", "to": ["b@dest.test"]}}), 422, "/raw"),
        (serde_json::json!({"raw": "Subject: x\n\nb\n", "subject": "y", "envelope": {"from": "", "to": ["b@dest.test"]}}), 422, "/subject"),
    ];
    for (request, status, pointer) in cases {
        let (got, p) = api.post(&request);
        assert_eq!((got, p["pointer"].as_str()), (status, Some(pointer)), "{request} -> {p}");
        assert!(p["detail"].is_string(), "{p}");
    }
    let many: Vec<String> = (0..6).map(|i| format!("r{i}@dest.test")).collect();
    let (status, p) = api.post(&serde_json::json!({"from": "a@shop.test", "to": many, "text": "t"}));
    assert_eq!((status, p["type"].as_str()), (422, Some("/api/v1/problems/too-many-recipients")), "{p}");
    let (status, p) = api.post(&serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "text": "t", "unknown": 1}));
    assert_eq!(status, 400, "unknown fields are refused, not ignored: {p}");
    // Nothing above was queued.
    assert!(dest.state.lock().unwrap().transactions.is_empty());
    let (status, answer) = api.post(&good);
    assert_eq!(status, 202, "{answer}");
    // Two requests that each take most of the budget, one after the other: the first gave its
    // share back.
    let medium = serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "subject": "s", "text": "y".repeat(130_000)});
    for _ in 0..2 {
        let (status, answer) = api.post(&medium);
        assert_eq!(status, 202, "{answer}");
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn the_keys_rate_is_checked_for_each_message_of_a_request() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, api, _dns) = start_with(dir.path(), &dest, ", messages_per_user: 2/min");
    let to: Vec<String> = (0..5).map(|i| format!("r{i}@dest.test")).collect();
    let subs: serde_json::Map<String, serde_json::Value> = to.iter().map(|t| (t.clone(), serde_json::json!({"n": t}))).collect();
    let (status, p) = api.post(&serde_json::json!({"from": "a@shop.test", "to": to, "text": "for {{n}}", "substitutions": subs}));
    assert_eq!((status, p["type"].as_str()), (429, Some("/api/v1/problems/rate-limited")), "{p}");
    let queued = p["queued"].as_array().map_or(0, Vec::len);
    assert!((1..5).contains(&queued), "some queued before the limit, not all: {p}");
    dest.wait_for(queued, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(dest.state.lock().unwrap().transactions.len(), queued, "exactly the queued ones are sent");
}

#[test]
fn a_request_queued_in_part_is_completed_by_its_retry_with_the_same_idempotency_key() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, api, _dns) = start_with(dir.path(), &dest, ", messages_per_user: 2/s");
    let to: Vec<String> = (0..5).map(|i| format!("r{i}@dest.test")).collect();
    let subs: serde_json::Map<String, serde_json::Value> = to.iter().map(|t| (t.clone(), serde_json::json!({"n": t}))).collect();
    let request = serde_json::json!({"from": "a@shop.test", "to": to, "text": "for {{n}}", "substitutions": subs});
    let (status, _, first) = post_once(api.addr, &api.key, "batch-1", &request);
    assert_eq!(status, 429, "the rate stops the request part-way: {first}");
    let first_queued: Vec<String> = first["queued"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert!((1..5).contains(&first_queued.len()), "{first}");
    // Retried with the same key until it is all queued: the ones queued before keep their ids.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        std::thread::sleep(Duration::from_millis(1100));
        let (status, _, answer) = post_once(api.addr, &api.key, "batch-1", &request);
        if status == 202 {
            break answer;
        }
        assert_eq!(status, 429, "{answer}");
        assert!(std::time::Instant::now() < deadline, "never completed: {answer}");
    };
    let ids: Vec<String> = answer["messages"].as_array().unwrap().iter().map(|m| m["queue_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 5, "{answer}");
    assert_eq!(ids[..first_queued.len()], first_queued[..], "the first try's messages are named, not queued again");
    let (status, head, replay) = post_once(api.addr, &api.key, "batch-1", &request);
    assert_eq!((status, &replay), (202, &answer));
    assert!(head.contains("idempotent-replayed: true"), "{head}");
    dest.wait_for(5, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let mut sent: Vec<String> = dest.state.lock().unwrap().transactions.iter().map(|t| t.rcpts[0].clone()).collect();
    sent.sort();
    assert_eq!(sent, to, "each message of the request sent exactly once");
}

#[test]
fn one_idempotency_key_sent_at_once_many_times_queues_once() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, api, _dns) = start(dir.path(), &dest);
    let order = serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test", "c@dest.test"], "subject": "order 9", "text": "x"});
    let answers: Vec<(u16, String, serde_json::Value)> = std::thread::scope(|s| {
        let tries: Vec<_> = (0..8).map(|_| s.spawn(|| post_once(api.addr, &api.key, "order-9", &order))).collect();
        tries.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let fresh = answers.iter().filter(|(status, head, _)| *status == 202 && !head.contains("idempotent-replayed")).count();
    assert_eq!(fresh, 1, "one request is served, the others replayed or told it is in flight: {answers:?}");
    for (status, _, answer) in &answers {
        match status {
            202 => assert_eq!(answer["messages"][0]["recipients"], serde_json::json!(["b@dest.test", "c@dest.test"]), "{answer}"),
            409 => assert_eq!(answer["type"], "/api/v1/problems/idempotency-key-in-use"),
            other => panic!("{other}: {answer}"),
        }
    }
    dest.wait_for(1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));
    let sent = dest.state.lock().unwrap().transactions.iter().filter(|t| t.body.contains("Subject: order 9")).count();
    assert_eq!(sent, 1, "queued once");
}

#[test]
fn the_api_over_https_uses_the_tls_certificate_and_refuses_plain_http() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let (key, line) = new_key("shop", "inject");
    std::fs::write(dir.path().join("api.keys"), format!("{line}\n")).unwrap();
    let extra = format!(
        "tls: {{ certificate: {d}/cert.pem, private_key: {d}/key.pem, self_signed_if_missing: true }}\nhttp_listeners: [{{ address: \"127.0.0.1:0\", tls: true }}]\napi: {{ keys_file: {d}/api.keys }}\ndelivery:\n  smarthost: \"[127.0.0.1]:{port}\"\n",
        d = dir.path().display(),
        port = dest.addr.port()
    );
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let addr = http_addr(&daemon);
    let body = serde_json::json!({"from": "a@shop.test", "to": ["b@dest.test"], "subject": "over tls", "text": "x"}).to_string();
    let https = |verify: bool| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-S", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20", "-H", "Content-Type: application/json"]);
        cmd.args(["-H", &format!("Authorization: Bearer {key}"), "--data-binary", &body]);
        cmd.args(["--resolve", &format!("relay.test:{}:127.0.0.1", addr.port())]);
        match verify {
            true => cmd.args(["--cacert", dir.path().join("cert.pem").to_str().unwrap()]),
            false => cmd.args(["--cacert", "/dev/null"]),
        };
        let out = cmd.arg(format!("https://relay.test:{}/api/v1/messages", addr.port())).output().unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.success())
    };
    let (out, ok) = https(true);
    assert!(ok && out.ends_with("\n202"), "202 over TLS with the relay's certificate: {out}");
    let (out, ok) = https(false);
    assert!(!ok, "a client that does not trust the certificate gets no answer: {out}");
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{addr}/api/v1/openapi.json"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&plain.stdout), "000", "no plain HTTP on the TLS listener");
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert!(got[0].body.contains("Subject: over tls"), "{}", got[0].body);
}
