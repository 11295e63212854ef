//! `nomq bench`: on 127.0.0.1, a plain UDP loop against NoMQ QoS 0 throughput between two
//! nodes, a windowed QoS 1 stream (every message acknowledged), and QoS 1 round-trip
//! latency; `--sweep` repeats the throughput phases over payload sizes. Every phase is
//! bounded in count and time, and reports the receiver's memory and overflows.

use crate::common::{self, Failure};
use clap::builder::TypedValueParser;
use clap::value_parser;
use indicatif::{ProgressBar, ProgressStyle};
use nomq_host::{Handle, HostError, HostStats, NodeBuilder, PublishOptions, Qos, Status};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Datagrams of the raw UDP loop, and messages of the QoS 0 run and of the windowed
    /// QoS 1 stream (each, per payload size with --sweep); --max-seconds bounds each phase,
    /// so a large count makes a run of that many seconds (a 60 s memory check).
    #[arg(long, value_name = "N", default_value_t = 200_000,
          value_parser = value_parser!(u64).range(1..=1_000_000_000))]
    messages: u64,
    /// Body size in bytes (ignored with --sweep).
    #[arg(long, value_name = "B", default_value_t = 64)]
    size: usize,
    /// QoS 1 round trips to time (one after the other; not run with --sweep).
    #[arg(long, value_name = "N", default_value_t = 2000,
          value_parser = value_parser!(u64).range(1..=1_000_000))]
    samples: u64,
    /// QoS 0 publish_batch calls in flight at once, 1..=1024: each hands --batch messages
    /// to the node's driver in one command round trip, so up to pipeline × batch messages
    /// are queued at a time. The driver feeds them to the engine's outbox and sends what
    /// the outbox holds whenever it fills, so a deeper queue keeps the driver busy; it does
    /// not grow the outbox.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = value_parser!(u16).range(1..=1024).map(usize::from))]
    pipeline: usize,
    /// Messages per publish_batch call of the QoS 0 run, 1..=4096.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = value_parser!(u16).range(1..=4096).map(usize::from))]
    batch: usize,
    /// QoS 1 messages in flight in the windowed stream, 1..=65535: a new one is published
    /// as soon as an earlier one's outcome arrives. A publish the engine refuses with a
    /// full outbox waits for an earlier outcome and is retried (counted as outbox_full).
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = value_parser!(u16).range(1..).map(usize::from))]
    window: usize,
    /// Run raw UDP, QoS 0 and the windowed QoS 1 stream for each payload size of 16, 64,
    /// 256, 1024, 4096 and 8192 bytes (a size that does not fit one NoMQ packet is
    /// skipped for NoMQ, and says so), and print a table (a JSON array with --json).
    #[arg(long)]
    sweep: bool,
    /// Longest each phase (raw UDP, QoS 0, QoS 1 window, QoS 1 round trips) may send or
    /// time round trips, in seconds, 0.1..=600, fractional allowed. A phase cut short says
    /// so, with how many it sent ("cut" in --json).
    #[arg(long, value_name = "S", default_value = "5",
          value_parser = common::seconds_arg(0.1, 600.0), allow_negative_numbers = true)]
    max_seconds: Duration,
    /// How long each node's driver polls instead of sleeping while a publish's outcome is
    /// awaited, in microseconds, 0..=10000 (0: off); the library's default. The QoS 1
    /// round trip reports the CPU time it cost ("spun_us" per round trip in --json).
    #[arg(long, value_name = "US",
          default_value_t = nomq_host::config::DEFAULT_SPIN.as_micros() as u64,
          value_parser = value_parser!(u64).range(0..=nomq_host::config::MAX_SPIN.as_micros() as u64))]
    spin_us: u64,
    /// Print JSON instead of text (and no progress bar): one object, or with --sweep an
    /// array of one object per payload size.
    #[arg(long)]
    json: bool,
}

/// Payload sizes of `--sweep`.
const SWEEP: [usize; 6] = [16, 64, 256, 1024, 4096, 8192];
/// A receiver that heard nothing this long after its sender finished is done.
const DRAIN_QUIET: Duration = Duration::from_millis(300);
/// Longest the windowed QoS 1 stream waits for the outcomes still in flight at its end.
const WINDOW_DRAIN: Duration = Duration::from_secs(3);
/// TTL of a windowed QoS 1 publish: it is retransmitted within this and resolves by it.
const WINDOW_TTL: u16 = 5;
/// Publishing tasks of the windowed stream (each holds its share of the window).
const WINDOW_TASKS: usize = 16;
/// Messages the bench's reader takes from its stream at once.
const CONSUME_BATCH: usize = 256;
/// Messages the bench's subscription stream holds for its reader.
const BENCH_STREAM_DEPTH: usize = 65_536;
const CHANNEL_QOS0: &str = "bench/qos0";
const CHANNEL_QOS1: &str = "bench/qos1";
const CHANNEL_QOS1W: &str = "bench/qos1w";

