//! `Node`'s handling of an authenticated packet: admission (freshness, replay, peer
//! table, rate limit), then one handler per packet type.

use super::announce::Control;
use super::deferred::{OwedAck, Retransmission};
use super::outbox::{TState, TargetPeer};
use super::peers::{Departure, Sender};
use super::qos2_rx::Rx;
use super::types::{ClockMode, DropReason, Event, Message};
use super::{Delivered, Node};
use crate::addr::Addr;
use crate::body::{self, Ack, Challenge, Heartbeat, MessageId, Publish, Subscription};
use crate::channel::ChannelId;
use crate::envelope::{self, OpenError};
use crate::keys::{Generation, KeyLookup, ScopeIndex};
use crate::time::{Duration, Instant};
use crate::wire::{Header, PacketType, Qos, SessionId, WireError};
use heapless::Vec;

/// An authenticated, admitted packet: its header, the key scope that verified it, and
/// who sent it.
pub(super) struct Opened<'h> {
    pub(super) header: &'h Header,
    pub(super) scope: ScopeIndex,
    pub(super) sender: Sender,
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
    /// The cheap checks and the work budget, before any MAC. A datagram claiming a
    /// session in the peer table is always verified (nothing an outsider sends can keep
    /// a live peer's packets out: DTLS's rule, RFC 9147 §4.5.2). One claiming any other
    /// session is refused, without a MAC, while its host is locked out or the budget
    /// of such checks per rate window is spent. Returns the header and whether its
    /// session is known.
    pub(super) fn screen(
        &mut self,
        now: Instant,
        from: Addr,
        buf: &[u8],
    ) -> Option<(Header, bool)> {
        let h = match envelope::check(buf, self.config.max_payload) {
            Ok(h) => h,
            Err(e) => {
                self.on_unverified(now, from, e, false);
                return None;
            }
        };
        let known = self.peers.find(h.session_id).is_some();
        if !known {
            if self.lockouts.is_locked(&from, now) {
                self.stats.drop(DropReason::LockedOut);
                return None;
            }
            let (window, limit) = (self.config.rate_window, self.config.unverified_limit);
            if !self.unverified_work.admit(now, window, limit) {
                self.stats.drop(DropReason::Throttled);
                return None;
            }
        }
        Some((h, known))
    }

    /// Counts a datagram whose MAC failed. Against an unknown session it also counts
    /// against its host's lockout; against a known one it does not (the packet may be a
    /// forgery carrying that peer's address, and must never lock the peer out).
    pub(super) fn on_unverified(&mut self, now: Instant, from: Addr, e: OpenError, known: bool) {
        if let OpenError::Wire(e) = e {
            self.stats.drop(wire_reason(e));
            return;
        }
        self.stats.drop(DropReason::BadMac);
        if known {
            return;
        }
        if let Some(until) = self.lockouts.fail(from, now, &self.config.lockout) {
            self.push_event(Event::LockedOut { addr: from.host(), until });
        }
    }

    /// Decrypts under the key set that verified the MAC (the keyring cannot change in
    /// between).
    pub(super) fn decrypt<'a>(
        &mut self,
        header: &Header,
        (scope, generation): (ScopeIndex, Generation),
        buf: &'a mut [u8],
    ) -> Option<&'a [u8]> {
        let keys = self.keys.scope(scope).map(|sc| match generation {
            Generation::Current => sc.current,
            Generation::Previous => sc.previous.unwrap_or(sc.current),
        });
        match keys.map(|k| envelope::decrypt_verified(k, header, buf)) {
            Some(Ok(p)) => Some(p),
            Some(Err(OpenError::BadPadding)) => {
                self.stats.drop(DropReason::BadPadding);
                None
            }
            _ => {
                self.stats.drop(DropReason::BadMac);
                None
            }
        }
    }

    /// Local instant after which a packet with this header is expired.
    pub(super) fn expiry_of(&self, now: Instant, h: &Header) -> Instant {
        let ttl = Duration::from_secs(u64::from(h.ttl));
        match self.config.clock {
            ClockMode::Unsynced => now + ttl,
            ClockMode::Synced { .. } => {
                let unix = self.tx.unix_now(now);
                let exp = u64::from(h.timestamp) + u64::from(h.ttl);
                now + Duration::from_secs(exp.saturating_sub(u64::from(unix))).min(ttl + ttl)
            }
        }
    }

    /// Session and timestamp checks that need no peer state.
    pub(super) fn fresh(&mut self, now: Instant, h: &Header) -> bool {
        let s = h.session_id;
        if s.0 == 0 {
            self.stats.drop(DropReason::ZeroSession);
            return false;
        }
        if self.tx.is_own(s) {
            self.stats.drop(DropReason::OwnPacket);
            return false;
        }
        if let ClockMode::Synced { skew } = self.config.clock {
            let unix = i64::from(self.tx.unix_now(now));
            let ts = i64::from(h.timestamp);
            if (ts - unix).unsigned_abs() > skew.total_secs() {
                self.stats.drop(DropReason::Stale);
                return false;
            }
            if h.ttl > 0 && unix > ts + i64::from(h.ttl) {
                self.stats.drop(DropReason::Expired);
                return false;
            }
        }
        true
    }

    /// Replay and rate-limit checks for an authenticated packet of a session in the peer
    /// table. A session not in the table is not admitted: it is challenged (see
    /// `verify.rs`) and the packet is dropped as [`DropReason::Unverified`].
    pub(super) fn admit(&mut self, now: Instant, from: Addr, h: &Header) -> Option<Sender> {
        let Some(id) = self.peers.find(h.session_id) else {
            self.stats.drop(DropReason::Unverified);
            self.challenge(now, from, h.session_id, None);
            return None;
        };
        let refusal = match self.peers.get(id).replay.check(h.packet_id.0) {
            super::limits::ReplayCheck::Fresh => None,
            super::limits::ReplayCheck::Duplicate => Some(DropReason::Replay),
            super::limits::ReplayCheck::TooOld => Some(DropReason::ReplayTooOld),
        };
        if let Some(r) = refusal {
            self.stats.drop(r);
            return None;
        }
        let (window, limit) = (self.config.rate_window, self.config.rate_limit);
        let p = self.peers.get_mut(id);
        p.replay.mark(h.packet_id.0);
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
        // An authenticated, fresh packet: the session is where it came from.
        p.addr = from;
        self.lockouts.succeed(&from);
        Some(Sender { id, session: p.session, addr: from })
    }

    /// Queues a CHALLENGE to `session` at `to` (with `echo`, the answer to its own
    /// challenge, if any), unless one went out to it very recently or the challenge
    /// budget is spent.
    fn challenge(&mut self, now: Instant, to: Addr, session: SessionId, echo: Option<u64>) {
        let budget = (self.config.rate_window, self.config.challenge_limit);
        let tx = &mut self.tx;
        let fresh = self.verifier.challenge(now, session, budget, || tx.nonce());
        let challenge = fresh.or_else(|| self.verifier.outstanding(session));
        if echo.is_none() && fresh.is_none() {
            // Its challenge is on the way (or the budget is spent): nothing to send.
            return;
        }
        if echo.is_none() && self.announce.control.len() >= super::CONTROL_QUEUE / 2 {
            // Keep room for acknowledgements: this session is challenged again on its next
            // packet after the retry interval.
            return;
        }
        self.queue_control(Control::Challenge { to, session, challenge, echo });
    }

    /// A CHALLENGE: it may prove a session live (its echo answers our challenge), and it
    /// may ask us to prove ours (its challenge, which we echo). A challenge is answered
    /// whatever its age: echoing a stale nonce proves nothing to anyone, so it needs no
    /// freshness, only a budget.
    pub(super) fn on_challenge(&mut self, now: Instant, from: Addr, h: &Header, plaintext: &[u8]) {
        let Ok(c) = Challenge::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        let s = h.session_id;
        if self.peers.find(s).is_some() {
            if self.admit(now, from, h).is_none() {
                return;
            }
        } else if let Some(echo) = c.echo
            && self.verifier.verify(s, echo)
        {
            self.join_verified(now, from, h);
            if let Some(old) = c.replaces {
                self.replace_session(now, old, s);
            }
            if c.challenge.is_none() {
                // It knew us already, so its heartbeat went out with this echo and may
                // have arrived first (and been refused): ask for it again.
                let ask = Control::Challenge { to: from, session: s, challenge: None, echo: None };
                self.queue_control(ask);
            }
        }
        if c.challenge.is_none() && c.echo.is_none() && self.peers.find(s).is_some() {
            // "Announce yourself": a peer that just verified us wants our subscriptions.
            self.announce.heartbeat_early(now);
            return;
        }
        let Some(nonce) = c.challenge else { return };
        if !self.verifier.may_echo(now, (self.config.rate_window, self.config.challenge_limit)) {
            self.stats.drop(DropReason::ChallengeLimited);
            return;
        }
        if self.peers.find(s).is_some() {
            self.queue_control(Control::Challenge {
                to: from,
                session: s,
                challenge: None,
                echo: Some(nonce),
            });
        } else {
            // We do not know the challenger either: challenge it in the same packet.
            self.challenge(now, from, s, Some(nonce));
        }
        // The challenger does not know us: tell it our subscriptions now, and give it what
        // it missed without waiting for the next round.
        self.announce.heartbeat_early(now);
        for mut e in self.outbox.iter_mut() {
            if e.targets.iter().any(|t| t.session == s && t.state.pending()) {
                e.next_at = e.next_at.min(now);
            }
        }
    }

    /// The verified session `new` says it replaces `old` (same node: counter rollover,
    /// or a restart with a state store): what waited on `old` now waits on `new`, which
    /// inherits `old`'s subscriptions until its own heartbeat says otherwise, and `old`
    /// leaves the table as [`LostReason::Replaced`](super::LostReason::Replaced). Only
    /// a session that proved itself live can do this, and only a holder of the network
    /// keys can seal the claim.
    fn replace_session(&mut self, now: Instant, old: SessionId, new: SessionId) {
        if old == new || self.peers.find(old).is_none() {
            return;
        }
        for mut e in self.outbox.iter_mut() {
            let has_new = e.targets.iter().any(|t| t.session == new);
            if has_new {
                e.targets.retain(|t| t.session != old);
            } else if let Some(t) = e.targets.iter_mut().find(|t| t.session == old) {
                t.session = new;
                e.next_at = e.next_at.min(now);
            }
        }
        if let Some(gone) = self.peers.replace(old, new) {
            let super::peers::Departure { session, addr, reason } = gone;
            self.push_event(Event::PeerLost { session, addr, reason });
        }
    }

    /// `h`'s session answered our challenge: it joins the peer table, and nothing it
    /// sent up to and including this packet will ever be accepted.
    fn join_verified(&mut self, now: Instant, from: Addr, h: &Header) {
        let liveness = self.config.liveness_timeout;
        let (id, gone) = self.peers.insert(now, from, h.session_id, liveness);
        if let Some(gone) = gone {
            self.peer_left(gone);
        }
        let p = self.peers.get_mut(id);
        p.replay = super::limits::ReplayWindow::from_floor(h.packet_id.0);
        self.lockouts.succeed(&from);
        self.push_event(Event::PeerJoined { session: h.session_id, addr: from });
        // Tell the newcomer about our subscriptions without waiting a full interval.
        self.announce.heartbeat_early(now);
    }

    /// A peer left the table: its pending acknowledgements will never come. Reported
    /// as [`Event::PeerLost`].
    pub(super) fn peer_left(&mut self, gone: Departure) {
        for mut e in self.outbox.iter_mut() {
            for t in e.targets.iter_mut() {
                if t.session == gone.session && t.state != TState::Done {
                    t.state = TState::Lost;
                }
            }
        }
        let Departure { session, addr, reason } = gone;
        self.push_event(Event::PeerLost { session, addr, reason });
    }

    fn queue_ack(&mut self, kind: PacketType, msg: MessageId, to: Addr, o: &Opened<'_>) -> bool {
        let (channel_id, scope, session) = (o.header.channel_id, o.scope, o.sender.session);
        self.queue_control(Control::Ack { kind, msg, count: 1, to, session, channel_id, scope })
    }

    /// Whether `id` is the channel id of `name` under the current or previous network keys.
    fn id_matches(&mut self, name: &str, id: &ChannelId) -> bool {
        let (current, previous) = self.channel_ids(name);
        current == *id || previous == Some(*id)
    }

    pub(super) fn on_publish<'a>(
        &mut self,
        now: Instant,
        o: &Opened<'_>,
        plaintext: &'a [u8],
        expires: Instant,
    ) -> Option<Message<'a>> {
        let Ok(p) = Publish::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return None;
        };
        let h = o.header;
        if !self.id_matches(p.name.as_str(), &h.channel_id) {
            self.stats.drop(DropReason::ChannelMismatch);
            return None;
        }
        if self.keys.scope_for(p.name) != o.scope {
            self.stats.drop(DropReason::ScopeMismatch);
            return None;
        }
        let subscriptions = self.announce.matching(p.name);
        if subscriptions.is_empty() {
            self.stats.drop(DropReason::NotSubscribed);
            return None;
        }
        if h.flags.qos != Qos::AtMostOnce {
            match self.deferred.on_publish(p.msg, o.sender.addr) {
                Retransmission::NotDeferred => {}
                Retransmission::Withheld => {
                    self.stats.drop(DropReason::DeferredDuplicate);
                    return None;
                }
                Retransmission::Owed(ack) => {
                    if !self.send_owed(now, ack) {
                        // Still no room: keep owing it.
                        let _ = self.deferred.owe(ack);
                    }
                    self.stats.drop(DropReason::DeferredDuplicate);
                    return None;
                }
            }
        }
        let owed = Some(OwedAck {
            msg: p.msg,
            qos: h.flags.qos,
            to: o.sender.addr,
            session: o.sender.session,
            channel_id: h.channel_id,
            scope: o.scope,
            expires,
        });
        let delivered = match h.flags.qos {
            Qos::AtMostOnce => {
                Delivered { msg: p.msg, ack_queued: false, qos2_state: false, owed: None }
            }
            Qos::AtLeastOnce => {
                let ack_queued = self.queue_ack(PacketType::PubAck, p.msg, o.sender.addr, o);
                Delivered { msg: p.msg, ack_queued, qos2_state: false, owed }
            }
            Qos::ExactlyOnce => Delivered { owed, ..self.receive_qos2(now, o, &p, expires)? },
        };
        self.last_delivery = Some(delivered);
        self.stats.delivered += 1;
        Some(Message {
            name: p.name,
            body: p.body,
            from: o.sender.addr,
            session: o.sender.session,
            msg: p.msg,
            qos: h.flags.qos,
            retained: h.flags.retain,
            ttl: h.ttl,
            dup: h.flags.dup,
            subscriptions,
        })
    }

    /// The QoS 2 receive side of a PUBLISH: `None` if it must not be delivered.
    fn receive_qos2(
        &mut self,
        now: Instant,
        o: &Opened<'_>,
        p: &Publish<'_>,
        expires: Instant,
    ) -> Option<Delivered> {
        let Sender { id, session, addr } = o.sender;
        if p.msg.session == session {
            let peer = self.peers.get_mut(id);
            let low = peer.qos2_low.max(p.low_water.0);
            peer.qos2_low = low;
            if p.msg.packet_id.0 < low {
                // Completed or abandoned by the publisher: a delayed duplicate.
                self.stats.drop(DropReason::Qos2Duplicate);
                return None;
            }
            self.qos2.advance_low(session, low);
        }
        match self.qos2.admit(now, p.msg, (session, o.scope), expires) {
            Rx::New => {
                let ack_queued = self.queue_ack(PacketType::PubRec, p.msg, addr, o);
                Some(Delivered { msg: p.msg, ack_queued, qos2_state: true, owed: None })
            }
            Rx::Duplicate { re_ack } => {
                if re_ack {
                    self.queue_ack(PacketType::PubRec, p.msg, addr, o);
                }
                self.stats.drop(DropReason::Qos2Duplicate);
                None
            }
            Rx::Full => {
                self.stats.drop(DropReason::Qos2Full);
                None
            }
        }
    }

    /// A PUBACK, PUBREC or PUBCOMP: a run of messages, each handled on its own.
    pub(super) fn on_ack(&mut self, o: &Opened<'_>, plaintext: &[u8]) {
        let Ok(a) = Ack::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        // The entries the run acknowledges, found in one pass over the outbox (the work
        // is bounded by the outbox, not by a run's length).
        let hits: Vec<(MessageId, usize), O> = self.outbox.with_ids(|m| a.contains(m)).collect();
        for msg in a.ids() {
            let at = hits.iter().find(|(m, _)| *m == msg).map(|&(_, i)| i);
            self.on_ack_of(o, msg, at);
        }
    }

    /// The acknowledgement of `msg`, which is outbox entry `at` if any.
    fn on_ack_of(&mut self, o: &Opened<'_>, msg: MessageId, at: Option<usize>) {
        let (h, scope, session, addr) = (o.header, o.scope, o.sender.session, o.sender.addr);
        let Some(mut e) = at.and_then(|i| self.outbox.get_mut(i)) else {
            if h.packet_type == PacketType::PubRec {
                // We finished (or gave up) but the receiver still holds state: release it.
                self.queue_ack(PacketType::PubRel, msg, addr, o);
            }
            self.stats.drop(DropReason::StrayAck);
            return;
        };
        if e.body.scope != scope || e.body.channel_id != h.channel_id {
            self.stats.drop(DropReason::ScopeMismatch);
            return;
        }
        let expected = matches!(
            (e.qos(), h.packet_type),
            (Qos::AtLeastOnce, PacketType::PubAck)
                | (Qos::ExactlyOnce, PacketType::PubRec | PacketType::PubComp)
        );
        let idx = match e.targets.iter().position(|t| t.session == session) {
            _ if !expected => None,
            Some(i) => Some(i),
            // Only a PUBCOMP of a target that got our PUBREL completes anything.
            None if h.packet_type == PacketType::PubComp => None,
            // A subscriber we did not know of answered the first transmission.
            None => {
                let state = TState::initial(e.qos());
                e.targets.push(TargetPeer { session, state }).ok().map(|()| e.targets.len() - 1)
            }
        };
        let Some(t) = idx.and_then(|i| e.targets.get_mut(i)) else {
            self.stats.drop(DropReason::StrayAck);
            return;
        };
        let release = match (h.packet_type, t.state) {
            (PacketType::PubAck, TState::AwaitAck) => {
                t.state = TState::Done;
                false
            }
            (PacketType::PubRec, TState::AwaitRec | TState::AwaitComp | TState::Lost) => {
                t.state = TState::AwaitComp;
                true
            }
            (PacketType::PubComp, TState::AwaitComp | TState::AwaitRec | TState::Lost) => {
                t.state = TState::Done;
                false
            }
            _ => false,
        };
        // The entry's summary follows its new state before anything else runs.
        drop(e);
        if release {
            self.queue_ack(PacketType::PubRel, msg, addr, o);
        }
    }

    pub(super) fn on_pubrel(&mut self, o: &Opened<'_>, plaintext: &[u8]) {
        let Ok(a) = Ack::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        for msg in a.ids() {
            if self.qos2.release(msg, (o.sender.session, o.scope)).is_err() {
                self.stats.drop(DropReason::WrongSender);
                continue;
            }
            self.queue_ack(PacketType::PubComp, msg, o.sender.addr, o);
        }
    }

    pub(super) fn on_subscription(&mut self, now: Instant, o: &Opened<'_>, plaintext: &[u8]) {
        let Ok(s) = Subscription::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        if !self.id_matches(s.pattern.as_str(), &o.header.channel_id) {
            self.stats.drop(DropReason::ChannelMismatch);
            return;
        }
        if self.keys.scope_for_pattern(s.pattern) != o.scope {
            // Announced under other keys than those of the scope covering it.
            self.stats.drop(DropReason::ScopeMismatch);
            return;
        }
        let id = self.keys.channel_id(s.pattern.as_str());
        if o.header.packet_type == PacketType::Unsubscribe {
            self.peers.remove_sub(o.sender.id, id);
            return;
        }
        let new = match self.peers.add_sub(o.sender.id, s.pattern, (id, o.scope)) {
            Ok(new) => new,
            Err(_) => {
                self.stats.drop(DropReason::PeerSubsFull);
                false
            }
        };
        if new {
            self.join_in_flight(now, s.pattern, o.sender);
        }
        if new && s.options & body::SUB_WANTS_RETAINED != 0 {
            self.serve_retained(now, s.pattern, o.sender);
        }
    }

    pub(super) fn on_heartbeat(&mut self, now: Instant, o: &Opened<'_>, plaintext: &[u8]) {
        let (sender, scope) = (o.sender, o.scope);
        let Ok(hb) = Heartbeat::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        let liveness = self
            .config
            .liveness_timeout
            .max(Duration::from_secs(u64::from(hb.interval_s)).saturating_mul(3));
        let keys = &self.keys;
        let covers = |p: crate::channel::Pattern<'_>| keys.scope_for_pattern(p) == scope;
        let maps = (|p: &str| keys.channel_id(p), covers);
        self.peers.get_mut(sender.id).max_datagram = hb.max_datagram;
        let Some(sync) = self.peers.sync((sender.id, scope), &hb, liveness, maps) else {
            return;
        };
        for _ in 0..sync.full {
            self.stats.drop(DropReason::PeerSubsFull);
        }
        for _ in 0..sync.refused {
            self.stats.drop(DropReason::ScopeMismatch);
        }
        // Patterns learnt from a heartbeat mean the SUBSCRIBE was lost: serve retained now.
        for pat in sync.new_patterns {
            self.join_in_flight(now, pat, sender);
            self.serve_retained(now, pat, sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::keys::{KeyPair, Keyring};
    use crate::node::{Config, DropReason, Node, PublishOptions};
    use crate::{Addr, Instant};

    type Small = Node<Keyring<0>, 2, 2, 4, 1, 4, 2, 64>;

    fn node(keys: Keyring<0>, seed: u8) -> Small {
        Node::new(Config::default(), keys, [seed; 32], Instant::ZERO, 1_000_000)
    }

    /// Moves every datagram between `a` and `b` until both are quiet.
    fn pump(a: &mut Small, b: &mut Small, now: Instant) -> (Option<bool>, usize) {
        let (addr_a, addr_b) = (Addr::V4([10, 0, 0, 1], 1), Addr::V4([10, 0, 0, 2], 2));
        let mut buf = [0u8; 1500];
        let (mut got, mut rounds) = (None, 0);
        loop {
            let mut moved = false;
            while let Some(t) = a.poll_transmit(now, &mut buf) {
                moved = true;
                let _ = b.handle_packet(now, addr_a, &mut buf[..t.len]);
            }
            while let Some(t) = b.poll_transmit(now, &mut buf) {
                moved = true;
                if let Some(m) = a.handle_packet(now, addr_b, &mut buf[..t.len]) {
                    got = Some(m.name.as_str() == "t/x" && m.body == b"hello");
                }
            }
            rounds += 1;
            if !moved || rounds > 20 {
                return (got, rounds);
            }
        }
    }

    /// Key rotation: a node that rotated accepts packets under its previous keys during
    /// the overlap (channel ids included), and sends under its current keys only.
    #[test]
    fn rotation_accepts_previous_keys_and_sends_current() {
        let old = KeyPair::new([1; 32], [2; 32]);
        let mut a = node(Keyring::new(&old).unwrap(), 1);
        let mut b = node(Keyring::new(&old).unwrap(), 2);
        a.subscribe("t/#").unwrap();
        let now = Instant::ZERO;
        // They meet (challenge and echo both ways) before A rotates.
        let (_, rounds) = pump(&mut a, &mut b, now);
        assert!(rounds <= 20);
        assert_eq!((a.peers().count(), b.peers().count()), (1, 1));
        a.keys_mut().rotate(&KeyPair::new([3; 32], [4; 32])).unwrap();
        let bad_mac = b.stats().drops(DropReason::BadMac);
        // A's heartbeat, under its new keys, is unreadable to B.
        a.subscribe("t/y").unwrap();
        let mut buf = [0u8; 1500];
        let t = a.poll_transmit(now, &mut buf).unwrap();
        assert!(b.handle_packet(now, Addr::V4([10, 0, 0, 1], 1), &mut buf[..t.len]).is_none());
        assert_eq!(b.stats().drops(DropReason::BadMac), bad_mac + 1);
        // B's publish, under the old keys, reaches A.
        let drops = a.stats().total_drops();
        b.publish(now, "t/x", b"hello", PublishOptions::default()).unwrap();
        assert_eq!(pump(&mut a, &mut b, now).0, Some(true));
        assert_eq!(a.stats().total_drops(), drops);
    }
}
