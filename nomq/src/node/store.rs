//! The state a node keeps across a restart, when its adapter gives it a state store:
//! its sessions and its QoS 2 receive states (docs/PROTOCOL.md, "State store").
//!
//! The node never does IO: it serializes into a caller buffer ([`Node::export_state`])
//! and parses what the adapter loaded ([`Node::restore`]). [`StateStore`] is the shape
//! adapters implement for their medium.
//!
//! # Byte format, version 1 (big-endian)
//! ```text
//! offset  size  field
//! 0       1     version = 0x01
//! 1       1     n: sessions, 1..=5, oldest first; the last is the one a restored node
//!               announces as replaced (the saving node's session once a peer was
//!               seen holding it, else the session that one announced)
//! 2       4n    session ids (never 0)
//! 2+4n    2     k: QoS 2 receive states
//! 4+4n    18k   states: message session (4), message packet id (4), sender session (4),
//!               scope index (1), state (1: 0x00 received, 0x01 released),
//!               seconds of TTL left, rounded up (4)
//! ```
//! The length must be exactly `4 + 4n + 18k`; anything else is refused.

use super::qos2_rx::Saved;
use super::{Event, Node};
use crate::body::MessageId;
use crate::keys::{KeyLookup, ScopeIndex};
use crate::time::{Duration, Instant};
use crate::wire::{PacketId, SessionId};
use core::fmt;

/// Version byte of the state format.
pub const STATE_VERSION: u8 = 0x01;
/// Sessions a state holds at most: the current one and the 4 before it.
pub const STATE_SESSIONS: usize = 5;
/// Bytes of one QoS 2 receive state in the state format.
pub const STATE_QOS2_LEN: usize = 18;

/// Bytes of the largest state of a node with `q` QoS 2 receive states (its `Q`); see
/// also [`Node::STATE_LEN`].
#[must_use]
pub const fn state_len(q: usize) -> usize {
    4 + 4 * STATE_SESSIONS + STATE_QOS2_LEN * q
}

/// Where an adapter keeps a node's state: a file, a flash sector, an EEPROM page.
///
/// `save` must be **atomic**: after a crash or power loss at any moment, `load` returns
/// either the state before the `save` or the state it was given, never a mix of the two
/// or a torn write. A file: write a temporary file, fsync it, rename it over the old one,
/// fsync the directory. Flash: two slots, each with a sequence number and a CRC; write the
/// slot not holding the newest valid state, and `load` the newest slot whose CRC holds.
///
/// `save` returning `Ok` means the state is durable: the node then sends what the state
/// commits it to (see [`Node::poll_transmit`]).
pub trait StateStore {
    /// What a failed load or save reports.
    type Error: fmt::Debug;
    /// Reads the last saved state into `buf`: `Ok(Some(len))`, or `Ok(None)` if nothing
    /// was ever saved.
    ///
    /// # Errors
    /// The medium could not be read, or the saved state does not fit `buf`.
    fn load(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Self::Error>;
    /// Replaces the saved state by `state`, atomically and durably.
    ///
    /// # Errors
    /// The medium could not be written; the old state must then still be what `load`
    /// returns.
    fn save(&mut self, state: &[u8]) -> Result<(), Self::Error>;
}

/// Why [`Node::restore`] refused a state. Nothing of it was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RestoreError {
    /// Caller: the node already handled a datagram or holds QoS 2 states.
    AlreadyStarted,
    /// Data: a version this node does not read.
    UnsupportedVersion(u8),
    /// Data: wrong length, no session, a zero session, or a bad state byte.
    Malformed,
    /// Resource: more QoS 2 states than this node's `Q`.
    TooManyStates,
}
impl fmt::Display for RestoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadyStarted => f.write_str("restore after the node started"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported state version {v}"),
            Self::Malformed => f.write_str("malformed state"),
            Self::TooManyStates => f.write_str("more QoS 2 states than this node holds"),
        }
    }
}
impl core::error::Error for RestoreError {}

