//! The sans-IO engine: one [`Node`] is one NoMQ participant.
//!
//! # Parts
//! [`Node`] orchestrates parts that each own their state (see docs/ARCHITECTURE.md):
//!
//! | file | owns |
//! |---|---|
//! | `peers.rs` | the peer table (by session): LRU eviction, peer subscriptions, heartbeat sync |
//! | `verify.rs` | the challenge/echo handshake that admits unknown sessions (freshness after restarts) |
//! | `limits.rs` | per-session replay window, rate window, authentication lockout |
//! | `announce.rs` | local subscriptions, the heartbeat schedule, the control queue |
//! | `outbox.rs` | outbox entries, their targets and outcomes |
//! | `retransmit.rs` | the round state machine of one entry (`next_action`) |
//! | `qos2_rx.rs` | QoS 2 receive states |
//! | `retained.rs` | retained values |
//! | `store.rs` | the state kept across restarts (sessions, QoS 2 receive states) and the write-ahead rule |
//! | `tx.rs` | the sealer: session, packet counter, IVs, key selection |
//! | `rx.rs`, `send.rs` | `Node`'s handlers of received packets; publishing and `poll_transmit` |
//! | `presets.rs` | capacity presets by name (`Mcu`, `Device`, `Host`) and what each costs |
//! | `flush.rs` | what every adapter shares: the `Engine` trait, target resolution, the transmit loop (`Flush`) |

mod announce;
mod deferred;
mod drbg;
pub mod flush;
pub mod limits;
mod outbox;
mod peers;
pub mod presets;
mod qos2_rx;
mod retained;
mod retransmit;
mod rx;
mod send;
pub mod store;
mod tx;
mod types;
mod verify;

pub use announce::CONTROL_QUEUE;
pub use deferred::{CompleteError, DeliveryToken};
pub use flush::{Datagram, Engine, Flush, Packets, Routes, TxStats};
pub use limits::{LockoutConfig, REPLAY_WINDOW};
pub use store::{ExportError, RestoreError, STATE_VERSION, StateStore, state_len};
pub use types::*;

use crate::addr::Addr;
use crate::body::MessageId;
use crate::channel::{ChannelId, ChannelName, Pattern};
use crate::envelope;
use crate::keys::KeyLookup;
use crate::time::Instant;
use crate::wire::{self, HEADER_LEN, PacketType, SessionId};
use announce::{Announce, Control};
use deferred::{DeferredAcks, OwedAck};
use heapless::Deque;
use limits::Lockouts;
use outbox::Outbox;
use peers::Peers;
use qos2_rx::Qos2Receiver;
use retained::RetainedStore;
use send::Step;
use tx::Tx;
use verify::Verifier;

/// The largest UDP payload over IPv4: the most [`Config::max_datagram`] can mean.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Event queue depth. Outcomes wait in their outbox slot while it is full.
pub const EVENT_QUEUE: usize = 8;

