//! `Node`'s sending side: publishing, serving retained values, and `poll_transmit`'s
//! three sources (control queue, heartbeats, outbox), each sealed by [`Tx`](super::tx).

use super::Node;
use super::announce::Control;
use super::outbox::{Outbox, TState, TargetPeer};
use super::peers::Sender;
use super::retransmit::Action;
use super::tx::Spec;
use super::types::{Destination, PublishError, PublishHandle, PublishOptions, Target, Transmit};
use crate::body::{self, Ack, Challenge, Heartbeat, MessageId, Publish, Subscription};
use crate::channel::{ChannelId, ChannelName, Pattern};
use crate::envelope;
use crate::keys::{KeyLookup, ScopeIndex};
use crate::time::{Duration, Instant};
use crate::wire::{Flags, PacketId, PacketType, Qos, SessionId};
use heapless::Vec;

/// Plaintext of an ack packet: recipient and one run.
const ACK_PLAINTEXT: usize = body::RECIPIENT_LEN + body::ACK_LEN;

/// What one source of `poll_transmit` did.
pub(super) enum Step {
    /// Sealed a packet.
    Sent(Transmit),
    /// Has nothing to send now.
    Nothing,
    /// Has a packet that does not belong in the datagram being filled: it waits.
    Held,
}

/// Flags of acknowledgements and releases: QoS 0, highest priority.
const CONTROL_FLAGS: Flags =
    Flags { qos: Qos::AtMostOnce, retain: false, dup: false, priority: 15 };

/// The next publish handle, advancing `next` (a field, so that it can be taken while an
/// outbox slot is borrowed).
fn take_handle(next: &mut u32) -> PublishHandle {
    let handle = PublishHandle(*next);
    *next = next.wrapping_add(1);
    handle
}

