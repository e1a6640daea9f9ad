//! Spool failures reach the client with the right codes: a failed commit is 451 4.3.0 and the
//! session goes on; a failed fsync is 421 4.3.0, and until a restart every later connection is
//! refused with 421 4.3.0 as well. A fake spool behind the `Spool` trait stands in for the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use sluice::config::Config;
use sluice::intake::{self, IntakeContext};
use sluice::spool::{Changes, Durable, Envelope, Health, Spool, SpoolError, SpoolRead};

use crate::common::{Client, config_yaml};

/// Fails the first store with an I/O error (451), the second with a failed fsync (poison).
#[derive(Default)]
struct FailingSpool {
    stores: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpoolRead for FailingSpool {
    fn get(&self, _: &str) -> Result<Envelope, SpoolError> {
        Err(SpoolError::NotFound)
    }
    fn read_body(&self, _: &Envelope) -> Result<Vec<u8>, SpoolError> {
        Err(SpoolError::NotFound)
    }
    fn scan(&self) -> Box<dyn Iterator<Item = Result<Envelope, SpoolError>> + '_> {
        Box::new(std::iter::empty())
    }
}

impl Spool for FailingSpool {
    fn new_queue_id(&self) -> String {
        "0000000000001".into()
    }
    fn store(&self, _: Envelope, _: &[&[u8]]) -> Result<Durable, SpoolError> {
        match self.stores.fetch_add(1, Ordering::SeqCst) {
            0 => Err(SpoolError::Io("disk said no".into())),
            _ => {
                self.poisoned.store(true, Ordering::SeqCst);
                Ok(Durable::resolved(Err(SpoolError::Poisoned)))
            }
        }
    }
    fn store_with_tail(&self, e: Envelope, parts: &[&[u8]], _: &sluice::spool::Scratch) -> Result<Durable, SpoolError> {
        self.store(e, parts)
    }
    fn scratch(&self) -> Result<sluice::spool::Scratch, SpoolError> {
        Err(SpoolError::Io("no scratch files here".into()))
    }
    fn apply(&self, _: Changes) -> Result<Durable, SpoolError> {
        Err(SpoolError::Poisoned)
    }
    fn due(&self, _: u64, _: usize) -> Result<Vec<String>, SpoolError> {
        Ok(Vec::new())
    }
    fn next_due(&self) -> Result<Option<u64>, SpoolError> {
        Ok(None)
    }
    fn upcoming(&self, _: usize) -> Result<Vec<(u64, String)>, SpoolError> {
        Ok(Vec::new())
    }
    fn len(&self) -> usize {
        0
    }
    fn health(&self) -> Health {
        if self.poisoned.load(Ordering::SeqCst) { Health::Failed } else { Health::Ok }
    }
}

#[test]
fn failed_commit_is_451_and_failed_fsync_is_421_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Arc::new(Config::parse(&config_yaml(dir.path(), ""), dir.path()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, watch) = tokio::sync::watch::channel(false);
    let ctx = IntakeContext::new(config, Arc::new(FailingSpool::default()), sluice::accounting::Accounting::start(None), None).unwrap();
    let spec = sluice::config::ListenerConfig {
        address: addr,
        mode: sluice::config::ListenerMode::Relay,
        request_client_certificates: false,
        default_priority: 0,
        forbid_unauth_pipelining: true,
    };
    let (_spec, spec) = tokio::sync::watch::channel(spec);
    rt.spawn(intake::serve(listener, spec, Arc::new(sluice::live::Live::from_arc(ctx)), watch, Default::default()));

    let mut c = Client::connect(addr);
    let r = c.send_mail("a@x.test", &["b@y.test"], "one\r\n");
    assert_eq!((r.code, r.text()), (451, "4.3.0 Local error storing message, try again later".into()));
    // The session goes on after a 451; the next message hits the failed fsync.
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").code, 250);
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").code, 250);
    assert_eq!(c.cmd("DATA").code, 354);
    c.send(b"two\r\n.\r\n");
    let r = c.reply();
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().starts_with("4.3.0"));
    assert!(c.is_closed());
    // New connections are refused at the greeting while the spool is failed.
    let refused = Client::connect(addr);
    assert_eq!(refused.greeting.code, 421);
    assert!(refused.greeting.text().starts_with("4.3.0"));
}