/// Why [`Node::export_state`] wrote nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ExportError {
    /// Caller: the buffer is shorter than [`Node::STATE_LEN`] needs for the current state.
    BufferTooSmall,
}
impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("state buffer too small")
    }
}
impl core::error::Error for ExportError {}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses a whole state: the sessions, oldest first, and the QoS 2 records, each
/// checked for length. Never panics, whatever the input.
fn parse(state: &[u8]) -> Result<(&[u8], &[u8]), RestoreError> {
    let version = *state.first().ok_or(RestoreError::Malformed)?;
    if version != STATE_VERSION {
        return Err(RestoreError::UnsupportedVersion(version));
    }
    let n = usize::from(*state.get(1).ok_or(RestoreError::Malformed)?);
    if n == 0 || n > STATE_SESSIONS {
        return Err(RestoreError::Malformed);
    }
    let sessions = state.get(2..2 + 4 * n).ok_or(RestoreError::Malformed)?;
    let at = 2 + 4 * n;
    let k = state.get(at..at + 2).ok_or(RestoreError::Malformed)?;
    let k = usize::from(u16::from_be_bytes([k[0], k[1]]));
    let records = state.get(at + 2..).ok_or(RestoreError::Malformed)?;
    if records.len() != k * STATE_QOS2_LEN {
        return Err(RestoreError::Malformed);
    }
    if sessions.chunks_exact(4).any(|s| s == [0; 4]) {
        return Err(RestoreError::Malformed);
    }
    Ok((sessions, records))
}

fn parse_record(now: Instant, r: &[u8]) -> Result<Saved, RestoreError> {
    let field = |at| be32(r, at).ok_or(RestoreError::Malformed);
    let msg = MessageId { session: SessionId(field(0)?), packet_id: PacketId(field(4)?) };
    let from = SessionId(field(8)?);
    let scope = ScopeIndex(*r.get(12).ok_or(RestoreError::Malformed)?);
    let released = match r.get(13) {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(RestoreError::Malformed),
    };
    let expires = now + Duration::from_secs(u64::from(field(14)?));
    Ok(Saved { msg, from, scope, released, expires })
}

