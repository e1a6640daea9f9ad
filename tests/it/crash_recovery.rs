//! kill -9 right after a 250, then restart: the message is there.

use crate::common::{Client, Daemon, sluice};
use sluice::admin::QueueEntry;

#[test]
fn a_message_acknowledged_before_kill_9_is_there_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::spawn(dir.path(), "", &[]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(daemon.addr);
        let r = c.send_mail("a@x.test", &[&format!("r{i}@y.test")], &format!("Subject: {i}\r\n\r\nbody {i}\r\n"));
        assert_eq!(r.code, 250);
        ids.push(r.text().rsplit(' ').next().unwrap().to_string());
    }
    // No QUIT, no shutdown: SIGKILL right after the last 250.
    daemon.kill9();

    let restarted = Daemon::spawn(dir.path(), "", &[]);
    assert!(restarted.log_text().contains("messages=5"), "{}", restarted.log_text());
    let (ok, out, err) = sluice(&["queue", "list", "--config", restarted.config_path.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let entries: Vec<QueueEntry> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(entries.iter().map(|e| e.queue_id.clone()).collect::<Vec<_>>(), ids);
    // The restarted daemon keeps accepting, with ids after the recovered ones.
    let mut c = Client::connect(restarted.addr);
    let r = c.send_mail("a@x.test", &["new@y.test"], "x\r\n");
    assert!(r.text().rsplit(' ').next().unwrap() > ids[4].as_str());
}
