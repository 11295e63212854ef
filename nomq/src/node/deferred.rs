//! Deferred acknowledgement: a delivered QoS 1/2 message whose PUBACK/PUBREC the
//! application withholds until it has done something with it (a bridge: until an MQTT
//! broker acknowledged it), then sends ([`Node::complete_delivery`]) or forgets
//! ([`Node::abandon_delivery`], the publisher retransmits and it is delivered again).
//!
//! The table holds `Q` entries at most (the node's QoS 2 receive-state capacity, so a
//! preset's memory budget covers it); an entry ends when the application completes or
//! abandons it, or at its message's expiry (by then the publisher gave up). While an
//! entry waits, retransmissions of its message are neither delivered nor acknowledged.
//!
//! QoS 2 and the state store: a deferred QoS 2 message holds no receive state (it
//! promised the publisher nothing yet), so a state store never saves it and a restart
//! delivers its next retransmission again. Completion creates the receive state and,
//! under the write-ahead rule, its PUBREC waits until the state holding it is saved.

use super::Node;
use super::announce::Control;
use super::qos2_rx::Rx;
use super::types::DropReason;
use crate::addr::Addr;
use crate::body::MessageId;
use crate::channel::ChannelId;
use crate::keys::{KeyLookup, ScopeIndex};
use crate::time::Instant;
use crate::wire::{PacketType, Qos, SessionId};
use heapless::Vec;

/// The acknowledgement a delivered QoS 1/2 message is owed, and until when.
#[derive(Clone, Copy, Debug)]
pub(super) struct OwedAck {
    pub(super) msg: MessageId,
    pub(super) qos: Qos,
    pub(super) to: Addr,
    pub(super) session: SessionId,
    pub(super) channel_id: ChannelId,
    pub(super) scope: ScopeIndex,
    pub(super) expires: Instant,
}

/// Names one deferred delivery; returned by [`Node::defer_delivery`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeliveryToken {
    msg: MessageId,
}

impl DeliveryToken {
    /// The message whose acknowledgement this token withholds.
    pub fn message(&self) -> MessageId {
        self.msg
    }
}

/// Why [`Node::complete_delivery`] sent nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CompleteError {
    /// No such deferred delivery: it expired (the publisher gave up; counted as
    /// [`DropReason::DeferralExpired`]), or it was completed or abandoned already.
    Unknown,
}

impl core::fmt::Display for CompleteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Unknown => f.write_str("no such deferred delivery (expired or already done)"),
        }
    }
}

impl core::error::Error for CompleteError {}

#[derive(Clone, Copy, Debug)]
struct Entry {
    ack: OwedAck,
    /// The application completed it, but the acknowledgement found no room (control
    /// queue or QoS 2 receive states full): the next retransmission is acknowledged
    /// (and not delivered) instead.
    completed: bool,
}

/// What a PUBLISH of a deferred message does.
#[derive(Clone, Copy, Debug)]
pub(super) enum Retransmission {
    /// Not deferred: the ordinary path.
    NotDeferred,
    /// Still deferred: neither delivered nor acknowledged.
    Withheld,
    /// Completed without room for its acknowledgement: acknowledge it now.
    Owed(OwedAck),
}

/// The deferred deliveries, `Q` at most.
#[derive(Debug, Default)]
pub(super) struct DeferredAcks<const Q: usize> {
    entries: Vec<Entry, Q>,
}

impl<const Q: usize> DeferredAcks<Q> {
    fn position(&self, msg: MessageId) -> Option<usize> {
        self.entries.iter().position(|e| e.ack.msg == msg)
    }

    /// Classifies a received PUBLISH of `msg` (coming from `from`, its latest address).
    pub(super) fn on_publish(&mut self, msg: MessageId, from: Addr) -> Retransmission {
        let Some(i) = self.position(msg) else { return Retransmission::NotDeferred };
        let e = &mut self.entries[i];
        e.ack.to = from;
        if e.completed {
            let ack = e.ack;
            self.entries.swap_remove(i);
            Retransmission::Owed(ack)
        } else {
            Retransmission::Withheld
        }
    }

    /// Owes `ack` again (its retransmission found no room either).
    pub(super) fn owe(&mut self, ack: OwedAck) -> bool {
        self.entries.push(Entry { ack, completed: true }).is_ok()
    }

