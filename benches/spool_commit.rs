//! Criterion bench of the durable spool: messages stored by 1, 8 and 64 concurrent writers,
//! each waiting for its commit (fdatasync of the body segment and sled's log) as a 250 does.
//! Criterion reports messages per second; after each case the bench prints the messages per
//! commit (round of fsyncs) and the median and p99 store-to-durable latency it saw. Then the
//! scheduler's reads of the schedule those messages make up.
//!
//! The spool lives under `target/` (the repository's disk, never a tmpfs, so the fsyncs are
//! real). `cargo bench --bench spool_commit`.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::SpoolConfig;
use sluice::smtp::address::{MailParams, Mailbox, RcptParams};
use sluice::spool::{Envelope, Identity, RecipientRecord, SledSpool, Spool};

fn envelope(spool: &SledSpool, now: u64) -> Envelope {
    Envelope {
        queue_id: spool.new_queue_id(),
        from: Some(Mailbox { local: "sender".into(), domain: "example.org".into() }),
        params: MailParams::default(),
        recipients: vec![RecipientRecord::queued(
            Mailbox { local: "rcpt".into(), domain: "example.net".into() },
            RcptParams::default(),
            now,
        )],
        client_ip: "127.0.0.1".parse().unwrap(),
        helo: "client.example.org".into(),
        identity: Identity::TrustedNetwork,
        listener: "127.0.0.1:25".parse().unwrap(),
        arrival: now,
        arrival_ms: None,
        body: None,
        held: false,
        message_id: None,
    }
}

fn commit(c: &mut Criterion) {
    std::fs::create_dir_all("target").unwrap();
    let dir = tempfile::tempdir_in("target").unwrap();
    let spool = SledSpool::open(&SpoolConfig { path: dir.path().join("spool"), min_free_space: 0, ..SpoolConfig::default() }).unwrap();
    let body = format!("Subject: bench\r\n\r\n{}\r\n", "x".repeat(1000));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 86400;
    let mut g = c.benchmark_group("spool_commit");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for writers in [1u64, 8, 64] {
        let latencies = Mutex::new(Vec::new());
        let (commits0, mut stored) = (spool.commits(), 0u64);
        g.bench_function(format!("{writers}_writers"), |b| {
            b.iter_custom(|iters| {
                // `iters` messages in all, shared by the writers (at least one each).
                let per_writer = iters.div_ceil(writers);
                stored += per_writer * writers;
                let started = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..writers {
                        s.spawn(|| {
                            let mut mine = Vec::with_capacity(per_writer as usize);
                            for _ in 0..per_writer {
                                let t = Instant::now();
                                spool.store(envelope(&spool, now), &[body.as_bytes()]).unwrap().wait_blocking().unwrap();
                                mine.push(t.elapsed());
                            }
                            latencies.lock().unwrap().extend(mine);
                        });
                    }
                });
                started.elapsed().mul_f64(iters as f64 / (per_writer * writers) as f64)
            })
        });
        let mut l = latencies.into_inner().unwrap();
        l.sort();
        let pick = |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1))).copied().unwrap_or(Duration::ZERO);
        let commits = (spool.commits() - commits0).max(1);
        println!(
            "spool_commit/{writers}_writers: {:.1} messages per commit; store to durable: median {:?}, p99 {:?}",
            stored as f64 / commits as f64,
            pick(0.5),
            pick(0.99)
        );
    }
    g.finish();

    // The runner's scheduler reads the head of the schedule: the 100 earliest due messages
    // out of everything stored above (all due tomorrow).
    let queued = spool.len();
    let mut g = c.benchmark_group("spool_schedule");
    g.bench_function(format!("due_100_of_{queued}"), |b| b.iter(|| assert_eq!(spool.due(now, 100).unwrap().len(), 100.min(queued))));
    g.bench_function(format!("next_due_of_{queued}"), |b| b.iter(|| spool.next_due().unwrap()));
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
