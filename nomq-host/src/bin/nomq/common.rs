//! What every node command shares: flags, configuration, keyring loading, errors.

use nomq::node::{ClockMode, DropReason};
use nomq_host::config::{HostConfig, parse_addr, require_regular_file};
use nomq_host::{HOST_CHANNEL_KEYS, Handle, HostError, NodeBuilder, NodeEvent, SessionId};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Why a command failed, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// Process exit code.
    pub code: u8,
    /// What to tell the user.
    pub message: String,
}

impl Failure {
    /// Exit 1: the delivery was not confirmed, or too little arrived.
    pub fn undelivered(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }
    /// Exit 2: usage, configuration or keyring.
    pub fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }
    /// Exit 3: sockets and the runtime.
    pub fn network(message: impl Into<String>) -> Self {
        Self { code: 3, message: message.into() }
    }
    /// Stopped by a signal: exit `code` (128 + the signal number), nothing more to say.
    pub fn signalled(code: u8) -> Self {
        Self { code, message: String::new() }
    }
}

impl From<HostError> for Failure {
    fn from(e: HostError) -> Self {
        use nomq::node::PublishError as P;
        match e {
            HostError::Network { .. } | HostError::Closed => Self::network(e.to_string()),
            HostError::Publish(P::OutboxFull | P::RetainedFull) => Self::undelivered(e.to_string()),
            _ => Self::usage(e.to_string()),
        }
    }
}

/// A single-threaded tokio runtime.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::network(format!("cannot start the async runtime: {e}")))
}

/// `clap` parser for a duration in seconds, fractional allowed (`2.5`), within
/// `min..=max` seconds. Never panics: NaN, infinities, negatives and values past `max`
/// are refused with the range.
pub fn seconds_arg(
    min: f64,
    max: f64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let range = format!("{}..={} seconds", fmt_f64(min), fmt_f64(max));
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number of seconds (e.g. 2.5); allowed {range}"))?;
        if !v.is_finite() || v < min || v > max {
            return Err(format!("{s} is outside {range}"));
        }
        Duration::try_from_secs_f64(v).map_err(|e| format!("{s}: {e}; allowed {range}"))
    }
}

/// `2.5`, `60`.
pub fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

/// A duration in seconds as the user wrote it: `2.5 s`, `60 s`.
pub fn fmt_duration(d: Duration) -> String {
    format!("{} s", fmt_f64(d.as_secs_f64()))
}

/// An address as the user wrote it (`IP:PORT`, a bare IP, `HOST:PORT` or a bare host;
/// port 8888 when none is given), with what it resolves to.
#[derive(Debug, Clone)]
pub struct AddrArg {
    text: String,
    addrs: Vec<SocketAddr>,
}

/// `clap` parser for [`AddrArg`]: names are resolved (`std::net::ToSocketAddrs`) as the
/// command line is read.
pub fn addr_arg(s: &str) -> Result<AddrArg, String> {
    use std::net::ToSocketAddrs;
    // `NOMQ_PEERS=a, b` splits into "a" and " b".
    let s = s.trim();
    if let Ok(a) = parse_addr("address", s) {
        return Ok(AddrArg { text: s.to_string(), addrs: vec![a] });
    }
    let has_port = s.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let resolved = if has_port {
        s.to_socket_addrs()
    } else {
        (s, nomq_host::config::DEFAULT_PORT).to_socket_addrs()
    };
    let mut addrs: Vec<SocketAddr> = resolved
        .map_err(|e| {
            format!("'{s}' is not an address (expected IP:PORT or HOST:PORT): cannot resolve: {e}")
        })?
        .collect();
    // getaddrinfo repeats an address once per socket type.
    let mut seen = Vec::with_capacity(addrs.len());
    addrs.retain(|a| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    if addrs.is_empty() {
        return Err(format!("'{s}' resolves to no address"));
    }
    Ok(AddrArg { text: s.to_string(), addrs })
}

impl AddrArg {
    /// The one address meant, for option `opt`: the only one the name resolves to, else
    /// the only one of `family`'s address family (for `--bind`, with no family yet:
    /// IPv4, the family of the default 0.0.0.0:8888); several left is an error listing
    /// them.
    pub fn pick(&self, opt: &str, family: Option<SocketAddr>) -> Result<SocketAddr, Failure> {
        if let [one] = self.addrs[..] {
            return Ok(one);
        }
        let v4 = family.is_none_or(|f| f.is_ipv4());
        let same: Vec<SocketAddr> =
            self.addrs.iter().copied().filter(|a| a.is_ipv4() == v4).collect();
        if let [one] = same[..] {
            return Ok(one);
        }
        let list: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        let list = match list.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => list.join(""),
        };
        Err(Failure::usage(format!(
            "{opt} {}: {} resolves to {list}; give one address",
            self.text,
            self.text.rsplit_once(':').map_or(self.text.as_str(), |(h, _)| h)
        )))
    }
}

