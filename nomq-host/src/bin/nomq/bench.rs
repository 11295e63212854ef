//! `nomq bench`: on 127.0.0.1, a plain UDP loop against NoMQ QoS 0 throughput between two
//! nodes, and QoS 1 round-trip latency. Every phase is bounded in count and time.

use crate::common::{self, Failure};
use clap::builder::TypedValueParser;
use clap::value_parser;
use indicatif::{ProgressBar, ProgressStyle};
use nomq_host::{Handle, NodeBuilder, PublishOptions, Qos, Status};
use std::io::IsTerminal;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Datagrams of the raw UDP loop, and messages of the QoS 0 run.
    #[arg(long, value_name = "N", default_value_t = 200_000,
          value_parser = value_parser!(u64).range(1..=10_000_000))]
    messages: u64,
    /// Body size in bytes.
    #[arg(long, value_name = "B", default_value_t = 64)]
    size: usize,
    /// QoS 1 round trips to time (one after the other).
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = value_parser!(u64).range(1..=1_000_000))]
    samples: u64,
    /// Publishes queued at once during the QoS 0 run. Deeper is not faster: for every
    /// datagram it sends, the engine scans its whole outbox for the highest-priority ready
    /// entry, so a longer outbox costs more per message (finished entries are
    /// swap-removed, which is cheap).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = value_parser!(u16).range(1..=64).map(usize::from))]
    pipeline: usize,
    /// Longest each phase (raw UDP, QoS 0, QoS 1) may send or time round trips, in
    /// seconds, 0.1..=600, fractional allowed. A phase cut short says so, with how many it
    /// sent ("cut" in --json).
    #[arg(long, value_name = "S", default_value = "5",
          value_parser = common::seconds_arg(0.1, 600.0), allow_negative_numbers = true)]
    max_seconds: Duration,
    /// Print one JSON object instead of text (and no progress bar).
    #[arg(long)]
    json: bool,
}
/// A receiver that heard nothing this long after its sender finished is done.
const DRAIN_QUIET: Duration = Duration::from_millis(300);
const CHANNEL_QOS0: &str = "bench/qos0";
const CHANNEL_QOS1: &str = "bench/qos1";

/// One throughput measurement, rated over the span from first to last receipt.
#[derive(Clone, Copy, Debug, Default)]
struct Throughput {
    sent: u64,
    received: u64,
    seconds: f64,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        if self.seconds > 0.0 { self.received as f64 / self.seconds } else { 0.0 }
    }
    fn json(&self, wanted: u64) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "cut": self.sent < wanted,
            "received": self.received,
            "seconds": self.seconds,
            "per_second": self.per_second().round(),
        })
    }
}

