//! Plaintext bodies: what sits inside the ciphertext of each packet type.
//!
//! All integers big-endian. A [`MessageId`] names a message by the session and packet id
//! of its *first* transmission; retransmissions are new packets that carry the same
//! message id, and acknowledgements name it too.
//!
//! Every plaintext starts with the **recipient**: the session id of the one member the
//! packet is for, or 0 for every member ([`split_recipient`], [`RECIPIENT_LEN`]). The
//! bodies below follow it.
//!
//! ```text
//! recipient            session u32 (0: every member)                        (4 bytes)
//! MessageId            session u32 | packet id u32                          (8 bytes)
//! PUBLISH              MessageId | low_water u32 | name_len u8 | name (UTF-8) | body...
//! PUBACK/PUBREC/
//! PUBREL/PUBCOMP       MessageId
//! SUBSCRIBE            options u8 | pattern_len u8 | pattern (UTF-8)
//! UNSUBSCRIBE          options u8 | pattern_len u8 | pattern (UTF-8)
//! HEARTBEAT            interval_s u16 | digest u32 | total u8 | first u8 | count u8 |
//!                      count × (pattern_len u8 | pattern)
//! CHALLENGE            challenge u64 | echo u64 | replaces u32              (20 bytes)
//! ```
//!
//! `low_water` is the lowest packet id among the publisher's QoS 2 messages still in
//! flight in its session (this message's own id if none is older). Every QoS 2 message of
//! that session below it has completed or been abandoned, so a receiver forgets their
//! state and refuses their (delayed, duplicated) PUBLISH packets: this is what bounds QoS 2
//! receive state without a broker or an ordered transport.
//!
//! SUBSCRIBE options: bit 0 = send me retained values. The header's channel id of a
//! SUBSCRIBE is the keyed id of the pattern *string* (wildcards included); the plaintext
//! carries the string, so a publisher can match any of its channel names against it.
//!
//! HEARTBEAT announces the sender's whole subscription set: `total` patterns in all,
//! whose order-independent `digest` (XOR of the first 4 bytes of each pattern's id) lets a
//! receiver tell at a glance whether its copy is current. A set too large for one packet is
//! split over several heartbeats, each carrying the patterns `first..first + count`.

use crate::channel::{ChannelError, ChannelName, Pattern};
use crate::wire::{PacketId, SessionId};
use core::fmt;

/// Identifies a message across retransmissions: the session and packet id of its first
/// transmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MessageId {
    /// Session of the publisher at first transmission.
    pub session: SessionId,
    /// Packet id of the first transmission.
    pub packet_id: PacketId,
}

/// Bytes every plaintext starts with: the recipient session (0: every member).
pub const RECIPIENT_LEN: usize = 4;

/// Splits a plaintext into its recipient (`None`: every member) and the body after it.
///
/// # Errors
/// [`BodyError::Truncated`]: shorter than [`RECIPIENT_LEN`].
pub fn split_recipient(plaintext: &[u8]) -> Result<(Option<SessionId>, &[u8]), BodyError> {
    let mut r = Reader(plaintext);
    let to = r.u32()?;
    Ok(((to != 0).then_some(SessionId(to)), r.0))
}

/// Writes the recipient (`None`: every member) at the start of `buf`; returns its length.
///
/// # Errors
/// [`BodyError::BufferTooSmall`].
pub fn emit_recipient(to: Option<SessionId>, buf: &mut [u8]) -> Result<usize, BodyError> {
    let mut w = Writer::new(buf);
    w.put(&to.map_or(0, |s| s.0).to_be_bytes())?;
    Ok(w.at)
}

/// Length of an encoded [`MessageId`].
pub const MESSAGE_ID_LEN: usize = 8;
/// Bytes of a PUBLISH plaintext before the name.
pub const PUBLISH_PREFIX_LEN: usize = MESSAGE_ID_LEN + 4 + 1;
/// Bytes of a PUBLISH plaintext that are not name or application bytes: the recipient
/// and [`PUBLISH_PREFIX_LEN`].
pub const PUBLISH_OVERHEAD: usize = RECIPIENT_LEN + PUBLISH_PREFIX_LEN;
/// Bytes of a HEARTBEAT plaintext before the patterns.
pub const HEARTBEAT_PREFIX_LEN: usize = 11;

