use super::*;
use crate::config::HumanDuration;
use crate::smtp::address::{MailParams, Mailbox, RcptParams};
use crate::spool::{Changes, Identity, RecipientRecord, RecipientState};

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        path: dir.to_path_buf(),
        min_free_space: 0,
        cache_capacity: 8 << 20,
        segment_size: 1 << 20,
        commit_window: HumanDuration(Duration::ZERO),
    }
}

fn envelope(spool: &SledSpool, to: &str) -> Envelope {
    Envelope {
        queue_id: spool.new_queue_id(),
        from: Some(Mailbox { local: "a".into(), domain: "x.org".into() }),
        params: MailParams::default(),
        recipients: vec![RecipientRecord {
            mailbox: Mailbox { local: to.into(), domain: "y.org".into() },
            params: RcptParams::default(),
            state: RecipientState::Queued,
            attempts: 0,
            last_reply: None,
            next_attempt: None,
            delay_notified: false,
            history: Vec::new(),
        }],
        client_ip: "127.0.0.1".parse().unwrap(),
        helo: "c.test".into(),
        identity: Identity::TrustedNetwork,
        listener: "127.0.0.1:25".parse().unwrap(),
        arrival: 1,
        arrival_ms: None,
        body: None,
        held: false,
        message_id: None,
    }
}

#[test]
fn stored_messages_are_recovered_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = {
        let spool = SledSpool::open(&config(dir.path())).unwrap();
        (0..10)
            .map(|i| {
                let env = envelope(&spool, &format!("r{i}"));
                let id = env.queue_id.clone();
                spool.store(env, &[b"Received: x\r\n", format!("body {i}\r\n").as_bytes()]).unwrap().wait_blocking().unwrap();
                id
            })
            .collect()
    };
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    assert_eq!(spool.len(), 10);
    let listed = spool.list().unwrap();
    assert_eq!(listed.iter().map(|e| e.queue_id.clone()).collect::<Vec<_>>(), ids, "listed in id (time) order");
    assert_eq!(spool.read_body(&listed[3]).unwrap(), b"Received: x\r\nbody 3\r\n");
    // New ids continue after the recovered ones.
    assert!(spool.new_queue_id() > ids[9]);
}

#[test]
fn update_and_remove_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (keep, gone) = {
        let spool = SledSpool::open(&config(dir.path())).unwrap();
        let mut a = envelope(&spool, "a");
        let b = envelope(&spool, "b");
        let (ka, kb) = (a.queue_id.clone(), b.queue_id.clone());
        spool.store(a.clone(), &[b"a\r\n"]).unwrap().wait_blocking().unwrap();
        spool.store(b, &[b"b\r\n"]).unwrap().wait_blocking().unwrap();
        a = spool.get(&ka).unwrap();
        a.recipients[0].state = RecipientState::Delivered;
        a.recipients[0].last_reply = Some("250 ok".into());
        spool.update(&a).unwrap().wait_blocking().unwrap();
        spool.remove(&kb).unwrap().wait_blocking().unwrap();
        assert_eq!(spool.remove(&kb).err(), Some(SpoolError::NotFound));
        (ka, kb)
    };
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    assert_eq!(spool.len(), 1);
    assert_eq!(spool.get(&keep).unwrap().recipients[0].state, RecipientState::Delivered);
    assert_eq!(spool.get(&gone).err(), Some(SpoolError::NotFound));
}

#[test]
fn segments_roll_and_empty_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    let big = vec![b'x'; 300 << 10];
    let mut ids = Vec::new();
    for i in 0..8 {
        let env = envelope(&spool, &format!("r{i}"));
        ids.push(env.queue_id.clone());
        spool.store(env, &[&big]).unwrap().wait_blocking().unwrap();
    }
    let count = || fs::read_dir(dir.path().join("bodies")).unwrap().count();
    assert!(count() >= 3, "1 MiB segments hold three 300 KiB bodies each");
    for id in &ids {
        spool.remove(id).unwrap().wait_blocking().unwrap();
    }
    // The committer's unlink thread deletes emptied segments after the commit that empties them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count() > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(count(), 1, "only the current segment is left");
}

