//! The outbox: messages queued or awaiting acknowledgements, with their targets. Bounded
//! to `O` entries of at most `M` bytes (name + body); each tracks up to `P` targets.
//! An entry leaves once it has an outcome (see [`Entry::status`]).

use super::types::{Destination, Outcome, PublishHandle, Status};
use crate::body::MessageId;
use crate::channel::{ChannelId, ChannelName};
use crate::keys::ScopeIndex;
use crate::time::Instant;
use crate::wire::{Qos, SessionId};
use heapless::Vec;

/// A message as stored: its name and body, and what sending it needs. Outbox entries
/// and retained values hold one each.
#[derive(Clone, Debug)]
pub(super) struct Stored<const M: usize> {
    pub(super) name_len: u8,
    /// Name, then body.
    pub(super) data: Vec<u8, M>,
    pub(super) channel_id: ChannelId,
    pub(super) scope: ScopeIndex,
    pub(super) qos: Qos,
    pub(super) expires: Instant,
}

impl<const M: usize> Stored<M> {
    /// `name` then `body`, which must fit in `M` bytes together (else `None`).
    pub(super) fn new(
        name: ChannelName<'_>,
        body: &[u8],
        (channel_id, scope): (ChannelId, ScopeIndex),
        qos: Qos,
        expires: Instant,
    ) -> Option<Self> {
        let mut data = Vec::new();
        data.extend_from_slice(name.as_str().as_bytes()).ok()?;
        data.extend_from_slice(body).ok()?;
        let name_len = u8::try_from(name.as_str().len()).ok()?;
        Some(Self { name_len, data, channel_id, scope, qos, expires })
    }

    pub(super) fn name(&self) -> Option<ChannelName<'_>> {
        let name = self.data.get(..usize::from(self.name_len))?;
        ChannelName::new(core::str::from_utf8(name).ok()?).ok()
    }

    pub(super) fn body(&self) -> &[u8] {
        self.data.get(usize::from(self.name_len)..).unwrap_or(&[])
    }
}

/// Where one target of a QoS 1/2 publish stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TState {
    AwaitAck,
    AwaitRec,
    AwaitComp,
    Done,
    Lost,
}

