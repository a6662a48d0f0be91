//! Keeping every board booting when the LAN is hostile: a stalled reader loses its
//! connection, one address cannot take every slot, and connections without a client
//! certificate get a budget of their own.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::types::BoardName;

/// A stream whose writes must make progress: a response (a kernel, say) that the client
/// stops reading fails after `limit` without progress, instead of holding a slot forever.
pub(crate) struct Stalled<S> {
    inner: S,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> Stalled<S> {
    pub(crate) fn new(inner: S, limit: Duration) -> Self {
        Stalled {
            inner,
            limit,
            timer: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> Stalled<S> {
    fn progress<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(x) => {
                self.timer = None;
                Poll::Ready(x)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client read nothing for {limit:?}"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(cx, r)
    }

    // rustls hands its records over in one vectored write; without these, tokio's default
    // would send them one 16 KiB record per syscall.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a peer's connections are counted together: the address itself for IPv4, its /64 for
/// IPv6 (one host on a LAN has a whole /64 to draw addresses from).
pub(crate) fn prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Open connections per address prefix.
#[derive(Clone, Default)]
pub(crate) struct PerIp {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its prefix; uncounted when dropped.
pub(crate) struct IpSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerIp {
    /// A slot for `ip`'s prefix, unless it already holds `max`.
    pub(crate) fn take(&self, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let ip = prefix(ip);
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            counts: self.counts.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Where an unproven connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Unproven,
    Evicted,
}

/// Connections that have not proved themselves yet (no TLS handshake done; on plain HTTP no
/// request yet, or from a trusted proxy's address no proxy secret yet). They cost nothing to
/// open, so they get a budget of their own: a newcomer beyond it, or beyond its prefix's
/// share, makes room by closing the oldest. Boards prove themselves in milliseconds; idle
/// connections are what gets closed.
#[derive(Clone)]
pub(crate) struct Unproven {
    inner: Arc<Mutex<Waiting>>,
    cap: usize,
    per_prefix: usize,
    /// What a proof takes: one of the listener's connection slots.
    slots: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    /// Oldest first.
    order: std::collections::BTreeMap<u64, (IpAddr, tokio::sync::watch::Sender<Stage>)>,
    by_prefix: HashMap<IpAddr, usize>,
}

impl Waiting {
    /// Out of the budget, its stage not told: the sender, or None if it was out already.
    fn take(&mut self, id: u64) -> Option<tokio::sync::watch::Sender<Stage>> {
        let (p, tx) = self.order.remove(&id)?;
        if let Some(n) = self.by_prefix.get_mut(&p) {
            *n -= 1;
            if *n == 0 {
                self.by_prefix.remove(&p);
            }
        }
        Some(tx)
    }

    fn evict(&mut self, id: u64) {
        if let Some(tx) = self.take(id) {
            let _ = tx.send(Stage::Evicted);
        }
    }
}

impl Unproven {
    /// At most `cap` unproven connections, `per_prefix` of them from one prefix; a proof
    /// takes one of `slots`.
    pub(crate) fn new(cap: usize, per_prefix: usize, slots: Arc<tokio::sync::Semaphore>) -> Self {
        Unproven {
            inner: Default::default(),
            cap: cap.max(1),
            per_prefix: per_prefix.max(1),
            slots,
        }
    }

    /// Count a new connection from `ip` as unproven, closing the oldest of its prefix (or of
    /// all) where there is no room; `deadline` is how long it may stay unproven.
    pub(crate) fn enter(&self, ip: IpAddr, deadline: Duration) -> (Arc<Proof>, Watch) {
        let p = prefix(ip);
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if w.by_prefix.get(&p).copied().unwrap_or(0) >= self.per_prefix {
            if let Some(oldest) = w
                .order
                .iter()
                .find(|(_, (q, _))| *q == p)
                .map(|(id, _)| *id)
            {
                w.evict(oldest);
            }
        }
        if w.order.len() >= self.cap {
            if let Some(oldest) = w.order.keys().next().copied() {
                w.evict(oldest);
            }
        }
        let id = w.next;
        w.next += 1;
        let (tx, rx) = tokio::sync::watch::channel(Stage::Unproven);
        w.order.insert(id, (p, tx));
        *w.by_prefix.entry(p).or_insert(0) += 1;
        drop(w);
        let proof = Arc::new(Proof {
            id,
            unproven: self.clone(),
            slot: Mutex::new(None),
            wait: deadline,
        });
        let watch = Watch {
            rx,
            deadline: tokio::time::Instant::now() + deadline,
            proof: proof.clone(),
        };
        (proof, watch)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap().order.len()
    }
}

/// A connection's proof of life: proved once, it leaves the unproven budget for one of the
/// listener's slots, which it holds until it closes.
pub(crate) struct Proof {
    id: u64,
    unproven: Unproven,
    /// Once proved: its slot, and the sender of its stage, kept and never sent on. Telling
    /// the watch would wake the connection's own task, and tokio hands a self-woken task's
    /// turn to another event-loop thread: a futex wake and two context switches per connection.
    slot: Mutex<
        Option<(
            tokio::sync::OwnedSemaphorePermit,
            tokio::sync::watch::Sender<Stage>,
        )>,
    >,
    /// How long a proof waits for a slot (the listener is full of proven connections).
    wait: Duration,
}

impl Proof {
    /// The connection proved itself: take a slot (waiting while every one is held) and leave
    /// the unproven budget. False: it was closed meanwhile, or no slot came in time.
    pub(crate) async fn prove(&self) -> bool {
        if self.proven() {
            return true;
        }
        let slots = self.unproven.slots.clone();
        let Ok(Ok(permit)) = tokio::time::timeout(self.wait, slots.acquire_owned()).await else {
            return false;
        };
        let mut w = self
            .unproven
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(tx) = w.take(self.id) else {
            return false; // evicted while it waited
        };
        // Set while the budget is locked: the deadline never finds it out of the budget and
        // not yet proved.
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((permit, tx));
        true
    }

    pub(crate) fn proven(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proof({}, proven: {})", self.id, self.proven())
    }
}

impl Drop for Proof {
    fn drop(&mut self) {
        let mut w = self
            .unproven
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        w.evict(self.id);
    }
}

/// What ends an unproven connection.
pub(crate) struct Watch {
    rx: tokio::sync::watch::Receiver<Stage>,
    deadline: tokio::time::Instant,
    /// Proving is not sent on `rx` (see [`Proof::slot`]): the deadline asks it. Held here, it
    /// also keeps the proved connection's sender alive as long as the watch.
    proof: Arc<Proof>,
}

impl Watch {
    /// Resolves when the connection must close, with why: another took its place, or it did
    /// not prove itself in time. Never, once proven.
    pub(crate) async fn closed(mut self) -> &'static str {
        let decided =
            tokio::time::timeout_at(self.deadline, self.rx.wait_for(|s| *s != Stage::Unproven))
                .await
                .map(|r| r.map(|s| *s));
        match decided {
            Err(_) if self.proof.proven() => std::future::pending().await,
            Err(_) => "unproven-timeout",
            Ok(_) => "unproven-evicted",
        }
    }
}

/// Let this process hold as many sockets as the hard limit allows (Debian's soft default of
/// 1024 would cap a busy server long before memory does).
pub(crate) fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// Lines a board may send at once on its console (a boot prints a few dozen).
pub(crate) const BURST: u32 = 200;
/// Lines a board may send per second past its burst.
pub(crate) const PER_SECOND: f64 = 2.0;

/// Each board's budget of console lines, shared by its connections.
#[derive(Default)]
pub(crate) struct LineBudgets {
    boards: Mutex<HashMap<BoardName, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    /// The cut was put in the board's history since its last line was kept: a board that
    /// reconnects and floods again gets no second note.
    said: bool,
}

/// What a board's budget says of one more line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    Kept,
    /// Spent; `say`: the first refusal since a line was kept.
    Cut {
        say: bool,
    },
}

impl LineBudgets {
    /// Take one line from `board`'s budget.
    pub(crate) fn take(&self, board: &BoardName) -> Take {
        let mut boards = self.boards.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let b = boards.entry(board.clone()).or_insert(Bucket {
            tokens: f64::from(BURST),
            at: now,
            said: false,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * PER_SECOND;
        b.tokens = (b.tokens + refill).min(f64::from(BURST));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            b.said = false;
            Take::Kept
        } else {
            let say = !b.said;
            b.said = true;
            Take::Cut { say }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_mapped_ipv4_as_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(prefix(a), prefix(b));
        assert_ne!(prefix(a), prefix(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(prefix(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
        let per = PerIp::default();
        let held: Vec<_> = (0..2).map(|_| per.take(a, 2).unwrap()).collect();
        assert!(per.take(b, 2).is_none(), "another address of the same /64");
        assert!(per.take(c, 2).is_some());
        drop(held);
        assert!(per.take(b, 2).is_some());
        // Every slot given back: no address is remembered (a flood leaves no map behind).
        assert!(per.counts.lock().unwrap().is_empty());
    }

    /// Proving tells nothing to the connection's own task (a self-wake hands its turn to
    /// another event-loop thread); past the deadline, a proved connection stays open.
    #[tokio::test]
    async fn proving_wakes_nothing_and_a_proved_connection_outlives_the_deadline() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, SeqCst);
            }
        }
        let u = Unproven::new(4, 4, Arc::new(tokio::sync::Semaphore::new(1)));
        let (p, w) = u.enter("10.0.0.1".parse().unwrap(), Duration::from_millis(50));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut closed = Box::pin(w.closed());
        assert!(closed.as_mut().poll(&mut cx).is_pending());
        assert!(p.prove().await);
        assert_eq!(
            count.0.load(SeqCst),
            0,
            "proving woke the connection's task"
        );
        assert_eq!(u.len(), 0, "a proved connection leaves the budget");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(count.0.load(SeqCst) >= 1, "the deadline came");
        assert!(
            closed.as_mut().poll(&mut cx).is_pending(),
            "a proved connection is not closed at the deadline"
        );
    }

    #[tokio::test]
    async fn the_oldest_unproven_connection_makes_room_and_a_proven_one_stays() {
        let slots = Arc::new(tokio::sync::Semaphore::new(10));
        let u = Unproven::new(3, 2, slots.clone());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let long = Duration::from_secs(60);
        // A connection that closes unproven leaves the budget.
        let (gone, _) = u.enter(ip("10.0.0.1"), long);
        assert_eq!(u.len(), 1);
        drop(gone);
        assert_eq!(u.len(), 0);
        let (p1, w1) = u.enter(ip("10.0.0.1"), long);
        let (p2, w2) = u.enter(ip("10.0.0.2"), long);
        assert!(p2.prove().await);
        assert_eq!(slots.available_permits(), 9);
        let (_p3, w3) = u.enter(ip("10.0.0.3"), long);
        let (_p4, w4) = u.enter(ip("10.0.0.4"), long);
        // Three unproven allowed: 1, 3 and 4 fit (2 is proven and out of the budget).
        let (_p5, w5) = u.enter(ip("10.0.0.5"), long);
        assert_eq!(
            w1.closed().await,
            "unproven-evicted",
            "the oldest goes first"
        );
        assert!(
            !p1.prove().await,
            "an evicted connection cannot prove itself"
        );
        assert_eq!(u.len(), 3);
        let quiet = tokio::time::timeout(Duration::from_millis(50), w2.closed()).await;
        assert!(quiet.is_err(), "a proven connection is never closed");
        let (_p6, _w6) = u.enter(ip("10.0.0.5"), long);
        assert_eq!(w3.closed().await, "unproven-evicted");
        // 10.0.0.5 holds its share (2): its own oldest makes room, not 10.0.0.4's.
        let (_p7, _w7) = u.enter(ip("10.0.0.5"), long);
        assert_eq!(w5.closed().await, "unproven-evicted");
        let quiet = tokio::time::timeout(Duration::from_millis(50), w4.closed()).await;
        assert!(quiet.is_err(), "another prefix's connection stays");
        // Proved twice (the second request of a kept-alive connection): one slot, still true.
        assert!(p2.prove().await && p2.proven());
        assert_eq!(slots.available_permits(), 9, "one slot per connection");
        // A prefix's share frees as its connections prove themselves or close.
        let (q1, _) = u.enter(ip("10.0.0.9"), long);
        let (q2, _) = u.enter(ip("10.0.0.9"), long);
        assert!(q1.prove().await);
        drop(q2);
        let (_q3, w3) = u.enter(ip("10.0.0.9"), long);
        let (_q4, _w4) = u.enter(ip("10.0.0.9"), long);
        let quiet = tokio::time::timeout(Duration::from_millis(50), w3.closed()).await;
        assert!(
            quiet.is_err(),
            "the share of 2 counted connections that left"
        );
        drop(q1);
        // Unproven past the deadline.
        let (_p8, w8) = u.enter(ip("10.0.0.8"), Duration::from_millis(20));
        assert_eq!(w8.closed().await, "unproven-timeout");
        drop(p2);
        assert_eq!(
            slots.available_permits(),
            10,
            "a closed connection gives its slot back"
        );
    }

    #[tokio::test]
    async fn vectored_writes_reach_the_socket_whole() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let mut s = Stalled::new(&mut a, Duration::from_secs(5));
        assert!(s.is_write_vectored());
        let (x, y) = ([1u8; 100], [2u8; 200]);
        let bufs = [std::io::IoSlice::new(&x), std::io::IoSlice::new(&y)];
        // One call, both buffers: what rustls relies on to send many records per syscall.
        assert_eq!(s.write_vectored(&bufs).await.unwrap(), 300);
        drop(s);
        drop(a);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
            .await
            .unwrap();
        assert_eq!(got.len(), 300);
        assert_eq!((got[99], got[100]), (1, 2));
    }

    #[test]
    fn a_board_has_a_burst_of_lines_then_a_trickle() {
        let budgets = LineBudgets::default();
        let (a, b): (BoardName, BoardName) = ("a1".parse().unwrap(), "b1".parse().unwrap());
        for _ in 0..BURST {
            assert_eq!(budgets.take(&a), Take::Kept);
        }
        assert_eq!(budgets.take(&a), Take::Cut { say: true }, "past the burst");
        assert_eq!(budgets.take(&a), Take::Cut { say: false }, "said once");
        assert_eq!(
            budgets.take(&b),
            Take::Kept,
            "another board's budget is its own"
        );
        std::thread::sleep(Duration::from_secs_f64(1.5 / PER_SECOND));
        assert_eq!(budgets.take(&a), Take::Kept, "refilled");
        assert_eq!(
            budgets.take(&a),
            Take::Cut { say: true },
            "said again after a kept line"
        );
    }
}
