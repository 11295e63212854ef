//! The peer table: who is out there, at which address, subscribed to what.
//!
//! Bounded to `P` sessions, keyed by session id, never by address: two sessions may
//! share an address (two nodes behind one shared port, or a node and its restart), and
//! only a session that proved itself live (`verify.rs`) ever enters the table. Policy:
//! - when full, the least recently seen peer is *evicted*;
//! - a peer silent past its liveness timeout is dropped.
//!
//! A session that left and comes back is challenged again like any unknown session, and
//! its new replay window starts above the packet that answered: leaving never reopens a
//! window. Wildcard patterns peers announced are stored once, in a table shared by all
//! peers (`P` entries), and collected when no peer uses them any more.

use super::limits::{RateWindow, ReplayWindow};
use super::types::LostReason;
use crate::addr::Addr;
use crate::body::Heartbeat;
use crate::channel::{ChannelId, ChannelName, MAX_NAME_LEN, Pattern};
use crate::keys::ScopeIndex;
use crate::time::{Duration, Instant};
use crate::wire::SessionId;
use heapless::{String, Vec};

/// A peer's place in the table, returned by a lookup or an insertion. Valid until the
/// table changes (the next insertion or removal), so it never outlives one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PeerId(usize);

/// The sender of the packet being handled: its place in the table, session and address.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sender {
    pub(super) id: PeerId,
    pub(super) session: SessionId,
    pub(super) addr: Addr,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct PeerSub {
    pub(super) id: ChannelId,
    pub(super) wildcard: bool,
    /// The key scope it was announced under.
    pub(super) scope: ScopeIndex,
    /// Confirmed by the heartbeat round in progress.
    pub(super) fresh: bool,
}

#[derive(Debug)]
pub(super) struct Peer<const S: usize> {
    pub(super) session: SessionId,
    pub(super) addr: Addr,
    pub(super) last_seen: Instant,
    /// When it joined the table (proved live).
    pub(super) joined: Instant,
    pub(super) liveness: Duration,
    pub(super) replay: ReplayWindow,
    pub(super) rate: RateWindow,
    pub(super) rate_reported: Instant,
    pub(super) subs: Vec<PeerSub, S>,
    /// Digest of its network-scope set (channel scopes are collected at every heartbeat).
    digest: u32,
    /// The scope whose set is being collected, and that set's digest.
    sync_scope: ScopeIndex,
    sync_digest: u32,
    sync_seen: u64,
    /// Collect the next heartbeat afresh (the local keys changed).
    resync: bool,
    /// Highest QoS 2 low-water mark announced by this session.
    pub(super) qos2_low: u32,
    /// The largest datagram it announced it accepts (0 until its first heartbeat:
    /// nothing is coalesced to it before).
    pub(super) max_datagram: u16,
}

/// A session that left the table.
#[derive(Clone, Copy, Debug)]
pub(super) struct Departure {
    pub(super) session: SessionId,
    pub(super) addr: Addr,
    pub(super) reason: LostReason,
}

/// Why a subscription could not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SubsFull;

/// What a heartbeat changed in a peer's subscription set.
#[derive(Debug)]
pub(super) struct HeartbeatSync<'a, const S: usize> {
    /// Patterns not known before (their SUBSCRIBE was lost: serve retained values).
    pub(super) new_patterns: Vec<Pattern<'a>, S>,
    /// Patterns the table had no room for.
    pub(super) full: u32,
    /// Patterns refused: announced under another scope than the one covering them.
    pub(super) refused: u32,
}

/// The peer table and the shared wildcard table.
#[derive(Debug, Default)]
pub(super) struct Peers<const P: usize, const S: usize> {
    list: Vec<Peer<S>, P>,
    wildcards: Vec<(ChannelId, String<MAX_NAME_LEN>), P>,
}

fn digest_of(id: &ChannelId) -> u32 {
    u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]])
}

/// XOR of the digests of `ids`: what a heartbeat announces to summarise a set.
pub(super) fn set_digest<'a>(ids: impl Iterator<Item = &'a ChannelId>) -> u32 {
    ids.fold(0, |d, id| d ^ digest_of(id))
}

