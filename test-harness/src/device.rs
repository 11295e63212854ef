//! The laptop side of the device script (`docs/DEVICE.md`): `nomq-harness device`.
//!
//! [`check_device`] starts a `nomq-host` node and a capture socket, both of them static
//! peers of the node, and checks a device that runs the device script:
//!
//! 1. its retained `dev/<id>/status` is `online`;
//! 2. its `sensor/<id>/reading` messages arrive at QoS 0, 1 and 2, QoS 2 exactly once;
//! 3. `cmd/echo` at QoS 0, 1 and 2 comes back on `reply/<id>` with the same body;
//! 4. a captured `cmd/echo` datagram sent again verbatim is refused by the device (no
//!    second reply, its `replay=` counter goes up);
//! 5. a captured device datagram sent again verbatim is refused by the host node (its
//!    [`DropReason::Replay`] counter goes up). The capture socket only sees the device's
//!    datagrams if the device lists it among its peers; otherwise this row is a SKIP.
//!
//! The capture socket reads the plaintext header of what it receives ([`nomq::Packet`]) to
//! tell PUBLISH datagrams and their QoS apart; it never decrypts anything.
//!
//! Every wait is bounded: no check takes longer than [`DeviceCheck::timeout`].
//!
//! [`run_std_device`] is a device to check without hardware or root: the script
//! ([`DeviceApp`]) over a `nomq::Node` and a blocking `std::net::UdpSocket`, run as a child
//! process (`nomq-harness __device`) by the `loopback` mode.

use crate::report::Report;
use nomq::node::DropReason;
use nomq::node::Target;
use nomq::{Flags, Packet, PacketType, Qos};
use nomq_esp::device::{DeviceApp, DeviceConfig, DeviceCounters};
use nomq_host::{Handle, Message, NodeBuilder, PublishOptions, Status, Subscription};
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Where the host node binds unless told otherwise.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8888));
/// The longest one check may take unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a reply to one QoS 0 `cmd/echo` may take before the attempt counts as lost
/// and is tried again (QoS 0 may be lost). A QoS 1 or 2 command is delivered or its
/// outcome says otherwise, so its reply is waited for until the check's deadline.
const REPLY_WAIT: Duration = Duration::from_secs(3);
/// Attempts of a QoS 0 `cmd/echo` (one and three retries): QoS 0 may be lost.
const QOS0_ATTEMPTS: u32 = 4;
/// How long a replayed command must stay without a second reply.
const NO_SECOND_REPLY: Duration = Duration::from_secs(2);
/// How long the host's replay counter has to move after one replayed datagram (polled;
/// generous, as the machine may be busy).
const HOST_COUNTER_WAIT: Duration = Duration::from_secs(3);
/// Captured device datagrams tried in turn against the host (the host may have lost the
/// original of one, and then rightly accepts its copy).
const HOST_REPLAY_TRIES: usize = 3;
/// Time a check may overrun its own deadline before it is cut off (finishing a publish,
/// collecting a diagnosis).
const BACKSTOP: Duration = Duration::from_secs(5);
/// Datagrams the capture socket keeps (oldest dropped first).
const CAPTURE_KEEP: usize = 4096;

/// What to check and how: the options of `nomq-harness device`.
#[derive(Clone, Debug)]
pub struct DeviceCheck {
    /// The device's NoMQ address.
    pub peer: SocketAddr,
    /// Where the host node binds (default [`DEFAULT_BIND`]).
    pub bind: SocketAddr,
    /// Where the capture socket binds; `None` means the bind IP and the bind port + 1.
    pub capture: Option<SocketAddr>,
    /// A keyring file (JSON); `None` means the harness's fixed test keys
    /// ([`crate::test_keyring`]).
    pub keys: Option<PathBuf>,
    /// The device id to check, or `+` for the first device that shows up.
    pub id: String,
    /// The longest one check may take (default [`DEFAULT_TIMEOUT`]).
    pub timeout: Duration,
    /// The host node's engine settings (default [`host_engine`]).
    pub engine: nomq::Config,
}

impl DeviceCheck {
    /// Checks the device at `peer` with every other option at its default.
    #[must_use]
    pub fn new(peer: SocketAddr) -> Self {
        Self {
            peer,
            bind: DEFAULT_BIND,
            capture: None,
            keys: None,
            id: "+".into(),
            timeout: DEFAULT_TIMEOUT,
            engine: host_engine(),
        }
    }

