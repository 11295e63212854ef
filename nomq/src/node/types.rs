//! Public types of the engine: configuration, options, events, errors, counters.

use crate::addr::Addr;
use crate::body::MessageId;
use crate::channel::{ChannelError, ChannelName};
use crate::node::limits::LockoutConfig;
use crate::time::{Duration, Instant};
use crate::wire::{Qos, SessionId};
use core::fmt;

/// How the node treats packet timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ClockMode {
    /// Clocks are synchronised (NTP/SNTP) to within `skew`. Packets whose timestamp is
    /// further than `skew` from the local clock are refused; TTLs count from the sender's
    /// timestamp.
    Synced {
        /// Accepted clock difference (default 30 s).
        skew: Duration,
    },
    /// No synchronised clock (a fresh MCU without SNTP). Timestamps are not compared
    /// with the local clock; TTLs count from local receipt. Replay protection is the same
    /// as under `Synced` (per-session windows, and a challenge for every session not in
    /// the peer table), so nothing sent before this node started is accepted; what is
    /// lost is expiry by the sender's clock: a TTL counts from receipt.
    Unsynced,
}

/// Engine configuration. [`Config::default`] documents every default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Config {
    /// Largest ciphertext accepted or sent, bytes (default 1376: a packet then fits a
    /// 1472-byte UDP payload, i.e. one Ethernet frame).
    pub max_payload: usize,
    /// Largest datagram this node accepts, bytes (default 1472: one Ethernet frame),
    /// announced in its heartbeats; at most 65 507. The adapter's receive buffer must be
    /// at least [`Node::max_datagram_len`](super::Node::max_datagram_len). When several
    /// packets are ready for one destination, the node coalesces them into one datagram
    /// up to the smaller of this and what that destination announced (for a fan-out: every
    /// known peer); a lone packet always leaves alone, at once. Below
    /// `2 ×` the smallest packet, nothing is coalesced.
    pub max_datagram: usize,
    /// Interval between heartbeats (default 5 s).
    pub heartbeat_interval: Duration,
    /// A peer silent for longer is dropped (default 15 s; never below 3 × the peer's own
    /// announced heartbeat interval).
    pub liveness_timeout: Duration,
    /// Challenges sent, and challenges answered, per rate window (default 100 each): both
    /// answer packets that need not be fresh, so both have a budget.
    pub challenge_limit: u32,
    /// Timestamp policy (default `Synced { skew: 30 s }`).
    pub clock: ClockMode,
    /// TTL of a publish that does not set one, seconds (default 60).
    pub default_ttl: u16,
    /// First retransmission delay (default 200 ms); doubles per attempt, ±25 % jitter.
    pub retransmit_initial: Duration,
    /// Longest retransmission delay (default 3 s).
    pub retransmit_max: Duration,
    /// Retransmission rounds before giving up (default 8). Never past the TTL.
    pub max_attempts: u8,
    /// Rate-limit window (default 1 s).
    pub rate_window: Duration,
    /// Packets accepted per peer per window (default 1000).
    pub rate_limit: u32,
    /// MAC checks per rate window spent on datagrams from sessions not in the peer
    /// table (default 2000): the most CPU unauthenticated traffic can cost, whatever
    /// addresses and ports it uses. Known peers' datagrams are not counted or limited.
    pub unverified_limit: u32,
    /// Authentication-failure lockout of a host (any port), applied to datagrams from
    /// unknown sessions only (default 5 failures, 1 s doubling to 300 s).
    pub lockout: LockoutConfig,
    /// QoS 2 flow-control window (default 32): at most this many QoS 2 messages in flight
    /// counted from the oldest unfinished one. A receiver holds at most this many QoS 2
    /// states per publisher, so size its `Q` capacity as window × publishers.
    pub qos2_window: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_payload: 1376,
            max_datagram: 1472,
            heartbeat_interval: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(15),
            clock: ClockMode::Synced { skew: Duration::from_secs(30) },
            challenge_limit: 100,
            default_ttl: 60,
            retransmit_initial: Duration::from_millis(200),
            retransmit_max: Duration::from_secs(3),
            max_attempts: 8,
            rate_window: Duration::from_secs(1),
            rate_limit: 1000,
            unverified_limit: 2000,
            lockout: LockoutConfig::default(),
            qos2_window: 32,
        }
    }
}

/// Where a publish goes first. Retransmissions always go by unicast to each known
/// subscriber that has not acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Destination {
    /// The adapter's fan-out: broadcast, its multicast group, or its static peer list.
    #[default]
    All,
    /// One multicast group.
    Group(Addr),
    /// One peer.
    Peer(Addr),
}