/// Why a plaintext body is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BodyError {
    /// The body ends before a field it announces.
    Truncated,
    /// Bytes left over after an ack or subscription body.
    TrailingBytes,
    /// The channel name or pattern is invalid.
    Channel(ChannelError),
    /// The output buffer is too small.
    BufferTooSmall,
    /// An ack run of no message, or one whose packet ids pass `u32::MAX`.
    InvalidRun,
}
impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("body truncated"),
            Self::TrailingBytes => f.write_str("unexpected bytes after body"),
            Self::Channel(e) => fmt::Display::fmt(e, f),
            Self::BufferTooSmall => f.write_str("buffer too small for body"),
            Self::InvalidRun => f.write_str("ack run of no message or past the last packet id"),
        }
    }
}
impl core::error::Error for BodyError {}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        if self.0.len() < n {
            return Err(BodyError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, BodyError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BodyError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, BodyError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, BodyError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn msg(&mut self) -> Result<MessageId, BodyError> {
        Ok(MessageId { session: SessionId(self.u32()?), packet_id: PacketId(self.u32()?) })
    }
    fn short_str(&mut self) -> Result<&'a [u8], BodyError> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }
    fn end(&self) -> Result<(), BodyError> {
        if self.0.is_empty() { Ok(()) } else { Err(BodyError::TrailingBytes) }
    }
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}
impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, at: 0 }
    }
    fn put(&mut self, b: &[u8]) -> Result<(), BodyError> {
        let end = self.at.checked_add(b.len()).ok_or(BodyError::BufferTooSmall)?;
        self.buf.get_mut(self.at..end).ok_or(BodyError::BufferTooSmall)?.copy_from_slice(b);
        self.at = end;
        Ok(())
    }
    fn msg(&mut self, m: MessageId) -> Result<(), BodyError> {
        self.put(&m.session.0.to_be_bytes())?;
        self.put(&m.packet_id.0.to_be_bytes())
    }
    fn short_str(&mut self, s: &str) -> Result<(), BodyError> {
        // Names and patterns are validated to at most MAX_NAME_LEN (< 256) bytes.
        self.put(&[s.len() as u8])?;
        self.put(s.as_bytes())
    }
}

/// PUBLISH body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    /// The message this packet carries (same across retransmissions).
    pub msg: MessageId,
    /// Lowest QoS 2 message id the publisher still has in flight in `msg.session`.
    pub low_water: PacketId,
    /// Channel name.
    pub name: ChannelName<'a>,
    /// Application bytes.
    pub body: &'a [u8],
}

impl<'a> Publish<'a> {
    /// Parses a PUBLISH plaintext.
    ///
    /// # Errors
    /// [`BodyError::Truncated`] or [`BodyError::Channel`].
    pub fn parse(b: &'a [u8]) -> Result<Self, BodyError> {
        let mut r = Reader(b);
        let msg = r.msg()?;
        let low_water = PacketId(r.u32()?);
        let name = ChannelName::from_bytes(r.short_str()?).map_err(BodyError::Channel)?;
        Ok(Self { msg, low_water, name, body: r.0 })
    }
    /// Encoded length.
    pub fn buffer_len(&self) -> usize {
        PUBLISH_PREFIX_LEN + self.name.as_str().len() + self.body.len()
    }
    /// Writes the body; returns its length.
    ///
    /// # Errors
    /// [`BodyError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, BodyError> {
        let mut w = Writer::new(buf);
        w.msg(self.msg)?;
        w.put(&self.low_water.0.to_be_bytes())?;
        w.short_str(self.name.as_str())?;
        w.put(self.body)?;
        Ok(w.at)
    }
}

/// Length of an ack body: a run of message ids ([`Ack`]).
pub const ACK_LEN: usize = MESSAGE_ID_LEN + 2;

