//! `sluice queue list` filters and streaming, the same filters on actions, and the Postfix
//! habits `mailq`, `sendmail -bp` and `sendmail -q`.

use std::time::{Duration, Instant};

use crate::common::{Client, Daemon, sluice_bin, sluice_status};
use crate::peers::dest::{Behavior, Dest};

fn ids_of(out: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        out.lines().map(|l| serde_json::from_str::<sluice::admin::QueueEntry>(l).unwrap_or_else(|e| panic!("{e}: {l}")).queue_id).collect();
    ids.sort();
    ids
}

#[test]
fn filters_select_by_sender_recipient_state_age_and_id() {
    let dir = tempfile::tempdir().unwrap();
    // Every next hop is a closed port: the first attempt defers (retry in an hour).
    let routes = "delivery:\n  retry: [1h]\n  routes: { \"gmail.test\": \"[127.0.0.1]:9\", \"yahoo.test\": \"[127.0.0.1]:9\" }\n";
    let daemon = Daemon::spawn(dir.path(), routes, &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    let mut c = Client::connect(daemon.addr);
    let id = |r: crate::common::Reply| r.text().rsplit(' ').next().unwrap().to_string();
    let shop = id(c.send_mail("app@shop.test", &["x@gmail.test"], "a\r\n"));
    let cron = id(c.send_mail("cron@host.test", &["y@yahoo.test", "z@gmail.test"], "b\r\n"));
    let list = |args: &[&str]| {
        let mut all = vec!["queue", "list", "--config", &path, "--json"];
        all.extend(args);
        let (code, out, err) = sluice_status(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
        ids_of(&out)
    };
    let mut both = vec![shop.clone(), cron.clone()];
    both.sort();
    assert_eq!(list(&[]), both);
    assert_eq!(list(&["--from", "@shop.test"]), vec![shop.clone()]);
    assert_eq!(list(&["--from", "CRON@host.test"]), vec![cron.clone()]);
    assert_eq!(list(&["--to", "yahoo.test"]), vec![cron.clone()]);
    assert_eq!(list(&["--domain", "gmail.test"]), both);
    assert_eq!(list(&["--domain", "gmail.test", "--from", "@host.test"]), vec![cron.clone()]);
    assert_eq!(list(&["--id", &shop]), vec![shop.clone()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while list(&["--state", "deferred"]) != both {
        assert!(Instant::now() < deadline, "not deferred: {:?}", list(&[]));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(list(&["--state", "queued"]), Vec::<String>::new());
    assert!(list(&["--older-than", "1h"]).is_empty());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(list(&["--older-than", "1s"]), both);
    let (code, _, err) = sluice_status(&["queue", "list", "--config", &path, "--state", "stuck"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = sluice_status(&["queue", "list", "--config", &path, "--older-than", "soon"]);
    assert_eq!(code, 2, "{err}");

    // qshape's view: per destination, messages by age (both are under five minutes old).
    let (code, table, err) = sluice_status(&["queue", "summary", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    let gmail = table.lines().find(|l| l.starts_with("gmail.test")).unwrap_or_else(|| panic!("{table}"));
    let columns: Vec<&str> = gmail.split_whitespace().collect();
    assert!(table.lines().next().unwrap().contains("<5m") && columns[1..3] == ["2", "2"] && columns[4] == "2", "{table}");

    // The same filters pick what an action takes.
    let (code, out, err) = sluice_status(&["queue", "delete", "--config", &path, "--from", "@shop.test", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{{\"would be deleted\":[\"{shop}\"]}}"));
    let (code, _, err) = sluice_status(&["queue", "hold", "--config", &path, "--to", "yahoo.test"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(list(&["--state", "held"]), vec![cron.clone()]);

    // mailq (the binary under that name) and sendmail -bp list the same.
    let mailq = dir.path().join("mailq");
    std::os::unix::fs::symlink(sluice_bin(), &mailq).unwrap();
    let out = std::process::Command::new(&mailq).args(["-C", &path]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains(&shop) && table.contains(&format!("{cron} (held)")), "{table}");
    assert!(table.contains("2 message(s)"), "{table}");
    let (code, table, err) = sluice_status(&["sendmail", "-bp", "-C", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains(&shop) && table.contains("2 message(s)"), "{table}");
}

/// A long listing comes out as one JSON object per line, every message once. (That neither
/// side holds the queue in memory is measured by `benches/queue_list_memory.sh`, not here.)
#[test]
fn a_long_queue_streams_one_line_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::spawn(dir.path(), "", &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO c.test");
    for _ in 0..2000 {
        let replies = c.pipeline(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n", 3);
        assert_eq!(replies[2].code, 354);
        c.send(b"x\r\n.\r\n");
        assert_eq!(c.reply().code, 250);
    }
    let (code, out, err) = sluice_status(&["queue", "list", "--config", &path, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2000);
    assert!(out.lines().all(|l| l.starts_with("{\"queue_id\":")));
}

#[test]
fn sendmail_q_flushes_deferred_mail() {
    let dest = Dest::start(Behavior {
        after_dot: std::sync::Arc::new(|n| if n == 0 { "451 4.3.0 later".into() } else { "250 2.0.0 ok".into() }),
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("delivery:\n  retry: [1h]\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\" }}\n", dest.addr.port());
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    assert_eq!(Client::connect(daemon.addr).send_mail("s@x.test", &["r@dest.test"], "x\r\n").code, 250);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = sluice_status(&["queue", "list", "--config", &path, "--state", "deferred", "--json"]);
        if out.lines().count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no deferral");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, err) = sluice_status(&["sendmail", "-q", "-C", &path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 message(s) flushed"), "{out}");
    assert_eq!(dest.wait_for(1, Duration::from_secs(20)).len(), 1);
}