/// The resident memory of this process (VmRSS), KiB; `None` off Linux.
fn rss_kib() -> Option<u64> {
    proc_status_kib("VmRSS:")
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// `RcvbufErrors` of the `Udp:` lines of /proc/net/snmp: datagrams the kernel dropped
/// because a receive buffer was full, in this network namespace (every socket, not only
/// ours); `None` where it cannot be read.
fn udp_rcvbuf_errors() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = s.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The receiver side of one phase: memory at its start and end, kernel receive-buffer
/// overflows, and (for NoMQ phases) the receiving node's counters over the phase.
#[derive(Clone, Debug, Default)]
struct ReceiverReport {
    rss_start_kib: Option<u64>,
    rss_end_kib: Option<u64>,
    rcvbuf_errors: Option<u64>,
    node: Option<NodeDelta>,
}

/// Differences of the receiving node's [`HostStats`] over a phase.
#[derive(Clone, Debug, Default)]
struct NodeDelta {
    engine_drops: u64,
    drops: Drops,
    app_dropped: u64,
    app_deferred: u64,
    recv_errors: u64,
    rx_datagrams: u64,
    delivered: u64,
}

/// Snapshot taken at the start of a phase.
struct ReceiverMark {
    rss: Option<u64>,
    rcvbuf: Option<u64>,
    node: Option<HostStats>,
}

impl ReceiverMark {
    fn now(node: Option<HostStats>) -> Self {
        Self { rss: rss_kib(), rcvbuf: udp_rcvbuf_errors(), node }
    }
    fn report(&self, node: Option<HostStats>) -> ReceiverReport {
        let rcvbuf = match (self.rcvbuf, udp_rcvbuf_errors()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let node = match (&self.node, node) {
            (Some(a), Some(b)) => {
                let drops = b
                    .engine
                    .nonzero()
                    .map(|(r, n)| (r.name(), n.saturating_sub(a.engine.drops(r))))
                    .filter(|&(_, n)| n > 0)
                    .collect();
                Some(NodeDelta {
                    engine_drops: b.engine.total_drops().saturating_sub(a.engine.total_drops()),
                    drops,
                    app_dropped: b.app_dropped.saturating_sub(a.app_dropped),
                    app_deferred: b.app_deferred.saturating_sub(a.app_deferred),
                    recv_errors: (b.recv_errors + b.recv_truncated)
                        .saturating_sub(a.recv_errors + a.recv_truncated),
                    rx_datagrams: b.engine.rx_datagrams.saturating_sub(a.engine.rx_datagrams),
                    delivered: b.engine.delivered.saturating_sub(a.engine.delivered),
                })
            }
            _ => None,
        };
        ReceiverReport {
            rss_start_kib: self.rss,
            rss_end_kib: rss_kib(),
            rcvbuf_errors: rcvbuf,
            node,
        }
    }
}

impl ReceiverReport {
    fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "rss_start_kib": self.rss_start_kib,
            "rss_end_kib": self.rss_end_kib,
            "udp_rcvbuf_errors": self.rcvbuf_errors,
        });
        if let Some(n) = &self.node {
            v["engine_drops"] = n.engine_drops.into();
            v["drops"] = drops_json(&n.drops);
            v["app_dropped"] = n.app_dropped.into();
            v["app_deferred"] = n.app_deferred.into();
            v["recv_errors"] = n.recv_errors.into();
            v["rx_datagrams"] = n.rx_datagrams.into();
            v["delivered"] = n.delivered.into();
        }
        v
    }
    /// `receiver: RSS 5120 -> 5248 KiB, UDP RcvbufErrors +0, engine drops 0`.
    fn text(&self) -> String {
        let kib = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        let mut s = format!(
            "receiver: RSS {} -> {} KiB, UDP RcvbufErrors +{}",
            kib(self.rss_start_kib),
            kib(self.rss_end_kib),
            kib(self.rcvbuf_errors)
        );
        if let Some(n) = &self.node {
            s += &format!(
                ", engine drops {}, app dropped {}, app deferred {}, recv errors {}",
                n.engine_drops, n.app_dropped, n.app_deferred, n.recv_errors
            );
            if !n.drops.is_empty() {
                let list: Vec<String> = n.drops.iter().map(|(r, k)| format!("{r} {k}")).collect();
                s += &format!(" ({})", list.join(", "));
            }
        }
        s
    }
}