/// `clap` parser for a boolean flag's environment variable `var`: `1`/`true`/`yes`/`on`
/// or `0`/`false`/`no`/`off` (any case; the flag itself arrives as `true`). Anything else
/// is refused, naming the variable.
pub fn env_bool(var: &'static str) -> impl Fn(&str) -> Result<bool, String> + Clone + Send + Sync {
    move |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("{var}='{s}' is not a boolean (expected 1/true or 0/false)")),
    }
}

/// Flags of every command that runs a node. Precedence: flags > `NOMQ_*` environment >
/// `--config` file > defaults.
///
/// The environment has one reader per variable. A variable that stands for a flag is
/// declared on the flag (`env = "NOMQ_…"`), so clap reads it, parses it as the flag, and
/// shows it in `--help`, the man page and completions. The others (engine tuning:
/// `NOMQ_HEARTBEAT_MS`, `NOMQ_LIVENESS_MS`, …) have no flag and are read by the library,
/// [`HostConfig::apply_vars`], which [`host_config`](Self::host_config) asks for no
/// variable a flag declares. An empty variable counts as unset (see [`without_empty_env`]).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Keyring file [default: the config file's `keyring`, else nomq-keys.json]
    #[arg(long, value_name = "FILE", env = "NOMQ_KEYRING")]
    pub keys: Option<PathBuf>,
    /// Local address to bind, IP:PORT or HOST:PORT (a name of several addresses: its IPv4
    /// one). With broadcast or multicast, the discovery port that every node of the host
    /// shares; with --peer only, the node's one socket [default: 0.0.0.0:8888]
    #[arg(long, value_name = "ADDR", value_parser = addr_arg, env = "NOMQ_BIND")]
    pub bind: Option<AddrArg>,
    /// With broadcast or multicast: the port of this node's own unicast socket, which
    /// sends everything and gets the replies (at --bind's IP) [default: 0: one the system
    /// picks, so that any number of nodes share a host]
    #[arg(long, value_name = "PORT", env = "NOMQ_UNICAST_PORT")]
    pub unicast_port: Option<u16>,
    /// A static peer, reached by unicast fan-out (repeatable, or comma-separated), IP:PORT
    /// or HOST:PORT (a name of several addresses: the one of --bind's family)
    #[arg(long = "peer", value_name = "ADDR", value_parser = addr_arg, value_delimiter = ',',
          env = "NOMQ_PEERS")]
    pub peers: Vec<AddrArg>,
    /// A broadcast address for fan-out (repeatable, or comma-separated) [default:
    /// 255.255.255.255:PORT when bound to a non-loopback address with no peers or
    /// multicast group]
    #[arg(long = "broadcast", value_name = "ADDR", value_parser = addr_arg,
          value_delimiter = ',', env = "NOMQ_BROADCAST")]
    pub broadcast: Vec<AddrArg>,
    /// A multicast group to join and fan out to
    #[arg(long, value_name = "IP", env = "NOMQ_MULTICAST")]
    pub multicast: Option<IpAddr>,
    /// JSON configuration file (every field optional; see the nomq-host docs)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Accept packets whatever their timestamp: for senders without a synchronised clock,
    /// such as the ESP32-C3 firmware. Replay protection then rests on the per-session
    /// windows. The variable takes 1/true or 0/false [default: the config file's
    /// `unsynced_clock`, else off: packets more than 30 s off our clock are refused as Stale]
    #[arg(long, env = "NOMQ_UNSYNCED_CLOCK", value_parser = env_bool("NOMQ_UNSYNCED_CLOCK"))]
    pub unsynced_clock: bool,
    /// Print to stderr, at most once a second and only when the counts change, how many
    /// datagrams were refused and why (wrong keyring, stale clock, replay, ...). The
    /// variable takes 1/true or 0/false
    #[arg(long = "refusals", env = "NOMQ_REFUSALS", value_parser = env_bool("NOMQ_REFUSALS"))]
    pub refusals: bool,
}