#[test]
fn a_torn_body_drops_only_the_unacknowledged_index_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (good, torn) = {
        let spool = SledSpool::open(&config(dir.path())).unwrap();
        let g = envelope(&spool, "good");
        let t = envelope(&spool, "torn");
        let ids = (g.queue_id.clone(), t.queue_id.clone());
        spool.store(g, &[b"good body\r\n"]).unwrap().wait_blocking().unwrap();
        spool.store(t, &[&vec![b'y'; 4096]]).unwrap().wait_blocking().unwrap();
        ids
    };
    // Simulate power loss before the last body reached the disk: cut the segment short.
    let seg = fs::read_dir(dir.path().join("bodies")).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let file = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len(100).unwrap();
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    assert_eq!(spool.list().unwrap().iter().map(|e| e.queue_id.clone()).collect::<Vec<_>>(), vec![good.clone()]);
    assert_eq!(spool.get(&torn).err(), Some(SpoolError::NotFound));
    assert_eq!(spool.read_body(&spool.get(&good).unwrap()).unwrap(), b"good body\r\n");
}

#[test]
fn a_flipped_byte_is_caught_by_the_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    let env = envelope(&spool, "a");
    let id = env.queue_id.clone();
    spool.store(env, &[b"hello\r\n"]).unwrap().wait_blocking().unwrap();
    let env = spool.get(&id).unwrap();
    let b = env.body.unwrap();
    let path = dir.path().join("bodies").join(format!("{:012}.seg", b.segment));
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"J", b.offset).unwrap();
    assert!(matches!(spool.read_body(&env), Err(SpoolError::Corrupt(_))));
}

#[test]
fn health_reports_low_space_below_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.min_free_space = u64::MAX;
    let spool = SledSpool::open(&cfg).unwrap();
    assert_eq!(spool.health(), Health::LowSpace);
    let spool2_dir = tempfile::tempdir().unwrap();
    let spool2 = SledSpool::open(&config(spool2_dir.path())).unwrap();
    assert_eq!(spool2.health(), Health::Ok);
}

#[test]
fn concurrent_writers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    std::thread::scope(|s| {
        for t in 0..8 {
            let spool = &spool;
            s.spawn(move || {
                for i in 0..50 {
                    let env = envelope(spool, &format!("t{t}m{i}"));
                    spool.store(env, &[b"x\r\n"]).unwrap().wait_blocking().unwrap();
                }
            });
        }
    });
    assert_eq!(spool.len(), 400);
    assert_eq!(spool.list().unwrap().len(), 400);
}

#[test]
fn the_schedule_index_follows_the_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    let mut early = envelope(&spool, "early");
    early.recipients[0].next_attempt = Some(100);
    let mut late = envelope(&spool, "late");
    late.recipients[0].next_attempt = Some(500);
    let (e, l) = (early.queue_id.clone(), late.queue_id.clone());
    spool.store(late, &[b"l\r\n"]).unwrap().wait_blocking().unwrap();
    spool.store(early, &[b"e\r\n"]).unwrap().wait_blocking().unwrap();
    assert_eq!(spool.next_due().unwrap(), Some(100));
    assert_eq!(spool.due(99, 10).unwrap(), Vec::<String>::new());
    assert_eq!(spool.due(100, 10).unwrap(), vec![e.clone()]);
    assert_eq!(spool.due(1000, 10).unwrap(), vec![e.clone(), l.clone()], "earliest first");
    // Rescheduling moves the entry; a message with no queued recipient leaves the schedule.
    let mut env = spool.get(&e).unwrap();
    env.recipients[0].next_attempt = Some(800);
    spool.update(&env).unwrap().wait_blocking().unwrap();
    assert_eq!(spool.due(1000, 10).unwrap(), vec![l.clone(), e.clone()]);
    env.recipients[0].state = RecipientState::Delivered;
    spool.update(&env).unwrap().wait_blocking().unwrap();
    assert_eq!(spool.due(1000, 10).unwrap(), vec![l.clone()]);
    spool.remove(&l).unwrap().wait_blocking().unwrap();
    assert_eq!(spool.next_due().unwrap(), None);
}

