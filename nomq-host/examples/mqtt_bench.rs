//! An MQTT baseline for `scripts/compare.sh`: against a broker on 127.0.0.1 (mosquitto),
//! QoS 0 throughput, a windowed QoS 1 stream and QoS 1 ping-pong round trips, measured as
//! `nomq bench` measures NoMQ. Prints one JSON object. Every phase is bounded in count
//! and time; a phase cut short says so (`"cut": true`).
//!
//! ```text
//! cargo run --release -p nomq-host --example mqtt_bench -- --port 1883 --messages 100000
//! ```
//!
//! - QoS 0: one client publishes, another (subscribed at QoS 0) counts; the rate is over
//!   the span from the first to the last receipt.
//! - QoS 1 window: `--window` publishes in flight (rumqttc's `inflight`); the rate counts
//!   the broker's PUBACKs (MQTT has no end-to-end acknowledgement), from the first
//!   publish to the last PUBACK; the subscriber's receipts are reported beside it.
//! - QoS 1 round trip: client A publishes a ping at QoS 1, client B (subscribed) echoes
//!   it at QoS 1, A times until the echo arrives: publisher → broker → echo → broker →
//!   publisher, like `ddsperf ping`/`pong`.

use clap::Parser;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

#[derive(Parser, Debug)]
#[command(about = "MQTT baseline (QoS 0, QoS 1 window, QoS 1 round trip) against a broker")]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Messages of the QoS 0 run and of the QoS 1 window run.
    #[arg(long, default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    messages: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    size: u32,
    /// QoS 1 publishes in flight.
    #[arg(long, default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..))]
    window: u16,
    /// QoS 1 round trips to time.
    #[arg(long, default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    samples: u64,
    /// Longest each phase may send, seconds (0.1..=600).
    #[arg(long, default_value_t = 5.0)]
    max_seconds: f64,
}

/// A receiver that heard nothing this long after its sender finished is done.
const QUIET: Duration = Duration::from_millis(300);
/// Longest a phase waits for acknowledgements and receipts after its sender stopped.
const DRAIN: Duration = Duration::from_secs(3);
/// Longest a connection or subscription may take.
const SETUP: Duration = Duration::from_secs(5);

/// Counters shared between a phase and its event-loop tasks (ns since `base`).
struct Tally {
    base: Instant,
    count: AtomicU64,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    ready: AtomicBool,
}

impl Tally {
    fn new(base: Instant) -> Arc<Self> {
        Arc::new(Self {
            base,
            count: AtomicU64::new(0),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        })
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
    /// Seconds from the first to the last record.
    fn span(&self) -> f64 {
        let (a, b) = (self.first_ns.load(Ordering::Relaxed), self.last_ns.load(Ordering::Relaxed));
        if b > a { (b - a) as f64 / 1e9 } else { 0.0 }
    }
    /// Seconds from `base` to the last record.
    fn since_base(&self) -> f64 {
        self.last_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
    /// Waits until `want` were recorded, or nothing came for [`QUIET`], or [`DRAIN`] passed.
    async fn drain(&self, want: u64) {
        let end = Instant::now() + DRAIN;
        let (mut last, mut quiet) = (self.count(), Instant::now());
        while self.count() < want && Instant::now() < end && quiet.elapsed() < QUIET {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if self.count() != last {
                last = self.count();
                quiet = Instant::now();
            }
        }
    }
}

/// An event-loop task: polls until told to stop or the hard deadline; `on` sees each event.
struct Loop {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Loop {
    fn spawn(
        mut el: EventLoop,
        hard_end: Instant,
        mut on: impl FnMut(Event) + Send + 'static,
    ) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let end = tokio::time::Instant::from_std(hard_end);
            loop {
                tokio::select! {
                    r = el.poll() => match r {
                        Ok(ev) => on(ev),
                        Err(e) => return Err(format!("MQTT connection: {e}")),
                    },
                    _ = &mut stopped => return Ok(()),
                    _ = tokio::time::sleep_until(end) => return Ok(()),
                }
            }
        });
        Self { stop: Some(stop), task }
    }
    async fn stop(mut self) -> Result<(), String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.map_err(|e| format!("event loop task: {e}"))?
    }
}

