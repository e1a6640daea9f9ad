//! Criterion benches of the sans-IO SMTP core: command parsing and the server session on
//! pipelined input (no sockets, no spool). The delivery-core benches arrive with delivery.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::smtp::command;
use sluice::smtp::server::{ClientInfo, Event, Session};

mod support;

fn parse_commands(c: &mut Criterion) {
    let lines: [&[u8]; 4] = [
        b"MAIL FROM:<sender@example.org> SIZE=1024 BODY=8BITMIME",
        b"RCPT TO:<recipient@example.net> NOTIFY=FAILURE ORCPT=rfc822;recipient@example.net",
        b"EHLO client.example.org",
        b"DATA",
    ];
    let mut g = c.benchmark_group("command");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("parse_4_commands", |b| {
        b.iter(|| {
            for l in lines {
                black_box(command::parse(black_box(l)).unwrap());
            }
        })
    });
    g.finish();
}

fn session_pipelined(c: &mut Criterion) {
    let cfg = Arc::new(support::session_config("relay.example.net", "relay.example.net"));
    let body: String = (0..16).map(|i| format!("Line {i} of a 1 KiB message body, padded out to sixty-four.\r\n")).collect();
    let mut input = b"EHLO client.example.org\r\n".to_vec();
    let messages = 100;
    for _ in 0..messages {
        input.extend_from_slice(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n");
        input.extend_from_slice(b"Subject: bench\r\n\r\n");
        input.extend_from_slice(body.as_bytes());
        input.extend_from_slice(b".\r\n");
    }
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(messages));
    g.bench_function("pipelined_1k_messages", |b| {
        let mut out = Vec::with_capacity(64 << 10);
        b.iter(|| {
            let client =
                ClientInfo { ip: "127.0.0.1".parse().unwrap(), relay_allowed: true, plaintext_auth: false, tls: None, tls_required: false };
            let mut s = Session::new(cfg.clone(), client);
            s.feed(&input);
            out.clear();
            let mut n = 0;
            while let Event::Message(tx) = s.poll(&mut out) {
                n += tx.body.len();
                s.message_stored(Ok("0123456789ABC"), &mut out);
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, parse_commands, session_pipelined);
criterion_main!(benches);
