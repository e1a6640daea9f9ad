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
    let entries: Vec<QueueEntry> = json_lines(&out);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].queue_id, queue_id);
    assert_eq!(entries[0].from, "a@x.test");
    let rcpts: Vec<(&str, &str)> = entries[0].recipients.iter().map(|r| (r.address.as_str(), "queued")).collect();
    assert_eq!(rcpts, [("b@y.test", "queued"), ("c@z.test", "queued")]);
    assert!(out.contains("\"state\":\"queued\""), "{out}");

    // Human-readable form.
    let (ok, table, _) = sluice(&["queue", "list", "--config", &config]);
    assert!(ok && table.contains(&queue_id) && table.contains("c@z.test  queued"), "{table}");

    // With the daemon stopped the spool is read (a snapshot: see below).
    daemon.kill9();
    let (ok, out, err) = sluice(&["queue", "list", "--config", &config, "--json"]);
    assert!(ok, "{err}");
    let entries: Vec<QueueEntry> = json_lines(&out);
    assert_eq!(entries[0].queue_id, queue_id);
}

fn json_lines(out: &str) -> Vec<QueueEntry> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// Every file under `dir` with its bytes, mode and owner.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
                out.push((p, Vec::new(), m.mode(), m.uid()));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap(), m.mode(), m.uid()));
            }
        }
    }
    out.sort();
    out
}

/// The offline commands read a snapshot: the spool stays byte for byte as it was, and a spool
/// that does not exist yet is not created.
#[test]
fn the_offline_admin_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.yaml");
    std::fs::write(&config_path, crate::common::config_yaml(dir.path(), "")).unwrap();
    let config = config_path.to_str().unwrap();
    // A fresh install: no spool yet.
    let (ok, out, err) = sluice(&["queue", "list", "--config", config]);
    assert!(ok && out.contains("0 message(s)"), "{out}{err}");
    let (ok, _, err) = sluice(&["queue", "summary", "--config", config]);
    assert!(ok, "{err}");
    assert!(!dir.path().join("spool").exists(), "the offline admin created the spool");

    let mut daemon = Daemon::spawn(dir.path(), "", &[]);
    let mut c = crate::common::Client::connect(daemon.addr);
    let id = c.send_mail("a@x.test", &["b@y.test"], "Subject: s\r\n\r\nbody\r\n").text().rsplit(' ').next().unwrap().to_string();
    drop(c);
    daemon.kill9();
    let before = tree(&dir.path().join("spool"));
    for args in [vec!["queue", "list"], vec!["queue", "list", "--json"], vec!["queue", "summary"], vec!["queue", "show", &id, "--body"]] {
        let mut args = args.clone();
        args.extend(["--config", config]);
        let (ok, out, err) = sluice(&args);
        assert!(ok, "{args:?}: {err}");
        assert!(out.contains(&id) || args[1] == "summary", "{args:?}: {out}");
    }
    assert_eq!(tree(&dir.path().join("spool")), before, "the spool changed");
}

/// A daemon that runs but whose socket this user may not open is named as such (exit 69),
/// not taken for an absent daemon.
#[test]
fn a_socket_that_cannot_be_opened_is_named() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(dir.path(), "", &[]);
    let config = sluice::config::Config::load(&daemon.config_path).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = std::process::Command::new(crate::common::sluice_bin());
    command.args(["queue", "list", "--config", daemon.config_path.to_str().unwrap()]);
    if root {
        // Root opens any socket: ask as nobody, who may read the config but not the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&daemon.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        command.uid(65534).gid(65534);
    } else {
        std::fs::set_permissions(&config.admin.socket, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = command.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("cannot be opened") && err.contains("admin.group"), "{err}");
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