/// One NoMQ participant.
///
/// # Driving a node
/// The adapter owns the socket and the clock and runs this loop (quinn-proto style):
/// 1. Create with [`Node::new`] (config, keyring, a 32-byte random seed, the monotonic
///    `now` and the Unix time). With a state store ([`StateStore`]): [`Node::restore`]
///    what it saved last, then [`Node::enable_persistence`]; whenever
///    [`Node::state_unsaved`], [`Node::export_state`] and save before draining
///    `poll_transmit` (docs/PROTOCOL.md, "State store").
/// 2. On every datagram: [`Node::handle_packet`]`(now, from, &mut buf)`; a returned
///    [`Message`] borrows the buffer (decrypted in place). If the application cannot
///    take it, call [`Node::refuse_delivery`] before anything else; to acknowledge a
///    QoS 1/2 message only once the application is done with it, call
///    [`Node::defer_delivery`] there instead, and later [`Node::complete_delivery`].
/// 3. After every input: drain [`Node::poll_transmit`] into a buffer of at least
///    [`Node::max_datagram_len`] bytes and send each [`Transmit`] ([`Flush`] does this
///    and the target resolution for an adapter); drain [`Node::poll_event`].
/// 4. Sleep until [`Node::poll_timeout`], then call [`Node::handle_timeout`]. Spurious
///    or early calls are harmless.
///
/// # Time
/// `now` is a monotonic clock: it must never go backwards between calls (an earlier
/// `now` than the previous call's may delay timers or expire nothing, but never
/// panics). The wall clock is separate ([`Node::set_unix_time`]). The node never reads
/// a clock, never blocks, never allocates, and never panics on any datagram.
///
/// # Capacities (const generics, with defaults; presets in [`presets`])
/// | param | default | what |
/// |---|---|---|
/// | `P` | 32 | peers (sessions) tracked; also the most targets one publish tracks, and wildcard patterns peers announced |
/// | `S` | 20 | local subscriptions; also subscriptions remembered per peer |
/// | `O` | 50 | outbox entries (queued or awaiting acks) |
/// | `R` | 16 | retained channels held |
/// | `Q` | 32 | QoS 2 receive states |
/// | `L` | 64 | lockout table entries |
/// | `M` | 256 | bytes of name + body stored per outbox / retained entry |
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
    tx: Tx,
    next_handle: u32,
    peers: Peers<P, S>,
    announce: Announce<S>,
    outbox: Outbox<P, M, O>,
    /// Sequence number the next QoS 2 message gets (flow-control window).
    qos2_next_seq: u32,
    retained: RetainedStore<R, M>,
    qos2: Qos2Receiver<Q>,
    /// Deliveries whose acknowledgement the application withholds (`deferred.rs`).
    deferred: DeferredAcks<Q>,
    events: Deque<Event<P>, EVENT_QUEUE>,
    lockouts: Lockouts<L>,
    verifier: Verifier,
    /// `keys_mut` was called: re-derive channel ids at the next input.
    keys_changed: bool,
    /// MAC checks of datagrams from unknown sessions in the current rate window.
    unverified_work: limits::RateWindow,
    stats: Stats,
    /// What the message `handle_packet` just returned committed this node to, so that
    /// [`Node::refuse_delivery`] can take it back. Cleared by every other input.
    last_delivery: Option<Delivered>,
    /// The adapter saves this node's state ([`Node::enable_persistence`]).
    persist: bool,
    /// State the write-ahead rule covers changed since the last export.
    unsaved: bool,
    /// A peer is known to hold the current session (it bound a packet to it), so it
    /// retired the one this session replaces. Reset by a session renewal.
    session_known: bool,
    /// Finished entries wait for room in the event queue, and the `now` they were found
    /// finished at: [`Node::poll_event`] reports them as it makes room.
    outcomes_waiting: Option<Instant>,
    /// The last channel name whose ids were derived, and its ids under the current and
    /// previous network keys: a stream on one channel costs its two HMACs once, not at
    /// every publish, target collection and receipt. Cleared by [`Node::keys_mut`].
    last_ids:
        Option<(heapless::String<{ crate::channel::MAX_NAME_LEN }>, ChannelId, Option<ChannelId>)>,
}