    /// The capture socket's bind address: [`DeviceCheck::capture`], or the bind port + 1
    /// on the bind IP.
    #[must_use]
    pub fn capture_addr(&self) -> SocketAddr {
        self.capture.unwrap_or_else(|| {
            let port = if self.bind.port() == 0 { 0 } else { self.bind.port().wrapping_add(1) };
            SocketAddr::new(self.bind.ip(), port)
        })
    }
}

/// Engine settings of the checking node: the defaults with a 1 s heartbeat and quicker
/// retransmissions, so a check does not wait on the node's own timers, and the unsynced
/// clock mode: a device without SNTP stamps packets with its uptime, which a synced node
/// refuses as stale (docs/PROTOCOL.md, "Engine behaviour").
#[must_use]
pub fn host_engine() -> nomq::Config {
    let mut c = nomq::Config::default();
    c.clock = nomq::node::ClockMode::Unsynced;
    c.heartbeat_interval = nomq::Duration::from_secs(1);
    c.retransmit_initial = nomq::Duration::from_millis(100);
    c.retransmit_max = nomq::Duration::from_secs(1);
    c
}

/// Whether `id` is a device id of the script (`[a-z0-9-]`, 1 to 16 characters) or `+`.
#[must_use]
pub fn valid_id(id: &str) -> bool {
    id == "+"
        || (!id.is_empty()
            && id.len() <= 16
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
}

/// The five checks of `docs/DEVICE.md`, one report row each (names start with `device`).
/// A node or socket that cannot be set up is one FAIL row, `device setup`.
pub async fn check_device(opts: &DeviceCheck, report: &mut Report) {
    check_device_as(opts, report, &|name| name.to_string(), |_, _| Ok(())).await;
}

/// [`check_device`] with the row names passed through `name` (each row is recorded, and
/// so streamed, as it finishes), and `bound` called with the checking node's and the
/// capture socket's addresses once both are bound, before any check (to tell a device
/// that starts after them where they are). An error from `bound` is the `device setup`
/// row's failure.
pub async fn check_device_as(
    opts: &DeviceCheck,
    report: &mut Report,
    name: &dyn Fn(&str) -> String,
    bound: impl FnOnce(SocketAddr, SocketAddr) -> Result<(), String>,
) {
    let started = Instant::now();
    let setup = async {
        let s = Session::start(opts).await?;
        let capture = reachable(s.capture.local_addr()?);
        match bound(reachable(s.handle.local_addr()), capture) {
            Ok(()) => Ok(s),
            Err(e) => {
                s.handle.shutdown().await;
                Err(e)
            }
        }
    };
    let mut s = match setup.await {
        Ok(s) => s,
        Err(e) => {
            report.record_timed(name("device setup"), started.elapsed(), Err(e));
            return;
        }
    };
    // Each check keeps to `opts.timeout` itself and says what it missed; this bound is
    // only the backstop.
    let bound = opts.timeout + BACKSTOP;
    row(report, &name("device retained status"), bound, s.retained()).await;
    row(report, &name("device readings QoS 0/1/2"), bound, s.readings()).await;
    row(report, &name("device echo QoS 0/1/2"), bound, s.echo()).await;
    row(report, &name("device refuses a replayed command"), bound, s.replay_to_device()).await;
    let t = Instant::now();
    let host = name("host refuses a replayed device datagram");
    match timeout_at(Instant::now() + bound, s.replay_to_host()).await {
        Some(Verdict::Skip(why)) => report.skip(host, why),
        Some(Verdict::Done(r)) => report.record_timed(host, t.elapsed(), r),
        None => {
            report.record_timed(host, t.elapsed(), Err(format!("check timed out after {bound:?}")))
        }
    }
    s.handle.shutdown().await;
}

/// Result of one check: a detail line on success, the reason on failure.
type Outcome = Result<String, String>;

/// A check's end, where a check may also not apply.
enum Verdict {
    Done(Outcome),
    Skip(String),
}

async fn row(report: &mut Report, name: &str, bound: Duration, f: impl Future<Output = Outcome>) {
    let t = Instant::now();
    let r = timeout_at(t + bound, f)
        .await
        .unwrap_or_else(|| Err(format!("check timed out after {bound:?}")));
    report.record_timed(name, t.elapsed(), r);
}

async fn timeout_at<T>(end: Instant, f: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(end), f).await.ok()
}

/// The next message of `sub` before `end`; `None` at the deadline or if the node stopped.
async fn next(sub: &mut Subscription, end: Instant) -> Option<Message> {
    timeout_at(end, sub.recv()).await.flatten()
}

