//! Freshness of sessions this node does not know: the challenge/echo handshake.
//!
//! A node accepts nothing but CHALLENGE packets from a session that is not in its peer
//! table, whatever the packet's timestamp: the session may be one it never saw, one it
//! forgot, or one from before its own restart, and a replayed capture looks the same as
//! a live packet. Instead it challenges the session (RFC 9175's Echo, for a group): a
//! random nonce in a CHALLENGE unicast to the source, bound to that session. The session
//! proves it is live by sending the nonce back in a CHALLENGE of its own; that packet's
//! packet id becomes the floor of the session's new replay window, so nothing it sent
//! before the proof (in particular nothing from before this node started) is accepted.
//!
//! Each nonce is used once: a captured echo replayed later matches nothing. The table of
//! outstanding challenges is bounded ([`CHALLENGES`]); a full table replaces its oldest
//! entry, and the session whose challenge fell out is challenged again on its next packet.
//! Challenges sent and echoes answered are each limited per rate window, because both are
//! answers to packets that need not be fresh.

use super::limits::RateWindow;
use crate::time::{Duration, Instant};
use crate::wire::SessionId;
use heapless::Vec;

/// Outstanding challenges remembered.
pub(super) const CHALLENGES: usize = 8;
/// A session is challenged again no sooner than this after its last challenge.
pub(super) const CHALLENGE_RETRY: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug)]
struct Pending {
    session: SessionId,
    nonce: u64,
    sent: Instant,
}

/// Outstanding challenges and the budgets of challenges and echoes.
#[derive(Debug, Default)]
pub(super) struct Verifier {
    pending: Vec<Pending, CHALLENGES>,
    challenges: RateWindow,
    echoes: RateWindow,
}

impl Verifier {
    /// The nonce to challenge `session` with at `now`: a new one from `nonce` unless
    /// `session` was challenged less than [`CHALLENGE_RETRY`] ago (then `None`: its
    /// challenge is on its way) or the budget of `limit` challenges per `window` is spent.
    pub(super) fn challenge(
        &mut self,
        now: Instant,
        session: SessionId,
        (window, limit): (Duration, u32),
        nonce: impl FnOnce() -> u64,
    ) -> Option<u64> {
        let at = self.pending.iter().position(|p| p.session == session);
        if let Some(i) = at
            && now < self.pending[i].sent + CHALLENGE_RETRY
        {
            return None;
        }
        if !self.challenges.admit(now, window, limit) {
            return None;
        }
        let p = Pending { session, nonce: nonce().max(1), sent: now };
        match at {
            Some(i) => self.pending[i] = p,
            None => {
                if self.pending.is_full() {
                    let oldest = self.pending.iter().enumerate().min_by_key(|(_, p)| p.sent);
                    if let Some((i, _)) = oldest {
                        self.pending.swap_remove(i);
                    }
                }
                // Room was made above.
                let _ = self.pending.push(p);
            }
        }
        Some(p.nonce)
    }

    /// Whether `echo` answers the outstanding challenge of `session`; if so the
    /// challenge is used up.
    pub(super) fn verify(&mut self, session: SessionId, echo: u64) -> bool {
        let Some(i) = self.pending.iter().position(|p| p.session == session && p.nonce == echo)
        else {
            return false;
        };
        self.pending.swap_remove(i);
        true
    }

    /// The nonce of `session`'s outstanding challenge, if any.
    pub(super) fn outstanding(&self, session: SessionId) -> Option<u64> {
        self.pending.iter().find(|p| p.session == session).map(|p| p.nonce)
    }

    /// Whether `session` has a challenge outstanding.
    #[cfg(test)]
    pub(super) fn is_pending(&self, session: SessionId) -> bool {
        self.pending.iter().any(|p| p.session == session)
    }

    /// Whether another echo may be sent at `now` (`limit` per `window`).
    pub(super) fn may_echo(&mut self, now: Instant, (window, limit): (Duration, u32)) -> bool {
        self.echoes.admit(now, window, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: (Duration, u32) = (Duration::from_secs(1), 100);

    fn ms(n: u64) -> Instant {
        Instant::from_micros(n * 1000)
    }

    #[test]
    fn a_nonce_verifies_its_session_once() {
        let mut v = Verifier::default();
        let n = v.challenge(ms(0), SessionId(7), BUDGET, || 42).unwrap();
        assert!(!v.verify(SessionId(8), n), "another session");
        assert!(!v.verify(SessionId(7), n + 1), "another nonce");
        assert!(v.verify(SessionId(7), n));
        assert!(!v.verify(SessionId(7), n), "used up: a replayed echo matches nothing");
    }

    #[test]
    fn challenges_are_spaced_renewed_and_bounded() {
        let mut v = Verifier::default();
        assert_eq!(v.challenge(ms(0), SessionId(1), BUDGET, || 5), Some(5));
        assert_eq!(v.challenge(ms(100), SessionId(1), BUDGET, || 6), None, "too soon");
        assert_eq!(v.challenge(ms(300), SessionId(1), BUDGET, || 7), Some(7));
        assert!(!v.verify(SessionId(1), 5), "replaced by the newer challenge");
        // Nonce 0 would mean "no challenge" on the wire.
        assert_eq!(v.challenge(ms(600), SessionId(1), BUDGET, || 0), Some(1));
        // A full table gives way to new sessions, oldest first.
        for s in 2..=(CHALLENGES as u32 + 1) {
            assert!(v.challenge(ms(1000 + u64::from(s)), SessionId(s), BUDGET, || 9).is_some());
        }
        assert!(!v.is_pending(SessionId(1)));
        assert!(v.is_pending(SessionId(2)));
        // The global budget.
        let tight = (Duration::from_secs(1), 2);
        let mut v = Verifier::default();
        assert!(v.challenge(ms(0), SessionId(1), tight, || 1).is_some());
        assert!(v.challenge(ms(0), SessionId(2), tight, || 1).is_some());
        assert!(v.challenge(ms(0), SessionId(3), tight, || 1).is_none());
        assert!(v.may_echo(ms(0), tight) && v.may_echo(ms(0), tight));
        assert!(!v.may_echo(ms(0), tight));
    }
}
