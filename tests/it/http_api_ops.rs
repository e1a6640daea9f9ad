//! Running the HTTP API: its keys file is read again by a reload (a new key works after it, a
//! removed one does not, a broken file is refused and the old keys stay); each key's requests
//! are counted under its name on the metrics port; requeue over HTTP sends deferred mail now;
//! actions that need delivery are 409 while it is paused; oversized, endless and slow requests
//! are refused or cut off and the API goes on; a request's MT-PRIORITY and DSN parameters reach
//! the queued message and its accounting record, which names the key and the HTTP listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::sluice;
use crate::http_api::{Api, Custom, curl, new_key, start_custom};
use crate::metrics_endpoint::{free_port, scrape};
use crate::peers::dest::{Behavior, Dest};

fn message(to: &str) -> Vec<u8> {
    serde_json::json!({"from": "orders@shop.test", "to": [to], "subject": "s", "text": "t"}).to_string().into_bytes()
}

/// The status of a message request made with `key`.
fn inject(api: &Api, key: &str, to: &str) -> u16 {
    curl(api.addr, "POST", "/api/v1/messages", Some(key), "application/json", &message(to)).0
}

fn admin(api: &Api, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, _, text) = curl(api.addr, "POST", path, Some(&api.admin_key), "application/json", body.to_string().as_bytes());
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// The value of the sample named exactly `series` (name and labels) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_reload_reads_the_keys_file_again_and_each_key_is_counted_under_its_name() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!("metrics: {{ address: \"127.0.0.1:{port}\" }}\n");
    let (daemon, api, _dns) = start_custom(dir.path(), &dest, Custom { extra: &extra, ..Custom::default() });
    let keys_file = dir.path().join("api.keys");
    let first = std::fs::read_to_string(&keys_file).unwrap();
    assert_eq!(inject(&api, &api.key, "a@dest.test"), 202);

    let (billing, billing_line) = new_key("billing", "inject");
    assert_eq!(inject(&api, &billing, "b@dest.test"), 401, "not in the file yet");
    std::fs::write(&keys_file, format!("{first}{billing_line}\n")).unwrap();
    let (status, report) = admin(&api, "/api/v1/reload", serde_json::json!({}));
    assert_eq!(status, 200, "{report}");
    assert_eq!(inject(&api, &billing, "b@dest.test"), 202, "in force after the reload");

    // The shop key taken out: refused from the next request on.
    let without_shop: String = first.lines().filter(|l| !l.starts_with("shop:")).map(|l| format!("{l}\n")).collect();
    assert_ne!(without_shop, first);
    std::fs::write(&keys_file, format!("{without_shop}{billing_line}\n")).unwrap();
    let config = daemon.config_path.to_str().unwrap().to_string();
    let (ok, _, err) = sluice(&["reload", "--config", &config]);
    assert!(ok, "{err}");
    assert_eq!(inject(&api, &api.key, "c@dest.test"), 401, "removed by the reload");

    // A file that is not a keys file: check-config and the reload name it, the keys in force stay.
    std::fs::write(&keys_file, format!("{without_shop}{billing_line}\nbilling2 without scopes\n")).unwrap();
    let (ok, _, err) = sluice(&["check-config", "--config", &config]);
    assert!(!ok && err.contains("api.keys_file"), "{err}");
    let (status, problem) = admin(&api, "/api/v1/reload", serde_json::json!({}));
    assert_eq!(status, 500, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("api.keys_file"), "{problem}");
    assert_eq!(inject(&api, &billing, "d@dest.test"), 202, "the keys before the broken file are still in force");

    // An admin key's message request is refused for its scope, and counted under its name.
    assert_eq!(inject(&api, &api.admin_key, "e@dest.test"), 403);
    dest.wait_for(3, Duration::from_secs(20));
    let text = scrape(port);
    let count = |key: &str, status: &str| sample(&text, &format!("sluice_api_requests_total{{key=\"{key}\",status=\"{status}\"}}"));
    assert_eq!(count("shop", "202"), Some(1.0), "{text}");
    assert_eq!(count("billing", "202"), Some(2.0), "{text}");
    assert_eq!(count("ops", "403"), Some(1.0), "{text}");
    assert_eq!(count("ops", "200"), Some(1.0), "the reload that worked: {text}");
    assert_eq!(count("ops", "500"), Some(1.0), "the reload that did not: {text}");
    assert_eq!(count("unknown", "401"), Some(2.0), "billing before it was added, shop after it was removed: {text}");
    assert_eq!(count("billing", "401"), None, "{text}");
}