/// Receipts counted across threads: how many, and when the first and last came (ns since
/// the base instant).
struct Receipts {
    base: Instant,
    count: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl Receipts {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            count: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
        }
    }
    fn record(&self) {
        let t = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            self.first_ns.store(t, Ordering::Relaxed);
        }
        self.last_ns.store(t, Ordering::Relaxed);
    }
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    fn throughput(&self, sent: u64) -> Throughput {
        let (first, last) =
            (self.first_ns.load(Ordering::Relaxed), self.last_ns.load(Ordering::Relaxed));
        let seconds = if last > first { (last - first) as f64 / 1e9 } else { 0.0 };
        Throughput { sent, received: self.count(), seconds }
    }
    /// Waits until `expected` arrived, or nothing arrived for [`DRAIN_QUIET`] (1 s at most).
    fn drain(&self, expected: u64, pb: &ProgressBar, offset: u64) {
        let end = Instant::now() + Duration::from_secs(1);
        let mut last = self.count();
        let mut quiet = Instant::now();
        while self.count() < expected && Instant::now() < end && quiet.elapsed() < DRAIN_QUIET {
            std::thread::sleep(Duration::from_millis(10));
            let c = self.count();
            pb.set_position(offset + c);
            if c != last {
                last = c;
                quiet = Instant::now();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Latency {
    samples: Vec<Duration>,
    failed: u64,
}

impl Latency {
    /// Round trips timed or failed.
    fn tried(&self) -> u64 {
        self.samples.len() as u64 + self.failed
    }
    fn percentile(&self, p: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        // `samples` is sorted; the index is in range by construction.
        let i = ((self.samples.len() - 1) as f64 * p).round() as usize;
        self.samples[i.min(self.samples.len() - 1)]
    }
}

pub fn run(a: &BenchArgs) -> Result<(), Failure> {
    let max = nomq::envelope::max_plaintext(nomq::Config::default().max_payload)
        - nomq::body::PUBLISH_OVERHEAD
        - CHANNEL_QOS0.len();
    if a.size > max {
        return Err(Failure::usage(format!("--size {}: at most {max} bytes fit a packet", a.size)));
    }
    let datagram_len =
        nomq::envelope::sealed_len(nomq::body::PUBLISH_OVERHEAD + CHANNEL_QOS0.len() + a.size);
    let pb = if a.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(2 * a.messages + a.samples)
    };
    if let Ok(style) = ProgressStyle::with_template("{msg:<24} [{bar:32}] {pos}/{len} {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }

    pb.set_message("raw UDP");
    let raw = raw_udp(a.messages, datagram_len, a.max_seconds, &pb)?;
    pb.set_position(a.messages);
    pb.set_message("NoMQ QoS 0");
    let NomqRun { qos0, qos1, publisher_drops, subscriber_drops } = nomq_phases(a, &pb)?;
    pb.finish_and_clear();

    let ratio = if raw.per_second() > 0.0 { qos0.per_second() / raw.per_second() } else { 0.0 };
    let (p50, p99) = (qos1.percentile(0.50), qos1.percentile(0.99));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    if a.json {
        let v = serde_json::json!({
            "body_len": a.size,
            "datagram_len": datagram_len,
            "max_seconds": a.max_seconds.as_secs_f64(),
            "raw_udp": raw.json(a.messages),
            "nomq_qos0": qos0.json(a.messages),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "qos1_rtt": {
                "samples": qos1.samples.len(),
                "failed": qos1.failed,
                "cut": qos1.tried() < a.samples,
                "p50_us": us(p50).round(),
                "p99_us": us(p99).round(),
                "max_us": us(qos1.samples.last().copied().unwrap_or_default()).round(),
            },
            "pipeline": a.pipeline,
            "drops": {
                "publisher": drops_json(&publisher_drops),
                "subscriber": drops_json(&subscriber_drops),
            },
        });
        println!("{v}");
    } else {
        let line = |name: &str, t: &Throughput, unit: &str| {
            println!(
                "{name:<18} {:>10.0} {unit}/s  ({} sent, {} received, {:.3} s)",
                t.per_second(),
                t.sent,
                t.received,
                t.seconds
            );
            if t.sent < a.messages {
                println!("{:<18} {}", "", cut(t.sent, a.messages, "sent", a.max_seconds));
            }
        };
        println!(
            "datagram: {datagram_len} B (a sealed PUBLISH of a {} B body on {CHANNEL_QOS0:?})",
            a.size
        );
        line("raw UDP", &raw, "datagrams");
        line("NoMQ QoS 0", &qos0, "messages");
        println!("{:<18} {ratio:>10.2}", "ratio NoMQ/raw");
        println!(
            "{:<18} p50 {:.0} µs, p99 {:.0} µs ({} samples, {} failed)",
            "QoS 1 round trip",
            us(p50),
            us(p99),
            qos1.samples.len(),
            qos1.failed
        );
        if qos1.tried() < a.samples {
            println!("{:<18} {}", "", cut(qos1.tried(), a.samples, "timed", a.max_seconds));
        }
        for (who, d) in [("publisher", &publisher_drops), ("subscriber", &subscriber_drops)] {
            if !d.is_empty() {
                let list: Vec<String> = d.iter().map(|(r, n)| format!("{r} {n}")).collect();
                println!("{:<18} {}", format!("{who} drops"), list.join(", "));
            }
        }
    }
    Ok(())
}

/// `cut at the 5 s limit (--max-seconds): 242176 of 300000 sent`.
fn cut(done: u64, wanted: u64, what: &str, limit: Duration) -> String {
    format!(
        "cut at the {} limit (--max-seconds): {done} of {wanted} {what}",
        common::fmt_duration(limit)
    )
}

/// Plain UDP: one thread sends `n` datagrams of `len` bytes as fast as it can, another
/// receives them.
fn raw_udp(n: u64, len: usize, limit: Duration, pb: &ProgressBar) -> Result<Throughput, Failure> {
    let net = |what: &str, e: std::io::Error| Failure::network(format!("raw UDP {what}: {e}"));
    let rx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(|e| net("socket", e))?;
    // The buffers a node asks for (nomq-host's `bind`), so both loops lose alike.
    let _ = rx.set_recv_buffer_size(4 << 20);
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    rx.bind(&any.into()).map_err(|e| net("bind", e))?;
    let rx = UdpSocket::from(rx);
    rx.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| net("timeout", e))?;
    let to = rx.local_addr().map_err(|e| net("local address", e))?;
    let tx = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(|e| net("socket", e))?;
    let _ = tx.set_send_buffer_size(1 << 20);
    tx.bind(&any.into()).map_err(|e| net("bind", e))?;
    let tx = UdpSocket::from(tx);
    let receipts = Arc::new(Receipts::new());
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (receipts, done) = (Arc::clone(&receipts), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let end = Instant::now() + limit + Duration::from_secs(1);
            let mut quiet_since: Option<Instant> = None;
            while receipts.count() < n && Instant::now() < end {
                match rx.recv_from(&mut buf) {
                    Ok(_) => {
                        receipts.record();
                        quiet_since = None;
                    }
                    Err(_) if done.load(Ordering::Relaxed) => {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() >= DRAIN_QUIET {
                            break;
                        }
                    }
                    Err(_) => {}
                }
            }
        })
    };
    let payload = vec![0xA5u8; len];
    let end = Instant::now() + limit;
    let mut sent = 0;
    while sent < n {
        if sent % 4096 == 0 {
            pb.set_position(receipts.count());
            if Instant::now() >= end {
                break;
            }
        }
        // A full socket buffer loses the datagram, as UDP does; the receiver counts.
        if tx.send_to(&payload, to).is_ok() {
            sent += 1;
        } else {
            std::thread::yield_now();
        }
    }
    done.store(true, Ordering::Relaxed);
    receiver.join().map_err(|_| Failure::network("raw UDP receiver thread failed"))?;
    Ok(receipts.throughput(sent))
}