/// A 32-bit value that differs between runs and calls (std's randomly keyed hasher), for
/// fresh message bodies. Not for keys.
fn fresh_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Truncation is the point: any 32 bits of the hash will do.
    h.finish() as u32
}

/// `key=value` fields of a script body such as `seq=4 qos=1 temp=21.5`.
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split_ascii_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn field_u64(body: &str, key: &str) -> Option<u64> {
    field(body, key)?.parse().ok()
}

/// The `<id>` of `channel` if it is `<prefix>/<id>/<suffix>` (or `<prefix>/<id>` for an
/// empty suffix).
fn id_in<'a>(channel: &'a str, prefix: &str, suffix: &str) -> Option<&'a str> {
    let rest = channel.strip_prefix(prefix)?.strip_prefix('/')?;
    let id = if suffix.is_empty() { rest } else { rest.strip_suffix(suffix)?.strip_suffix('/')? };
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// An unspecified bind address as somewhere this host can send to.
fn reachable(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), a.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), a.port())
        }
        _ => a,
    }
}

/// One datagram the capture socket received.
#[derive(Clone, Debug)]
struct Captured {
    /// Arrival order, from 0.
    seq: u64,
    from: SocketAddr,
    /// Packet type and QoS from the clear header, if it is a well-formed NoMQ packet.
    kind: Option<(PacketType, Qos)>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct CaptureLog {
    next: u64,
    kept: VecDeque<Captured>,
}

/// A plain UDP socket the host node (and perhaps the device) sends copies to.
struct Capture {
    socket: Arc<UdpSocket>,
    log: Arc<Mutex<CaptureLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl Capture {
    async fn bind(addr: SocketAddr, max_payload: usize) -> Result<Self, String> {
        let socket = Arc::new(
            UdpSocket::bind(addr).await.map_err(|e| format!("capture socket {addr}: {e}"))?,
        );
        let log = Arc::new(Mutex::new(CaptureLog::default()));
        let task = tokio::spawn({
            let (socket, log) = (socket.clone(), log.clone());
            async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                        // ICMP errors from an unreachable peer surface here; keep going.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let data = buf[..n].to_vec();
                    let kind = Packet::new_checked(&data[..], max_payload).ok().and_then(|p| {
                        let t = PacketType::from_u8(p.type_byte()).ok()?;
                        Some((t, Flags::from_byte(p.flags_byte()).ok()?.qos))
                    });
                    // A poisoned lock only means another reader panicked; the log is intact.
                    let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let seq = log.next;
                    log.next += 1;
                    if log.kept.len() == CAPTURE_KEEP {
                        log.kept.pop_front();
                    }
                    log.kept.push_back(Captured { seq, from, kind, data });
                }
            }
        });
        Ok(Self { socket, log, task })
    }

    fn local_addr(&self) -> Result<SocketAddr, String> {
        self.socket.local_addr().map_err(|e| format!("capture socket: {e}"))
    }

    /// The sequence number the next captured datagram will get.
    fn mark(&self) -> u64 {
        self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next
    }

    /// Captured datagrams matching `f`, newest first.
    fn find(&self, f: impl Fn(&Captured) -> bool) -> Vec<Captured> {
        let log = self.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        log.kept.iter().rev().filter(|c| f(c)).cloned().collect()
    }

