//! The sans-IO engine: one [`Node`] is one NoMQ participant.
//!
//! # Driving a node
//! The adapter owns the socket and the clock and runs this loop (quinn-proto style):
//! 1. Create with [`Node::new`] (config, keyring, a 32-byte random seed, the monotonic
//!    `now` and the Unix time).
//! 2. On every datagram: [`Node::handle_datagram`]`(now, from, &mut buf)`; a returned
//!    [`Message`] borrows the buffer (decrypted in place).
//! 3. After every input: drain [`Node::poll_transmit`] into a buffer of at least
//!    [`Node::max_datagram_len`] bytes and send each [`Transmit`]; drain
//!    [`Node::poll_event`].
//! 4. Sleep until [`Node::poll_timeout`], then call [`Node::handle_timeout`]. Spurious
//!    or early calls are harmless.
//!
//! `now` must never go backwards between calls. The node never reads a clock, never
//! blocks, never allocates, and never panics on any datagram.
//!
//! # Capacities (const generics, with defaults)
//! | param | default | what |
//! |---|---|---|
//! | `P` | 32 | peers (sessions) tracked; also the most targets one publish tracks |
//! | `S` | 20 | local subscriptions; also subscriptions remembered per peer |
//! | `O` | 50 | outbox entries (queued or awaiting acks) |
//! | `R` | 16 | retained channels held |
//! | `Q` | 32 | QoS 2 receive states |
//! | `L` | 64 | lockout table entries |
//! | `M` | 256 | bytes of name + body stored per outbox / retained entry |

mod drbg;
pub mod limits;
mod types;

pub use limits::{LockoutConfig, REPLAY_WINDOW};
pub use types::*;

use crate::addr::Addr;
use crate::body::{self, Ack, Heartbeat, MessageId, Publish, Subscription};
use crate::channel::{ChannelId, ChannelName, MAX_NAME_LEN, Pattern};
use crate::envelope::{self, OpenError};
use crate::keys::{KeyLookup, ScopeIndex};
use crate::time::{Duration, Instant};
use crate::wire::{Flags, HEADER_LEN, Header, PacketId, PacketType, Qos, SessionId, WireError};
use drbg::Drbg;
use heapless::{Deque, String, Vec};
use limits::{Lockouts, RateWindow, ReplayCheck, ReplayWindow};

/// Event queue depth. Outcomes wait in their outbox slot while it is full.
pub const EVENT_QUEUE: usize = 8;
/// Control queue depth (acks and announcements waiting to be sent).
pub const CONTROL_QUEUE: usize = 16;
/// Fan-out repeats of a QoS 1/2 publish while no subscriber is known, before it ends
/// with [`Status::NoSubscribers`]. Covers the start-up race between a first publish and
/// the subscribers' announcements.
const NO_SUBSCRIBER_ROUNDS: u8 = 2;
/// Evicted sessions remembered for replay refusal.
const EVICTED_RING: usize = 16;
/// Own past sessions remembered (to drop looped-back packets).
const OWN_SESSIONS: usize = 4;
/// Shortest spacing of "early" heartbeats sent when a new peer shows up.
const EARLY_HEARTBEAT: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug)]
struct PeerSub {
    id: ChannelId,
    wildcard: bool,
    /// Confirmed by the heartbeat round in progress.
    fresh: bool,
}

#[derive(Debug)]
struct Peer<const S: usize> {
    session: SessionId,
    addr: Addr,
    last_seen: Instant,
    liveness: Duration,
    replay: ReplayWindow,
    rate: RateWindow,
    rate_reported: Instant,
    last_ts: u32,
    subs: Vec<PeerSub, S>,
    digest: u32,
    sync_digest: u32,
    sync_seen: u64,
    /// Highest QoS 2 low-water mark announced by this session.
    qos2_low: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TState {
    AwaitAck,
    AwaitRec,
    AwaitComp,
    Done,
    Lost,
}

#[derive(Clone, Copy, Debug)]
struct TargetPeer {
    session: SessionId,
    state: TState,
}

#[derive(Debug)]
struct Entry<const P: usize, const M: usize> {
    handle: PublishHandle,
    msg: Option<MessageId>,
    name_len: u8,
    data: Vec<u8, M>,
    channel_id: ChannelId,
    scope: ScopeIndex,
    qos: Qos,
    retain: bool,
    priority: u8,
    dest: Destination,
    expires: Instant,
    next_at: Instant,
    attempts: u8,
    /// Index of the next target to send to in the current retransmission round.
    cursor: usize,
    in_round: bool,
    targets: Vec<TargetPeer, P>,
    /// QoS 2 sequence number (flow-control window), set on first transmission.
    seq: u32,
    /// Whether targets were fixed at queue time (retained replies).
    preset: bool,
}

impl<const P: usize, const M: usize> Entry<P, M> {
    fn name(&self) -> &str {
        // Stored from a validated ChannelName.
        core::str::from_utf8(&self.data[..usize::from(self.name_len)]).unwrap_or("")
    }
    fn pending(&self) -> bool {
        self.targets
            .iter()
            .any(|t| matches!(t.state, TState::AwaitAck | TState::AwaitRec | TState::AwaitComp))
    }
}

#[derive(Debug)]
struct Retained<const M: usize> {
    name_len: u8,
    data: Vec<u8, M>,
    channel_id: ChannelId,
    scope: ScopeIndex,
    qos: Qos,
    expires: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxState {
    Received,
    Released,
}

#[derive(Clone, Copy, Debug)]
struct Qos2Rx {
    msg: MessageId,
    state: RxState,
    expires: Instant,
}

#[derive(Clone, Debug)]
enum Control {
    Ack { kind: PacketType, msg: MessageId, to: Addr, channel_id: ChannelId, scope: ScopeIndex },
    Sub { unsubscribe: bool, pattern: String<MAX_NAME_LEN>, id: ChannelId },
}

struct LocalSub {
    pattern: String<MAX_NAME_LEN>,
    id: ChannelId,
}

/// One NoMQ participant. See the [module docs](self) for the driving loop and capacities.
pub struct Node<
    K: KeyLookup,
    const P: usize = 32,
    const S: usize = 20,
    const O: usize = 50,
    const R: usize = 16,
    const Q: usize = 32,
    const L: usize = 64,
    const M: usize = 256,
> {
    config: Config,
    keys: K,
    rng: Drbg,
    session: SessionId,
    next_packet: u32,
    own_sessions: Deque<SessionId, OWN_SESSIONS>,
    unix_base: u32,
    instant_base: Instant,
    next_handle: u32,

    peers: Vec<Peer<S>, P>,
    wildcards: Vec<(ChannelId, String<MAX_NAME_LEN>), P>,
    /// Sessions that left the table, with the highest packet id seen from each.
    evicted: Deque<(SessionId, u32, u32), EVICTED_RING>,
    floor_ts: u32,

    subs: Vec<LocalSub, S>,
    next_heartbeat: Instant,
    heartbeat_cursor: Option<usize>,
    last_early_heartbeat: Option<Instant>,

    outbox: Vec<Entry<P, M>, O>,
    /// Sequence number the next QoS 2 message gets (flow-control window).
    qos2_next_seq: u32,
    retained: Vec<Retained<M>, R>,
    qos2: Vec<Qos2Rx, Q>,
    control: Deque<Control, CONTROL_QUEUE>,
    events: Deque<Event<P>, EVENT_QUEUE>,
    lockouts: Lockouts<L>,
    stats: Stats,
    /// What the message `handle_datagram` just returned committed this node to, so that
    /// [`Node::refuse_delivery`] can take it back. Cleared by every other input.
    last_delivery: Option<Delivered>,
}

/// The commitments of the last delivered message.
#[derive(Clone, Copy, Debug)]
struct Delivered {
    msg: MessageId,
    /// Its PUBACK/PUBREC is the last entry of the control queue.
    ack_queued: bool,
    /// A QoS 2 receive state was created for it.
    qos2_state: bool,
}

fn wire_reason(e: WireError) -> DropReason {
    match e {
        WireError::TooShort => DropReason::TooShort,
        WireError::BadMagic => DropReason::BadMagic,
        WireError::UnsupportedVersion(_) => DropReason::UnsupportedVersion,
        WireError::UnknownType(_) => DropReason::UnknownType,
        WireError::InvalidQos => DropReason::InvalidQos,
        WireError::PayloadNotBlockMultiple => DropReason::PayloadNotBlockMultiple,
        WireError::LengthMismatch => DropReason::LengthMismatch,
        WireError::TooLarge => DropReason::TooLarge,
    }
}

fn digest_of(id: &ChannelId) -> u32 {
    u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]])
}

