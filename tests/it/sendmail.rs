//! `sluice sendmail`: the local submission command (-t, -i, -f, -F, -bs, recipients as
//! arguments, invoked as `sendmail`), handing mail to the daemon over its socket.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Daemon, sluice_bin};
use crate::peers::dest::{Behavior, Dest};

fn me() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string()
}

/// Runs `program args...` with `input` on stdin; (exit code, stderr).
fn run(program: &str, args: &[&str], input: &[u8]) -> (i32, String) {
    let mut child = Command::new(program).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
}

fn daemon(dir: &std::path::Path, dest: &Dest, trusted: &str) -> Daemon {
    let extra = format!(
        "sendmail: {{ socket: {}/sendmail.sock, maildrop: {}/maildrop, trusted_users: [{trusted}] }}\ndelivery:\n  smarthost: \"[127.0.0.1]:{}\"\n  retry: [1s]\n",
        dir.display(),
        dir.display(),
        dest.addr.port()
    );
    Daemon::spawn(dir, &extra, &[])
}

#[test]
fn sendmail_t_builds_the_envelope_from_headers_with_the_callers_identity() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), &dest, "");
    let config = d.config_path.to_str().unwrap().to_string();
    // What cron and PHP pipe: bare LF, Bcc, a group; -f from an untrusted user is ignored.
    let input = b"From: App <app@x.test>\nTo: a@y.test, team: b@y.test, c@y.test;\nBcc: secret@y.test\nSubject: report\n\nline one\n.\nnot the end with -i\n";
    let (code, out) = run(sluice_bin(), &["sendmail", "-C", &config, "-t", "-i", "-f", "forged@x.test", "extra@y.test"], input);
    assert_eq!(code, 0, "{out}");
    let got = dest.wait_for(1, Duration::from_secs(20));
    let me = me();
    assert_eq!(got[0].from, format!("{me}@relay.test"), "the caller's identity, not -f");
    let mut rcpts = got[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["a@y.test", "b@y.test", "c@y.test", "extra@y.test", "secret@y.test"]);
    let body = &got[0].body;
    assert!(!body.contains("secret@y.test"), "Bcc removed: {body}");
    assert!(body.contains(&format!("Sender: <{me}@relay.test>\r\n")), "{body}");
    assert!(body.contains("\r\nline one\r\n.\r\nnot the end with -i\r\n"), "CRLF, and the dot kept with -i: {body}");
    assert!(body.contains("with local id") && body.contains(&format!("(from user {me} uid")), "{body}");
}

#[test]
fn trusted_users_may_set_the_return_path_and_a_dot_ends_input_without_i() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), &dest, &me());
    let config = d.config_path.to_str().unwrap().to_string();
    let input = b"Subject: x\n\nbefore\n.\nafter\n";
    let (code, out) = run(sluice_bin(), &["sendmail", "-C", &config, "-fbounces@x.test", "-F", "Cron Daemon", "to@y.test"], input);
    assert_eq!(code, 0, "{out}");
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].from, "bounces@x.test");
    assert!(got[0].body.contains(&format!("From: \"Cron Daemon\" <{}@relay.test>\r\n", me())), "{}", got[0].body);
    assert!(got[0].body.ends_with("\r\n\r\nbefore\r\n"), "{}", got[0].body);
}

#[test]
fn sendmail_bs_speaks_smtp_and_the_binary_answers_to_the_name_sendmail() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), &dest, "");
    let config = d.config_path.to_str().unwrap().to_string();
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(sluice_bin(), &link).unwrap();
    let dialogue = b"EHLO local\r\nMAIL FROM:<me@x.test>\r\nRCPT TO:<bs@y.test>\r\nDATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n";
    let (code, out) = run(link.to_str().unwrap(), &["-C", &config, "-bs"], dialogue);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("250 2.0.0") && out.contains("221"), "{out}");
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].rcpts, ["bs@y.test"]);
    // No daemon and no maildrop: EX_TEMPFAIL (75), saying both; nothing is written anywhere.
    drop(d);
    std::fs::remove_dir_all(dir.path().join("maildrop")).unwrap();
    let (code, out) = run(link.to_str().unwrap(), &["-C", &config, "x@y.test"], b"Subject: x\n\nx\n");
    assert_eq!(code, 75, "{out}");
    assert!(out.contains("not answering") && out.contains("maildrop"), "{out}");
    assert!(!dir.path().join("maildrop").exists());
}

/// With the daemon stopped, sendmail leaves the message in the maildrop and exits 0; the
/// daemon takes it in when it starts, and it is delivered. A file that can never be
/// accepted is set aside in maildrop/corrupt, not lost and not retried for ever.
#[test]
fn sendmail_while_the_daemon_is_down_is_delivered_once_it_runs() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(dir.path(), &dest, "");
    let config = d.config_path.to_str().unwrap().to_string();
    let maildrop = dir.path().join("maildrop");
    assert!(maildrop.is_dir(), "the daemon made the maildrop");
    d.kill9();
    let (code, out) = run(sluice_bin(), &["sendmail", "-C", &config, "late@y.test"], b"Subject: during the restart\n\nbody\n");
    assert_eq!(code, 0, "{out}");
    let dropped: Vec<_> = std::fs::read_dir(&maildrop).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    assert!(dropped[0].to_str().unwrap().ends_with(".msg"));
    std::fs::write(maildrop.join("garbage.msg"), b"not a request\n").unwrap();
    let d = daemon(dir.path(), &dest, "");
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].rcpts, ["late@y.test"]);
    assert!(got[0].body.contains("Subject: during the restart\r\n"), "{}", got[0].body);
    assert!(!dropped[0].exists(), "taken in and removed");
    assert!(maildrop.join("corrupt/garbage.msg").exists(), "{}", d.log_text());
    assert!(d.log_text().contains("maildrop file refused"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dest.wait_for(1, Duration::from_secs(1)).len(), 1, "delivered once");
}

#[test]
fn help_prints_the_usage_and_sends_nothing() {
    // No config is read for --help: it works before the relay is set up.
    let out = std::process::Command::new(crate::common::sluice_bin()).args(["sendmail", "--help"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("usage: sendmail") && text.contains("-t ") && text.contains("-bs"), "{text}");
    let bad = std::process::Command::new(crate::common::sluice_bin()).args(["sendmail", "-X"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unsupported option -X\nusage: sendmail"));
}