/// The commitments of the last delivered message.
#[derive(Clone, Copy, Debug)]
struct Delivered {
    msg: MessageId,
    /// Its PUBACK/PUBREC is the last entry of the control queue.
    ack_queued: bool,
    /// A QoS 2 receive state was created for it.
    qos2_state: bool,
    /// The acknowledgement it is owed (QoS 1/2), for [`Node::defer_delivery`].
    owed: Option<OwedAck>,
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
        Self {
            config,
            keys,
            tx: Tx::new(seed, 1, config.max_payload, now, unix_time),
            next_handle: 1,
            peers: Peers::default(),
            announce: Announce::new(now),
            outbox: Outbox::new(config.max_attempts),
            qos2_next_seq: 0,
            retained: RetainedStore::default(),
            qos2: Qos2Receiver::default(),
            deferred: DeferredAcks::default(),
            events: Deque::new(),
            lockouts: Lockouts::new(),
            verifier: Verifier::default(),
            keys_changed: false,
            unverified_work: limits::RateWindow::default(),
            stats: Stats::default(),
            last_delivery: None,
            persist: false,
            unsaved: false,
            session_known: false,
            outcomes_waiting: None,
            last_ids: None,
        }
    }

    /// Test support: makes `id` the next packet id of this session (tests start it
    /// near `u32::MAX` to reach session renewal). Not part of the stable API.
    #[doc(hidden)]
    pub fn __set_next_packet_id(&mut self, id: u32) {
        self.tx.set_next_packet(id);
    }

    /// This node's current session id.
    pub fn session(&self) -> SessionId {
        self.tx.session()
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The keyring.
    pub fn keys(&self) -> &K {
        &self.keys
    }
    /// The keyring, to rotate keys. Channel ids change with the network keys, so at the
    /// next input the node derives its subscriptions' ids again and announces them (an
    /// early heartbeat, whose digest changed), re-derives what it stored of its peers'
    /// subscriptions from their next heartbeats, and meanwhile matches publishes
    /// against ids under the current and the previous network keys. Nobody resubscribes.
    pub fn keys_mut(&mut self) -> &mut K {
        self.keys_changed = true;
        self.last_ids = None;
        &mut self.keys
    }

    /// Applies a change of keys made through [`Node::keys_mut`] (see there).
    fn apply_key_change(&mut self, now: Instant) {
        if !core::mem::take(&mut self.keys_changed) {
            return;
        }
        for s in &mut self.announce.subs {
            s.id = self.keys.channel_id(s.pattern.as_str());
            if let Ok(p) = Pattern::new(s.pattern.as_str()) {
                s.scope = self.keys.scope_for_pattern(p);
            }
        }
        self.peers.resync_all();
        self.announce.heartbeat_early(now);
    }

    /// [`Node::channel_ids`] without the cache.
    fn derive_ids(&self, name: &str) -> (ChannelId, Option<ChannelId>) {
        let net = self.keys.network();
        (net.current.channel_id(name), net.previous.map(|p| p.channel_id(name)))
    }

    /// The ids of `name` under the current and (during a rotation) previous network keys.
    fn channel_ids(&mut self, name: &str) -> (ChannelId, Option<ChannelId>) {
        if let Some((n, id, prev)) = &self.last_ids
            && n.as_str() == name
        {
            return (*id, *prev);
        }
        let ids = self.derive_ids(name);
        if let Ok(n) = heapless::String::try_from(name) {
            self.last_ids = Some((n, ids.0, ids.1));
        }
        ids
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
        let ids = name.map(|n| self.derive_ids(n.as_str()));
        self.peers.iter().filter_map(move |p| match (name, &ids) {
            (Some(n), Some((id, prev))) if self.peers.subscribes(p, n, (id, prev.as_ref())) => {
                Some((p.session, p.addr))
            }
            _ => None,
        })
    }
    /// Entries in the outbox (queued or awaiting acknowledgement).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }
    /// The largest datagram this node produces or accepts: its largest packet, or
    /// [`Config::max_datagram`] if that is larger. Buffers given to
    /// [`Node::poll_transmit`] and receive buffers need this many bytes.
    pub fn max_datagram_len(&self) -> usize {
        (HEADER_LEN + self.config.max_payload + crate::wire::MAC_LEN)
            .max(self.config.max_datagram.min(MAX_UDP_PAYLOAD))
    }
    /// Resets the wall clock (after an SNTP sync, say).
    pub fn set_unix_time(&mut self, now: Instant, unix_time: u32) {
        self.tx.set_unix_time(now, unix_time);
    }

    fn push_event(&mut self, e: Event<P>) {
        // Only outcomes must never be lost, and those wait in the outbox for room
        // (see `finish_ready`); informational events past a full queue are counted.
        if self.events.push_back(e).is_err() {
            self.stats.events_dropped += 1;
        }
    }

    fn queue_control(&mut self, c: Control) -> bool {
        let queued = self.announce.queue(c).is_ok();
        if !queued {
            self.stats.drop(DropReason::ControlQueueFull);
        }
        queued
    }

    /// Subscribes to `pattern` (MQTT wildcards allowed) and announces it.
    /// Subscribing twice to the same pattern is a no-op.
    ///
    /// # Errors
    /// [`SubscribeError::InvalidPattern`], [`SubscribeError::Full`].
    pub fn subscribe(&mut self, pattern: &str) -> Result<(), SubscribeError> {
        let p = Pattern::new(pattern).map_err(SubscribeError::InvalidPattern)?;
        let (id, scope) = (self.keys.channel_id(p.as_str()), self.keys.scope_for_pattern(p));
        if self.announce.add(p, (id, scope)).map_err(|_| SubscribeError::Full)? {
            let pattern = heapless::String::try_from(p.as_str()).unwrap_or_default();
            // If it does not fit, the next heartbeat announces it anyway.
            self.queue_control(Control::Sub { unsubscribe: false, pattern, id, scope });
        }
        Ok(())
    }

    /// Withdraws a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, pattern: &str) -> bool {
        let Some(s) = self.announce.remove(pattern) else { return false };
        let (pattern, id, scope) = (s.pattern, s.id, s.scope);
        self.queue_control(Control::Sub { unsubscribe: true, pattern, id, scope });
        true
    }

    /// Current subscription patterns, in the order [`Message::subscriptions`] indexes.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.announce.subs.iter().map(|s| s.pattern.as_str())
    }

    /// The `i`-th subscription pattern (the index [`Message::subscriptions`] uses).
    pub fn subscription(&self, i: usize) -> Option<&str> {
        self.announce.subs.get(i).map(|s| s.pattern.as_str())
    }

    /// Processes one packet received from `from` (a datagram carries one or more: split
    /// it with [`Packets`], or use [`Node::handle_datagram`]). Returns the message it
    /// carried, if it is a publish this node subscribes to that is delivered now
    /// (decrypted in `buf`).
    /// Everything else (acks, announcements, drops) updates state and counters.
    ///
    /// With [`Node::enable_persistence`], a delivered QoS 2 message makes the state
    /// unsaved ([`Node::state_unsaved`]): its PUBREC, and every other transmission, waits
    /// until the adapter saved it (see [`Node::poll_transmit`]). An adapter that hands
    /// messages to the application only after that save delivers each QoS 2 message
    /// exactly once across crashes.
    pub fn handle_packet<'a>(
        &mut self,
        now: Instant,
        from: Addr,
        buf: &'a mut [u8],
    ) -> Option<Message<'a>> {
        self.last_delivery = None;
        self.apply_key_change(now);
        self.stats.rx_datagrams += 1;
        let (header, known) = self.screen(now, from, buf)?;
        let (scope, generation) = match envelope::verify_mac(&self.keys, &header, buf) {
            Ok((s, g, _)) => (s, g),
            Err(e) => {
                self.on_unverified(now, from, e, known);
                return None;
            }
        };
        if !self.fresh(now, &header) {
            return None;
        }
        let plaintext = self.decrypt(&header, (scope, generation), buf)?;
        let Ok((to, plaintext)) = crate::body::split_recipient(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return None;
        };
        if to.is_some_and(|s| !self.tx.is_own(s)) {
            self.stats.drop(DropReason::NotForUs);
            return None;
        }
        let to_me = to == Some(self.tx.session());
        if header.packet_type == PacketType::Challenge {
            // An echo alone, bound to this session, comes from a peer holding it (an
            // unknown session gets a challenge with the echo).
            let echo_only = crate::body::Challenge::parse(plaintext)
                .is_ok_and(|c| c.echo.is_some() && c.challenge.is_none());
            if to_me && echo_only {
                self.note_known();
            }
            if to.is_none() {
                // A challenge is always bound to the one session it challenges.
                self.stats.drop(DropReason::MalformedBody);
            } else {
                self.on_challenge(now, from, &header, plaintext);
            }
            return None;
        }
        let sender = self.admit(now, from, &header)?;
        if to_me {
            self.note_known();
        }
        let ts_expiry = self.expiry_of(now, &header);
        let opened = rx::Opened { header: &header, scope, sender };
        match header.packet_type {
            PacketType::Publish => {
                let m = self.on_publish(now, &opened, plaintext, ts_expiry);
                if self.last_delivery.is_some_and(|d| d.qos2_state) {
                    // Write-ahead: its PUBREC waits until the state holding it is saved.
                    self.note_unsaved();
                }
                return m;
            }
            PacketType::PubAck | PacketType::PubRec | PacketType::PubComp => {
                self.on_ack(&opened, plaintext);
                self.finish_ready(now);
            }
            PacketType::PubRel => self.on_pubrel(&opened, plaintext),
            PacketType::Subscribe | PacketType::Unsubscribe => {
                self.on_subscription(now, &opened, plaintext);
            }
            PacketType::Heartbeat => self.on_heartbeat(now, &opened, plaintext),
            PacketType::Challenge => {}
        }
        None
    }

    /// Processes every packet of one received datagram ([`Packets`]), handing each
    /// message delivered to `deliver`; a message for which `deliver` returns `false` is
    /// refused ([`Node::refuse_delivery`]: the publisher retransmits it). Returns how many
    /// messages were taken. [`Node::handle_packet`] is the same one packet at a time.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: Addr,
        datagram: &mut [u8],
        deliver: impl FnMut(Message<'_>) -> bool,
    ) -> usize {
        Engine::handle_datagram(self, now, from, datagram, deliver)
    }

    /// Takes back the message the last [`Node::handle_packet`] returned, because the
    /// application cannot take it now (its queue is full): its PUBACK/PUBREC is not sent
    /// and a QoS 2 receive state made for it is forgotten, so the publisher retransmits
    /// it (as a new packet, which the replay window lets through) and it is delivered
    /// then. A refused QoS 0 message is lost. Either way it is counted as
    /// [`DropReason::DeliveryRefused`] instead of [`Stats::delivered`].
    ///
    /// Call it right after `handle_packet`, before any other input or poll; returns
    /// `false` (and does nothing) if there is no such message any more.
    pub fn refuse_delivery(&mut self) -> bool {
        let Some(d) = self.last_delivery.take() else { return false };
        if d.ack_queued {
            self.announce.unqueue_ack(d.msg);
        }
        if d.qos2_state {
            self.qos2.forget(d.msg);
        }
        self.stats.delivered = self.stats.delivered.saturating_sub(1);
        self.stats.drop(DropReason::DeliveryRefused);
        true
    }

    /// Advances timers: liveness, retransmission deadlines, expiries, lockout pruning.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_delivery = None;
        self.apply_key_change(now);
        while let Some(gone) = self.peers.pop_silent(now) {
            self.peer_left(gone);
        }
        self.peers.gc_wildcards();
        self.retained.expire(now);
        self.qos2.expire(now);
        self.expire_deferred(now);
        self.lockouts.prune(now, &self.config.lockout);
        self.finish_ready(now);
    }

    /// Emits outcomes of entries that are done, as far as the event queue has room; the
    /// rest follow as [`Node::poll_event`] drains it.
    fn finish_ready(&mut self, now: Instant) {
        self.outcomes_waiting = None;
        let mut from = 0;
        while let Some((i, status)) = self.outbox.finished(now, from) {
            from = i + 1;
            if self.outbox[i].quiet && matches!(status, Status::Sent | Status::Acknowledged) {
                self.outbox.discard(i);
                continue;
            }
            if self.events.is_full() {
                self.outcomes_waiting = Some(now);
                return;
            }
            let _ = self.events.push_back(Event::Outcome(self.outbox.remove(i, status)));
        }
    }

    /// The next instant at which [`Node::handle_timeout`] (or `poll_transmit`) has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.peers.iter().map(|p| p.last_seen + p.liveness);
        let outbox = self.outbox.wakes();
        let lockout = self.lockouts.next_deadline(&self.config.lockout);
        let all = peers
            .chain(outbox)
            .chain(self.retained.deadlines())
            .chain(self.qos2.deadlines())
            .chain(self.deferred.deadlines())
            .chain(lockout);
        Some(all.fold(self.announce.next_heartbeat, Instant::min))
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<P>> {
        let e = self.events.pop_front();
        if let Some(now) = self.outcomes_waiting.filter(|_| e.is_some()) {
            // A burst of acknowledgements (a run) can finish more entries at once than
            // the queue holds: report them now, not at the next input or timer.
            self.finish_ready(now);
        }
        e
    }

    /// Writes the next datagram to send into `buf` (at least [`Node::max_datagram_len`]
    /// bytes). Order: acknowledgements and announcements, then heartbeats, then the
    /// outbox by priority (higher first, then oldest).
    ///
    /// # Coalescing
    /// When the packet after the first goes to the same target too and everything fits
    /// the destination's datagram limit ([`Config::max_datagram`], and what the peers
    /// there announced), it is appended to the same datagram, and so on, in exactly the
    /// order they would have left one by one: coalescing changes how many datagrams
    /// carry the packets, never which packets or in what order. A lone packet leaves at
    /// once (there is no delay to wait for more). HEARTBEAT and CHALLENGE packets travel
    /// alone, so a node that does not know this one yet (nor its limit) reads them.
    ///
    /// # Write-ahead rule
    /// With [`Node::enable_persistence`], nothing at all is sent (`None`) while
    /// [`Node::state_unsaved`]: a PUBREC promises the publisher that this node will never
    /// deliver the message again, so it leaves only once the state recording the message
    /// is saved. The adapter exports and saves ([`Node::export_state`],
    /// [`StateStore::save`]) after each batch of inputs, then drains this.
    ///
    /// # Sealing
    /// The packets of a datagram are prepared one after the other and encrypted and
    /// MACed together, up to 8 side by side (CBC is serial within a packet), before the
    /// datagram is returned: the bytes are those sealing each packet alone would give.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let t = self.build_datagram(now, buf);
        let end = t.map_or(0, |t| t.len);
        let sealed = self.tx.finish(&self.keys, &mut buf[..end]);
        debug_assert!(sealed, "every packet of the datagram is sealed");
        t.filter(|_| sealed)
    }

    /// [`Node::poll_transmit`]'s datagram, its packets prepared ([`tx::Tx::seal`]); all
    /// but the last few (those [`tx::Tx::finish`] has not sealed yet) are sealed.
    fn build_datagram(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.last_delivery = None;
        self.apply_key_change(now);
        if self.state_unsaved() {
            return None;
        }
        let mut picks = send::Picks::default();
        let t = self.transmit_first_packet(now, buf, &mut picks);
        if let Some((first, false)) = t {
            let limit = self.coalesce_limit(first.target).min(buf.len());
            let mut len = first.len;
            while len + wire::MIN_PACKET_LEN <= limit {
                let (room, want) = (&mut buf[len..limit], Some(first.target));
                let mut step = self.transmit_control(now, room, want);
                if matches!(step, Step::Nothing) && self.announce.heartbeat_due(now).is_none() {
                    step = self.transmit_outbox(now, room, want, &mut picks);
                }
                let Step::Sent(next) = step else { break };
                len += next.len;
                if self.tx.deferred_full() && !self.tx.finish(&self.keys, &mut buf[..len]) {
                    debug_assert!(false, "the deferred packets end the datagram");
                    return None;
                }
            }
            self.finish_ready(now);
            return Some(Transmit { target: first.target, len });
        }
        t.map(|(first, _)| first)
    }

    /// The first packet of a datagram, and whether it travels alone.
    fn transmit_first_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        picks: &mut send::Picks,
    ) -> Option<(Transmit, bool)> {
        let challenge = matches!(self.announce.control.front(), Some(Control::Challenge { .. }));
        let mut t = match self.transmit_control(now, buf, None) {
            Step::Sent(t) => Some((t, challenge)),
            _ => None,
        };
        if t.is_none() {
            t = self.transmit_heartbeat(now, buf).map(|t| (t, true));
        }
        let from_outbox = t.is_none();
        if from_outbox && let Step::Sent(p) = self.transmit_outbox(now, buf, None, picks) {
            t = Some((p, false));
        }
        if let Some((old, new)) = self.tx.take_renewal() {
            self.on_renewal(old, new);
        }
        if from_outbox && t.is_none() {
            self.finish_ready(now);
        }
        t
    }

    /// The largest datagram that may go to `target`: this node's own limit and the
    /// smallest that the peers it reaches announced; 0 (nothing coalesced) if it reaches
    /// no known peer.
    fn coalesce_limit(&self, target: Target) -> usize {
        let reached = self.peers.iter().filter(|p| match target {
            Target::Unicast(a) => p.addr == a,
            Target::Fanout | Target::Group(_) => true,
        });
        let own = self.config.max_datagram.min(MAX_UDP_PAYLOAD);
        reached
            .map(|p| usize::from(p.max_datagram))
            .fold(None, |m: Option<usize>, l| Some(m.unwrap_or(own).min(l)))
            .unwrap_or(0)
    }
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
            .field("session", &self.tx.session())
            .field("peers", &self.peers.len())
            .field("subs", &self.announce.subs.len())
            .field("outbox", &self.outbox.len())
            .field("qos2_rx", &self.qos2.len())
            .finish_non_exhaustive()
    }
}