/// Body of PUBACK, PUBREC, PUBREL and PUBCOMP: a run of `count` messages of one session
/// with consecutive packet ids, `msg` the first. One message is a run of 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The first message of the run.
    pub msg: MessageId,
    /// Messages in the run, at least 1; the last one's packet id fits a `u32`.
    pub count: u16,
}
impl Ack {
    /// A run of one message.
    pub const fn one(msg: MessageId) -> Self {
        Self { msg, count: 1 }
    }
    /// Parses an ack plaintext.
    ///
    /// # Errors
    /// [`BodyError::Truncated`], [`BodyError::TrailingBytes`], [`BodyError::InvalidRun`]
    /// (count 0, or packet ids past `u32::MAX`).
    pub fn parse(b: &[u8]) -> Result<Self, BodyError> {
        let mut r = Reader(b);
        let msg = r.msg()?;
        let count = r.u16()?;
        r.end()?;
        let last = msg.packet_id.0.checked_add(u32::from(count).saturating_sub(1));
        if count == 0 || last.is_none() {
            return Err(BodyError::InvalidRun);
        }
        Ok(Self { msg, count })
    }
    /// The messages of the run, in order.
    pub fn ids(&self) -> impl Iterator<Item = MessageId> + use<> {
        let (session, first) = (self.msg.session, self.msg.packet_id.0);
        (0..u32::from(self.count)).map_while(move |k| {
            Some(MessageId { session, packet_id: PacketId(first.checked_add(k)?) })
        })
    }
    /// Whether `m` is one of the run's messages.
    pub fn contains(&self, m: MessageId) -> bool {
        m.session == self.msg.session
            && m.packet_id
                .0
                .checked_sub(self.msg.packet_id.0)
                .is_some_and(|d| d < u32::from(self.count))
    }
    /// Writes the body; returns its length.
    ///
    /// # Errors
    /// [`BodyError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, BodyError> {
        let mut w = Writer::new(buf);
        w.msg(self.msg)?;
        w.put(&self.count.to_be_bytes())?;
        Ok(w.at)
    }
}

/// Body of CHALLENGE: a nonce the recipient must echo, and/or the echo of a nonce the
/// recipient sent, and the sender's previous session if this one replaces it. 0 means
/// "none" in every field; nonces and sessions are never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// A nonce the recipient must send back in the `echo` of its own CHALLENGE.
    pub challenge: Option<u64>,
    /// The nonce of the recipient's challenge that this packet answers.
    pub echo: Option<u64>,
    /// The session of the same node that this session replaces (after a counter
    /// rollover, or a restart with a state store): a receiver that verifies this
    /// session retires that one and moves what waited on it here.
    pub replaces: Option<SessionId>,
}
/// Length of an encoded [`Challenge`].
pub const CHALLENGE_LEN: usize = 20;
impl Challenge {
    /// Parses a challenge plaintext.
    ///
    /// # Errors
    /// [`BodyError::Truncated`], [`BodyError::TrailingBytes`].
    pub fn parse(b: &[u8]) -> Result<Self, BodyError> {
        let mut r = Reader(b);
        let (c, e, p) = (r.u64()?, r.u64()?, r.u32()?);
        r.end()?;
        Ok(Self {
            challenge: (c != 0).then_some(c),
            echo: (e != 0).then_some(e),
            replaces: (p != 0).then_some(SessionId(p)),
        })
    }
    /// Writes the body; returns its length.
    ///
    /// # Errors
    /// [`BodyError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, BodyError> {
        let mut w = Writer::new(buf);
        w.put(&self.challenge.unwrap_or(0).to_be_bytes())?;
        w.put(&self.echo.unwrap_or(0).to_be_bytes())?;
        w.put(&self.replaces.map_or(0, |s| s.0).to_be_bytes())?;
        Ok(w.at)
    }
}

/// SUBSCRIBE option: send me retained values of matching channels.
pub const SUB_WANTS_RETAINED: u8 = 0x01;

/// Body of SUBSCRIBE and UNSUBSCRIBE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscription<'a> {
    /// Option bits ([`SUB_WANTS_RETAINED`]); unknown bits are ignored.
    pub options: u8,
    /// The pattern.
    pub pattern: Pattern<'a>,
}
impl<'a> Subscription<'a> {
    /// Parses a SUBSCRIBE/UNSUBSCRIBE plaintext.
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn parse(b: &'a [u8]) -> Result<Self, BodyError> {
        let mut r = Reader(b);
        let options = r.u8()?;
        let pattern = Pattern::from_bytes(r.short_str()?).map_err(BodyError::Channel)?;
        r.end()?;
        Ok(Self { options, pattern })
    }
    /// Writes the body; returns its length.
    ///
    /// # Errors
    /// [`BodyError::BufferTooSmall`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, BodyError> {
        let mut w = Writer::new(buf);
        w.put(&[self.options])?;
        w.short_str(self.pattern.as_str())?;
        Ok(w.at)
    }
}

