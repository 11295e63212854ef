//! The outbox: messages queued or awaiting acknowledgements, with their targets. Bounded
//! to `O` entries of at most `M` bytes (name + body); each tracks up to `P` targets.
//! An entry leaves once it has an outcome (see [`Entry::status`]).

use super::types::{Destination, Outcome, PublishHandle, Status};
use crate::body::MessageId;
use crate::channel::{ChannelId, ChannelName};
use crate::keys::ScopeIndex;
use crate::time::Instant;
use crate::wire::{Qos, SessionId};
use core::cell::Cell;
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
    #[cfg(test)]
    pub(super) fn new(
        name: ChannelName<'_>,
        body: &[u8],
        ids: (ChannelId, ScopeIndex),
        qos: Qos,
        expires: Instant,
    ) -> Option<Self> {
        let mut s = Self::empty();
        s.set(name, body, ids, qos, expires)?;
        Some(s)
    }

    /// Nothing stored (a vacant outbox slot).
    fn empty() -> Self {
        let (channel_id, scope) = (ChannelId::default(), ScopeIndex::NETWORK);
        Self {
            name_len: 0,
            data: Vec::new(),
            channel_id,
            scope,
            qos: Qos::AtMostOnce,
            expires: Instant::ZERO,
        }
    }

    /// [`Stored::new`] in place (a message is a kilobyte on a host: it is written where
    /// it stays, not moved there). `None`, with the old contents gone, if it does not fit.
    pub(super) fn set(
        &mut self,
        name: ChannelName<'_>,
        body: &[u8],
        (channel_id, scope): (ChannelId, ScopeIndex),
        qos: Qos,
        expires: Instant,
    ) -> Option<()> {
        self.data.clear();
        self.name_len = 0;
        let name_len = u8::try_from(name.as_str().len()).ok()?;
        self.data.extend_from_slice(name.as_str().as_bytes()).ok()?;
        self.data.extend_from_slice(body).ok()?;
        (self.name_len, self.channel_id, self.scope, self.qos) = (name_len, channel_id, scope, qos);
        self.expires = expires;
        Some(())
    }

    /// A copy of `other`, in place.
    pub(super) fn copy_from(&mut self, other: &Self) {
        self.data.clear();
        // Same capacity: fits.
        let _ = self.data.extend_from_slice(&other.data);
        (self.name_len, self.channel_id, self.scope) =
            (other.name_len, other.channel_id, other.scope);
        (self.qos, self.expires) = (other.qos, other.expires);
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
    /// [`PublishOptions::quiet`](super::PublishOptions::quiet): no outcome if it ends as
    /// asked.
    pub(super) quiet: bool,
}

impl<const P: usize, const M: usize> Entry<P, M> {
    /// A new entry, due at `now` (see [`Entry::reset`]).
    #[cfg(test)]
    pub(super) fn new(
        handle: PublishHandle,
        body: Stored<M>,
        how: (bool, u8, Destination),
        now: Instant,
        preset: Option<SessionId>,
    ) -> Self {
        let mut e = Self::vacant();
        e.body = body;
        e.reset(handle, how, now, preset);
        e
    }

    /// An outbox slot with nothing in it.
    fn vacant() -> Self {
        Self {
            handle: PublishHandle(0),
            msg: None,
            body: Stored::empty(),
            retain: false,
            priority: 0,
            dest: Destination::All,
            next_at: Instant::ZERO,
            attempts: 0,
            cursor: 0,
            in_round: false,
            targets: Vec::new(),
            seq: 0,
            preset: false,
            preset_to: None,
            first_sent: Instant::ZERO,
            quiet: false,
        }
    }