/// Options of one publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PublishOptions {
    /// Delivery guarantee.
    pub qos: Qos,
    /// Keep as the channel's retained value (an empty body clears it).
    pub retain: bool,
    /// Seconds the message lives; `None` takes [`Config::default_ttl`]. Must be ≥ 1.
    pub ttl: Option<u16>,
    /// 0 (lowest) to 15 (highest): higher leaves the outbox first.
    pub priority: u8,
    /// First destination.
    pub destination: Destination,
    /// No [`Event::Outcome`](super::Event::Outcome) when the publish ends as asked:
    /// [`Status::Sent`](super::Status::Sent) at QoS 0,
    /// [`Status::Acknowledged`](super::Status::Acknowledged) at QoS 1/2. Every other
    /// ending (no subscribers, expired, unacknowledged) is still reported. For streams
    /// whose successes nobody waits for: an outcome is a few hundred bytes moved through
    /// the event queue per message.
    pub quiet: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Builders: start from [`PublishOptions::new`] (QoS 0) or [`PublishOptions::qos`] and
/// chain. Every one is a `const fn`, so options can live in a `const`.
///
/// ```
/// use nomq::node::{Destination, PublishOptions};
/// use nomq::{Addr, Qos};
///
/// const ALARM: PublishOptions =
///     PublishOptions::qos(Qos::AtLeastOnce).retain(true).ttl(300).priority(15);
/// assert_eq!(ALARM.qos, Qos::AtLeastOnce);
/// assert_eq!((ALARM.retain, ALARM.ttl, ALARM.priority), (true, Some(300), 15));
/// assert_eq!(ALARM.destination, Destination::All);
///
/// let peer = Addr::V4([192, 0, 2, 7], 8888);
/// let direct = PublishOptions::new().with_qos(Qos::ExactlyOnce).to(Destination::Peer(peer));
/// assert_eq!(direct.destination, Destination::Peer(peer));
/// let same = PublishOptions {
///     qos: Qos::ExactlyOnce,
///     destination: Destination::Peer(peer),
///     ..PublishOptions::default()
/// };
/// assert_eq!(direct, same);
/// ```
impl PublishOptions {
    /// QoS 0, not retained, the default TTL ([`Config::default_ttl`]), priority 0, to
    /// [`Destination::All`]: the same as [`PublishOptions::default`].
    #[must_use]
    pub const fn new() -> Self {
        Self {
            qos: Qos::AtMostOnce,
            retain: false,
            ttl: None,
            priority: 0,
            destination: Destination::All,
            quiet: false,
        }
    }
    /// Options with this QoS and defaults otherwise (to change the QoS of options already
    /// built, chain [`PublishOptions::with_qos`]).
    #[must_use]
    pub const fn qos(qos: Qos) -> Self {
        Self::new().with_qos(qos)
    }
    /// These options with QoS `qos`.
    #[must_use]
    pub const fn with_qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }
    /// Keeps the message as the channel's retained value (an empty body clears it).
    #[must_use]
    pub const fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
    /// Lives `seconds` instead of [`Config::default_ttl`]. `publish` refuses 0 with
    /// [`PublishError::InvalidTtl`].
    #[must_use]
    pub const fn ttl(mut self, seconds: u16) -> Self {
        self.ttl = Some(seconds);
        self
    }
    /// Outbox priority, 0 (lowest, the default) to 15 (highest). `publish` refuses a
    /// higher value with [`PublishError::InvalidPriority`].
    #[must_use]
    pub const fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }
    /// Reports only an ending other than the one asked for ([`PublishOptions::quiet`]).
    #[must_use]
    pub const fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }
    /// Sends the first copy to `destination` instead of the adapter's fan-out
    /// ([`Destination::All`]).
    #[must_use]
    pub const fn to(mut self, destination: Destination) -> Self {
        self.destination = destination;
        self
    }
}

/// Identifies a publish locally until its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PublishHandle(pub u32);

/// Why `publish` refused a message. Nothing was queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PublishError {
    /// Caller: the channel name is invalid.
    InvalidChannel(ChannelError),
    /// Caller: name and body exceed what one packet or one outbox slot holds.
    TooLarge {
        /// Name + body bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Caller: TTL 0.
    InvalidTtl,
    /// Caller: priority above 15.
    InvalidPriority,
    /// Resource: the outbox is full; retry after outcomes arrive.
    OutboxFull,
    /// Resource: no room for another retained channel.
    RetainedFull,
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidChannel(e) => write!(f, "invalid channel: {e}"),
            Self::TooLarge { len, max } => {
                write!(f, "message of {len} bytes (name + body) exceeds the limit of {max}")
            }
            Self::InvalidTtl => f.write_str("TTL must be at least 1 second"),
            Self::InvalidPriority => f.write_str("priority must be 0 to 15"),
            Self::OutboxFull => f.write_str("outbox full: wait for pending publishes to complete"),
            Self::RetainedFull => f.write_str("retained store full"),
        }
    }
}
impl core::error::Error for PublishError {}

