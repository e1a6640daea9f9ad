//! `sluice queue show ID [--body] [--json]`: one message with its recipients' states and its
//! headers (the whole message with --body), from the daemon or, without one, from the spool.

use crate::common::{Client, Daemon, sluice_status};

#[test]
fn show_prints_the_envelope_headers_and_on_request_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::spawn(dir.path(), "", &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> RET=HDRS ENVID=env1").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    let r = c.cmd("Subject: shown\r\n\r\nthe body line\r\n.");
    let id = r.text().rsplit(' ').next().unwrap().to_string();

    let (code, out, err) = sluice_status(&["queue", "show", "--config", &path, &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("b@y.test  queued  attempts 0"), "{out}");
    assert!(out.contains("ret HDRS  envid env1"), "{out}");
    assert!(out.contains("Received: from client.test") && out.contains("Subject: shown"), "{out}");
    assert!(!out.contains("the body line"), "headers only without --body: {out}");

    let (code, out, _) = sluice_status(&["queue", "show", "--config", &path, &id, "--body"]);
    assert_eq!(code, 0);
    assert!(out.contains("Subject: shown\n\nthe body line\n"), "{out}");

    let (code, out, _) = sluice_status(&["queue", "show", "--config", &path, &id, "--json"]);
    assert_eq!(code, 0);
    let view: sluice::admin::MessageView = serde_json::from_str(&out).unwrap();
    assert_eq!((view.entry.queue_id.as_str(), view.envid.as_deref(), view.message), (id.as_str(), Some("env1"), None));

    let (code, _, err) = sluice_status(&["queue", "show", "--config", &path, "NOSUCHID"]);
    assert_eq!(code, 3, "{err}");

    // Without a daemon, from the spool.
    daemon.kill9();
    let (code, out, err) = sluice_status(&["queue", "show", "--config", &path, &id, "--body"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the body line"), "{out}");
}