/// One throughput measurement, rated over the span from first to last receipt.
#[derive(Clone, Debug, Default)]
struct Throughput {
    sent: u64,
    received: u64,
    seconds: f64,
    receiver: ReceiverReport,
}

impl Throughput {
    fn per_second(&self) -> f64 {
        if self.seconds > 0.0 { self.received as f64 / self.seconds } else { 0.0 }
    }
    fn json(&self, wanted: u64, size: usize) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "cut": self.sent < wanted,
            "received": self.received,
            "seconds": self.seconds,
            "per_second": self.per_second().round(),
            "mb_per_second": mb(self.per_second(), size),
            "receiver": self.receiver.json(),
        })
    }
}

/// Payload megabytes (10^6) per second, three decimals.
fn mb(per_second: f64, size: usize) -> f64 {
    (per_second * size as f64 / 1e3).round() / 1e3
}

/// The windowed QoS 1 stream: outcomes counted at the publisher.
#[derive(Clone, Debug, Default)]
struct Windowed {
    sent: u64,
    acked: u64,
    /// Outcomes other than Acknowledged (unacknowledged, expired, no subscribers).
    failed: u64,
    /// Still in flight when the drain ([`WINDOW_DRAIN`]) ended.
    unresolved: u64,
    /// Publishes refused with a full outbox (and retried).
    outbox_full: u64,
    /// From the first publish to the last Acknowledged outcome.
    seconds: f64,
    receiver: ReceiverReport,
}

impl Windowed {
    fn per_second(&self) -> f64 {
        if self.seconds > 0.0 { self.acked as f64 / self.seconds } else { 0.0 }
    }
    fn json(&self, wanted: u64, window: usize, size: usize) -> serde_json::Value {
        serde_json::json!({
            "window": window,
            "sent": self.sent,
            "cut": self.sent < wanted,
            "acked": self.acked,
            "failed": self.failed,
            "unresolved": self.unresolved,
            "outbox_full": self.outbox_full,
            "seconds": self.seconds,
            "per_second": self.per_second().round(),
            "mb_per_second": mb(self.per_second(), size),
            "receiver": self.receiver.json(),
        })
    }
}