    /// Makes this slot, whose body is already written, a new entry due at `now`.
    /// `preset` fixes its only target (a retained reply to one new subscriber) instead
    /// of collecting the channel's subscribers.
    pub(super) fn reset(
        &mut self,
        handle: PublishHandle,
        (retain, priority, dest): (bool, u8, Destination),
        now: Instant,
        preset: Option<SessionId>,
    ) {
        self.targets.clear();
        if let Some(session) = preset.filter(|_| self.body.qos != Qos::AtMostOnce) {
            let _ =
                self.targets.push(TargetPeer { session, state: TState::initial(self.body.qos) });
        }
        (self.handle, self.msg, self.retain, self.priority, self.dest) =
            (handle, None, retain, priority, dest);
        (self.next_at, self.attempts, self.cursor, self.in_round, self.seq) = (now, 0, 0, false, 0);
        (self.preset, self.preset_to, self.first_sent) = (preset.is_some(), preset, now);
        self.quiet = false;
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
    pub(super) fn outcome(&self, status: Status) -> Outcome<P> {
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

/// What [`Outbox::pick`], [`Outbox::finished`], [`Node::poll_timeout`](super::Node) and
/// the acknowledgement lookup read of an entry, kept beside it in a small array: an entry
/// is over a kilobyte on a host (its stored message), so scanning the entries themselves
/// for every packet sent touches two cache lines per entry; scanning these touches one
/// per entry and a half. Always [`Hot::of`] the entry ([`Hot::FREE`] for a vacant slot):
/// [`EntryMut`] recomputes it after every change, and debug builds check every summary
/// against its entry at each use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Hot {
    /// The slot holds an entry.
    live: bool,
    priority: u8,
    /// Not yet sent, QoS 2, not in a round: waits for the QoS 2 window.
    needs_window: bool,
    /// A QoS 2 message already sent (`msg` is its id): it holds the window.
    qos2_started: bool,
    handle: PublishHandle,
    /// `msg`, if set.
    msg: Option<MessageId>,
    /// Sends something at or after this (while `now < expires`): [`Entry::ready`].
    due: Instant,
    expires: Instant,
    /// Has an outcome at or after this: [`Entry::status`].
    finish_at: Instant,
    /// `next_at.min(expires)`, for the node's timer.
    wake: Instant,
}

/// Later than any instant a node reaches.
const NEVER: Instant = Instant::from_micros(u64::MAX);

impl Hot {
    /// A vacant slot: never ready, never finished.
    const FREE: Hot = Hot {
        live: false,
        priority: 0,
        needs_window: false,
        qos2_started: false,
        handle: PublishHandle(0),
        msg: None,
        due: NEVER,
        expires: Instant::ZERO,
        finish_at: NEVER,
        wake: NEVER,
    };

    fn of<const P: usize, const M: usize>(e: &Entry<P, M>, max_attempts: u8) -> Self {
        let (first, qos) = (e.msg.is_none(), e.qos());
        let retry = !first
            && qos != Qos::AtMostOnce
            && e.attempts < max_attempts
            && (e.pending() || e.targets.is_empty());
        let due = if first || e.in_round {
            Instant::ZERO
        } else if retry {
            e.next_at
        } else {
            NEVER
        };
        let finish_at = if first {
            e.body.expires
        } else if qos == Qos::AtMostOnce || (!e.in_round && !e.targets.is_empty() && !e.pending()) {
            Instant::ZERO
        } else if !e.in_round && e.attempts >= max_attempts {
            e.next_at.min(e.body.expires)
        } else {
            e.body.expires
        };
        Self {
            live: true,
            priority: e.priority,
            needs_window: first && qos == Qos::ExactlyOnce && !e.in_round,
            qos2_started: !first && qos == Qos::ExactlyOnce,
            handle: e.handle,
            msg: e.msg,
            due,
            expires: e.body.expires,
            finish_at,
            wake: e.next_at.min(e.body.expires),
        }
    }

    /// [`Entry::ready`].
    fn ready(&self, now: Instant, qos2_open: bool) -> bool {
        now >= self.due && now < self.expires && (qos2_open || !self.needs_window)
    }

    /// Sending order: higher priority first, then older (handles increase, wrapping, in
    /// publish order). `Greater` means `a` goes before `b`.
    fn order(a: &Hot, b: &Hot) -> core::cmp::Ordering {
        let older = b.handle.0.wrapping_sub(a.handle.0).cast_signed().cmp(&0);
        a.priority.cmp(&b.priority).then(older)
    }
}

/// The outbox: a slab of `O` slots. An entry is written into a vacant slot and stays
/// there until it leaves (nothing is moved: an entry is over a kilobyte on a host);
/// slot order means nothing, handles order the entries. Each slot has its [`Hot`]
/// summary at the same index. Entries change only through [`EntryMut`], which keeps
/// the two in step.
#[derive(Debug)]
pub(super) struct Outbox<const P: usize, const M: usize, const O: usize> {
    slots: Vec<Entry<P, M>, O>,
    hot: Vec<Hot, O>,
    /// Slots holding an entry.
    live: usize,
    /// Entries whose summary says `qos2_started` (the window scans are skipped at 0).
    qos2_started: Cell<usize>,
    max_attempts: u8,
}

/// Mutable access to one entry; its summary is recomputed when this is dropped.
pub(super) struct EntryMut<'a, const P: usize, const M: usize> {
    entry: &'a mut Entry<P, M>,
    hot: &'a mut Hot,
    qos2_started: &'a Cell<usize>,
    max_attempts: u8,
}

impl<const P: usize, const M: usize> core::ops::Deref for EntryMut<'_, P, M> {
    type Target = Entry<P, M>;
    fn deref(&self) -> &Entry<P, M> {
        self.entry
    }
}