#[test]
fn requeue_over_http_sends_deferred_mail_now() {
    let open = Arc::new(AtomicBool::new(false));
    let dest = Dest::start(Behavior::deferring_until(open.clone()));
    let dir = tempfile::tempdir().unwrap();
    // The next attempt after a deferral is an hour away.
    let (_daemon, api, _dns) = start_custom(dir.path(), &dest, Custom { delivery: "  retry: [1h]\n", ..Custom::default() });
    assert_eq!(inject(&api, &api.key, "a@dest.test"), 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let (status, _, text) = curl(api.addr, "GET", "/api/v1/queue?state=deferred", Some(&api.admin_key), "application/json", b"");
        assert_eq!(status, 200, "{text}");
        let page: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Some(id) = page["messages"][0]["queue_id"].as_str() {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "never deferred: {page}");
        std::thread::sleep(Duration::from_millis(50));
    };
    open.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(2));
    assert!(dest.received().is_empty(), "nothing is sent before its hour");

    let (status, answer) = admin(&api, "/api/v1/queue/requeue", serde_json::json!({"domain": "other.test"}));
    assert_eq!((status, answer["messages"].as_u64()), (200, Some(0)), "a filter that matches nothing: {answer}");
    let (status, answer) = admin(&api, "/api/v1/queue/requeue", serde_json::json!({"ids": [id]}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ids"], serde_json::json!([id]), "{answer}");
    assert_eq!(dest.wait_for(1, Duration::from_secs(20))[0].rcpts, ["a@dest.test"]);
}

#[test]
fn actions_that_need_delivery_are_409_while_it_is_paused() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, api, _dns) = start_custom(dir.path(), &dest, Custom { delivery: "  paused: true\n", ..Custom::default() });
    assert_eq!(inject(&api, &api.key, "a@dest.test"), 202);
    for action in ["flush", "requeue", "hold", "release", "bounce"] {
        let (status, problem) = admin(&api, &format!("/api/v1/queue/{action}"), serde_json::json!({"domain": "dest.test"}));
        assert_eq!(status, 409, "{action}: {problem}");
        assert!(problem["type"].as_str().unwrap().ends_with("paused"), "{problem}");
        assert!(problem["detail"].as_str().unwrap().contains("delivery.paused"), "{problem}");
    }
    // What needs no delivery still works: the message is listed and deleted.
    let (status, answer) = admin(&api, "/api/v1/queue/delete", serde_json::json!({"domain": "dest.test"}));
    assert_eq!((status, answer["messages"].as_u64()), (200, Some(1)), "{answer}");
    assert!(dest.received().is_empty());
}

