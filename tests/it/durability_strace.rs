//! A 250 is written only after fsyncs that cover the message have returned.
//!
//! kill -9 cannot catch a missing fsync (the page cache survives it), so this test runs the
//! daemon under strace and checks the order of system calls: for every message, an fdatasync
//! (or fsync) of its body segment and one of the index must start after the body was written
//! and return before the 250 naming its queue id is written.

use std::collections::HashMap;

use crate::common::{Client, Daemon};

#[derive(Debug)]
struct Call {
    name: String,
    /// The fd argument's path as strace -y prints it (`7</spool/bodies/1.seg>` gives the path).
    path: String,
    args: String,
    start: usize,
    end: usize,
    ok: bool,
}

/// Parses `strace -f -y` output, joining `<unfinished ...>` and `<... resumed>` halves.
fn parse(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut open: HashMap<String, (String, String, usize)> = HashMap::new();
    for (i, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let name = resumed.split_whitespace().next().unwrap_or("").to_string();
            if let Some((n, args, start)) = open.remove(pid)
                && n == name
            {
                calls.push(Call { path: fd_path(&args), name, args, start, end: i, ok: returned_ok(resumed) });
            }
            continue;
        }
        let Some(paren) = rest.find('(') else {
            continue;
        };
        let name = rest[..paren].to_string();
        let args = rest[paren + 1..].to_string();
        if rest.ends_with("<unfinished ...>") {
            open.insert(pid.to_string(), (name, args, i));
        } else {
            calls.push(Call { path: fd_path(&args), name, args, start: i, end: i, ok: returned_ok(rest) });
        }
    }
    calls
}

/// A call returned successfully: `= N`, not `= -1 EIO (...)`.
fn returned_ok(line: &str) -> bool {
    line.rsplit_once(" = ").is_some_and(|(_, r)| !r.starts_with('-'))
}

fn fd_path(args: &str) -> String {
    args.split_once('<').and_then(|(_, r)| r.split_once('>')).map(|(p, _)| p.to_string()).unwrap_or_default()
}

#[test]
fn every_250_follows_returned_fsyncs_of_its_body_and_index() {
    if std::process::Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is required for this test (apt-get install strace; .ci/run installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let trace_path = dir.path().join("trace.txt");
    let trace_arg = trace_path.to_str().unwrap().to_string();
    let prefix = ["strace", "-f", "-y", "-s", "256", "-e", "trace=fsync,fdatasync,write,sendto,pwrite64,pwritev,writev", "-o", &trace_arg];
    let mut daemon = Daemon::spawn(dir.path(), "", &prefix);

    let mut queue_ids = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let addr = daemon.addr;
                s.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..3 {
                        let mut c = Client::connect(addr);
                        let r = c.send_mail("a@x.test", &[&format!("t{t}m{i}@y.test")], &format!("Subject: {t}/{i}\r\n\r\nbody\r\n"));
                        assert_eq!(r.code, 250);
                        ids.push(r.text().rsplit(' ').next().unwrap().to_string());
                    }
                    ids
                })
            })
            .collect();
        for h in handles {
            queue_ids.extend(h.join().unwrap());
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    daemon.kill9();

    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let calls = parse(&trace);
    let is_sync = |c: &&Call| (c.name == "fdatasync" || c.name == "fsync") && c.ok;
    for qid in &queue_ids {
        let body_write = calls
            .iter()
            .find(|c| c.name.starts_with("pwrite") && c.path.ends_with(".seg") && c.args.contains(&format!("id {qid}")))
            .unwrap_or_else(|| panic!("no body write for {qid}"));
        let reply = calls
            .iter()
            .find(|c| (c.name == "sendto" || c.name == "write" || c.name == "writev") && c.args.contains(&format!("queued as {qid}")))
            .unwrap_or_else(|| panic!("no 250 for {qid}"));
        let covering = |path_ok: &dyn Fn(&str) -> bool| {
            calls.iter().filter(is_sync).any(|c| path_ok(&c.path) && c.start > body_write.end && c.end < reply.start)
        };
        assert!(covering(&|p| p == body_write.path), "{qid}: no fsync of {} between its write and its 250", body_write.path);
        assert!(covering(&|p| p.ends_with("/index/db")), "{qid}: no fsync of the index between its write and its 250");
    }
    assert_eq!(queue_ids.len(), 12);
}

#[test]
fn the_parser_joins_unfinished_calls() {
    let trace = "1 fdatasync(7</s/bodies/1.seg> <unfinished ...>\n2 sendto(9<socket:[1]>, \"250 x\", 5, 0, NULL, 0) = 5\n1 <... fdatasync resumed>) = 0\n";
    let calls = parse(trace);
    assert_eq!(calls.len(), 2);
    let f = calls.iter().find(|c| c.name == "fdatasync").unwrap();
    assert_eq!((f.start, f.end, f.path.as_str(), f.ok), (0, 2, "/s/bodies/1.seg", true));
}
