//! Host configuration: defaults, a JSON file, environment variables.

use crate::HostError;
use nomq::node::ClockMode;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default UDP port (the reference NoMQ's).
pub const DEFAULT_PORT: u16 = 8888;

/// Everything a host node needs that is not a key. Defaults in [`HostConfig::default`].
///
/// File (JSON, every field optional; a field this list does not name is an error):
/// ```json
/// { "bind": "0.0.0.0:8888", "unicast_port": 0, "keyring": "nomq-keys.json", "peers": ["192.0.2.7:8888"],
///   "broadcast": ["255.255.255.255:8888"], "multicast": "239.77.0.1", "multicast_ttl": 1,
///   "heartbeat_ms": 5000, "liveness_ms": 15000, "default_ttl_s": 60,
///   "clock_skew_s": 30, "unsynced_clock": false, "retransmit_initial_ms": 200,
///   "retransmit_max_ms": 3000, "max_attempts": 8, "rate_limit": 1000000, "max_datagram": 1472,
///   "spin_us": 200 }
/// ```
/// Environment: `NOMQ_BIND`, `NOMQ_UNICAST_PORT`, `NOMQ_KEYRING`, `NOMQ_PEERS` (comma-separated),
/// `NOMQ_BROADCAST` (comma-separated), `NOMQ_MULTICAST`, `NOMQ_HEARTBEAT_MS`,
/// `NOMQ_LIVENESS_MS`, `NOMQ_DEFAULT_TTL_S`, `NOMQ_MAX_ATTEMPTS`, `NOMQ_RATE_LIMIT`, `NOMQ_MAX_DATAGRAM`,
/// `NOMQ_SPIN_US`, `NOMQ_CLOCK_SKEW_S`, `NOMQ_UNSYNCED_CLOCK` (`1`/`true`/`yes` or `0`/`false`/`no`).
/// Environment overrides the file; explicit builder calls override both.
///
/// Reading a file or the environment only checks that each value parses; whether the
/// values are in range, and agree with each other, is [`HostConfig::validate`]'s job, run
/// once on the final configuration (the ranges are listed there).
#[derive(Clone, Debug, PartialEq)]
pub struct HostConfig {
    /// Local address (default `0.0.0.0:8888`). With static peers only, the node's one
    /// socket binds it. With broadcast or multicast fan-out it is the shared discovery
    /// address: every node of the host binds it (`SO_REUSEADDR`), fan-out goes to its
    /// port, and each node also has a unicast socket of its own ([`HostConfig::unicast_port`]).
    pub bind: SocketAddr,
    /// Port of the unicast socket of a node with broadcast or multicast fan-out (bound at
    /// the IP of [`HostConfig::bind`]); it sends everything, and acknowledgements come
    /// back to it. Default 0: a port the system picks, so that any number of nodes share
    /// one host. Set it for a firewall that must name the port; unused with static peers
    /// only.
    pub unicast_port: u16,
    /// Keyring file (default `nomq-keys.json`).
    pub keyring: PathBuf,
    /// Static peers: fan-out by unicast (networks without broadcast; every test here).
    pub peers: Vec<SocketAddr>,
    /// Broadcast addresses for fan-out (default: `255.255.255.255:<port>` when bound to a
    /// non-loopback address and no peers or multicast group are set; none otherwise).
    pub broadcast: Option<Vec<SocketAddr>>,
    /// Multicast group for fan-out (IPv4 or IPv6; joined on start).
    pub multicast: Option<IpAddr>,
    /// Multicast hop limit (default 1: the local link).
    pub multicast_ttl: u32,
    /// IPv6 interface index for link-local multicast (default 0: the system's choice).
    pub multicast_if: u32,
    /// Largest datagram the node accepts and sends, bytes: packets queued for one
    /// destination are coalesced up to it (docs/PROTOCOL.md §1.2). `None` (default):
    /// [`LAN_MAX_DATAGRAM`], or [`LOOPBACK_MAX_DATAGRAM`] when bound to a loopback
    /// address. Overrides `engine.max_datagram`.
    pub max_datagram: Option<usize>,
    /// How long the driver keeps polling its sockets instead of sleeping while an
    /// application waits for the outcome of a publish ([`crate::Handle::publish`],
    /// [`crate::Handle::start_publish`]), counted from that publish (default
    /// [`DEFAULT_SPIN`]; `0` turns it off; at most [`MAX_SPIN`]; file `spin_us`,
    /// environment `NOMQ_SPIN_US`).
    ///
    /// A thread asleep in `epoll_wait` on an idle core is woken by an interrupt, which on
    /// a virtual machine costs tens of microseconds (on the 2-vCPU machines here about
    /// 25 µs each way, two thirds of a QoS 1 round trip over loopback). A spinning driver
    /// does not sleep: it yields to the runtime, which runs its other tasks and polls the
    /// sockets without blocking, so the acknowledgement is read as soon as the kernel
    /// queues it. The spin ends once no outcome is awaited any more, and at most the spin
    /// after the latest awaited publish: a publisher answered in 25 µs spends about that
    /// much CPU on it (`nomq bench`: 14 µs per round trip), and one whose answer does not
    /// come within the spin spends the whole spin, then sleeps as usual. QoS 0 publishes
    /// and publishes whose outcome nobody awaits never spin. The time spent adds up in
    /// [`crate::HostStats::spun`].
    pub spin: Duration,
    /// Engine settings (timeouts, TTL, clock mode, rate limit). The defaults are the
    /// core's, except `rate_limit`: [`HOST_RATE_LIMIT`].
    pub engine: nomq::Config,
}

/// Default [`HostConfig::max_datagram`] on a LAN: the UDP payload of one 1500-byte
/// Ethernet frame over IPv4, so no datagram is ever fragmented.
pub const LAN_MAX_DATAGRAM: usize = 1472;
/// Default [`HostConfig::max_datagram`] on loopback (MTU 65 536): 16 KiB datagrams carry
/// about a hundred 64-byte messages, one system call for all of them.
pub const LOOPBACK_MAX_DATAGRAM: usize = 16 * 1024;
/// Default [`HostConfig::spin`]: longer than a QoS 1 round trip on loopback or a wired
/// LAN with a busy machine, short enough to cost nothing noticeable when the answer is
/// slower (a Wi-Fi MCU answers in milliseconds).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(200);
/// Longest [`HostConfig::spin`].
pub const MAX_SPIN: Duration = Duration::from_millis(10);
/// The range [`HostConfig::max_datagram`] may take.
pub const MAX_DATAGRAM_RANGE: RangeInclusive<usize> =
    nomq::wire::MIN_PACKET_LEN..=nomq::node::MAX_UDP_PAYLOAD;

impl HostConfig {
    /// The datagram limit in effect: [`HostConfig::max_datagram`] or its default for
    /// the bind address.
    pub fn effective_max_datagram(&self) -> usize {
        let auto =
            if self.bind.ip().is_loopback() { LOOPBACK_MAX_DATAGRAM } else { LAN_MAX_DATAGRAM };
        self.max_datagram.unwrap_or(auto)
    }
}

/// Packets per second one peer may send a host node before the excess is dropped
/// (default of [`HostConfig::engine`]`.rate_limit`). The core's default (1000) suits an
/// MCU; a host verifies and decrypts a small packet in well under a microsecond (AES-NI,
/// SHA-NI), so this bounds one flooding member to well under a core, while a windowed
/// stream of several hundred thousand messages a second, coalesced many per datagram, is
/// never throttled into retransmissions.
pub const HOST_RATE_LIMIT: u32 = 1_000_000;

fn host_engine() -> nomq::Config {
    let mut c = nomq::Config::default();
    c.rate_limit = HOST_RATE_LIMIT;
    c
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            unicast_port: 0,
            keyring: PathBuf::from("nomq-keys.json"),
            peers: Vec::new(),
            broadcast: None,
            multicast: None,
            multicast_ttl: 1,
            multicast_if: 0,
            max_datagram: None,
            spin: DEFAULT_SPIN,
            engine: host_engine(),
        }
    }
}