    async fn send(&self, data: &[u8], to: SocketAddr) -> Result<(), String> {
        self.socket.send_to(data, to).await.map(drop).map_err(|e| format!("send to {to}: {e}"))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The checking node, its subscriptions and the capture socket.
struct Session {
    handle: Handle,
    capture: Capture,
    device: SocketAddr,
    /// The device id: given, or learned from the first status (or reading) seen.
    id: Option<String>,
    timeout: Duration,
    sensor: Subscription,
    reply: Subscription,
    stats: Subscription,
    /// Highest `replay=` seen on the device's stats channel.
    device_replays: Option<u64>,
}

impl Session {
    async fn start(opts: &DeviceCheck) -> Result<Self, String> {
        if !valid_id(&opts.id) {
            return Err(format!(
                "device id {:?}: expected [a-z0-9-], 1 to 16 characters, or +",
                opts.id
            ));
        }
        let builder = match &opts.keys {
            Some(path) => NodeBuilder::from_keyring_file(path).map_err(|e| e.to_string())?,
            None => NodeBuilder::new(crate::test_keyring()),
        };
        let capture = Capture::bind(opts.capture_addr(), opts.engine.max_payload).await?;
        let capture_peer = reachable(capture.local_addr()?);
        let handle = builder
            .engine(opts.engine)
            .bind(opts.bind)
            .peers([opts.peer, capture_peer])
            .start()
            .await
            .map_err(|e| format!("host node on {}: {e}", opts.bind))?;
        let sub = |p: &'static str| {
            let h = handle.clone();
            async move { h.subscribe(p).await.map_err(|e| format!("subscribe {p}: {e}")) }
        };
        let sensor = sub("sensor/#").await?;
        let reply = sub("reply/#").await?;
        let stats = sub("dev/+/stats").await?;
        Ok(Self {
            handle,
            capture,
            device: opts.peer,
            id: (opts.id != "+").then(|| opts.id.clone()),
            timeout: opts.timeout,
            sensor,
            reply,
            stats,
            device_replays: None,
        })
    }

    /// Whether a channel's id is the device's (learning the id if it is still open).
    fn is_device(&mut self, id: Option<&str>) -> bool {
        match (id, &self.id) {
            (None, _) => false,
            (Some(id), Some(known)) => id == known,
            (Some(id), None) => {
                self.id = Some(id.to_string());
                true
            }
        }
    }

    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or("+")
    }

    /// What the host saw of the device, for failure details.
    async fn diagnosis(&self) -> String {
        let from_device = self.capture.find(|c| c.from == self.device).len();
        let mut d = format!("capture saw {from_device} datagrams from {}", self.device);
        if let Ok(s) = self.handle.stats().await {
            let drops: Vec<String> =
                s.engine.nonzero().map(|(r, n)| format!("{} {n}", r.name())).collect();
            d += &format!("; host received {} datagrams", s.engine.rx_datagrams);
            if !drops.is_empty() {
                d += &format!(", dropped {}", drops.join(", "));
            }
        }
        d
    }

    /// Check 1: a subscription made now gets the retained `online`.
    async fn retained(&mut self) -> Outcome {
        let t = Instant::now();
        let mut sub =
            self.handle.subscribe("dev/+/status").await.map_err(|e| format!("subscribe: {e}"))?;
        let end = t + self.timeout;
        loop {
            let Some(m) = next(&mut sub, end).await else {
                return Err(format!(
                    "no dev/{}/status within {:?} ({})",
                    self.id(),
                    self.timeout,
                    self.diagnosis().await
                ));
            };
            if !self.is_device(id_in(&m.channel, "dev", "status")) {
                continue;
            }
            if m.body != b"online"[..] || !m.retained {
                return Err(format!(
                    "{}: {:?}, retained {} (want \"online\", retained)",
                    m.channel,
                    text(&m.body),
                    m.retained
                ));
            }
            return Ok(format!(
                "{}: \"online\", retained, QoS {}, after {}",
                m.channel,
                m.qos.level(),
                ms(t.elapsed())
            ));
        }
    }

    /// Check 2: readings at every QoS, QoS 2 ones exactly once.
    async fn readings(&mut self) -> Outcome {
        let t = Instant::now();
        let end = t + self.timeout;
        let mut count = [0u32; 3];
        let mut q2 = BTreeSet::new();
        let (mut low, mut high) = (u64::MAX, 0);
        // After every level showed up, linger briefly so a late QoS 2 duplicate shows too
        // (a negative check: the window is the test).
        let mut linger: Option<Instant> = None;
        loop {
            let until = linger.map_or(end, |l| l.min(end));
            let Some(m) = next(&mut self.sensor, until).await else { break };
            if !self.is_device(id_in(&m.channel, "sensor", "reading")) {
                continue;
            }
            let body = text(&m.body);
            let (Some(seq), Some(q)) = (field_u64(&body, "seq"), field_u64(&body, "qos")) else {
                return Err(format!("{}: malformed reading {body:?}", m.channel));
            };
            if q != u64::from(m.qos.level()) || seq % 3 != q {
                return Err(format!(
                    "{}: {body:?} arrived at QoS {} (want qos = seq % 3 = the QoS it arrives at)",
                    m.channel,
                    m.qos.level()
                ));
            }
            if m.qos == Qos::ExactlyOnce && !q2.insert(seq) {
                return Err(format!("QoS 2 reading seq={seq} delivered twice"));
            }
            count[usize::from(m.qos.level())] += 1;
            (low, high) = (low.min(seq), high.max(seq));
            if linger.is_none() && count.iter().all(|&n| n > 0) {
                linger = Some(Instant::now() + Duration::from_millis(1200));
            }
        }
        let [c0, c1, c2] = count;
        let counts = format!("QoS 0: {c0}, QoS 1: {c1}, QoS 2: {c2}");
        if count.contains(&0) {
            return Err(format!(
                "readings within {:?}: {counts}, not every QoS ({})",
                self.timeout,
                self.diagnosis().await
            ));
        }
        Ok(format!(
            "sensor/{}/reading seq {low}..={high}: {counts}; QoS 2 each exactly once",
            self.id()
        ))
    }

