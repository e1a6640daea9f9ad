//! A rate limiter that callers wait on in priority order: higher MT-PRIORITY first, then first
//! come, first served. Only the caller at the head of the line sleeps on a timer (until its
//! token); the others sleep until they reach the head. Nobody polls.
//!
//! A caller that would join a line already `max_waiting` long (counting only those that go
//! before it) is told how long it would wait instead, so the message can go back to the
//! queue on disk rather than hold memory and a delivery slot while it waits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::rate::{Gcra, Rate};

/// Position in line: higher priority first (so the priority is negated), then arrival order.
type Place = (i16, u64);

/// What a booking at the head of a shared line got.
enum Booked {
    /// A slot on Redis, due then (from `origin`).
    Shared(Duration),
    /// Redis is away: this node's share had a token now, taken.
    Taken,
    /// Redis is away: the share's next token comes then.
    Wait(Duration),
}

pub struct RateQueue {
    rate: Rate,
    origin: Instant,
    inner: Mutex<Inner>,
    /// The rate is shared with other nodes on Redis (`cluster.redis`): the head of the line
    /// books the next free slot there and goes when it comes; while Redis is away, at this
    /// node's share of the rate.
    shared: Option<Shared>,
}

struct Shared {
    cluster: Arc<crate::cluster::Cluster>,
    destination: String,
}

struct Inner {
    gcra: Gcra,
    /// This node's share of the rate, for while Redis is away.
    share: Gcra,
    line: BTreeMap<Place, Arc<Notify>>,
    next: u64,
    /// A shared slot booked on Redis and not yet used: when it comes (from `origin`). It
    /// belongs to whoever is at the head then, so a caller that leaves the line or is passed
    /// by a higher priority wastes no slot.
    booked: Option<Duration>,
    /// A head is booking on Redis now: a new head waits for it rather than book a second
    /// slot (one would be lost).
    booking: bool,
}

impl Inner {
    fn wake_head(&self) {
        if let Some(head) = self.line.values().next() {
            head.notify_one();
        }
    }
}

/// Leaves the line if the waiting caller goes away (shutdown, a dropped task).
struct InLine<'a> {
    queue: &'a RateQueue,
    place: Place,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut inner = self.queue.inner.lock().expect("rate queue lock");
        if inner.line.remove(&self.place).is_some() {
            inner.wake_head();
        }
    }
}

impl RateQueue {
    pub fn new(rate: Rate) -> RateQueue {
        let inner = Inner { gcra: Gcra::new(&rate), share: Gcra::new(&rate), line: BTreeMap::new(), next: 0, booked: None, booking: false };
        RateQueue { rate, origin: Instant::now(), inner: Mutex::new(inner), shared: None }
    }

    /// The rate of `destination`, shared with the other nodes of `cluster`.
    pub fn shared(rate: Rate, cluster: Arc<crate::cluster::Cluster>, destination: &str) -> RateQueue {
        let mut queue = RateQueue::new(rate);
        queue.inner.get_mut().expect("rate queue lock").share = Gcra::share(&rate, cluster.nodes);
        queue.shared = Some(Shared { cluster, destination: destination.to_string() });
        queue
    }