fn ms(v: u64) -> nomq::Duration {
    nomq::Duration::from_millis(v)
}

fn parse_addrs(what: &str, s: &str) -> Result<Vec<SocketAddr>, HostError> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| parse_addr(what, p)).collect()
}

/// Parses `host:port`, or a bare IP with the default port.
pub fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, HostError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(HostError::config(what, format!("'{s}' is not an address (expected IP:PORT)")))
}

/// The configuration file: every field optional; unknown fields are refused (a typo such
/// as `"heartbeat"` would otherwise be silently ignored).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    unicast_port: Option<u16>,
    keyring: Option<PathBuf>,
    peers: Option<Vec<String>>,
    broadcast: Option<Vec<String>>,
    multicast: Option<IpAddr>,
    multicast_ttl: Option<u32>,
    heartbeat_ms: Option<u64>,
    liveness_ms: Option<u64>,
    default_ttl_s: Option<u16>,
    clock_skew_s: Option<u64>,
    unsynced_clock: Option<bool>,
    retransmit_initial_ms: Option<u64>,
    retransmit_max_ms: Option<u64>,
    max_attempts: Option<u8>,
    rate_limit: Option<u32>,
    max_datagram: Option<usize>,
    spin_us: Option<u64>,
}

impl FileConfig {
    fn apply(self, c: &mut HostConfig, file: &str) -> Result<(), HostError> {
        let field = |k: &str| format!("{file}: field '{k}'");
        let addrs = |k: &str, list: &[String]| -> Result<Vec<SocketAddr>, HostError> {
            list.iter().map(|a| parse_addr(&field(k), a)).collect()
        };
        if let Some(b) = &self.bind {
            c.bind = parse_addr(&field("bind"), b)?;
        }
        c.unicast_port = self.unicast_port.unwrap_or(c.unicast_port);
        if let Some(k) = self.keyring {
            c.keyring = k;
        }
        if let Some(p) = &self.peers {
            c.peers = addrs("peers", p)?;
        }
        if let Some(b) = &self.broadcast {
            c.broadcast = Some(addrs("broadcast", b)?);
        }
        c.multicast = self.multicast.or(c.multicast);
        c.multicast_ttl = self.multicast_ttl.unwrap_or(c.multicast_ttl);
        let e = &mut c.engine;
        e.heartbeat_interval = self.heartbeat_ms.map_or(e.heartbeat_interval, ms);
        e.liveness_timeout = self.liveness_ms.map_or(e.liveness_timeout, ms);
        e.default_ttl = self.default_ttl_s.unwrap_or(e.default_ttl);
        if let Some(s) = self.clock_skew_s {
            e.clock = ClockMode::Synced { skew: nomq::Duration::from_secs(s) };
        }
        if self.unsynced_clock == Some(true) {
            e.clock = ClockMode::Unsynced;
        }
        e.retransmit_initial = self.retransmit_initial_ms.map_or(e.retransmit_initial, ms);
        e.retransmit_max = self.retransmit_max_ms.map_or(e.retransmit_max, ms);
        e.max_attempts = self.max_attempts.unwrap_or(e.max_attempts);
        e.rate_limit = self.rate_limit.unwrap_or(e.rate_limit);
        c.max_datagram = self.max_datagram.or(c.max_datagram);
        c.spin = self.spin_us.map_or(c.spin, Duration::from_micros);
        Ok(())
    }
}

