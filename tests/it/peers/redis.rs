//! Debian's redis-server on loopback, started and stopped by a test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    /// With more `redis-server` arguments.
    pub fn start_with(port: u16, more: &[&str]) -> Redis {
        let mut args = vec!["--port".to_string(), port.to_string()];
        args.extend(more.iter().map(|a| a.to_string()));
        Redis::spawn(port, &args)
    }

    /// Over TLS only, on `port`, with this certificate and key.
    pub fn start_tls(port: u16, cert: &Path, key: &Path) -> Redis {
        let args: Vec<String> = ["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", "no"]
            .iter()
            .map(|a| a.to_string())
            .chain(["--tls-cert-file".into(), cert.display().to_string(), "--tls-key-file".into(), key.display().to_string()])
            .collect();
        Redis::spawn(port, &args)
    }

    /// One node of a Redis Cluster, its state kept in `dir` (see [`create_cluster`]).
    pub fn start_cluster_node(port: u16, dir: &Path) -> Redis {
        let conf = dir.join(format!("nodes-{port}.conf"));
        Redis::start_with(
            port,
            &["--cluster-enabled", "yes", "--cluster-config-file", conf.to_str().unwrap(), "--dir", dir.to_str().unwrap()],
        )
    }

    fn spawn(port: u16, args: &[String]) -> Redis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { child, port }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// One command by redis-cli; its answer, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("redis-cli (redis-tools)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Makes `nodes` one Redis Cluster (every slot shared out, no replicas) and waits until each
/// says so.
pub fn create_cluster(nodes: &[&Redis]) {
    let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli (redis-tools)");
    assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
        assert!(Instant::now() < deadline, "the cluster never came up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
