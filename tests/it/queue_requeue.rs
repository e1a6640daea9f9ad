//! `sluice queue requeue` (postsuper -r): after a config change, queued mail is routed again
//! now instead of at its next retry; and `queue show` lists each recipient's attempts.

use std::time::{Duration, Instant};

use crate::common::{Client, Daemon, config_yaml, sluice_status};
use crate::peers::dest::{Behavior, Dest};

fn routed_to(port: u16) -> String {
    format!("delivery:\n  retry: [1h]\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{port}\" }}\n")
}

fn wait_deferred(path: &str, attempts: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = sluice_status(&["queue", "list", "--config", path, "--json"]);
        if let Some(e) = out.lines().map(|l| serde_json::from_str::<sluice::admin::QueueEntry>(l).unwrap()).next()
            && e.recipients[0].attempts >= attempts
        {
            return e.queue_id;
        }
        assert!(Instant::now() < deadline, "no deferral: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn requeue_routes_deferred_mail_again_under_the_reloaded_config() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    // First routed to a closed port: deferred, next attempt in an hour.
    let daemon = Daemon::spawn(dir.path(), &routed_to(9), &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    assert_eq!(Client::connect(daemon.addr).send_mail("s@x.test", &["r@dest.test"], "x\r\n").code, 250);
    let id = wait_deferred(&path, 1);
    std::fs::write(&daemon.config_path, config_yaml(dir.path(), &routed_to(dest.addr.port()))).unwrap();
    let (code, _, err) = sluice_status(&["reload", "--config", &path]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = sluice_status(&["queue", "requeue", "--config", &path, "--to", "dest.test"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("1 message(s) requeued: {id}")), "{out}");
    assert_eq!(dest.wait_for(1, Duration::from_secs(20))[0].rcpts, ["r@dest.test"]);
    let (code, _, err) = sluice_status(&["queue", "requeue", "--config", &path]);
    assert_eq!(code, 2, "nothing selected is a usage error: {err}");
}

#[test]
fn show_lists_each_attempt_with_its_host_and_reply() {
    let dest = Dest::start(Behavior { after_dot: std::sync::Arc::new(|n| format!("451 4.3.0 busy {n}")), ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("delivery:\n  retry: [2s]\n  routes: {{ \"dest.test\": \"[127.0.0.1]:{}\" }}\n", dest.addr.port());
    let daemon = Daemon::spawn(dir.path(), &extra, &[]);
    let path = daemon.config_path.to_str().unwrap().to_string();
    assert_eq!(Client::connect(daemon.addr).send_mail("s@x.test", &["r@dest.test"], "x\r\n").code, 250);
    let id = wait_deferred(&path, 2);
    let (code, out, err) = sluice_status(&["queue", "show", "--config", &path, &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("attempts for r@dest.test:"), "{out}");
    let first = out.lines().position(|l| l.contains("127.0.0.1: 451 4.3.0 busy 0")).expect(&out);
    let second = out.lines().position(|l| l.contains("127.0.0.1: 451 4.3.0 busy 1")).expect(&out);
    assert!(first < second, "oldest first: {out}");
}