impl<
    K,
    const P: usize,
    const S: usize,
    const O: usize,
    const R: usize,
    const Q: usize,
    const L: usize,
    const M: usize,
> Node<K, P, S, O, R, Q, L, M>
where
    K: KeyLookup,
{
    /// Creates a node.
    ///
    /// `seed` must come from a CSPRNG (OS or chip RNG): it keys the generator of IVs and
    /// session ids. `unix_time` is the wall clock in Unix seconds (see [`ClockMode`]).
    pub fn new(config: Config, keys: K, seed: [u8; 32], now: Instant, unix_time: u32) -> Self {
        let mut rng = Drbg::new(seed);
        let session = Self::fresh_session(&mut rng, SessionId(0));
        Self {
            config,
            keys,
            rng,
            session,
            next_packet: config.first_packet_id.max(1),
            own_sessions: Deque::new(),
            unix_base: unix_time,
            instant_base: now,
            next_handle: 1,
            peers: Vec::new(),
            wildcards: Vec::new(),
            evicted: Deque::new(),
            floor_ts: 0,
            subs: Vec::new(),
            next_heartbeat: now,
            heartbeat_cursor: None,
            last_early_heartbeat: None,
            outbox: Vec::new(),
            qos2_next_seq: 0,
            retained: Vec::new(),
            qos2: Vec::new(),
            control: Deque::new(),
            events: Deque::new(),
            lockouts: Lockouts::new(),
            stats: Stats::default(),
            last_delivery: None,
        }
    }

    fn fresh_session(rng: &mut Drbg, old: SessionId) -> SessionId {
        loop {
            let s = rng.next_u32();
            if s != 0 && s != old.0 {
                return SessionId(s);
            }
        }
    }

    /// This node's current session id.
    pub fn session(&self) -> SessionId {
        self.session
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The keyring.
    pub fn keys(&self) -> &K {
        &self.keys
    }
    /// The keyring, to rotate keys. Channel ids change with the network keys: resubscribe
    /// (or wait for the next heartbeat) after rotating them.
    pub fn keys_mut(&mut self) -> &mut K {
        &mut self.keys
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Known peers: session, address, number of subscriptions.
    pub fn peers(&self) -> impl Iterator<Item = (SessionId, Addr, usize)> + '_ {
        self.peers.iter().map(|p| (p.session, p.addr, p.subs.len()))
    }
    /// Known peers subscribed to `channel` (exact name or a matching wildcard): the
    /// sessions a QoS 1/2 publish to it would wait for now. An invalid name has none.
    pub fn subscribers<'a>(
        &'a self,
        channel: &'a str,
    ) -> impl Iterator<Item = (SessionId, Addr)> + 'a {
        let name = ChannelName::new(channel).ok();
        let id = name.map(|n| self.keys.channel_id(n.as_str()));
        self.peers.iter().filter_map(move |p| match (name, &id) {
            (Some(n), Some(id)) if self.peer_subscribes(p, n, id) => Some((p.session, p.addr)),
            _ => None,
        })
    }
    /// Entries in the outbox (queued or awaiting acknowledgement).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }
    /// The largest datagram this node produces or accepts.
    pub fn max_datagram_len(&self) -> usize {
        HEADER_LEN + self.config.max_payload + crate::wire::MAC_LEN
    }
    /// Resets the wall clock (after an SNTP sync, say).
    pub fn set_unix_time(&mut self, now: Instant, unix_time: u32) {
        self.unix_base = unix_time;
        self.instant_base = now;
    }
    fn unix_now(&self, now: Instant) -> u32 {
        let secs = (now - self.instant_base).total_secs();
        self.unix_base.saturating_add(u32::try_from(secs).unwrap_or(u32::MAX))
    }

    fn push_event(&mut self, e: Event<P>) {
        // Only outcomes must never be lost, and those wait in the outbox for room
        // (see `finish_ready`); informational events past a full queue are counted.
        if self.events.push_back(e).is_err() {
            self.stats.events_dropped += 1;
        }
    }

    // ------------------------------------------------------------------ subscriptions

    /// Subscribes to `pattern` (MQTT wildcards allowed) and announces it.
    /// Subscribing twice to the same pattern is a no-op.
    ///
    /// # Errors
    /// [`SubscribeError::InvalidPattern`], [`SubscribeError::Full`].
    pub fn subscribe(&mut self, pattern: &str) -> Result<(), SubscribeError> {
        let p = Pattern::new(pattern).map_err(SubscribeError::InvalidPattern)?;
        if self.subs.iter().any(|s| s.pattern == p.as_str()) {
            return Ok(());
        }
        let id = self.keys.channel_id(p.as_str());
        let pattern: String<MAX_NAME_LEN> =
            String::try_from(p.as_str()).map_err(|_| SubscribeError::Full)?;
        self.subs
            .push(LocalSub { pattern: pattern.clone(), id })
            .map_err(|_| SubscribeError::Full)?;
        if self.control.push_back(Control::Sub { unsubscribe: false, pattern, id }).is_err() {
            // The next heartbeat announces it anyway.
            self.stats.drop(DropReason::ControlQueueFull);
        }
        Ok(())
    }

    /// Withdraws a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, pattern: &str) -> bool {
        let Some(i) = self.subs.iter().position(|s| s.pattern == pattern) else { return false };
        let s = self.subs.swap_remove(i);
        if self
            .control
            .push_back(Control::Sub { unsubscribe: true, pattern: s.pattern, id: s.id })
            .is_err()
        {
            self.stats.drop(DropReason::ControlQueueFull);
        }
        true
    }

    /// Current subscription patterns.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subs.iter().map(|s| s.pattern.as_str())
    }

    fn subscribed_to(&self, name: ChannelName<'_>) -> bool {
        self.subs.iter().any(|s| Pattern::new(s.pattern.as_str()).is_ok_and(|p| p.matches(name)))
    }

    fn sub_digest(&self) -> u32 {
        self.subs.iter().fold(0, |d, s| d ^ digest_of(&s.id))
    }

    // ------------------------------------------------------------------ publishing

    /// Queues a message. It leaves through [`Node::poll_transmit`] in priority order;
    /// its end is reported once by an [`Event::Outcome`] with the returned handle.
    ///
    /// # Errors
    /// [`PublishError`]: nothing was queued.
    pub fn publish(
        &mut self,
        now: Instant,
        channel: &str,
        body: &[u8],
        opts: PublishOptions,
    ) -> Result<PublishHandle, PublishError> {
        let name = ChannelName::new(channel).map_err(PublishError::InvalidChannel)?;
        if opts.priority > 15 {
            return Err(PublishError::InvalidPriority);
        }
        let ttl = opts.ttl.unwrap_or(self.config.default_ttl);
        if ttl == 0 {
            return Err(PublishError::InvalidTtl);
        }
        let len = name.as_str().len() + body.len();
        let max =
            M.min(envelope::max_plaintext(self.config.max_payload) - body::PUBLISH_PREFIX_LEN);
        if len > max {
            return Err(PublishError::TooLarge { len, max });
        }
        if self.outbox.is_full() {
            return Err(PublishError::OutboxFull);
        }
        let channel_id = self.keys.channel_id(name.as_str());
        let scope = self.keys.scope_for(name);
        let expires = now + Duration::from_secs(u64::from(ttl));
        let mut data = Vec::new();
        // Both fit: len <= M checked above.
        let _ = data.extend_from_slice(name.as_str().as_bytes());
        let _ = data.extend_from_slice(body);
        if opts.retain {
            self.store_retained(name, &data, channel_id, scope, opts.qos, expires)?;
        }
        let handle = PublishHandle(self.next_handle);
        self.next_handle = self.next_handle.wrapping_add(1);
        let entry = Entry {
            handle,
            msg: None,
            name_len: name.as_str().len() as u8,
            data,
            channel_id,
            scope,
            qos: opts.qos,
            retain: opts.retain,
            priority: opts.priority,
            dest: opts.destination,
            expires,
            next_at: now,
            attempts: 0,
            cursor: 0,
            in_round: false,
            targets: Vec::new(),
            seq: 0,
            preset: false,
        };
        // Checked not full above.
        let _ = self.outbox.push(entry);
        Ok(handle)
    }

    fn store_retained(
        &mut self,
        name: ChannelName<'_>,
        data: &[u8],
        channel_id: ChannelId,
        scope: ScopeIndex,
        qos: Qos,
        expires: Instant,
    ) -> Result<(), PublishError> {
        let existing = self.retained.iter().position(|r| r.channel_id == channel_id);
        if data.len() == name.as_str().len() {
            // Empty body clears the retained value (MQTT convention).
            if let Some(i) = existing {
                self.retained.swap_remove(i);
            }
            return Ok(());
        }
        let mut d = Vec::new();
        let _ = d.extend_from_slice(data);
        let r = Retained {
            name_len: name.as_str().len() as u8,
            data: d,
            channel_id,
            scope,
            qos,
            expires,
        };
        match existing {
            Some(i) => self.retained[i] = r,
            None => self.retained.push(r).map_err(|_| PublishError::RetainedFull)?,
        }
        Ok(())
    }

    /// Sends this node's retained values matching `pattern` to a peer that just subscribed.
    fn serve_retained(&mut self, now: Instant, pattern: Pattern<'_>, peer: usize) {
        let (session, addr) = (self.peers[peer].session, self.peers[peer].addr);
        for i in 0..self.retained.len() {
            let r = &self.retained[i];
            if r.expires <= now {
                continue;
            }
            let name = core::str::from_utf8(&r.data[..usize::from(r.name_len)]).unwrap_or("");
            let Ok(n) = ChannelName::new(name) else { continue };
            if !pattern.matches(n) {
                continue;
            }
            if r.qos != Qos::AtMostOnce && self.join_original(now, i, session) {
                continue;
            }
            if self.outbox.is_full() {
                self.stats.drop(DropReason::RetainedDeferred);
                return;
            }
            let r = &self.retained[i];
            let mut targets = Vec::new();
            if r.qos != Qos::AtMostOnce {
                let state =
                    if r.qos == Qos::AtLeastOnce { TState::AwaitAck } else { TState::AwaitRec };
                let _ = targets.push(TargetPeer { session, state });
            }
            let mut data = Vec::new();
            let _ = data.extend_from_slice(&r.data);
            let handle = PublishHandle(self.next_handle);
            self.next_handle = self.next_handle.wrapping_add(1);
            let e = Entry {
                handle,
                msg: None,
                name_len: r.name_len,
                data,
                channel_id: r.channel_id,
                scope: r.scope,
                qos: r.qos,
                retain: true,
                priority: 15,
                dest: Destination::Peer(addr),
                expires: r.expires,
                next_at: now,
                attempts: 0,
                cursor: 0,
                in_round: false,
                targets,
                seq: 0,
                preset: true,
            };
            let _ = self.outbox.push(e);
        }
    }

    /// If the publish that set retained value `i` is still in the outbox (QoS 1/2, being
    /// retried), makes `session` one of its targets instead of sending a second copy
    /// under another message id: the late subscriber receives the value once, and its
    /// acknowledgement counts in the original publish's outcome. Returns whether it did.
    fn join_original(&mut self, now: Instant, i: usize, session: SessionId) -> bool {
        let r = &self.retained[i];
        let Some(e) = self
            .outbox
            .iter_mut()
            .find(|e| !e.preset && e.retain && e.channel_id == r.channel_id && e.data == r.data)
        else {
            return false;
        };
        if e.msg.is_some() && !e.targets.iter().any(|t| t.session == session) {
            let state = if e.qos == Qos::AtLeastOnce { TState::AwaitAck } else { TState::AwaitRec };
            if e.targets.push(TargetPeer { session, state }).is_err() {
                return false;
            }
            e.next_at = e.next_at.min(now);
        }
        // Not yet sent: its first transmission collects this subscriber as a target.
        true
    }

    // ------------------------------------------------------------------ receiving

    /// Processes one datagram from `from`. Returns the message it carried, if it is a
    /// publish this node subscribes to that is delivered now (decrypted in `buf`).
    /// Everything else (acks, announcements, drops) updates state and counters.
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        from: Addr,
        buf: &'a mut [u8],
    ) -> Option<Message<'a>> {
        self.last_delivery = None;
        self.stats.rx_datagrams += 1;
        if self.lockouts.is_locked(&from, now) {
            self.stats.drop(DropReason::LockedOut);
            return None;
        }
        let (header, scope, generation) =
            match envelope::verify(&self.keys, buf, self.config.max_payload) {
                Ok((h, s, g, _)) => (h, s, g),
                Err(OpenError::Wire(e)) => {
                    self.stats.drop(wire_reason(e));
                    return None;
                }
                Err(_) => {
                    self.stats.drop(DropReason::BadMac);
                    if let Some(until) = self.lockouts.fail(from, now, &self.config.lockout) {
                        self.push_event(Event::LockedOut { addr: from, until });
                    }
                    return None;
                }
            };
        self.lockouts.succeed(&from);

        let peer = self.admit(now, from, &header)?;

        // The key set that verified the MAC above (the keyring cannot change in between).
        let keys = self.keys.scope(scope).map(|sc| match generation {
            crate::keys::Generation::Current => sc.current,
            crate::keys::Generation::Previous => sc.previous.unwrap_or(sc.current),
        });
        let plaintext = match keys.map(|k| envelope::decrypt_verified(k, &header, buf)) {
            Some(Ok(p)) => p,
            Some(Err(OpenError::BadPadding)) => {
                self.stats.drop(DropReason::BadPadding);
                return None;
            }
            _ => {
                self.stats.drop(DropReason::BadMac);
                return None;
            }
        };
        let ts_expiry = self.expiry_of(now, &header);

        match header.packet_type {
            PacketType::Publish => self.on_publish(now, peer, &header, scope, plaintext, ts_expiry),
            PacketType::PubAck | PacketType::PubRec | PacketType::PubComp => {
                self.on_ack(peer, &header, scope, plaintext);
                None
            }
            PacketType::PubRel => {
                self.on_pubrel(peer, &header, scope, plaintext);
                None
            }
            PacketType::Subscribe | PacketType::Unsubscribe => {
                self.on_subscription(now, peer, &header, plaintext);
                None
            }
            PacketType::Heartbeat => {
                self.on_heartbeat(now, peer, plaintext);
                None
            }
        }
    }

    /// Takes back the message the last [`Node::handle_datagram`] returned, because the
    /// application cannot take it now (its queue is full): its PUBACK/PUBREC is not sent
    /// and a QoS 2 receive state made for it is forgotten, so the publisher retransmits
    /// it (as a new packet, which the replay window lets through) and it is delivered
    /// then. A refused QoS 0 message is lost. Either way it is counted as
    /// [`DropReason::DeliveryRefused`] instead of [`Stats::delivered`].
    ///
    /// Call it right after `handle_datagram`, before any other input or poll; returns
    /// `false` (and does nothing) if there is no such message any more.
    pub fn refuse_delivery(&mut self) -> bool {
        let Some(d) = self.last_delivery.take() else { return false };
        if d.ack_queued {
            let last = self.control.pop_back();
            debug_assert!(matches!(last, Some(Control::Ack { msg, .. }) if msg == d.msg));
        }
        if d.qos2_state {
            self.qos2.retain(|q| q.msg != d.msg);
        }
        self.stats.delivered = self.stats.delivered.saturating_sub(1);
        self.stats.drop(DropReason::DeliveryRefused);
        true
    }

    /// Local instant after which a packet with this header is expired.
    fn expiry_of(&self, now: Instant, h: &Header) -> Instant {
        let ttl = Duration::from_secs(u64::from(h.ttl));
        match self.config.clock {
            ClockMode::Unsynced => now + ttl,
            ClockMode::Synced { .. } => {
                let unix = self.unix_now(now);
                let exp = u64::from(h.timestamp) + u64::from(h.ttl);
                now + Duration::from_secs(exp.saturating_sub(u64::from(unix))).min(ttl + ttl)
            }
        }
    }

    /// Freshness, replay, peer-table and rate-limit checks for an authenticated packet.
    /// Returns the peer's index.
    fn admit(&mut self, now: Instant, from: Addr, h: &Header) -> Option<usize> {
        let s = h.session_id;
        if s.0 == 0 {
            self.stats.drop(DropReason::ZeroSession);
            return None;
        }
        if s == self.session || self.own_sessions.iter().any(|o| *o == s) {
            self.stats.drop(DropReason::OwnPacket);
            return None;
        }
        if let ClockMode::Synced { skew } = self.config.clock {
            let unix = i64::from(self.unix_now(now));
            let ts = i64::from(h.timestamp);
            if (ts - unix).unsigned_abs() > skew.total_secs() {
                self.stats.drop(DropReason::Stale);
                return None;
            }
            if h.ttl > 0 && unix > ts + i64::from(h.ttl) {
                self.stats.drop(DropReason::Expired);
                return None;
            }
        }
        let idx = match self.peers.iter().position(|p| p.session == s) {
            Some(i) => {
                match self.peers[i].replay.check(h.packet_id.0) {
                    ReplayCheck::Fresh => {}
                    ReplayCheck::Duplicate => {
                        self.stats.drop(DropReason::Replay);
                        return None;
                    }
                    ReplayCheck::TooOld => {
                        self.stats.drop(DropReason::ReplayTooOld);
                        return None;
                    }
                }
                i
            }
            None => {
                let known = self.evicted.iter().position(|e| e.0 == s);
                let floor = self.evicted.iter().find(|e| e.0 == s).map(|e| e.1);
                let refused = match floor {
                    // A session we dropped coming back: only ids above what we saw.
                    Some(highest) => h.packet_id.0 <= highest,
                    None => {
                        matches!(self.config.clock, ClockMode::Synced { .. })
                            && h.timestamp <= self.floor_ts
                    }
                };
                if refused {
                    self.stats.drop(DropReason::EvictedSession);
                    return None;
                }
                if let Some(k) = known {
                    // Back in the table: its window takes over from the ring entry.
                    let mut rest: Deque<(SessionId, u32, u32), EVICTED_RING> = Deque::new();
                    for (j, e) in self.evicted.iter().enumerate() {
                        if j != k {
                            let _ = rest.push_back(*e);
                        }
                    }
                    self.evicted = rest;
                }
                let i = self.insert_peer(now, from, s);
                if let Some(f) = floor {
                    self.peers[i].replay.mark(f);
                }
                i
            }
        };
        let (window, limit) = (self.config.rate_window, self.config.rate_limit);
        let p = &mut self.peers[idx];
        p.replay.mark(h.packet_id.0);
        p.last_ts = p.last_ts.max(h.timestamp);
        if !p.rate.admit(now, window, limit) {
            self.stats.drop(DropReason::RateLimited);
            if now >= p.rate_reported {
                p.rate_reported = now + window;
                let (session, addr) = (p.session, p.addr);
                self.push_event(Event::RateLimited { session, addr });
            }
            return None;
        }
        p.last_seen = now;
        p.addr = from;
        Some(idx)
    }

    /// Remembers a session leaving the table so that its old packets stay refused: while
    /// it is in the ring, by its highest packet id; once pushed out of the ring, by the
    /// floor timestamp (synced clocks).
    fn remember_evicted(&mut self, p: &Peer<S>) {
        if self.evicted.is_full()
            && let Some((_, _, ts)) = self.evicted.pop_front()
        {
            self.floor_ts = self.floor_ts.max(ts);
        }
        let _ = self.evicted.push_back((p.session, p.replay.highest(), p.last_ts));
    }

    fn insert_peer(&mut self, now: Instant, from: Addr, session: SessionId) -> usize {
        let mut inherited: Vec<PeerSub, S> = Vec::new();
        let mut digest = 0;
        // A new session at a known address replaces the old one (restart or counter
        // rollover): in-flight publishes now wait on the new session.
        if let Some(i) = self.peers.iter().position(|p| p.addr == from) {
            let old = self.peers.swap_remove(i);
            inherited = old.subs.clone();
            digest = old.digest;
            self.remember_evicted(&old);
            for e in &mut self.outbox {
                for t in &mut e.targets {
                    if t.session == old.session {
                        t.session = session;
                    }
                }
            }
            self.push_event(Event::PeerLost {
                session: old.session,
                addr: old.addr,
                reason: LostReason::Replaced,
            });
        } else if self.peers.is_full() {
            // Evict the least recently seen peer.
            if let Some(i) =
                self.peers.iter().enumerate().min_by_key(|(_, p)| p.last_seen).map(|(i, _)| i)
            {
                let old = self.peers.swap_remove(i);
                self.remember_evicted(&old);
                self.peer_gone(old.session);
                self.push_event(Event::PeerLost {
                    session: old.session,
                    addr: old.addr,
                    reason: LostReason::Evicted,
                });
            }
        }
        let peer = Peer {
            session,
            addr: from,
            last_seen: now,
            liveness: self.config.liveness_timeout,
            replay: ReplayWindow::default(),
            rate: RateWindow::default(),
            rate_reported: Instant::ZERO,
            last_ts: 0,
            subs: inherited,
            digest,
            sync_digest: digest,
            sync_seen: 0,
            qos2_low: 0,
        };
        // Room was made above.
        let _ = self.peers.push(peer);
        self.gc_wildcards();
        self.push_event(Event::PeerJoined { session, addr: from });
        // Tell the newcomer about our subscriptions without waiting a full interval.
        if self.last_early_heartbeat.is_none_or(|t| now >= t + EARLY_HEARTBEAT) {
            self.last_early_heartbeat = Some(now);
            self.next_heartbeat = self.next_heartbeat.min(now);
        }
        self.peers.len() - 1
    }

    /// A peer left: its pending acknowledgements will never come.
    fn peer_gone(&mut self, session: SessionId) {
        for e in &mut self.outbox {
            for t in &mut e.targets {
                if t.session == session && t.state != TState::Done {
                    t.state = TState::Lost;
                }
            }
        }
    }

    fn gc_wildcards(&mut self) {
        let peers = &self.peers;
        self.wildcards.retain(|(id, _)| peers.iter().any(|p| p.subs.iter().any(|s| s.id == *id)));
    }

    fn on_publish<'a>(
        &mut self,
        now: Instant,
        peer: usize,
        h: &Header,
        scope: ScopeIndex,
        plaintext: &'a [u8],
        expires: Instant,
    ) -> Option<Message<'a>> {
        let Ok(p) = Publish::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return None;
        };
        if !self.id_matches(p.name.as_str(), &h.channel_id) {
            self.stats.drop(DropReason::ChannelMismatch);
            return None;
        }
        if self.keys.scope_for(p.name) != scope {
            self.stats.drop(DropReason::ScopeMismatch);
            return None;
        }
        if !self.subscribed_to(p.name) {
            self.stats.drop(DropReason::NotSubscribed);
            return None;
        }
        let (session, addr) = (self.peers[peer].session, self.peers[peer].addr);
        let mut delivered = Delivered { msg: p.msg, ack_queued: false, qos2_state: false };
        match h.flags.qos {
            Qos::AtMostOnce => {}
            Qos::AtLeastOnce => {
                delivered.ack_queued =
                    self.queue_ack(PacketType::PubAck, p.msg, addr, h.channel_id, scope);
            }
            Qos::ExactlyOnce => {
                if p.msg.session == session {
                    let low = self.peers[peer].qos2_low.max(p.low_water.0);
                    self.peers[peer].qos2_low = low;
                    if p.msg.packet_id.0 < low {
                        // Completed or abandoned by the publisher: a delayed duplicate.
                        self.stats.drop(DropReason::Qos2Duplicate);
                        return None;
                    }
                    self.qos2.retain(|q| q.msg.session != session || q.msg.packet_id.0 >= low);
                }
                self.qos2.retain(|q| q.expires > now);
                match self.qos2.iter_mut().find(|q| q.msg == p.msg) {
                    Some(q) => {
                        q.expires = q.expires.max(expires);
                        if q.state == RxState::Received {
                            self.queue_ack(PacketType::PubRec, p.msg, addr, h.channel_id, scope);
                        }
                        self.stats.drop(DropReason::Qos2Duplicate);
                        return None;
                    }
                    None => {
                        let rx = Qos2Rx { msg: p.msg, state: RxState::Received, expires };
                        if self.qos2.push(rx).is_err() {
                            self.stats.drop(DropReason::Qos2Full);
                            return None;
                        }
                        delivered.qos2_state = true;
                        delivered.ack_queued =
                            self.queue_ack(PacketType::PubRec, p.msg, addr, h.channel_id, scope);
                    }
                }
            }
        }
        self.last_delivery = Some(delivered);
        self.stats.delivered += 1;
        Some(Message {
            name: p.name,
            body: p.body,
            from: addr,
            session,
            msg: p.msg,
            qos: h.flags.qos,
            retained: h.flags.retain,
            dup: h.flags.dup,
        })
    }

    /// Whether `id` is the channel id of `name` under the current or previous network keys.
    fn id_matches(&self, name: &str, id: &ChannelId) -> bool {
        let net = self.keys.network();
        net.current.channel_id(name) == *id
            || net.previous.is_some_and(|p| p.channel_id(name) == *id)
    }

    fn queue_ack(
        &mut self,
        kind: PacketType,
        msg: MessageId,
        to: Addr,
        channel_id: ChannelId,
        scope: ScopeIndex,
    ) -> bool {
        let queued = self.control.push_back(Control::Ack { kind, msg, to, channel_id, scope });
        if queued.is_err() {
            self.stats.drop(DropReason::ControlQueueFull);
        }
        queued.is_ok()
    }

    fn on_ack(&mut self, peer: usize, h: &Header, scope: ScopeIndex, plaintext: &[u8]) {
        let Ok(a) = Ack::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        let (session, addr) = (self.peers[peer].session, self.peers[peer].addr);
        let Some(e) = self.outbox.iter_mut().find(|e| e.msg == Some(a.msg)) else {
            if h.packet_type == PacketType::PubRec {
                // We finished (or gave up) but the receiver still holds state: release it.
                self.queue_ack(PacketType::PubRel, a.msg, addr, h.channel_id, scope);
            }
            self.stats.drop(DropReason::StrayAck);
            return;
        };
        if e.scope != scope || e.channel_id != h.channel_id {
            self.stats.drop(DropReason::ScopeMismatch);
            return;
        }
        let expected = matches!(
            (e.qos, h.packet_type),
            (Qos::AtLeastOnce, PacketType::PubAck)
                | (Qos::ExactlyOnce, PacketType::PubRec | PacketType::PubComp)
        );
        if !expected {
            self.stats.drop(DropReason::StrayAck);
            return;
        }
        let idx = match e.targets.iter().position(|t| t.session == session) {
            Some(i) => i,
            None => {
                // A subscriber we did not know of answered the first transmission.
                let state =
                    if e.qos == Qos::AtLeastOnce { TState::AwaitAck } else { TState::AwaitRec };
                if e.targets.push(TargetPeer { session, state }).is_err() {
                    self.stats.drop(DropReason::StrayAck);
                    return;
                }
                e.targets.len() - 1
            }
        };
        let t = &mut e.targets[idx];
        let (channel_id, msg) = (e.channel_id, a.msg);
        match (h.packet_type, t.state) {
            (PacketType::PubAck, TState::AwaitAck) => t.state = TState::Done,
            (PacketType::PubRec, TState::AwaitRec | TState::AwaitComp | TState::Lost) => {
                t.state = TState::AwaitComp;
                self.queue_ack(PacketType::PubRel, msg, addr, channel_id, scope);
            }
            (PacketType::PubComp, TState::AwaitComp | TState::AwaitRec | TState::Lost) => {
                t.state = TState::Done
            }
            _ => {}
        }
    }

    fn on_pubrel(&mut self, peer: usize, h: &Header, scope: ScopeIndex, plaintext: &[u8]) {
        let Ok(a) = Ack::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        if let Some(q) = self.qos2.iter_mut().find(|q| q.msg == a.msg) {
            q.state = RxState::Released;
        }
        let addr = self.peers[peer].addr;
        self.queue_ack(PacketType::PubComp, a.msg, addr, h.channel_id, scope);
    }

    fn on_subscription(&mut self, now: Instant, peer: usize, h: &Header, plaintext: &[u8]) {
        let Ok(s) = Subscription::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        if !self.id_matches(s.pattern.as_str(), &h.channel_id) {
            self.stats.drop(DropReason::ChannelMismatch);
            return;
        }
        if h.packet_type == PacketType::Unsubscribe {
            let id = self.keys.channel_id(s.pattern.as_str());
            self.peers[peer].subs.retain(|x| x.id != id);
            self.gc_wildcards();
            return;
        }
        if self.add_peer_sub(peer, s.pattern, true) && s.options & body::SUB_WANTS_RETAINED != 0 {
            self.serve_retained(now, s.pattern, peer);
        }
    }

    /// Adds a pattern to a peer's set; returns whether it is new.
    fn add_peer_sub(&mut self, peer: usize, pattern: Pattern<'_>, fresh: bool) -> bool {
        let id = self.keys.channel_id(pattern.as_str());
        if let Some(s) = self.peers[peer].subs.iter_mut().find(|s| s.id == id) {
            s.fresh |= fresh;
            return false;
        }
        let wildcard = pattern.has_wildcard();
        if wildcard && !self.wildcards.iter().any(|(w, _)| *w == id) {
            let Ok(st) = String::try_from(pattern.as_str()) else { return false };
            if self.wildcards.push((id, st)).is_err() {
                self.stats.drop(DropReason::PeerSubsFull);
                return false;
            }
        }
        if self.peers[peer].subs.push(PeerSub { id, wildcard, fresh }).is_err() {
            self.stats.drop(DropReason::PeerSubsFull);
            self.gc_wildcards();
            return false;
        }
        true
    }

    fn on_heartbeat(&mut self, now: Instant, peer: usize, plaintext: &[u8]) {
        let Ok(hb) = Heartbeat::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        let liveness = self
            .config
            .liveness_timeout
            .max(Duration::from_secs(u64::from(hb.interval_s)).saturating_mul(3));
        let p = &mut self.peers[peer];
        p.liveness = liveness;
        if hb.digest == p.digest && hb.total as usize == p.subs.len() {
            return;
        }
        if p.sync_digest != hb.digest {
            // A new set is being announced: collect it, then drop what it no longer holds.
            p.sync_digest = hb.digest;
            p.sync_seen = 0;
            for s in &mut p.subs {
                s.fresh = false;
            }
        }
        for (i, _) in (0..hb.count).enumerate() {
            let bit = u32::from(hb.first) + i as u32;
            if bit < 64 {
                p.sync_seen |= 1 << bit;
            }
        }
        let mut new_patterns: Vec<Pattern<'_>, S> = Vec::new();
        for pat in hb.patterns() {
            if self.add_peer_sub(peer, pat, true) {
                let _ = new_patterns.push(pat);
            }
        }
        let p = &mut self.peers[peer];
        let total = u32::from(hb.total).min(64);
        let complete = total == 64 || p.sync_seen.count_ones() >= total;
        if complete {
            p.subs.retain(|s| s.fresh);
            p.digest = hb.digest;
            self.gc_wildcards();
        }
        // Patterns learnt from a heartbeat mean the SUBSCRIBE was lost: serve retained now.
        for pat in new_patterns {
            self.serve_retained(now, pat, peer);
        }
    }

    fn peer_subscribes(&self, peer: &Peer<S>, name: ChannelName<'_>, id: &ChannelId) -> bool {
        peer.subs.iter().any(|s| {
            if !s.wildcard {
                return s.id == *id;
            }
            self.wildcards
                .iter()
                .find(|(w, _)| *w == s.id)
                .is_some_and(|(_, pat)| Pattern::new(pat.as_str()).is_ok_and(|p| p.matches(name)))
        })
    }

    // ------------------------------------------------------------------ timers

    /// Advances timers: liveness, retransmission deadlines, expiries, lockout pruning.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_delivery = None;
        // Liveness.
        let mut i = 0;
        while i < self.peers.len() {
            let p = &self.peers[i];
            if now >= p.last_seen + p.liveness {
                let old = self.peers.swap_remove(i);
                self.remember_evicted(&old);
                self.peer_gone(old.session);
                self.push_event(Event::PeerLost {
                    session: old.session,
                    addr: old.addr,
                    reason: LostReason::Silent,
                });
            } else {
                i += 1;
            }
        }
        self.gc_wildcards();
        self.retained.retain(|r| r.expires > now);
        self.qos2.retain(|q| q.expires > now);
        self.lockouts.prune(now, &self.config.lockout);
        self.finish_ready(now);
    }

    /// Emits outcomes of entries that are done, as far as the event queue has room.
    fn finish_ready(&mut self, now: Instant) {
        let max_attempts = self.config.max_attempts;
        let mut i = 0;
        while i < self.outbox.len() {
            if self.events.is_full() {
                return;
            }
            let e = &self.outbox[i];
            let status = if e.msg.is_none() {
                if now >= e.expires { Some(Status::Expired) } else { None }
            } else if e.qos == Qos::AtMostOnce {
                Some(Status::Sent)
            } else if !e.in_round && !e.targets.is_empty() && !e.pending() {
                let lost = e.targets.iter().any(|t| t.state == TState::Lost);
                Some(if lost { Status::Unacknowledged } else { Status::Acknowledged })
            } else if now >= e.expires {
                Some(if e.targets.is_empty() { Status::NoSubscribers } else { Status::Expired })
            } else if !e.in_round && e.attempts >= max_attempts && now >= e.next_at {
                Some(if e.targets.is_empty() {
                    Status::NoSubscribers
                } else {
                    Status::Unacknowledged
                })
            } else {
                None
            };
            let Some(status) = status else {
                i += 1;
                continue;
            };
            // Order among entries lives in their handles, so a swap keeps FIFO intact and
            // avoids shifting every entry behind this one.
            let e = self.outbox.swap_remove(i);
            let mut acked = Vec::new();
            let mut missing = Vec::new();
            for t in &e.targets {
                let _ = if t.state == TState::Done {
                    acked.push(t.session)
                } else {
                    missing.push(t.session)
                };
            }
            let _ = self.events.push_back(Event::Outcome(Outcome {
                handle: e.handle,
                msg: e.msg,
                qos: e.qos,
                status,
                acked,
                missing,
                retained_reply: e.preset,
            }));
        }
    }

    /// The next instant at which [`Node::handle_timeout`] (or `poll_transmit`) has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = Some(self.next_heartbeat);
        let mut min = |x: Instant| t = Some(t.map_or(x, |y: Instant| y.min(x)));
        for p in &self.peers {
            min(p.last_seen + p.liveness);
        }
        for e in &self.outbox {
            min(e.next_at.min(e.expires));
        }
        for r in &self.retained {
            min(r.expires);
        }
        for q in &self.qos2 {
            min(q.expires);
        }
        if let Some(l) = self.lockouts.next_deadline(&self.config.lockout) {
            min(l);
        }
        t
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        self.events.pop_front()
    }

    // ------------------------------------------------------------------ transmitting

    fn next_packet_id(&mut self) -> (SessionId, PacketId) {
        if self.next_packet == u32::MAX {
            // Never wrap: a new session before the counter would repeat.
            let old = self.session;
            self.session = Self::fresh_session(&mut self.rng, old);
            if self.own_sessions.is_full() {
                self.own_sessions.pop_front();
            }
            let _ = self.own_sessions.push_back(old);
            self.next_packet = 1;
            self.push_event(Event::SessionRenewed { old, new: self.session });
        }
        let id = self.next_packet;
        self.next_packet += 1;
        (self.session, PacketId(id))
    }

    /// A header for the next packet of this node (consumes a packet id).
    fn next_header(
        &mut self,
        now: Instant,
        packet_type: PacketType,
        flags: Flags,
        channel_id: ChannelId,
        ttl: u16,
    ) -> Header {
        let (session_id, packet_id) = self.next_packet_id();
        Header {
            packet_type,
            flags,
            packet_id,
            session_id,
            ttl,
            iv: [0; 16],
            timestamp: self.unix_now(now),
            channel_id,
            payload_len: 0,
        }
    }

    /// Seals a packet whose plaintext `write` puts at the start of the slice it gets.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        packet_type: PacketType,
        flags: Flags,
        channel_id: ChannelId,
        scope: ScopeIndex,
        ttl: u16,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let header = self.next_header(now, packet_type, flags, channel_id, ttl);
        seal_packet(
            &self.keys,
            &mut self.rng,
            &mut self.stats,
            &self.config,
            &header,
            scope,
            buf,
            write,
        )
    }

    /// Writes the next datagram to send into `buf` (at least [`Node::max_datagram_len`]
    /// bytes). Order: acknowledgements and announcements, then heartbeats, then the
    /// outbox by priority (higher first, then oldest).
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.last_delivery = None;
        if let Some(t) = self.transmit_control(now, buf) {
            return Some(t);
        }
        if let Some(t) = self.transmit_heartbeat(now, buf) {
            return Some(t);
        }
        let t = self.transmit_outbox(now, buf);
        self.finish_ready(now);
        t
    }

    fn transmit_control(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(c) = self.control.pop_front() {
            let sent = match c {
                Control::Ack { kind, msg, to, channel_id, scope } => {
                    let flags =
                        Flags { qos: Qos::AtMostOnce, retain: false, dup: false, priority: 15 };
                    let ttl = self.config.default_ttl;
                    self.seal(now, buf, kind, flags, channel_id, scope, ttl, |b| {
                        Ack { msg }.emit(b).ok()
                    })
                    .map(|len| Transmit { target: Target::Unicast(to), len })
                }
                Control::Sub { unsubscribe, pattern, id } => {
                    let kind =
                        if unsubscribe { PacketType::Unsubscribe } else { PacketType::Subscribe };
                    let Ok(p) = Pattern::new(pattern.as_str()) else { continue };
                    let sub = Subscription { options: body::SUB_WANTS_RETAINED, pattern: p };
                    let ttl = self.config.default_ttl;
                    self.seal(now, buf, kind, Flags::default(), id, ScopeIndex::NETWORK, ttl, |b| {
                        sub.emit(b).ok()
                    })
                    .map(|len| Transmit { target: Target::Fanout, len })
                }
            };
            if sent.is_some() {
                return sent;
            }
        }
        None
    }

    fn transmit_heartbeat(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let first = match self.heartbeat_cursor {
            Some(c) => c,
            None if now >= self.next_heartbeat => 0,
            None => return None,
        };
        let interval_s =
            u16::try_from(self.config.heartbeat_interval.total_secs()).unwrap_or(u16::MAX);
        let digest = self.sub_digest();
        let total = self.subs.len().min(255) as u8;
        let ttl = self.config.default_ttl;
        let header = self.next_header(
            now,
            PacketType::Heartbeat,
            Flags::default(),
            ChannelId::default(),
            ttl,
        );
        let mut written = 0usize;
        let subs = &self.subs;
        let r = seal_packet(
            &self.keys,
            &mut self.rng,
            &mut self.stats,
            &self.config,
            &header,
            ScopeIndex::NETWORK,
            buf,
            |b| {
                let mut w =
                    Heartbeat::writer(b, interval_s, digest, total, first.min(255) as u8).ok()?;
                for s in subs.iter().skip(first) {
                    let Ok(p) = Pattern::new(s.pattern.as_str()) else { continue };
                    if !w.push(p) {
                        break;
                    }
                }
                written = usize::from(w.count());
                Some(w.finish())
            },
        );
        let next = first + written;
        if next < self.subs.len() && written > 0 {
            self.heartbeat_cursor = Some(next);
        } else {
            self.heartbeat_cursor = None;
            self.next_heartbeat = now + self.config.heartbeat_interval;
        }
        r.map(|len| Transmit { target: Target::Fanout, len })
    }

    fn backoff(&mut self, attempts: u8) -> Duration {
        let base = self.config.retransmit_initial.total_micros().max(1);
        let d = base
            .saturating_mul(1u64 << u32::from(attempts).min(20))
            .min(self.config.retransmit_max.total_micros());
        // ±25 % jitter.
        let j = self.rng.below(d / 2 + 1);
        Duration::from_micros(d - d / 4 + j)
    }

    /// Whether a new QoS 2 message may start: fewer than [`Config::qos2_window`] QoS 2
    /// messages were started since the oldest one still in flight. Receivers keep state
    /// for exactly those, so this bounds their QoS 2 state per publisher.
    fn qos2_window_open(&self) -> bool {
        let oldest = self
            .outbox
            .iter()
            .filter(|e| e.qos == Qos::ExactlyOnce && e.msg.is_some())
            .map(|e| e.seq)
            .min();
        oldest
            .is_none_or(|o| self.qos2_next_seq.wrapping_sub(o) < u32::from(self.config.qos2_window))
    }

    fn transmit_outbox(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        loop {
            let qos2_open = self.qos2_window_open();
            // Highest priority ready entry, oldest first among equals.
            let pick = self
                .outbox
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    now < e.expires
                        && ((e.msg.is_none() && (e.qos != Qos::ExactlyOnce || qos2_open))
                            || e.in_round
                            || (e.msg.is_some()
                                && e.qos != Qos::AtMostOnce
                                && now >= e.next_at
                                && e.attempts < self.config.max_attempts
                                && (e.pending() || e.targets.is_empty())))
                })
                .max_by(|(_, a), (_, b)| {
                    // Oldest first among equals; handles increase (wrapping) in publish order.
                    let older = b.handle.0.wrapping_sub(a.handle.0).cast_signed().cmp(&0);
                    a.priority.cmp(&b.priority).then(older)
                })
                .map(|(i, _)| i)?;
            if let Some(t) = self.transmit_entry(now, pick, buf) {
                return Some(t);
            }
        }
    }

    fn ttl_left(now: Instant, expires: Instant) -> u16 {
        let micros = (expires - now).total_micros();
        u16::try_from(micros.div_ceil(1_000_000)).unwrap_or(u16::MAX).max(1)
    }

    fn send_publish(
        &mut self,
        now: Instant,
        i: usize,
        buf: &mut [u8],
        dup: bool,
        to: Target,
    ) -> Option<Transmit> {
        let e = &self.outbox[i];
        let flags = Flags { qos: e.qos, retain: e.retain, dup, priority: e.priority };
        let (channel_id, scope, ttl) = (e.channel_id, e.scope, Self::ttl_left(now, e.expires));
        let header = self.next_header(now, PacketType::Publish, flags, channel_id, ttl);
        let e = &mut self.outbox[i];
        // On first transmission this packet's id becomes the message id.
        let msg = *e
            .msg
            .get_or_insert(MessageId { session: header.session_id, packet_id: header.packet_id });
        let name_len = usize::from(e.name_len);
        let low_water = self.qos2_low_water(header.session_id, msg.packet_id);
        let data = &self.outbox[i].data;
        let len = seal_packet(
            &self.keys,
            &mut self.rng,
            &mut self.stats,
            &self.config,
            &header,
            scope,
            buf,
            |b| {
                let name = ChannelName::new(core::str::from_utf8(&data[..name_len]).ok()?).ok()?;
                Publish { msg, low_water, name, body: &data[name_len..] }.emit(b).ok()
            },
        )?;
        if dup {
            self.stats.retransmissions += 1;
        }
        Some(Transmit { target: to, len })
    }

    /// Lowest id of this session's QoS 2 messages still in flight (see [`body::Publish`]).
    fn qos2_low_water(&self, session: SessionId, this: PacketId) -> PacketId {
        let low = self
            .outbox
            .iter()
            .filter_map(|e| e.msg.filter(|m| e.qos == Qos::ExactlyOnce && m.session == session))
            .map(|m| m.packet_id.0)
            .min()
            .unwrap_or(this.0);
        PacketId(low.min(this.0))
    }

    fn transmit_entry(&mut self, now: Instant, i: usize, buf: &mut [u8]) -> Option<Transmit> {
        let e = &self.outbox[i];
        let dest = match e.dest {
            Destination::All => Target::Fanout,
            Destination::Group(a) => Target::Group(a),
            Destination::Peer(a) => Target::Unicast(a),
        };
        if e.msg.is_none() {
            // First transmission.
            if e.qos != Qos::AtMostOnce && !e.preset {
                self.collect_targets(i);
            }
            let t = self.send_publish(now, i, buf, false, dest);
            let d = self.backoff(0);
            let e = &mut self.outbox[i];
            e.next_at = now + d;
            if e.qos == Qos::ExactlyOnce && t.is_some() {
                e.seq = self.qos2_next_seq;
                self.qos2_next_seq = self.qos2_next_seq.wrapping_add(1);
            }
            if t.is_none() {
                // Could not be sealed (caller buffer too small): report it expired.
                e.msg = None;
                e.expires = now;
            }
            return t;
        }
        if !e.in_round {
            if e.targets.is_empty() && !e.preset {
                // Subscribers may have announced themselves since (start-up race).
                self.collect_targets(i);
            }
            let e = &mut self.outbox[i];
            e.cursor = 0;
            if e.targets.is_empty() {
                // Still none known: repeat the fan-out a few times, then report it.
                e.attempts += 1;
                if e.attempts > NO_SUBSCRIBER_ROUNDS {
                    e.expires = now;
                    return None;
                }
                let t = self.send_publish(now, i, buf, true, dest);
                let d = self.backoff(self.outbox[i].attempts);
                self.outbox[i].next_at = now + d;
                return t;
            }
            e.in_round = true;
        }
        // Next pending target in this round.
        loop {
            let e = &mut self.outbox[i];
            let Some(t) = e.targets.get(e.cursor).copied() else {
                e.in_round = false;
                e.attempts += 1;
                let a = e.attempts;
                let d = self.backoff(a);
                self.outbox[i].next_at = now + d;
                return None;
            };
            e.cursor += 1;
            let Some(addr) = self.peers.iter().find(|p| p.session == t.session).map(|p| p.addr)
            else {
                continue;
            };
            match t.state {
                TState::AwaitAck | TState::AwaitRec => {
                    return self.send_publish(now, i, buf, true, Target::Unicast(addr));
                }
                TState::AwaitComp => {
                    let e = &self.outbox[i];
                    let (msg, channel_id, scope) =
                        (e.msg.unwrap_or_default(), e.channel_id, e.scope);
                    let flags =
                        Flags { qos: Qos::AtMostOnce, retain: false, dup: true, priority: 15 };
                    let ttl = Self::ttl_left(now, e.expires);
                    let r = self.seal(
                        now,
                        buf,
                        PacketType::PubRel,
                        flags,
                        channel_id,
                        scope,
                        ttl,
                        |b| Ack { msg }.emit(b).ok(),
                    );
                    if let Some(len) = r {
                        self.stats.retransmissions += 1;
                        return Some(Transmit { target: Target::Unicast(addr), len });
                    }
                    return None;
                }
                TState::Done | TState::Lost => continue,
            }
        }
    }

    fn collect_targets(&mut self, i: usize) {
        let e = &self.outbox[i];
        let Ok(name) = ChannelName::new(e.name()) else { return };
        let (id, qos, dest) = (e.channel_id, e.qos, e.dest);
        let state = if qos == Qos::AtLeastOnce { TState::AwaitAck } else { TState::AwaitRec };
        let mut targets: Vec<TargetPeer, P> = Vec::new();
        for p in &self.peers {
            let reachable = match dest {
                Destination::Peer(a) => p.addr == a,
                _ => true,
            };
            if reachable && self.peer_subscribes(p, name, &id) {
                let _ = targets.push(TargetPeer { session: p.session, state });
            }
        }
        self.outbox[i].targets = targets;
    }
}

