//! A user-space UDP relay that loses, duplicates, delays and reorders datagrams between real
//! sockets, for the `lossy` mode.
//!
//! For every real node address `upstreams[i]` the relay binds one proxy socket on loopback and
//! returns its address `proxies[i]`. A node talks to its peers only through their proxies:
//!
//! ```text
//!   node i (upstreams[i]) ──send to proxies[j]──▶ proxy socket j
//!                                                 │ source upstreams[i] tells the relay the
//!                                                 │ sender is node i; loss / dup / delay here
//!   node j (upstreams[j]) ◀──from proxies[i]───── proxy socket i
//! ```
//!
//! So node j sees the datagram come from `proxies[i]`, and its reply to that address goes back
//! through the relay the same way. A datagram from an address that is not one of the upstreams
//! is counted in [`RelayStats::unknown_source`] and dropped.
//!
//! # Determinism
//!
//! Each directed link i → j has its own xorshift generator seeded from `(seed, i, j)`, so the
//! fate of the k-th datagram on a link (lost or not, duplicated or not, its delay) depends only
//! on the seed, the link and k, not on how datagrams of other links interleave with it. The
//! exact arrival order still depends on the scheduler and the kernel.
//!
//! # Bounds
//!
//! Datagrams wait for their delay in one queue of at most [`RelayConfig::queue_capacity`]
//! entries. A datagram that does not fit is dropped and counted in [`RelayStats::overflow`];
//! nothing is dropped without being counted.
//!
//! # Network safety
//!
//! Proxy sockets bind to loopback, and upstreams must be loopback addresses (127.0.0.0/8 or
//! `::1`): the relay never sends anywhere else.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest datagram the relay carries; longer ones are truncated by the kernel, so the buffer
/// is the UDP maximum.
const MAX_DATAGRAM: usize = 65_535;

/// How the relay damages traffic. Every probability applies independently to each datagram.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayConfig {
    /// Seed of the per-link generators; the same seed gives the same losses, duplicates and
    /// delays on every link.
    pub seed: u64,
    /// Probability in `0.0..=1.0` that a datagram is dropped.
    pub loss: f64,
    /// Probability in `0.0..=1.0` that a datagram that was not dropped is sent twice (each copy
    /// gets its own delay).
    pub dup: f64,
    /// Delay every forwarded datagram waits at least.
    pub delay_min: Duration,
    /// Upper bound (exclusive) of a uniformly random extra delay per copy. Non-zero jitter
    /// reorders datagrams whose send times are closer than the jitter.
    pub delay_jitter: Duration,
    /// Most datagrams waiting for their delay at once; more are dropped and counted.
    pub queue_capacity: usize,
}

impl Default for RelayConfig {
    /// A transparent relay: no loss, no duplicates, no delay, 4096 queued datagrams.
    fn default() -> Self {
        Self {
            seed: 1,
            loss: 0.0,
            dup: 0.0,
            delay_min: Duration::ZERO,
            delay_jitter: Duration::ZERO,
            queue_capacity: 4096,
        }
    }
}

impl RelayConfig {
    fn validate(&self) -> io::Result<()> {
        let prob = |p: f64| (0.0..=1.0).contains(&p);
        if !prob(self.loss) || !prob(self.dup) {
            return Err(invalid(format!(
                "loss ({}) and dup ({}) must be probabilities in 0.0..=1.0",
                self.loss, self.dup
            )));
        }
        if self.queue_capacity == 0 {
            return Err(invalid("queue_capacity must be at least 1".into()));
        }
        Ok(())
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// A snapshot of the relay's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Datagrams received from upstreams.
    pub received: u64,
    /// Copies sent on to their destination (a duplicated datagram counts twice).
    pub forwarded: u64,
    /// Datagrams dropped by the loss setting.
    pub dropped: u64,
    /// Extra copies scheduled by the duplication setting.
    pub duplicated: u64,
    /// Copies dropped because the delay queue was full.
    pub overflow: u64,
    /// Datagrams from an address that is not an upstream (dropped).
    pub unknown_source: u64,
    /// Receive or send errors reported by the sockets.
    pub socket_errors: u64,
}

impl fmt::Display for RelayStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {}, forwarded {}, dropped {}, duplicated {}, overflow {}, unknown source {}, \
             socket errors {}",
            self.received,
            self.forwarded,
            self.dropped,
            self.duplicated,
            self.overflow,
            self.unknown_source,
            self.socket_errors
        )
    }
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    overflow: AtomicU64,
    unknown_source: AtomicU64,
    socket_errors: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> RelayStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RelayStats {
            received: get(&self.received),
            forwarded: get(&self.forwarded),
            dropped: get(&self.dropped),
            duplicated: get(&self.duplicated),
            overflow: get(&self.overflow),
            unknown_source: get(&self.unknown_source),
            socket_errors: get(&self.socket_errors),
        }
    }
}

