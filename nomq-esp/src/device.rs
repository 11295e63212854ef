//! The device side of the test harness (`docs/DEVICE.md`), sans-IO.
//!
//! [`DeviceApp`] publishes a retained status, periodic readings at QoS 0/1/2 and its
//! counters, and answers `cmd/echo` with `reply/<id>`. It drives any [`Engine`] and needs
//! no network stack of its own, so the ESP32-C3 firmware, the TAP test nodes and the
//! loopback test device all run this one script.
//!
//! Driving it: after starting the node, and again whenever [`DeviceApp::poll_at`] has
//! passed or anything happened, call [`DeviceApp::poll`]; hand each message the node
//! delivers to [`DeviceApp::on_message`]. `poll` drains the node's events (it counts
//! publish outcomes), so an application using `DeviceApp` does not read them itself.

use core::fmt::Write as _;

use heapless::{String, Vec};
use nomq::node::{Status, SubscribeError};
use nomq::{Duration, Instant, Message, PublishOptions, Qos};

use crate::Engine;

/// Longest device id.
pub const MAX_ID_LEN: usize = 16;
/// Longest `cmd/echo` body answered; longer commands are counted and ignored.
pub const MAX_ECHO_LEN: usize = 64;

/// Channel the device listens on (`cmd/#`) and the echo command.
pub const COMMANDS: &str = "cmd/#";
/// The echo command's channel.
pub const ECHO: &str = "cmd/echo";

/// Periods of the script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// Between two readings (default 1 s).
    pub reading_period: Duration,
    /// Between two counter reports (default 2 s).
    pub stats_period: Duration,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self { reading_period: Duration::from_secs(1), stats_period: Duration::from_secs(2) }
    }
}

/// Why a [`DeviceApp`] could not be made or started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DeviceError {
    /// The id is empty, longer than [`MAX_ID_LEN`], or not `[a-z0-9-]`.
    InvalidId,
    /// The node refused the `cmd/#` subscription.
    Subscribe(SubscribeError),
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceError::InvalidId => {
                write!(f, "device id must be 1-{MAX_ID_LEN} characters of [a-z0-9-]")
            }
            DeviceError::Subscribe(e) => write!(f, "subscribing to {COMMANDS}: {e}"),
        }
    }
}

impl core::error::Error for DeviceError {}

/// Counters of the script (besides the node's own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceCounters {
    /// Readings queued.
    pub readings: u32,
    /// Echo replies queued.
    pub replies: u32,
    /// Publishes the node refused (outbox full, too large); the script retries a refused
    /// reply once per poll until it fits or a newer command replaces it.
    pub refused: u32,
    /// Commands ignored: unknown channel or body over [`MAX_ECHO_LEN`].
    pub ignored: u32,
    /// Outcomes: Sent.
    pub sent: u32,
    /// Outcomes: Acknowledged.
    pub acked: u32,
    /// Outcomes: anything else (Unacknowledged, Expired, NoSubscribers).
    pub unacked: u32,
}

struct Reply {
    qos: Qos,
    body: Vec<u8, MAX_ECHO_LEN>,
}

/// The device script. See the [module docs](self) for how to drive it.
pub struct DeviceApp {
    id: String<MAX_ID_LEN>,
    cfg: DeviceConfig,
    started: bool,
    status_pending: bool,
    seq: u32,
    next_reading: Instant,
    next_stats: Instant,
    reply: Option<Reply>,
    counters: DeviceCounters,
}

