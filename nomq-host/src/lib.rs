#![doc = include_str!("../README.md")]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bridge;
pub mod config;
pub mod store;
mod stream;
mod udp;

pub use config::HostConfig;
/// The core engine, re-exported so that an application needs only `nomq-host` (and
/// tokio) in its `Cargo.toml`: `nomq_host::nomq::Config` for [`NodeBuilder::engine`].
pub use nomq;
pub use nomq::node::{Destination, PublishError, PublishOptions, Status, SubscribeError};
pub use nomq::{Addr, KeyPair, Keyring, Qos, SessionId};
pub use nomq_keys::KeyringFile;
/// Re-exported so an application needs only `nomq-host` (and tokio) for JSON payloads:
/// `nomq_host::serde_json::json!(..)`.
pub use serde_json;
pub use store::{FileStore, FileStoreError};

use nomq::Node;
use nomq::node::{Event, Outcome, StateStore, Stats};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// Channel key scopes a host keyring holds.
pub const HOST_CHANNEL_KEYS: usize = 8;
/// The core engine with host-sized capacities: 64 peers, 32 subscriptions, 128 outbox
/// entries of up to 1362 bytes (a full packet), 32 retained channels, 512 QoS 2 receive
/// states, 256 lockout entries.
pub type HostNode = Node<Keyring<HOST_CHANNEL_KEYS>, 64, 32, 128, 32, 512, 256, MAX_MESSAGE_LEN>;
/// Most bytes of channel name + body one message carries with the default maximum
/// payload (1376): the padded plaintext of a PUBLISH holds 13 bytes of header fields.
pub const MAX_MESSAGE_LEN: usize =
    nomq::envelope::max_plaintext(1376) - nomq::body::PUBLISH_OVERHEAD;
/// Messages buffered per subscription stream by default ([`NodeBuilder::stream_depth`]).
///
/// The stream is the flow-control window of delivery: a message that finds a matching
/// stream full is refused ([`nomq::Node::refuse_delivery`]), so it is never
/// acknowledged; a QoS 1/2 publisher retransmits it until the reader has made room
/// (counted in [`HostStats::app_deferred`]); a QoS 0 message is lost and counted in
/// [`HostStats::app_dropped`].
pub const STREAM_DEPTH: usize = 4096;