fn emit_record(now: Instant, s: &Saved, out: &mut [u8]) {
    // Invariant: `out` is exactly STATE_QOS2_LEN bytes (a chunk of the caller's buffer).
    let left = (s.expires - now).total_micros().div_ceil(1_000_000);
    out[0..4].copy_from_slice(&s.msg.session.0.to_be_bytes());
    out[4..8].copy_from_slice(&s.msg.packet_id.0.to_be_bytes());
    out[8..12].copy_from_slice(&s.from.0.to_be_bytes());
    out[12] = s.scope.0;
    out[13] = u8::from(s.released);
    out[14..18].copy_from_slice(&u32::try_from(left).unwrap_or(u32::MAX).to_be_bytes());
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
    /// Bytes of the largest state [`Node::export_state`] writes for this node.
    pub const STATE_LEN: usize = state_len(Q);

    /// Restores the state a previous run of this node saved (its [`Node::export_state`]).
    /// Call it once, right after [`Node::new`], before any datagram or timeout.
    ///
    /// Every saved session becomes one of this node's own (packets bound to it are for
    /// this node, its own looped-back packets are dropped), and the newest is announced
    /// as replaced in this node's CHALLENGE packets, so peers move what waited on it to
    /// this node's session. This node keeps the NEW session [`Node::new`] gave it: a
    /// session's packet ids (and with them its IVs) are never reused. QoS 2 receive
    /// states come back, expiring after the seconds they had left, so a retransmission of
    /// a message the previous run delivered is not delivered again.
    ///
    /// # Errors
    /// [`RestoreError`]; nothing is applied then.
    pub fn restore(&mut self, now: Instant, state: &[u8]) -> Result<(), RestoreError> {
        if self.stats.rx_datagrams > 0 || self.qos2.len() > 0 {
            return Err(RestoreError::AlreadyStarted);
        }
        let (sessions, records) = parse(state)?;
        if records.len() / STATE_QOS2_LEN > Q {
            return Err(RestoreError::TooManyStates);
        }
        for r in records.chunks_exact(STATE_QOS2_LEN) {
            parse_record(now, r)?;
        }
        for s in sessions.chunks_exact(4) {
            // Invariant: chunks of 4 bytes.
            self.tx.adopt(SessionId(u32::from_be_bytes([s[0], s[1], s[2], s[3]])));
        }
        for r in records.chunks_exact(STATE_QOS2_LEN) {
            if let Ok(saved) = parse_record(now, r) {
                self.qos2.restore(saved);
            }
        }
        self.qos2.expire(now);
        Ok(())
    }

    /// Turns on the write-ahead rule for a node whose adapter saves its state: from now
    /// on, while [`Node::state_unsaved`] is true, [`Node::poll_transmit`] sends nothing.
    /// It starts true: the session this node sends under is saved before its first packet.
    pub fn enable_persistence(&mut self) {
        self.persist = true;
        self.unsaved = true;
    }

    /// Whether the node holds state that must be saved before it may transmit: a new
    /// QoS 2 receive state (its PUBREC waits for it), a new session, or the first sign
    /// that a peer holds the current session (a restart then announces it as replaced). Always false
    /// without [`Node::enable_persistence`]. Releases and expiries do not set it; they
    /// are saved with the next state that does.
    #[must_use]
    pub fn state_unsaved(&self) -> bool {
        self.persist && self.unsaved
    }

    /// Serializes the state into `buf` (at least [`Node::STATE_LEN`] bytes) and marks it
    /// saved: call it, give the bytes to [`StateStore::save`], and only if that succeeds
    /// go on to [`Node::poll_transmit`]. If the save fails, call this again before
    /// transmitting ([`Node::mark_unsaved`] keeps transmissions held meanwhile).
    ///
    /// # Errors
    /// [`ExportError::BufferTooSmall`]; nothing is marked saved then.
    pub fn export_state(&mut self, now: Instant, buf: &mut [u8]) -> Result<usize, ExportError> {
        self.qos2.expire(now);
        let n = self.tx.saved_sessions(self.session_known).count();
        let k = self.qos2.len();
        let len = 4 + 4 * n + STATE_QOS2_LEN * k;
        let out = buf.get_mut(..len).ok_or(ExportError::BufferTooSmall)?;
        out[0] = STATE_VERSION;
        // n ≤ STATE_SESSIONS (4 previous + current); k ≤ Q, checked to fit u16 below.
        out[1] = u8::try_from(n).unwrap_or(0);
        for (chunk, s) in
            out[2..2 + 4 * n].chunks_exact_mut(4).zip(self.tx.saved_sessions(self.session_known))
        {
            chunk.copy_from_slice(&s.0.to_be_bytes());
        }
        let k16 = u16::try_from(k).map_err(|_| ExportError::BufferTooSmall)?;
        out[2 + 4 * n..4 + 4 * n].copy_from_slice(&k16.to_be_bytes());
        let records = out[4 + 4 * n..].chunks_exact_mut(STATE_QOS2_LEN);
        for (chunk, s) in records.zip(self.qos2.saved()) {
            emit_record(now, &s, chunk);
        }
        self.unsaved = false;
        Ok(len)
    }

    /// Marks the state unsaved again (the adapter's save failed after
    /// [`Node::export_state`]): transmissions stay held until the next export.
    pub fn mark_unsaved(&mut self) {
        self.unsaved = true;
    }

    /// Records that something the write-ahead rule covers changed.
    pub(super) fn note_unsaved(&mut self) {
        self.unsaved = true;
    }

    /// A peer holds the current session: from now on a restart announces it as
    /// replaced. Saved before anything else is sent, so that a restart right after
    /// announces the session peers now wait on.
    pub(super) fn note_known(&mut self) {
        if !core::mem::replace(&mut self.session_known, true) {
            self.note_unsaved();
        }
    }

    /// A session renewal happened: it is reported, and it must be saved.
    pub(super) fn on_renewal(&mut self, old: SessionId, new: SessionId) {
        self.session_known = false;
        self.note_unsaved();
        self.push_event(Event::SessionRenewed { old, new });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyPair, Keyring};
    use crate::node::Config;

    type Small = Node<Keyring<0>, 2, 2, 4, 1, 4, 2, 64>;

    fn node(seed: u8) -> Small {
        let keys = Keyring::new(&KeyPair::new([1; 32], [2; 32])).unwrap();
        Node::new(Config::default(), keys, [seed; 32], Instant::ZERO, 1_000_000)
    }

    #[test]
    fn an_empty_state_round_trips_and_adopts_the_session() {
        let mut a = node(1);
        let mut buf = [0u8; Small::STATE_LEN];
        let len = a.export_state(Instant::ZERO, &mut buf).unwrap();
        let s = a.session().0.to_be_bytes();
        assert_eq!(buf[..len], [1, 1, s[0], s[1], s[2], s[3], 0, 0]);
        let mut b = node(2);
        b.restore(Instant::ZERO, &buf[..len]).unwrap();
        assert_ne!(b.session(), a.session());
        assert_eq!(b.tx.replaces(), Some(a.session()));
        assert!(b.tx.is_own(a.session()));
        // Until a peer is seen holding b's session, b's state keeps announcing a's.
        let len = b.export_state(Instant::ZERO, &mut buf).unwrap();
        assert_eq!((buf[1], len), (2, 12));
        let own = b.session().0.to_be_bytes();
        assert_eq!((&buf[2..6], &buf[6..10]), (&own[..], &s[..]));
        b.note_known();
        assert!(b.session_known);
        // Then its own, last.
        b.export_state(Instant::ZERO, &mut buf).unwrap();
        assert_eq!((&buf[2..6], &buf[6..10]), (&s[..], &own[..]));
    }

    #[test]
    fn a_fixture_restores_states_with_their_ttl_left() {
        let fixture: [u8; 2 + 4 + 2 + 18] = [
            0x01, 0x01, 0xaa, 0xbb, 0xcc, 0xdd, // version, one session
            0x00, 0x01, // one QoS 2 state:
            0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x2a, // message 7:42
            0x00, 0x00, 0x00, 0x07, 0x00, 0x01, // from session 7, scope 0, released
            0x00, 0x00, 0x00, 0x0a, // 10 s left
        ];
        let mut b = node(2);
        let now = Instant::from_secs(100);
        b.restore(now, &fixture).unwrap();
        assert_eq!(b.tx.replaces(), Some(SessionId(0xaabb_ccdd)));
        assert_eq!(b.qos2.len(), 1);
        assert_eq!(b.qos2.deadlines().next(), Some(now + Duration::from_secs(10)));
        let mut buf = [0u8; Small::STATE_LEN];
        let len = b.export_state(now + Duration::from_millis(2500), &mut buf).unwrap();
        // The record comes back out with 8 s left (7.5 rounded up).
        assert_eq!(buf[len - 18..len - 4], fixture[8..22]);
        assert_eq!(buf[len - 4..len], [0, 0, 0, 8]);
    }

    #[test]
    fn garbage_is_refused_without_panicking_and_nothing_is_applied() {
        let good: [u8; 8] = [1, 1, 0, 0, 0, 9, 0, 0];
        let mut b = node(2);
        assert_eq!(b.restore(Instant::ZERO, &[]), Err(RestoreError::Malformed));
        assert_eq!(b.restore(Instant::ZERO, &[2]), Err(RestoreError::UnsupportedVersion(2)));
        assert_eq!(b.restore(Instant::ZERO, &good[..7]), Err(RestoreError::Malformed));
        assert_eq!(b.restore(Instant::ZERO, &[1, 0, 0, 0]), Err(RestoreError::Malformed));
        assert_eq!(b.restore(Instant::ZERO, &[1, 6]), Err(RestoreError::Malformed));
        assert_eq!(
            b.restore(Instant::ZERO, &[1, 1, 0, 0, 0, 0, 0, 0]),
            Err(RestoreError::Malformed)
        );
        let mut bad_state = [0u8; 26];
        bad_state[..8].copy_from_slice(&[1, 1, 0, 0, 0, 9, 0, 1]);
        bad_state[21] = 2;
        assert_eq!(b.restore(Instant::ZERO, &bad_state), Err(RestoreError::Malformed));
        assert!(!b.tx.is_own(SessionId(9)));
        // Five valid records for a node of Q = 4.
        let mut five = [0u8; 8 + 18 * 5];
        five[..8].copy_from_slice(&[1, 1, 0, 0, 0, 9, 0, 5]);
        assert_eq!(b.restore(Instant::ZERO, &five), Err(RestoreError::TooManyStates));
        // Every truncation and every single-byte value at each offset: no panic.
        let mut buf = [0u8; 26];
        for cut in 0..=bad_state.len() {
            for v in [0u8, 1, 2, 0xff] {
                buf[..cut].copy_from_slice(&bad_state[..cut]);
                if cut > 0 {
                    buf[cut - 1] = v;
                }
                let _ = node(3).restore(Instant::ZERO, &buf[..cut]);
            }
        }
        assert_eq!(b.restore(Instant::ZERO, &good), Ok(()));
        assert!(b.tx.is_own(SessionId(9)));
    }
}
