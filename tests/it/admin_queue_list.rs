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

/// With `admin.group`, the socket belongs to that group and its members may use it (0660);
/// without, only the daemon's user (0600).
#[test]
fn the_admin_socket_is_the_configured_groups() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // SAFETY: geteuid and getegid have no preconditions.
    let (root, own) = unsafe { (libc::geteuid() == 0, libc::getegid()) };
    // As root, a group other than our own, so the ownership check means something.
    let group = match root {
        true => ["nogroup", "daemon"].into_iter().find(|g| sluice::sys::group_id(g).is_some()).expect("a system group").to_string(),
        false => sluice::sys::group_name(own).expect("our group has a name"),
    };
    let gid = sluice::sys::group_id(&group).unwrap();
    for (extra, mode, owner) in [(format!("admin:\n  group: {group}\n"), 0o660, gid), (String::new(), 0o600, own)] {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::spawn(dir.path(), &extra, &[]);
        let config = sluice::config::Config::load(&daemon.config_path).unwrap();
        let meta = std::fs::metadata(&config.admin.socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{extra:?}");
        assert_eq!(meta.gid(), owner, "{extra:?}");
        let (ok, _, err) = sluice(&["queue", "list", "--config", daemon.config_path.to_str().unwrap()]);
        assert!(ok, "{err}");
    }
}