/// A boxed source error (keyring, codec).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the host adapter, grouped by who is to blame. Every variant that wraps
/// another error returns it from [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The caller's configuration: `field` names the setting (a builder method, a JSON
    /// field, an environment variable or a command-line option) and `problem` says what
    /// is wrong with it, including the allowed range where there is one.
    #[error("configuration: {field}: {problem}")]
    Config {
        /// The setting.
        field: String,
        /// What is wrong, e.g. "0 is outside 1..=3600000".
        problem: String,
    },
    /// The keyring could not be loaded or used.
    #[error("keyring: {0}")]
    Keys(#[source] BoxError),
    /// A socket operation failed: `op` names it ("bind", "join multicast group").
    #[error("{op}: {source}")]
    Network {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The engine refused the publish (the caller's request: invalid channel, too large,
    /// outbox full).
    #[error("publish refused: {0}")]
    Publish(#[source] nomq::node::PublishError),
    /// The engine refused the subscription (invalid pattern, table full).
    #[error("subscribe refused: {0}")]
    Subscribe(#[source] nomq::node::SubscribeError),
    /// A typed payload could not be encoded or decoded.
    #[error("payload: {0}")]
    Codec(#[source] BoxError),
    /// The state file ([`NodeBuilder::state_file`]) could not be read or written, or
    /// holds no state this node can restore.
    #[error("state file {}: {source}", path.display())]
    Store {
        /// The state file.
        path: std::path::PathBuf,
        /// What went wrong ([`FileStoreError`] or [`nomq::node::RestoreError`]).
        source: BoxError,
    },
    /// The node's driver has stopped.
    #[error("node has shut down")]
    Closed,
}

impl HostError {
    /// A configuration error for `field`.
    pub fn config(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Config { field: field.into(), problem: problem.into() }
    }
    /// A socket error of operation `op`.
    pub fn network(op: &'static str, source: std::io::Error) -> Self {
        Self::Network { op, source }
    }
}

/// A message delivered to a subscription.
///
/// Its channel name and body are slices of one buffer per datagram, shared by the
/// messages that arrived together (one allocation per datagram, not two per message):
/// cloning a message, or keeping its body, costs no copy. A kept body keeps at most its
/// datagram's plaintext alive (a few KiB at most, `max_datagram_len`); copy it
/// (`body.to_vec()`) to keep a few bytes of a large datagram for long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Channel name.
    pub channel: bytestring::ByteString,
    /// Body.
    pub body: bytes::Bytes,
    /// Sender's address.
    pub from: SocketAddr,
    /// Sender's session.
    pub session: SessionId,
    /// Message id, stable across retransmissions (tells duplicates apart).
    pub msg: nomq::body::MessageId,
    /// QoS it was published with.
    pub qos: Qos,
    /// A retained value.
    pub retained: bool,
    /// The TTL its publisher gave it, seconds.
    pub ttl: u16,
    /// A retransmission (QoS 1 may deliver twice).
    pub dup: bool,
    /// For a QoS 1/2 message delivered to a subscription made with
    /// [`Handle::subscribe_acked`]: its acknowledgement, which the node withholds from
    /// the publisher until this is completed ([`Ack::complete`]). `None` otherwise.
    pub ack: Option<Ack>,
}

/// The withheld acknowledgement of one QoS 1/2 message ([`Handle::subscribe_acked`]).
///
/// The node sends the message's PUBACK (QoS 1) or PUBREC (QoS 2) once every holder of
/// this acknowledgement completed it: the message itself and every clone of it (several
/// subscriptions of this node that match the message share one). A holder dropped
/// without [`Ack::complete`] abandons it: the node forgets the message unacknowledged,
/// the publisher retransmits it, and it is delivered again. Until then retransmissions
/// of it are not delivered. A message not completed before it expires (its TTL; by then
/// its publisher gave up) is forgotten by the node, and a late completion is counted in
/// [`HostStats::acks_late`].
pub struct Ack {
    inner: std::sync::Arc<AckInner>,
    done: bool,
}

struct AckInner {
    token: nomq::node::DeliveryToken,
    abandoned: std::sync::atomic::AtomicBool,
    tx: mpsc::UnboundedSender<(nomq::node::DeliveryToken, bool)>,
}

impl Ack {
    /// Acknowledges the message (once every other holder did too).
    pub fn complete(mut self) {
        self.done = true;
    }
    /// Gives it up: the publisher retransmits it and it is delivered again.
    pub fn abandon(self) {}
}

impl Clone for Ack {
    /// Another holder, which must complete it too.
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), done: false }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.done {
            self.inner.abandoned.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for AckInner {
    fn drop(&mut self) {
        let complete = !self.abandoned.load(std::sync::atomic::Ordering::Relaxed);
        // Fails only when the driver has stopped, and with it the engine.
        let _ = self.tx.send((self.token, complete));
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ack").field("msg", &self.inner.token.message()).finish()
    }
}

impl PartialEq for Ack {
    /// The same message's acknowledgement.
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for Ack {}

impl Message {
    /// Decodes the body as JSON.
    ///
    /// # Errors
    /// [`HostError::Codec`].
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HostError> {
        serde_json::from_slice(&self.body).map_err(|e| HostError::Codec(e.into()))
    }
    /// Decodes the body as postcard.
    ///
    /// # Errors
    /// [`HostError::Codec`].
    pub fn postcard<T: serde::de::DeserializeOwned>(&self) -> Result<T, HostError> {
        postcard::from_bytes(&self.body).map_err(|e| HostError::Codec(e.into()))
    }
}

/// The outcome of one publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// How it ended.
    pub status: Status,
    /// Sessions that acknowledged.
    pub acked: Vec<SessionId>,
    /// Known subscribers that did not.
    pub missing: Vec<SessionId>,
}

impl<const P: usize> From<Outcome<P>> for Delivery {
    fn from(o: Outcome<P>) -> Self {
        Self { status: o.status, acked: o.acked.to_vec(), missing: o.missing.to_vec() }
    }
}

/// Counters: the engine's plus the adapter's own.
#[derive(Clone, Debug, Default)]
pub struct HostStats {
    /// Engine counters (drops by reason, datagrams in and out).
    pub engine: Stats,
    /// Datagrams that could not be sent (socket errors).
    pub send_errors: u64,
    /// Receive errors recovered from.
    pub recv_errors: u64,
    /// Datagrams longer than [`nomq::node::Node::max_datagram_len`] (the most this node
    /// announces it accepts): cut by the kernel, so dropped unread.
    pub recv_truncated: u64,
    /// QoS 0 messages lost because a matching subscription stream was full.
    pub app_dropped: u64,
    /// QoS 1/2 messages refused unacknowledged because a matching subscription stream
    /// was full; their publishers retransmit them.
    pub app_deferred: u64,
    /// QoS 1/2 messages for a [`Handle::subscribe_acked`] subscription refused
    /// unacknowledged because the engine's table of withheld acknowledgements was full
    /// (its publishers retransmit them).
    pub acks_full: u64,
    /// Acknowledgements completed ([`Ack::complete`]) after the engine had forgotten
    /// their message (it expired): nothing was sent.
    pub acks_late: u64,
    /// Acknowledgements abandoned ([`Ack`] dropped without completing).
    pub acks_abandoned: u64,
    /// Peer and security events the [`NodeBuilder::events`] channel could not take
    /// (plus those the engine's own queue could not: `engine.events_dropped`).
    pub events_dropped: u64,
    /// Failed saves of the state file ([`NodeBuilder::state_file`]); each is retried on
    /// the next turn, and nothing waits on it is sent or handed over meanwhile.
    pub save_errors: u64,
    /// Time the driver spent polling its sockets instead of sleeping, waiting for the
    /// outcome of a publish ([`HostConfig::spin`]): the CPU time that spinning cost.
    pub spun: std::time::Duration,
}

/// A peer the node knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its session.
    pub session: SessionId,
    /// Its address (where it last sent from).
    pub addr: SocketAddr,
    /// Subscriptions it announced.
    pub subscriptions: usize,
}

/// Peer and security events, as the engine reports them.
pub type NodeEvent = Event<64>;

/// Identifies one [`Subscription`] in the driver.
type SubId = u64;

enum Command {
    /// Pattern, whether its QoS 1/2 acknowledgements wait for [`Ack::complete`].
    Subscribe(String, bool, oneshot::Sender<Result<Subscription, HostError>>),
    Publish(
        String,
        Vec<u8>,
        PublishOptions,
        oneshot::Sender<Result<oneshot::Receiver<Delivery>, HostError>>,
    ),
    /// As `Publish`, answered once: with the refusal, or with the outcome.
    PublishWait(String, Vec<u8>, PublishOptions, oneshot::Sender<Result<Delivery, HostError>>),
    PublishBatch(String, Vec<Vec<u8>>, PublishOptions, oneshot::Sender<Result<usize, HostError>>),
    Stats(oneshot::Sender<HostStats>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Subscribers(String, oneshot::Sender<Vec<SessionId>>),
    Session(oneshot::Sender<SessionId>),
    Shutdown(oneshot::Sender<()>),
}

/// Who waits for a publish's outcome.
enum Waiter {
    /// [`Handle::start_publish`]: the outcome alone (the refusal was answered before).
    Outcome(oneshot::Sender<Delivery>),
    /// [`Handle::publish`]: the one answer to its command.
    Result(oneshot::Sender<Result<Delivery, HostError>>),
}

impl Waiter {
    /// A waiter that stopped waiting dropped its receiver: fine.
    fn send(self, d: Delivery) {
        let _ = match self {
            Self::Outcome(tx) => tx.send(d).map_err(drop),
            Self::Result(tx) => tx.send(Ok(d)).map_err(drop),
        };
    }
}

/// Configures and starts a node.
pub struct NodeBuilder {
    config: HostConfig,
    keyring: Keyring<HOST_CHANNEL_KEYS>,
    events: Option<mpsc::Sender<NodeEvent>>,
    stream_depth: usize,
    socket: Option<std::net::UdpSocket>,
    /// Peers given by a name that resolved to several addresses: one is chosen by the
    /// bind address's family when the node starts.
    ambiguous_peers: Vec<(String, Vec<SocketAddr>)>,
    /// The first invalid setting, reported by [`NodeBuilder::start`].
    error: Option<HostError>,
    state_file: Option<std::path::PathBuf>,
}

/// Resolves `addr` (an address, `"host:port"`, `("host", port)`): every address, or a
/// configuration error naming `field`.
fn resolve(
    field: &str,
    addr: impl ToSocketAddrs + fmt::Debug,
) -> Result<(String, Vec<SocketAddr>), HostError> {
    let name = format!("{addr:?}").trim_matches('"').to_string();
    let all: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| HostError::config(field, format!("{name}: {e}")))?
        .collect();
    if all.is_empty() {
        return Err(HostError::config(field, format!("{name} resolves to no address")));
    }
    Ok((name, all))
}

/// The one of `candidates` of the family of `bind`, or an error listing them.
fn pick(
    field: &str,
    name: &str,
    candidates: &[SocketAddr],
    bind: SocketAddr,
) -> Result<SocketAddr, HostError> {
    let same: Vec<_> = candidates.iter().filter(|a| a.is_ipv4() == bind.is_ipv4()).collect();
    match same.as_slice() {
        [one] => Ok(**one),
        _ => {
            let list: Vec<String> = candidates.iter().map(ToString::to_string).collect();
            Err(HostError::config(
                field,
                format!(
                    "{name} resolves to {}; give one address (the bind address is {bind})",
                    list.join(" and ")
                ),
            ))
        }
    }
}

impl NodeBuilder {
    /// A builder with this keyring and [`HostConfig::default`] settings.
    pub fn new(keyring: Keyring<HOST_CHANNEL_KEYS>) -> Self {
        Self {
            config: HostConfig::default(),
            keyring,
            events: None,
            stream_depth: STREAM_DEPTH,
            socket: None,
            ambiguous_peers: Vec::new(),
            error: None,
            state_file: None,
        }
    }
    /// Loads the keyring from a file (warnings are logged).
    ///
    /// # Errors
    /// [`HostError::Keys`] with the file, field and problem.
    pub fn from_keyring_file(path: &std::path::Path) -> Result<Self, HostError> {
        let loaded = nomq_keys::KeyringFile::load(path).map_err(|e| HostError::Keys(e.into()))?;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let ring = loaded.keyring.to_core().map_err(|e| HostError::Keys(e.into()))?;
        Ok(Self::new(ring))
    }
    /// Replaces all settings.
    pub fn config(mut self, config: HostConfig) -> Self {
        self.config = config;
        self
    }
    /// Local address to bind: an address or `"host:port"` (a name resolving to several
    /// addresses binds the first IPv4 one, else the first). A name that does not resolve
    /// is reported by [`NodeBuilder::start`].
    pub fn bind(mut self, addr: impl ToSocketAddrs + fmt::Debug) -> Self {
        match resolve("bind", addr) {
            Ok((_, all)) => {
                self.config.bind = all.iter().copied().find(SocketAddr::is_ipv4).unwrap_or(all[0]);
            }
            Err(e) => self.fail(e),
        }
        self
    }
    /// Adds static peers (fan-out by unicast): addresses or `"host:port"` names. A name
    /// that resolves to several addresses counts once, as the one of the bind address's
    /// family; [`NodeBuilder::start`] refuses it if that is not exactly one.
    pub fn peers<A: ToSocketAddrs + fmt::Debug>(
        mut self,
        peers: impl IntoIterator<Item = A>,
    ) -> Self {
        for p in peers {
            match resolve("peers", p) {
                Ok((_, all)) if all.len() == 1 => self.config.peers.push(all[0]),
                Ok(named) => self.ambiguous_peers.push(named),
                Err(e) => self.fail(e),
            }
        }
        self
    }
    fn fail(&mut self, e: HostError) {
        self.error.get_or_insert(e);
    }
    /// Sets the broadcast addresses of fan-out (`255.255.255.255:P` or a subnet's).
    pub fn broadcast(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.config.broadcast = Some(addrs.into_iter().collect());
        self
    }
    /// Joins a multicast group and fans out to it.
    pub fn multicast(mut self, group: IpAddr) -> Self {
        self.config.multicast = Some(group);
        self
    }
    /// Engine settings.
    pub fn engine(mut self, engine: nomq::Config) -> Self {
        self.config.engine = engine;
        self
    }
    /// Receives peer and security events on this channel. It is bounded: events that
    /// find it full are counted in [`HostStats::events_dropped`] and logged. Publish
    /// outcomes never travel here (each publish has its own), except the outcomes of
    /// retained values sent to late subscribers ([`Event::Outcome`] with
    /// `retained_reply`), which have no publish to report to.
    pub fn events(mut self, tx: mpsc::Sender<NodeEvent>) -> Self {
        self.events = Some(tx);
        self
    }
    /// Uses this already-bound socket instead of binding [`HostConfig::bind`] (which
    /// becomes the socket's address). Bind every node's socket first, then hand each one
    /// over with the others' addresses as peers: no port is found free and released.
    pub fn socket(mut self, socket: std::net::UdpSocket) -> Self {
        self.socket = Some(socket);
        self
    }
    /// How long the driver polls instead of sleeping while a publish's outcome is awaited
    /// ([`HostConfig::spin`]; `Duration::ZERO` turns it off).
    pub fn spin(mut self, spin: std::time::Duration) -> Self {
        self.config.spin = spin;
        self
    }
    /// Messages each subscription stream buffers (default [`STREAM_DEPTH`], at least 1):
    /// its flow-control window (see [`STREAM_DEPTH`]).
    pub fn stream_depth(mut self, depth: usize) -> Self {
        self.stream_depth = depth.max(1);
        self
    }

    /// Binds the socket and starts the driver task on the current tokio runtime.
    ///
    /// Keeps the node's state in `path` ([`FileStore`]): QoS 2 messages are then
    /// delivered exactly once across a crash and restart of this process (`kill -9`,
    /// power loss), as docs/PROTOCOL.md "State store" describes.
    ///
    /// At start the node restores the file's state (a missing file: a first start) and
    /// takes a new session that announces the one before the restart, so publishers move
    /// what was in flight to it. While running, after each batch of datagrams, the driver
    /// saves the state before it sends anything the state commits it to (a PUBREC) and
    /// before it hands the new messages to their subscription streams, so no message is
    /// handed over twice. What remains is a window from that save to the application
    /// processing the message: messages in a stream when the process dies are lost to
    /// the application (their publishers were told they arrived). A failed save is
    /// logged, counted in [`HostStats::save_errors`] and retried on the next turn;
    /// meanwhile nothing is sent or handed over. One process at a time per file.
    pub fn state_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// # Errors
    /// [`HostError::Network`] if the socket cannot be bound or configured;
    /// [`HostError::Store`] if the state file cannot be read, restored or written.
    pub async fn start(self) -> Result<Handle, HostError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut cfg = self.config;
        for (name, candidates) in &self.ambiguous_peers {
            cfg.peers.push(pick("peers", name, candidates, cfg.bind)?);
        }
        if let Some(s) = &self.socket {
            cfg.bind = s.local_addr().map_err(|e| HostError::network("local address", e))?;
        }
        cfg.validate()?;
        cfg.engine.max_datagram = cfg.effective_max_datagram();
        let sockets = match self.socket {
            Some(s) => Sockets { unicast: configure(s, &cfg, Role::Single)?, discovery: None },
            None => open(&cfg)?,
        };
        let addr =
            |s: &udp::Socket| s.local_addr().map_err(|e| HostError::network("local address", e));
        let local = addr(&sockets.unicast)?;
        let discovery = sockets.discovery.as_ref().map(addr).transpose()?;
        let mut fanout: Vec<SocketAddr> = cfg.peers.clone();
        fanout.extend(cfg.effective_broadcast());
        if let Some(g) = cfg.multicast {
            // The group's port is the shared one, where every node of the group listens.
            fanout.push(SocketAddr::new(g, discovery.unwrap_or(local).port()));
        }
        if fanout.is_empty() {
            tracing::warn!(%local, "no peers, broadcast or multicast configured: fan-out reaches nobody");
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| HostError::network("OS random generator", std::io::Error::other(e)))?;
        let clock = Clock::new();
        let mut node =
            Box::new(HostNode::new(cfg.engine, self.keyring, seed, clock.now(), clock.unix()));
        let store = match self.state_file {
            Some(path) => {
                Some((restore(&mut node, clock.now(), path)?, vec![0u8; HostNode::STATE_LEN]))
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel(1024);
        // Dropped subscriptions. Unbounded so that `Drop` never loses one, yet bounded in
        // practice: each Subscription sends exactly one id, once.
        let (unsub_tx, unsub_rx) = mpsc::unbounded_channel();
        // Completed and abandoned acknowledgements. Unbounded so that `Drop` never loses
        // one, yet bounded in practice: each one sends once, and the engine withholds at
        // most as many as it has QoS 2 receive states (512).
        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            node,
            sockets,
            cfg,
            fanout,
            clock,
            subs: Vec::new(),
            next_sub: 0,
            unsub: unsub_tx,
            acks: ack_tx,
            cmd: tx.downgrade(),
            stream_depth: self.stream_depth,
            pending: HashMap::new(),
            spin_until: None,
            stats: HostStats::default(),
            flush: nomq::node::Flush::new(),
            events: self.events,
            store,
            held: Vec::new(),
            spans: Vec::new(),
            datagram: 0..0,
        };
        tokio::spawn(driver.run(rx, unsub_rx, ack_rx));
        Ok(Handle { tx, local, discovery })
    }
}

/// Opens the state file at `path`, restores `node` from it, turns persistence on and
/// saves the restored state with the new session.
fn restore(
    node: &mut HostNode,
    now: nomq::Instant,
    path: std::path::PathBuf,
) -> Result<FileStore, HostError> {
    let mut store = FileStore::new(path.clone());
    let mut buf = vec![0u8; HostNode::STATE_LEN];
    let fail = |e: BoxError| HostError::Store { path: path.clone(), source: e };
    if let Some(len) = store.load(&mut buf).map_err(|e| fail(e.into()))? {
        node.restore(now, &buf[..len]).map_err(|e| fail(e.into()))?;
        tracing::info!(path = %path.display(), bytes = len, "state restored");
    }
    node.enable_persistence();
    // Saved at once: the new session is on disk before anything is sent under it, and a
    // file that cannot be written fails the start instead of holding every transmission.
    let len = node.export_state(now, &mut buf).map_err(|e| fail(e.into()))?;
    store.save(&buf[..len]).map_err(|e| fail(e.into()))?;
    Ok(store)
}

/// A place reserved in the stream of subscription `SubId`, and whether that stream is
/// one of [`Handle::subscribe_acked`].
type Slot = (SubId, bool);

/// The stream slots reserved for one message. Most messages match one subscription: the
/// first slot is kept inline, so only a message for several streams allocates here.
#[derive(Default)]
struct Slots {
    first: Option<Slot>,
    rest: Vec<Slot>,
}

impl Slots {
    fn push(&mut self, slot: Slot) {
        match self.first {
            None => self.first = Some(slot),
            Some(_) => self.rest.push(slot),
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.first.iter().chain(&self.rest)
    }
}

/// Puts `message` in the stream places reserved for it: with its [`Ack`] for the streams
/// of [`Handle::subscribe_acked`] (each holds a clone), without for the others. The
/// streams send what they were given at the end of the flush ([`stream::StreamTx::send`]).
fn hand_over(subs: &mut [Sub], mut message: Message, permits: Slots) {
    let ack = message.ack.take();
    let mut message = Some(message);
    let mut permits = permits.first.into_iter().chain(permits.rest).peekable();
    while let Some((id, acked)) = permits.next() {
        // The last stream takes the message itself.
        let m = if permits.peek().is_some() { message.clone() } else { message.take() };
        // A subscription dropped since the reservation is gone, and so is its place.
        if let (Some(mut m), Some(sub)) = (m, subs.iter_mut().find(|s| s.id == id)) {
            m.ack = if acked { ack.clone() } else { None };
            sub.tx.stage(m);
        }
    }
    // `ack` (the driver's holder) drops here: completed, so only the streams' holders
    // decide.
    if let Some(a) = ack {
        a.complete();
    }
}

/// Socket buffer sizes asked of the kernel (it may grant less; see `net.core.rmem_max`).
/// Bursts of QoS 0 traffic overflow the 208 KB default long before the CPU is busy.
const RECV_BUFFER: usize = 4 << 20;
const SEND_BUFFER: usize = 1 << 20;

/// The sockets of a node. With static peers only (or a socket handed to
/// [`NodeBuilder::socket`]) there is one, `unicast`, bound where the user says. A node
/// that discovers by broadcast or multicast ([`HostConfig::discovers`]) has two, the way
/// mDNS responders share port 5353:
///
/// - `discovery`, bound to [`HostConfig::bind`] (the well-known port) with `SO_REUSEADDR`,
///   so every node of the host can bind it. Linux gives each broadcast and multicast
///   datagram to every socket so bound, but a unicast datagram to one of them only (the
///   last bound), so this socket only listens, for other nodes' fan-out.
/// - `unicast`, on a port of its own ([`HostConfig::unicast_bind`]). Everything is sent
///   from it, so peers learn this address and their unicast replies (acknowledgements,
///   challenges, retransmissions) reach this node and no other.
///
/// The engine identifies peers by session, not address, so it needs to know none of this.
struct Sockets {
    unicast: udp::Socket,
    discovery: Option<udp::Socket>,
}

/// Which of [`Sockets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Unicast,
    Discovery,
}

impl Sockets {
    fn get(&self, which: Which) -> Option<&udp::Socket> {
        match which {
            Which::Unicast => Some(&self.unicast),
            Which::Discovery => self.discovery.as_ref(),
        }
    }

    /// Waits until a socket may have a datagram (or an error) to read; cancel safe.
    async fn readable(&self) -> (Which, std::io::Result<()>) {
        match &self.discovery {
            None => (Which::Unicast, self.unicast.readable().await),
            // Not biased: neither socket can starve the other.
            Some(d) => tokio::select! {
                r = self.unicast.readable() => (Which::Unicast, r),
                r = d.readable() => (Which::Discovery, r),
            },
        }
    }
}

/// What a socket is for, which decides how it is set up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Sends and receives everything (static peers, or a socket the caller bound).
    Single,
    /// Sends everything, receives unicast.
    Unicast,
    /// Receives broadcast and multicast on the shared port; sends nothing.
    Discovery,
}

/// Binds the node's sockets (see [`Sockets`]).
fn open(cfg: &HostConfig) -> Result<Sockets, HostError> {
    if !cfg.discovers() {
        let unicast = configure(bind_at(cfg.bind, false, "bind")?, cfg, Role::Single)?;
        return Ok(Sockets { unicast, discovery: None });
    }
    let discovery = configure(bind_at(cfg.bind, true, "bind")?, cfg, Role::Discovery)?;
    let unicast = bind_at(cfg.unicast_bind(), false, "bind unicast socket")?;
    let unicast = configure(unicast, cfg, Role::Unicast)?;
    Ok(Sockets { unicast, discovery: Some(discovery) })
}

/// Rebinds the socket `which` (after repeated receive errors).
fn reopen(cfg: &HostConfig, which: Which) -> Result<udp::Socket, HostError> {
    match which {
        Which::Unicast if cfg.discovers() => configure(
            bind_at(cfg.unicast_bind(), false, "bind unicast socket")?,
            cfg,
            Role::Unicast,
        ),
        Which::Unicast => configure(bind_at(cfg.bind, false, "bind")?, cfg, Role::Single),
        Which::Discovery => configure(bind_at(cfg.bind, true, "bind")?, cfg, Role::Discovery),
    }
}

/// A UDP socket bound to `addr`; `shared` sets `SO_REUSEADDR` so that every node of the
/// host can bind the discovery port. (`SO_REUSEPORT` is not needed for broadcast and
/// multicast to reach every such socket, and would require all of them to belong to one
/// user.) `op` names the bind in errors.
fn bind_at(
    addr: SocketAddr,
    shared: bool,
    op: &'static str,
) -> Result<std::net::UdpSocket, HostError> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(|e| HostError::network("socket", e))?;
    if shared {
        s.set_reuse_address(true).map_err(|e| HostError::network("SO_REUSEADDR", e))?;
    }
    s.bind(&addr.into()).map_err(|e| HostError::network(op, e))?;
    Ok(s.into())
}

/// Sets up a bound socket for its role: buffers, broadcast, multicast; then makes it
/// non-blocking and registers it ([`udp::Socket`]).
fn configure(
    socket: std::net::UdpSocket,
    cfg: &HostConfig,
    role: Role,
) -> Result<udp::Socket, HostError> {
    let s = socket2::SockRef::from(&socket);
    // Best effort: a smaller grant only means more drops under bursts.
    let _ = s.set_recv_buffer_size(RECV_BUFFER);
    if role != Role::Discovery {
        let _ = s.set_send_buffer_size(SEND_BUFFER);
    }
    let sends = role != Role::Discovery;
    let receives_groups = role != Role::Unicast;
    if sends && !cfg.effective_broadcast().is_empty() {
        socket.set_broadcast(true).map_err(|e| HostError::network("SO_BROADCAST", e))?;
    }
    match cfg.multicast {
        Some(IpAddr::V4(g)) => {
            if receives_groups {
                let iface = match cfg.bind.ip() {
                    IpAddr::V4(a) => a,
                    IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
                };
                socket
                    .join_multicast_v4(&g, &iface)
                    .map_err(|e| HostError::network("join multicast group", e))?;
            }
            if sends {
                socket
                    .set_multicast_ttl_v4(cfg.multicast_ttl)
                    .map_err(|e| HostError::network("multicast TTL", e))?;
            }
        }
        Some(IpAddr::V6(g)) => {
            if receives_groups {
                socket
                    .join_multicast_v6(&g, cfg.multicast_if)
                    .map_err(|e| HostError::network("join multicast group", e))?;
            }
            if sends && role == Role::Unicast && cfg.multicast_if != 0 {
                // The joining socket no longer sends: name the interface for the one that does.
                socket2::SockRef::from(&socket)
                    .set_multicast_if_v6(cfg.multicast_if)
                    .map_err(|e| HostError::network("multicast interface", e))?;
            }
        }
        None => {}
    }
    udp::Socket::new(socket).map_err(|e| HostError::network("register socket", e))
}

/// Converts the OS clocks into the core's `Instant` and Unix seconds.
struct Clock {
    base: tokio::time::Instant,
}
impl Clock {
    fn new() -> Self {
        Self { base: tokio::time::Instant::now() }
    }
    fn now(&self) -> nomq::Instant {
        nomq::Instant::from_micros(
            u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX),
        )
    }
    fn unix(&self) -> u32 {
        let s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        u32::try_from(s).unwrap_or(u32::MAX)
    }
    fn deadline(&self, t: nomq::Instant) -> tokio::time::Instant {
        let far = self.base + std::time::Duration::from_secs(86_400 * 365);
        self.base.checked_add(std::time::Duration::from_micros(t.total_micros())).unwrap_or(far)
    }
}