/// Clears the `env` of every argument (of `cmd` and its subcommands) whose variable is
/// set but empty or blank, so that such a variable means "unset", as in a shell's
/// `NOMQ_KEYRING= nomq …`, instead of an empty value for the flag.
pub fn without_empty_env(cmd: clap::Command) -> clap::Command {
    let blank = |name: &std::ffi::OsStr| {
        std::env::var_os(name).is_some_and(|v| v.to_string_lossy().trim().is_empty())
    };
    cmd.mut_args(|a| match a.get_env() {
        Some(name) if blank(name) => a.env(None::<&str>),
        _ => a,
    })
    .mut_subcommands(without_empty_env)
}

/// A `NOMQ_*` variable for [`HostConfig::apply_vars`]: `None` if a flag of [`NodeArgs`]
/// declares it (clap has read it already), or if it is unset, empty or blank.
fn library_var(name: &str) -> Option<String> {
    use clap::Args;
    let cmd = NodeArgs::augment_args(clap::Command::new("nomq"));
    let declared = cmd.get_arguments().any(|a| a.get_env().is_some_and(|e| e == name));
    if declared {
        return None;
    }
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl NodeArgs {
    /// Defaults, then the file, then the environment variables without a flag, then
    /// these flags (each filled from its own variable by clap when not given).
    pub fn host_config(&self) -> Result<HostConfig, Failure> {
        let mut cfg = HostConfig::default();
        if let Some(f) = &self.config {
            cfg.apply_file(f).map_err(|e| Failure::usage(e.to_string()))?;
        }
        cfg.apply_vars(library_var).map_err(|e| Failure::usage(e.to_string()))?;
        if let Some(k) = &self.keys {
            cfg.keyring.clone_from(k);
        }
        if let Some(b) = &self.bind {
            cfg.bind = b.pick("--bind", None)?;
        }
        if let Some(p) = self.unicast_port {
            cfg.unicast_port = p;
        }
        if !self.peers.is_empty() {
            cfg.peers = self
                .peers
                .iter()
                .map(|p| p.pick("--peer", Some(cfg.bind)))
                .collect::<Result<_, _>>()?;
        }
        if !self.broadcast.is_empty() {
            let b = self.broadcast.iter().map(|p| p.pick("--broadcast", Some(cfg.bind)));
            cfg.broadcast = Some(b.collect::<Result<_, _>>()?);
        }
        if self.multicast.is_some() {
            cfg.multicast = self.multicast;
        }
        if self.unsynced_clock {
            cfg.engine.clock = ClockMode::Unsynced;
        }
        cfg.validate().map_err(|e| Failure::usage(e.to_string()))?;
        Ok(cfg)
    }
}

/// Loads the keyring `cfg` names; warnings go to stderr.
pub fn load_keys(cfg: &HostConfig) -> Result<nomq::Keyring<HOST_CHANNEL_KEYS>, Failure> {
    let path = &cfg.keyring;
    // A FIFO would block the load forever, a directory fail obscurely: check first.
    require_regular_file(path, "keyring").map_err(|e| {
        Failure::usage(format!("{e} (--keys FILE names a keyring made by `nomq keys gen`)"))
    })?;
    let loaded = nomq_keys::KeyringFile::load(path).map_err(|e| {
        let hint = match &e {
            nomq_keys::Error::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
                " (create one with `nomq keys gen`, or name another with --keys FILE)"
            }
            _ => "",
        };
        Failure::usage(format!("{e}{hint}"))
    })?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    loaded.keyring.to_core().map_err(|e| Failure::usage(e.to_string()))
}

/// Whether fan-out reaches anyone at all.
pub fn has_fanout(cfg: &HostConfig) -> bool {
    !cfg.peers.is_empty() || !cfg.effective_broadcast().is_empty() || cfg.multicast.is_some()
}

/// Binds and starts a node.
pub async fn start(
    cfg: &HostConfig,
    keys: nomq::Keyring<HOST_CHANNEL_KEYS>,
    events: Option<mpsc::Sender<NodeEvent>>,
    state: Option<&std::path::Path>,
) -> Result<Handle, Failure> {
    let mut b = NodeBuilder::new(keys).config(cfg.clone());
    if let Some(tx) = events {
        b = b.events(tx);
    }
    if let Some(path) = state {
        b = b.state_file(path);
    }
    b.start().await.map_err(|e| match e {
        HostError::Network { op: what, source: err } => {
            let hint = match err.kind() {
                std::io::ErrorKind::AddrInUse => {
                    " (another process uses it: choose another with --bind, \
                     e.g. --bind 127.0.0.1:0)"
                }
                std::io::ErrorKind::AddrNotAvailable => {
                    " (no interface of this machine has that address)"
                }
                std::io::ErrorKind::PermissionDenied => " (permission denied by the system)",
                _ => "",
            };
            let at = if what == "bind unicast socket" { cfg.unicast_bind() } else { cfg.bind };
            Failure::network(format!("{what} {at}: {err}{hint}"))
        }
        other => Failure::from(other),
    })
}