impl DeviceApp {
    /// A script for device `id`.
    ///
    /// # Errors
    /// [`DeviceError::InvalidId`].
    pub fn new(id: &str, cfg: DeviceConfig) -> Result<Self, DeviceError> {
        let valid = !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        let id = String::try_from(id).ok().filter(|_| valid).ok_or(DeviceError::InvalidId)?;
        Ok(Self {
            id,
            cfg,
            started: false,
            status_pending: true,
            seq: 0,
            next_reading: Instant::from_micros(0),
            next_stats: Instant::from_micros(0),
            reply: None,
            counters: DeviceCounters::default(),
        })
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The script's counters.
    pub fn counters(&self) -> &DeviceCounters {
        &self.counters
    }

    /// When [`DeviceApp::poll`] has work next (the node's own deadline is separate).
    pub fn poll_at(&self) -> Instant {
        if !self.started || self.status_pending || self.reply.is_some() {
            return Instant::from_micros(0);
        }
        self.next_reading.min(self.next_stats)
    }

    /// Starts the script on its first call (subscribes to `cmd/#`, publishes the retained
    /// status), publishes what is due, retries a refused reply, and drains the node's
    /// events, counting outcomes.
    ///
    /// # Errors
    /// [`DeviceError::Subscribe`] on the first call if the node refuses the subscription.
    pub fn poll<N: Engine>(&mut self, now: Instant, node: &mut N) -> Result<(), DeviceError> {
        if !self.started {
            node.subscribe(COMMANDS).map_err(DeviceError::Subscribe)?;
            self.started = true;
            self.next_reading = now;
            self.next_stats = now + self.cfg.stats_period;
        }
        if self.status_pending {
            let mut ch = String::<40>::new();
            let _ = write!(ch, "dev/{}/status", self.id);
            let opts = PublishOptions { retain: true, ..PublishOptions::qos(Qos::AtLeastOnce) };
            self.status_pending = !self.publish(node, now, &ch, b"online", opts);
        }
        if let Some(r) = self.reply.take() {
            self.send_reply(node, now, r);
        }
        if now >= self.next_reading {
            self.next_reading = later(self.next_reading + self.cfg.reading_period, now);
            let qos =
                [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce][(self.seq % 3) as usize];
            let mut ch = String::<40>::new();
            let _ = write!(ch, "sensor/{}/reading", self.id);
            let mut body = String::<48>::new();
            // A synthetic temperature in tenths of a degree: 20.0 to 24.9 °C.
            let tenths = 200 + self.seq % 50;
            let _ = write!(
                body,
                "seq={} qos={} temp={}.{}",
                self.seq,
                qos.level(),
                tenths / 10,
                tenths % 10
            );
            if self.publish(node, now, &ch, body.as_bytes(), PublishOptions::qos(qos)) {
                self.counters.readings += 1;
                self.seq += 1;
            }
        }
        while let Some(e) = node.poll_event() {
            match N::outcome(&e) {
                Some((_, Status::Sent)) => self.counters.sent += 1,
                Some((_, Status::Acknowledged)) => self.counters.acked += 1,
                Some(_) => self.counters.unacked += 1,
                None => {}
            }
        }
        if now >= self.next_stats {
            self.next_stats = later(self.next_stats + self.cfg.stats_period, now);
            let s = node.stats();
            let c = self.counters;
            let mut ch = String::<40>::new();
            let _ = write!(ch, "dev/{}/stats", self.id);
            let mut body = String::<160>::new();
            let _ = write!(
                body,
                "rx={} delivered={} replay={} drops={} sent={} acked={} unacked={}",
                s.rx_datagrams,
                s.delivered,
                s.drops(nomq::node::DropReason::Replay),
                s.total_drops(),
                c.sent,
                c.acked,
                c.unacked
            );
            self.publish(node, now, &ch, body.as_bytes(), PublishOptions::default());
        }
        Ok(())
    }

    /// Handles a message the node delivered: answers `cmd/echo`.
    pub fn on_message<N: Engine>(&mut self, now: Instant, node: &mut N, msg: &Message<'_>) {
        if msg.name.as_str() != ECHO {
            self.counters.ignored += 1;
            return;
        }
        let Ok(body) = Vec::from_slice(msg.body) else {
            self.counters.ignored += 1;
            return;
        };
        // A newer command replaces a reply still waiting for outbox room.
        self.send_reply(node, now, Reply { qos: msg.qos, body });
    }

    fn send_reply<N: Engine>(&mut self, node: &mut N, now: Instant, r: Reply) {
        let mut ch = String::<40>::new();
        let _ = write!(ch, "reply/{}", self.id);
        if self.publish(node, now, &ch, &r.body, PublishOptions::qos(r.qos)) {
            self.counters.replies += 1;
        } else {
            self.reply = Some(r);
        }
    }

    /// Publishes; a refusal is counted and reported as `false`.
    fn publish<N: Engine>(
        &mut self,
        node: &mut N,
        now: Instant,
        ch: &str,
        body: &[u8],
        opts: PublishOptions,
    ) -> bool {
        match node.publish(now, ch, body, opts) {
            Ok(_) => true,
            Err(_) => {
                self.counters.refused += 1;
                false
            }
        }
    }
}

/// `next` if it is still ahead of `now`, else one period from now (no bursts after a stall).
fn later(next: Instant, now: Instant) -> Instant {
    if next > now { next } else { now + Duration::from_millis(1) }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String as S;
    use std::vec::Vec as V;

    use super::*;
    use nomq::node::{ClockMode, Target};
    use nomq::{Addr, Config, KeyPair, Keyring, Node};

    type Small = Node<Keyring<0>, 2, 2, 8, 2, 8, 2, 96>;
    const DEV: Addr = Addr::V4([10, 0, 0, 1], 1);
    const HOST: Addr = Addr::V4([10, 0, 0, 2], 1);

    fn node(seed: u8) -> Small {
        let ring = Keyring::new(&KeyPair::new([1; 32], [2; 32])).unwrap();
        let mut cfg = Config::default();
        cfg.clock = ClockMode::Unsynced;
        Small::new(cfg, ring, [seed; 32], Instant::from_secs(1), 0)
    }

    /// Moves datagrams both ways; the device's deliveries go to the app, the host's to `got`.
    fn step(
        dev: &mut Small,
        app: &mut DeviceApp,
        host: &mut Small,
        now: Instant,
        got: &mut V<(S, V<u8>, bool)>,
    ) {
        app.poll(now, dev).unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..8 {
            while let Some(t) = dev.poll_transmit(now, &mut buf) {
                if t.target == Target::Fanout || t.target == Target::Unicast(HOST) {
                    host.handle_datagram(now, DEV, &mut buf[..t.len], |m| {
                        got.push((m.name.as_str().into(), m.body.into(), m.retained));
                        true
                    });
                }
            }
            while let Some(t) = host.poll_transmit(now, &mut buf) {
                if t.target == Target::Fanout || t.target == Target::Unicast(DEV) {
                    for packet in nomq::node::Packets::new(&mut buf[..t.len]) {
                        if let Some(m) = dev.handle_packet(now, HOST, packet) {
                            app.on_message(now, dev, &m);
                        }
                    }
                }
            }
        }
        while host.poll_event().is_some() {}
    }

    #[test]
    fn invalid_ids_are_refused() {
        for id in ["", "UPPER", "has space", "x".repeat(17).as_str()] {
            assert_eq!(
                DeviceApp::new(id, DeviceConfig::default()).err(),
                Some(DeviceError::InvalidId),
                "{id}"
            );
        }
        assert!(DeviceApp::new("c3-01", DeviceConfig::default()).is_ok());
    }

    #[test]
    fn publishes_status_readings_and_stats_and_answers_echo() {
        let (mut dev, mut host) = (node(3), node(4));
        host.subscribe("#").unwrap();
        let mut app = DeviceApp::new("t1", DeviceConfig::default()).unwrap();
        let mut now = Instant::from_secs(1);
        let mut got = V::new();
        for _ in 0..50 {
            step(&mut dev, &mut app, &mut host, now, &mut got);
            now += Duration::from_millis(100);
            dev.handle_timeout(now);
            host.handle_timeout(now);
        }
        let names: V<_> = got.iter().map(|g| g.0.as_str()).collect();
        assert!(names.contains(&"dev/t1/status"), "{names:?}");
        assert!(names.iter().filter(|n| **n == "sensor/t1/reading").count() >= 4, "{names:?}");
        assert!(names.contains(&"dev/t1/stats"), "{names:?}");
        // The first reading (QoS 0) may go out before the host has verified the device's
        // session (the challenge round trip) and is then dropped; the next ones arrive.
        let reading = got.iter().find(|g| g.0 == "sensor/t1/reading").unwrap();
        let text = core::str::from_utf8(&reading.1).unwrap();
        let seq = text.strip_prefix("seq=").and_then(|t| t.split(' ').next()).unwrap();
        assert!(seq.parse::<u32>().is_ok_and(|n| n < 2), "{text}");
        assert!(text.contains(" qos=") && text.contains(" temp=20."), "{text}");
        assert!(app.counters().acked >= 2, "{:?}", app.counters());

        // cmd/echo from the host comes back on reply/t1 with the same body.
        got.clear();
        host.publish(now, ECHO, b"hello", PublishOptions::qos(Qos::ExactlyOnce)).unwrap();
        for _ in 0..5 {
            step(&mut dev, &mut app, &mut host, now, &mut got);
            now += Duration::from_millis(100);
        }
        assert_eq!(app.counters().replies, 1);
        assert!(got.iter().any(|g| g.0 == "reply/t1" && g.1 == b"hello"), "{got:?}");
    }
}