/// Why `subscribe` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SubscribeError {
    /// Caller: the pattern is invalid.
    InvalidPattern(ChannelError),
    /// Resource: the subscription table is full.
    Full,
}
impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidPattern(e) => write!(f, "invalid pattern: {e}"),
            Self::Full => f.write_str("subscription table full"),
        }
    }
}
impl core::error::Error for SubscribeError {}

/// How a publish ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Status {
    /// QoS 0: transmitted once.
    Sent,
    /// QoS 1/2: every known subscriber acknowledged (`missing` is empty).
    Acknowledged,
    /// QoS 1/2: retransmissions exhausted or peers lost; `missing` lists who never acked.
    Unacknowledged,
    /// The TTL ran out first; `missing` lists who had not acked.
    Expired,
    /// QoS 1/2: no subscriber was known and none acknowledged.
    NoSubscribers,
}

/// The one final report of a publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome<const P: usize> {
    /// The handle `publish` returned.
    pub handle: PublishHandle,
    /// The message id, if it was ever transmitted.
    pub msg: Option<MessageId>,
    /// QoS of the publish.
    pub qos: Qos,
    /// How it ended.
    pub status: Status,
    /// Sessions that acknowledged (for QoS 2: completed PUBCOMP).
    pub acked: heapless::Vec<SessionId, P>,
    /// Known subscribers that did not.
    pub missing: heapless::Vec<SessionId, P>,
    /// A retained value this node sent on its own to a subscriber that joined later
    /// (its handle was never returned by `publish`).
    pub retained_reply: bool,
}

/// Why a peer left the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LostReason {
    /// Silent past the liveness timeout.
    Silent,
    /// Evicted to make room for another peer.
    Evicted,
    /// Its node announced a new session that replaces it (counter rollover).
    Replaced,
}

/// Something the application may want to know. Drained with `poll_event`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<const P: usize> {
    /// A publish ended.
    Outcome(Outcome<P>),
    /// A new peer session authenticated.
    PeerJoined {
        /// Its session.
        session: SessionId,
        /// Its address.
        addr: Addr,
    },
    /// A peer left the table.
    PeerLost {
        /// Its session.
        session: SessionId,
        /// Its last address.
        addr: Addr,
        /// Why.
        reason: LostReason,
    },
    /// A peer exceeded the rate limit; its excess is being dropped (reported once per window).
    RateLimited {
        /// Its session.
        session: SessionId,
        /// Its address.
        addr: Addr,
    },
    /// An address failing authentication is ignored until `until`.
    LockedOut {
        /// The address.
        addr: Addr,
        /// End of the lockout.
        until: Instant,
    },
    /// This node started a new session (its packet counter was about to wrap).
    SessionRenewed {
        /// The old session.
        old: SessionId,
        /// The new session.
        new: SessionId,
    },
}

/// A message delivered to this node, borrowed from the datagram buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// Channel name.
    pub name: ChannelName<'a>,
    /// Body.
    pub body: &'a [u8],
    /// Sender's address.
    pub from: Addr,
    /// Sender's session.
    pub session: SessionId,
    /// Message id (stable across retransmissions).
    pub msg: MessageId,
    /// QoS it was published with.
    pub qos: Qos,
    /// It is a retained value.
    pub retained: bool,
    /// The TTL its publisher gave it, seconds (a bridge passes it on as MQTT's Message
    /// Expiry Interval).
    pub ttl: u16,
    /// It is a retransmission (QoS 1 may deliver a message more than once).
    pub dup: bool,
    /// Which local subscriptions it matched, so an adapter can route it without matching
    /// patterns again.
    pub subscriptions: SubscriptionSet,
}

/// A set of local subscriptions, by their index in
/// [`Node::subscriptions`](crate::Node::subscriptions) (the first 64). Indices hold until
/// the next subscribe or unsubscribe.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SubscriptionSet(pub u64);

impl SubscriptionSet {
    /// Whether subscription `i` is in the set.
    pub const fn contains(self, i: usize) -> bool {
        i < 64 && self.0 & (1 << i) != 0
    }
    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The indices in the set, ascending.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            let i = bits.trailing_zeros();
            bits &= bits.wrapping_sub(1);
            (i < 64).then_some(i as usize)
        })
    }
}

/// Where a datagram from `poll_transmit` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Target {
    /// The adapter's fan-out (broadcast, multicast group, or static peer list).
    Fanout,
    /// A multicast group.
    Group(Addr),
    /// One address.
    Unicast(Addr),
}

/// A datagram written by `poll_transmit` into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[must_use]
pub struct Transmit {
    /// Where to send it.
    pub target: Target,
    /// Bytes written at the start of the buffer.
    pub len: usize,
}