impl TState {
    /// The first state of a target of a `qos` publish.
    pub(super) fn initial(qos: Qos) -> Self {
        if qos == Qos::AtLeastOnce { TState::AwaitAck } else { TState::AwaitRec }
    }
    pub(super) fn pending(self) -> bool {
        matches!(self, TState::AwaitAck | TState::AwaitRec | TState::AwaitComp)
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct TargetPeer {
    pub(super) session: SessionId,
    pub(super) state: TState,
}

#[derive(Debug)]
pub(super) struct Entry<const P: usize, const M: usize> {
    pub(super) handle: PublishHandle,
    /// Set on first transmission: that packet's id.
    pub(super) msg: Option<MessageId>,
    pub(super) body: Stored<M>,
    pub(super) retain: bool,
    pub(super) priority: u8,
    pub(super) dest: Destination,
    pub(super) next_at: Instant,
    pub(super) attempts: u8,
    /// Index of the next target to send to in the current retransmission round.
    pub(super) cursor: usize,
    pub(super) in_round: bool,
    pub(super) targets: Vec<TargetPeer, P>,
    /// QoS 2 sequence number (flow-control window), set on first transmission.
    pub(super) seq: u32,
    /// Whether targets were fixed at queue time (retained replies).
    pub(super) preset: bool,
    /// The one subscriber a retained reply is for (whatever its QoS).
    pub(super) preset_to: Option<SessionId>,
    /// When it was first transmitted (peers verified later may join its targets).
    pub(super) first_sent: Instant,
}

impl<const P: usize, const M: usize> Entry<P, M> {
    /// A new entry, due at `now`. `preset` fixes its only target (a retained reply to
    /// one new subscriber) instead of collecting the channel's subscribers.
    pub(super) fn new(
        handle: PublishHandle,
        body: Stored<M>,
        (retain, priority, dest): (bool, u8, Destination),
        now: Instant,
        preset: Option<SessionId>,
    ) -> Self {
        let mut targets = Vec::new();
        if let Some(session) = preset.filter(|_| body.qos != Qos::AtMostOnce) {
            let _ = targets.push(TargetPeer { session, state: TState::initial(body.qos) });
        }
        Self {
            handle,
            msg: None,
            body,
            retain,
            priority,
            dest,
            next_at: now,
            attempts: 0,
            cursor: 0,
            in_round: false,
            targets,
            seq: 0,
            preset: preset.is_some(),
            preset_to: preset,
            first_sent: now,
        }
    }

    pub(super) fn qos(&self) -> Qos {
        self.body.qos
    }

    pub(super) fn pending(&self) -> bool {
        self.targets.iter().any(|t| t.state.pending())
    }

    /// Whether its subscribers must be (re)collected before the next transmission: at
    /// the first, and at each round while none is known (start-up race).
    pub(super) fn needs_targets(&self) -> bool {
        self.qos() != Qos::AtMostOnce
            && !self.preset
            && (self.msg.is_none() || (!self.in_round && self.targets.is_empty()))
    }

    /// Whether it has something to send at `now`.
    pub(super) fn ready(&self, now: Instant, qos2_open: bool, max_attempts: u8) -> bool {
        let first = self.msg.is_none() && (self.qos() != Qos::ExactlyOnce || qos2_open);
        let retry = self.msg.is_some()
            && self.qos() != Qos::AtMostOnce
            && now >= self.next_at
            && self.attempts < max_attempts
            && (self.pending() || self.targets.is_empty());
        now < self.body.expires && (first || self.in_round || retry)
    }

    /// Its outcome, if it has one at `now`.
    pub(super) fn status(&self, now: Instant, max_attempts: u8) -> Option<Status> {
        let none_known = self.targets.is_empty();
        if self.msg.is_none() {
            (now >= self.body.expires).then_some(Status::Expired)
        } else if self.qos() == Qos::AtMostOnce {
            Some(Status::Sent)
        } else if !self.in_round && !none_known && !self.pending() {
            let lost = self.targets.iter().any(|t| t.state == TState::Lost);
            Some(if lost { Status::Unacknowledged } else { Status::Acknowledged })
        } else if now >= self.body.expires {
            Some(if none_known { Status::NoSubscribers } else { Status::Expired })
        } else if !self.in_round && self.attempts >= max_attempts && now >= self.next_at {
            Some(if none_known { Status::NoSubscribers } else { Status::Unacknowledged })
        } else {
            None
        }
    }

    /// The final report of this entry.
    pub(super) fn into_outcome(self, status: Status) -> Outcome<P> {
        let mut acked = Vec::new();
        let mut missing = Vec::new();
        for t in &self.targets {
            let _ = if t.state == TState::Done {
                acked.push(t.session)
            } else {
                missing.push(t.session)
            };
        }
        Outcome {
            handle: self.handle,
            msg: self.msg,
            qos: self.qos(),
            status,
            acked,
            missing,
            retained_reply: self.preset,
        }
    }
}

/// The entry to send next: the highest priority ready one, oldest first among equals.
pub(super) fn pick<const P: usize, const M: usize>(
    outbox: &[Entry<P, M>],
    now: Instant,
    qos2_open: bool,
    max_attempts: u8,
) -> Option<usize> {
    outbox
        .iter()
        .enumerate()
        .filter(|(_, e)| e.ready(now, qos2_open, max_attempts))
        .max_by(|(_, a), (_, b)| {
            // Oldest first among equals; handles increase (wrapping) in publish order.
            let older = b.handle.0.wrapping_sub(a.handle.0).cast_signed().cmp(&0);
            a.priority.cmp(&b.priority).then(older)
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(handle: u32, priority: u8, qos: Qos) -> Entry<4, 32> {
        let name = ChannelName::new("a/b").unwrap();
        let body = Stored::new(
            name,
            b"xy",
            (ChannelId::default(), ScopeIndex::NETWORK),
            qos,
            Instant::from_micros(1000),
        )
        .unwrap();
        Entry::new(
            PublishHandle(handle),
            body,
            (false, priority, Destination::All),
            Instant::ZERO,
            None,
        )
    }

    #[test]
    fn stored_message_splits_name_and_body_and_is_bounded() {
        let e = entry(1, 0, Qos::AtMostOnce);
        assert_eq!(e.body.name().map(|n| n.as_str()), Some("a/b"));
        assert_eq!(e.body.body(), b"xy");
        let name = ChannelName::new("a/b").unwrap();
        let id = (ChannelId::default(), ScopeIndex::NETWORK);
        assert!(Stored::<4>::new(name, b"xy", id, Qos::AtMostOnce, Instant::ZERO).is_none());
    }

    #[test]
    fn pick_prefers_priority_then_age_and_holds_qos2_when_the_window_is_shut() {
        let mut o: Vec<Entry<4, 32>, 4> = Vec::new();
        o.push(entry(u32::MAX, 1, Qos::AtMostOnce)).unwrap();
        o.push(entry(0, 1, Qos::AtMostOnce)).unwrap();
        o.push(entry(2, 0, Qos::ExactlyOnce)).unwrap();
        // Handle u32::MAX was issued before 0 (wrapping): it is older.
        assert_eq!(pick(&o, Instant::ZERO, true, 8), Some(0));
        o[0].priority = 0;
        assert_eq!(pick(&o, Instant::ZERO, true, 8), Some(1));
        o.swap_remove(1);
        o.swap_remove(0);
        assert_eq!(pick(&o, Instant::ZERO, false, 8), None);
        assert_eq!(pick(&o, Instant::from_micros(1000), true, 8), None, "expired");
    }

    #[test]
    fn outcomes_follow_the_targets() {
        let mut e = entry(1, 0, Qos::AtLeastOnce);
        assert_eq!(e.status(Instant::ZERO, 8), None);
        assert_eq!(e.status(Instant::from_micros(1000), 8), Some(Status::Expired));
        e.msg = Some(MessageId::default());
        e.targets.push(TargetPeer { session: SessionId(1), state: TState::Done }).unwrap();
        e.targets.push(TargetPeer { session: SessionId(2), state: TState::AwaitAck }).unwrap();
        assert_eq!(e.status(Instant::ZERO, 8), None);
        e.targets[1].state = TState::Lost;
        assert_eq!(e.status(Instant::ZERO, 8), Some(Status::Unacknowledged));
        let o = e.into_outcome(Status::Unacknowledged);
        assert_eq!(
            (o.acked.as_slice(), o.missing.as_slice()),
            (&[SessionId(1)][..], &[SessionId(2)][..])
        );
    }
}
