use super::*;
use crate::config::SpoolConfig;
use crate::spool::SledSpool;

fn spool(dir: &std::path::Path) -> Arc<dyn Spool> {
    SledSpool::open(&SpoolConfig { path: dir.to_path_buf(), min_free_space: 0, ..SpoolConfig::default() }).unwrap()
}

fn limits(memory: usize) -> BodyLimits {
    BodyLimits { memory, max_header: 8 * 1024 }
}

fn message(header_lines: usize, body: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..header_lines).flat_map(|i| format!("X-Field-{i}: value\r\n").into_bytes()).collect();
    m.extend_from_slice(b"\r\n");
    m.extend((0..body).map(|i| if i % 80 == 79 { b'\n' } else { b'a' }));
    m
}

fn bytes_of(body: &Body) -> Vec<u8> {
    let mut all = body.head.clone();
    if let Some(tail) = &body.tail {
        let mut rest = vec![0; tail.len() as usize];
        assert_eq!(tail.read_at(&mut rest, 0).unwrap(), rest.len());
        all.extend(rest);
    }
    all
}

async fn take(buffer: &mut BodyBuffer, m: &[u8], piece: usize) {
    for chunk in m.chunks(piece) {
        buffer.push(chunk.to_vec()).await;
    }
}

#[tokio::test]
async fn a_small_message_stays_in_memory_and_asks_nothing_of_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Arc::new(MemoryBudget::default());
    let mut b = BodyBuffer::new(spool(dir.path()), budget.clone(), limits(0));
    let m = message(3, 1000);
    b.push(m.clone()).await;
    let body = b.finish().await.unwrap();
    assert!(body.tail.is_none());
    assert_eq!((body.head, budget.used()), (m, 0));
}

#[tokio::test]
async fn a_large_message_keeps_its_start_in_memory_and_the_rest_in_a_scratch_file() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Arc::new(MemoryBudget::default());
    let mut b = BodyBuffer::new(spool(dir.path()), budget.clone(), limits(1 << 30));
    let m = message(20, 3 * 1024 * 1024);
    take(&mut b, &m, 40 * 1024).await;
    let body = b.finish().await.unwrap();
    assert!(body.head.len() <= MEMORY_PER_MESSAGE, "{}", body.head.len());
    assert_eq!(body.len(), m.len() as u64);
    assert!(bytes_of(&body) == m, "the bytes come back in order");
    assert_eq!(budget.used(), body.head.len() - FREE_BYTES, "only what is beyond the free share is charged");
    drop(body);
    assert_eq!(budget.used(), 0, "given back");
}

#[tokio::test]
async fn with_the_budget_spent_a_body_goes_to_its_scratch_file_after_its_free_share() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Arc::new(MemoryBudget::default());
    let mut b = BodyBuffer::new(spool(dir.path()), budget.clone(), limits(0));
    let m = message(20, 1024 * 1024);
    take(&mut b, &m, 32 * 1024).await;
    let body = b.finish().await.unwrap();
    assert_eq!(body.head.len(), FREE_BYTES);
    assert!(bytes_of(&body) == m);
}

#[tokio::test]
async fn a_header_section_over_the_limit_is_refused_whatever_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Arc::new(MemoryBudget::default());
    let mut b = BodyBuffer::new(spool(dir.path()), budget.clone(), limits(1 << 30));
    take(&mut b, &message(1000, 10), 4096).await; // About 19 KiB of fields; the limit is 8.
    assert!(matches!(b.finish().await, Err(BodyError::HeaderTooBig { limit: 8192 })));
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_complete_header_section_over_the_limit_in_one_piece_is_refused_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BodyBuffer::new(spool(dir.path()), Arc::new(MemoryBudget::default()), limits(1 << 30));
    b.push(message(600, 10)).await; // About 11 KiB of fields and their end, at once.
    assert!(matches!(b.finish().await, Err(BodyError::HeaderTooBig { limit: 8192 })));
}

#[tokio::test]
async fn a_header_section_the_spent_budget_cannot_hold_gets_a_temporary_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Arc::new(MemoryBudget::default());
    let roomy = BodyLimits { memory: 0, max_header: 256 * 1024 };
    let mut b = BodyBuffer::new(spool(dir.path()), budget, roomy);
    take(&mut b, &message(5000, 10), 32 * 1024).await; // About 100 KiB of fields.
    assert!(matches!(b.finish().await, Err(BodyError::OverBudget)));
}

#[tokio::test]
async fn a_message_with_no_header_section_goes_to_the_scratch_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let budget = Arc::new(MemoryBudget::default());
    let mut b = BodyBuffer::new(spool(dir.path()), budget, limits(0));
    let m: Vec<u8> = b"no header here\r\n".iter().copied().cycle().take(200 * 1024).collect();
    take(&mut b, &m, 64 * 1024).await;
    let body = b.finish().await.unwrap();
    assert!(body.tail.is_some() && bytes_of(&body) == m);
}

#[tokio::test]
async fn a_stored_body_with_a_tail_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let spool = spool(dir.path());
    let mut b = BodyBuffer::new(spool.clone(), Arc::new(MemoryBudget::default()), limits(1 << 30));
    let m = message(5, 2 * 1024 * 1024);
    take(&mut b, &m, 64 * 1024).await;
    let body = b.finish().await.unwrap();
    let env =
        crate::spool::Envelope::report(spool.new_queue_id(), crate::smtp::address::parse_mailbox("a@b.test", true).unwrap(), "h.test", 1);
    let queue_id = env.queue_id.clone();
    spool.store_with_tail(env, &[b"Received: x\r\n", &body.head], body.tail.as_ref().unwrap()).unwrap().wait().await.unwrap();
    let stored = spool.read_body(&spool.get(&queue_id).unwrap()).unwrap();
    assert!(stored[..13] == *b"Received: x\r\n" && stored[13..] == m[..]);
}