/// A handle to a running node; cheap to clone.
///
/// # Cancel safety
/// Every async method is cancel safe unless its own docs say otherwise: the queries
/// ([`Handle::stats`], [`Handle::peers`], [`Handle::subscribers`]) change nothing, and a
/// cancelled [`Handle::shutdown`] still stops the node if the request reached it.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    local: SocketAddr,
    discovery: Option<SocketAddr>,
}

impl Handle {
    /// The address this node sends from and receives unicast on: where peers reach it
    /// directly, and what they see as its address ([`PeerInfo::addr`]). With static peers
    /// only, the node's one socket ([`HostConfig::bind`]); with broadcast or multicast
    /// fan-out, its own unicast socket ([`HostConfig::unicast_port`], by default a port
    /// the system picked), not the shared port of [`Handle::discovery_addr`].
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The shared address this node receives broadcast and multicast fan-out on
    /// ([`HostConfig::bind`], bound with `SO_REUSEADDR` so that every node of the host
    /// can), or `None` for a node without broadcast or multicast (static peers only, or a
    /// socket given to [`NodeBuilder::socket`]).
    pub fn discovery_addr(&self) -> Option<SocketAddr> {
        self.discovery
    }

    /// Subscribes to a pattern (MQTT wildcards) and returns the stream of its messages.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped before it returns, no subscription is left
    /// behind (one the driver already made is dropped, and so unsubscribed, with the
    /// reply that carried it).
    ///
    /// # Errors
    /// [`HostError::Subscribe`] for an invalid pattern or a full table.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, HostError> {
        self.subscribe_mode(pattern, false).await
    }

    /// Subscribes like [`Handle::subscribe`], but the node acknowledges a QoS 1/2
    /// message to its publisher only once the application completed it: each such
    /// [`Message`] carries an [`Ack`] (see there). For end-to-end guarantees through
    /// this node, a bridge say, which acknowledges only what it passed on.
    ///
    /// # Cancel safety
    /// As [`Handle::subscribe`].
    ///
    /// # Errors
    /// As [`Handle::subscribe`].
    pub async fn subscribe_acked(&self, pattern: &str) -> Result<Subscription, HostError> {
        self.subscribe_mode(pattern, true).await
    }

    async fn subscribe_mode(&self, pattern: &str, acked: bool) -> Result<Subscription, HostError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscribe(pattern.to_string(), acked, tx))
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?
    }

    /// Publishes and waits for the outcome: at once for QoS 0 after sending; for QoS 1/2
    /// when every known subscriber acknowledged, or retransmissions gave up, or the TTL ran out.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the message: once it reached the driver it is
    /// published, retransmitted and finished as if awaited (its outbox slot is freed when
    /// it ends), and only the outcome is discarded. Before it reached the driver (the
    /// command queue was full), nothing was published.
    ///
    /// # Errors
    /// [`HostError::Publish`] when the engine refuses it (invalid channel, too large,
    /// outbox full), [`HostError::Closed`].
    pub async fn publish(
        &self,
        channel: &str,
        body: impl Into<Vec<u8>>,
        opts: PublishOptions,
    ) -> Result<Delivery, HostError> {
        // One command and one answer (the refusal or the outcome), so the caller wakes
        // once per message.
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::PublishWait(channel.to_string(), body.into(), opts, tx))
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?
    }

    /// Queues a publish and returns a receiver of its outcome without waiting for it
    /// (for pipelining many publishes).
    ///
    /// # Cancel safety
    /// As [`Handle::publish`]: a cancelled call may still have queued the message. Dropping
    /// the returned receiver only discards the outcome.
    ///
    /// # Errors
    /// As [`Handle::publish`].
    pub async fn start_publish(
        &self,
        channel: &str,
        body: impl Into<Vec<u8>>,
        opts: PublishOptions,
    ) -> Result<oneshot::Receiver<Delivery>, HostError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Publish(channel.to_string(), body.into(), opts, tx))
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?
    }

    /// Publishes many QoS 0 messages to one channel in one round trip to the driver
    /// (high-rate streams). Returns how many were queued: fewer than `bodies.len()` when
    /// the outbox stayed full after sending what it held; retry the rest.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled call may have queued any prefix of `bodies`, and the
    /// count is lost with it.
    ///
    /// # Errors
    /// [`HostError::Config`] for QoS 1/2 (their outcomes need [`Handle::publish`]);
    /// [`HostError::Publish`] for a refusal other than a full outbox; [`HostError::Closed`].
    pub async fn publish_batch(
        &self,
        channel: &str,
        bodies: Vec<Vec<u8>>,
        opts: PublishOptions,
    ) -> Result<usize, HostError> {
        if opts.qos != Qos::AtMostOnce {
            return Err(HostError::config(
                "qos",
                "publish_batch is for QoS 0; use publish for QoS 1/2",
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::PublishBatch(channel.to_string(), bodies, opts, tx))
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)?
    }

    /// Publishes a value as JSON.
    ///
    /// # Errors
    /// [`HostError::Codec`] or as [`Handle::publish`].
    pub async fn publish_json<T: serde::Serialize>(
        &self,
        channel: &str,
        value: &T,
        opts: PublishOptions,
    ) -> Result<Delivery, HostError> {
        let body = serde_json::to_vec(value).map_err(|e| HostError::Codec(e.into()))?;
        self.publish(channel, body, opts).await
    }

    /// Publishes a value as postcard (compact binary, what an MCU peer decodes best).
    ///
    /// # Errors
    /// [`HostError::Codec`] or as [`Handle::publish`].
    pub async fn publish_postcard<T: serde::Serialize>(
        &self,
        channel: &str,
        value: &T,
        opts: PublishOptions,
    ) -> Result<Delivery, HostError> {
        let body = postcard::to_stdvec(value).map_err(|e| HostError::Codec(e.into()))?;
        self.publish(channel, body, opts).await
    }

    /// Counters.
    ///
    /// # Errors
    /// [`HostError::Closed`].
    pub async fn stats(&self) -> Result<HostStats, HostError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Stats(tx)).await.map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)
    }

    /// The peers the node knows now.
    ///
    /// # Errors
    /// [`HostError::Closed`].
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, HostError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Peers(tx)).await.map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)
    }

    /// The known peers subscribed to `channel` now: those a QoS 1/2 publish to it would
    /// wait for.
    ///
    /// # Errors
    /// [`HostError::Closed`].
    pub async fn subscribers(&self, channel: &str) -> Result<Vec<SessionId>, HostError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscribers(channel.to_string(), tx))
            .await
            .map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)
    }

    /// This node's current session (a new one after every start, and when its packet
    /// counter runs out).
    ///
    /// # Errors
    /// [`HostError::Closed`].
    pub async fn session(&self) -> Result<SessionId, HostError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Session(tx)).await.map_err(|_| HostError::Closed)?;
        rx.await.map_err(|_| HostError::Closed)
    }

    /// Waits until at least `n` known peers subscribe to `channel`, checking every 10 ms.
    /// Returns the subscribers, or `None` if `timeout` passed first.
    ///
    /// # Errors
    /// [`HostError::Closed`].
    pub async fn wait_for_subscribers(
        &self,
        channel: &str,
        n: usize,
        timeout: std::time::Duration,
    ) -> Result<Option<Vec<SessionId>>, HostError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let subs = self.subscribers(channel).await?;
            if subs.len() >= n {
                return Ok(Some(subs));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops the driver after sending what is queued to send now. Pending QoS 1/2
    /// publishes resolve with [`HostError::Closed`].
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The messages of one subscription, as a `futures_core::Stream` (or with [`Subscription::recv`]).
///
/// Dropping it always unsubscribes, on any runtime and however full the node's command
/// queue is: the drop sends its id on a separate unbounded queue that the driver drains
/// at the start of every turn of its loop (each subscription sends one id, once, so that queue never holds
/// more than the subscriptions that were dropped). The engine withdraws the pattern (and
/// announces the UNSUBSCRIBE) once no other [`Subscription`] of this node uses it.
///
/// A live subscription keeps its node running.
#[derive(Debug)]
pub struct Subscription {
    rx: stream::StreamRx<Message>,
    pattern: String,
    id: SubId,
    unsub: mpsc::UnboundedSender<SubId>,
    _node: Option<mpsc::Sender<Command>>,
}

impl Subscription {
    /// The next message; `None` once the node shut down.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is removed from the stream only when this returns it.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Waits for at least one message, then appends to `buf` every message already
    /// waiting, up to `limit` (one wake-up and one call for a burst). Returns how many
    /// were appended: 0 only once the node shut down (or for a `limit` of 0).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is removed from the stream unless this returns it.
    pub async fn recv_many(&mut self, buf: &mut Vec<Message>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }
    /// The pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Fails only when the driver has stopped, and with it the engine.
        let _ = self.unsub.send(self.id);
    }
}