impl<const P: usize, const S: usize> Peers<P, S> {
    pub(super) fn iter(&self) -> impl Iterator<Item = &Peer<S>> {
        self.list.iter()
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn find(&self, session: SessionId) -> Option<PeerId> {
        self.list.iter().position(|p| p.session == session).map(PeerId)
    }

    /// The current address of `session`, if it is in the table.
    pub(super) fn addr_of(&self, session: SessionId) -> Option<Addr> {
        self.list.iter().find(|p| p.session == session).map(|p| p.addr)
    }

    /// # Panics
    /// If `id` is stale; ids come from this table within the same input (see [`PeerId`]).
    pub(super) fn get(&self, id: PeerId) -> &Peer<S> {
        &self.list[id.0]
    }

    /// # Panics
    /// As [`Peers::get`].
    pub(super) fn get_mut(&mut self, id: PeerId) -> &mut Peer<S> {
        &mut self.list[id.0]
    }

    fn forget(&mut self, i: usize) -> Peer<S> {
        self.list.swap_remove(i)
    }

    /// Adds `session` (not in the table) at `from`, evicting the least recently seen
    /// peer if the table is full. Returns its id and the session that left for it.
    pub(super) fn insert(
        &mut self,
        now: Instant,
        from: Addr,
        session: SessionId,
        liveness: Duration,
    ) -> (PeerId, Option<Departure>) {
        let mut gone = None;
        if self.list.is_full()
            && let Some(i) =
                self.list.iter().enumerate().min_by_key(|(_, p)| p.last_seen).map(|(i, _)| i)
        {
            gone = Some((self.forget(i), LostReason::Evicted));
        }
        let peer = Peer {
            session,
            addr: from,
            last_seen: now,
            joined: now,
            liveness,
            replay: ReplayWindow::default(),
            rate: RateWindow::default(),
            rate_reported: Instant::ZERO,
            subs: Vec::new(),
            digest: 0,
            sync_scope: ScopeIndex::NETWORK,
            sync_digest: 0,
            sync_seen: 0,
            resync: false,
            qos2_low: 0,
            max_datagram: 0,
        };
        // Room was made above.
        let _ = self.list.push(peer);
        self.gc_wildcards();
        let departure =
            gone.map(|(p, reason)| Departure { session: p.session, addr: p.addr, reason });
        (PeerId(self.list.len() - 1), departure)
    }

    /// `new` (in the table) replaces `old`: it takes `old`'s subscriptions and QoS 2
    /// low-water mark, and `old` leaves. Returns `old`'s departure.
    pub(super) fn replace(&mut self, old: SessionId, new: SessionId) -> Option<Departure> {
        let i = self.list.iter().position(|p| p.session == old)?;
        let gone = self.forget(i);
        let id = self.find(new)?;
        let p = self.get_mut(id);
        if p.subs.is_empty() {
            p.subs = gone.subs;
            p.digest = gone.digest;
            p.sync_digest = gone.digest;
        }
        p.qos2_low = p.qos2_low.max(gone.qos2_low);
        self.gc_wildcards();
        Some(Departure { session: gone.session, addr: gone.addr, reason: LostReason::Replaced })
    }

    /// Removes one peer silent past its liveness at `now`, if any.
    pub(super) fn pop_silent(&mut self, now: Instant) -> Option<Departure> {
        let i = self.list.iter().position(|p| now >= p.last_seen + p.liveness)?;
        let old = self.forget(i);
        Some(Departure { session: old.session, addr: old.addr, reason: LostReason::Silent })
    }

    /// Drops wildcard patterns no peer holds any more.
    pub(super) fn gc_wildcards(&mut self) {
        let list = &self.list;
        self.wildcards.retain(|(id, _)| list.iter().any(|p| p.subs.iter().any(|s| s.id == *id)));
    }

    /// Whether `peer` subscribes to `name` (channel id `ids.0`, or `ids.1` under the
    /// previous network keys during a rotation), exactly or by a wildcard.
    pub(super) fn subscribes(
        &self,
        peer: &Peer<S>,
        name: ChannelName<'_>,
        ids: (&ChannelId, Option<&ChannelId>),
    ) -> bool {
        peer.subs.iter().any(|s| {
            if !s.wildcard {
                return s.id == *ids.0 || ids.1 == Some(&s.id);
            }
            self.wildcards
                .iter()
                .find(|(w, _)| *w == s.id)
                .is_some_and(|(_, pat)| Pattern::stored(pat.as_str()).matches(name))
        })
    }

    /// Adds a pattern (channel id `id`) to a peer's set; returns whether it is new.
    ///
    /// # Errors
    /// [`SubsFull`]: the peer's list or the wildcard table has no room.
    pub(super) fn add_sub(
        &mut self,
        peer: PeerId,
        pattern: Pattern<'_>,
        (id, scope): (ChannelId, ScopeIndex),
    ) -> Result<bool, SubsFull> {
        if let Some(s) = self.get_mut(peer).subs.iter_mut().find(|s| s.id == id) {
            s.fresh = true;
            return Ok(false);
        }
        let wildcard = pattern.has_wildcard();
        if wildcard && !self.wildcards.iter().any(|(w, _)| *w == id) {
            let Ok(st) = String::try_from(pattern.as_str()) else { return Ok(false) };
            self.wildcards.push((id, st)).map_err(|_| SubsFull)?;
        }
        if self.get_mut(peer).subs.push(PeerSub { id, wildcard, scope, fresh: true }).is_err() {
            self.gc_wildcards();
            return Err(SubsFull);
        }
        Ok(true)
    }

    /// Removes a pattern (by channel id) from a peer's set.
    pub(super) fn remove_sub(&mut self, peer: PeerId, id: ChannelId) {
        self.get_mut(peer).subs.retain(|x| x.id != id);
        self.gc_wildcards();
    }

    /// The local keys changed: every peer's next heartbeat is collected afresh, so that
    /// the channel ids stored for its exact subscriptions are derived again.
    pub(super) fn resync_all(&mut self) {
        for p in &mut self.list {
            p.resync = true;
        }
    }

    /// Applies a heartbeat sealed under `scope`: liveness, then the set announced under
    /// that scope (which may span several heartbeats; once all parts were seen, what it
    /// no longer holds is dropped). `channel_id` maps a pattern to its id; `covers`
    /// says whether `scope` is the one that covers a pattern (others are refused).
    /// `None` if the set is unchanged.
    pub(super) fn sync<'a>(
        &mut self,
        (peer, scope): (PeerId, ScopeIndex),
        hb: &Heartbeat<'a>,
        liveness: Duration,
        (channel_id, covers): (impl Fn(&str) -> ChannelId, impl Fn(Pattern<'_>) -> bool),
    ) -> Option<HeartbeatSync<'a, S>> {
        let p = self.get_mut(peer);
        p.liveness = liveness;
        let network = scope == ScopeIndex::NETWORK;
        let held = p.subs.iter().filter(|s| s.scope == scope).count();
        if network && !p.resync && hb.digest == p.digest && usize::from(hb.total) == held {
            return None;
        }
        if (network && p.resync) || p.sync_scope != scope || p.sync_digest != hb.digest {
            if network {
                p.resync = false;
            }
            // A new set is being announced: collect it, then drop what it no longer holds.
            p.sync_scope = scope;
            p.sync_digest = hb.digest;
            p.sync_seen = 0;
            for s in p.subs.iter_mut().filter(|s| s.scope == scope) {
                s.fresh = false;
            }
        }
        for i in 0..u32::from(hb.count) {
            let bit = u32::from(hb.first) + i;
            if bit < 64 {
                p.sync_seen |= 1 << bit;
            }
        }
        let mut out = HeartbeatSync { new_patterns: Vec::new(), full: 0, refused: 0 };
        for pat in hb.patterns() {
            if !covers(pat) {
                out.refused += 1;
                continue;
            }
            match self.add_sub(peer, pat, (channel_id(pat.as_str()), scope)) {
                Ok(true) => {
                    let _ = out.new_patterns.push(pat);
                }
                Ok(false) => {}
                Err(SubsFull) => out.full += 1,
            }
        }
        let p = self.get_mut(peer);
        let total = u32::from(hb.total).min(64);
        if total == 64 || p.sync_seen.count_ones() >= total {
            p.subs.retain(|s| s.fresh || s.scope != scope);
            if network {
                p.digest = hb.digest;
            }
            self.gc_wildcards();
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Duration = Duration::from_secs(15);
    const NET: ScopeIndex = ScopeIndex::NETWORK;

    fn at(s: u64) -> Instant {
        Instant::from_micros(s * 1_000_000)
    }
    fn addr(n: u8) -> Addr {
        Addr::V4([10, 0, 0, n], 9000)
    }
    fn id(n: u8) -> ChannelId {
        ChannelId([n; 16])
    }

    #[test]
    fn full_table_evicts_the_least_recently_seen() {
        let mut t: Peers<2, 2> = Peers::default();
        let (a, gone) = t.insert(at(1), addr(1), SessionId(1), LIVE);
        assert!(gone.is_none());
        t.insert(at(2), addr(2), SessionId(2), LIVE);
        // Peer 1 is heard from again: peer 2 is now the least recently seen.
        t.get_mut(a).last_seen = at(3);
        let (_, gone) = t.insert(at(4), addr(3), SessionId(3), LIVE);
        let gone = gone.unwrap();
        assert_eq!((gone.session, gone.reason), (SessionId(2), LostReason::Evicted));
        assert!(t.find(SessionId(1)).is_some() && t.find(SessionId(3)).is_some());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn sessions_sharing_an_address_are_separate_peers() {
        let mut t: Peers<4, 4> = Peers::default();
        let (a, _) = t.insert(at(1), addr(1), SessionId(1), LIVE);
        let p = Pattern::new("sensor/#").unwrap();
        assert_eq!(t.add_sub(a, p, (id(9), NET)), Ok(true));
        assert_eq!(t.add_sub(a, p, (id(9), NET)), Ok(false));
        let (b, gone) = t.insert(at(2), addr(1), SessionId(2), LIVE);
        assert!(gone.is_none(), "nobody leaves for a second session at one address");
        assert_eq!(t.len(), 2);
        let name = ChannelName::new("sensor/t").unwrap();
        assert!(!t.subscribes(t.get(b), name, (&id(1), None)), "inherits nothing");
        assert!(t.subscribes(t.get(t.find(SessionId(1)).unwrap()), name, (&id(1), None)));
    }

    #[test]
    fn silent_peers_leave_and_wildcards_are_collected() {
        let mut t: Peers<4, 4> = Peers::default();
        let (a, _) = t.insert(at(0), addr(1), SessionId(1), LIVE);
        t.add_sub(a, Pattern::new("a/+").unwrap(), (id(5), NET)).unwrap();
        assert_eq!(t.wildcards.len(), 1);
        assert!(t.pop_silent(at(14)).is_none());
        let gone = t.pop_silent(at(15)).unwrap();
        assert_eq!(gone.reason, LostReason::Silent);
        t.gc_wildcards();
        assert!(t.wildcards.is_empty());
    }

    #[test]
    fn per_peer_subscription_list_is_bounded() {
        let mut t: Peers<2, 1> = Peers::default();
        let (a, _) = t.insert(at(0), addr(1), SessionId(1), LIVE);
        assert_eq!(t.add_sub(a, Pattern::new("x").unwrap(), (id(1), NET)), Ok(true));
        assert_eq!(t.add_sub(a, Pattern::new("y/#").unwrap(), (id(2), NET)), Err(SubsFull));
        // The refused wildcard did not stay behind in the shared table.
        assert!(t.wildcards.is_empty());
        t.remove_sub(a, id(1));
        assert!(t.get(a).subs.is_empty());
    }
}
