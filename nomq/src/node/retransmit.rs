//! The transmission state machine of one outbox entry, as a pure function: it decides
//! what the entry sends next and advances its round; [`Node`](super::Node) seals and
//! schedules. Rounds: the first transmission goes to the publish's destination; each
//! retransmission round then visits every known target that has not finished, by
//! unicast; while no subscriber is known, the fan-out is repeated a few times instead.

use super::outbox::{Entry, TState};
use crate::wire::SessionId;

/// Fan-out repeats of a QoS 1/2 publish while no subscriber is known, before it ends
/// with [`Status::NoSubscribers`](super::Status::NoSubscribers). Covers the start-up
/// race between a first publish and the subscribers' announcements.
pub(super) const NO_SUBSCRIBER_ROUNDS: u8 = 2;

/// What an entry sends next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    /// The first transmission, to the destination.
    First,
    /// A repeat of the fan-out (no subscriber known yet); schedule the next round.
    Fanout,
    /// A retransmission to one target: the PUBLISH, or for QoS 2 past PUBREC, the PUBREL.
    Target(SessionId, TState),
    /// The round is over: schedule the next one.
    RoundEnd,
    /// No subscriber appeared in time: the entry ends (its expiry is set to now).
    GiveUp,
}

/// Where an entry is in its round: what [`Entry::next_action`] advances.
#[derive(Clone, Copy)]
struct Round {
    cursor: usize,
    in_round: bool,
    attempts: u8,
}

impl<const P: usize, const M: usize> Entry<P, M> {
    /// Decides the next transmission and advances the round. Targets must have been
    /// collected first where [`Entry::needs_targets`] says so.
    pub(super) fn next_action(&mut self) -> Action {
        let mut r = Round { cursor: self.cursor, in_round: self.in_round, attempts: self.attempts };
        let a = self.step(&mut r);
        (self.cursor, self.in_round, self.attempts) = (r.cursor, r.in_round, r.attempts);
        a
    }

    /// What [`Entry::next_action`] would return, without advancing anything.
    pub(super) fn peek_action(&self) -> Action {
        let mut r = Round { cursor: self.cursor, in_round: self.in_round, attempts: self.attempts };
        self.step(&mut r)
    }

    fn step(&self, r: &mut Round) -> Action {
        if self.msg.is_none() {
            return Action::First;
        }
        if !r.in_round {
            r.cursor = 0;
            if self.targets.is_empty() {
                r.attempts += 1;
                if r.attempts > NO_SUBSCRIBER_ROUNDS {
                    return Action::GiveUp;
                }
                return Action::Fanout;
            }
            r.in_round = true;
        }
        while let Some(t) = self.targets.get(r.cursor).copied() {
            r.cursor += 1;
            if t.state != TState::Done && t.state != TState::Lost {
                return Action::Target(t.session, t.state);
            }
        }
        r.in_round = false;
        r.attempts += 1;
        Action::RoundEnd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::MessageId;
    use crate::channel::{ChannelId, ChannelName};
    use crate::keys::ScopeIndex;
    use crate::node::outbox::{Stored, TargetPeer};
    use crate::node::{Destination, PublishHandle};
    use crate::time::Instant;
    use crate::wire::Qos;

    fn entry(qos: Qos) -> Entry<4, 32> {
        let name = ChannelName::new("a").unwrap();
        let id = (ChannelId::default(), ScopeIndex::NETWORK);
        let body = Stored::new(name, b"x", id, qos, Instant::from_micros(1000)).unwrap();
        Entry::new(PublishHandle(1), body, (false, 0, Destination::All), Instant::ZERO, None)
    }

    #[test]
    fn rounds_visit_pending_targets_then_end() {
        let mut e = entry(Qos::ExactlyOnce);
        assert_eq!(e.next_action(), Action::First);
        e.msg = Some(MessageId::default());
        for (s, state) in [(1, TState::AwaitRec), (2, TState::Done), (3, TState::AwaitComp)] {
            e.targets.push(TargetPeer { session: SessionId(s), state }).unwrap();
        }
        assert_eq!(e.peek_action(), Action::Target(SessionId(1), TState::AwaitRec));
        assert!(!e.in_round, "peeking advances nothing");
        assert_eq!(e.next_action(), Action::Target(SessionId(1), TState::AwaitRec));
        assert!(e.in_round);
        assert_eq!(e.next_action(), Action::Target(SessionId(3), TState::AwaitComp));
        assert_eq!(e.next_action(), Action::RoundEnd);
        assert_eq!((e.in_round, e.attempts), (false, 1));
        // The next round starts over at the first target.
        assert_eq!(e.next_action(), Action::Target(SessionId(1), TState::AwaitRec));
    }

    #[test]
    fn without_subscribers_the_fanout_repeats_then_gives_up() {
        let mut e = entry(Qos::AtLeastOnce);
        e.msg = Some(MessageId::default());
        for _ in 0..NO_SUBSCRIBER_ROUNDS {
            assert_eq!(e.next_action(), Action::Fanout);
        }
        assert_eq!(e.next_action(), Action::GiveUp);
    }
}
