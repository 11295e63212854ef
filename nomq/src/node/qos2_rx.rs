//! QoS 2 receiver state: which messages were delivered and await PUBREL, so that a
//! retransmitted PUBLISH is not delivered twice. Bounded to `Q` states; a state ends at
//! its message's expiry, or when the publisher's low-water mark passes it.

use crate::body::MessageId;
use crate::keys::ScopeIndex;
use crate::time::Instant;
use crate::wire::SessionId;
use heapless::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxState {
    Received,
    Released,
}

#[derive(Clone, Copy, Debug)]
struct Qos2Rx {
    msg: MessageId,
    /// Session that sent the first copy, and the key scope it was sealed under: only a
    /// PUBREL from the same sender under the same scope releases it.
    from: SessionId,
    scope: ScopeIndex,
    state: RxState,
    expires: Instant,
}

/// What to do with a QoS 2 PUBLISH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rx {
    /// First copy: deliver it and answer PUBREC (a state now holds it).
    New,
    /// Seen before: do not deliver; answer PUBREC again if `re_ack` (no PUBREL yet).
    Duplicate { re_ack: bool },
    /// No room for another state: refuse it (the publisher retransmits).
    Full,
}

/// One receive state as the state store keeps it (`store.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Saved {
    pub(super) msg: MessageId,
    pub(super) from: SessionId,
    pub(super) scope: ScopeIndex,
    pub(super) released: bool,
    pub(super) expires: Instant,
}

/// A PUBREL that names a message another sender, or another key scope, started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ReleaseMismatch;

/// The receive states, `Q` at most.
#[derive(Debug, Default)]
pub(super) struct Qos2Receiver<const Q: usize> {
    states: Vec<Qos2Rx, Q>,
}

impl<const Q: usize> Qos2Receiver<Q> {
    /// The publisher `session` finished everything below packet id `low`: forget it.
    pub(super) fn advance_low(&mut self, session: SessionId, low: u32) {
        self.states.retain(|q| q.msg.session != session || q.msg.packet_id.0 >= low);
    }

    /// Decides on a copy of `msg` from `from` under `scope` that lives until `expires`.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        msg: MessageId,
        (from, scope): (SessionId, ScopeIndex),
        expires: Instant,
    ) -> Rx {
        self.expire(now);
        if let Some(q) = self.states.iter_mut().find(|q| q.msg == msg) {
            q.expires = q.expires.max(expires);
            return Rx::Duplicate { re_ack: q.state == RxState::Received };
        }
        match self.states.push(Qos2Rx { msg, from, scope, state: RxState::Received, expires }) {
            Ok(()) => Rx::New,
            Err(_) => Rx::Full,
        }
    }

    /// PUBREL for `msg` arrived from `from` under `scope`. Refused (`Err`, nothing
    /// changes) when a state exists that another sender or another scope created.
    pub(super) fn release(
        &mut self,
        msg: MessageId,
        (from, scope): (SessionId, ScopeIndex),
    ) -> Result<(), ReleaseMismatch> {
        match self.states.iter_mut().find(|q| q.msg == msg) {
            Some(q) if q.from != from || q.scope != scope => Err(ReleaseMismatch),
            Some(q) => {
                q.state = RxState::Released;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Forgets `msg` (its delivery was refused: the retransmission is a first copy).
    pub(super) fn forget(&mut self, msg: MessageId) {
        self.states.retain(|q| q.msg != msg);
    }

    /// Every state, for the state store.
    pub(super) fn saved(&self) -> impl Iterator<Item = Saved> + '_ {
        self.states.iter().map(|q| Saved {
            msg: q.msg,
            from: q.from,
            scope: q.scope,
            released: q.state == RxState::Released,
            expires: q.expires,
        })
    }

    /// Puts back a state the store saved (a duplicate id or a full table: ignored; the
    /// caller checked the count against `Q`).
    pub(super) fn restore(&mut self, s: Saved) {
        if self.states.iter().any(|q| q.msg == s.msg) {
            return;
        }
        let state = if s.released { RxState::Released } else { RxState::Received };
        let q = Qos2Rx { msg: s.msg, from: s.from, scope: s.scope, state, expires: s.expires };
        let _ = self.states.push(q);
    }

    pub(super) fn expire(&mut self, now: Instant) {
        self.states.retain(|q| q.expires > now);
    }

    pub(super) fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.states.iter().map(|q| q.expires)
    }

    pub(super) fn len(&self) -> usize {
        self.states.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PacketId;

    fn msg(s: u32, p: u32) -> MessageId {
        MessageId { session: SessionId(s), packet_id: PacketId(p) }
    }
    /// Sender and scope of every first copy in these tests.
    const FROM: (SessionId, ScopeIndex) = (SessionId(1), ScopeIndex::NETWORK);

    fn at(s: u64) -> Instant {
        Instant::from_micros(s * 1_000_000)
    }

    #[test]
    fn duplicates_are_suppressed_until_release_and_expiry() {
        let mut r: Qos2Receiver<2> = Qos2Receiver::default();
        assert_eq!(r.admit(at(0), msg(1, 1), FROM, at(10)), Rx::New);
        assert_eq!(r.admit(at(1), msg(1, 1), FROM, at(10)), Rx::Duplicate { re_ack: true });
        assert_eq!(r.release(msg(1, 1), (SessionId(9), ScopeIndex(1))), Err(ReleaseMismatch));
        assert_eq!(r.release(msg(1, 1), (SessionId(1), ScopeIndex(1))), Err(ReleaseMismatch));
        assert_eq!(r.admit(at(1), msg(1, 1), FROM, at(10)), Rx::Duplicate { re_ack: true });
        assert_eq!(r.release(msg(1, 1), FROM), Ok(()));
        assert_eq!(r.admit(at(2), msg(1, 1), FROM, at(10)), Rx::Duplicate { re_ack: false });
        assert_eq!(r.admit(at(2), msg(1, 2), FROM, at(10)), Rx::New);
        assert_eq!(r.admit(at(2), msg(1, 3), FROM, at(10)), Rx::Full);
        // Past their expiry the states are gone.
        assert_eq!(r.admit(at(11), msg(1, 3), FROM, at(20)), Rx::New);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn low_water_mark_and_refusal_forget_states() {
        let mut r: Qos2Receiver<4> = Qos2Receiver::default();
        for p in 1..=3 {
            assert_eq!(r.admit(at(0), msg(1, p), FROM, at(10)), Rx::New);
        }
        assert_eq!(r.admit(at(0), msg(2, 1), FROM, at(10)), Rx::New);
        r.advance_low(SessionId(1), 3);
        assert_eq!(r.len(), 2);
        r.forget(msg(2, 1));
        assert_eq!(r.admit(at(0), msg(2, 1), FROM, at(10)), Rx::New);
        assert_eq!(r.deadlines().count(), 2);
    }
}