/// Receipts counted across threads: how many, and when the first and last came (ns since
/// the base instant). Only bodies of the current phase's length count.
struct Receipts {
    base: Instant,
    want_len: AtomicUsize,
    count: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

impl Receipts {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            want_len: AtomicUsize::new(usize::MAX),
            count: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
        }
    }
    /// Starts counting bodies of `len` bytes from zero.
    fn reset(&self, len: usize) {
        self.want_len.store(len, Ordering::Relaxed);
        self.count.store(0, Ordering::Relaxed);
        self.first_ns.store(u64::MAX, Ordering::Relaxed);
        self.last_ns.store(0, Ordering::Relaxed);
    }
    /// `n` messages of `len` bytes arrived together (one clock reading).
    fn record(&self, len: usize, n: u64) {
        if len != self.want_len.load(Ordering::Relaxed) || n == 0 {
            return;
        }
        let t = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if self.count.fetch_add(n, Ordering::Relaxed) == 0 {
            self.first_ns.store(t, Ordering::Relaxed);
        }
        self.last_ns.store(t, Ordering::Relaxed);
    }
    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
    fn throughput(&self, sent: u64, receiver: ReceiverReport) -> Throughput {
        let (first, last) =
            (self.first_ns.load(Ordering::Relaxed), self.last_ns.load(Ordering::Relaxed));
        let seconds = if last > first { (last - first) as f64 / 1e9 } else { 0.0 };
        Throughput { sent, received: self.count(), seconds, receiver }
    }
    /// Waits until `expected` arrived, or nothing arrived for [`DRAIN_QUIET`] (1 s at most).
    /// Sleeps on the runtime, so the publisher's driver keeps sending what is queued.
    async fn drain(&self, expected: u64) {
        let end = Instant::now() + Duration::from_secs(1);
        let mut last = self.count();
        let mut quiet = Instant::now();
        while self.count() < expected && Instant::now() < end && quiet.elapsed() < DRAIN_QUIET {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let c = self.count();
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
    /// What the publisher's driver spent spinning during the round trips.
    spun: Duration,
}

impl Latency {
    /// Round trips timed or failed.
    fn tried(&self) -> u64 {
        self.samples.len() as u64 + self.failed
    }
    /// Time spent spinning per round trip tried.
    fn spun_per_trip(&self) -> Duration {
        self.spun.checked_div(self.tried().max(1) as u32).unwrap_or_default()
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

/// The largest body one NoMQ packet carries on the bench channels.
fn max_body() -> usize {
    nomq::envelope::max_plaintext(nomq::Config::default().max_payload)
        - nomq::body::PUBLISH_OVERHEAD
        - CHANNEL_QOS0.len().max(CHANNEL_QOS1W.len())
}

/// The sealed PUBLISH of a `size`-byte body on [`CHANNEL_QOS0`]: what the raw loop sends.
fn datagram_len(size: usize) -> usize {
    nomq::envelope::sealed_len(nomq::body::PUBLISH_OVERHEAD + CHANNEL_QOS0.len() + size)
}

/// What one payload size measured; `nomq` is `None` for a size NoMQ cannot carry.
struct SizeRun {
    size: usize,
    raw: Throughput,
    nomq: Option<(Throughput, Windowed)>,
}

pub fn run(a: &BenchArgs) -> Result<(), Failure> {
    let max = max_body();
    if !a.sweep && a.size > max {
        return Err(Failure::usage(format!("--size {}: at most {max} bytes fit a packet", a.size)));
    }
    let sizes: Vec<usize> = if a.sweep { SWEEP.to_vec() } else { vec![a.size] };
    let fits: Vec<usize> = sizes.iter().copied().filter(|&s| s <= max).collect();
    let rtt_samples = if a.sweep { 0 } else { a.samples };
    let pb = if a.json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(sizes.len() as u64 + 2 * fits.len() as u64 + u64::from(!a.sweep))
    };
    if let Ok(style) = ProgressStyle::with_template("{msg:<32} [{bar:32}] {pos}/{len} {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }

    let mut raws = Vec::with_capacity(sizes.len());
    for &size in &sizes {
        pb.set_message(format!("raw UDP, {size} B"));
        raws.push(raw_udp(a.messages, datagram_len(size), a.max_seconds)?);
        pb.inc(1);
    }
    let nomq = nomq_phases(a, &fits, rtt_samples, &pb)?;
    pb.finish_and_clear();
    let mut per_size = nomq.per_size.into_iter();
    let runs: Vec<SizeRun> = sizes
        .iter()
        .zip(raws)
        .map(|(&size, raw)| SizeRun {
            size,
            raw,
            nomq: if size <= max { per_size.next() } else { None },
        })
        .collect();
    if a.sweep {
        report_sweep(a, &runs, max);
    } else if let Some(r) = runs.first() {
        report_one(a, r, &nomq.qos1, &nomq.publisher_drops, &nomq.subscriber_drops);
    }
    Ok(())
}

fn report_one(a: &BenchArgs, r: &SizeRun, qos1: &Latency, pub_drops: &Drops, sub_drops: &Drops) {
    let (qos0, win) = match &r.nomq {
        Some((q, w)) => (q.clone(), w.clone()),
        None => (Throughput::default(), Windowed::default()),
    };
    let raw = &r.raw;
    let ratio = if raw.per_second() > 0.0 { qos0.per_second() / raw.per_second() } else { 0.0 };
    let (p50, p99) = (qos1.percentile(0.50), qos1.percentile(0.99));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let datagram_len = datagram_len(a.size);
    if a.json {
        let v = serde_json::json!({
            "body_len": a.size,
            "datagram_len": datagram_len,
            "max_seconds": a.max_seconds.as_secs_f64(),
            "raw_udp": raw.json(a.messages, a.size),
            "nomq_qos0": qos0.json(a.messages, a.size),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "nomq_qos1_window": win.json(a.messages, a.window, a.size),
            "qos1_rtt": {
                "samples": qos1.samples.len(),
                "failed": qos1.failed,
                "cut": qos1.tried() < a.samples,
                "p50_us": us(p50).round(),
                "p99_us": us(p99).round(),
                "max_us": us(qos1.samples.last().copied().unwrap_or_default()).round(),
                "spun_us": (us(qos1.spun_per_trip()) * 10.0).round() / 10.0,
            },
            "spin_us": a.spin_us,
            "pipeline": a.pipeline,
            "batch": a.batch,
            "window": a.window,
            "drops": {
                "publisher": drops_json(pub_drops),
                "subscriber": drops_json(sub_drops),
            },
        });
        println!("{v}");
        return;
    }
    let line = |name: &str, n: u64, rate: f64, unit: &str, detail: String, rx: &ReceiverReport| {
        println!("{name:<18} {rate:>10.0} {unit}/s  {:>8.2} MB/s  ({detail})", mb(rate, a.size));
        if n < a.messages {
            println!("{:<18} {}", "", cut(n, a.messages, "sent", a.max_seconds));
        }
        println!("{:<18} {}", "", rx.text());
    };
    println!(
        "datagram: {datagram_len} B (a sealed PUBLISH of a {} B body on {CHANNEL_QOS0:?})",
        a.size
    );
    let detail =
        |t: &Throughput| format!("{} sent, {} received, {:.3} s", t.sent, t.received, t.seconds);
    line("raw UDP", raw.sent, raw.per_second(), "datagrams", detail(raw), &raw.receiver);
    line("NoMQ QoS 0", qos0.sent, qos0.per_second(), "messages", detail(&qos0), &qos0.receiver);
    println!("{:<18} {ratio:>10.2}", "ratio NoMQ/raw");
    let wdetail = format!(
        "window {}, {} sent, {} acknowledged, {} failed, {} unresolved, {} outbox full, {:.3} s",
        a.window, win.sent, win.acked, win.failed, win.unresolved, win.outbox_full, win.seconds
    );
    line("NoMQ QoS 1 window", win.sent, win.per_second(), "acked", wdetail, &win.receiver);
    println!(
        "{:<18} p50 {:.0} µs, p99 {:.0} µs ({} samples, {} failed; spin {} µs, spun {:.1} µs per round trip)",
        "QoS 1 round trip",
        us(p50),
        us(p99),
        qos1.samples.len(),
        qos1.failed,
        a.spin_us,
        us(qos1.spun_per_trip()),
    );
    if qos1.tried() < a.samples {
        println!("{:<18} {}", "", cut(qos1.tried(), a.samples, "timed", a.max_seconds));
    }
    for (who, d) in [("publisher", pub_drops), ("subscriber", sub_drops)] {
        if !d.is_empty() {
            let list: Vec<String> = d.iter().map(|(r, n)| format!("{r} {n}")).collect();
            println!("{:<18} {}", format!("{who} drops"), list.join(", "));
        }
    }
}

fn report_sweep(a: &BenchArgs, runs: &[SizeRun], max: usize) {
    let skipped = |size: usize| format!("{size} B bodies do not fit one packet (at most {max} B)");
    if a.json {
        let rows: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({
                    "body_len": r.size,
                    "datagram_len": datagram_len(r.size),
                    "max_seconds": a.max_seconds.as_secs_f64(),
                    "raw_udp": r.raw.json(a.messages, r.size),
                });
                match &r.nomq {
                    Some((q, w)) => {
                        v["nomq_qos0"] = q.json(a.messages, r.size);
                        v["nomq_qos1_window"] = w.json(a.messages, a.window, r.size);
                    }
                    None => {
                        v["nomq_qos0"] = serde_json::json!({ "skipped": skipped(r.size) });
                        v["nomq_qos1_window"] = serde_json::json!({ "skipped": skipped(r.size) });
                    }
                }
                v
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return;
    }
    println!(
        "{:>6} {:>8} | {:>11} {:>9} | {:>11} {:>9} | {:>11} {:>9} | {:>17} {:>7} {:>6}",
        "body",
        "datagram",
        "raw msg/s",
        "MB/s",
        "QoS0 msg/s",
        "MB/s",
        "QoS1w msg/s",
        "MB/s",
        "recv RSS KiB",
        "rcvbuf",
        "drops"
    );
    let mut notes = Vec::new();
    for r in runs {
        let cell = |rate: f64| format!("{:>11.0} {:>9.2}", rate, mb(rate, r.size));
        let (q0, q1, rx) = match &r.nomq {
            Some((q, w)) => {
                let rx = &w.receiver;
                let rss = format!(
                    "{}->{}",
                    q.receiver.rss_start_kib.unwrap_or(0),
                    rx.rss_end_kib.unwrap_or(0)
                );
                let over = q.receiver.rcvbuf_errors.unwrap_or(0) + rx.rcvbuf_errors.unwrap_or(0);
                let drops = [&q.receiver, rx]
                    .iter()
                    .filter_map(|x| x.node.as_ref().map(|n| n.engine_drops))
                    .sum::<u64>();
                if q.sent < a.messages {
                    notes.push(format!(
                        "{} B QoS 0: {}",
                        r.size,
                        cut(q.sent, a.messages, "sent", a.max_seconds)
                    ));
                }
                if w.sent < a.messages {
                    notes.push(format!(
                        "{} B QoS 1 window: {}",
                        r.size,
                        cut(w.sent, a.messages, "sent", a.max_seconds)
                    ));
                }
                (
                    cell(q.per_second()),
                    cell(w.per_second()),
                    format!("{rss:>17} {over:>7} {drops:>6}"),
                )
            }
            None => {
                notes.push(skipped(r.size));
                let dash = format!("{:>11} {:>9}", "-", "-");
                (dash.clone(), dash, String::new())
            }
        };
        if r.raw.sent < a.messages {
            notes.push(format!(
                "{} B raw UDP: {}",
                r.size,
                cut(r.raw.sent, a.messages, "sent", a.max_seconds)
            ));
        }
        println!(
            "{:>6} {:>8} | {} | {q0} | {q1} | {rx}",
            r.size,
            datagram_len(r.size),
            cell(r.raw.per_second())
        );
    }
    for n in notes {
        println!("note: {n}");
    }
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
fn raw_udp(n: u64, len: usize, limit: Duration) -> Result<Throughput, Failure> {
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
    receipts.reset(len);
    let done = Arc::new(AtomicBool::new(false));
    let mark = ReceiverMark::now(None);
    let receiver = {
        let (receipts, done) = (Arc::clone(&receipts), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let end = Instant::now() + limit + Duration::from_secs(1);
            let mut quiet_since: Option<Instant> = None;
            while receipts.count() < n && Instant::now() < end {
                match rx.recv_from(&mut buf) {
                    Ok((k, _)) => {
                        receipts.record(k, 1);
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
        if sent % 4096 == 0 && Instant::now() >= end {
            break;
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
    Ok(receipts.throughput(sent, mark.report(None)))
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
    spin_us: u64,
) -> Result<NodeBuilder, Failure> {
    let keys = ring.to_core().map_err(|e| Failure::usage(e.to_string()))?;
    let mut engine = nomq::Config::default();
    // The default 1000 packets/s per peer would throttle a throughput run.
    engine.rate_limit = u32::MAX;
    Ok(NodeBuilder::new(keys)
        .engine(engine)
        .bind(bind)
        .peers([peer])
        .spin(Duration::from_micros(spin_us)))
}

/// What the NoMQ phases measured, and what each node dropped (by reason) in all.
struct NomqRun {
    /// QoS 0 and windowed QoS 1, one per payload size that fits.
    per_size: Vec<(Throughput, Windowed)>,
    qos1: Latency,
    publisher_drops: Drops,
    subscriber_drops: Drops,
}

/// Non-zero drop counters of a node, by reason; `app` for a full subscription stream.
type Drops = Vec<(&'static str, u64)>;

fn drops(s: &HostStats) -> Drops {
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
fn nomq_phases(
    a: &BenchArgs,
    sizes: &[usize],
    rtt_samples: u64,
    pb: &ProgressBar,
) -> Result<NomqRun, Failure> {
    if sizes.is_empty() && rtt_samples == 0 {
        return Ok(NomqRun {
            per_size: Vec::new(),
            qos1: Latency::default(),
            publisher_drops: Drops::new(),
            subscriber_drops: Drops::new(),
        });
    }
    let ring = nomq_keys::KeyringFile::generate()
        .map_err(|e| Failure::usage(format!("cannot generate keys: {e}")))?;
    let (pub_addr, sub_addr) = free_ports()?;
    let receipts = Arc::new(Receipts::new());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // A reader of a million messages a second buffers more than the default 4096: on a
    // 2-core machine its thread waits milliseconds for a core while the publisher and
    // the receiving driver both run flat out, and a full stream refuses (and counts) what
    // arrives meanwhile. At most 64 Ki messages wait (a few MB); past that QoS 0 is still
    // refused and counted. What the receiving node cannot take is dropped by the kernel
    // and reported (socket overflows).
    let sub_builder =
        bench_node(&ring, sub_addr, pub_addr, a.spin_us)?.stream_depth(BENCH_STREAM_DEPTH);
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
                let _ = ready_tx.send(Ok(node.clone()));
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
    let result = ready.and_then(|sub_node| {
        let publisher = bench_node(&ring, pub_addr, sub_addr, a.spin_us)?;
        common::runtime()?.block_on(publish_phases(
            a,
            sizes,
            rtt_samples,
            publisher,
            &sub_node,
            &receipts,
            pb,
        ))
    });
    let _ = stop_tx.send(());
    let sub_result =
        subscriber.join().map_err(|_| Failure::network("benchmark subscriber thread failed"))?;
    let (per_size, qos1, publisher_drops) = result?;
    Ok(NomqRun { per_size, qos1, publisher_drops, subscriber_drops: sub_result? })
}

/// Counts the QoS 0 messages of `sub` until told to stop.
async fn consume(
    mut sub: nomq_host::Subscription,
    receipts: &Receipts,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(CONSUME_BATCH);
    loop {
        tokio::select! {
            n = sub.recv_many(&mut batch, CONSUME_BATCH) => {
                if n == 0 {
                    return;
                }
                // Messages of one size come in runs: count each run with one reading.
                let mut run = (0, 0u64);
                for m in batch.drain(..).filter(|m| m.channel == CHANNEL_QOS0) {
                    if m.body.len() != run.0 {
                        receipts.record(run.0, run.1);
                        run = (m.body.len(), 0);
                    }
                    run.1 += 1;
                }
                receipts.record(run.0, run.1);
            }
            _ = &mut stop => return,
        }
    }
}

type PhaseResults = (Vec<(Throughput, Windowed)>, Latency, Drops);

async fn publish_phases(
    a: &BenchArgs,
    sizes: &[usize],
    rtt_samples: u64,
    builder: NodeBuilder,
    sub_node: &Handle,
    receipts: &Receipts,
    pb: &ProgressBar,
) -> Result<PhaseResults, Failure> {
    let node = builder.start().await?;
    // Learn the subscriber (its heartbeat announces `bench/#`) before timing anything.
    if node.wait_for_subscribers(CHANNEL_QOS0, 1, Duration::from_secs(2)).await?.is_none() {
        node.shutdown().await;
        return Err(Failure::network("the benchmark nodes did not hear each other"));
    }
    let result = async {
        let sub_stats = || async { sub_node.stats().await.ok() };
        let mut per_size = Vec::with_capacity(sizes.len());
        for &size in sizes {
            pb.set_message(format!("NoMQ QoS 0, {size} B"));
            receipts.reset(size);
            let mark = ReceiverMark::now(sub_stats().await);
            let sent = qos0(a, size, &node).await?;
            receipts.drain(sent).await;
            let throughput = receipts.throughput(sent, mark.report(sub_stats().await));
            pb.inc(1);
            pb.set_message(format!("NoMQ QoS 1 window, {size} B"));
            let mark = ReceiverMark::now(sub_stats().await);
            let mut windowed = qos1_window(a, size, &node).await?;
            windowed.receiver = mark.report(sub_stats().await);
            pb.inc(1);
            per_size.push((throughput, windowed));
        }
        let mut latency = Latency::default();
        if rtt_samples > 0 {
            pb.set_message("NoMQ QoS 1 round trips");
            let before = node.stats().await?.spun;
            latency = qos1(a, rtt_samples, &node).await?;
            latency.spun = node.stats().await?.spun.saturating_sub(before);
            pb.inc(1);
        }
        let d = drops(&node.stats().await?);
        Ok((per_size, latency, d))
    }
    .await;
    node.shutdown().await;
    result
}

/// Publishes `a.messages` QoS 0 messages of `size` bytes through `a.pipeline` concurrent
/// tasks, `a.batch` per publish_batch call; returns how many were sent.
async fn qos0(a: &BenchArgs, size: usize, node: &Handle) -> Result<u64, Failure> {
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let end = tokio::time::Instant::now() + a.max_seconds;
    let body: Arc<[u8]> = vec![0x5Au8; size].into();
    let batch = a.batch as u64;
    let mut tasks = Vec::with_capacity(a.pipeline);
    for _ in 0..a.pipeline {
        let (node, next, sent, body, n) =
            (node.clone(), Arc::clone(&next), Arc::clone(&sent), Arc::clone(&body), a.messages);
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= n {
                    return Ok(());
                }
                let mut left = batch.min(n - start);
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
    for t in tasks {
        t.await.map_err(|_| Failure::network("a publishing task failed"))??;
    }
    Ok(sent.load(Ordering::Relaxed))
}

/// Per-task tallies of the windowed stream.
#[derive(Default)]
struct WindowTally {
    sent: u64,
    acked: u64,
    failed: u64,
    unresolved: u64,
    outbox_full: u64,
    last_ack: Option<Instant>,
}

impl WindowTally {
    fn settle(
        &mut self,
        outcome: Result<nomq_host::Delivery, tokio::sync::oneshot::error::RecvError>,
    ) {
        match outcome {
            Ok(d) if d.status == Status::Acknowledged => {
                self.acked += 1;
                self.last_ack = Some(Instant::now());
            }
            Ok(_) => self.failed += 1,
            // The node shut down under it.
            Err(_) => self.unresolved += 1,
        }
    }
}

/// A windowed QoS 1 stream of `a.messages` messages of `size` bytes: up to `a.window` in
/// flight, spread over [`WINDOW_TASKS`] tasks; acknowledged outcomes are counted.
async fn qos1_window(a: &BenchArgs, size: usize, node: &Handle) -> Result<Windowed, Failure> {
    let opts = PublishOptions { ttl: Some(WINDOW_TTL), ..PublishOptions::qos(Qos::AtLeastOnce) };
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + a.max_seconds;
    let body: Arc<[u8]> = vec![0x5Au8; size].into();
    let tasks_n = a.window.min(WINDOW_TASKS);
    let mut tasks = Vec::with_capacity(tasks_n);
    for t in 0..tasks_n {
        // Shares of the window: they add up to `a.window`.
        let share = a.window / tasks_n + usize::from(t < a.window % tasks_n);
        let (node, next, body, n) =
            (node.clone(), Arc::clone(&next), Arc::clone(&body), a.messages);
        tasks.push(tokio::spawn(async move {
            let mut tally = WindowTally::default();
            let mut inflight = VecDeque::with_capacity(share);
            'stream: while Instant::now() < end {
                if inflight.len() >= share {
                    if let Some(rx) = inflight.pop_front() {
                        tally.settle(rx.await);
                    }
                    continue;
                }
                if next.fetch_add(1, Ordering::Relaxed) >= n {
                    break;
                }
                loop {
                    match node.start_publish(CHANNEL_QOS1W, body.to_vec(), opts).await {
                        Ok(rx) => {
                            tally.sent += 1;
                            inflight.push_back(rx);
                            break;
                        }
                        Err(HostError::Publish(nomq::node::PublishError::OutboxFull)) => {
                            tally.outbox_full += 1;
                            match inflight.pop_front() {
                                Some(rx) => tally.settle(rx.await),
                                None => tokio::time::sleep(Duration::from_millis(1)).await,
                            }
                            if Instant::now() >= end {
                                break 'stream;
                            }
                        }
                        Err(e) => return Err(Failure::from(e)),
                    }
                }
            }
            // Wait for what is still in flight, bounded.
            let drain_end = tokio::time::Instant::now() + WINDOW_DRAIN;
            while let Some(rx) = inflight.pop_front() {
                match tokio::time::timeout_at(drain_end, rx).await {
                    Ok(o) => tally.settle(o),
                    Err(_) => {
                        tally.unresolved += 1 + inflight.len() as u64;
                        break;
                    }
                }
            }
            Ok::<WindowTally, Failure>(tally)
        }));
    }
    let mut w = Windowed::default();
    let mut last_ack: Option<Instant> = None;
    for t in tasks {
        let tally = t.await.map_err(|_| Failure::network("a publishing task failed"))??;
        w.sent += tally.sent;
        w.acked += tally.acked;
        w.failed += tally.failed;
        w.unresolved += tally.unresolved;
        w.outbox_full += tally.outbox_full;
        last_ack = last_ack.max(tally.last_ack);
    }
    w.seconds = last_ack.map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    Ok(w)
}

/// Times QoS 1 publishes one after the other, from `publish` to the Acknowledged outcome.
async fn qos1(a: &BenchArgs, samples: u64, node: &Handle) -> Result<Latency, Failure> {
    let body = vec![0x5Au8; a.size];
    // A lost round trip gives up within 2 s (the TTL), keeping the phase bounded.
    let opts = PublishOptions { ttl: Some(2), ..PublishOptions::qos(Qos::AtLeastOnce) };
    let end = Instant::now() + a.max_seconds;
    let mut lat = Latency::default();
    for _ in 0..samples {
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
    }
    lat.samples.sort_unstable();
    Ok(lat)
}
