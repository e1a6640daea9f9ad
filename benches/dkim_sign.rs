//! Criterion benches of DKIM signing as intake does it (`sluice::dkim::Signer`: plan from the
//! header section, fold, canonicalize, hash, sign): 1 KiB and 50 KiB messages, RSA-2048 and
//! Ed25519, and both signatures in one pass.
//!
//! `cargo bench --bench dkim_sign`.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::Config;
use sluice::dkim::Signer;

/// A signer with one entry per algorithm given, keys made now in `dir`.
fn signer(dir: &Path, algorithms: &[&str]) -> Arc<Signer> {
    let mut yaml = String::from("hostname: relay.test\ndkim:\n  sign:\n");
    for algorithm in algorithms {
        let (pem, _) = sluice::dkim::key::generate(algorithm, 2048).unwrap();
        let path = dir.join(format!("{algorithm}.key"));
        std::fs::write(&path, pem).unwrap();
        yaml.push_str(&format!("    - {{ domain: example.com, selector: {algorithm}, key: {} }}\n", path.display()));
    }
    let config = Config::parse(&yaml, dir).unwrap();
    Signer::load(&config.dkim).unwrap().unwrap()
}

fn message(size: usize) -> Vec<u8> {
    let mut m = b"Received: from app.example ([192.0.2.1])\r\n\tby relay.test (Sluice) with ESMTP id 0abc; Tue, 1 Dec 2026 10:00:00 +0000\r\nFrom: Shop <orders@example.com>\r\nTo: customer@example.org\r\nSubject: Your order 12345 has shipped\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <12345@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(b"Thank you for your order. It is on its way and should arrive within three days.\r\n");
    }
    m
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cases = [("rsa", vec!["rsa"]), ("ed25519", vec!["ed25519"]), ("rsa+ed25519", vec!["rsa", "ed25519"])];
    let mut group = c.benchmark_group("dkim_sign");
    for (name, algorithms) in &cases {
        let signer = signer(dir.path(), algorithms);
        for size in [1024, 50 * 1024] {
            let m = message(size);
            let header_end = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("{name}/{}KiB", size / 1024), |b| {
                b.iter(|| {
                    let plan = signer.plan(&m[..header_end], None);
                    let signed = signer
                        .sign(&plan, |push| {
                            push(&m);
                            Ok(())
                        })
                        .unwrap();
                    black_box(signed.fields.len())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