impl HostConfig {
    /// Applies a JSON configuration file.
    ///
    /// # Errors
    /// [`HostError::Config`] naming the file and field.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), HostError> {
        require_regular_file(path, "configuration file")?;
        let file = || path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| HostError::config(file(), format!("cannot read: {e}")))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        let f: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                HostError::config(file(), format!("not JSON: {inner}"))
            } else if field == "." {
                HostError::config(file(), inner.to_string())
            } else {
                HostError::config(format!("{}: field '{field}'", file()), inner.to_string())
            }
        })?;
        f.apply(self, &file())
    }

    /// Applies `NOMQ_*` environment variables, for programs built on this library:
    /// `NOMQ_BIND`, `NOMQ_UNICAST_PORT`, `NOMQ_KEYRING`, `NOMQ_PEERS`, `NOMQ_BROADCAST`,
    /// `NOMQ_MULTICAST`, `NOMQ_HEARTBEAT_MS`, `NOMQ_LIVENESS_MS`, `NOMQ_DEFAULT_TTL_S`,
    /// `NOMQ_MAX_ATTEMPTS`, `NOMQ_RATE_LIMIT`, `NOMQ_MAX_DATAGRAM`, `NOMQ_SPIN_US`, `NOMQ_CLOCK_SKEW_S`,
    /// `NOMQ_UNSYNCED_CLOCK`
    /// (see [`apply_vars`](Self::apply_vars)). A variable that is empty or blank counts
    /// as unset.
    ///
    /// The `nomq` command does not call this: it reads the variables that stand for one
    /// of its flags (`NOMQ_KEYRING` for `--keys`, …) as that flag, through clap, and hands
    /// only the others to [`apply_vars`](Self::apply_vars).
    ///
    /// # Errors
    /// [`HostError::Config`] naming the variable.
    pub fn apply_env(&mut self) -> Result<(), HostError> {
        self.apply_vars(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// Applies variables from any source (testable form of [`HostConfig::apply_env`]).
    ///
    /// # Errors
    /// [`HostError::Config`] naming the variable.
    pub fn apply_vars(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), HostError> {
        let num = |k: &str, v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| HostError::config(k, format!("'{v}' is not a number")))
        };
        if let Some(v) = get("NOMQ_BIND") {
            self.bind = parse_addr("NOMQ_BIND", &v)?;
        }
        if let Some(v) = get("NOMQ_UNICAST_PORT") {
            self.unicast_port = u16::try_from(num("NOMQ_UNICAST_PORT", &v)?)
                .map_err(|_| HostError::config("NOMQ_UNICAST_PORT", "above 65535"))?;
        }
        if let Some(v) = get("NOMQ_KEYRING") {
            self.keyring = PathBuf::from(v);
        }
        if let Some(v) = get("NOMQ_PEERS") {
            self.peers = parse_addrs("NOMQ_PEERS", &v)?;
        }
        if let Some(v) = get("NOMQ_BROADCAST") {
            self.broadcast = Some(parse_addrs("NOMQ_BROADCAST", &v)?);
        }
        if let Some(v) = get("NOMQ_MULTICAST") {
            self.multicast =
                Some(v.trim().parse().map_err(|_| {
                    HostError::config("NOMQ_MULTICAST", format!("'{v}' is not an IP"))
                })?);
        }
        if let Some(v) = get("NOMQ_HEARTBEAT_MS") {
            self.engine.heartbeat_interval = ms(num("NOMQ_HEARTBEAT_MS", &v)?);
        }
        if let Some(v) = get("NOMQ_LIVENESS_MS") {
            self.engine.liveness_timeout = ms(num("NOMQ_LIVENESS_MS", &v)?);
        }
        if let Some(v) = get("NOMQ_DEFAULT_TTL_S") {
            self.engine.default_ttl = u16::try_from(num("NOMQ_DEFAULT_TTL_S", &v)?)
                .map_err(|_| HostError::config("NOMQ_DEFAULT_TTL_S", "above 65535"))?;
        }
        if let Some(v) = get("NOMQ_MAX_ATTEMPTS") {
            self.engine.max_attempts = u8::try_from(num("NOMQ_MAX_ATTEMPTS", &v)?)
                .map_err(|_| HostError::config("NOMQ_MAX_ATTEMPTS", "above 255"))?;
        }
        if let Some(v) = get("NOMQ_MAX_DATAGRAM") {
            self.max_datagram = Some(
                usize::try_from(num("NOMQ_MAX_DATAGRAM", &v)?)
                    .map_err(|_| HostError::config("NOMQ_MAX_DATAGRAM", "too large"))?,
            );
        }
        if let Some(v) = get("NOMQ_SPIN_US") {
            self.spin = Duration::from_micros(num("NOMQ_SPIN_US", &v)?);
        }
        if let Some(v) = get("NOMQ_RATE_LIMIT") {
            self.engine.rate_limit = u32::try_from(num("NOMQ_RATE_LIMIT", &v)?)
                .map_err(|_| HostError::config("NOMQ_RATE_LIMIT", "too large"))?;
        }
        if let Some(v) = get("NOMQ_CLOCK_SKEW_S") {
            let skew = nomq::Duration::from_secs(num("NOMQ_CLOCK_SKEW_S", &v)?);
            self.engine.clock = ClockMode::Synced { skew };
        }
        if let Some(v) = get("NOMQ_UNSYNCED_CLOCK")
            && parse_bool("NOMQ_UNSYNCED_CLOCK", &v)?
        {
            self.engine.clock = ClockMode::Unsynced;
        }
        Ok(())
    }

    /// The broadcast addresses fan-out uses (see [`HostConfig::broadcast`]). IPv6 has no
    /// broadcast: an IPv6 node gets no default one.
    pub fn effective_broadcast(&self) -> Vec<SocketAddr> {
        match &self.broadcast {
            Some(b) => b.clone(),
            None if self.peers.is_empty()
                && self.multicast.is_none()
                && self.bind.is_ipv4()
                && !self.bind.ip().is_loopback() =>
            {
                vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), self.bind.port())]
            }
            None => Vec::new(),
        }
    }

    /// Whether the node discovers peers by broadcast or multicast, and so has two sockets:
    /// a discovery socket shared on [`HostConfig::bind`] and a unicast one of its own.
    pub fn discovers(&self) -> bool {
        self.multicast.is_some() || !self.effective_broadcast().is_empty()
    }

    /// Where the unicast socket of a discovering node binds: the IP of
    /// [`HostConfig::bind`], port [`HostConfig::unicast_port`].
    pub fn unicast_bind(&self) -> SocketAddr {
        SocketAddr::new(self.bind.ip(), self.unicast_port)
    }

    /// Converts a duration for display.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_micros(self.engine.heartbeat_interval.total_micros())
    }
}