fn options(a: &Args, id: &str) -> MqttOptions {
    let mut o =
        MqttOptions::new(format!("nomq-bench-{id}-{}", std::process::id()), &a.host, a.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o.set_inflight(a.window);
    let max = a.size as usize + 1024;
    o.set_max_packet_size(max, max);
    o
}

/// A client with Nagle off (as mosquitto is, with `set_tcp_nodelay true`): round trips
/// are not held back by delayed ACKs.
fn mqtt_client(a: &Args, id: &str, cap: usize) -> (AsyncClient, EventLoop) {
    let (client, mut el) = AsyncClient::new(options(a, id), cap);
    let mut net = el.network_options();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    (client, el)
}

/// Waits until `flag` is set (a CONNACK or SUBACK seen), at most [`SETUP`].
async fn wait_for(flag: &Tally, what: &str) -> Result<(), String> {
    let end = Instant::now() + SETUP;
    while !flag.ready.load(Ordering::Relaxed) {
        if Instant::now() >= end {
            return Err(format!("no {what} within {SETUP:?}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// A subscriber that counts publishes on `topic`; returns when its SUBACK came.
async fn subscriber(
    a: &Args,
    id: &str,
    topic: &str,
    qos: QoS,
    tally: &Arc<Tally>,
    hard_end: Instant,
) -> Result<(AsyncClient, Loop), String> {
    let (client, el) = mqtt_client(a, id, 1024);
    let t = Arc::clone(tally);
    let lp = Loop::spawn(el, hard_end, move |ev| match ev {
        Event::Incoming(Packet::SubAck(_)) => t.ready.store(true, Ordering::Relaxed),
        Event::Incoming(Packet::Publish(_)) => t.record(),
        _ => {}
    });
    client.subscribe(topic, qos).await.map_err(|e| format!("subscribe: {e}"))?;
    wait_for(tally, "SUBACK").await?;
    Ok((client, lp))
}

/// Publishes `n` messages at `qos` until `end`; returns how many were handed to the client.
async fn publish_n(
    client: &AsyncClient,
    topic: &str,
    qos: QoS,
    body: &[u8],
    n: u64,
    end: Instant,
) -> u64 {
    let mut sent = 0;
    while sent < n && Instant::now() < end {
        match tokio::time::timeout_at(end.into(), client.publish(topic, qos, false, body.to_vec()))
            .await
        {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    sent
}

async fn qos0(a: &Args, limit: Duration, body: &[u8]) -> Result<serde_json::Value, String> {
    let topic = "nomqbench/q0";
    let base = Instant::now();
    let hard_end = base + limit + DRAIN + SETUP * 2;
    let got = Tally::new(base);
    let (_sub, sub_loop) = subscriber(a, "q0sub", topic, QoS::AtMostOnce, &got, hard_end).await?;
    let out = Tally::new(base);
    let (client, el) = mqtt_client(a, "q0pub", 1024);
    let o = Arc::clone(&out);
    let pub_loop = Loop::spawn(el, hard_end, move |ev| match ev {
        Event::Incoming(Packet::ConnAck(_)) => o.ready.store(true, Ordering::Relaxed),
        Event::Outgoing(Outgoing::Publish(_)) => o.record(),
        _ => {}
    });
    wait_for(&out, "CONNACK").await?;
    let sent =
        publish_n(&client, topic, QoS::AtMostOnce, body, a.messages, Instant::now() + limit).await;
    out.drain(sent).await;
    got.drain(sent).await;
    pub_loop.stop().await?;
    sub_loop.stop().await?;
    let per_second = if got.span() > 0.0 { got.count() as f64 / got.span() } else { 0.0 };
    Ok(serde_json::json!({
        "sent": sent,
        "cut": sent < a.messages,
        "received": got.count(),
        "seconds": got.span(),
        "per_second": per_second.round(),
    }))
}

async fn qos1_window(a: &Args, limit: Duration, body: &[u8]) -> Result<serde_json::Value, String> {
    let topic = "nomqbench/q1";
    let base = Instant::now();
    let hard_end = base + limit + DRAIN + SETUP * 2;
    let got = Tally::new(base);
    let (_sub, sub_loop) = subscriber(a, "q1sub", topic, QoS::AtLeastOnce, &got, hard_end).await?;
    let acks = Tally::new(base);
    let (client, el) = mqtt_client(a, "q1pub", 1024);
    let k = Arc::clone(&acks);
    let pub_loop = Loop::spawn(el, hard_end, move |ev| match ev {
        Event::Incoming(Packet::ConnAck(_)) => k.ready.store(true, Ordering::Relaxed),
        Event::Incoming(Packet::PubAck(_)) => k.record(),
        _ => {}
    });
    wait_for(&acks, "CONNACK").await?;
    let start = Instant::now();
    let sent = publish_n(&client, topic, QoS::AtLeastOnce, body, a.messages, start + limit).await;
    acks.drain(sent).await;
    got.drain(sent).await;
    pub_loop.stop().await?;
    sub_loop.stop().await?;
    let seconds = acks.since_base() - start.duration_since(base).as_secs_f64();
    let per_second = if seconds > 0.0 { acks.count() as f64 / seconds } else { 0.0 };
    Ok(serde_json::json!({
        "window": a.window,
        "sent": sent,
        "cut": sent < a.messages,
        "acked": acks.count(),
        "received": got.count(),
        "seconds": seconds,
        "per_second": per_second.round(),
    }))
}

async fn qos1_rtt(a: &Args, limit: Duration, body: &[u8]) -> Result<serde_json::Value, String> {
    let (ping, pong) = ("nomqbench/ping", "nomqbench/pong");
    let base = Instant::now();
    let hard_end = base + limit + DRAIN + SETUP * 3;
    // The echo: every ping comes back on `pong`.
    let (echo, el) = mqtt_client(a, "echo", 64);
    let echo_ready = Tally::new(base);
    let (r, e) = (Arc::clone(&echo_ready), echo.clone());
    let echo_loop = Loop::spawn(el, hard_end, move |ev| match ev {
        Event::Incoming(Packet::SubAck(_)) => r.ready.store(true, Ordering::Relaxed),
        Event::Incoming(Packet::Publish(p)) => {
            let _ = e.try_publish(pong, QoS::AtLeastOnce, false, p.payload.to_vec());
        }
        _ => {}
    });
    echo.subscribe(ping, QoS::AtLeastOnce).await.map_err(|e| format!("subscribe: {e}"))?;
    wait_for(&echo_ready, "SUBACK").await?;
    let (client, el) = mqtt_client(a, "ping", 64);
    let ready = Tally::new(base);
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let r = Arc::clone(&ready);
    let ping_loop = Loop::spawn(el, hard_end, move |ev| match ev {
        Event::Incoming(Packet::SubAck(_)) => r.ready.store(true, Ordering::Relaxed),
        Event::Incoming(Packet::Publish(_)) => {
            let _ = tx.send(Instant::now());
        }
        _ => {}
    });
    client.subscribe(pong, QoS::AtLeastOnce).await.map_err(|e| format!("subscribe: {e}"))?;
    wait_for(&ready, "SUBACK").await?;
    let end = Instant::now() + limit;
    let (mut samples, mut failed) = (Vec::new(), 0u64);
    while (samples.len() as u64 + failed) < a.samples && Instant::now() < end {
        let t = Instant::now();
        if client.publish(ping, QoS::AtLeastOnce, false, body.to_vec()).await.is_err() {
            failed += 1;
            break;
        }
        match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(at)) => samples.push(at.duration_since(t)),
            Ok(None) => break,
            Err(_) => failed += 1,
        }
    }
    ping_loop.stop().await?;
    echo_loop.stop().await?;
    samples.sort_unstable();
    let pct = |p: f64| {
        if samples.is_empty() {
            0.0
        } else {
            let i = ((samples.len() - 1) as f64 * p).round() as usize;
            (samples[i.min(samples.len() - 1)].as_secs_f64() * 1e6).round()
        }
    };
    Ok(serde_json::json!({
        "samples": samples.len(),
        "failed": failed,
        "cut": (samples.len() as u64 + failed) < a.samples,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
    }))
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    if !(0.1..=600.0).contains(&a.max_seconds) {
        eprintln!("--max-seconds {} is outside 0.1..=600", a.max_seconds);
        return std::process::ExitCode::from(2);
    }
    let limit = Duration::from_secs_f64(a.max_seconds);
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("cannot start the async runtime: {e}");
                return std::process::ExitCode::from(3);
            }
        };
    let body = vec![0x5Au8; a.size as usize];
    let r = rt.block_on(async {
        let q0 = qos0(&a, limit, &body).await?;
        let q1 = qos1_window(&a, limit, &body).await?;
        let rtt = qos1_rtt(&a, limit, &body).await?;
        Ok::<_, String>(serde_json::json!({
            "system": "mqtt",
            "broker": format!("{}:{}", a.host, a.port),
            "body_len": a.size,
            "max_seconds": a.max_seconds,
            "qos0": q0,
            "qos1_window": q1,
            "qos1_rtt": rtt,
        }))
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match r {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mqtt_bench: {e}");
            std::process::ExitCode::from(3)
        }
    }
}