/// Two free ports on 127.0.0.1 (bound, then released).
fn free_ports() -> Result<(SocketAddr, SocketAddr), Failure> {
    let bind = || {
        UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_err(|e| Failure::network(format!("bind 127.0.0.1:0: {e}")))
    };
    let (a, b) = (bind()?, bind()?);
    if a == b { Err(Failure::network("no two free ports on 127.0.0.1")) } else { Ok((a, b)) }
}

fn bench_node(
    ring: &nomq_keys::KeyringFile,
    bind: SocketAddr,
    peer: SocketAddr,
) -> Result<NodeBuilder, Failure> {
    let keys = ring.to_core().map_err(|e| Failure::usage(e.to_string()))?;
    let mut engine = nomq::Config::default();
    // The default 1000 packets/s per peer would throttle a throughput run.
    engine.rate_limit = u32::MAX;
    Ok(NodeBuilder::new(keys).engine(engine).bind(bind).peers([peer]))
}

/// What the two NoMQ phases measured, and what each node dropped (by reason).
struct NomqRun {
    qos0: Throughput,
    qos1: Latency,
    publisher_drops: Drops,
    subscriber_drops: Drops,
}

/// Non-zero drop counters of a node, by reason; `app` for a full subscription stream.
type Drops = Vec<(&'static str, u64)>;

fn drops(s: &nomq_host::HostStats) -> Drops {
    let mut d: Drops = s.engine.nonzero().map(|(r, n)| (r.name(), n)).collect();
    if s.app_dropped > 0 {
        d.push(("app", s.app_dropped));
    }
    d
}

fn drops_json(d: &Drops) -> serde_json::Value {
    d.iter().map(|&(r, n)| (r.to_string(), serde_json::Value::from(n))).collect()
}

/// The subscriber runs on its own thread and runtime; the publisher on this one.
fn nomq_phases(a: &BenchArgs, pb: &ProgressBar) -> Result<NomqRun, Failure> {
    let ring = nomq_keys::KeyringFile::generate()
        .map_err(|e| Failure::usage(format!("cannot generate keys: {e}")))?;
    let (pub_addr, sub_addr) = free_ports()?;
    let receipts = Arc::new(Receipts::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sub_builder = bench_node(&ring, sub_addr, pub_addr)?;
    let subscriber = {
        let receipts = Arc::clone(&receipts);
        std::thread::spawn(move || -> Result<Drops, Failure> {
            common::runtime()?.block_on(async move {
                let node = match sub_builder.start().await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Failure::from(e)));
                        return Ok(Drops::new());
                    }
                };
                let sub = match node.subscribe("bench/#").await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Failure::from(e)));
                        node.shutdown().await;
                        return Ok(Drops::new());
                    }
                };
                // The application reads on another thread, as it would on a multi-threaded
                // runtime: on this one the driver, busy with a flood, would starve it.
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                let consumer = std::thread::spawn(move || {
                    let rt = common::runtime()?;
                    rt.block_on(consume(sub, &receipts, stop_rx));
                    let _ = done_tx.send(());
                    Ok::<(), Failure>(())
                });
                let _ = ready_tx.send(Ok(()));
                let _ = done_rx.await;
                let d = node.stats().await.map(|s| drops(&s)).unwrap_or_default();
                node.shutdown().await;
                consumer
                    .join()
                    .map_err(|_| Failure::network("benchmark reader thread failed"))??;
                Ok(d)
            })
        })
    };
    let ready = ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| Failure::network("the benchmark subscriber did not start"))
        .and_then(|r| r);
    let result = ready.and_then(|()| {
        let publisher = bench_node(&ring, pub_addr, sub_addr)?;
        common::runtime()?.block_on(publish_phases(a, publisher, &receipts, pb))
    });
    let _ = stop_tx.send(());
    let sub_result =
        subscriber.join().map_err(|_| Failure::network("benchmark subscriber thread failed"))?;
    let (qos0, qos1, publisher_drops) = result?;
    Ok(NomqRun { qos0, qos1, publisher_drops, subscriber_drops: sub_result? })
}

