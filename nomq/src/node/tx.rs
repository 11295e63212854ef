//! The sealer: session id, packet counter, wall clock, IV generator and key selection.
//! Every packet this node sends gets its header here and is sealed here, so "no
//! (session, packet id) and no IV is ever used twice" lives in this one file.

use super::drbg::Drbg;
use super::types::{DropReason, Stats};
use crate::body;
use crate::channel::ChannelId;
use crate::envelope;
use crate::keys::{KeyLookup, KeySet, ScopeIndex};
use crate::time::Instant;
use crate::wire::{Flags, HEADER_LEN, Header, KeyId, MAC_LEN, PacketId, PacketType, SessionId};
use heapless::Deque;

/// Own past sessions remembered (to drop looped-back packets).
const OWN_SESSIONS: usize = 4;

/// Packets of one datagram prepared before they are encrypted and MACed together
/// ([`envelope::seal_prepared`] takes up to 8 at once).
const DEFERRED: usize = if envelope::PIPELINED { 8 } else { 0 };

/// What one packet is, apart from its body: the header fields the sender chooses.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spec {
    pub(super) kind: PacketType,
    pub(super) flags: Flags,
    pub(super) channel_id: ChannelId,
    pub(super) scope: ScopeIndex,
    pub(super) ttl: u16,
    /// The one member this packet is for (`None`: every member), sealed in the plaintext.
    pub(super) to: Option<SessionId>,
}

/// This node's sending identity and its generator of IVs.
pub(super) struct Tx {
    rng: Drbg,
    session: SessionId,
    next_packet: u32,
    own_sessions: Deque<SessionId, OWN_SESSIONS>,
    unix_base: u32,
    instant_base: Instant,
    max_payload: usize,
    /// A session renewal not yet reported as an event: `(old, new)`.
    renewed: Option<(SessionId, SessionId)>,
    /// Packets [`Tx::seal`] prepared (header and padded plaintext written) that are not
    /// yet encrypted or MACed, in buffer order: their scope and length. They are the
    /// last [`Tx::deferred_len`] bytes of the datagram being built, and
    /// [`Tx::finish`] seals them.
    deferred: heapless::Vec<(ScopeIndex, u16), DEFERRED>,
    /// Bytes sealed at once after the deferred packets (a full [`Tx::deferred`]).
    sealed_after: usize,
}

impl Tx {
    pub(super) fn new(
        seed: [u8; 32],
        first_packet: u32,
        max_payload: usize,
        now: Instant,
        unix_time: u32,
    ) -> Self {
        let mut rng = Drbg::new(seed);
        let session = fresh_session(&mut rng, SessionId(0));
        Self {
            rng,
            session,
            next_packet: first_packet.max(1),
            own_sessions: Deque::new(),
            unix_base: unix_time,
            instant_base: now,
            max_payload,
            renewed: None,
            deferred: heapless::Vec::new(),
            sealed_after: 0,
        }
    }

    pub(super) fn set_next_packet(&mut self, id: u32) {
        self.next_packet = id.max(1);
    }

    pub(super) fn session(&self) -> SessionId {
        self.session
    }

    /// The session this one replaces: the last one renewed (or restored from a state
    /// store, see [`Tx::adopt`]), announced in every CHALLENGE.
    pub(super) fn replaces(&self) -> Option<SessionId> {
        self.own_sessions.back().copied()
    }

    /// Makes `old` (a session of this node before a restart, from its state store) one
    /// of its own: packets bound to it are for this node, and it is announced as
    /// replaced.
    pub(super) fn adopt(&mut self, old: SessionId) {
        if old.0 == 0 || self.is_own(old) {
            return;
        }
        if self.own_sessions.is_full() {
            self.own_sessions.pop_front();
        }
        let _ = self.own_sessions.push_back(old);
    }