impl<const P: usize, const M: usize> core::ops::DerefMut for EntryMut<'_, P, M> {
    fn deref_mut(&mut self) -> &mut Entry<P, M> {
        self.entry
    }
}

impl<const P: usize, const M: usize> Drop for EntryMut<'_, P, M> {
    fn drop(&mut self) {
        let new = Hot::of(self.entry, self.max_attempts);
        let n = self.qos2_started.get();
        self.qos2_started
            .set(n + usize::from(new.qos2_started) - usize::from(self.hot.qos2_started));
        *self.hot = new;
    }
}

impl<const P: usize, const M: usize, const O: usize> core::ops::Index<usize> for Outbox<P, M, O> {
    type Output = Entry<P, M>;
    fn index(&self, i: usize) -> &Entry<P, M> {
        debug_assert!(self.hot[i].live, "vacant outbox slot");
        &self.slots[i]
    }
}

impl<const P: usize, const M: usize, const O: usize> Outbox<P, M, O> {
    /// An empty outbox whose entries give up after `max_attempts` rounds.
    pub(super) fn new(max_attempts: u8) -> Self {
        let qos2_started = Cell::new(0);
        Self { slots: Vec::new(), hot: Vec::new(), live: 0, qos2_started, max_attempts }
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    pub(super) fn is_full(&self) -> bool {
        self.live == O
    }

    /// A vacant slot to write an entry into (its body with [`Stored::set`] or
    /// [`Stored::copy_from`], then [`Entry::reset`]); it holds the entry once
    /// [`Outbox::occupy`] says so. `None` if the outbox is full.
    pub(super) fn vacant(&mut self) -> Option<(usize, &mut Entry<P, M>)> {
        let i = match self.hot.iter().position(|h| !h.live) {
            Some(i) => i,
            None => {
                // A slot is built once, the first time the outbox holds this many.
                self.slots.push(Entry::vacant()).ok()?;
                let _ = self.hot.push(Hot::FREE);
                self.slots.len() - 1
            }
        };
        Some((i, &mut self.slots[i]))
    }

    /// Slot `i` (from [`Outbox::vacant`]) now holds its entry.
    pub(super) fn occupy(&mut self, i: usize) {
        debug_assert!(!self.hot[i].live, "occupied twice");
        self.live += 1;
        self.hot[i] = Hot::FREE;
        // The summary is computed, and counted, as the access ends.
        drop(self.at(i));
    }

    /// Adds `e` (tests: the node writes entries in place). Gives it back if full.
    #[cfg(test)]
    pub(super) fn push(&mut self, e: Entry<P, M>) -> Result<(), Entry<P, M>> {
        let Some((i, slot)) = self.vacant() else { return Err(e) };
        *slot = e;
        self.occupy(i);
        Ok(())
    }

    /// Entry `i` leaves: its final report with `status`. The slot becomes vacant.
    pub(super) fn remove(&mut self, i: usize, status: Status) -> Outcome<P> {
        let o = self[i].outcome(status);
        self.discard(i);
        o
    }

    /// Entry `i` leaves without a report. The slot becomes vacant.
    pub(super) fn discard(&mut self, i: usize) {
        let h = core::mem::replace(&mut self.hot[i], Hot::FREE);
        self.qos2_started.set(self.qos2_started.get() - usize::from(h.qos2_started));
        self.live -= 1;
    }

    /// The first entry for which `f` holds.
    pub(super) fn position(&self, mut f: impl FnMut(&Entry<P, M>) -> bool) -> Option<usize> {
        (self.slots.iter().zip(&self.hot)).position(|(e, h)| h.live && f(e))
    }

    /// Entry `i`, to change. Panics if there is none (as indexing does).
    pub(super) fn at(&mut self, i: usize) -> EntryMut<'_, P, M> {
        let (max_attempts, qos2_started) = (self.max_attempts, &self.qos2_started);
        EntryMut { entry: &mut self.slots[i], hot: &mut self.hot[i], qos2_started, max_attempts }
    }

