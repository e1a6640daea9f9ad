//! The queue toolbox over HTTP (`admin` scope), driven by curl: list with filters and pages,
//! show, summary, hold, release, flush, bounce, delete and reload, each doing what its
//! `sluice queue` command does; the wrong key's scope is 403, an unknown id 404, a request
//! that names no messages 422.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::http_api::{Api, curl, start_with};
use crate::peers::dest::{Behavior, Dest};

fn get(api: &Api, path: &str) -> (u16, serde_json::Value) {
    let (status, _, text) = curl(api.addr, "GET", path, Some(&api.admin_key), "application/json", b"");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn post(api: &Api, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let (status, _, text) = curl(api.addr, "POST", path, Some(&api.admin_key), "application/json", body.to_string().as_bytes());
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn ids(page: &serde_json::Value) -> Vec<String> {
    page["messages"].as_array().unwrap().iter().map(|m| m["queue_id"].as_str().unwrap().to_string()).collect()
}

/// Waits until the listing at `path` has `n` messages.
fn wait_listed(api: &Api, path: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, page) = get(api, path);
        assert_eq!(status, 200, "{page}");
        if ids(&page).len() == n {
            return page;
        }
        assert!(Instant::now() < deadline, "{path}: {page}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_queue_toolbox_answers_over_http_for_an_admin_key() {
    // The destination defers everything until the test lets it take mail.
    let open = Arc::new(AtomicBool::new(false));
    let dest = Dest::start(Behavior::deferring_until(open.clone()));
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, api, _dns) = start_with(dir.path(), &dest, "");
    let mut queued = Vec::new();
    for to in ["x@dest.test", "y@dest.test", "z@else.test", "w@dest.test"] {
        let (status, answer) =
            api.post(&serde_json::json!({"from": "orders@shop.test", "to": [to], "subject": format!("for {to}"), "text": "t"}));
        assert_eq!(status, 202, "{answer}");
        queued.push(answer["messages"][0]["queue_id"].as_str().unwrap().to_string());
    }
    let [x, y, z, w] = [0, 1, 2, 3].map(|i| queued[i].clone());
    let mut sorted = queued.clone();
    sorted.sort();

    // Each has been tried and deferred; pages of two, in queue id order, cover them once.
    wait_listed(&api, "/api/v1/queue?state=deferred", 4);
    let (_, first) = get(&api, "/api/v1/queue?limit=2");
    assert_eq!(ids(&first), sorted[..2], "{first}");
    assert_eq!(first["next"], sorted[1].as_str());
    let (_, second) = get(&api, &format!("/api/v1/queue?limit=2&after={}", sorted[1]));
    assert_eq!(ids(&second), sorted[2..], "{second}");
    assert_eq!(second["next"], serde_json::Value::Null);
    let (_, page) = get(&api, "/api/v1/queue?domain=else.test&older_than=0");
    assert_eq!(ids(&page), [z.as_str()]);
    let (_, page) = get(&api, "/api/v1/queue?to=y%40dest.test");
    assert_eq!(ids(&page), [y.as_str()]);
    assert_eq!(get(&api, "/api/v1/queue?state=gone").0, 400);
    assert_eq!(get(&api, "/api/v1/queue?limit=0").0, 400);
    assert_eq!(get(&api, "/api/v1/queue?colour=red").0, 400);

    // Show, with and without the message; an unknown id is 404.
    let (status, view) = get(&api, &format!("/api/v1/queue/{x}"));
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["entry"]["queue_id"], x.as_str());
    assert!(view["headers"].as_str().unwrap().contains("Subject: for x@dest.test"), "{view}");
    assert_eq!(view["message"], serde_json::Value::Null);
    let (_, view) = get(&api, &format!("/api/v1/queue/{x}?body=true"));
    assert!(view["message"].as_str().unwrap().contains("Subject: for x@dest.test"), "{view}");
    let (status, problem) = get(&api, "/api/v1/queue/NOSUCHID");
    assert_eq!((status, problem["status"].as_u64()), (404, Some(404)), "{problem}");

    let (status, summary) = get(&api, "/api/v1/queue/summary");
    assert_eq!(status, 200, "{summary}");
    let messages: u64 = summary["destinations"].as_array().unwrap().iter().map(|d| d["messages"].as_u64().unwrap()).sum();
    assert_eq!(messages, 4, "{summary}");

    // Scopes: the inject key cannot use the toolbox, the admin key cannot send.
    let (status, _, _) = curl(api.addr, "GET", "/api/v1/queue", Some(&api.key), "application/json", b"");
    assert_eq!(status, 403);
    let (status, _, _) = curl(api.addr, "POST", "/api/v1/queue/flush", Some(&api.key), "application/json", b"{\"all\":true}");
    assert_eq!(status, 403);
    let (status, _, _) = curl(api.addr, "POST", "/api/v1/messages", Some(&api.admin_key), "application/json", b"{}");
    assert_eq!(status, 403);
    let (status, _, _) = curl(api.addr, "GET", "/api/v1/queue", None, "application/json", b"");
    assert_eq!(status, 401);

    // A body that is not declared JSON, or is huge, is refused before it is parsed.
    let (status, _, _) = curl(api.addr, "POST", "/api/v1/queue/flush", Some(&api.admin_key), "text/plain", b"{\"all\":true}");
    assert_eq!(status, 415);
    let huge = format!("{{\"ids\": [{}]}}", vec!["\"0123456789ABC\""; 6000].join(","));
    let (status, _, _) = curl(api.addr, "POST", "/api/v1/queue/hold", Some(&api.admin_key), "application/json", huge.as_bytes());
    assert_eq!(status, 413);
    // Actions must name their messages, with their own fields only.
    assert_eq!(post(&api, "/api/v1/queue/flush", serde_json::json!({})).0, 422);
    assert_eq!(post(&api, "/api/v1/queue/hold", serde_json::json!({"domian": "dest.test"})).0, 400);
    assert_eq!(post(&api, "/api/v1/queue/hold", serde_json::json!({"all": true, "dry_run": true})).0, 422);
    assert_eq!(post(&api, "/api/v1/queue/bounce", serde_json::json!({"ids": [y], "status": "4.0.0"})).0, 422);
    let (status, problem) = post(&api, "/api/v1/queue/hold", serde_json::json!({"ids": [z, "NOSUCHID"]}));
    assert_eq!(status, 404, "{problem}");
    assert_eq!(get(&api, "/api/v1/queue?state=held").1["messages"], serde_json::json!([]), "nothing held for a bad id");

    // Hold z; delete w (after a dry run that removes nothing); bounce y.
    let (status, done) = post(&api, "/api/v1/queue/hold", serde_json::json!({"ids": [z]}));
    assert_eq!((status, done["ids"].clone()), (200, serde_json::json!([z])), "{done}");
    assert_eq!(ids(&get(&api, "/api/v1/queue?state=held").1), [z.as_str()]);
    let (_, done) = post(&api, "/api/v1/queue/delete", serde_json::json!({"to": "w@dest.test", "dry_run": true}));
    assert_eq!(done["ids"], serde_json::json!([w]), "{done}");
    assert_eq!(ids(&get(&api, &format!("/api/v1/queue?ids={w}")).1), [w.as_str()], "a dry run removes nothing");
    let (_, done) = post(&api, "/api/v1/queue/delete", serde_json::json!({"ids": [w]}));
    assert_eq!(done["messages"], 1, "{done}");
    let (status, done) = post(&api, "/api/v1/queue/bounce", serde_json::json!({"ids": [y], "status": "5.7.1", "reason": "stopped"}));
    assert_eq!(status, 200, "{done}");

    // Flushed with the destination open: x and y's bounce go out, z stays held until released.
    open.store(true, Ordering::SeqCst);
    let (status, done) = post(&api, "/api/v1/queue/flush", serde_json::json!({"all": true}));
    assert_eq!(status, 200, "{done}");
    let got = dest.wait_for(2, Duration::from_secs(20));
    assert!(got.iter().any(|m| m.rcpts == ["x@dest.test"]), "x delivered");
    let dsn = got.iter().find(|m| m.rcpts == ["orders@shop.test"]).expect("y's bounce to its sender");
    assert!(dsn.from.is_empty() && dsn.body.contains("5.7.1") && dsn.body.contains("stopped"), "{}", dsn.body);
    wait_listed(&api, "/api/v1/queue", 1);
    let (_, done) = post(&api, "/api/v1/queue/release", serde_json::json!({"ids": [z]}));
    assert_eq!(done["messages"], 1, "{done}");
    let got = dest.wait_for(3, Duration::from_secs(20));
    assert!(got.iter().any(|m| m.rcpts == ["z@else.test"]), "z delivered once released");
    assert!(!got.iter().any(|m| m.rcpts == ["w@dest.test"] || m.rcpts == ["y@dest.test"]), "deleted and bounced mail never sent");
    wait_listed(&api, "/api/v1/queue", 0);

    // Reload: the config read again, what changed said.
    let (status, report) = post(&api, "/api/v1/reload", serde_json::json!({}));
    assert_eq!(status, 200, "{report}");
    assert!(!report["listeners"].as_array().unwrap().is_empty(), "{report}");
}