    /// At the head of the line (at `place`) with no slot booked: books the next one. On Redis
    /// (every node's messages counted): the slot is the line's, used by whoever is at its
    /// head when it comes. While Redis is away, at this node's share: taken only when it is
    /// now.
    async fn book(&self, shared: &Shared, place: Place) -> Booked {
        /// Ends the booking, answered or not (a caller dropped at shutdown), and wakes a new
        /// head that waited for it (not the booker, who carries on).
        struct Booking<'a>(&'a Mutex<Inner>, Place);
        impl Drop for Booking<'_> {
            fn drop(&mut self) {
                let mut inner = self.0.lock().expect("rate queue lock");
                inner.booking = false;
                if inner.line.keys().next() != Some(&self.1) {
                    inner.wake_head();
                }
            }
        }
        let _booking = Booking(&self.inner, place);
        let booked = shared.cluster.book_message(&shared.destination, self.rate.interval(), self.rate.burst()).await;
        let mut inner = self.inner.lock().expect("rate queue lock");
        let now = self.now();
        match booked {
            Ok(wait) => {
                inner.booked = Some(now + wait);
                Booked::Shared(now + wait)
            }
            Err(()) => {
                let wait = inner.share.wait(now);
                if wait.is_zero() {
                    inner.share.reserve(now);
                    Booked::Taken
                } else {
                    Booked::Wait(now + wait)
                }
            }
        }
    }

    /// The head of the line takes its turn at the shared rate: Ok once it may go, Err(due)
    /// when it must wait until `due` (and ask again, or be passed meanwhile), Err(None) when
    /// it is not the head or another head's booking is under way.
    async fn shared_turn(&self, shared: &Shared, place: Place) -> Result<(), Option<Duration>> {
        let booked = {
            let mut inner = self.inner.lock().expect("rate queue lock");
            if inner.line.keys().next() != Some(&place) || (inner.booked.is_none() && inner.booking) {
                return Err(None);
            }
            if inner.booked.is_none() {
                inner.booking = true;
            }
            inner.booked
        };
        let due = match booked {
            Some(due) => due,
            None => match self.book(shared, place).await {
                Booked::Shared(due) => due,
                Booked::Taken => return Ok(()),
                Booked::Wait(due) => return Err(Some(due)),
            },
        };
        if due > self.now() {
            return Err(Some(due));
        }
        let mut inner = self.inner.lock().expect("rate queue lock");
        if inner.line.keys().next() != Some(&place) {
            return Err(None);
        }
        if inner.booked != Some(due) {
            // Someone (a higher priority since gone) used the slot: book again at once.
            return Err(Some(Duration::ZERO));
        }
        inner.booked = None;
        Ok(())
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Callers in line now.
    pub fn waiting(&self) -> usize {
        self.inner.lock().expect("rate queue lock").line.len()
    }

    /// Waits for a token. `Err(wait)`: the line ahead is `max_waiting` long already, and this
    /// is about how long the caller would wait.
    pub async fn acquire(&self, priority: i8, max_waiting: usize) -> Result<(), Duration> {
        let (place, signal) = {
            let mut inner = self.inner.lock().expect("rate queue lock");
            let place = (-i16::from(priority), inner.next);
            let ahead = inner.line.range(..place).count();
            if ahead >= max_waiting {
                let wait = inner.gcra.wait(self.now()) + inner.gcra.interval() * (ahead as u32 + 1);
                return Err(wait);
            }
            inner.next += 1;
            let signal = Arc::new(Notify::new());
            inner.line.insert(place, signal.clone());
            (place, signal)
        };
        let in_line = InLine { queue: self, place };
        loop {
            if let Some(shared) = &self.shared {
                match self.shared_turn(shared, place).await {
                    Ok(()) => {
                        let mut inner = self.inner.lock().expect("rate queue lock");
                        inner.line.remove(&place);
                        inner.wake_head();
                        std::mem::forget(in_line);
                        return Ok(());
                    }
                    Err(None) => signal.notified().await,
                    Err(Some(due)) => {
                        tokio::select! {
                            _ = tokio::time::sleep(due.saturating_sub(self.now())) => {}
                            _ = signal.notified() => {}
                        }
                    }
                }
                continue;
            }
            let wait = {
                let mut inner = self.inner.lock().expect("rate queue lock");
                if inner.line.keys().next() != Some(&place) {
                    None
                } else {
                    let now = self.now();
                    let wait = inner.gcra.wait(now);
                    if wait.is_zero() {
                        inner.gcra.reserve(now);
                        inner.line.remove(&place);
                        inner.wake_head();
                        std::mem::forget(in_line);
                        return Ok(());
                    }
                    Some(wait)
                }
            };
            match wait {
                // Someone goes first: wait to become the head.
                None => signal.notified().await,
                // At the head: sleep until the token, unless a higher priority arrives meanwhile.
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = signal.notified() => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn order_of(arrivals: &[(i8, &'static str)], rate: &str) -> Vec<&'static str> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let queue = Arc::new(RateQueue::new(rate.parse().unwrap()));
            let done = Arc::new(Mutex::new(Vec::new()));
            let mut tasks = Vec::new();
            for &(priority, name) in arrivals {
                let (q, d) = (queue.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    q.acquire(priority, 100).await.unwrap();
                    d.lock().unwrap().push((name, tokio::time::Instant::now()));
                }));
                // Each arrives a moment after the one before.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for t in tasks {
                t.await.unwrap();
            }
            let done = done.lock().unwrap();
            // Virtual time: tokens were 1 s apart exactly.
            for pair in done.windows(2) {
                let gap = pair[1].1 - pair[0].1;
                assert!(gap >= Duration::from_millis(990), "tokens {gap:?} apart");
            }
            done.iter().map(|(n, _)| *n).collect()
        })
    }

    #[test]
    fn while_redis_is_away_a_shared_line_keeps_to_its_share() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let config: crate::config::ClusterConfig = serde_norway::from_str("nodes: 3\nredis: { url: \"redis://127.0.0.1:1\" }").unwrap();
            let cluster = crate::cluster::Cluster::start(&config, "relay.test").unwrap().unwrap();
            let queue = Arc::new(RateQueue::shared("30/s".parse().unwrap(), cluster, "dest.test"));
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..21 {
                let q = queue.clone();
                tasks.push(tokio::spawn(async move { q.acquire(0, 100).await.unwrap() }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            // 10/s, the first at once: 20 intervals of 100 ms (a token taken early would go
            // without being booked, and two would go at once).
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(1990) && took < Duration::from_millis(3000), "{took:?}");
        });
    }

    #[test]
    fn same_priority_goes_first_come_first_served() {
        assert_eq!(order_of(&[(0, "a"), (0, "b"), (0, "c"), (0, "d")], "1/s"), ["a", "b", "c", "d"]);
    }

    #[test]
    fn higher_priority_overtakes_those_still_waiting() {
        // "a" takes the first token at once; "b" waits; "urgent" arrives later but goes next.
        assert_eq!(order_of(&[(0, "a"), (0, "b"), (0, "c"), (5, "urgent"), (-3, "bulk")], "1/s"), ["a", "urgent", "b", "c", "bulk"]);
    }

    #[test]
    fn a_full_line_sends_callers_back_with_their_wait() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let queue = Arc::new(RateQueue::new("2/s".parse().unwrap()));
            queue.acquire(0, 2).await.unwrap();
            let (q1, q2) = (queue.clone(), queue.clone());
            let t1 = tokio::spawn(async move { q1.acquire(0, 2).await });
            let t2 = tokio::spawn(async move { q2.acquire(0, 2).await });
            tokio::task::yield_now().await;
            assert_eq!(queue.waiting(), 2);
            // Two ahead: about three intervals (500 ms each) to wait.
            let wait = queue.acquire(0, 2).await.unwrap_err();
            assert!(wait >= Duration::from_millis(1500) && wait <= Duration::from_millis(2000), "{wait:?}");
            // A higher priority still gets in line: nobody of its priority is ahead.
            let q3 = queue.clone();
            let t3 = tokio::spawn(async move { q3.acquire(9, 2).await });
            assert!(t1.await.unwrap().is_ok() && t2.await.unwrap().is_ok() && t3.await.unwrap().is_ok());
            assert_eq!(queue.waiting(), 0);
        });
    }

    #[test]
    fn a_caller_that_leaves_the_line_lets_the_next_one_go() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let queue = Arc::new(RateQueue::new("1/s".parse().unwrap()));
            queue.acquire(0, 10).await.unwrap();
            let q = queue.clone();
            let head = tokio::spawn(async move { q.acquire(0, 10).await });
            tokio::task::yield_now().await;
            let q = queue.clone();
            let next = tokio::spawn(async move { q.acquire(0, 10).await });
            tokio::task::yield_now().await;
            head.abort();
            let start = tokio::time::Instant::now();
            next.await.unwrap().unwrap();
            assert!(start.elapsed() <= Duration::from_secs(1));
            assert_eq!(queue.waiting(), 0);
        });
    }
}