/// Accepted `"1"`/`"true"`/`"yes"`/`"on"` and `"0"`/`"false"`/`"no"`/`"off"` (any case).
fn parse_bool(k: &str, v: &str) -> Result<bool, HostError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(HostError::config(
            k,
            format!("'{v}' is not a boolean (expected 1/true or 0/false)"),
        )),
    }
}

/// Refuses anything but a regular file (after following symbolic links) before it is
/// opened: a FIFO would block the reader forever, a directory gives an unhelpful OS
/// error, a device could be read without end. `what` names the file's role in the error.
///
/// # Errors
/// [`HostError::Config`] naming the path: missing, unreadable, or not a regular file.
pub fn require_regular_file(path: &Path, what: &str) -> Result<(), HostError> {
    let field = || format!("{what} {}", path.display());
    let meta = std::fs::metadata(path)
        .map_err(|e| HostError::config(field(), format!("cannot read: {e}")))?;
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(());
    }
    let kind = nomq_keys::file_kind(&ft);
    Err(HostError::config(field(), format!("is {kind}, not a regular file")))
}

/// Allowed heartbeat interval, milliseconds: faster floods the network (0 would send
/// tens of thousands a second), slower lets peers go unnoticed for hours.
pub const HEARTBEAT_MS: RangeInclusive<u64> = 10..=3_600_000;
/// Largest liveness timeout, milliseconds (one day).
pub const LIVENESS_MAX_MS: u64 = 86_400_000;
/// Allowed retransmission delays (first and longest), milliseconds.
pub const RETRANSMIT_MS: RangeInclusive<u64> = 1..=600_000;
/// Allowed rate-limit window, milliseconds.
pub const RATE_WINDOW_MS: RangeInclusive<u64> = 1..=3_600_000;
/// Allowed clock skew of [`ClockMode::Synced`], seconds (timestamps are whole seconds,
/// so 0 would refuse packets that cross a second boundary).
pub const CLOCK_SKEW_S: RangeInclusive<u64> = 1..=86_400;
/// Largest UDP payload over IPv4 (65535 − 8 UDP − 20 IP header bytes).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Largest `max_payload` (ciphertext bytes): a multiple of 16 whose packet (header,
/// ciphertext, MAC) still fits one UDP datagram.
pub const MAX_PAYLOAD_LIMIT: usize =
    (MAX_UDP_PAYLOAD - nomq::wire::OVERHEAD) / nomq::wire::BLOCK_LEN * nomq::wire::BLOCK_LEN;

/// `250 ms`, `0.5 ms`.
fn fmt_ms(d: nomq::Duration) -> String {
    let us = d.total_micros();
    if us.is_multiple_of(1000) {
        format!("{} ms", us / 1000)
    } else {
        format!("{} ms", us as f64 / 1000.0)
    }
}

/// Checks `d` against `range` (milliseconds); returns it in whole milliseconds.
fn check_ms(field: &str, d: nomq::Duration, range: &RangeInclusive<u64>) -> Result<u64, HostError> {
    let us = d.total_micros();
    let (lo, hi) = (range.start().saturating_mul(1000), range.end().saturating_mul(1000));
    if us < lo || us > hi {
        return Err(HostError::config(
            field,
            format!("{} is outside {}..={} ms", fmt_ms(d), range.start(), range.end()),
        ));
    }
    Ok(d.total_millis())
}

