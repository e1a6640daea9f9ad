//! Criterion benches of the delivery core, without sockets:
//! - the client transaction machine against an in-memory peer: Sluice's own sans-IO server
//!   session, fed each side's output in turn (transactions per second, both machines' work);
//! - the shaping operations every delivery goes through: picking a destination's bucket, the
//!   GCRA rate limiter, and a token from a rate queue.
//!
//! `cargo bench --bench delivery_core`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::Config;
use sluice::delivery::route::Target;
use sluice::shaping::Shaper;
use sluice::shaping::queue::RateQueue;
use sluice::shaping::rate::{Gcra, Rate};
use sluice::smtp::address::{MailParams, Mailbox, RcptParams};
use sluice::smtp::client::{Client, ClientConfig, Event as ClientEvent, Message, RcptOutcome, TlsPolicy};
use sluice::smtp::server::{ClientInfo, Event as ServerEvent, Session, SessionConfig};

mod support;

fn server_config() -> Arc<SessionConfig> {
    Arc::new(support::session_config("mx.dest.test", "dest.test"))
}

/// A connected client and server, talking through two in-memory buffers.
struct Pair {
    client: Client,
    server: Session,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

impl Pair {
    fn connect(cfg: &Arc<SessionConfig>, chunking: bool) -> Pair {
        let info =
            ClientInfo { ip: "127.0.0.1".parse().unwrap(), relay_allowed: true, plaintext_auth: false, tls: None, tls_required: false };
        let client = Client::new(ClientConfig {
            ehlo_name: "relay.test".into(),
            our_hostname: "relay.test".into(),
            tls: TlsPolicy::Opportunistic,
            auth: None,
            chunking,
        });
        let mut pair = Pair { client, server: Session::new(cfg.clone(), info), to_server: Vec::new(), to_client: Vec::new() };
        pair.server.greeting(&mut pair.to_client);
        assert_eq!(pair.run(), ClientEvent::Ready);
        pair
    }

    /// Passes bytes back and forth until the client reports an event.
    fn run(&mut self) -> ClientEvent {
        loop {
            self.client.feed(&self.to_client);
            self.to_client.clear();
            if let Some(event) = self.client.poll(&mut self.to_server) {
                return event;
            }
            // What the client wrote is on its way: it may now take the replies to it.
            self.client.written();
            self.server.feed(&self.to_server);
            self.to_server.clear();
            while let ServerEvent::Message(tx) = self.server.poll(&mut self.to_client) {
                black_box(tx.body.len());
                self.server.message_stored(Ok("0123456789ABC"), &mut self.to_client);
            }
            assert!(!self.to_client.is_empty(), "the conversation stalled");
        }
    }
}

fn message(recipients: usize, body: &Arc<Vec<u8>>) -> Message {
    Message {
        from: Some(Mailbox { local: "sender".into(), domain: "example.org".into() }),
        params: MailParams::default(),
        recipients: (0..recipients)
            .map(|i| (Mailbox { local: format!("r{i}"), domain: "dest.test".into() }, RcptParams::default()))
            .collect(),
        body: body.clone(),
    }
}

fn client_transactions(c: &mut Criterion) {
    let cfg = server_config();
    let line = "A line of a message body, padded out to sixty-four characters.\r\n";
    let mut g = c.benchmark_group("client_transaction");
    g.throughput(Throughput::Elements(1));
    let cases = [("1k_1rcpt", 1, 1024), ("1k_10rcpt", 10, 1024), ("50k_1rcpt", 1, 50 * 1024)];
    // DATA, and BDAT (CHUNKING) to the same server: the in-memory CPU cost of each.
    for ((name, recipients, size), chunking) in cases.iter().flat_map(|c| [(*c, false), (*c, true)]) {
        let name = if chunking { format!("{name}_bdat") } else { name.to_string() };
        let body = Arc::new(format!("Subject: bench\r\n\r\n{}", line.repeat(size / line.len())).into_bytes());
        let msg = message(recipients, &body);
        let mut pair = Pair::connect(&cfg, chunking);
        g.bench_function(name, |b| {
            b.iter_batched(
                || msg.clone(),
                |msg| {
                    pair.client.send(msg, &mut pair.to_server);
                    loop {
                        match pair.run() {
                            ClientEvent::Done(outcomes) => break assert!(matches!(outcomes[0], RcptOutcome::Delivered(_))),
                            // Ready for the next transaction, reported after the last one's Done.
                            ClientEvent::Ready => {}
                            other => panic!("transaction ended with {other:?}"),
                        }
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn shaping(c: &mut Criterion) {
    let config = Config::parse(
        "delivery:\n  message_rate: 1000000/s burst 1000000\n  destinations:\n    - { name: google, mx: ['*.google.com'], max_connections: 50 }\n",
        Path::new("."),
    )
    .unwrap();
    let shaper = Shaper::new(&config);
    let targets = [Target::new("alt1.aspmx.l.google.com", "127.0.0.1:25".parse().unwrap())];
    let other = [Target::new("mx.dest.test", "127.0.0.1:25".parse().unwrap())];
    let mut g = c.benchmark_group("shaping");
    g.throughput(Throughput::Elements(1));
    g.bench_function("bucket_by_mx_rule", |b| b.iter(|| black_box(shaper.bucket(black_box("example.com"), &targets))));
    g.bench_function("bucket_by_domain", |b| b.iter(|| black_box(shaper.bucket(black_box("dest.test"), &other))));

    let rate: Rate = "1000000/s burst 1000".parse().unwrap();
    let mut gcra = Gcra::new(&rate);
    let mut now = Duration::ZERO;
    g.bench_function("gcra_wait_and_reserve", |b| {
        b.iter(|| {
            now += Duration::from_micros(1);
            if gcra.wait(now).is_zero() {
                black_box(gcra.reserve(now));
            }
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let queue = RateQueue::new("10000000/s burst 10000000".parse().unwrap());
    g.bench_function("rate_queue_token_uncontended", |b| b.iter(|| runtime.block_on(queue.acquire(0, 2000)).unwrap()));
    g.finish();
}

criterion_group!(benches, client_transactions, shaping);
criterion_main!(benches);
