//! The delivery I/O backend: io_uring where the kernel allows it, epoll where a seccomp filter
//! refuses `io_uring_setup` (as container runtimes' default profiles do), and `io: uring`
//! refusing to start rather than silently running on epoll.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{Client, Daemon, config_yaml, sluice_bin};
use crate::metrics_endpoint::{free_port, scrape};
use crate::peers::dest::{Behavior, Dest};

/// Installs a seccomp filter in the child that fails `io_uring_setup` with EPERM.
fn forbid_io_uring(command: &mut Command) {
    // SAFETY: between fork and exec only prctl is called, with a filter that lives on this
    // stack frame until the call returns (the kernel copies it).
    unsafe {
        command.pre_exec(|| {
            const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
            const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
            const RET_K: u16 = 0x06; // BPF_RET | BPF_K
            let filter = [
                // seccomp_data.nr is at offset 0.
                libc::sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: 0 },
                libc::sock_filter { code: JEQ_K, jt: 0, jf: 1, k: libc::SYS_io_uring_setup as u32 },
                libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32 },
                libc::sock_filter { code: RET_K, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW },
            ];
            let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut _ };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const libc::sock_fprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn delivering(io: &str, dest: &Dest, metrics: u16) -> String {
    format!(
        "metrics: {{ address: \"127.0.0.1:{metrics}\" }}\ndelivery:\n  io: {io}\n  smarthost: \"[127.0.0.1]:{}\"\n  retry: [1s]\n",
        dest.addr.port()
    )
}

fn relays_one_message(daemon: &Daemon, dest: &Dest) {
    let mut c = Client::connect(daemon.addr);
    assert_eq!(c.send_mail("a@sender.test", &["b@dest.test"], "Subject: io\r\n\r\nhello\r\n").code, 250);
    let got = dest.wait_for(1, Duration::from_secs(20));
    assert_eq!(got[0].rcpts, vec!["b@dest.test"]);
}

#[test]
fn auto_uses_io_uring_where_the_kernel_allows_it() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let daemon = Daemon::spawn(dir.path(), &delivering("auto", &dest, port), &[]);
    relays_one_message(&daemon, &dest);
    assert!(scrape(port).contains("sluice_delivery_io_backend{backend=\"io_uring\"} 1"), "{}", daemon.log_text());
    assert!(daemon.log_text().contains("backend=io_uring"), "{}", daemon.log_text());
}

#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let daemon = Daemon::spawn_with(dir.path(), &delivering("auto", &dest, port), &[], forbid_io_uring);
    relays_one_message(&daemon, &dest);
    let log = daemon.log_text();
    assert!(log.contains("io_uring is unavailable; delivery uses epoll"), "{log}");
    assert!(log.contains("backend=epoll"), "{log}");
    assert!(scrape(port).contains("sluice_delivery_io_backend{backend=\"epoll\"} 1"));
}

#[test]
fn io_uring_required_refuses_to_start_without_it() {
    let dest = Dest::start(Behavior::default());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_yaml(dir.path(), &delivering("uring", &dest, free_port()))).unwrap();
    let mut command = Command::new(sluice_bin());
    command.args(["run", "--config", config.to_str().unwrap()]).stdin(Stdio::null());
    forbid_io_uring(&mut command);
    let out = command.output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("delivery.io is uring, but io_uring is unavailable"), "{stderr}");
}