    /// Publishes `body` on `cmd/echo` at `qos` and waits for its reply. `Ok(None)`: the
    /// outcome was right but no reply came within [`REPLY_WAIT`]. `Ok(Some(latency))`.
    async fn echo_once(
        &mut self,
        qos: Qos,
        body: &str,
        end: Instant,
    ) -> Result<Option<Duration>, String> {
        let t = Instant::now();
        let want = if qos == Qos::AtMostOnce { Status::Sent } else { Status::Acknowledged };
        let mut early = 0u32;
        loop {
            if qos != Qos::AtMostOnce {
                // The host may not have heard the device's `cmd/#` announcement yet: wait
                // until it lists a subscriber to `cmd/echo` (bounded by the check).
                let left = end.saturating_duration_since(Instant::now());
                let subs = self
                    .handle
                    .wait_for_subscribers("cmd/echo", 1, left)
                    .await
                    .map_err(|e| format!("subscribers: {e}"))?;
                if subs.is_none() {
                    return Err(format!(
                        "the host never saw the device's subscription to cmd/# (no subscriber to cmd/echo) within {:?} ({})",
                        self.timeout,
                        self.diagnosis().await
                    ));
                }
            }
            let d =
                timeout_at(end, self.handle.publish("cmd/echo", body, PublishOptions::qos(qos)))
                    .await
                    .ok_or_else(|| {
                        format!("no outcome of cmd/echo at QoS {} in time", qos.level())
                    })?
                    .map_err(|e| format!("publish: {e}"))?;
            // The subscription seen may have lapsed since (the device restarted, say):
            // wait for it again.
            if d.status == Status::NoSubscribers && qos != Qos::AtMostOnce && Instant::now() < end {
                early += 1;
                continue;
            }
            if d.status != want {
                return Err(format!(
                    "cmd/echo at QoS {}: outcome {:?} (want {want:?}){}",
                    qos.level(),
                    d.status,
                    if early > 0 {
                        format!(" after {early} without subscribers")
                    } else {
                        String::new()
                    }
                ));
            }
            break;
        }
        let wait_end =
            if qos == Qos::AtMostOnce { (Instant::now() + REPLY_WAIT).min(end) } else { end };
        while let Some(m) = next(&mut self.reply, wait_end).await {
            if m.body != body.as_bytes() || !self.is_device(id_in(&m.channel, "reply", "")) {
                continue;
            }
            if m.qos != qos {
                return Err(format!(
                    "{}: reply to a QoS {} command arrived at QoS {}",
                    m.channel,
                    qos.level(),
                    m.qos.level()
                ));
            }
            return Ok(Some(t.elapsed()));
        }
        Ok(None)
    }

