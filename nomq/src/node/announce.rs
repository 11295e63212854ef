//! What this node tells others: its local subscriptions, the heartbeat schedule that
//! repeats them, and the control queue (acknowledgements and announcements waiting to
//! be sent, ahead of everything else).

use super::peers::set_digest;
use super::types::SubscriptionSet;
use super::types::Target;
use crate::addr::Addr;
use crate::body::{self, MessageId};
use crate::channel::{ChannelId, ChannelName, MAX_NAME_LEN, Pattern};
use crate::envelope;
use crate::keys::ScopeIndex;
use crate::time::{Duration, Instant};
use crate::wire::{PacketType, SessionId};
use heapless::{Deque, String, Vec};

/// Control queue depth (acks and announcements waiting to be sent).
pub const CONTROL_QUEUE: usize = 16;
/// Shortest spacing of "early" heartbeats sent when a new peer shows up.
const EARLY_HEARTBEAT: Duration = Duration::from_millis(100);

/// A packet waiting in the control queue, serialized only when it is sent.
#[derive(Clone, Debug)]
pub(super) enum Control {
    /// A run of `count` acknowledgements of one kind, for messages with consecutive
    /// packet ids from `msg` on (merged as they are queued: [`Announce::queue`]).
    Ack {
        kind: PacketType,
        msg: MessageId,
        count: u16,
        to: Addr,
        session: SessionId,
        channel_id: ChannelId,
        scope: ScopeIndex,
    },
    /// A CHALLENGE to `session` at `to`.
    Challenge { to: Addr, session: SessionId, challenge: Option<u64>, echo: Option<u64> },
    /// Sealed under `scope`: the keys of the scope that covers the pattern.
    Sub { unsubscribe: bool, pattern: String<MAX_NAME_LEN>, id: ChannelId, scope: ScopeIndex },
}

impl Control {
    /// Where it goes.
    pub(super) fn target(&self) -> Target {
        match self {
            Self::Ack { to, .. } | Self::Challenge { to, .. } => Target::Unicast(*to),
            Self::Sub { .. } => Target::Fanout,
        }
    }

    /// Its length once sealed.
    pub(super) fn sealed_len(&self) -> usize {
        let body = match self {
            Self::Ack { .. } => body::ACK_LEN,
            Self::Challenge { .. } => body::CHALLENGE_LEN,
            // Options byte, length byte, pattern.
            Self::Sub { pattern, .. } => 2 + pattern.len(),
        };
        envelope::sealed_len(body::RECIPIENT_LEN + body)
    }
}

#[derive(Debug)]
pub(super) struct LocalSub {
    pub(super) pattern: String<MAX_NAME_LEN>,
    pub(super) id: ChannelId,
    /// The key scope it is announced under (`KeyLookup::scope_for_pattern`).
    pub(super) scope: ScopeIndex,
}

/// Why a packet could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct QueueFull;

/// Local subscriptions (`S`), the heartbeat schedule and the control queue.
#[derive(Debug)]
pub(super) struct Announce<const S: usize> {
    pub(super) subs: Vec<LocalSub, S>,
    pub(super) next_heartbeat: Instant,
    /// Where the heartbeat round in progress goes on: a scope and the index, among the
    /// subscriptions announced under it, of the first one the next packet carries.
    pub(super) heartbeat_cursor: Option<(ScopeIndex, usize)>,
    last_early_heartbeat: Option<Instant>,
    pub(super) control: Deque<Control, CONTROL_QUEUE>,
}