    /// Drops entries whose message expired; returns how many.
    pub(super) fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|e| e.ack.expires > now);
        before - self.entries.len()
    }

    pub(super) fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.entries.iter().map(|e| e.ack.expires)
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
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
    /// Withholds the acknowledgement of the QoS 1/2 message the last
    /// [`Node::handle_packet`] returned: its PUBACK/PUBREC is not sent until
    /// [`Node::complete_delivery`]; [`Node::abandon_delivery`] forgets it instead (the
    /// publisher retransmits and it is delivered again). Until then, retransmissions of
    /// it are neither delivered nor acknowledged (counted as
    /// [`DropReason::DeferredDuplicate`]). An entry nobody completes ends at the
    /// message's expiry ([`DropReason::DeferralExpired`]).
    ///
    /// Call it right after `handle_packet`, before any other input or poll (the
    /// `deliver` callback of [`Node::handle_datagram`] cannot defer). Returns
    /// `None` and changes nothing when there is no such message, when it is QoS 0 (no
    /// acknowledgement to withhold), or when `Q` deliveries are deferred already: then
    /// call [`Node::refuse_delivery`] if the application cannot take it unacknowledged.
    pub fn defer_delivery(&mut self) -> Option<DeliveryToken> {
        let d = self.last_delivery?;
        let ack = d.owed?;
        if self.deferred.entries.push(Entry { ack, completed: false }).is_err() {
            return None;
        }
        self.last_delivery = None;
        if d.ack_queued {
            self.announce.unqueue_ack(d.msg);
        }
        if d.qos2_state {
            // It promised nothing yet: completion creates the receive state.
            self.qos2.forget(d.msg);
        }
        Some(DeliveryToken { msg: d.msg })
    }

    /// Sends the acknowledgement [`Node::defer_delivery`] withheld: PUBACK for QoS 1;
    /// for QoS 2 the receive state is created (suppressing later duplicates) and PUBREC
    /// follows, after the state is saved if persistence is on. Should the control queue
    /// or the QoS 2 receive states be full, the next retransmission is acknowledged
    /// instead (and not delivered).
    ///
    /// # Errors
    /// [`CompleteError::Unknown`]: the deferral expired, or was completed or abandoned.
    pub fn complete_delivery(
        &mut self,
        now: Instant,
        token: DeliveryToken,
    ) -> Result<(), CompleteError> {
        self.last_delivery = None;
        self.expire_deferred(now);
        let i = self.deferred.position(token.msg).ok_or(CompleteError::Unknown)?;
        if self.deferred.entries[i].completed {
            return Err(CompleteError::Unknown);
        }
        let ack = self.deferred.entries[i].ack;
        if self.send_owed(now, ack) {
            self.deferred.entries.swap_remove(i);
        } else {
            self.deferred.entries[i].completed = true;
        }
        Ok(())
    }

    /// Forgets a deferred delivery without acknowledging it: the publisher retransmits
    /// and the message is delivered again (counted as [`DropReason::DeliveryRefused`]).
    /// Returns whether it was still deferred.
    pub fn abandon_delivery(&mut self, token: DeliveryToken) -> bool {
        self.last_delivery = None;
        let Some(i) = self.deferred.position(token.msg) else { return false };
        if self.deferred.entries[i].completed {
            return false;
        }
        self.deferred.entries.swap_remove(i);
        self.stats.delivered = self.stats.delivered.saturating_sub(1);
        self.stats.drop(DropReason::DeliveryRefused);
        true
    }

    /// Deliveries deferred now (completed ones waiting for room to acknowledge
    /// included).
    pub fn deferred_len(&self) -> usize {
        self.deferred.len()
    }

    pub(super) fn expire_deferred(&mut self, now: Instant) {
        for _ in 0..self.deferred.expire(now) {
            self.stats.drop(DropReason::DeferralExpired);
        }
    }

    /// Queues the acknowledgement `ack` is owed; `false` if there was no room for it.
    pub(super) fn send_owed(&mut self, now: Instant, ack: OwedAck) -> bool {
        let OwedAck { msg, to, session, channel_id, scope, expires, .. } = ack;
        let kind = match ack.qos {
            Qos::AtLeastOnce => PacketType::PubAck,
            Qos::ExactlyOnce => match self.qos2.admit(now, msg, (session, scope), expires) {
                Rx::New | Rx::Duplicate { re_ack: true } => PacketType::PubRec,
                // Released already: the publisher had its PUBREC.
                Rx::Duplicate { re_ack: false } => return true,
                Rx::Full => {
                    self.stats.drop(DropReason::Qos2Full);
                    return false;
                }
            },
            // Never deferred (see `defer_delivery`).
            Qos::AtMostOnce => return true,
        };
        if kind == PacketType::PubRec {
            // Write-ahead: the PUBREC waits until the state holding it is saved.
            self.note_unsaved();
        }
        if self.announce.control.is_full() {
            self.stats.drop(DropReason::ControlQueueFull);
            if kind == PacketType::PubRec {
                // Its state suppresses duplicates and re-acknowledges them from now on.
                return true;
            }
            return false;
        }
        self.queue_control(Control::Ack { kind, msg, count: 1, to, session, channel_id, scope })
    }
}