    /// This node's sessions for the state store, in the order a restored node adopts
    /// them: the one it is to announce as replaced last. That is the current session
    /// once a peer is `known` to hold it; before that, the session the current one
    /// announces (no peer may know the current one yet: announcing it could leave a
    /// peer waiting on its predecessor).
    pub(super) fn saved_sessions(&self, known: bool) -> impl Iterator<Item = SessionId> + '_ {
        let (mut body, mut last) = (self.own_sessions.len(), None);
        if !known && body > 0 {
            body -= 1;
            last = self.own_sessions.back().copied();
        }
        let current = core::iter::once(self.session);
        self.own_sessions.iter().copied().take(body).chain(current).chain(last)
    }

    /// Whether `s` is this node's session, current or recently renewed.
    pub(super) fn is_own(&self, s: SessionId) -> bool {
        s == self.session || self.own_sessions.iter().any(|o| *o == s)
    }

    pub(super) fn set_unix_time(&mut self, now: Instant, unix_time: u32) {
        self.unix_base = unix_time;
        self.instant_base = now;
    }

    pub(super) fn unix_now(&self, now: Instant) -> u32 {
        let secs = (now - self.instant_base).total_secs();
        self.unix_base.saturating_add(u32::try_from(secs).unwrap_or(u32::MAX))
    }

    /// Uniform in `0..n` from the generator (retransmission jitter).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.rng.below(n)
    }

    /// A random nonce for a challenge, never 0.
    pub(super) fn nonce(&mut self) -> u64 {
        (u64::from(self.rng.next_u32()) << 32 | u64::from(self.rng.next_u32())).max(1)
    }

    /// The renewal since the last call, if the counter ran out: `(old, new)`.
    pub(super) fn take_renewal(&mut self) -> Option<(SessionId, SessionId)> {
        self.renewed.take()
    }

    fn next_packet_id(&mut self) -> (SessionId, PacketId) {
        if self.next_packet == u32::MAX {
            // Never wrap: a new session before the counter would repeat.
            let old = self.session;
            self.session = fresh_session(&mut self.rng, old);
            if self.own_sessions.is_full() {
                self.own_sessions.pop_front();
            }
            let _ = self.own_sessions.push_back(old);
            self.next_packet = 1;
            self.renewed = Some((old, self.session));
        }
        let id = self.next_packet;
        self.next_packet += 1;
        (self.session, PacketId(id))
    }

    /// A header for the next packet of this node (consumes a packet id).
    pub(super) fn header(&mut self, now: Instant, spec: &Spec) -> Header {
        let (session_id, packet_id) = self.next_packet_id();
        Header {
            packet_type: spec.kind,
            flags: spec.flags,
            packet_id,
            session_id,
            ttl: spec.ttl,
            iv: [0; 16],
            timestamp: self.unix_now(now),
            channel_id: spec.channel_id,
            key_id: KeyId(0), // written by seal_in_place
            payload_len: 0,
        }
    }

    /// Writes the plaintext with `write`, then pads and writes the header for `scope`'s
    /// current keys. Counts a drop and returns `None` if the caller's buffer is too small.
    ///
    /// The packet is left **unencrypted**, deferred: the caller must end the datagram with
    /// [`Tx::finish`], which encrypts and MACs the deferred packets together (CBC is
    /// serial within a packet, so packets side by side keep the cipher busy). The packet
    /// must be the next bytes of the datagram: each call writes the datagram's next
    /// packet. When [`DEFERRED`] packets wait ([`Tx::deferred_full`]; the caller should
    /// have finished them), this one is sealed at once instead; so is every packet where
    /// the cipher has no AES unit to pipeline (`envelope::PIPELINED`).
    pub(super) fn seal<K: KeyLookup>(
        &mut self,
        keys: &K,
        stats: &mut Stats,
        (header, spec): (&Header, &Spec),
        buf: &mut [u8],
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let max_pt = envelope::max_plaintext(self.max_payload);
        let room = buf.len().saturating_sub(HEADER_LEN + MAC_LEN).min(max_pt);
        let plaintext = buf.get_mut(HEADER_LEN..HEADER_LEN + room).and_then(|b| {
            let at = body::emit_recipient(spec.to, b).ok()?;
            Some(at + write(b.get_mut(at..)?)?)
        });
        let ks = keys.scope(spec.scope).unwrap_or_else(|| keys.network()).current;
        self.seal_written(ks, stats, (header, spec.scope), buf, plaintext)
    }

    /// [`Tx::seal`] once the plaintext (`plaintext` bytes, `None` if it did not fit) is
    /// written: one copy of this for every kind of packet (an MCU's flash).
    #[inline(never)]
    fn seal_written(
        &mut self,
        ks: &KeySet,
        stats: &mut Stats,
        (header, scope): (&Header, ScopeIndex),
        buf: &mut [u8],
        plaintext: Option<usize>,
    ) -> Option<usize> {
        let (rng, max_payload) = (&mut self.rng, self.max_payload);
        let prepared = plaintext.and_then(|len| {
            envelope::prepare_in_place(ks, header, rng.block(), buf, len, max_payload).ok()
        });
        let Some(len) = prepared else {
            stats.drop(DropReason::TxBufferTooSmall);
            return None;
        };
        stats.tx_datagrams += 1;
        // Deferred packets are contiguous: once one was sealed at once (a full list, or
        // a packet longer than 65 535 bytes), so is every later one. Without an AES
        // unit packets are sealed one by one anyway, so none waits.
        let room = envelope::PIPELINED && !self.deferred.is_full() && self.sealed_after == 0;
        let deferred = u16::try_from(len).ok().filter(|_| room);
        if let Some(l) = deferred {
            let _ = self.deferred.push((scope, l));
        } else {
            envelope::seal_one(ks, &mut buf[..len]);
            self.sealed_after += len;
        }
        Some(len)
    }

    /// Bytes of packets prepared by [`Tx::seal`] and not yet sealed.
    pub(super) fn deferred_len(&self) -> usize {
        self.deferred.iter().map(|&(_, len)| usize::from(len)).sum()
    }

    /// Whether [`Tx::seal`] has as many packets waiting as are sealed together.
    pub(super) fn deferred_full(&self) -> bool {
        envelope::PIPELINED && self.deferred.is_full()
    }

    /// Encrypts and MACs the packets [`Tx::seal`] deferred, runs of one scope together.
    /// `datagram` ends with the last packet `seal` wrote: the deferred packets are the
    /// [`Tx::deferred_len`] bytes before any it sealed at once. Returns `false` (and
    /// erases the datagram, so that no plaintext can leave) if `datagram` does not hold
    /// them: a caller that did not give [`Tx::seal`] the datagram's next bytes each time.
    pub(super) fn finish<K: KeyLookup>(&mut self, keys: &K, datagram: &mut [u8]) -> bool {
        let after = core::mem::take(&mut self.sealed_after);
        if !envelope::PIPELINED || self.deferred.is_empty() {
            // Without an AES unit nothing is deferred: this is no code on an MCU.
            return true;
        }
        let total = self.deferred_len();
        let Some(from) = datagram.len().checked_sub(total + after) else {
            self.deferred.clear();
            datagram.fill(0);
            return false;
        };
        let end = from + total;
        let mut rest = &mut datagram[from..end];
        let mut runs = self.deferred.iter().peekable();
        let mut ok = true;
        while let Some(&(scope, first)) = runs.next() {
            let mut len = usize::from(first);
            while let Some(&&(s, l)) = runs.peek()
                && s == scope
            {
                len += usize::from(l);
                runs.next();
            }
            let (run, after) = core::mem::take(&mut rest).split_at_mut(len);
            let ks = keys.scope(scope).unwrap_or_else(|| keys.network()).current;
            if envelope::seal_prepared(ks, run).is_err() {
                ok = false;
            }
            rest = after;
        }
        self.deferred.clear();
        if !ok {
            datagram.fill(0);
        }
        ok
    }

    /// [`Tx::header`] then [`Tx::seal`]: a packet whose body needs nothing of its header.
    pub(super) fn seal_new<K: KeyLookup>(
        &mut self,
        keys: &K,
        stats: &mut Stats,
        (now, spec): (Instant, Spec),
        buf: &mut [u8],
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> Option<usize> {
        let header = self.header(now, &spec);
        self.seal(keys, stats, (&header, &spec), buf, write)
    }
}