fn ttl_left(now: Instant, expires: Instant) -> u16 {
    let micros = (expires - now).total_micros();
    u16::try_from(micros.div_ceil(1_000_000)).unwrap_or(u16::MAX).max(1)
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
    /// Queues a message. It leaves through [`Node::poll_transmit`] in priority order;
    /// its end is reported once by an [`Event::Outcome`](super::Event::Outcome) with the
    /// returned handle.
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
        let max = M.min(envelope::max_plaintext(self.config.max_payload) - body::PUBLISH_OVERHEAD);
        if len > max {
            return Err(PublishError::TooLarge { len, max });
        }
        if self.outbox.is_full() {
            return Err(PublishError::OutboxFull);
        }
        let ids = (self.channel_ids(name.as_str()).0, self.keys.scope_for(name));
        let expires = now + Duration::from_secs(u64::from(ttl));
        let Some((slot, e)) = self.outbox.vacant() else {
            return Err(PublishError::OutboxFull);
        };
        // Fits: len <= M checked above.
        e.body
            .set(name, body, ids, opts.qos, expires)
            .ok_or(PublishError::TooLarge { len, max })?;
        if opts.retain {
            self.retained.store(e.body.clone())?;
        }
        let handle = take_handle(&mut self.next_handle);
        e.reset(handle, (opts.retain, opts.priority, opts.destination), now, None);
        e.quiet = opts.quiet;
        self.outbox.occupy(slot);
        Ok(handle)
    }

    /// Sends this node's retained values matching `pattern` to a peer that just subscribed.
    pub(super) fn serve_retained(&mut self, now: Instant, pattern: Pattern<'_>, to: Sender) {
        let matching: Vec<usize, R> = self.retained.matching(now, pattern).collect();
        for i in matching {
            let r = self.retained.get(i);
            if r.qos != Qos::AtMostOnce && self.join_original(now, i, to.session) {
                continue;
            }
            let Some((slot, e)) = self.outbox.vacant() else {
                self.stats.drop(super::DropReason::RetainedDeferred);
                return;
            };
            e.body.copy_from(self.retained.get(i));
            let handle = take_handle(&mut self.next_handle);
            e.reset(handle, (true, 15, Destination::Peer(to.addr)), now, Some(to.session));
            self.outbox.occupy(slot);
        }
    }

    /// If the publish that set retained value `i` is still in the outbox (QoS 1/2, being
    /// retried), makes `session` one of its targets instead of sending a second copy
    /// under another message id: the late subscriber receives the value once, and its
    /// acknowledgement counts in the original publish's outcome. Returns whether it did.
    fn join_original(&mut self, now: Instant, i: usize, session: SessionId) -> bool {
        let r = self.retained.get(i);
        let Some(i) = self.outbox.position(|e| {
            !e.preset && e.retain && e.body.channel_id == r.channel_id && e.body.data == r.data
        }) else {
            return false;
        };
        let mut e = self.outbox.at(i);
        if e.msg.is_some() && !e.targets.iter().any(|t| t.session == session) {
            let state = TState::initial(e.qos());
            if e.targets.push(TargetPeer { session, state }).is_err() {
                return false;
            }
            e.next_at = e.next_at.min(now);
        }
        // Not yet sent: its first transmission collects this subscriber as a target.
        true
    }

    /// A peer that proved itself live after a QoS 1/2 publish first went out (a newcomer,
    /// or a subscriber that restarted under a new session) announced `pattern`: it
    /// becomes one more target of every such publish still in flight that `pattern`
    /// matches, and is sent it now. Publishes sent after it joined are not touched: for
    /// them it was known, and its subscription is newer than the message.
    pub(super) fn join_in_flight(&mut self, now: Instant, pattern: Pattern<'_>, to: Sender) {
        let joined = self.peers.get(to.id).joined;
        for mut e in self.outbox.iter_mut() {
            let late = e.msg.is_some() && e.first_sent < joined;
            let reaches = match e.dest {
                Destination::Peer(a) => a == to.addr,
                _ => true,
            };
            if !late || e.preset || e.qos() == Qos::AtMostOnce || !reaches {
                continue;
            }
            let matches = e.body.name().is_some_and(|n| pattern.matches(n));
            if !matches || e.targets.iter().any(|t| t.session == to.session) {
                continue;
            }
            let state = TState::initial(e.qos());
            if e.targets.push(TargetPeer { session: to.session, state }).is_ok() {
                e.next_at = e.next_at.min(now);
            }
        }
    }

    fn seal_control(&mut self, now: Instant, buf: &mut [u8], c: Control) -> Option<Transmit> {
        let ttl = self.config.default_ttl;
        match c {
            Control::Ack { kind, msg, count, to, session, channel_id, scope } => {
                let flags = CONTROL_FLAGS;
                let spec = Spec { kind, flags, channel_id, scope, ttl, to: Some(session) };
                let write = |b: &mut [u8]| Ack { msg, count }.emit(b).ok();
                let len = self.tx.seal_new(&self.keys, &mut self.stats, (now, spec), buf, write)?;
                Some(Transmit { target: Target::Unicast(to), len })
            }
            Control::Sub { unsubscribe, pattern, id, scope } => {
                let kind =
                    if unsubscribe { PacketType::Unsubscribe } else { PacketType::Subscribe };
                let p = Pattern::new(pattern.as_str()).ok()?;
                let sub = Subscription { options: body::SUB_WANTS_RETAINED, pattern: p };
                let flags = Flags::default();
                let spec = Spec { kind, flags, channel_id: id, scope, ttl, to: None };
                let write = |b: &mut [u8]| sub.emit(b).ok();
                let len = self.tx.seal_new(&self.keys, &mut self.stats, (now, spec), buf, write)?;
                Some(Transmit { target: Target::Fanout, len })
            }
            Control::Challenge { to, session, challenge, echo } => {
                let spec = Spec {
                    kind: PacketType::Challenge,
                    flags: CONTROL_FLAGS,
                    channel_id: ChannelId::default(),
                    scope: ScopeIndex::NETWORK,
                    ttl,
                    to: Some(session),
                };
                let replaces = self.tx.replaces();
                let write = |b: &mut [u8]| Challenge { challenge, echo, replaces }.emit(b).ok();
                let len = self.tx.seal_new(&self.keys, &mut self.stats, (now, spec), buf, write)?;
                Some(Transmit { target: Target::Unicast(to), len })
            }
        }
    }

    /// The next control packet. With `want` (a datagram being filled), only if it goes
    /// to that target and fits `buf`; else nothing is taken (`Held`).
    pub(super) fn transmit_control(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        want: Option<Target>,
    ) -> Step {
        loop {
            let Some(c) = self.announce.control.front() else { return Step::Nothing };
            if let Some(w) = want {
                // CHALLENGE travels alone: its recipient does not know us yet.
                let alone = matches!(c, Control::Challenge { .. });
                if alone || c.target() != w || c.sealed_len() > buf.len() {
                    return Step::Held;
                }
            }
            let Some(c) = self.announce.control.pop_front() else { return Step::Nothing };
            if let Some(t) = self.seal_control(now, buf, c) {
                return Step::Sent(t);
            }
        }
    }

    pub(super) fn transmit_heartbeat(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (scope, first) = self.announce.heartbeat_due(now)?;
        let interval_s =
            u16::try_from(self.config.heartbeat_interval.total_secs()).unwrap_or(u16::MAX);
        let digest = self.announce.digest(scope);
        let total = self.announce.group(scope).count().min(255) as u8;
        let spec = Spec {
            kind: PacketType::Heartbeat,
            flags: Flags::default(),
            channel_id: ChannelId::default(),
            scope,
            ttl: self.config.default_ttl,
            to: None,
        };
        let mut written = 0usize;
        let group = self.announce.group(scope);
        let max = self.config.max_datagram.min(super::MAX_UDP_PAYLOAD);
        let limit = u16::try_from(max).unwrap_or(u16::MAX);
        let write = |b: &mut [u8]| {
            let at = first.min(255) as u8;
            let mut w = Heartbeat::writer(b, (interval_s, limit), digest, total, at).ok()?;
            for s in group.skip(first) {
                let Ok(p) = Pattern::new(s.pattern.as_str()) else { continue };
                if !w.push(p) {
                    break;
                }
            }
            written = usize::from(w.count());
            Some(w.finish())
        };
        let r = self.tx.seal_new(&self.keys, &mut self.stats, (now, spec), buf, write);
        let sent = (scope, first, written);
        self.announce.heartbeat_sent(now, sent, self.config.heartbeat_interval);
        r.map(|len| Transmit { target: Target::Fanout, len })
    }

    fn backoff(&mut self, attempts: u8) -> Duration {
        let base = self.config.retransmit_initial.total_micros().max(1);
        let d = base
            .saturating_mul(1u64 << u32::from(attempts).min(20))
            .min(self.config.retransmit_max.total_micros());
        // ±25 % jitter.
        let j = self.tx.below(d / 2 + 1);
        Duration::from_micros(d - d / 4 + j)
    }

    /// Whether a new QoS 2 message may start: fewer than
    /// [`Config::qos2_window`](super::Config::qos2_window) QoS 2 messages were started
    /// since the oldest one still in flight. Receivers keep state for exactly those, so
    /// this bounds their QoS 2 state per publisher.
    fn qos2_window_open(&self) -> bool {
        let oldest = self.outbox.qos2_in_flight().map(|(seq, _)| seq).min();
        oldest
            .is_none_or(|o| self.qos2_next_seq.wrapping_sub(o) < u32::from(self.config.qos2_window))
    }

    /// The next packet of the outbox; with `want`, only one to that target that fits
    /// `buf` (as [`Node::transmit_control`]). `picks` carries the ranking between the
    /// packets of one [`Node::poll_transmit`].
    pub(super) fn transmit_outbox(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        want: Option<Target>,
        picks: &mut Picks,
    ) -> Step {
        loop {
            let open = self.qos2_window_open();
            let Some(i) = picks.next(&self.outbox, now, open) else {
                return Step::Nothing;
            };
            debug_assert_eq!(Some(i), self.outbox.pick(now, open), "ranking agrees with pick");
            match self.transmit_entry(now, i, buf, want) {
                Step::Nothing => {}
                done => return done,
            }
        }
    }

    /// Lowest id of this session's QoS 2 messages still in flight (see [`body::Publish`]).
    fn qos2_low_water(&self, session: SessionId, this: PacketId) -> PacketId {
        let low = (self.outbox.qos2_in_flight())
            .filter(|(_, m)| m.session == session)
            .map(|(_, m)| m.packet_id.0)
            .min()
            .unwrap_or(this.0);
        PacketId(low.min(this.0))
    }

    fn send_publish(
        &mut self,
        now: Instant,
        i: usize,
        buf: &mut [u8],
        dup: bool,
        (to, recipient): (Target, Option<SessionId>),
    ) -> Option<Transmit> {
        let e = &self.outbox[i];
        let flags = Flags { qos: e.qos(), retain: e.retain, dup, priority: e.priority };
        let (channel_id, scope) = (e.body.channel_id, e.body.scope);
        let ttl = ttl_left(now, e.body.expires);
        let kind = PacketType::Publish;
        let spec = Spec { kind, flags, channel_id, scope, ttl, to: recipient };
        let header = self.tx.header(now, &spec);
        // On first transmission this packet's id becomes the message id.
        let own = MessageId { session: header.session_id, packet_id: header.packet_id };
        let msg = *self.outbox.at(i).msg.get_or_insert(own);
        let low_water = self.qos2_low_water(header.session_id, msg.packet_id);
        let stored = &self.outbox[i].body;
        let write = |b: &mut [u8]| {
            let name = stored.name()?;
            Publish { msg, low_water, name, body: stored.body() }.emit(b).ok()
        };
        let len = self.tx.seal(&self.keys, &mut self.stats, (&header, &spec), buf, write)?;
        if dup {
            self.stats.retransmissions += 1;
        }
        Some(Transmit { target: to, len })
    }

    fn send_pubrel(
        &mut self,
        now: Instant,
        i: usize,
        buf: &mut [u8],
        (to, recipient): (Target, SessionId),
    ) -> Option<Transmit> {
        let e = &self.outbox[i];
        let msg = e.msg.unwrap_or_default();
        let flags = Flags { dup: true, ..CONTROL_FLAGS };
        let (channel_id, scope) = (e.body.channel_id, e.body.scope);
        let ttl = ttl_left(now, e.body.expires);
        let (kind, to_s) = (PacketType::PubRel, Some(recipient));
        let spec = Spec { kind, flags, channel_id, scope, ttl, to: to_s };
        let write = |b: &mut [u8]| Ack::one(msg).emit(b).ok();
        let len = self.tx.seal_new(&self.keys, &mut self.stats, (now, spec), buf, write)?;
        self.stats.retransmissions += 1;
        Some(Transmit { target: to, len })
    }

    /// Sends what entry `i`'s state machine ([`Entry::next_action`]) says, and schedules
    /// it; with `want`, only if that packet goes to `want` and fits `buf` (else `Held`,
    /// with nothing advanced).
    fn transmit_entry(
        &mut self,
        now: Instant,
        i: usize,
        buf: &mut [u8],
        want: Option<Target>,
    ) -> Step {
        if self.outbox[i].needs_targets() {
            self.collect_targets(i);
        }
        let dest = match self.outbox[i].dest {
            Destination::All => (Target::Fanout, None),
            Destination::Group(a) => (Target::Group(a), None),
            // Bound to the one session known there (a retained reply's subscriber, or
            // the only peer at that address); to every member if none or several are.
            Destination::Peer(a) => (Target::Unicast(a), self.recipient_at(i, a)),
        };
        loop {
            if let Some(w) = want {
                let (to, len) = match self.outbox[i].peek_action() {
                    Action::First | Action::Fanout => (dest.0, self.publish_len(i)),
                    Action::Target(session, state) => {
                        let Some(addr) = self.peers.addr_of(session) else {
                            // Skipped whether or not a datagram is being filled.
                            self.outbox.at(i).next_action();
                            continue;
                        };
                        let len = match state {
                            TState::AwaitComp => envelope::sealed_len(ACK_PLAINTEXT),
                            _ => self.publish_len(i),
                        };
                        (Target::Unicast(addr), len)
                    }
                    // Sends nothing: taken as it would be without a datagram to fill.
                    Action::GiveUp | Action::RoundEnd => (w, 0),
                };
                if to != w || len > buf.len() {
                    return Step::Held;
                }
            }
            let action = self.outbox.at(i).next_action();
            let sent = match action {
                Action::First => self.transmit_first(now, i, buf, dest),
                Action::Fanout => {
                    let t = self.send_publish(now, i, buf, true, dest);
                    self.schedule(now, i);
                    t
                }
                Action::GiveUp => {
                    self.outbox.at(i).body.expires = now;
                    None
                }
                Action::RoundEnd => {
                    self.schedule(now, i);
                    None
                }
                Action::Target(session, state) => {
                    let Some(addr) = self.peers.addr_of(session) else { continue };
                    let to = Target::Unicast(addr);
                    match state {
                        TState::AwaitComp => self.send_pubrel(now, i, buf, (to, session)),
                        _ => self.send_publish(now, i, buf, true, (to, Some(session))),
                    }
                }
            };
            return sent.map_or(Step::Nothing, Step::Sent);
        }
    }

    /// The sealed length of entry `i`'s PUBLISH.
    fn publish_len(&self, i: usize) -> usize {
        let b = &self.outbox[i].body;
        let name = b.name().map_or(0, |n| n.as_str().len());
        envelope::sealed_len(body::PUBLISH_OVERHEAD + name + b.body().len())
    }

    /// The session a publish to address `a` is bound to: entry `i`'s preset target (a
    /// retained reply), else the only known peer at `a`.
    fn recipient_at(&self, i: usize, a: crate::addr::Addr) -> Option<SessionId> {
        let e = &self.outbox[i];
        if e.preset {
            return e.preset_to;
        }
        let mut at = self.peers.iter().filter(|p| p.addr == a).map(|p| p.session);
        match (at.next(), at.next()) {
            (Some(s), None) => Some(s),
            _ => None,
        }
    }

    /// Next transmission of entry `i` after the backoff of its attempts so far.
    fn schedule(&mut self, now: Instant, i: usize) {
        let d = self.backoff(self.outbox[i].attempts);
        self.outbox.at(i).next_at = now + d;
    }

    fn transmit_first(
        &mut self,
        now: Instant,
        i: usize,
        buf: &mut [u8],
        dest: (Target, Option<SessionId>),
    ) -> Option<Transmit> {
        let t = self.send_publish(now, i, buf, false, dest);
        self.schedule(now, i);
        let mut e = self.outbox.at(i);
        e.first_sent = now;
        if e.qos() == Qos::ExactlyOnce && t.is_some() {
            e.seq = self.qos2_next_seq;
            self.qos2_next_seq = self.qos2_next_seq.wrapping_add(1);
        }
        if t.is_none() {
            // Could not be sealed (caller buffer too small): report it expired.
            e.msg = None;
            e.body.expires = now;
        }
        t
    }

    fn collect_targets(&mut self, i: usize) {
        let Some(name) = self.outbox[i].body.name() else { return };
        let Ok(owned) =
            heapless::String::<{ crate::channel::MAX_NAME_LEN }>::try_from(name.as_str())
        else {
            return;
        };
        // Derived now, not at publish time: the keys may have rotated since.
        let (id, prev) = self.channel_ids(owned.as_str());
        let e = &self.outbox[i];
        let Some(name) = e.body.name() else { return };
        let (dest, state) = (e.dest, TState::initial(e.qos()));
        let mut targets: Vec<TargetPeer, P> = Vec::new();
        for p in self.peers.iter() {
            let reachable = match dest {
                Destination::Peer(a) => p.addr == a,
                _ => true,
            };
            if reachable && self.peers.subscribes(p, name, (&id, prev.as_ref())) {
                let _ = targets.push(TargetPeer { session: p.session, state });
            }
        }
        self.outbox.at(i).targets = targets;
    }
}