/// Session → address, learnt from the node's `PeerJoined` events.
#[derive(Default)]
pub struct PeerBook(HashMap<SessionId, SocketAddr>);

impl PeerBook {
    /// Takes every event queued so far.
    pub fn drain(&mut self, rx: &mut mpsc::Receiver<NodeEvent>) {
        while let Ok(e) = rx.try_recv() {
            self.note(&e);
        }
    }
    /// Learns the address of a peer that joined.
    pub fn note(&mut self, e: &NodeEvent) {
        if let nomq::Event::PeerJoined { session, addr } = e {
            self.0.insert(*session, SocketAddr::from(*addr));
        }
    }
    /// `3fa4c2d1 at 127.0.0.1:7001`, or the session alone.
    pub fn describe(&self, s: SessionId) -> String {
        match self.0.get(&s) {
            Some(a) => format!("session {s} at {a}"),
            None => format!("session {s}"),
        }
    }
    /// Each session described, comma-separated.
    pub fn list(&self, sessions: &[SessionId]) -> String {
        sessions.iter().map(|&s| self.describe(s)).collect::<Vec<_>>().join(", ")
    }
}

/// What a drop reason most likely means, and what to do about it; `None` for drops
/// that are no refusal (our own packets looped back by broadcast or multicast). The one
/// table of hints: the running summary of `--refusals` and the totals printed on failure
/// both use it.
pub fn refusal_hint(r: DropReason, cfg: &HostConfig) -> Option<String> {
    use DropReason as D;
    let e = &cfg.engine;
    let s = match r {
        D::OwnPacket => return None,
        D::TooShort
        | D::BadMagic
        | D::UnknownType
        | D::InvalidQos
        | D::PayloadNotBlockMultiple
        | D::LengthMismatch => {
            "not a NoMQ packet (another program sends to this port?)".to_string()
        }
        D::UnsupportedVersion => {
            "a NoMQ packet of another protocol version: update the sender (we speak version 3)"
                .to_string()
        }
        D::TooLarge => format!(
            "larger than our max_payload of {} bytes: the sender allows bigger packets",
            e.max_payload
        ),
        D::BadMac => "failed authentication: wrong keyring? (compare the fingerprints of \
                      `nomq keys show` on both sides)"
            .to_string(),
        D::BadPadding => "authentic but badly padded: a sender bug".to_string(),
        D::LockedOut => "from an address locked out after repeated authentication failures \
                         (wrong keyring?)"
            .to_string(),
        D::ZeroSession => "session id 0: a broken sender".to_string(),
        D::Stale => match e.clock {
            ClockMode::Synced { skew } => format!(
                "the sender's clock differs from ours by more than {} s (or the sender runs \
                 without a synced clock); see --unsynced-clock",
                skew.total_secs()
            ),
            ClockMode::Unsynced => "timestamp outside the freshness window".to_string(),
        },
        D::Expired => "its TTL ran out before it arrived: the sender's clock is behind ours, \
                       or its --ttl is too short"
            .to_string(),
        D::Replay => "a replayed or duplicated capture (a packet id seen before)".to_string(),
        D::ReplayTooOld => {
            "a packet id far below the replay window: a delayed or replayed capture".to_string()
        }
        D::Unverified => "from a session that has not answered our challenge yet (a peer \
                          that just started or that we forgot; or a replay of an old capture)"
            .to_string(),
        D::NotForUs => "bound to another member (a unicast packet replayed or misdelivered to \
                        us; or a node sharing our address)"
            .to_string(),
        D::ChallengeLimited => "challenges not answered: too many per rate window \
                                (challenge_limit)"
            .to_string(),
        D::WrongSender => {
            "a PUBREL from another sender or scope than the message it names".to_string()
        }
        D::RateLimited => format!(
            "the sender exceeds the rate limit of {} packets per {} ms (rate_limit)",
            e.rate_limit,
            e.rate_window.total_millis()
        ),
        D::MalformedBody => "authentic but malformed: a sender bug".to_string(),
        D::ChannelMismatch => "the channel id disagrees with the channel name inside: a \
                               sender bug, or keys mixed up between networks"
            .to_string(),
        D::ScopeMismatch => "sealed with keys of another scope than the channel requires: \
                             the sender lacks this channel's keys (compare `nomq keys show`)"
            .to_string(),
        D::NotSubscribed => "messages on channels nobody here subscribes to".to_string(),
        D::Qos2Full => "no room for more QoS 2 state (the publisher retransmits)".to_string(),
        D::Qos2Duplicate => "QoS 2 repeats of messages already delivered (normal)".to_string(),
        D::StrayAck => "acknowledgements of nothing pending (late duplicates)".to_string(),
        D::ControlQueueFull => "an acknowledgement or announcement was not queued (peers \
                                retransmit)"
            .to_string(),
        D::RetainedDeferred => "a retained value waits for outbox room".to_string(),
        D::PeerSubsFull => "a peer announced more subscriptions than we track".to_string(),
        D::TxBufferTooSmall => "a packet did not fit the send buffer".to_string(),
        _ => "see DropReason in the nomq docs".to_string(),
    };
    Some(s)
}