/// One subscription as the driver holds it.
struct Sub {
    id: SubId,
    pattern: String,
    tx: stream::StreamTx<Message>,
    /// Its QoS 1/2 messages carry an [`Ack`] ([`Handle::subscribe_acked`]).
    acked: bool,
}

struct Driver {
    node: Box<HostNode>,
    sockets: Sockets,
    cfg: HostConfig,
    fanout: Vec<SocketAddr>,
    clock: Clock,
    subs: Vec<Sub>,
    next_sub: SubId,
    /// Given to each new [`Subscription`]: the way its drop reaches the driver, and what
    /// keeps the driver running while it lives (weak here, so the driver still stops
    /// once every handle and subscription is gone).
    unsub: mpsc::UnboundedSender<SubId>,
    /// Given to each [`Ack`]: how its completion reaches the driver.
    acks: mpsc::UnboundedSender<(nomq::node::DeliveryToken, bool)>,
    cmd: mpsc::WeakSender<Command>,
    stream_depth: usize,
    pending: HashMap<nomq::node::PublishHandle, Waiter>,
    /// Until when the driver polls instead of sleeping while outcomes are awaited:
    /// [`HostConfig::spin`] after the latest publish whose outcome is awaited.
    spin_until: Option<tokio::time::Instant>,
    stats: HostStats,
    /// The transmit loop shared with the embedded adapters (target resolution, counts).
    flush: nomq::node::Flush,
    events: Option<mpsc::Sender<NodeEvent>>,
    /// The state file, when there is one, and the buffer its state is exported into
    /// (allocated once).
    store: Option<(FileStore, Vec<u8>)>,
    /// Messages delivered by the engine, with a reserved slot in each stream they go to,
    /// waiting for the next flush (and the save of the state that records them).
    held: Vec<(Message, Slots)>,
    /// Where, in the datagram being read (at the addresses `datagram`), the channel name
    /// and body of each message it delivered lie: one entry per message pushed to `held`
    /// during [`Driver::on_datagram`].
    spans: Vec<Spans>,
    datagram: core::ops::Range<usize>,
}

