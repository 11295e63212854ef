//! `Node`'s handling of an authenticated packet: admission (freshness, replay, peer
//! table, rate limit), then one handler per packet type.

use super::announce::Control;
use super::outbox::{TState, TargetPeer};
use super::peers::{Departure, Sender};
use super::qos2_rx::Rx;
use super::types::{ClockMode, DropReason, Event, LostReason, Message};
use super::{Delivered, Node};
use crate::addr::Addr;
use crate::body::{self, Ack, Heartbeat, MessageId, Publish, Subscription};
use crate::channel::ChannelId;
use crate::envelope::{self, OpenError};
use crate::keys::{Generation, KeyLookup, ScopeIndex};
use crate::time::{Duration, Instant};
use crate::wire::{Header, PacketType, Qos, WireError};

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
    /// Counts a datagram that failed the cheap checks or the MAC; the latter also
    /// counts against the source's lockout.
    pub(super) fn on_unverified(&mut self, now: Instant, from: Addr, e: OpenError) {
        if let OpenError::Wire(e) = e {
            self.stats.drop(wire_reason(e));
            return;
        }
        self.stats.drop(DropReason::BadMac);
        if let Some(until) = self.lockouts.fail(from, now, &self.config.lockout) {
            self.push_event(Event::LockedOut { addr: from, until });
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
    fn fresh(&mut self, now: Instant, h: &Header) -> bool {
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

    /// Freshness, replay, peer-table and rate-limit checks for an authenticated packet.
    /// Returns its sender.
    pub(super) fn admit(&mut self, now: Instant, from: Addr, h: &Header) -> Option<Sender> {
        if !self.fresh(now, h) {
            return None;
        }
        let id = match self.peers.find(h.session_id) {
            Some(id) => {
                let refusal = match self.peers.get(id).replay.check(h.packet_id.0) {
                    super::limits::ReplayCheck::Fresh => None,
                    super::limits::ReplayCheck::Duplicate => Some(DropReason::Replay),
                    super::limits::ReplayCheck::TooOld => Some(DropReason::ReplayTooOld),
                };
                if let Some(r) = refusal {
                    self.stats.drop(r);
                    return None;
                }
                id
            }
            None => self.admit_new(now, from, h)?,
        };
        let (window, limit) = (self.config.rate_window, self.config.rate_limit);
        let p = self.peers.get_mut(id);
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
        Some(Sender { id, session: p.session, addr: from })
    }

    /// A session not in the table: refused if it left before (at or below what was
    /// seen) or is older than the floor; otherwise it joins the table.
    fn admit_new(&mut self, now: Instant, from: Addr, h: &Header) -> Option<super::peers::PeerId> {
        let synced = matches!(self.config.clock, ClockMode::Synced { .. });
        let Ok(floor) =
            self.peers.evicted.readmit(h.session_id, h.packet_id.0, h.timestamp, synced)
        else {
            self.stats.drop(DropReason::EvictedSession);
            return None;
        };
        let (id, gone) = self.peers.insert(now, from, h.session_id, self.config.liveness_timeout);
        if let Some(gone) = gone {
            if gone.reason == LostReason::Replaced {
                // In-flight publishes now wait on the new session.
                self.retarget(gone.session, h.session_id);
            }
            self.peer_left(gone);
        }
        if let Some(f) = floor {
            self.peers.get_mut(id).replay.mark(f);
        }
        self.push_event(Event::PeerJoined { session: h.session_id, addr: from });
        // Tell the newcomer about our subscriptions without waiting a full interval.
        self.announce.heartbeat_early(now);
        Some(id)
    }

    fn retarget(&mut self, old: crate::wire::SessionId, new: crate::wire::SessionId) {
        for t in self.outbox.iter_mut().flat_map(|e| e.targets.iter_mut()) {
            if t.session == old {
                t.session = new;
            }
        }
    }

    /// A peer left the table: unless it was replaced, its pending acknowledgements
    /// will never come. Reported as [`Event::PeerLost`].
    pub(super) fn peer_left(&mut self, gone: Departure) {
        if gone.reason != LostReason::Replaced {
            for t in self.outbox.iter_mut().flat_map(|e| e.targets.iter_mut()) {
                if t.session == gone.session && t.state != TState::Done {
                    t.state = TState::Lost;
                }
            }
        }
        let Departure { session, addr, reason } = gone;
        self.push_event(Event::PeerLost { session, addr, reason });
    }

    fn queue_ack(&mut self, kind: PacketType, msg: MessageId, to: Addr, o: &Opened<'_>) -> bool {
        let (channel_id, scope) = (o.header.channel_id, o.scope);
        self.queue_control(Control::Ack { kind, msg, to, channel_id, scope })
    }

    /// Whether `id` is the channel id of `name` under the current or previous network keys.
    fn id_matches(&self, name: &str, id: &ChannelId) -> bool {
        let net = self.keys.network();
        net.current.channel_id(name) == *id
            || net.previous.is_some_and(|p| p.channel_id(name) == *id)
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
        let delivered = match h.flags.qos {
            Qos::AtMostOnce => Delivered { msg: p.msg, ack_queued: false, qos2_state: false },
            Qos::AtLeastOnce => {
                let ack_queued = self.queue_ack(PacketType::PubAck, p.msg, o.sender.addr, o);
                Delivered { msg: p.msg, ack_queued, qos2_state: false }
            }
            Qos::ExactlyOnce => self.receive_qos2(now, o, &p, expires)?,
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
        match self.qos2.admit(now, p.msg, expires) {
            Rx::New => {
                let ack_queued = self.queue_ack(PacketType::PubRec, p.msg, addr, o);
                Some(Delivered { msg: p.msg, ack_queued, qos2_state: true })
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

    pub(super) fn on_ack(&mut self, o: &Opened<'_>, plaintext: &[u8]) {
        let Ok(a) = Ack::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        let (h, scope, session, addr) = (o.header, o.scope, o.sender.session, o.sender.addr);
        let Some(e) = self.outbox.iter_mut().find(|e| e.msg == Some(a.msg)) else {
            if h.packet_type == PacketType::PubRec {
                // We finished (or gave up) but the receiver still holds state: release it.
                self.queue_ack(PacketType::PubRel, a.msg, addr, o);
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
        match (h.packet_type, t.state) {
            (PacketType::PubAck, TState::AwaitAck) => t.state = TState::Done,
            (PacketType::PubRec, TState::AwaitRec | TState::AwaitComp | TState::Lost) => {
                t.state = TState::AwaitComp;
                self.queue_ack(PacketType::PubRel, a.msg, addr, o);
            }
            (PacketType::PubComp, TState::AwaitComp | TState::AwaitRec | TState::Lost) => {
                t.state = TState::Done;
            }
            _ => {}
        }
    }

    pub(super) fn on_pubrel(&mut self, o: &Opened<'_>, plaintext: &[u8]) {
        let Ok(a) = Ack::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        self.qos2.release(a.msg);
        self.queue_ack(PacketType::PubComp, a.msg, o.sender.addr, o);
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
        let id = self.keys.channel_id(s.pattern.as_str());
        if o.header.packet_type == PacketType::Unsubscribe {
            self.peers.remove_sub(o.sender.id, id);
            return;
        }
        let new = match self.peers.add_sub(o.sender.id, s.pattern, id) {
            Ok(new) => new,
            Err(_) => {
                self.stats.drop(DropReason::PeerSubsFull);
                false
            }
        };
        if new && s.options & body::SUB_WANTS_RETAINED != 0 {
            self.serve_retained(now, s.pattern, o.sender);
        }
    }

    pub(super) fn on_heartbeat(&mut self, now: Instant, sender: Sender, plaintext: &[u8]) {
        let Ok(hb) = Heartbeat::parse(plaintext) else {
            self.stats.drop(DropReason::MalformedBody);
            return;
        };
        let liveness = self
            .config
            .liveness_timeout
            .max(Duration::from_secs(u64::from(hb.interval_s)).saturating_mul(3));
        let keys = &self.keys;
        let Some(sync) = self.peers.sync(sender.id, &hb, liveness, |p| keys.channel_id(p)) else {
            return;
        };
        for _ in 0..sync.full {
            self.stats.drop(DropReason::PeerSubsFull);
        }
        // Patterns learnt from a heartbeat mean the SUBSCRIBE was lost: serve retained now.
        for pat in sync.new_patterns {
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

    /// Key rotation: a node that rotated accepts packets under its previous keys during
    /// the overlap (channel ids included), and sends under its current keys only.
    #[test]
    fn rotation_accepts_previous_keys_and_sends_current() {
        let old = KeyPair::new([1; 32], [2; 32]);
        let mut rotated = Keyring::new(&old).unwrap();
        rotated.rotate(&KeyPair::new([3; 32], [4; 32])).unwrap();
        let mut a = node(rotated, 1);
        let mut b = node(Keyring::new(&old).unwrap(), 2);
        let (addr_a, addr_b) = (Addr::V4([10, 0, 0, 1], 1), Addr::V4([10, 0, 0, 2], 2));
        a.subscribe("t/#").unwrap();
        let mut buf = [0u8; 1500];
        let now = Instant::ZERO;
        // A's announcement, under its new keys, is unreadable to B.
        let t = a.poll_transmit(now, &mut buf).unwrap();
        assert!(b.handle_datagram(now, addr_a, &mut buf[..t.len]).is_none());
        assert_eq!(b.stats().drops(DropReason::BadMac), 1);
        // B's publish, under the old keys, reaches A.
        b.publish(now, "t/x", b"hello", PublishOptions::default()).unwrap();
        let mut got = None;
        while let Some(t) = b.poll_transmit(now, &mut buf) {
            if let Some(m) = a.handle_datagram(now, addr_b, &mut buf[..t.len]) {
                got = Some((m.name.as_str() == "t/x", m.body == b"hello", m.subscriptions));
            }
        }
        assert_eq!(got, Some((true, true, crate::node::SubscriptionSet(1))));
        assert_eq!(a.stats().total_drops(), 0);
    }
}