/// HEARTBEAT body. `patterns` is the raw list; iterate it with [`Heartbeat::patterns`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat<'a> {
    /// Sender's heartbeat interval, seconds.
    pub interval_s: u16,
    /// Largest datagram the sender accepts, bytes: others may coalesce packets to it up to
    /// this length (see docs/PROTOCOL.md, "Datagrams").
    pub max_datagram: u16,
    /// Digest of the sender's whole subscription set.
    pub digest: u32,
    /// Patterns in the whole set.
    pub total: u8,
    /// Index of the first pattern in this packet.
    pub first: u8,
    /// Patterns in this packet.
    pub count: u8,
    raw: &'a [u8],
}

impl<'a> Heartbeat<'a> {
    /// Parses a HEARTBEAT plaintext and validates every pattern in it.
    ///
    /// # Errors
    /// [`BodyError`].
    pub fn parse(b: &'a [u8]) -> Result<Self, BodyError> {
        let mut r = Reader(b);
        let interval_s = r.u16()?;
        let max_datagram = r.u16()?;
        let digest = r.u32()?;
        let total = r.u8()?;
        let first = r.u8()?;
        let count = r.u8()?;
        let raw = r.0;
        for _ in 0..count {
            Pattern::from_bytes(r.short_str()?).map_err(BodyError::Channel)?;
        }
        r.end()?;
        Ok(Self { interval_s, max_datagram, digest, total, first, count, raw })
    }

    /// The patterns in this packet (validated by [`Heartbeat::parse`]).
    pub fn patterns(&self) -> impl Iterator<Item = Pattern<'a>> + 'a {
        let mut r = Reader(self.raw);
        core::iter::from_fn(move || Pattern::from_bytes(r.short_str().ok()?).ok())
    }

    /// Writes the prefix with no patterns; append them with [`HeartbeatWriter::push`].
    ///
    /// # Errors
    /// [`BodyError::BufferTooSmall`].
    pub fn writer(
        buf: &mut [u8],
        (interval_s, max_datagram): (u16, u16),
        digest: u32,
        total: u8,
        first: u8,
    ) -> Result<HeartbeatWriter<'_>, BodyError> {
        let mut w = Writer::new(buf);
        w.put(&interval_s.to_be_bytes())?;
        w.put(&max_datagram.to_be_bytes())?;
        w.put(&digest.to_be_bytes())?;
        w.put(&[total, first, 0])?;
        Ok(HeartbeatWriter { w })
    }
}