/// Where a delivered message's channel name and body lie within its datagram.
#[derive(Clone, Debug)]
struct Spans {
    channel: Span,
    body: Span,
}

#[derive(Clone, Debug)]
enum Span {
    /// These bytes of the datagram.
    In(core::ops::Range<usize>),
    /// Bytes from elsewhere (the engine hands out none today), copied on their own.
    Copied(bytes::Bytes),
}

impl Span {
    fn new(datagram: core::ops::Range<usize>, s: &[u8]) -> Self {
        let at = s.as_ptr().addr();
        if datagram.start <= at && at + s.len() <= datagram.end {
            let start = at - datagram.start;
            Self::In(start..start + s.len())
        } else {
            Self::Copied(bytes::Bytes::copy_from_slice(s))
        }
    }

    fn range(&self) -> Option<&core::ops::Range<usize>> {
        match self {
            Self::In(r) => Some(r),
            Self::Copied(_) => None,
        }
    }

    /// These bytes, a slice of `shared`, which holds the datagram's bytes from offset `at`.
    fn take(&self, shared: &bytes::Bytes, at: usize) -> bytes::Bytes {
        match self {
            Self::In(r) => shared.slice(r.start - at..r.end - at),
            Self::Copied(b) => b.clone(),
        }
    }
}

impl Spans {
    /// `datagram` is the address range of the datagram being read.
    fn new(datagram: core::ops::Range<usize>, channel: &str, body: &[u8]) -> Self {
        Self {
            channel: Span::new(datagram.clone(), channel.as_bytes()),
            body: Span::new(datagram, body),
        }
    }

    /// The smallest range of the datagram covering every span in it, if any is.
    fn cover(spans: &[Self]) -> Option<core::ops::Range<usize>> {
        let mut all = spans.iter().flat_map(|s| [s.channel.range(), s.body.range()]).flatten();
        let first = all.next()?.clone();
        Some(all.fold(first, |c, r| c.start.min(r.start)..c.end.max(r.end)))
    }

    /// The message's channel name and body, slices of `shared`, which holds the
    /// datagram's bytes from offset `at`.
    fn take(&self, shared: &bytes::Bytes, at: usize) -> (bytestring::ByteString, bytes::Bytes) {
        // The engine checked the name is UTF-8 (these are the same bytes): never empty.
        let channel =
            bytestring::ByteString::try_from(self.channel.take(shared, at)).unwrap_or_default();
        (channel, self.body.take(shared, at))
    }
}

/// Datagrams read between flushes in a batch: well under the engine's control queue
/// ([`nomq::node::CONTROL_QUEUE`]).
const ACKS_PER_FLUSH: usize = nomq::node::CONTROL_QUEUE / 2;
/// Most datagrams read, from both sockets together, in one turn of the driver loop.
const RECV_BATCH: usize = 64;