/// Entries ranked by one scan of the outbox, for the packets of one
/// [`Node::poll_transmit`] (a datagram of many coalesced packets scanned the outbox once
/// per packet). Within one call the ranking stays right: `now` is fixed, no entry is
/// added, an entry's priority and handle never change, and an entry only stops being
/// ready (sent, or the QoS 2 window closing). So the first still-ready ranked entry is the
/// one [`Outbox::pick`] would take (debug builds check each pick); once every ranked entry
/// has stopped being ready, the outbox is scanned again.
#[derive(Debug, Default)]
pub(super) struct Picks {
    ranked: heapless::Vec<usize, PICKS>,
    at: usize,
}

/// Entries ranked per scan.
const PICKS: usize = 16;

impl Picks {
    /// The entry to send next, as [`Outbox::pick`].
    fn next<const P: usize, const M: usize, const O: usize>(
        &mut self,
        outbox: &Outbox<P, M, O>,
        now: Instant,
        open: bool,
    ) -> Option<usize> {
        loop {
            while let Some(&i) = self.ranked.get(self.at) {
                if outbox.is_ready(i, now, open) {
                    return Some(i);
                }
                self.at += 1;
            }
            outbox.rank(now, open, &mut self.ranked);
            self.at = 0;
            if self.ranked.is_empty() {
                return None;
            }
        }
    }
}