    pub(super) fn get_mut(&mut self, i: usize) -> Option<EntryMut<'_, P, M>> {
        self.hot.get(i).is_some_and(|h| h.live).then(|| self.at(i))
    }

    /// Every entry, to change.
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = EntryMut<'_, P, M>> {
        let (max_attempts, qos2_started) = (self.max_attempts, &self.qos2_started);
        (self.slots.iter_mut().zip(self.hot.iter_mut()))
            .filter(|(_, hot)| hot.live)
            .map(move |(entry, hot)| EntryMut { entry, hot, qos2_started, max_attempts })
    }

    /// In debug builds (every test), that each summary is its entry's.
    fn check(&self) {
        #[cfg(debug_assertions)]
        {
            let mut q2 = 0;
            for (e, h) in self.slots.iter().zip(&self.hot) {
                let want = if h.live { Hot::of(e, self.max_attempts) } else { Hot::FREE };
                debug_assert_eq!(*h, want, "stale outbox summary");
                q2 += usize::from(h.qos2_started);
            }
            debug_assert_eq!(self.hot.iter().filter(|h| h.live).count(), self.live);
            debug_assert_eq!(self.qos2_started.get(), q2);
        }
    }

    /// The entry to send next: the highest priority ready one ([`Entry::ready`]), oldest
    /// first among equals.
    pub(super) fn pick(&self, now: Instant, qos2_open: bool) -> Option<usize> {
        self.check();
        let pick = (self.hot.iter().enumerate())
            .filter(|(_, h)| h.ready(now, qos2_open))
            .max_by(|(_, a), (_, b)| Hot::order(a, b))
            .map(|(i, _)| i);
        debug_assert!(pick.is_none_or(|i| self[i].ready(now, qos2_open, self.max_attempts)));
        pick
    }

    /// Whether entry `i` is ready ([`Entry::ready`]) at `now`.
    pub(super) fn is_ready(&self, i: usize, now: Instant, qos2_open: bool) -> bool {
        self.hot.get(i).is_some_and(|h| h.ready(now, qos2_open))
    }

    /// The ready entries in the order [`Outbox::pick`] would take them, best first, as
    /// many as `ranked` holds: one scan for several packets of a datagram.
    pub(super) fn rank<const K: usize>(
        &self,
        now: Instant,
        qos2_open: bool,
        ranked: &mut heapless::Vec<usize, K>,
    ) {
        self.check();
        ranked.clear();
        for (i, h) in self.hot.iter().enumerate().filter(|(_, h)| h.ready(now, qos2_open)) {
            // Insertion into the sorted prefix; past the last of a full list, skipped.
            let at = ranked.iter().position(|&j| Hot::order(h, &self.hot[j]).is_gt());
            match at {
                Some(at) => {
                    if ranked.is_full() {
                        ranked.pop();
                    }
                    let _ = ranked.insert(at, i);
                }
                None => {
                    let _ = ranked.push(i);
                }
            }
        }
    }

    /// The first entry, from slot `from` on, that has an outcome at `now`
    /// ([`Entry::status`]), and that outcome.
    pub(super) fn finished(&self, now: Instant, from: usize) -> Option<(usize, Status)> {
        self.check();
        let i = (self.hot.iter().enumerate().skip(from)).find(|(_, h)| now >= h.finish_at)?.0;
        let status = self[i].status(now, self.max_attempts);
        debug_assert!(status.is_some());
        status.map(|s| (i, s))
    }

    /// When each entry next wants the timer: its next transmission or its expiry.
    pub(super) fn wakes(&self) -> impl Iterator<Item = Instant> + '_ {
        self.hot.iter().filter(|h| h.live).map(|h| h.wake)
    }

    /// The entries whose message ids `hit` accepts, with those ids.
    pub(super) fn with_ids<'a>(
        &'a self,
        mut hit: impl FnMut(MessageId) -> bool + 'a,
    ) -> impl Iterator<Item = (MessageId, usize)> + 'a {
        (self.hot.iter().enumerate())
            .filter_map(move |(i, h)| h.msg.filter(|m| hit(*m)).map(|m| (m, i)))
    }

    /// The QoS 2 messages in flight (the window), as (sequence number, id).
    pub(super) fn qos2_in_flight(&self) -> impl Iterator<Item = (u32, MessageId)> + '_ {
        let none = self.qos2_started.get() == 0;
        (self.hot.iter().zip(&self.slots))
            .take(if none { 0 } else { O })
            .filter(|(h, _)| h.qos2_started)
            .map(|(h, e)| (e.seq, h.msg.unwrap_or_default()))
    }
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
        let mut o: Outbox<4, 32, 4> = Outbox::new(8);
        o.push(entry(u32::MAX, 1, Qos::AtMostOnce)).unwrap();
        o.push(entry(0, 1, Qos::AtMostOnce)).unwrap();
        o.push(entry(2, 0, Qos::ExactlyOnce)).unwrap();
        // Handle u32::MAX was issued before 0 (wrapping): it is older.
        assert_eq!(o.pick(Instant::ZERO, true), Some(0));
        o.at(0).priority = 0;
        assert_eq!(o.pick(Instant::ZERO, true), Some(1));
        o.remove(1, Status::Sent);
        o.remove(0, Status::Sent);
        assert_eq!(o.len(), 1);
        assert_eq!(o.pick(Instant::ZERO, false), None);
        assert_eq!(o.pick(Instant::ZERO, true), Some(2), "entries stay in their slots");
        assert_eq!(o.pick(Instant::from_micros(1000), true), None, "expired");
        assert_eq!(o.finished(Instant::ZERO, 0), None);
        assert_eq!(o.finished(Instant::from_micros(1000), 0), Some((2, Status::Expired)));
        // A vacant slot is reused before the slab grows.
        o.push(entry(3, 0, Qos::AtMostOnce)).unwrap();
        assert_eq!(o.pick(Instant::ZERO, false), Some(0));
        o.push(entry(4, 0, Qos::AtMostOnce)).unwrap();
        o.push(entry(5, 0, Qos::AtMostOnce)).unwrap();
        assert!(o.is_full() && o.push(entry(6, 0, Qos::AtMostOnce)).is_err());
    }

    /// `rank` lists the ready entries in `pick` order, best first, cut at its capacity.
    #[test]
    fn rank_orders_like_pick_and_keeps_the_best() {
        let mut o: Outbox<4, 32, 8> = Outbox::new(8);
        for (h, p) in [(5, 1), (u32::MAX, 1), (2, 3), (7, 0), (1, 3)] {
            o.push(entry(h, p, Qos::AtMostOnce)).unwrap();
        }
        let mut all: Vec<usize, 8> = Vec::new();
        o.rank(Instant::ZERO, true, &mut all);
        // Priority 3 (handles 1 then 2), priority 1 (u32::MAX is older than 5), then 0.
        assert_eq!(all.as_slice(), &[4, 2, 1, 0, 3]);
        assert_eq!(o.pick(Instant::ZERO, true), Some(all[0]));
        let mut two: Vec<usize, 2> = Vec::new();
        o.rank(Instant::ZERO, true, &mut two);
        assert_eq!(two.as_slice(), &[4, 2]);
        o.rank(Instant::from_micros(1000), true, &mut two);
        assert!(two.is_empty(), "all expired");
    }

    /// The summary an entry is picked, finished and timed by follows every change made
    /// through `at`/`iter_mut`, and says what the entry itself says.
    #[test]
    fn summaries_follow_their_entries() {
        let mut o: Outbox<4, 32, 4> = Outbox::new(2);
        o.push(entry(1, 3, Qos::AtLeastOnce)).unwrap();
        let t = |s| TargetPeer { session: SessionId(s), state: TState::AwaitAck };
        let at = Instant::from_micros;
        {
            let mut e = o.at(0);
            e.msg = Some(MessageId::default());
            e.targets.push(t(7)).unwrap();
            e.next_at = at(500);
        }
        assert_eq!(o.pick(at(499), true), None, "not due");
        assert_eq!(o.pick(at(500), true), Some(0));
        assert_eq!(o.wakes().collect::<std::vec::Vec<_>>(), [at(500)]);
        assert_eq!(o.with_ids(|_| true).count(), 1);
        for mut e in o.iter_mut() {
            e.targets[0].state = TState::Done;
        }
        assert_eq!(o.pick(at(500), true), None, "acknowledged");
        assert_eq!(o.finished(at(0), 0), Some((0, Status::Acknowledged)));
        o.at(0).targets[0].state = TState::AwaitAck;
        o.at(0).attempts = 2;
        assert_eq!(o.pick(at(600), true), None, "attempts used up");
        assert_eq!(o.finished(at(499), 0), None);
        assert_eq!(o.finished(at(500), 0), Some((0, Status::Unacknowledged)));
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
        let o = e.outcome(Status::Unacknowledged);
        assert_eq!(
            (o.acked.as_slice(), o.missing.as_slice()),
            (&[SessionId(1)][..], &[SessionId(2)][..])
        );
    }
}