macro_rules! drop_reasons {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        /// Why a datagram, or an action it asked for, was dropped. Every drop is counted.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum DropReason { $($(#[$m])* $name),* }
        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name),*];
            /// Number of reasons.
            pub const COUNT: usize = Self::ALL.len();
            /// A stable snake-case name.
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$name => stringify!($name)),* }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than the smallest packet.
    TooShort,
    /// Not `NM`.
    BadMagic,
    /// Not version 4.
    UnsupportedVersion,
    /// Unknown packet type.
    UnknownType,
    /// Reserved QoS 3.
    InvalidQos,
    /// Payload length not a non-zero multiple of 16.
    PayloadNotBlockMultiple,
    /// Length field disagrees with the datagram.
    LengthMismatch,
    /// Payload above the configured maximum.
    TooLarge,
    /// MAC verification failed under every key.
    BadMac,
    /// Bad PKCS#7 padding after a valid MAC.
    BadPadding,
    /// From an unknown session, and its host is locked out after repeated
    /// authentication failures (no MAC computed).
    LockedOut,
    /// From an unknown session, and the budget of MAC checks for unknown sessions per
    /// rate window ([`Config::unverified_limit`]) is spent (no MAC computed).
    Throttled,
    /// Our own packet, looped back.
    OwnPacket,
    /// Session id 0.
    ZeroSession,
    /// Timestamp outside the freshness window.
    Stale,
    /// TTL elapsed.
    Expired,
    /// Packet id already seen.
    Replay,
    /// Packet id below the replay window.
    ReplayTooOld,
    /// From a session not in the peer table, which has not proved itself live yet: it
    /// was challenged (or its challenge is on the way); only a CHALLENGE passes until
    /// it answers.
    Unverified,
    /// Bound to another member (its sealed recipient is not this node's session).
    NotForUs,
    /// A challenge not answered: the budget of echoes per rate window is spent.
    ChallengeLimited,
    /// A PUBREL from another sender, or under another key scope, than the message it
    /// names.
    WrongSender,
    /// Over the peer's rate limit.
    RateLimited,
    /// Plaintext body malformed.
    MalformedBody,
    /// Channel id disagrees with the name or pattern inside.
    ChannelMismatch,
    /// Sealed under keys of another scope than the channel requires.
    ScopeMismatch,
    /// A publish for a channel nobody here subscribes to.
    NotSubscribed,
    /// No room for QoS 2 receive state (the publisher will retransmit).
    Qos2Full,
    /// QoS 2 duplicate suppressed.
    Qos2Duplicate,
    /// An ack for no pending message.
    StrayAck,
    /// Control queue full: an ack or announcement was not queued (peers retransmit).
    ControlQueueFull,
    /// No outbox room to send a retained value to a new subscriber.
    RetainedDeferred,
    /// Peer announced more subscriptions than the table holds.
    PeerSubsFull,
    /// `poll_transmit` was given a buffer too small for the packet.
    TxBufferTooSmall,
    /// The application could not take a delivered message (its queue was full) and
    /// refused it with [`Node::refuse_delivery`](crate::Node::refuse_delivery): no
    /// PUBACK/PUBREC was sent, so a QoS 1/2 publisher retransmits it; a QoS 0 message
    /// is lost (and counted here).
    DeliveryRefused,
    /// A retransmission of a message whose acknowledgement the application deferred
    /// ([`Node::defer_delivery`](crate::Node::defer_delivery)) and has not completed:
    /// neither delivered again nor acknowledged.
    DeferredDuplicate,
    /// A deferred delivery nobody completed before its message expired: its
    /// acknowledgement was never sent (the publisher gave up, or reports it missing).
    DeferralExpired,
}

/// Counters of the node. Every dropped datagram is counted under exactly one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Packets handed to `handle_packet` (a coalesced datagram counts once per packet).
    pub rx_datagrams: u64,
    /// Messages returned to the application.
    pub delivered: u64,
    /// Datagrams produced by `poll_transmit`.
    pub tx_datagrams: u64,
    /// Of which retransmissions (PUBLISH with dup, repeated PUBREL).
    pub retransmissions: u64,
    /// Informational events (not outcomes) that found the event queue full and were
    /// discarded. Outcomes are never discarded: they wait in their outbox slot.
    pub events_dropped: u64,
    drops: [u64; DropReason::COUNT],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            rx_datagrams: 0,
            delivered: 0,
            tx_datagrams: 0,
            retransmissions: 0,
            events_dropped: 0,
            drops: [0; DropReason::COUNT],
        }
    }
}

impl Stats {
    /// Drops counted under `r`.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }
    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    pub(crate) fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }
    /// Each reason with a non-zero count.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.drops(r))).filter(|&(_, n)| n > 0)
    }
}
