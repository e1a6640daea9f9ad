//! `sluice queue list` asks the running daemon, and reads the spool when none runs.

use crate::common::{Daemon, sluice};
use sluice::admin::QueueEntry;

#[test]
fn queue_list_from_the_daemon_and_from_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::spawn(dir.path(), "", &[]);
    let mut c = crate::common::Client::connect(daemon.addr);
    let r = c.send_mail("a@x.test", &["b@y.test", "c@z.test"], "Subject: q\r\n\r\nq\r\n");
    let queue_id = r.text().rsplit(' ').next().unwrap().to_string();
    let config = daemon.config_path.to_str().unwrap().to_string();

    let (ok, out, err) = sluice(&["queue", "list", "--config", &config, "--json"]);
    assert!(ok, "{err}");
    let entries: Vec<QueueEntry> = serde_json::from_str(&out).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].queue_id, queue_id);
    assert_eq!(entries[0].from, "a@x.test");
    let rcpts: Vec<(&str, &str)> = entries[0].recipients.iter().map(|r| (r.address.as_str(), "queued")).collect();
    assert_eq!(rcpts, [("b@y.test", "queued"), ("c@z.test", "queued")]);
    assert!(out.contains("\"state\": \"queued\""));

    // Human-readable form.
    let (ok, table, _) = sluice(&["queue", "list", "--config", &config]);
    assert!(ok && table.contains(&queue_id) && table.contains("c@z.test  queued"), "{table}");

    // With the daemon stopped the spool is opened directly.
    daemon.kill9();
    let (ok, out, err) = sluice(&["queue", "list", "--config", &config, "--json"]);
    assert!(ok, "{err}");
    let entries: Vec<QueueEntry> = serde_json::from_str(&out).unwrap();
    assert_eq!(entries[0].queue_id, queue_id);
}