/// What the driver loop does next.
enum Next {
    Continue,
    Stop,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut unsub: mpsc::UnboundedReceiver<SubId>,
        mut acks: mpsc::UnboundedReceiver<(nomq::node::DeliveryToken, bool)>,
    ) {
        let mut rbuf = udp::RecvBatch::new(self.node.max_datagram_len());
        let mut tbuf = udp::SendBatch::new(self.node.max_datagram_len());
        // One timer for the driver's life, moved only to an earlier instant. Registering a
        // timer before the runtime's next wake-up makes tokio wake its own thread (an
        // eventfd write and one more epoll_wait), which a timer made anew every turn did
        // at every publish; a timer left earlier than the engine needs fires,
        // `handle_timeout` finds nothing due, and the next turn arms it again.
        let sleep = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<tokio::time::Instant> = None;
        loop {
            // Dropped subscriptions first, whatever else is ready: no message is delivered
            // (and acknowledged) to a stream nobody reads once its drop was seen.
            while let Ok(id) = unsub.try_recv() {
                self.drop_sub(id);
            }
            self.flush(&mut tbuf).await;
            let deadline = self.node.poll_timeout().map(|t| self.clock.deadline(t));
            if let Some(d) = deadline
                && armed.is_none_or(|a| d < a)
            {
                sleep.as_mut().reset(d);
                armed = Some(d);
            }
            let spin = self.spinning();
            // Not biased: under a flood of datagrams the timers and commands still get
            // their turn (tokio picks among the ready branches at random).
            let next = tokio::select! {
                Some(id) = unsub.recv() => {
                    self.drop_sub(id);
                    Next::Continue
                }
                Some(a) = acks.recv() => {
                    self.on_ack(a);
                    Next::Continue
                }
                cmd = rx.recv() => {
                    // A subscription dropped before this command was sent (say, before a
                    // shutdown) is already queued: withdraw it first, or a shutdown would
                    // stop the node without announcing the UNSUBSCRIBE.
                    while let Ok(id) = unsub.try_recv() {
                        self.drop_sub(id);
                    }
                    match cmd {
                        Some(c) => self.on_command(c, &mut tbuf).await,
                        None => Next::Stop,
                    }
                }
                (which, r) = self.sockets.readable() => {
                    // The batch below reads what is ready.
                    if let Err(e) = r {
                        self.on_recv_error(which, e).await;
                    }
                    Next::Continue
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    let now = self.clock.now();
                    self.node.handle_timeout(now);
                    Next::Continue
                }
                // Ready at the runtime's next turn, once it has run the other tasks and
                // polled the sockets without blocking (a datagram that came meanwhile
                // readies the branch above instead).
                () = tokio::task::yield_now(), if spin.is_some() => Next::Continue,
            };
            if let Some(start) = spin {
                self.stats.spun += start.elapsed();
            }
            if matches!(next, Next::Stop) {
                return;
            }
            self.receive_batch(&mut rbuf, &mut tbuf).await;
            while let Ok(id) = unsub.try_recv() {
                self.drop_sub(id);
            }
            // Bounded: the engine withholds at most 512 acknowledgements.
            while let Ok(a) = acks.try_recv() {
                self.on_ack(a);
            }
            while let Ok(c) = rx.try_recv() {
                if let Next::Stop = self.on_command(c, &mut tbuf).await {
                    return;
                }
            }
        }
    }

    /// Reads whatever the sockets hold, up to [`RECV_BATCH`] datagrams, without re-arming
    /// the timer each time, taking turns between the two sockets so that a flood on one
    /// leaves the other its share; each datagram is charged to the task budget so readers
    /// on this thread run. Each turn reads a batch ([`udp::RecvBatch`]: one `recvmmsg` on
    /// Linux). A datagram makes at most one ack; flushing every [`ACKS_PER_FLUSH`] keeps the
    /// engine's small control queue from overflowing (an ack it cannot queue costs a
    /// retransmission) without a poll per datagram. No allocation per datagram.
    async fn receive_batch(&mut self, rbuf: &mut udp::RecvBatch, tbuf: &mut udp::SendBatch) {
        // A socket is done for this turn once it would block (or failed).
        let mut done = [false, self.sockets.discovery.is_none()];
        let (mut read, mut unflushed) = (0, 0);
        // Each pass reads at least one datagram, marks a socket done, or skips a done one,
        // so the loop ends within 2 × (RECV_BATCH + 2) passes.
        for which in [Which::Unicast, Which::Discovery].into_iter().cycle() {
            if read >= RECV_BATCH || done.iter().all(|&d| d) {
                break;
            }
            let slot = usize::from(which == Which::Discovery);
            if done[slot] {
                continue;
            }
            let Some(socket) = self.sockets.get(which) else {
                done[slot] = true;
                continue;
            };
            let room = (RECV_BATCH - read).min(ACKS_PER_FLUSH - unflushed);
            let n = match rbuf.recv(socket, room) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    done[slot] = true;
                    continue;
                }
                Err(e) => {
                    done[slot] = true;
                    self.on_recv_error(which, e).await;
                    continue;
                }
            };
            for i in 0..n {
                let (datagram, r) = rbuf.get(i);
                if r.truncated {
                    self.flush.truncated();
                    tracing::debug!(from = %r.from, "datagram longer than max_datagram_len: dropped");
                } else {
                    self.on_datagram(datagram, r.from);
                }
                tokio::task::consume_budget().await;
            }
            // The socket was empty after these and its readiness is cleared: no read that
            // would find nothing, before the answers go out or after.
            if rbuf.drained() {
                done[slot] = true;
            }
            read += n.max(1);
            unflushed += n.max(1);
            if unflushed >= ACKS_PER_FLUSH {
                unflushed = 0;
                self.flush(tbuf).await;
            }
        }
    }

    /// Delivers a message to every matching subscription, or to none: if one matching
    /// stream is full, the engine takes the message back unacknowledged (the publisher
    /// retransmits QoS 1/2), so nothing is acknowledged and then lost.
    fn on_datagram(&mut self, buf: &mut [u8], from: SocketAddr) {
        // One clock reading for the packets of a datagram: they arrived together.
        let now = self.clock.now();
        let first = self.held.len();
        self.datagram = buf.as_ptr().addr()..buf.as_ptr().addr() + buf.len();
        self.spans.clear();
        for packet in nomq::node::Packets::new(buf) {
            self.on_packet(now, packet, from);
        }
        // Packets are opened in place: once all are, the plaintext the delivered messages
        // need is copied once, and each message takes its slices of that copy.
        if self.held.len() == first {
            return;
        }
        let range = Spans::cover(&self.spans).unwrap_or(0..0);
        let shared = bytes::Bytes::copy_from_slice(&buf[range.clone()]);
        for ((message, _), spans) in self.held[first..].iter_mut().zip(&self.spans) {
            (message.channel, message.body) = spans.take(&shared, range.start);
        }
    }

    fn on_packet(&mut self, now: nomq::Instant, buf: &mut [u8], from: SocketAddr) {
        let Some(m) = self.node.handle_packet(now, Addr::from(from), buf) else { return };
        let name = m.name;
        // The engine matched the patterns already: `m.subscriptions` names them by index.
        let (node, matched) = (&self.node, m.subscriptions);
        let matches =
            |sub: &Sub| matched.iter().any(|i| node.subscription(i) == Some(sub.pattern.as_str()));
        // A slot in every matching stream, or the message is refused.
        let mut permits = Slots::default();
        let mut full = None;
        let mut closed = None;
        for sub in self.subs.iter_mut().filter(|s| matches(s)) {
            match sub.tx.reserve() {
                Ok(()) => permits.push((sub.id, sub.acked)),
                Err(stream::Full::Full) => full = Some(sub.pattern.clone()),
                Err(stream::Full::Closed) => closed = Some(sub.id),
            }
        }
        let deliver = full.is_none() && !permits.is_empty();
        let mut ack = None;
        if deliver && m.qos != Qos::AtMostOnce && permits.iter().any(|p| p.1) {
            // An acknowledgement the application completes: withheld until then.
            if let Some(token) = self.node.defer_delivery() {
                let abandoned = std::sync::atomic::AtomicBool::new(false);
                let inner = AckInner { token, abandoned, tx: self.acks.clone() };
                ack = Some(Ack { inner: std::sync::Arc::new(inner), done: false });
            } else {
                self.unreserve(&permits);
                self.node.refuse_delivery();
                self.stats.acks_full += 1;
                if self.stats.acks_full.is_power_of_two() {
                    tracing::warn!(
                        refused = self.stats.acks_full,
                        "too many messages awaiting their acknowledgement: refused (publishers retransmit)"
                    );
                }
                return;
            }
        }
        if !deliver {
            let qos = m.qos;
            self.unreserve(&permits);
            self.node.refuse_delivery();
            if let Some(pattern) = full {
                let n = if qos == Qos::AtMostOnce {
                    self.stats.app_dropped += 1;
                    self.stats.app_dropped
                } else {
                    self.stats.app_deferred += 1;
                    self.stats.app_deferred
                };
                // Power-of-two spacing keeps a flood from flooding the log too.
                if n.is_power_of_two() {
                    tracing::warn!(%pattern, ?qos, refused = n, "subscription stream full: message refused (reader too slow; QoS 1/2 publishers retransmit, QoS 0 is lost)");
                }
            }
        } else {
            // Filled in from the datagram's shared buffer once all its packets are read.
            self.spans.push(Spans::new(self.datagram.clone(), name.as_str(), m.body));
            let message = Message {
                channel: bytestring::ByteString::new(),
                body: bytes::Bytes::new(),
                from,
                session: m.session,
                msg: m.msg,
                qos: m.qos,
                retained: m.retained,
                ttl: m.ttl,
                dup: m.dup,
                ack,
            };
            // Handed over at the next flush, after its acknowledgement left (and, with a
            // state file, once the state recording it is saved): the slots are reserved,
            // so it cannot be refused by then, and the reader's wake-up does not delay
            // the acknowledgement.
            self.held.push((message, permits));
        }
        if let Some(id) = closed {
            self.drop_sub(id);
        }
    }

    /// Gives back the places reserved for a message that is not delivered.
    fn unreserve(&mut self, permits: &Slots) {
        for (id, _) in permits.iter() {
            if let Some(sub) = self.subs.iter_mut().find(|s| s.id == *id) {
                sub.tx.unreserve();
            }
        }
    }

    /// An [`Ack`] was completed or abandoned by all its holders.
    fn on_ack(&mut self, (token, complete): (nomq::node::DeliveryToken, bool)) {
        if !complete {
            self.stats.acks_abandoned += 1;
            self.node.abandon_delivery(token);
        } else if self.node.complete_delivery(self.clock.now(), token).is_err() {
            self.stats.acks_late += 1;
            tracing::debug!(msg = ?token.message(), "acknowledgement completed after its message expired");
        }
    }

    /// Forgets subscription `id`; withdraws its pattern from the engine once no other
    /// subscription uses it.
    fn drop_sub(&mut self, id: SubId) {
        let Some(i) = self.subs.iter().position(|s| s.id == id) else { return };
        let sub = self.subs.swap_remove(i);
        if !self.subs.iter().any(|s| s.pattern == sub.pattern) {
            self.node.unsubscribe(&sub.pattern);
        }
    }

    async fn publish_batch(
        &mut self,
        channel: &str,
        bodies: Vec<Vec<u8>>,
        opts: PublishOptions,
        tbuf: &mut udp::SendBatch,
    ) -> Result<usize, HostError> {
        let mut queued = 0;
        // One clock reading per batch (they were handed over together), read again after
        // each flush.
        let mut now = self.clock.now();
        for body in &bodies {
            let mut r = self.node.publish(now, channel, body, opts);
            if r == Err(nomq::node::PublishError::OutboxFull) {
                // Send what the outbox holds (QoS 0 entries leave once sent), then retry.
                self.flush(tbuf).await;
                now = self.clock.now();
                r = self.node.publish(now, channel, body, opts);
            }
            match r {
                Ok(_) => queued += 1,
                Err(nomq::node::PublishError::OutboxFull) => break,
                Err(e) if queued == 0 => return Err(HostError::Publish(e)),
                Err(_) => break,
            }
        }
        Ok(queued)
    }

    async fn on_recv_error(&mut self, which: Which, e: std::io::Error) {
        self.stats.recv_errors += 1;
        tracing::warn!(socket = ?which, error = %e, "receive error; recovering");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // A socket that keeps failing is replaced; the engine keeps subscriptions and
        // pending messages, so nothing is lost but what was in flight.
        if self.stats.recv_errors.is_multiple_of(16) {
            match reopen(&self.cfg, which) {
                Ok(s) => {
                    tracing::info!(socket = ?which, "socket rebound");
                    match which {
                        Which::Unicast => self.sockets.unicast = s,
                        Which::Discovery => self.sockets.discovery = Some(s),
                    }
                }
                Err(e) => tracing::error!(error = %e, "rebinding failed"),
            }
        }
    }

    async fn on_command(&mut self, c: Command, tbuf: &mut udp::SendBatch) -> Next {
        let now = self.clock.now();
        let now_t = tokio::time::Instant::now();
        match c {
            Command::Subscribe(pattern, acked, reply) => {
                let r = self.node.subscribe(&pattern).map_err(HostError::Subscribe).map(|()| {
                    let (tx, rx) = stream::stream(self.stream_depth);
                    let id = self.next_sub;
                    self.next_sub += 1;
                    self.subs.push(Sub { id, pattern: pattern.clone(), tx, acked });
                    Subscription {
                        rx,
                        pattern,
                        id,
                        unsub: self.unsub.clone(),
                        _node: self.cmd.upgrade(),
                    }
                });
                // A caller that gave up waiting drops the reply, and with it the
                // Subscription, whose Drop unsubscribes: nothing is left behind.
                let _ = reply.send(r);
            }
            Command::Publish(channel, body, opts, reply) => {
                // Its caller waits for the outcome, success included.
                let opts = opts.quiet(false);
                let r =
                    self.node.publish(now, &channel, &body, opts).map_err(HostError::Publish).map(
                        |h| {
                            let (tx, rx) = oneshot::channel();
                            self.pending.insert(h, Waiter::Outcome(tx));
                            self.spin_from(now_t);
                            rx
                        },
                    );
                let _ = reply.send(r);
            }
            Command::PublishWait(channel, body, opts, reply) => {
                match self.node.publish(now, &channel, &body, opts.quiet(false)) {
                    Ok(h) => {
                        self.pending.insert(h, Waiter::Result(reply));
                        self.spin_from(now_t);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(HostError::Publish(e)));
                    }
                }
            }
            Command::PublishBatch(ch, bodies, opts, reply) => {
                // Nobody waits for these outcomes: the engine need not report the
                // messages that were sent (each report moves a few hundred bytes).
                let r = self.publish_batch(&ch, bodies, opts.quiet(true), tbuf).await;
                let _ = reply.send(r);
            }
            Command::Stats(reply) => {
                let mut s = self.stats.clone();
                s.engine = self.node.stats().clone();
                s.recv_truncated = self.flush.stats().truncated;
                let _ = reply.send(s);
            }
            Command::Peers(reply) => {
                let peers = self
                    .node
                    .peers()
                    .map(|(session, addr, subscriptions)| PeerInfo {
                        session,
                        addr: SocketAddr::from(addr),
                        subscriptions,
                    })
                    .collect();
                let _ = reply.send(peers);
            }
            Command::Session(reply) => {
                let _ = reply.send(self.node.session());
            }
            Command::Subscribers(channel, reply) => {
                let _ = reply.send(self.node.subscribers(&channel).map(|(s, _)| s).collect());
            }
            Command::Shutdown(done) => {
                self.flush(tbuf).await;
                let _ = done.send(());
                return Next::Stop;
            }
        }
        Next::Continue
    }

    /// Whether the driver should poll rather than sleep now ([`HostConfig::spin`]), and
    /// since when: an application waits for the outcome of a publish made less than the
    /// spin ago. Waking a thread asleep in `epoll_wait` on an idle core takes an
    /// interrupt, tens of microseconds on a virtual machine; a driver that yields to the
    /// runtime instead lets it run its other tasks and poll the sockets without blocking,
    /// and sees the acknowledgement as soon as the kernel queues it.
    fn spinning(&mut self) -> Option<tokio::time::Instant> {
        let until = self.spin_until?;
        let now = tokio::time::Instant::now();
        if now >= until || self.pending.is_empty() {
            self.spin_until = None;
            return None;
        }
        Some(now)
    }

    /// An outcome is awaited from `now` on: spin for it (see [`Driver::spinning`]).
    fn spin_from(&mut self, now: tokio::time::Instant) {
        if !self.cfg.spin.is_zero() {
            self.spin_until = Some(now + self.cfg.spin);
        }
    }

    /// With a state file: saves the state if the engine needs it saved. A failed save
    /// keeps the held messages and returns `false` (the engine sends nothing meanwhile)
    /// for the next turn.
    fn commit(&mut self) -> bool {
        let Some((store, buf)) = &mut self.store else { return true };
        if self.node.state_unsaved() {
            let saved = self
                .node
                .export_state(self.clock.now(), buf)
                .map_err(|e| tracing::error!(error = %e, "state export failed"))
                .and_then(|len| store.save(&buf[..len]).map_err(|e| {
                    self.stats.save_errors += 1;
                    tracing::error!(error = %e, failures = self.stats.save_errors, "state not saved: acknowledgements held, retrying next turn");
                }));
            if saved.is_err() {
                self.node.mark_unsaved();
                return false;
            }
        }
        true
    }

    /// Saves the state (with a state file), sends what the engine has to send, then
    /// hands the messages delivered since the last flush to their streams. The datagrams
    /// leave in batches ([`udp::SendBatch`]: one `sendmmsg` on Linux for up to
    /// [`udp::BATCH`]), every destination of a fan-out pointing at one copy.
    async fn flush(&mut self, tbuf: &mut udp::SendBatch) {
        let saved = self.commit();
        loop {
            let routes = self.fanout.as_slice();
            let d = match self.flush.more(routes) {
                Some(d) => d,
                None => {
                    let Some(buf) = tbuf.fresh() else {
                        self.send_batch(tbuf).await;
                        continue;
                    };
                    let now = self.clock.now();
                    let Some(d) = self.flush.next(&mut *self.node, routes, now, buf) else {
                        break;
                    };
                    tbuf.wrote();
                    d
                }
            };
            if tbuf.is_full() {
                self.send_batch(tbuf).await;
            }
            tbuf.queue(d.len, d.to);
        }
        self.send_batch(tbuf).await;
        if saved {
            for (message, permits) in self.held.drain(..) {
                hand_over(&mut self.subs, message, permits);
            }
            // One batch per stream: a reader is woken once per flush.
            for sub in &mut self.subs {
                sub.tx.send();
            }
        }
        while let Some(e) = self.node.poll_event() {
            match e {
                Event::Outcome(o) if !o.retained_reply => {
                    // A publisher that stopped waiting dropped its receiver: fine.
                    if let Some(w) = self.pending.remove(&o.handle) {
                        w.send(Delivery::from(o));
                    }
                }
                other => self.forward_event(other),
            }
        }
    }

    /// Sends the queued datagrams, always from the unicast socket (replies come back to
    /// this node alone), and counts what the socket refused.
    async fn send_batch(&mut self, tbuf: &mut udp::SendBatch) {
        let (flush, stats) = (&mut self.flush, &mut self.stats);
        tbuf.send(&self.sockets.unicast, |to, e| {
            flush.sent(e.is_none());
            if let Some(e) = e {
                stats.send_errors += 1;
                tracing::debug!(%to, error = %e, "send failed");
            }
        })
        .await;
    }

    fn forward_event(&mut self, e: NodeEvent) {
        tracing::debug!(event = ?e, "node event");
        let Some(tx) = &self.events else { return };
        if tx.try_send(e).is_err() {
            self.stats.events_dropped += 1;
            if self.stats.events_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.stats.events_dropped,
                    "event channel full: events dropped (read it faster or make it larger)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// The texts and sources of `HostError`, as they were before thiserror wrote them.
    #[test]
    fn host_error_texts_and_sources() {
        let io = || std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        let cases: Vec<(HostError, &str, bool)> = vec![
            (HostError::config("NOMQ_X", "bad"), "configuration: NOMQ_X: bad", false),
            (HostError::Keys("no file".into()), "keyring: no file", true),
            (HostError::network("bind", io()), "bind: in use", true),
            (HostError::Codec("not utf-8".into()), "payload: not utf-8", true),
            (
                HostError::Store { path: "/s".into(), source: "torn".into() },
                "state file /s: torn",
                true,
            ),
            (HostError::Closed, "node has shut down", false),
        ];
        for (e, text, has_source) in cases {
            assert_eq!(e.to_string(), text);
            assert_eq!(e.source().is_some(), has_source, "{e}");
        }
        let e = HostError::Publish(nomq::node::PublishError::OutboxFull);
        assert!(e.to_string().starts_with("publish refused: "), "{e}");
        assert!(e.source().is_some());
        let f = store::FileStoreError { path: "/s".into(), op: "fsync", source: io() };
        assert_eq!(f.to_string(), "state file /s: fsync: in use");
        assert!(f.source().is_some());
    }

    #[test]
    fn names_resolve_by_the_bind_family() {
        let v4: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let v6: SocketAddr = "[::1]:7001".parse().unwrap();
        let bind4: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let bind6: SocketAddr = "[::1]:0".parse().unwrap();
        assert_eq!(pick("peers", "localhost:7001", &[v6, v4], bind4).unwrap(), v4);
        assert_eq!(pick("peers", "localhost:7001", &[v6, v4], bind6).unwrap(), v6);
        let other: SocketAddr = "127.0.0.2:7001".parse().unwrap();
        let e = pick("peers", "twice:7001", &[v4, other], bind4).unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:7001 and 127.0.0.2:7001") && e.contains("give one"), "{e}");
        let e = pick("peers", "v6only:7001", &[v6], bind4).unwrap_err().to_string();
        assert!(e.contains("[::1]:7001"), "{e}");
    }

    #[tokio::test]
    async fn builder_takes_host_names_and_reports_bad_ones() {
        let ring = || Keyring::new(&nomq::KeyPair::new([1; 32], [2; 32])).unwrap();
        let node = NodeBuilder::new(ring())
            .bind("localhost:0")
            .peers(["localhost:7001"])
            .start()
            .await
            .unwrap();
        assert!(node.local_addr().ip().is_loopback());
        node.shutdown().await;
        let e = NodeBuilder::new(ring()).bind("no-such-host.invalid:1").start().await.unwrap_err();
        assert!(matches!(&e, HostError::Config { field, .. } if field == "bind"), "{e}");
        let e = NodeBuilder::new(ring())
            .bind("127.0.0.1:0")
            .peers(["127.0.0.1"])
            .start()
            .await
            .unwrap_err();
        assert!(matches!(&e, HostError::Config { field, .. } if field == "peers"), "{e}");
    }

    /// The spans of a datagram's messages cover the least of it, each message's slices
    /// of the one copy are its own bytes, and a slice from outside the datagram is
    /// copied on its own.
    #[test]
    fn spans_slice_one_copy_of_the_datagram() {
        let datagram = b"..a/bONE....c/dTWO..".to_vec();
        let other = b"x/yELSEWHERE".to_vec();
        let at = datagram.as_ptr().addr()..datagram.as_ptr().addr() + datagram.len();
        let text = |r: core::ops::Range<usize>| std::str::from_utf8(&datagram[r]).unwrap();
        let spans = [
            Spans::new(at.clone(), text(2..5), &datagram[5..8]),
            Spans::new(at.clone(), text(12..15), &datagram[15..18]),
            Spans::new(at.clone(), std::str::from_utf8(&other[..3]).unwrap(), &other[3..]),
        ];
        assert!(matches!(spans[2].body, Span::Copied(_)), "{:?}", spans[2]);
        let range = Spans::cover(&spans).unwrap();
        assert_eq!(range, 2..18);
        let shared = bytes::Bytes::copy_from_slice(&datagram[range.clone()]);
        let want = [("a/b", &b"ONE"[..]), ("c/d", b"TWO"), ("x/y", b"ELSEWHERE")];
        let inside = shared.as_ptr().addr()..shared.as_ptr().addr() + shared.len();
        for (spans, (channel, body)) in spans.iter().zip(want) {
            let (c, b) = spans.take(&shared, range.start);
            assert_eq!((&*c, &b[..]), (channel, body));
            assert_eq!(inside.contains(&b.as_ptr().addr()), channel != "x/y");
        }
        assert_eq!(Spans::cover(&spans[2..]), None);
    }

    /// A subscription made with `subscribe_acked` holds back the acknowledgement until
    /// the application completes it; an abandoned one is delivered again.
    #[tokio::test]
    async fn acked_subscription_withholds_the_ack_until_completed() {
        let ring = || Keyring::new(&nomq::KeyPair::new([1; 32], [2; 32])).unwrap();
        let sa = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sb = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (aa, ab) = (sa.local_addr().unwrap(), sb.local_addr().unwrap());
        let a = NodeBuilder::new(ring()).socket(sa).peers([ab]).start().await.unwrap();
        let b = NodeBuilder::new(ring()).socket(sb).peers([aa]).start().await.unwrap();
        let mut sub = b.subscribe_acked("t/#").await.unwrap();
        let mut plain = b.subscribe("t/x").await.unwrap();
        let wait = std::time::Duration::from_secs(30);
        assert!(a.wait_for_subscribers("t/x", 1, wait).await.unwrap().is_some());
        let opts = PublishOptions::qos(Qos::AtLeastOnce).ttl(60);
        let mut outcome = a.start_publish("t/x", b"one".to_vec(), opts).await.unwrap();
        let m = tokio::time::timeout(wait, sub.recv()).await.unwrap().unwrap();
        let p = tokio::time::timeout(wait, plain.recv()).await.unwrap().unwrap();
        assert_eq!((&m.body[..], m.ttl), (&b"one"[..], 60));
        assert!(p.ack.is_none(), "a plain subscription holds no acknowledgement");
        // Not acknowledged while the application holds it (retransmissions come and go).
        let early = tokio::time::timeout(std::time::Duration::from_secs(2), &mut outcome).await;
        assert!(early.is_err(), "acknowledged before completion: {early:?}");
        let st = b.stats().await.unwrap();
        assert!(st.engine.drops(nomq::node::DropReason::DeferredDuplicate) >= 1, "{st:?}");
        m.ack.expect("QoS 1 on an acked subscription").complete();
        let d = tokio::time::timeout(wait, outcome).await.unwrap().unwrap();
        assert_eq!(d.status, Status::Acknowledged);
        // Abandoned: delivered again, then acknowledged.
        let outcome = a.start_publish("t/x", b"two".to_vec(), opts).await.unwrap();
        let m = tokio::time::timeout(wait, sub.recv()).await.unwrap().unwrap();
        drop(m);
        let again = tokio::time::timeout(wait, sub.recv()).await.unwrap().unwrap();
        assert_eq!(again.body, &b"two"[..]);
        again.ack.unwrap().complete();
        let d = tokio::time::timeout(wait, outcome).await.unwrap().unwrap();
        assert_eq!(d.status, Status::Acknowledged);
        assert_eq!(b.stats().await.unwrap().acks_abandoned, 1);
        a.shutdown().await;
        b.shutdown().await;
    }
}