#[test]
fn the_schedule_is_rebuilt_from_the_envelopes_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (deferred, done, fresh) = {
        let spool = SledSpool::open(&config(dir.path())).unwrap();
        let mut deferred = envelope(&spool, "deferred");
        deferred.recipients[0].next_attempt = Some(700);
        deferred.recipients.push(RecipientRecord {
            next_attempt: Some(300),
            state: RecipientState::Failed,
            ..deferred.recipients[0].clone()
        });
        let mut done = envelope(&spool, "done");
        done.recipients[0].state = RecipientState::Delivered;
        let mut fresh = envelope(&spool, "fresh");
        fresh.recipients[0].next_attempt = None; // due at arrival
        fresh.arrival = 50;
        let ids = (deferred.queue_id.clone(), done.queue_id.clone(), fresh.queue_id.clone());
        for e in [deferred, done, fresh] {
            spool.store(e, &[b"x\r\n"]).unwrap().wait_blocking().unwrap();
        }
        // An entry in the layout of earlier versions: dropped at open, the envelopes rule.
        spool.messages.insert(b"s\0\0\0\0\0\0\0\x01ZZZZZZZZZZZZZ", &[]).unwrap();
        spool.messages.flush().unwrap();
        ids
    };
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    assert_eq!(spool.len(), 3);
    assert_eq!(spool.upcoming(10).unwrap(), vec![(50, fresh), (700, deferred)], "the failed recipient's time does not count");
    assert!(spool.get(&done).is_ok(), "kept, though nothing is due");
    assert_eq!(spool.messages.scan_prefix(b"s").count(), 0);
}

#[test]
fn apply_stores_a_bounce_and_updates_its_cause_together() {
    let dir = tempfile::tempdir().unwrap();
    let (original, bounce) = {
        let spool = SledSpool::open(&config(dir.path())).unwrap();
        let env = envelope(&spool, "gone");
        let id = env.queue_id.clone();
        spool.store(env, &[b"original\r\n"]).unwrap().wait_blocking().unwrap();
        let mut failed = spool.get(&id).unwrap();
        failed.recipients[0].state = RecipientState::Failed;
        let dsn = envelope(&spool, "sender");
        let dsn_id = dsn.queue_id.clone();
        let changes = Changes { store: vec![(dsn, b"bounce\r\n".to_vec())], update: vec![failed], remove: vec![] };
        spool.apply(changes).unwrap().wait_blocking().unwrap();
        (id, dsn_id)
    };
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    assert_eq!(spool.get(&original).unwrap().recipients[0].state, RecipientState::Failed);
    assert_eq!(spool.read_body(&spool.get(&bounce).unwrap()).unwrap(), b"bounce\r\n");
    assert_eq!(spool.due(u64::MAX - 1, 10).unwrap(), vec![bounce], "only the bounce is queued");
}

#[test]
fn a_blob_that_sled_deleted_after_the_listing_is_not_a_failed_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs");
    fs::create_dir(&blobs).unwrap();
    fs::write(blobs.join("1"), b"node").unwrap();
    // Listed, then gone before it is opened: what a dangling link looks like to the sync.
    std::os::unix::fs::symlink(blobs.join("deleted"), blobs.join("2")).unwrap();
    let mut synced = HashSet::new();
    sync_new_blobs(&blobs, &mut synced).expect("a vanished blob is skipped");
    assert!(synced.contains(&blobs.join("1")) && !synced.contains(&blobs.join("2")));
}

#[test]
fn records_on_each_shelf_outlive_a_reopen_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = SledSpool::open(&config(dir.path())).unwrap();
        spool.remember(Shelf::Policies, "dest.test", 200, b"policy").unwrap().wait_blocking().unwrap();
        spool.remember(Shelf::Answers, "key", 100, b"answer").unwrap().wait_blocking().unwrap();
    }
    let spool = SledSpool::open(&config(dir.path())).unwrap();
    assert_eq!(spool.recall(Shelf::Policies, "dest.test", 150).unwrap().as_deref(), Some(&b"policy"[..]));
    assert_eq!(spool.recall(Shelf::Answers, "dest.test", 150).unwrap(), None, "each shelf its own");
    assert_eq!(spool.recall(Shelf::Answers, "key", 150).unwrap(), None, "expired");
    assert_eq!(spool.forget_expired(Shelf::Policies, 150).unwrap(), 0);
    assert_eq!(spool.forget_expired(Shelf::Answers, 150).unwrap(), 1);
    spool.remember(Shelf::TlsReports, "r1", 300, b"one").unwrap().wait_blocking().unwrap();
    spool.remember(Shelf::TlsReports, "r2", 300, b"two").unwrap().wait_blocking().unwrap();
    spool.forget(Shelf::TlsReports, "r1").unwrap();
    assert_eq!(spool.shelved(Shelf::TlsReports, 250).unwrap(), [("r2".to_string(), b"two".to_vec(), 300)]);
    assert!(spool.shelved(Shelf::TlsReports, 300).unwrap().is_empty(), "expired");
    assert_eq!(spool.forget_expired(Shelf::Policies, 200).unwrap(), 1);
}