impl HostConfig {
    /// Checks every setting, the engine's included, against its allowed range, and the
    /// settings against each other. Run it on the final configuration (after the file,
    /// the environment and any explicit settings were applied).
    ///
    /// | setting (file field, variable) | allowed |
    /// |---|---|
    /// | `heartbeat_interval` (`heartbeat_ms`, `NOMQ_HEARTBEAT_MS`) | 10 ms ..= 1 h |
    /// | `liveness_timeout` (`liveness_ms`, `NOMQ_LIVENESS_MS`) | above the heartbeat interval, ≤ 24 h |
    /// | `retransmit_initial` (`retransmit_initial_ms`) | 1 ms ..= 10 min, ≤ `retransmit_max` |
    /// | `retransmit_max` (`retransmit_max_ms`) | 1 ms ..= 10 min |
    /// | `max_attempts` (`max_attempts`, `NOMQ_MAX_ATTEMPTS`) | 1 ..= 255 |
    /// | `default_ttl` (`default_ttl_s`, `NOMQ_DEFAULT_TTL_S`) | 1 ..= 65535 s |
    /// | `rate_limit` (`rate_limit`, `NOMQ_RATE_LIMIT`) | ≥ 1 per window |
    /// | `rate_window` | 1 ms ..= 1 h |
    /// | clock skew (`clock_skew_s`, `NOMQ_CLOCK_SKEW_S`) | 1 ..= 86400 s |
    /// | `max_payload` | a multiple of 16 in 16 ..= [`MAX_PAYLOAD_LIMIT`] |
    /// | `max_datagram` (`max_datagram`, `NOMQ_MAX_DATAGRAM`) | [`MAX_DATAGRAM_RANGE`] |
    /// | `spin` (`spin_us`, `NOMQ_SPIN_US`) | 0 ..= [`MAX_SPIN`] |
    /// | `lockout` | threshold ≥ 1; 1 ms ≤ base ≤ cap ≤ 24 h |
    /// | `qos2_window` | ≥ 1 |
    /// | `multicast_ttl` | 0 ..= 255 |
    /// | `peers`, `broadcast` | port ≠ 0; same IP family as `bind` |
    /// | `multicast` | a multicast address of the same IP family as `bind` |
    /// | `unicast_port` | not the port of `bind` when broadcast or multicast is on |
    ///
    /// # Errors
    /// The first problem found, as [`HostError::Config`] naming the setting (with its
    /// file field and environment variable) and the allowed range.
    pub fn validate(&self) -> Result<(), HostError> {
        let e = &self.engine;
        let hb = check_ms(
            "heartbeat interval (heartbeat_ms, NOMQ_HEARTBEAT_MS)",
            e.heartbeat_interval,
            &HEARTBEAT_MS,
        )?;
        let live = e.liveness_timeout.total_millis();
        if e.liveness_timeout <= e.heartbeat_interval || live > LIVENESS_MAX_MS {
            return Err(HostError::config(
                "liveness timeout (liveness_ms, NOMQ_LIVENESS_MS)",
                format!(
                    "{live} ms is outside {}..={LIVENESS_MAX_MS} ms (it must exceed the heartbeat interval of {hb} ms; 3 × that or more is usual)",
                    hb + 1
                ),
            ));
        }
        let ri = check_ms(
            "first retransmission delay (retransmit_initial_ms)",
            e.retransmit_initial,
            &RETRANSMIT_MS,
        )?;
        let rm = check_ms(
            "longest retransmission delay (retransmit_max_ms)",
            e.retransmit_max,
            &RETRANSMIT_MS,
        )?;
        if ri > rm {
            return Err(HostError::config(
                "first retransmission delay (retransmit_initial_ms)",
                format!(
                    "{ri} ms is above the longest retransmission delay (retransmit_max_ms) of {rm} ms; allowed 1..={rm} ms"
                ),
            ));
        }
        if e.max_attempts == 0 {
            return Err(HostError::config(
                "max_attempts (NOMQ_MAX_ATTEMPTS)",
                "0 is outside 1..=255",
            ));
        }
        if e.default_ttl == 0 {
            return Err(HostError::config(
                "default TTL (default_ttl_s, NOMQ_DEFAULT_TTL_S)",
                "0 s is outside 1..=65535 s",
            ));
        }
        if e.rate_limit == 0 {
            return Err(HostError::config(
                "rate_limit (NOMQ_RATE_LIMIT)",
                format!("0 is outside 1..={} packets per window", u32::MAX),
            ));
        }
        check_ms("rate-limit window (rate_window)", e.rate_window, &RATE_WINDOW_MS)?;
        if let ClockMode::Synced { skew } = e.clock {
            let s = skew.total_secs();
            if !CLOCK_SKEW_S.contains(&s) || !skew.total_micros().is_multiple_of(1_000_000) {
                return Err(HostError::config(
                    "clock skew (clock_skew_s, NOMQ_CLOCK_SKEW_S)",
                    format!(
                        "{} is outside 1..=86400 s (whole seconds); without a synced clock use unsynced_clock / --unsynced-clock instead",
                        fmt_secs(skew)
                    ),
                ));
            }
        }
        if let Some(md) = self.max_datagram
            && !MAX_DATAGRAM_RANGE.contains(&md)
        {
            return Err(HostError::config(
                "max_datagram (max_datagram, NOMQ_MAX_DATAGRAM)",
                format!(
                    "{md} bytes is outside {}..={} (one packet at least, one UDP datagram at most)",
                    MAX_DATAGRAM_RANGE.start(),
                    MAX_DATAGRAM_RANGE.end()
                ),
            ));
        }
        if self.spin > MAX_SPIN {
            return Err(HostError::config(
                "spin (spin_us, NOMQ_SPIN_US)",
                format!(
                    "{} µs is outside 0..={} µs (0 turns it off)",
                    self.spin.as_micros(),
                    MAX_SPIN.as_micros()
                ),
            ));
        }
        let mp = e.max_payload;
        if mp == 0 || !mp.is_multiple_of(nomq::wire::BLOCK_LEN) || mp > MAX_PAYLOAD_LIMIT {
            return Err(HostError::config(
                "max_payload",
                format!(
                    "{mp} bytes is not a multiple of 16 in 16..={MAX_PAYLOAD_LIMIT} (a packet must fit one UDP datagram)"
                ),
            ));
        }
        let l = &e.lockout;
        if l.threshold == 0 {
            return Err(HostError::config("lockout threshold", "0 is outside 1..=255"));
        }
        let base = check_ms("lockout base duration", l.base, &(1..=LIVENESS_MAX_MS))?;
        check_ms("lockout cap", l.cap, &(base..=LIVENESS_MAX_MS))?;
        if e.qos2_window == 0 {
            return Err(HostError::config("qos2_window", "0 is outside 1..=65535"));
        }
        if self.multicast_ttl > 255 {
            return Err(HostError::config(
                "multicast_ttl",
                format!("{} is outside 0..=255", self.multicast_ttl),
            ));
        }
        if self.discovers() && self.unicast_port != 0 && self.unicast_port == self.bind.port() {
            return Err(HostError::config(
                "unicast port (unicast_port, NOMQ_UNICAST_PORT, --unicast-port)",
                format!(
                    "{} is the discovery port of bind {}, which nodes of this host share; choose another port, or 0 for one the system picks",
                    self.unicast_port, self.bind
                ),
            ));
        }
        let family = |a: IpAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
        let bind_family = family(self.bind.ip());
        let same_family = |what: &str, a: SocketAddr| -> Result<(), HostError> {
            if a.port() == 0 {
                return Err(HostError::config(what, format!("{a}: port 0 is outside 1..=65535")));
            }
            if a.is_ipv4() != self.bind.is_ipv4() {
                return Err(HostError::config(
                    what,
                    format!(
                        "{a} is an {} address but the node binds the {bind_family} address {} (every send would fail); bind an {} address, e.g. --bind {}",
                        family(a.ip()),
                        self.bind,
                        family(a.ip()),
                        if a.is_ipv4() { "0.0.0.0:8888" } else { "[::]:8888" },
                    ),
                ));
            }
            Ok(())
        };
        for &p in &self.peers {
            same_family("peer (peers, NOMQ_PEERS, --peer)", p)?;
        }
        for &b in self.broadcast.iter().flatten() {
            same_family("broadcast address (broadcast, NOMQ_BROADCAST, --broadcast)", b)?;
        }
        if let Some(g) = self.multicast {
            let what = "multicast group (multicast, NOMQ_MULTICAST, --multicast)";
            if !g.is_multicast() {
                return Err(HostError::config(
                    what,
                    format!(
                        "{g} is not a multicast address (IPv4 224.0.0.0/4, e.g. 239.77.0.1; IPv6 ff00::/8, e.g. ff02::1)"
                    ),
                ));
            }
            // The group's port is the bound port, so only the family can disagree.
            same_family(what, SocketAddr::new(g, self.bind.port().max(1)))?;
        }
        Ok(())
    }
}