/// Counts the QoS 0 messages of `sub` until told to stop.
async fn consume(
    mut sub: nomq_host::Subscription,
    receipts: &Receipts,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            m = sub.recv() => match m {
                Some(m) if m.channel == CHANNEL_QOS0 => receipts.record(),
                Some(_) => {}
                None => return,
            },
            _ = &mut stop => return,
        }
    }
}

async fn publish_phases(
    a: &BenchArgs,
    builder: NodeBuilder,
    receipts: &Receipts,
    pb: &ProgressBar,
) -> Result<(Throughput, Latency, Drops), Failure> {
    let node = builder.start().await?;
    // Learn the subscriber (its heartbeat announces `bench/#`) before timing anything.
    let end = tokio::time::Instant::now() + Duration::from_secs(2);
    while node.stats().await?.engine.rx_datagrams == 0 {
        if tokio::time::Instant::now() >= end {
            node.shutdown().await;
            return Err(Failure::network("the benchmark nodes did not hear each other"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let result = async {
        let sent = qos0(a, &node, receipts, pb).await?;
        receipts.drain(sent, pb, a.messages);
        let throughput = receipts.throughput(sent);
        pb.set_position(2 * a.messages);
        pb.set_message("NoMQ QoS 1 round trips");
        let latency = qos1(a, &node, pb).await?;
        let d = drops(&node.stats().await?);
        Ok((throughput, latency, d))
    }
    .await;
    node.shutdown().await;
    result
}

/// Publishes `a.messages` QoS 0 messages through `a.pipeline` concurrent tasks; returns
/// how many were sent.
async fn qos0(
    a: &BenchArgs,
    node: &Handle,
    receipts: &Receipts,
    pb: &ProgressBar,
) -> Result<u64, Failure> {
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let end = tokio::time::Instant::now() + a.max_seconds;
    let body: Arc<[u8]> = vec![0x5Au8; a.size].into();
    let mut tasks = Vec::with_capacity(a.pipeline);
    for _ in 0..a.pipeline {
        let (node, next, sent, body, n) =
            (node.clone(), Arc::clone(&next), Arc::clone(&sent), Arc::clone(&body), a.messages);
        tasks.push(tokio::spawn(async move {
            // Batches of up to BATCH messages: one round trip to the driver each.
            const BATCH: u64 = 64;
            loop {
                let start = next.fetch_add(BATCH, Ordering::Relaxed);
                if start >= n {
                    return Ok(());
                }
                let mut left = BATCH.min(n - start);
                while left > 0 {
                    if tokio::time::Instant::now() >= end {
                        return Ok(());
                    }
                    let bodies = (0..left).map(|_| body.to_vec()).collect();
                    match node.publish_batch(CHANNEL_QOS0, bodies, PublishOptions::default()).await
                    {
                        Ok(k) => {
                            left -= k as u64;
                            sent.fetch_add(k as u64, Ordering::Relaxed);
                            if k == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                        Err(e) => return Err(Failure::from(e)),
                    }
                }
            }
        }));
    }
    while !tasks.iter().all(tokio::task::JoinHandle::is_finished) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        pb.set_position(a.messages + receipts.count());
    }
    for t in tasks {
        t.await.map_err(|_| Failure::network("a publishing task failed"))??;
    }
    Ok(sent.load(Ordering::Relaxed))
}

/// Times QoS 1 publishes one after the other, from `publish` to the Acknowledged outcome.
async fn qos1(a: &BenchArgs, node: &Handle, pb: &ProgressBar) -> Result<Latency, Failure> {
    let body = vec![0x5Au8; a.size];
    // A lost round trip gives up within 2 s (the TTL), keeping the phase bounded.
    let opts = PublishOptions { ttl: Some(2), ..PublishOptions::qos(Qos::AtLeastOnce) };
    let end = Instant::now() + a.max_seconds;
    let mut lat = Latency::default();
    for i in 0..a.samples {
        if Instant::now() >= end {
            break;
        }
        let t = Instant::now();
        let d = node.publish(CHANNEL_QOS1, body.clone(), opts).await?;
        if d.status == Status::Acknowledged {
            lat.samples.push(t.elapsed());
        } else {
            lat.failed += 1;
        }
        if i % 64 == 0 {
            pb.set_position(2 * a.messages + i);
        }
    }
    lat.samples.sort_unstable();
    Ok(lat)
}