fn fresh_session(rng: &mut Drbg, old: SessionId) -> SessionId {
    loop {
        let s = rng.next_u32();
        if s != 0 && s != old.0 {
            return SessionId(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyring;
    use crate::wire::Qos;
    use std::vec;
    use std::vec::Vec;

    fn spec() -> Spec {
        Spec {
            kind: PacketType::Heartbeat,
            flags: Flags { qos: Qos::AtMostOnce, ..Flags::default() },
            channel_id: ChannelId::default(),
            scope: ScopeIndex::NETWORK,
            ttl: 5,
            to: None,
        }
    }

    #[test]
    fn counter_exhaustion_renews_the_session_and_remembers_the_old_one() {
        let mut tx = Tx::new([7; 32], u32::MAX - 2, 1376, Instant::ZERO, 1000);
        let first = tx.session();
        let a = tx.header(Instant::ZERO, &spec());
        let b = tx.header(Instant::ZERO, &spec());
        assert_eq!((a.session_id, a.packet_id.0), (first, u32::MAX - 2));
        assert_eq!(b.packet_id.0, u32::MAX - 1);
        assert_eq!(tx.take_renewal(), None);
        let c = tx.header(Instant::ZERO, &spec());
        assert_ne!(c.session_id, first);
        assert_eq!(c.packet_id.0, 1);
        assert_eq!(tx.take_renewal(), Some((first, c.session_id)));
        assert_eq!(tx.take_renewal(), None);
        assert!(tx.is_own(first) && tx.is_own(c.session_id));
        assert!(!tx.is_own(SessionId(first.0 ^ 1)) || first.0 ^ 1 == c.session_id.0);
    }

    #[test]
    fn sealing_counts_datagrams_and_too_small_buffers() {
        let keys = Keyring::<0>::new(&crate::keys::KeyPair::new([1; 32], [2; 32])).unwrap();
        let mut tx = Tx::new([7; 32], 1, 1376, Instant::ZERO, 1000);
        let mut stats = Stats::default();
        let mut buf = [0u8; 200];
        let w = |b: &mut [u8]| {
            b.get_mut(..3)?.copy_from_slice(b"abc");
            Some(3)
        };
        let len = tx.seal_new(&keys, &mut stats, (Instant::ZERO, spec()), &mut buf, w);
        assert_eq!(len, Some(HEADER_LEN + 16 + MAC_LEN));
        assert_eq!(stats.tx_datagrams, 1);
        let mut small = [0u8; HEADER_LEN + MAC_LEN];
        assert_eq!(tx.seal_new(&keys, &mut stats, (Instant::ZERO, spec()), &mut small, w), None);
        assert_eq!(stats.drops(DropReason::TxBufferTooSmall), 1);
    }

    /// `count` packets sealed one after the other into one buffer, as `poll_transmit`
    /// fills a datagram, with `finish` called when `finish_when` says; then opened.
    fn datagram_of(count: usize, finish_when: impl Fn(&Tx) -> bool) -> (Vec<u8>, Vec<usize>) {
        let mut ring = Keyring::<1>::new(&crate::keys::KeyPair::new([1; 32], [2; 32])).unwrap();
        let chan = crate::keys::KeyPair::new([3; 32], [4; 32]);
        ring.set_channel("c/#", &chan, None).unwrap();
        let scope = ScopeIndex(1);
        let mut tx = Tx::new([7; 32], 1, 1376, Instant::ZERO, 1000);
        let mut stats = Stats::default();
        let mut buf = vec![0u8; 8000];
        let (mut len, mut starts) = (0, Vec::new());
        for k in 0..count {
            // Scopes alternate in runs of three; plaintexts grow.
            let spec =
                Spec { scope: if k / 3 % 2 == 1 { scope } else { ScopeIndex::NETWORK }, ..spec() };
            let w = |b: &mut [u8]| {
                b.get_mut(..k * 5)?.fill(k as u8);
                Some(k * 5)
            };
            let n =
                tx.seal_new(&ring, &mut stats, (Instant::ZERO, spec), &mut buf[len..], w).unwrap();
            starts.push(len);
            len += n;
            if finish_when(&tx) {
                assert!(tx.finish(&ring, &mut buf[..len]));
            }
        }
        assert!(tx.finish(&ring, &mut buf[..len]));
        assert_eq!(tx.deferred_len(), 0);
        buf.truncate(len);
        let ends: Vec<usize> = starts.iter().skip(1).copied().chain([len]).collect();
        for (k, (&a, &b)) in starts.iter().zip(&ends).enumerate() {
            let mut packet = buf[a..b].to_vec();
            let o = crate::envelope::open(&ring, &mut packet, 1376).unwrap();
            assert_eq!(o.plaintext.len(), 4 + k * 5, "recipient prefix and body");
            assert!(o.plaintext[4..].iter().all(|&x| x == k as u8));
            assert_eq!(o.scope == scope, k / 3 % 2 == 1);
        }
        (buf, starts)
    }

    #[test]
    fn deferred_packets_are_sealed_by_finish_in_scope_runs() {
        // Finished in groups of 8 (as poll_transmit does), only at the end (the 9th and
        // later are sealed at once), and after every packet: all open, whatever the way.
        let (grouped, _) = datagram_of(20, Tx::deferred_full);
        let (at_end, _) = datagram_of(20, |_| false);
        let (each, _) = datagram_of(20, |_| true);
        // Same IVs and packet ids each time: the bytes agree too.
        assert_eq!(grouped, at_end);
        assert_eq!(grouped, each);
    }

    #[test]
    fn finish_erases_a_datagram_that_does_not_hold_the_deferred_packets() {
        let keys = Keyring::<0>::new(&crate::keys::KeyPair::new([1; 32], [2; 32])).unwrap();
        let mut tx = Tx::new([7; 32], 1, 1376, Instant::ZERO, 1000);
        let mut stats = Stats::default();
        let mut buf = [0u8; 400];
        let w = |b: &mut [u8]| {
            b.get_mut(..40)?.fill(0xaa);
            Some(40)
        };
        let n = tx.seal_new(&keys, &mut stats, (Instant::ZERO, spec()), &mut buf, w).unwrap();
        // Shorter than the packet: nothing of it may leave as plaintext.
        assert!(!tx.finish(&keys, &mut buf[..n - 1]));
        assert!(buf[..n - 1].iter().all(|&b| b == 0));
        assert_eq!(tx.deferred_len(), 0);
    }

    #[test]
    fn wall_clock_follows_the_monotonic_one() {
        let mut tx = Tx::new([7; 32], 1, 1376, Instant::ZERO, 1000);
        assert_eq!(tx.unix_now(Instant::from_micros(2_500_000)), 1002);
        tx.set_unix_time(Instant::from_micros(3_000_000), 5000);
        assert_eq!(tx.unix_now(Instant::from_micros(4_000_000)), 5001);
    }
}