/// Appends patterns to a heartbeat body.
pub struct HeartbeatWriter<'a> {
    w: Writer<'a>,
}
impl HeartbeatWriter<'_> {
    /// Appends a pattern if it fits; returns whether it did.
    pub fn push(&mut self, p: Pattern<'_>) -> bool {
        let need = 1 + p.as_str().len();
        if self.w.at + need > self.w.buf.len() || self.w.buf[HEARTBEAT_PREFIX_LEN - 1] == u8::MAX {
            return false;
        }
        // Checked above: fits.
        let _ = self.w.short_str(p.as_str());
        self.w.buf[HEARTBEAT_PREFIX_LEN - 1] += 1;
        true
    }
    /// Patterns written so far.
    pub fn count(&self) -> u8 {
        self.w.buf[HEARTBEAT_PREFIX_LEN - 1]
    }
    /// Finishes; returns the body length.
    pub fn finish(self) -> usize {
        self.w.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: MessageId = MessageId { session: SessionId(0xdead_beef), packet_id: PacketId(7) };

    #[test]
    fn publish_round_trip_and_fixture() {
        let p = Publish {
            msg: MSG,
            low_water: PacketId(5),
            name: ChannelName::new("a/b").unwrap(),
            body: b"hi",
        };
        let mut buf = [0u8; 32];
        let n = p.emit(&mut buf).unwrap();
        assert_eq!(n, p.buffer_len());
        assert_eq!(&buf[..n], b"\xde\xad\xbe\xef\x00\x00\x00\x07\x00\x00\x00\x05\x03a/bhi");
        assert_eq!(Publish::parse(&buf[..n]).unwrap(), p);
        assert_eq!(Publish::parse(&buf[..5]), Err(BodyError::Truncated));
        assert_eq!(Publish::parse(&buf[..14]), Err(BodyError::Truncated));
        buf[13] = b'+';
        assert!(matches!(Publish::parse(&buf[..n]), Err(BodyError::Channel(_))));
        assert_eq!(p.emit(&mut [0u8; 16]), Err(BodyError::BufferTooSmall));
    }

    #[test]
    fn ack_round_trip() {
        let mut buf = [0u8; 12];
        assert_eq!(Ack::one(MSG).emit(&mut buf).unwrap(), ACK_LEN);
        assert_eq!(Ack::parse(&buf[..ACK_LEN]).unwrap(), Ack::one(MSG));
        assert_eq!(Ack::parse(&buf[..9]), Err(BodyError::Truncated));
        assert_eq!(Ack::parse(&[0; 11]), Err(BodyError::TrailingBytes));
        let run = Ack { msg: MSG, count: 3 };
        run.emit(&mut buf).unwrap();
        assert_eq!(&buf[..ACK_LEN], &[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7, 0, 3]);
        let ids: std::vec::Vec<u32> = run.ids().map(|m| m.packet_id.0).collect();
        assert_eq!(ids, [7, 8, 9]);
        let at = |p| MessageId { session: MSG.session, packet_id: PacketId(p) };
        assert!(run.contains(at(7)) && run.contains(at(9)));
        assert!(!run.contains(at(6)) && !run.contains(at(10)));
        assert!(!run.contains(MessageId { session: SessionId(1), packet_id: PacketId(8) }));
        // A run of nothing, and one past the last packet id, are refused.
        Ack { msg: MSG, count: 0 }.emit(&mut buf).unwrap();
        assert_eq!(Ack::parse(&buf[..ACK_LEN]), Err(BodyError::InvalidRun));
        let top = MessageId { session: MSG.session, packet_id: PacketId(u32::MAX) };
        Ack { msg: top, count: 2 }.emit(&mut buf).unwrap();
        assert_eq!(Ack::parse(&buf[..ACK_LEN]), Err(BodyError::InvalidRun));
        Ack { msg: top, count: 1 }.emit(&mut buf).unwrap();
        assert_eq!(Ack::parse(&buf[..ACK_LEN]).unwrap().ids().count(), 1);
    }

    #[test]
    fn subscription_round_trip() {
        let s =
            Subscription { options: SUB_WANTS_RETAINED, pattern: Pattern::new("f/+/t").unwrap() };
        let mut buf = [0u8; 16];
        let n = s.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x01\x05f/+/t");
        assert_eq!(Subscription::parse(&buf[..n]).unwrap(), s);
        assert_eq!(Subscription::parse(&buf[..n + 1]), Err(BodyError::TrailingBytes));
        assert!(matches!(Subscription::parse(b"\x00\x02a#"), Err(BodyError::Channel(_))));
    }

    #[test]
    fn heartbeat_round_trip_and_limits() {
        let mut buf = [0u8; 22];
        let mut w = Heartbeat::writer(&mut buf, (5, 1472), 0x0102_0304, 3, 1).unwrap();
        assert!(w.push(Pattern::new("a/#").unwrap()));
        assert!(w.push(Pattern::new("bb").unwrap()));
        assert!(!w.push(Pattern::new("cccccccc").unwrap()), "does not fit");
        assert_eq!(w.count(), 2);
        let n = w.finish();
        assert_eq!(&buf[..n], b"\x00\x05\x05\xc0\x01\x02\x03\x04\x03\x01\x02\x03a/#\x02bb");
        let h = Heartbeat::parse(&buf[..n]).unwrap();
        assert_eq!((h.interval_s, h.max_datagram), (5, 1472));
        assert_eq!((h.digest, h.total, h.first, h.count), (0x0102_0304, 3, 1, 2));
        let mut it = h.patterns();
        assert_eq!(it.next().unwrap().as_str(), "a/#");
        assert_eq!(it.next().unwrap().as_str(), "bb");
        assert!(it.next().is_none());
        drop(it);
        buf[10] = 3; // claims 3 patterns, holds 2
        assert_eq!(Heartbeat::parse(&buf[..n]), Err(BodyError::Truncated));
        buf[10] = 1; // claims 1, holds more
        assert_eq!(Heartbeat::parse(&buf[..n]), Err(BodyError::TrailingBytes));
    }
}