/// Writes the plaintext with `write`, then pads, encrypts and MACs under `scope`'s
/// current keys. Counts a drop and returns `None` if the caller's buffer is too small.
#[allow(clippy::too_many_arguments)]
fn seal_packet<K: KeyLookup>(
    keys: &K,
    rng: &mut Drbg,
    stats: &mut Stats,
    config: &Config,
    header: &Header,
    scope: ScopeIndex,
    buf: &mut [u8],
    write: impl FnOnce(&mut [u8]) -> Option<usize>,
) -> Option<usize> {
    let max_pt = envelope::max_plaintext(config.max_payload);
    let room = buf.len().saturating_sub(HEADER_LEN + crate::wire::MAC_LEN).min(max_pt);
    let sealed = buf.get_mut(HEADER_LEN..HEADER_LEN + room).and_then(write).and_then(|len| {
        let ks = keys.scope(scope).unwrap_or_else(|| keys.network()).current;
        envelope::seal_in_place(ks, header, rng.block(), buf, len, config.max_payload).ok()
    });
    match sealed {
        Some(_) => stats.tx_datagrams += 1,
        None => stats.drop(DropReason::TxBufferTooSmall),
    }
    sealed
}

impl<
    K: KeyLookup,
    const P: usize,
    const S: usize,
    const O: usize,
    const R: usize,
    const Q: usize,
    const L: usize,
    const M: usize,
> core::fmt::Debug for Node<K, P, S, O, R, Q, L, M>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("session", &self.session)
            .field("peers", &self.peers.len())
            .field("subs", &self.subs.len())
            .field("outbox", &self.outbox.len())
            .field("qos2_rx", &self.qos2.len())
            .finish_non_exhaustive()
    }
}
