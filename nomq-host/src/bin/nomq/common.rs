//! What every node command shares: flags, configuration, keyring loading, errors.

use nomq_host::config::{HostConfig, parse_addr};
use nomq_host::{HOST_CHANNEL_KEYS, Handle, HostError, NodeBuilder, NodeEvent, SessionId};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use tokio::sync::mpsc;

/// Why a command failed, with the exit code it maps to.
#[derive(Debug)]
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
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
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

/// `clap` parser for `IP:PORT` (or a bare IP, port 8888).
pub fn addr_arg(s: &str) -> Result<SocketAddr, String> {
    parse_addr("address", s).map_err(|_| format!("'{s}' is not an address (expected IP:PORT)"))
}

/// Flags of every command that runs a node. Precedence: flags > `NOMQ_*` environment >
/// `--config` file > defaults.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Keyring file [default: $NOMQ_KEYRING, else the config file's `keyring`, else
    /// nomq-keys.json]
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// Local address to bind [default: $NOMQ_BIND, else 0.0.0.0:8888]
    #[arg(long, value_name = "ADDR", value_parser = addr_arg)]
    pub bind: Option<SocketAddr>,
    /// A static peer, reached by unicast fan-out (repeatable) [default: $NOMQ_PEERS]
    #[arg(long = "peer", value_name = "ADDR", value_parser = addr_arg)]
    pub peers: Vec<SocketAddr>,
    /// A broadcast address for fan-out (repeatable) [default: 255.255.255.255:PORT when
    /// bound to a non-loopback address with no peers or multicast group]
    #[arg(long = "broadcast", value_name = "ADDR", value_parser = addr_arg)]
    pub broadcast: Vec<SocketAddr>,
    /// A multicast group to join and fan out to
    #[arg(long, value_name = "IP")]
    pub multicast: Option<IpAddr>,
    /// JSON configuration file (every field optional; see the nomq-host docs)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl NodeArgs {
    /// Defaults, then the file, then the environment, then these flags.
    pub fn host_config(&self) -> Result<HostConfig, Failure> {
        let mut cfg = HostConfig::default();
        if let Some(f) = &self.config {
            cfg.apply_file(f).map_err(|e| Failure::usage(e.to_string()))?;
        }
        cfg.apply_env().map_err(|e| Failure::usage(e.to_string()))?;
        if let Some(k) = &self.keys {
            cfg.keyring.clone_from(k);
        }
        if let Some(b) = self.bind {
            cfg.bind = b;
        }
        if !self.peers.is_empty() {
            cfg.peers.clone_from(&self.peers);
        }
        if !self.broadcast.is_empty() {
            cfg.broadcast = Some(self.broadcast.clone());
        }
        if self.multicast.is_some() {
            cfg.multicast = self.multicast;
        }
        Ok(cfg)
    }
}

/// Loads the keyring `cfg` names; warnings go to stderr.
pub fn load_keys(cfg: &HostConfig) -> Result<nomq::Keyring<HOST_CHANNEL_KEYS>, Failure> {
    let path = &cfg.keyring;
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
) -> Result<Handle, Failure> {
    let mut b = NodeBuilder::new(keys).config(cfg.clone());
    if let Some(tx) = events {
        b = b.events(tx);
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
            Failure::network(format!("{what} {}: {err}{hint}", cfg.bind))
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
            if let nomq::Event::PeerJoined { session, addr } = e {
                self.0.insert(session, SocketAddr::from(addr));
            }
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

/// Hint about datagrams that failed authentication, if any did.
pub async fn auth_hint(node: &Handle) -> Option<String> {
    let s = node.stats().await.ok()?;
    let bad = s.engine.drops(nomq::node::DropReason::BadMac);
    (bad > 0).then(|| {
        format!(
            "{bad} datagram(s) from peers failed authentication: they use another keyring \
             (compare the fingerprints of `nomq keys show` on both sides)"
        )
    })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