/// A small deterministic generator (xorshift64*), seeded through splitmix64 so that nearby
/// seeds give unrelated streams. Not for cryptography.
#[derive(Clone, Debug)]
pub struct XorShift {
    state: u64,
}

impl XorShift {
    /// A generator for `seed` (any value, zero included).
    #[must_use]
    pub fn new(seed: u64) -> Self {
        // splitmix64 never maps to zero twice in a row; a zero state would stick forever.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self { state: if z == 0 { 0x2545_F491_4F6C_DD1D } else { z } }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform float in `0.0..1.0`.
    pub fn next_f64(&mut self) -> f64 {
        // The top 53 bits fill an f64 mantissa exactly.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// A uniform duration in `0..bound` (zero when `bound` is zero).
    pub fn below(&mut self, bound: Duration) -> Duration {
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 { Duration::ZERO } else { Duration::from_nanos(self.next_u64() % nanos) }
    }
}

/// The seed of the generator of link `from → to`.
fn link_seed(seed: u64, from: usize, to: usize) -> u64 {
    seed ^ (from as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (to as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(32)
}

/// A datagram waiting for its send time: leaves proxy socket `from` for `to`.
struct Scheduled {
    due: Instant,
    from: usize,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// Heap entry ordered by (due, arrival order), so equal deadlines leave first in, first out.
struct Pending {
    key: (Instant, u64),
    item: Scheduled,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// A running relay. Dropping it stops its tasks and closes its sockets.
pub struct Relay {
    proxies: Vec<SocketAddr>,
    counters: Arc<Counters>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("proxies", &self.proxies)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Binds one proxy socket per upstream and starts forwarding. Returns the relay and the
    /// proxy addresses, `proxies[i]` standing for `upstreams[i]`.
    ///
    /// Must be called inside a tokio runtime; the relay's tasks run on it.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when a probability is outside `0.0..=1.0`, the queue capacity is zero, an
    /// upstream is not a loopback address or appears twice; any error from binding a socket.
    pub async fn start(
        config: RelayConfig,
        upstreams: Vec<SocketAddr>,
    ) -> io::Result<(Relay, Vec<SocketAddr>)> {
        config.validate()?;
        let ips: Vec<IpAddr> = upstreams
            .iter()
            .map(|up| match up.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            })
            .collect();
        let bound = RelaySockets::bind_each(config, &ips).await?;
        let relay = bound.start(upstreams)?;
        let proxies = relay.proxies.clone();
        Ok((relay, proxies))
    }

    /// Binds `n` proxy sockets on 127.0.0.1 without forwarding yet: for nodes that must
    /// know their peers' (proxy) addresses when they start, and bind their own sockets
    /// first. [`RelaySockets::start`] then starts forwarding to the nodes' addresses;
    /// what the nodes send before that waits in the proxy sockets' buffers.
    ///
    /// # Errors
    ///
    /// As [`Relay::start`] for the configuration; any error from binding a socket.
    pub async fn bind(config: RelayConfig, n: usize) -> io::Result<RelaySockets> {
        config.validate()?;
        RelaySockets::bind_each(config, &vec![IpAddr::V4(Ipv4Addr::LOCALHOST); n]).await
    }

    /// The proxy addresses, `proxies()[i]` standing for upstream `i`.
    #[must_use]
    pub fn proxies(&self) -> &[SocketAddr] {
        &self.proxies
    }

    /// The counters so far.
    #[must_use]
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }
}

/// Proxy sockets bound by [`Relay::bind`], not forwarding yet.
pub struct RelaySockets {
    config: RelayConfig,
    sockets: Vec<Arc<UdpSocket>>,
    proxies: Vec<SocketAddr>,
}

impl fmt::Debug for RelaySockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelaySockets").field("proxies", &self.proxies).finish_non_exhaustive()
    }
}

impl RelaySockets {
    async fn bind_each(config: RelayConfig, ips: &[IpAddr]) -> io::Result<Self> {
        let mut sockets = Vec::with_capacity(ips.len());
        for ip in ips {
            sockets.push(Arc::new(UdpSocket::bind(SocketAddr::new(*ip, 0)).await?));
        }
        let proxies = sockets.iter().map(|s| s.local_addr()).collect::<io::Result<Vec<_>>>()?;
        Ok(Self { config, sockets, proxies })
    }

    /// The proxy addresses, `proxies()[i]` standing for the `i`-th upstream to come.
    #[must_use]
    pub fn proxies(&self) -> &[SocketAddr] {
        &self.proxies
    }

    /// Starts forwarding: `upstreams[i]` is the node proxy `i` stands for.
    ///
    /// Must be called inside a tokio runtime; the relay's tasks run on it.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the number of upstreams is not the number of proxies, an
    /// upstream is not a loopback address of the proxies' IP version, or appears twice.
    pub fn start(self, upstreams: Vec<SocketAddr>) -> io::Result<Relay> {
        let Self { config, sockets, proxies } = self;
        if upstreams.len() != sockets.len() {
            return Err(invalid(format!(
                "{} upstreams for {} proxy sockets",
                upstreams.len(),
                sockets.len()
            )));
        }
        let mut index = HashMap::with_capacity(upstreams.len());
        for (i, up) in upstreams.iter().enumerate() {
            if !up.ip().is_loopback() || up.is_ipv4() != proxies[i].is_ipv4() {
                return Err(invalid(format!(
                    "upstream {up} is not a loopback address of its proxy's IP version"
                )));
            }
            if index.insert(*up, i).is_some() {
                return Err(invalid(format!("upstream {up} is listed twice")));
            }
        }
        let index = Arc::new(index);
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let mut tasks = Vec::with_capacity(sockets.len() + 1);
        tasks.push(tokio::spawn(schedule(
            rx,
            sockets.clone(),
            config.queue_capacity,
            Arc::clone(&counters),
        )));
        for (j, socket) in sockets.iter().enumerate() {
            let rngs = (0..upstreams.len()).map(|i| XorShift::new(link_seed(config.seed, i, j)));
            tasks.push(tokio::spawn(receive(
                Arc::clone(socket),
                j,
                upstreams.clone(),
                Arc::clone(&index),
                rngs.collect(),
                config.clone(),
                tx.clone(),
                Arc::clone(&counters),
            )));
        }
        Ok(Relay { proxies, counters, tasks })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Receives on proxy socket `j` (the identity of node j) and schedules each datagram from
/// node i towards `upstreams[j]`, to leave from proxy socket i.
#[allow(clippy::too_many_arguments)] // private task body; a struct would only rename them
async fn receive(
    socket: Arc<UdpSocket>,
    j: usize,
    upstreams: Vec<SocketAddr>,
    index: Arc<HashMap<SocketAddr, usize>>,
    mut rngs: Vec<XorShift>,
    config: RelayConfig,
    tx: mpsc::Sender<Scheduled>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Invariant: `rngs` and `upstreams` both have one entry per upstream, and `index` maps
    // to positions in `upstreams`, so the indexing below cannot fail.
    let to = upstreams[j];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => {
                // e.g. an ICMP error surfacing on the socket; back off briefly so a persistent
                // error cannot spin.
                Counters::bump(&counters.socket_errors);
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let Some(&i) = index.get(&src) else {
            Counters::bump(&counters.unknown_source);
            continue;
        };
        Counters::bump(&counters.received);
        let rng = &mut rngs[i];
        // Always draw the same number of values per datagram, so one decision never shifts
        // the stream of the others.
        let lost = rng.chance(config.loss);
        let doubled = rng.chance(config.dup);
        let delays = [rng.below(config.delay_jitter), rng.below(config.delay_jitter)];
        if lost {
            Counters::bump(&counters.dropped);
            continue;
        }
        let copies = if doubled {
            Counters::bump(&counters.duplicated);
            2
        } else {
            1
        };
        let now = Instant::now();
        for extra in &delays[..copies] {
            let item = Scheduled {
                due: now + config.delay_min + *extra,
                from: i,
                to,
                bytes: buf[..len].to_vec(),
            };
            if tx.try_send(item).is_err() {
                Counters::bump(&counters.overflow);
            }
        }
    }
}

/// Holds scheduled datagrams until they are due and sends them.
async fn schedule(
    mut rx: mpsc::Receiver<Scheduled>,
    sockets: Vec<Arc<UdpSocket>>,
    capacity: usize,
    counters: Arc<Counters>,
) {
    let mut heap: BinaryHeap<Reverse<Pending>> = BinaryHeap::new();
    let mut seq = 0u64;
    loop {
        let next_due = heap.peek().map(|Reverse(p)| p.key.0);
        tokio::select! {
            // Stop taking new datagrams while the heap is full: the channel then fills and
            // receivers count the overflow.
            item = rx.recv(), if heap.len() < capacity => {
                let Some(item) = item else { break };
                seq += 1;
                heap.push(Reverse(Pending { key: (item.due, seq), item }));
            }
            () = sleep_until_opt(next_due), if next_due.is_some() => {
                let now = Instant::now();
                while heap.peek().is_some_and(|Reverse(p)| p.key.0 <= now) {
                    let Some(Reverse(Pending { item, .. })) = heap.pop() else { break };
                    // Invariant: `from` is an upstream index and there is one socket each.
                    match sockets[item.from].send_to(&item.bytes, item.to).await {
                        Ok(_) => Counters::bump(&counters.forwarded),
                        Err(_) => Counters::bump(&counters.socket_errors),
                    }
                }
            }
        }
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashSet;

    const WAIT: Duration = Duration::from_secs(5);

    async fn node() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.expect("bind node socket")
    }

    /// Sends `n` numbered datagrams from `a` to `to`, pausing every 16 so no socket buffer
    /// along the way overflows (the test measures the relay, not the kernel).
    async fn send_numbered(a: &UdpSocket, to: SocketAddr, n: u32) {
        for k in 0..n {
            a.send_to(&k.to_be_bytes(), to).await.expect("send");
            if k % 16 == 15 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    /// Receives numbered datagrams until `quiet` passes without one (or `WAIT` in total);
    /// returns their numbers in arrival order and checks each came from `from`.
    async fn collect(b: &UdpSocket, from: SocketAddr, quiet: Duration) -> Vec<u32> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match tokio::time::timeout(quiet, b.recv_from(&mut buf)).await {
                Ok(Ok((4, src))) => {
                    assert_eq!(src, from, "datagram must appear to come from the sender's proxy");
                    got.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                }
                Ok(other) => panic!("unexpected receive result {other:?}"),
                Err(_) => break,
            }
        }
        got
    }

    async fn run_link(config: RelayConfig, n: u32, quiet: Duration) -> (Vec<u32>, RelayStats) {
        let (a, b) = (node().await, node().await);
        let ups = vec![a.local_addr().unwrap(), b.local_addr().unwrap()];
        let (relay, proxies) = Relay::start(config, ups).await.expect("start relay");
        let receiver = tokio::spawn(async move {
            let got = collect(&b, proxies[0], quiet).await;
            (b, got)
        });
        send_numbered(&a, relay.proxies()[1], n).await;
        let (_b, got) = receiver.await.expect("receiver task");
        (got, relay.stats())
    }

    #[test]
    fn xorshift_is_deterministic_and_in_range() {
        let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
        let mut c = XorShift::new(8);
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..100).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        let mut z = XorShift::new(0);
        for _ in 0..10_000 {
            let f = z.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(z.below(Duration::from_millis(3)) < Duration::from_millis(3));
        }
        assert_eq!(z.below(Duration::ZERO), Duration::ZERO);
        // chance(0) never, chance(1) always.
        assert!((0..1000).all(|_| !z.chance(0.0) && z.chance(1.0)));
    }

    #[test]
    fn link_seeds_differ_per_direction() {
        assert_ne!(link_seed(1, 0, 1), link_seed(1, 1, 0));
        assert_ne!(link_seed(1, 0, 1), link_seed(2, 0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rejects_bad_config_and_non_loopback_upstreams() {
        let up = vec!["127.0.0.1:9".parse().unwrap()];
        for bad in [
            RelayConfig { loss: 1.5, ..RelayConfig::default() },
            RelayConfig { dup: -0.1, ..RelayConfig::default() },
            RelayConfig { loss: f64::NAN, ..RelayConfig::default() },
            RelayConfig { queue_capacity: 0, ..RelayConfig::default() },
        ] {
            let err = Relay::start(bad, up.clone()).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        let outside = vec!["10.0.0.1:9".parse().unwrap()];
        let err = Relay::start(RelayConfig::default(), outside).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let twice = vec![up[0], up[0]];
        let err = Relay::start(RelayConfig::default(), twice).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lossless_relay_delivers_everything_in_order_both_ways() {
        let (a, b, c) = (node().await, node().await, node().await);
        let ups = vec![a.local_addr().unwrap(), b.local_addr().unwrap(), c.local_addr().unwrap()];
        let (relay, proxies) = Relay::start(RelayConfig::default(), ups).await.unwrap();

        // a → b through proxies[1]; b sees it from proxies[0].
        let (p0, p1) = (proxies[0], proxies[1]);
        let rx = tokio::spawn(async move {
            let got = collect(&b, p0, Duration::from_millis(300)).await;
            (b, got)
        });
        send_numbered(&a, p1, 500).await;
        let (b, got) = rx.await.unwrap();
        assert_eq!(got, (0..500).collect::<Vec<_>>());

        // b replies to the address it saw; a gets it from proxies[1]. c receives nothing.
        b.send_to(b"pong", p0).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, src) = tokio::time::timeout(WAIT, a.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], src), (&b"pong"[..], p1));
        let quiet = tokio::time::timeout(Duration::from_millis(100), c.recv_from(&mut buf)).await;
        assert!(quiet.is_err(), "node c must not receive traffic between a and b");

        let stats = relay.stats();
        assert_eq!(
            stats,
            RelayStats { received: 501, forwarded: 501, ..RelayStats::default() },
            "{stats}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn proxies_bound_first_carry_what_was_sent_before_forwarding_started() {
        let bound = Relay::bind(RelayConfig::default(), 2).await.unwrap();
        let proxies = bound.proxies().to_vec();
        let (a, b) = (node().await, node().await);
        // Sent before the relay knows its upstreams: waits in proxy 1's socket buffer.
        a.send_to(b"early", proxies[1]).await.unwrap();
        let wrong = Relay::bind(RelayConfig::default(), 2).await.unwrap();
        let err = wrong.start(vec![a.local_addr().unwrap()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let relay = bound.start(vec![a.local_addr().unwrap(), b.local_addr().unwrap()]).unwrap();
        assert_eq!(relay.proxies(), &proxies[..]);
        let mut buf = [0u8; 16];
        let (n, src) = tokio::time::timeout(WAIT, b.recv_from(&mut buf)).await.unwrap().unwrap();
        assert_eq!((&buf[..n], src), (&b"early"[..], proxies[0]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loss_rate_matches_setting_and_is_seeded() {
        let config = RelayConfig { seed: 42, loss: 0.3, ..RelayConfig::default() };
        let quiet = Duration::from_millis(300);
        let (first, stats) = run_link(config.clone(), 2000, quiet).await;
        let rate = first.len() as f64 / 2000.0;
        assert!((0.66..=0.74).contains(&rate), "delivered {rate}, want 0.70 ± 0.04");
        assert_eq!(stats.received, 2000);
        assert_eq!(stats.dropped + stats.forwarded, 2000, "{stats}");
        assert_eq!(stats.forwarded as usize, first.len());

        // Same seed, same losses; another seed, other losses.
        let (second, _) = run_link(config.clone(), 2000, quiet).await;
        assert_eq!(first, second);
        let (other, _) = run_link(RelayConfig { seed: 43, ..config }, 2000, quiet).await;
        assert_ne!(first, other);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplication_sends_extra_copies() {
        let all = RelayConfig { dup: 1.0, ..RelayConfig::default() };
        let (got, stats) = run_link(all, 300, Duration::from_millis(300)).await;
        assert_eq!(got.len(), 600);
        for k in 0..300 {
            assert_eq!(got.iter().filter(|&&x| x == k).count(), 2, "datagram {k}");
        }
        assert_eq!((stats.duplicated, stats.forwarded), (300, 600), "{stats}");

        let half = RelayConfig { seed: 5, dup: 0.5, ..RelayConfig::default() };
        let (got, stats) = run_link(half, 1000, Duration::from_millis(300)).await;
        assert_eq!(got.len() as u64, 1000 + stats.duplicated);
        assert!((430..=570).contains(&stats.duplicated), "{stats}");
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), 1000, "every datagram arrives");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jitter_reorders_and_fixed_delay_does_not() {
        let jitter = RelayConfig {
            seed: 9,
            delay_min: Duration::from_millis(1),
            delay_jitter: Duration::from_millis(30),
            ..RelayConfig::default()
        };
        let (got, _) = run_link(jitter, 300, Duration::from_millis(300)).await;
        let mut sorted = got.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..300).collect::<Vec<_>>(), "no loss configured");
        let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(inversions > 10, "expected reordering, saw {inversions} inversions");

        let fixed = RelayConfig { delay_min: Duration::from_millis(20), ..RelayConfig::default() };
        let started = Instant::now();
        let (got, _) = run_link(fixed, 200, Duration::from_millis(300)).await;
        assert_eq!(got, (0..200).collect::<Vec<_>>(), "a fixed delay keeps the order");
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strangers_are_counted_not_forwarded() {
        let (a, b, stranger) = (node().await, node().await, node().await);
        let ups = vec![a.local_addr().unwrap(), b.local_addr().unwrap()];
        let (relay, proxies) = Relay::start(RelayConfig::default(), ups).await.unwrap();
        stranger.send_to(b"x", proxies[1]).await.unwrap();
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_millis(200), b.recv_from(&mut buf)).await;
        assert!(r.is_err(), "b must not receive the stranger's datagram");
        assert_eq!(relay.stats().unknown_source, 1);
        assert_eq!(relay.stats().forwarded, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_overflows_and_counts() {
        let config = RelayConfig {
            delay_min: Duration::from_millis(500),
            queue_capacity: 8,
            ..RelayConfig::default()
        };
        let (a, b) = (node().await, node().await);
        let ups = vec![a.local_addr().unwrap(), b.local_addr().unwrap()];
        let (relay, proxies) = Relay::start(config, ups).await.unwrap();
        send_numbered(&a, proxies[1], 100).await;
        let got = collect(&b, proxies[0], Duration::from_millis(800)).await;
        let stats = relay.stats();
        assert_eq!(stats.received, 100);
        // At most capacity in the heap plus capacity in the channel fit.
        assert!(got.len() <= 16 && !got.is_empty(), "delivered {}", got.len());
        assert_eq!(stats.overflow + stats.forwarded, 100, "{stats}");
    }
}