fn fmt_secs(d: nomq::Duration) -> String {
    let us = d.total_micros();
    if us.is_multiple_of(1_000_000) {
        format!("{} s", us / 1_000_000)
    } else {
        format!("{} s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_errors() {
        let mut c = HostConfig::default();
        let vars = |k: &str| match k {
            "NOMQ_BIND" => Some("127.0.0.1:9000".to_string()),
            "NOMQ_PEERS" => Some("127.0.0.1:9001, 127.0.0.1".to_string()),
            "NOMQ_HEARTBEAT_MS" => Some("250".to_string()),
            _ => None,
        };
        c.apply_vars(vars).unwrap();
        assert_eq!(c.bind, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[1].port(), DEFAULT_PORT);
        assert_eq!(c.engine.heartbeat_interval, nomq::Duration::from_millis(250));
        assert!(c.effective_broadcast().is_empty(), "loopback never broadcasts by default");
        let err = c.apply_vars(|k| (k == "NOMQ_PEERS").then(|| "nope".to_string())).unwrap_err();
        assert!(err.to_string().contains("NOMQ_PEERS"), "{err}");
        let err =
            c.apply_vars(|k| (k == "NOMQ_MAX_ATTEMPTS").then(|| "999".to_string())).unwrap_err();
        assert!(err.to_string().contains("NOMQ_MAX_ATTEMPTS"));
    }

    #[test]
    fn defaults_broadcast_only_off_loopback() {
        let c = HostConfig::default();
        assert_eq!(c.effective_broadcast(), vec!["255.255.255.255:8888".parse().unwrap()]);
        let c =
            HostConfig { peers: vec!["192.0.2.1:8888".parse().unwrap()], ..HostConfig::default() };
        assert!(c.effective_broadcast().is_empty());
    }

    #[test]
    fn file_fields_and_errors() {
        let dir = std::env::temp_dir().join(format!("nomq-host-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.json");
        std::fs::write(
            &f,
            r#"{"bind":"127.0.0.1:7000","peers":["127.0.0.1:7001"],"max_attempts":3}"#,
        )
        .unwrap();
        let mut c = HostConfig::default();
        c.apply_file(&f).unwrap();
        assert_eq!(c.bind.port(), 7000);
        assert_eq!(c.engine.max_attempts, 3);
        std::fs::write(&f, r#"{"max_attempts":"x"}"#).unwrap();
        let e = c.apply_file(&f).unwrap_err().to_string();
        assert!(e.contains("max_attempts") && e.contains("c.json"), "{e}");
        std::fs::write(&f, "{").unwrap();
        assert!(c.apply_file(&f).unwrap_err().to_string().contains("not JSON"));
        std::fs::write(&f, r#"{"heartbeat":5}"#).unwrap();
        let e = c.apply_file(&f).unwrap_err().to_string();
        assert!(e.contains("unknown field `heartbeat`") && e.contains("heartbeat_ms"), "{e}");
        std::fs::write(&f, r#"{"peers":["127.0.0.1:1","nope"]}"#).unwrap();
        let e = c.apply_file(&f).unwrap_err().to_string();
        assert!(e.contains("field 'peers'") && e.contains("'nope'"), "{e}");
        std::fs::write(&f, r#"{"max_attempts":300}"#).unwrap();
        let e = c.apply_file(&f).unwrap_err().to_string();
        assert!(e.contains("field 'max_attempts'") && e.contains("300"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unicast_port_from_every_source_and_only_where_it_can_bind() {
        let c = HostConfig::default();
        assert!(c.discovers(), "broadcast by default");
        assert_eq!(c.unicast_bind(), "0.0.0.0:0".parse().unwrap());
        let mut c = HostConfig::default();
        c.apply_vars(|k| (k == "NOMQ_UNICAST_PORT").then(|| "9100".to_string())).unwrap();
        assert_eq!(c.unicast_bind(), "0.0.0.0:9100".parse().unwrap());
        let e = c.apply_vars(|k| (k == "NOMQ_UNICAST_PORT").then(|| "70000".to_string()));
        assert!(e.unwrap_err().to_string().contains("NOMQ_UNICAST_PORT"));
        let dir = std::env::temp_dir().join(format!("nomq-host-uni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.json");
        std::fs::write(&f, r#"{"bind":"10.0.0.5:9000","unicast_port":9001}"#).unwrap();
        c.apply_file(&f).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.unicast_bind(), "10.0.0.5:9001".parse().unwrap());
        c.validate().unwrap();
        // The shared port cannot also be the node's own.
        refused(&with(|c| c.unicast_port = DEFAULT_PORT), &["unicast_port", "8888", "share"]);
        // With static peers only there is one socket, and the setting is unused.
        with(|c| {
            c.unicast_port = DEFAULT_PORT;
            c.peers = vec!["192.0.2.1:8888".parse().unwrap()];
        })
        .validate()
        .unwrap();
        let peers_only = with(|c| c.peers = vec!["192.0.2.1:8888".parse().unwrap()]);
        assert!(!peers_only.discovers());
        assert!(with(|c| c.multicast = Some("239.77.0.1".parse().unwrap())).discovers());
    }

    /// Validates `c` and returns the message, which must name `field` and `range`.
    fn refused(c: &HostConfig, needles: &[&str]) {
        let e = c.validate().expect_err("should be refused");
        assert!(matches!(e, HostError::Config { .. }), "{e:?}");
        let m = e.to_string();
        for n in needles {
            assert!(m.contains(n), "expected {n:?} in: {m}");
        }
    }

    #[test]
    fn max_datagram_defaults_by_bind_address_and_is_checked() {
        let mut c = HostConfig::default();
        assert_eq!(c.effective_max_datagram(), LAN_MAX_DATAGRAM);
        c.bind = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(c.effective_max_datagram(), LOOPBACK_MAX_DATAGRAM);
        c.apply_vars(|k| (k == "NOMQ_MAX_DATAGRAM").then(|| "9000".to_string())).unwrap();
        assert_eq!(c.effective_max_datagram(), 9000);
        c.validate().unwrap();
        for bad in [10, 65_508] {
            refused(
                &with(|c| c.max_datagram = Some(bad)),
                &["max_datagram", "NOMQ_MAX_DATAGRAM", "65507"],
            );
        }
    }

    #[test]
    fn spin_from_every_source_and_bounded() {
        let mut c = HostConfig::default();
        assert_eq!(c.spin, DEFAULT_SPIN);
        c.apply_vars(|k| (k == "NOMQ_SPIN_US").then(|| "0".to_string())).unwrap();
        assert_eq!(c.spin, Duration::ZERO);
        c.validate().unwrap();
        let dir = std::env::temp_dir().join(format!("nomq-spin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.json");
        std::fs::write(&f, r#"{"spin_us":10000}"#).unwrap();
        c.apply_file(&f).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.spin, MAX_SPIN);
        c.validate().unwrap();
        let e = c.apply_vars(|k| (k == "NOMQ_SPIN_US").then(|| "soon".to_string()));
        assert!(e.unwrap_err().to_string().contains("NOMQ_SPIN_US"));
        refused(
            &with(|c| c.spin = MAX_SPIN + Duration::from_micros(1)),
            &["spin_us", "NOMQ_SPIN_US", "10000"],
        );
        c.apply_vars(|k| (k == "NOMQ_SPIN_US").then(|| u64::MAX.to_string())).unwrap();
        refused(&c, &["spin", "0..=10000"]);
    }

    fn with(f: impl FnOnce(&mut HostConfig)) -> HostConfig {
        let mut c = HostConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn validate_accepts_defaults_and_edges() {
        HostConfig::default().validate().unwrap();
        with(|c| {
            c.engine.heartbeat_interval = ms(10);
            c.engine.liveness_timeout = ms(11);
            c.engine.retransmit_initial = ms(600_000);
            c.engine.retransmit_max = ms(600_000);
            c.engine.max_attempts = 1;
            c.engine.default_ttl = 1;
            c.engine.rate_limit = 1;
            c.engine.max_payload = MAX_PAYLOAD_LIMIT;
            c.engine.clock = ClockMode::Synced { skew: nomq::Duration::from_secs(86_400) };
        })
        .validate()
        .unwrap();
        with(|c| c.engine.clock = ClockMode::Unsynced).validate().unwrap();
        with(|c| {
            c.bind = "[::1]:0".parse().unwrap();
            c.peers = vec!["[::1]:7000".parse().unwrap()];
            c.multicast = Some("ff02::1".parse().unwrap());
        })
        .validate()
        .unwrap();
        const { assert!(MAX_PAYLOAD_LIMIT + nomq::wire::OVERHEAD <= MAX_UDP_PAYLOAD) };
        const { assert!(MAX_PAYLOAD_LIMIT.is_multiple_of(16)) };
    }

    #[test]
    fn validate_refuses_engine_values_out_of_range() {
        refused(
            &with(|c| c.engine.heartbeat_interval = ms(0)),
            &["heartbeat", "NOMQ_HEARTBEAT_MS", "0 ms", "10..=3600000 ms"],
        );
        refused(
            &with(|c| c.engine.heartbeat_interval = nomq::Duration::from_micros(9_500)),
            &["heartbeat", "9.5 ms"],
        );
        refused(
            &with(|c| {
                c.engine.heartbeat_interval = ms(3_600_001);
                c.engine.liveness_timeout = ms(86_400_000);
            }),
            &["heartbeat", "3600001 ms"],
        );
        refused(
            &with(|c| c.engine.liveness_timeout = ms(5000)),
            &["liveness", "NOMQ_LIVENESS_MS", "5001..=86400000"],
        );
        refused(
            &with(|c| c.engine.liveness_timeout = ms(86_400_001)),
            &["liveness", "86400001 ms"],
        );
        refused(
            &with(|c| c.engine.retransmit_initial = ms(0)),
            &["retransmit_initial_ms", "1..=600000 ms"],
        );
        refused(
            &with(|c| c.engine.retransmit_max = ms(600_001)),
            &["retransmit_max_ms", "1..=600000 ms"],
        );
        refused(
            &with(|c| {
                c.engine.retransmit_initial = ms(4000);
                c.engine.retransmit_max = ms(3000);
            }),
            &["retransmit_initial_ms", "1..=3000 ms"],
        );
        refused(&with(|c| c.engine.max_attempts = 0), &["max_attempts", "1..=255"]);
        refused(&with(|c| c.engine.default_ttl = 0), &["default_ttl_s", "1..=65535"]);
        refused(&with(|c| c.engine.rate_limit = 0), &["rate_limit", "1..="]);
        refused(&with(|c| c.engine.rate_window = ms(0)), &["rate_window", "1..=3600000 ms"]);
        for skew in [0, 86_401] {
            refused(
                &with(|c| {
                    c.engine.clock = ClockMode::Synced { skew: nomq::Duration::from_secs(skew) }
                }),
                &["clock_skew_s", "1..=86400 s", "--unsynced-clock"],
            );
        }
        for mp in [0, 100, MAX_PAYLOAD_LIMIT + 16] {
            refused(
                &with(|c| c.engine.max_payload = mp),
                &["max_payload", "multiple of 16", &format!("16..={MAX_PAYLOAD_LIMIT}")],
            );
        }
        refused(&with(|c| c.engine.lockout.threshold = 0), &["lockout threshold", "1..=255"]);
        refused(&with(|c| c.engine.lockout.cap = ms(10)), &["lockout cap", "1000..=86400000 ms"]);
        refused(&with(|c| c.engine.qos2_window = 0), &["qos2_window", "1..=65535"]);
        refused(&with(|c| c.multicast_ttl = 256), &["multicast_ttl", "0..=255"]);
    }

    #[test]
    fn validate_refuses_bad_addresses() {
        refused(
            &with(|c| c.peers = vec!["127.0.0.1:0".parse().unwrap()]),
            &["peer", "port 0", "1..=65535"],
        );
        refused(
            &with(|c| c.broadcast = Some(vec!["192.0.2.255:0".parse().unwrap()])),
            &["broadcast", "port 0"],
        );
        // IPv4 bind, IPv6 peer / broadcast / group; and the other way round.
        refused(
            &with(|c| c.peers = vec!["[::1]:7000".parse().unwrap()]),
            &["peer", "[::1]:7000", "IPv6", "IPv4", "--bind"],
        );
        refused(
            &with(|c| c.broadcast = Some(vec!["[ff02::1]:7000".parse().unwrap()])),
            &["broadcast", "IPv6"],
        );
        refused(
            &with(|c| c.multicast = Some("ff02::1".parse().unwrap())),
            &["multicast", "IPv6", "IPv4"],
        );
        refused(
            &with(|c| {
                c.bind = "[::]:8888".parse().unwrap();
                c.peers = vec!["127.0.0.1:7000".parse().unwrap()];
            }),
            &["peer", "127.0.0.1:7000", "IPv4", "IPv6"],
        );
        refused(
            &with(|c| {
                c.bind = "[::]:8888".parse().unwrap();
                c.multicast = Some("239.77.0.1".parse().unwrap());
            }),
            &["multicast", "IPv4", "IPv6"],
        );
        refused(
            &with(|c| c.multicast = Some("192.0.2.1".parse().unwrap())),
            &["multicast", "192.0.2.1", "not a multicast address"],
        );
        refused(
            &with(|c| {
                c.bind = "[::]:8888".parse().unwrap();
                c.multicast = Some("fe80::1".parse().unwrap());
            }),
            &["not a multicast address"],
        );
        // An IPv6 node without peers gets no IPv4 broadcast by default.
        assert!(with(|c| c.bind = "[::]:8888".parse().unwrap()).effective_broadcast().is_empty());
    }

    #[test]
    fn file_and_env_values_are_validated() {
        let dir = std::env::temp_dir().join(format!("nomq-host-val-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("v.json");
        std::fs::write(&f, r#"{"heartbeat_ms":0,"default_ttl_s":0}"#).unwrap();
        let mut c = HostConfig::default();
        c.apply_file(&f).unwrap();
        refused(&c, &["heartbeat_ms", "10..=3600000"]);
        let mut c = HostConfig::default();
        c.apply_vars(|k| (k == "NOMQ_MAX_ATTEMPTS").then(|| "0".to_string())).unwrap();
        refused(&c, &["NOMQ_MAX_ATTEMPTS", "1..=255"]);
        let mut c = HostConfig::default();
        c.apply_vars(|k| (k == "NOMQ_CLOCK_SKEW_S").then(|| "0".to_string())).unwrap();
        refused(&c, &["NOMQ_CLOCK_SKEW_S"]);
        // A directory as the configuration file: refused before it is opened.
        let e = HostConfig::default().apply_file(&dir).unwrap_err().to_string();
        assert!(e.contains("a directory, not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unsynced_clock_from_env() {
        for (v, unsynced) in
            [("1", true), ("true", true), ("YES", true), ("0", false), ("false", false)]
        {
            let mut c = HostConfig::default();
            c.apply_vars(|k| (k == "NOMQ_UNSYNCED_CLOCK").then(|| v.to_string())).unwrap();
            assert_eq!(c.engine.clock == ClockMode::Unsynced, unsynced, "{v}");
        }
        let e = HostConfig::default()
            .apply_vars(|k| (k == "NOMQ_UNSYNCED_CLOCK").then(|| "maybe".to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NOMQ_UNSYNCED_CLOCK") && e.contains("maybe"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn regular_file_required() {
        let dir = std::env::temp_dir().join(format!("nomq-host-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = require_regular_file(&fifo, "keyring").unwrap_err().to_string();
            assert!(e.contains("FIFO") && e.contains("keyring"), "{e}");
        }
        let e = require_regular_file(&dir.join("missing"), "keyring").unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(dir.join("f"), "{}").unwrap();
        require_regular_file(&dir.join("f"), "keyring").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