#[cfg(test)]
mod tests {
    use crate::keys::{KeyPair, Keyring};
    use crate::node::{Config, Node, Packets, PublishOptions};
    use crate::wire::{PacketType, Qos};
    use crate::{Addr, Instant};

    /// Two QoS 2 receive states, so two deferrals at most.
    type Small = Node<Keyring<0>, 2, 2, 8, 1, 2, 2, 64>;
    const A: Addr = Addr::V4([10, 0, 0, 1], 1);
    const B: Addr = Addr::V4([10, 0, 0, 2], 2);

    fn pair() -> (Small, Small) {
        let k = KeyPair::new([1; 32], [2; 32]);
        let node = |seed| {
            Small::new(Config::default(), Keyring::new(&k).unwrap(), [seed; 32], Instant::ZERO, 1)
        };
        let (mut a, mut b) = (node(1), node(2));
        b.subscribe("t/#").unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..20 {
            while let Some(t) = a.poll_transmit(Instant::ZERO, &mut buf) {
                for p in Packets::new(&mut buf[..t.len]) {
                    let _ = b.handle_packet(Instant::ZERO, A, p);
                }
            }
            while let Some(t) = b.poll_transmit(Instant::ZERO, &mut buf) {
                for p in Packets::new(&mut buf[..t.len]) {
                    let _ = a.handle_packet(Instant::ZERO, B, p);
                }
            }
        }
        assert_eq!(a.subscribers("t/x").count(), 1);
        (a, b)
    }

    /// The type of the first packet of the next datagram `n` sends, if any, and the
    /// datagram's length.
    fn next_type(n: &mut Small, buf: &mut [u8]) -> Option<(PacketType, usize)> {
        let t = n.poll_transmit(Instant::ZERO, buf)?;
        // The type is the fourth header byte (docs/PROTOCOL.md §1).
        Some((PacketType::from_u8(buf[3]).ok()?, t.len))
    }

    /// Hands the one packet of `datagram` to `n`; whether it delivered a message.
    fn deliver(n: &mut Small, datagram: &mut [u8]) -> bool {
        let mut packets = Packets::new(datagram);
        let p = packets.next().expect("one packet");
        n.handle_packet(Instant::ZERO, A, p).is_some()
    }

    #[test]
    fn full_table_refuses_and_deferral_withholds_the_ack() {
        let (mut a, mut b) = pair();
        let mut buf = [0u8; 1500];
        for i in 0..3u8 {
            let opts = PublishOptions::qos(Qos::AtLeastOnce);
            a.publish(Instant::ZERO, "t/x", &[i], opts).unwrap();
            let (ty, len) = next_type(&mut a, &mut buf).unwrap();
            assert_eq!(ty, PacketType::Publish);
            assert!(deliver(&mut b, &mut buf[..len]));
            if i < 2 {
                assert!(b.defer_delivery().is_some());
                assert!(!b.refuse_delivery(), "a deferred message is not refused");
            } else {
                assert!(b.defer_delivery().is_none(), "the table holds Q deferrals");
                assert!(b.refuse_delivery());
            }
        }
        assert_eq!(b.deferred_len(), 2);
        // No PUBACK leaves B (it may still announce itself).
        while let Some((ty, _)) = next_type(&mut b, &mut buf) {
            assert!(!matches!(ty, PacketType::PubAck), "{ty:?}");
        }
    }

    #[test]
    fn completed_qos2_pubrec_waits_for_the_save() {
        let (mut a, mut b) = pair();
        b.enable_persistence();
        let mut state = [0u8; Small::STATE_LEN];
        let mut buf = [0u8; 1500];
        a.publish(Instant::ZERO, "t/x", b"v", PublishOptions::qos(Qos::ExactlyOnce)).unwrap();
        let (_, len) = next_type(&mut a, &mut buf).unwrap();
        assert!(deliver(&mut b, &mut buf[..len]));
        let token = b.defer_delivery().unwrap();
        b.export_state(Instant::ZERO, &mut state).unwrap();
        while let Some((ty, _)) = next_type(&mut b, &mut buf) {
            assert_ne!(ty, PacketType::PubRec);
        }
        b.complete_delivery(Instant::ZERO, token).unwrap();
        assert!(b.state_unsaved(), "the receive state completion made must be saved first");
        assert!(b.poll_transmit(Instant::ZERO, &mut buf).is_none());
        b.export_state(Instant::ZERO, &mut state).unwrap();
        assert_eq!(next_type(&mut b, &mut buf).map(|t| t.0), Some(PacketType::PubRec));
    }
}