/// Refusal counts by reason, reported as they change (`--refusals`) and in full when a
/// command fails.
pub struct Refusals {
    last: Vec<(DropReason, u64)>,
    cfg: HostConfig,
}

impl Refusals {
    pub fn new(cfg: &HostConfig) -> Self {
        Self { last: Vec::new(), cfg: cfg.clone() }
    }

    async fn counts(&self, node: &Handle) -> Vec<(DropReason, u64)> {
        match node.stats().await {
            Ok(s) => {
                s.engine.nonzero().filter(|&(r, _)| refusal_hint(r, &self.cfg).is_some()).collect()
            }
            Err(_) => Vec::new(),
        }
    }

    /// Prints one line of running totals if they changed since the last call. Call it at
    /// most once per interval: that is the rate limit.
    pub async fn report_changes(&mut self, node: &Handle) {
        let now = self.counts(node).await;
        if now == self.last {
            return;
        }
        let list: Vec<String> = now.iter().map(|(r, n)| format!("{n} {}", r.name())).collect();
        eprintln!("nomq: refused so far: {}", list.join(", "));
        self.last = now;
    }

    /// Prints every reason's total with its hint; returns whether any datagram was refused.
    pub async fn print_totals(&self, node: &Handle) -> bool {
        let now = self.counts(node).await;
        for &(r, n) in &now {
            let hint = refusal_hint(r, &self.cfg).unwrap_or_default();
            eprintln!("{n} refused as {}: {hint}", r.name());
        }
        !now.is_empty()
    }

    /// The first-time warning about authentication failures (without `--verbose`).
    pub async fn auth_warning(&self, node: &Handle) -> Option<String> {
        let s = node.stats().await.ok()?;
        let bad = s.engine.drops(DropReason::BadMac);
        (bad > 0).then(|| {
            format!(
                "{bad} datagram(s) failed authentication so far: wrong keyring? (compare the \
                 fingerprints of `nomq keys show` on both sides; --refusals reports all refusals)"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(text: &str, addrs: &[&str]) -> AddrArg {
        AddrArg { text: text.into(), addrs: addrs.iter().map(|a| a.parse().unwrap()).collect() }
    }

    #[test]
    fn a_name_of_several_addresses_is_taken_only_when_the_family_decides() {
        let both = arg("localhost:7001", &["127.0.0.1:7001", "[::1]:7001"]);
        let v4: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(both.pick("--peer", Some(v4)).unwrap(), "127.0.0.1:7001".parse().unwrap());
        assert_eq!(both.pick("--peer", Some(v6)).unwrap(), "[::1]:7001".parse().unwrap());
        assert_eq!(both.pick("--bind", None).unwrap(), "127.0.0.1:7001".parse().unwrap());
        let two = arg("h:7001", &["10.0.0.1:7001", "10.0.0.2:7001", "[::1]:7001"]);
        let e = two.pick("--peer", Some(v4)).unwrap_err();
        assert_eq!(e.code, 2);
        assert_eq!(
            e.message,
            "--peer h:7001: h resolves to 10.0.0.1:7001, 10.0.0.2:7001 and [::1]:7001; \
             give one address"
        );
    }

    #[test]
    fn names_and_literals_resolve() {
        let a = addr_arg("localhost:7001").unwrap();
        assert!(a.addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 7001), "{a:?}");
        let a = addr_arg("localhost").unwrap();
        assert!(a.addrs.iter().all(|a| a.port() == nomq_host::config::DEFAULT_PORT), "{a:?}");
        assert_eq!(addr_arg("127.0.0.1:5").unwrap().addrs, ["127.0.0.1:5".parse().unwrap()]);
        assert!(addr_arg("nomq.invalid:5").unwrap_err().contains("cannot resolve"));
        assert!(addr_arg("").is_err());
    }
}