impl<const S: usize> Announce<S> {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            subs: Vec::new(),
            next_heartbeat: now,
            heartbeat_cursor: None,
            last_early_heartbeat: None,
            control: Deque::new(),
        }
    }

    /// Adds a local subscription; `Ok(false)` if it existed already.
    ///
    /// # Errors
    /// [`QueueFull`]: the subscription table is full.
    pub(super) fn add(
        &mut self,
        pattern: Pattern<'_>,
        (id, scope): (ChannelId, ScopeIndex),
    ) -> Result<bool, QueueFull> {
        if self.subs.iter().any(|s| s.pattern == pattern.as_str()) {
            return Ok(false);
        }
        let pattern = String::try_from(pattern.as_str()).map_err(|_| QueueFull)?;
        self.subs.push(LocalSub { pattern, id, scope }).map_err(|_| QueueFull)?;
        Ok(true)
    }

    /// The subscriptions announced under `scope`, in order.
    pub(super) fn group(&self, scope: ScopeIndex) -> impl Iterator<Item = &LocalSub> {
        self.subs.iter().filter(move |s| s.scope == scope)
    }

    /// The scope whose heartbeat follows `scope`'s in a round: the next higher index
    /// that has subscriptions. (A round starts with the network, even with none.)
    fn next_scope(&self, scope: ScopeIndex) -> Option<ScopeIndex> {
        self.subs.iter().map(|s| s.scope).filter(|s| s.0 > scope.0).min_by_key(|s| s.0)
    }

    /// Removes a local subscription.
    pub(super) fn remove(&mut self, pattern: &str) -> Option<LocalSub> {
        let i = self.subs.iter().position(|s| s.pattern == pattern)?;
        Some(self.subs.swap_remove(i))
    }

    /// The local subscriptions matching `name` (indices into [`Announce::subs`]).
    pub(super) fn matching(&self, name: ChannelName<'_>) -> SubscriptionSet {
        let hit = |s: &LocalSub| Pattern::stored(s.pattern.as_str()).matches(name);
        let bits = self.subs.iter().take(64).enumerate().filter(|(_, s)| hit(s));
        SubscriptionSet(bits.fold(0, |m, (i, _)| m | 1 << i))
    }

    /// Digest of the subscriptions announced under `scope` (what its heartbeats carry).
    pub(super) fn digest(&self, scope: ScopeIndex) -> u32 {
        set_digest(self.group(scope).map(|s| &s.id))
    }

    /// Queues a control packet.
    ///
    /// # Errors
    /// [`QueueFull`]: the control queue is full; the caller counts the drop.
    /// Queues `c`. An acknowledgement that continues the run at the back of the queue
    /// (same kind, recipient, channel and scope; the next packet id of the same session)
    /// joins it instead of taking an entry: a burst of messages from one publisher is
    /// acknowledged by one packet. Returns whether it joined a run.
    pub(super) fn queue(&mut self, c: Control) -> Result<bool, QueueFull> {
        if let Control::Ack { kind, msg, to, session, channel_id, scope, .. } = &c
            && let Some(Control::Ack {
                kind: k,
                msg: m,
                count,
                to: t,
                session: s,
                channel_id: ch,
                scope: sc,
            }) = self.control.back_mut()
        {
            let next = m.packet_id.0.checked_add(u32::from(*count));
            let continues = (&*k, &*t, &*s, &*ch, &*sc) == (kind, to, session, channel_id, scope)
                && m.session == msg.session
                && next == Some(msg.packet_id.0);
            if continues && *count < u16::MAX {
                *count += 1;
                return Ok(true);
            }
        }
        self.control.push_back(c).map(|()| false).map_err(|_| QueueFull)
    }

    /// Takes back the last acknowledgement queued (of `msg`): shortens the run at the back,
    /// or removes it if it was the run's only message.
    pub(super) fn unqueue_ack(&mut self, msg: MessageId) {
        match self.control.back_mut() {
            Some(Control::Ack { msg: m, count, .. }) if *count > 1 => {
                debug_assert_eq!(
                    m.packet_id.0.wrapping_add(u32::from(*count) - 1),
                    msg.packet_id.0
                );
                *count -= 1;
            }
            Some(Control::Ack { msg: m, .. }) => {
                debug_assert_eq!(*m, msg);
                self.control.pop_back();
            }
            _ => debug_assert!(false, "no ack queued"),
        }
    }

    /// A new peer showed up: heartbeat now, or, if an early heartbeat went out less than
    /// [`EARLY_HEARTBEAT`] ago, as soon as that spacing allows. Never dropped: a peer that
    /// joins right after another still hears from us within 100 ms, not a whole interval
    /// later. One early heartbeat already scheduled covers every newcomer before it.
    pub(super) fn heartbeat_early(&mut self, now: Instant) {
        let at = match self.last_early_heartbeat {
            Some(t) if t > now => return,
            Some(t) if now < t + EARLY_HEARTBEAT => t + EARLY_HEARTBEAT,
            _ => now,
        };
        self.last_early_heartbeat = Some(at);
        self.next_heartbeat = self.next_heartbeat.min(at);
    }

    /// The scope and first subscription (within that scope) of the heartbeat due at
    /// `now`, if one is due.
    pub(super) fn heartbeat_due(&self, now: Instant) -> Option<(ScopeIndex, usize)> {
        match self.heartbeat_cursor {
            Some(c) => Some(c),
            None if now >= self.next_heartbeat => Some((ScopeIndex::NETWORK, 0)),
            None => None,
        }
    }

    /// A heartbeat of `scope` from its subscription `first` carrying `written` of them
    /// was sent: go on with the rest of that scope, then the next scope, or schedule
    /// the next round `interval` from `now`.
    pub(super) fn heartbeat_sent(
        &mut self,
        now: Instant,
        (scope, first, written): (ScopeIndex, usize, usize),
        interval: Duration,
    ) {
        let next = first + written;
        if next < self.group(scope).count() && written > 0 {
            self.heartbeat_cursor = Some((scope, next));
        } else if let Some(s) = self.next_scope(scope) {
            self.heartbeat_cursor = Some((s, 0));
        } else {
            self.heartbeat_cursor = None;
            self.next_heartbeat = now + interval;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn subscriptions_match_by_index_and_are_unique() {
        let mut a: Announce<3> = Announce::new(at(0));
        let net = |n| (ChannelId([n; 16]), ScopeIndex::NETWORK);
        assert_eq!(a.add(Pattern::new("a/#").unwrap(), net(1)), Ok(true));
        assert_eq!(a.add(Pattern::new("a/#").unwrap(), net(1)), Ok(false));
        a.add(Pattern::new("b").unwrap(), net(2)).unwrap();
        a.add(Pattern::new("a/+").unwrap(), net(3)).unwrap();
        assert_eq!(a.add(Pattern::new("c").unwrap(), net(4)), Err(QueueFull));
        let ax = a.matching(ChannelName::new("a/x").unwrap());
        assert_eq!(ax, SubscriptionSet(0b101));
        assert_eq!(ax.iter().collect::<Vec<_, 3>>().as_slice(), &[0, 2]);
        assert!(ax.contains(2) && !ax.contains(1) && !ax.contains(64));
        assert_eq!(a.matching(ChannelName::new("b").unwrap()), SubscriptionSet(0b010));
        assert!(a.matching(ChannelName::new("c").unwrap()).is_empty());
        assert!(a.remove("b").is_some() && a.remove("b").is_none());
    }

    #[test]
    fn early_heartbeats_are_spaced_and_rounds_resume_at_the_cursor() {
        const NET: ScopeIndex = ScopeIndex::NETWORK;
        let mut a: Announce<4> = Announce::new(at(0));
        assert_eq!(a.heartbeat_due(at(0)), Some((NET, 0)));
        a.heartbeat_sent(at(0), (NET, 0, 0), Duration::from_secs(5));
        assert_eq!(a.heartbeat_due(at(10)), None);
        a.heartbeat_early(at(10));
        assert_eq!(a.heartbeat_due(at(10)), Some((NET, 0)));
        a.heartbeat_sent(at(10), (NET, 0, 0), Duration::from_secs(5));
        a.heartbeat_early(at(50));
        assert_eq!(a.heartbeat_due(at(50)), None, "a second early heartbeat within 100 ms");
        a.heartbeat_early(at(70));
        assert_eq!(a.heartbeat_due(at(109)), None);
        assert_eq!(
            a.heartbeat_due(at(110)),
            Some((NET, 0)),
            "delayed to 100 ms after the last, not dropped"
        );
        a.heartbeat_sent(at(110), (NET, 0, 0), Duration::from_secs(5));
        assert_eq!(a.heartbeat_due(at(200)), None, "both newcomers were covered by one");
        for n in 0..3u8 {
            let scope = ScopeIndex(n / 2 * 2);
            let p = Pattern::new(["x", "y", "z"][usize::from(n)]).unwrap();
            a.add(p, (ChannelId([n; 16]), scope)).unwrap();
        }
        // A round: the network's two, then scope 2's one.
        a.heartbeat_sent(at(60), (NET, 0, 1), Duration::from_secs(5));
        assert_eq!(a.heartbeat_due(at(60)), Some((NET, 1)));
        a.heartbeat_sent(at(60), (NET, 1, 1), Duration::from_secs(5));
        assert_eq!(a.heartbeat_due(at(60)), Some((ScopeIndex(2), 0)));
        a.heartbeat_sent(at(60), (ScopeIndex(2), 0, 1), Duration::from_secs(5));
        assert_eq!(a.heartbeat_due(at(60)), None);
        assert_ne!(a.digest(NET), a.digest(ScopeIndex(2)));
    }
}
