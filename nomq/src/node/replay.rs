//! What replay protection remembers beyond the peer table: sessions that left it.
//!
//! Each peer in the table has its own [`ReplayWindow`](super::limits::ReplayWindow).
//! When a peer leaves (evicted, replaced, silent) its window would be lost, and with it
//! the memory of which packet ids it already sent. So "eviction never reopens a
//! window" lives here:
//! - a ring of the last [`EVICTED_RING`] sessions that left, each with the highest
//!   packet id seen: a returning session is let back in only above it, and its new
//!   window starts from there;
//! - a floor timestamp, raised to the newest timestamp of each session pushed out of
//!   the ring: under a synced clock, an unknown session whose packet is not newer than
//!   the floor is refused (it might be one that was forgotten). Unsynced nodes have no
//!   floor (documented on [`ClockMode::Unsynced`](super::ClockMode::Unsynced)).

use crate::wire::SessionId;
use heapless::Deque;

/// Evicted sessions remembered for replay refusal.
pub(super) const EVICTED_RING: usize = 16;

/// One session that left the table.
#[derive(Clone, Copy, Debug)]
struct Gone {
    session: SessionId,
    highest: u32,
    last_ts: u32,
}

/// The ring of sessions that left the table, and the floor timestamp.
#[derive(Debug, Default)]
pub(super) struct Evicted {
    ring: Deque<Gone, EVICTED_RING>,
    floor_ts: u32,
}

/// Why a packet of a session not in the table is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Refused;

impl Evicted {
    /// Remembers a session leaving the table so that its old packets stay refused: while
    /// it is in the ring, by its highest packet id; once pushed out of the ring, by the
    /// floor timestamp (synced clocks).
    pub(super) fn remember(&mut self, session: SessionId, highest: u32, last_ts: u32) {
        if self.ring.is_full()
            && let Some(g) = self.ring.pop_front()
        {
            self.floor_ts = self.floor_ts.max(g.last_ts);
        }
        let _ = self.ring.push_back(Gone { session, highest, last_ts });
    }

    /// Decides on a packet (`packet_id`, `timestamp`) of `session`, which is not in the
    /// peer table. If it is let in and the session is in the ring, the ring entry is
    /// taken out and its highest packet id returned: the new window must start there.
    ///
    /// # Errors
    /// [`Refused`]: a packet of a session that left, at or below what was seen of it; or,
    /// under a synced clock (`synced`), of an unknown session not newer than the floor.
    pub(super) fn readmit(
        &mut self,
        session: SessionId,
        packet_id: u32,
        timestamp: u32,
        synced: bool,
    ) -> Result<Option<u32>, Refused> {
        let known = self.ring.iter().position(|g| g.session == session);
        let floor = known.and_then(|k| self.ring.iter().nth(k)).map(|g| g.highest);
        let refused = match floor {
            // A session we dropped coming back: only ids above what we saw.
            Some(highest) => packet_id <= highest,
            None => synced && timestamp <= self.floor_ts,
        };
        if refused {
            return Err(Refused);
        }
        if let Some(k) = known {
            // Back in the table: its window takes over from the ring entry.
            let mut rest: Deque<Gone, EVICTED_RING> = Deque::new();
            for (j, g) in self.ring.iter().enumerate() {
                if j != k {
                    let _ = rest.push_back(*g);
                }
            }
            self.ring = rest;
        }
        Ok(floor)
    }

    #[cfg(test)]
    pub(super) fn floor(&self) -> u32 {
        self.floor_ts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returning_session_is_admitted_only_above_its_highest_id() {
        let mut e = Evicted::default();
        e.remember(SessionId(7), 100, 50);
        assert_eq!(e.readmit(SessionId(7), 100, 60, true), Err(Refused));
        assert_eq!(e.readmit(SessionId(7), 99, 60, false), Err(Refused));
        assert_eq!(e.readmit(SessionId(7), 101, 60, true), Ok(Some(100)));
        // Out of the ring now: the peer table's window has taken over.
        assert_eq!(e.readmit(SessionId(7), 5, 60, false), Ok(None));
    }

    #[test]
    fn sessions_pushed_out_of_the_ring_raise_the_floor() {
        let mut e = Evicted::default();
        for i in 0..EVICTED_RING as u32 {
            e.remember(SessionId(i + 1), 10, 1000 + i);
        }
        assert_eq!(e.floor(), 0);
        e.remember(SessionId(99), 10, 5000);
        // Session 1 (last seen at 1000) fell out: the floor is its timestamp.
        assert_eq!(e.floor(), 1000);
        // Forgotten session 1 replaying an old packet: refused by the floor (synced).
        assert_eq!(e.readmit(SessionId(1), 3, 1000, true), Err(Refused));
        // Without a synced clock there is no floor to refuse it by.
        assert_eq!(e.readmit(SessionId(1), 3, 1000, false), Ok(None));
        // A legitimate new session, newer than the floor, gets in.
        assert_eq!(e.readmit(SessionId(500), 1, 1001, true), Ok(None));
        // Session 2 is still in the ring: refused by id, whatever its timestamp.
        assert_eq!(e.readmit(SessionId(2), 10, 9999, true), Err(Refused));
    }
}