    /// Check 3: `cmd/echo` at each QoS comes back on `reply/<id>`.
    async fn echo(&mut self) -> Outcome {
        let end = Instant::now() + self.timeout;
        let mut parts = Vec::new();
        for qos in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce] {
            let attempts = if qos == Qos::AtMostOnce { QOS0_ATTEMPTS } else { 1 };
            let mut latency = None;
            let mut tried = 0;
            for attempt in 1..=attempts {
                if Instant::now() >= end {
                    break;
                }
                tried = attempt;
                let body = format!("echo-{}-{}", qos.level(), fresh_u32());
                if let Some(l) = self.echo_once(qos, &body, end).await? {
                    latency = Some((l, attempt));
                    break;
                }
            }
            let Some((l, attempt)) = latency else {
                return Err(format!(
                    "no reply/{} to cmd/echo at QoS {} ({tried} attempt(s), waiting up to {:?}; {})",
                    self.id(),
                    qos.level(),
                    if qos == Qos::AtMostOnce { REPLY_WAIT } else { self.timeout },
                    self.diagnosis().await
                ));
            };
            let retried = if attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
            parts.push(format!("QoS {} {}{retried}", qos.level(), ms(l)));
        }
        Ok(format!("replies with the same body and QoS, round trips: {}", parts.join(", ")))
    }

    /// Waits (until `end`) for the device's next stats message with a `replay=` field and
    /// returns its value; keeps the highest seen in `device_replays`. With `end` already
    /// past it still takes a message that has arrived.
    async fn next_stats(&mut self, end: Instant) -> Option<u64> {
        while let Some(m) = next(&mut self.stats, end).await {
            if !self.is_device(id_in(&m.channel, "dev", "stats")) {
                continue;
            }
            if let Some(n) = field_u64(&text(&m.body), "replay") {
                self.device_replays = Some(self.device_replays.map_or(n, |o| o.max(n)));
                return Some(n);
            }
        }
        None
    }

    /// Check 4: the device refuses a verbatim copy of a command it already answered.
    async fn replay_to_device(&mut self) -> Outcome {
        let t = Instant::now();
        let end = t + self.timeout;
        // Baseline: the highest count the stats showed so far (those that have arrived,
        // or else the next one).
        while self.next_stats(Instant::now()).await.is_some() {}
        if self.device_replays.is_none() {
            self.next_stats(end).await;
        }
        let before = self.device_replays.ok_or_else(|| {
            format!("no dev/{}/stats with replay= within {:?}", self.id(), self.timeout)
        })?;
        let mut sent = None;
        for _ in 0..QOS0_ATTEMPTS {
            let body = format!("replay-{}", fresh_u32());
            let mark = self.capture.mark();
            if self.echo_once(Qos::AtMostOnce, &body, end).await?.is_some() {
                sent = Some((body, mark));
                break;
            }
        }
        let (body, mark) = sent.ok_or_else(|| {
            format!("no reply/{} to a QoS 0 cmd/echo in {QOS0_ATTEMPTS} attempts", self.id())
        })?;
        // The host's copy to the capture socket left with the one to the device; wait
        // (polling, bounded by the check) until the capture task has filed it.
        let host = self.handle.local_addr().port();
        let device = self.device;
        let mut copy = None;
        while copy.is_none() && Instant::now() < end {
            copy = self
                .capture
                .find(|c| {
                    c.seq >= mark
                        && c.from != device
                        && c.from.port() == host
                        && c.kind == Some((PacketType::Publish, Qos::AtMostOnce))
                })
                .into_iter()
                .next();
            if copy.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let copy = copy.ok_or_else(|| {
            format!(
                "the capture socket got no copy of the host's QoS 0 PUBLISH within {:?}",
                self.timeout
            )
        })?;
        self.capture.send(&copy.data, device).await?;
        let replayed = Instant::now();
        // Watch both at once: replies must stay quiet for the whole window (a negative
        // check: the window is the test); the counter shows up with the device's next
        // stats message (waited for until the check's deadline).
        let quiet_end = (replayed + NO_SECOND_REPLY).min(end);
        let mut counted = None;
        let mut stats_open = true;
        loop {
            let quiet = Instant::now() < quiet_end;
            if !quiet && (counted.is_some() || !stats_open) {
                break;
            }
            let watch_stats = stats_open && counted.is_none();
            tokio::select! {
                m = next(&mut self.reply, quiet_end), if quiet => {
                    if let Some(m) = m.filter(|m| m.body == body.as_bytes()) {
                        return Err(format!(
                            "the device answered the replayed datagram: second {} {body:?}",
                            m.channel
                        ));
                    }
                }
                m = next(&mut self.stats, end), if watch_stats => {
                    let Some(m) = m else {
                        stats_open = false;
                        continue;
                    };
                    if !self.is_device(id_in(&m.channel, "dev", "stats")) {
                        continue;
                    }
                    let Some(n) = field_u64(&text(&m.body), "replay") else { continue };
                    self.device_replays = Some(self.device_replays.map_or(n, |o| o.max(n)));
                    if n > before {
                        counted = Some((n, replayed.elapsed()));
                    }
                }
            }
        }
        match counted {
            Some((n, after)) => Ok(format!(
                "{}-byte QoS 0 PUBLISH sent again: no second reply in {NO_SECOND_REPLY:?}; device replay counter {before} -> {n} in the stats {} later",
                copy.data.len(),
                ms(after)
            )),
            None => Err(format!(
                "no second reply, but dev/{}/stats still says replay={} (was {before}) {:.1?} after the replay",
                self.id(),
                self.device_replays.unwrap_or(before),
                replayed.elapsed()
            )),
        }
    }

    /// Check 5: the host node refuses a verbatim copy of a device datagram.
    async fn replay_to_host(&mut self) -> Verdict {
        let device = self.device;
        let candidates = self
            .capture
            .find(|c| c.from == device && matches!(c.kind, Some((PacketType::Publish, _))));
        if candidates.is_empty() {
            let other = self.capture.find(|c| c.from == device).len();
            return Verdict::Skip(if other == 0 {
                "device does not list the capture address among its peers".into()
            } else {
                format!("captured {other} device datagrams but no PUBLISH")
            });
        }
        let to = reachable(self.handle.local_addr());
        let replays = |h: Handle| async move {
            h.stats().await.map(|s| s.engine.drops(DropReason::Replay)).map_err(|e| e.to_string())
        };
        let before = match replays(self.handle.clone()).await {
            Ok(n) => n,
            Err(e) => return Verdict::Done(Err(e)),
        };
        for (k, c) in candidates.iter().take(HOST_REPLAY_TRIES).enumerate() {
            if let Err(e) = self.capture.send(&c.data, to).await {
                return Verdict::Done(Err(e));
            }
            let sent = Instant::now();
            while sent.elapsed() < HOST_COUNTER_WAIT {
                match replays(self.handle.clone()).await {
                    Ok(n) if n > before => {
                        let qos = c.kind.map_or(0, |(_, q)| q.level());
                        return Verdict::Done(Ok(format!(
                            "device QoS {qos} PUBLISH ({} bytes) sent again to {to}: host replay drops {before} -> {n} after {}{}",
                            c.data.len(),
                            ms(sent.elapsed()),
                            if k > 0 {
                                format!(" (datagram {} tried)", k + 1)
                            } else {
                                String::new()
                            }
                        )));
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(e) => return Verdict::Done(Err(e)),
                }
            }
        }
        Verdict::Done(Err(format!(
            "{} captured device PUBLISH datagram(s) sent again to {to}: host replay drops stayed at {before}",
            candidates.len().min(HOST_REPLAY_TRIES)
        )))
    }
}

/// The loopback device: where it listens, whom it sends to, for how long.
#[derive(Clone, Debug)]
pub struct StdDevice {
    /// Local address of the device's socket.
    pub bind: SocketAddr,
    /// Static peers: the fan-out of every publish (the checking node, the capture socket).
    pub peers: Vec<SocketAddr>,
    /// Device id (`[a-z0-9-]`, up to 16 characters).
    pub id: String,
    /// Run this long, then return.
    pub duration: Duration,
}

/// Runs the device script ([`DeviceApp`]) over a blocking UDP socket until
/// `opts.duration` has passed, and returns the script's counters. `ready` is called with
/// the bound address once the script has started (the retained status is queued).
///
/// The loop is the one `nomq-esp`'s adapters run: send what the node has to send, block
/// on the socket until the earlier of the node's and the script's deadlines, hand a
/// datagram to the node and its message to the script, fire the node's timer when due,
/// and poll the script after anything happened.
///
/// # Errors
/// An invalid id, a socket that cannot be bound or read, a refused `cmd/#` subscription.
pub fn run_std_device(
    opts: &StdDevice,
    ready: impl FnOnce(SocketAddr),
) -> Result<DeviceCounters, String> {
    run_std_device_late_peers(opts, |_| Ok(opts.peers.clone()), ready)
}

/// [`run_std_device`] for a device whose peers bind after it: it binds `opts.bind` (port
/// 0, say), calls `peers` with its address and takes the peers it returns instead of
/// `opts.peers`, then starts the script and calls `ready`.
///
/// # Errors
/// As [`run_std_device`]; an error from `peers`.
pub fn run_std_device_late_peers(
    opts: &StdDevice,
    peers: impl FnOnce(SocketAddr) -> Result<Vec<SocketAddr>, String>,
    ready: impl FnOnce(SocketAddr),
) -> Result<DeviceCounters, String> {
    let socket =
        std::net::UdpSocket::bind(opts.bind).map_err(|e| format!("bind {}: {e}", opts.bind))?;
    let local = socket.local_addr().map_err(|e| format!("local address: {e}"))?;
    let peers = peers(local)?;
    let base = Instant::now();
    let clock = || {
        nomq::Instant::from_micros(u64::try_from(base.elapsed().as_micros()).unwrap_or(u64::MAX))
    };
    let mut node = Box::new(crate::tap::device_node(clock())?);
    let mut app = DeviceApp::new(&opts.id, DeviceConfig::default()).map_err(|e| e.to_string())?;
    app.poll(clock(), &mut *node).map_err(|e| e.to_string())?;
    ready(local);
    let end = base + opts.duration;
    let mut rbuf = vec![0u8; 2048];
    let mut tbuf = vec![0u8; node.max_datagram_len()];
    loop {
        while let Some(t) = node.poll_transmit(clock(), &mut tbuf) {
            let data = &tbuf[..t.len];
            let to: &[SocketAddr] = match t.target {
                Target::Fanout => &peers,
                Target::Unicast(a) => &[SocketAddr::from(a)],
                // The script publishes to the fan-out only, and the loopback device joins
                // no group: nothing is ever multicast from here.
                _ => &[],
            };
            for &a in to {
                // A peer that is not (yet) listening answers with ICMP; the node retransmits.
                let _ = socket.send_to(data, a);
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(*app.counters());
        }
        let now = clock();
        let due = node.poll_timeout().map_or(app.poll_at(), |t| t.min(app.poll_at()));
        let wait = Duration::from_micros(due.saturating_duration_since(now).total_micros());
        // At least 1 ms: a script with work it cannot do yet (outbox full) must not spin.
        let wait = wait.clamp(Duration::from_millis(1), left.max(Duration::from_millis(1)));
        socket.set_read_timeout(Some(wait)).map_err(|e| format!("read timeout: {e}"))?;
        match socket.recv_from(&mut rbuf) {
            Ok((n, from)) => {
                let now = clock();
                for packet in nomq::node::Packets::new(&mut rbuf[..n]) {
                    if let Some(m) = node.handle_packet(now, from.into(), packet) {
                        app.on_message(now, &mut *node, &m);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
        let now = clock();
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        app.poll(now, &mut *node).map_err(|e| e.to_string())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_script_bodies() {
        let b = "seq=14 qos=2 temp=21.5";
        assert_eq!(field_u64(b, "seq"), Some(14));
        assert_eq!(field_u64(b, "qos"), Some(2));
        assert_eq!(field(b, "temp"), Some("21.5"));
        assert_eq!(field(b, "te"), None);
        let s = "rx=10 delivered=4 replay=1 drops=2 sent=3 acked=2 unacked=0";
        assert_eq!(field_u64(s, "replay"), Some(1));
        assert_eq!(field_u64(s, "rx"), Some(10));
        assert_eq!(field_u64("replay=x", "replay"), None);
    }

    #[test]
    fn ids_in_channels() {
        assert_eq!(id_in("dev/esp-1/status", "dev", "status"), Some("esp-1"));
        assert_eq!(id_in("dev/esp-1/stats", "dev", "status"), None);
        assert_eq!(id_in("dev//status", "dev", "status"), None);
        assert_eq!(id_in("sensor/a/reading", "sensor", "reading"), Some("a"));
        assert_eq!(id_in("reply/a", "reply", ""), Some("a"));
        assert_eq!(id_in("reply/a/b", "reply", ""), None);
        assert!(valid_id("esp32-c3-01"));
        assert!(valid_id("+"));
        assert!(!valid_id("Esp"));
        assert!(!valid_id("a-very-long-device-id"));
        assert!(!valid_id(""));
    }

    #[test]
    fn test_keyring_holds_the_test_key_pair() {
        use nomq::KeyLookup;
        let ring = crate::test_keyring();
        let pair = crate::test_key_pair();
        assert_eq!(ring.network().current.fingerprint(), nomq::KeySet::new(&pair).fingerprint());
        let other = crate::scenarios::keyring(2);
        assert_ne!(other.network().current.fingerprint(), ring.network().current.fingerprint());
    }

    #[test]
    fn capture_defaults_to_the_next_port() {
        let mut o = DeviceCheck::new("192.168.69.2:8888".parse().unwrap());
        assert_eq!(o.capture_addr(), "0.0.0.0:8889".parse().unwrap());
        o.bind = "192.168.69.1:9000".parse().unwrap();
        assert_eq!(o.capture_addr(), "192.168.69.1:9001".parse().unwrap());
        o.capture = Some("127.0.0.1:5".parse().unwrap());
        assert_eq!(o.capture_addr(), "127.0.0.1:5".parse().unwrap());
        assert_eq!(reachable("0.0.0.0:7".parse().unwrap()), "127.0.0.1:7".parse().unwrap());
    }
}