/// Writes `request` on a fresh connection and reads until the server closes it or `wait` passes.
fn raw_exchange(api: &Api, request: &[u8], wait: Duration) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(api.addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    // The server may answer and close before all of an oversized request is written.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn hostile_http_clients_get_an_answer_or_a_closed_connection_and_the_api_goes_on() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, api, _dns) = start_custom(dir.path(), &dest, Custom::default());
    let auth = format!("Authorization: Bearer {}\r\n", api.admin_key);
    // A body that stops coming, and a header that never ends: both waited for at once.
    let slow_body = {
        let api = Api { addr: api.addr, key: String::new(), admin_key: api.admin_key.clone() };
        let request = format!(
            "POST /api/v1/queue/hold HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ids\":"
        );
        std::thread::spawn(move || {
            let started = Instant::now();
            (raw_exchange(&api, request.as_bytes(), Duration::from_secs(60)), started.elapsed())
        })
    };
    let endless_header = {
        let api = Api { addr: api.addr, key: String::new(), admin_key: String::new() };
        std::thread::spawn(move || {
            let started = Instant::now();
            (raw_exchange(&api, b"GET /api/v1/queue HTTP/1.1\r\nHost: x\r\nX-A: b", Duration::from_secs(60)), started.elapsed())
        })
    };

    // A megabyte of query string, and of one header: refused whole, nothing parsed from them.
    let long_query = format!("GET /api/v1/queue?domain={} HTTP/1.1\r\nHost: x\r\n{auth}\r\n", "a".repeat(1 << 20));
    let answer = raw_exchange(&api, long_query.as_bytes(), Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    let long_header = format!("GET /api/v1/queue HTTP/1.1\r\nHost: x\r\n{auth}X-Pad: {}\r\n\r\n", "b".repeat(1 << 20));
    let answer = raw_exchange(&api, long_header.as_bytes(), Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    // Not HTTP at all.
    let answer = raw_exchange(&api, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n", Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.200}");
    // A query the listing does not take is a problem naming it.
    let (status, _, text) = curl(api.addr, "GET", "/api/v1/queue?limit=100000&state=lost", Some(&api.admin_key), "application/json", b"");
    assert_eq!(status, 400, "{text}");

    let (answer, took) = slow_body.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("came too slowly"), "{answer}");
    assert!(took >= Duration::from_secs(29) && took < Duration::from_secs(45), "{took:?}");
    let (answer, took) = endless_header.join().unwrap();
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(30), "the header timeout closes it: {took:?}");

    // After all that, the API still answers.
    assert_eq!(inject(&api, &api.key, "a@dest.test"), 202);
    assert_eq!(dest.wait_for(1, Duration::from_secs(20))[0].rcpts, ["a@dest.test"]);
}

#[test]
fn an_http_messages_priority_and_dsn_reach_the_queue_and_its_accounting_record() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let custom = Custom { delivery: "  paused: true\n", extra: "accounting: { path: acct.jsonl }\n", ..Custom::default() };
    let (_daemon, api, _dns) = start_custom(dir.path(), &dest, custom);
    let (status, _, text) = curl(
        api.addr,
        "POST",
        "/api/v1/messages",
        Some(&api.key),
        "application/json",
        serde_json::json!({
            "from": "orders@shop.test", "to": ["a@dest.test", "b@dest.test"], "subject": "s", "text": "t",
            "priority": -4, "dsn": {"ret": "full", "envid": "order-7"}
        })
        .to_string()
        .as_bytes(),
    );
    assert_eq!(status, 202, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = answer["messages"][0]["queue_id"].as_str().unwrap().to_string();

    let (status, _, text) = curl(api.addr, "GET", &format!("/api/v1/queue/{id}"), Some(&api.admin_key), "application/json", b"");
    assert_eq!(status, 200, "{text}");
    let shown: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["priority"], -4, "{shown}");
    assert_eq!((shown["ret"].as_str(), shown["envid"].as_str()), (Some("FULL"), Some("order-7")), "{shown}");

    let path = dir.path().join("acct.jsonl");
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no accounting record");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(record["event"], "received", "{record}");
    assert_eq!(record["queue_id"].as_str(), Some(id.as_str()), "{record}");
    assert_eq!(record["identity"], "api-key:shop", "{record}");
    assert_eq!(record["priority"], -4, "{record}");
    assert_eq!(record["sender"], "orders@shop.test", "{record}");
    assert_eq!(record["recipients"], serde_json::json!(["a@dest.test", "b@dest.test"]), "{record}");
    assert_eq!(record["listener"].as_str(), Some(api.addr.to_string().as_str()), "the HTTP listener it came in on: {record}");
}
