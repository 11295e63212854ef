//! Wire format version 4: the 57-byte header, zero-copy.
//!
//! ```text
//!  0       2   3   4   5               9              13      15
//! +-------+---+---+---+---------------+---------------+-------+----------------//----+
//! | magic |ver|typ|flg|   packet id   |  session id   |  TTL  |  IV (16 bytes)        |
//! +-------+---+---+---+---------------+---------------+-------+----------------//----+
//! 31              35                                  51              55      57
//! +---------------+-------------------//--------------+---------------+-------+---//---+
//! |  timestamp    |   channel id (16 bytes)           |    key id     |   n   | ct n   |
//! +---------------+-------------------//--------------+---------------+-------+---//---+
//! 57 + n
//! +------//------+
//! |    MAC 32    |   HMAC(mac_key, packet[0 .. 57 + n])
//! +------//------+
//!
//! flags:  7   6   5   4   3   2   1   0
//!       +---------------+---+---+-------+
//!       |   priority    |dup|ret|  QoS  |
//!       +---------------+---+---+-------+
//! ```
//!
//! All integers are big-endian. [`Packet`] is a view over a byte buffer in the manner of
//! smoltcp's `wire` module; [`Header`] is the parsed, high-level representation.

use crate::channel::ChannelId;
use core::fmt;

/// `"NM"`.
pub const MAGIC: u16 = 0x4E4D;
/// The version this crate speaks. Versions 3 (one packet per datagram, single acks), 2
/// (no key id) and 1 are refused.
pub const VERSION: u8 = 0x04;
/// Version of the reference MicroPython NoMQ, reserved for a legacy profile.
pub const VERSION_LEGACY: u8 = 0x01;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = field::PAYLOAD_START;
/// Bytes of the trailing HMAC-SHA256.
pub const MAC_LEN: usize = 32;
/// AES block size; the ciphertext length is a non-zero multiple of it.
pub const BLOCK_LEN: usize = 16;
/// Header and MAC: the fixed cost of one packet on the wire.
pub const OVERHEAD: usize = HEADER_LEN + MAC_LEN;
/// The smallest packet: header, one block, MAC.
pub const MIN_PACKET_LEN: usize = OVERHEAD + BLOCK_LEN;

/// The length of the packet at the start of `datagram`, which carries one or more packets
/// back to back (docs/PROTOCOL.md, "Datagrams"): `57 + n + 32`, `n` from the length field.
/// `None` when the datagram is too short to hold a header, or its magic or version is
/// not this protocol's: then the rest of the datagram cannot be split, and the caller
/// treats it as one (malformed) packet.
pub fn packet_len(datagram: &[u8]) -> Option<usize> {
    let b = datagram.get(..HEADER_LEN)?;
    if be16(&b[field::MAGIC]) != MAGIC || b[field::VERSION] != VERSION {
        return None;
    }
    Some(OVERHEAD + usize::from(be16(&b[field::PAYLOAD_LEN])))
}

pub(crate) mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..2;
    pub const VERSION: usize = 2;
    pub const TYPE: usize = 3;
    pub const FLAGS: usize = 4;
    pub const PACKET_ID: Range<usize> = 5..9;
    pub const SESSION_ID: Range<usize> = 9..13;
    pub const TTL: Range<usize> = 13..15;
    pub const IV: Range<usize> = 15..31;
    pub const TIMESTAMP: Range<usize> = 31..35;
    pub const CHANNEL_ID: Range<usize> = 35..51;
    pub const KEY_ID: Range<usize> = 51..55;
    pub const PAYLOAD_LEN: Range<usize> = 55..57;
    pub const PAYLOAD_START: usize = 57;
}

/// Why a buffer is not a well-formed v4 packet header. Checked in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than header + one block + MAC.
    TooShort,
    /// The first two bytes are not `NM`.
    BadMagic,
    /// A version other than 3.
    UnsupportedVersion(u8),
    /// A packet type this version does not define.
    UnknownType(u8),
    /// QoS bits hold the reserved value 3.
    InvalidQos,
    /// The payload length is zero or not a multiple of 16.
    PayloadNotBlockMultiple,
    /// `57 + n + 32` is not the length of the datagram.
    LengthMismatch,
    /// `n` is above the configured maximum.
    TooLarge,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TooShort => f.write_str("datagram shorter than the smallest packet"),
            Self::BadMagic => f.write_str("bad magic (not a NoMQ packet)"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported protocol version {v:#04x}"),
            Self::UnknownType(t) => write!(f, "unknown packet type {t:#04x}"),
            Self::InvalidQos => f.write_str("reserved QoS value 3"),
            Self::PayloadNotBlockMultiple => {
                f.write_str("payload length is zero or not a multiple of 16")
            }
            Self::LengthMismatch => {
                f.write_str("payload length does not match the datagram length")
            }
            Self::TooLarge => f.write_str("payload larger than the configured maximum"),
        }
    }
}
impl core::error::Error for WireError {}

macro_rules! newtype_u32 {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub struct $name(pub u32);
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#010x})", stringify!($name), self.0)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:08x}", self.0)
            }
        }
    };
}
newtype_u32!(
    /// The sender's packet counter within its session; strictly increasing, never reused.
    PacketId
);
newtype_u32!(
    /// A sender's random, non-zero session identifier, new at every start.
    SessionId
);
newtype_u32!(
    /// Which key set sealed a packet: the first 4 bytes of
    /// `HMAC(mac_key, "nomq/v3/key-id" ‖ enc_key)`, read big-endian (see
    /// [`crate::keys::KeySet::key_id`]). Public: it lets a receiver pick the key set to
    /// verify with instead of trying each.
    KeyId
);

/// Packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum PacketType {
    /// A message on a channel.
    Publish = 0x01,
    /// A subscription announcement.
    Subscribe = 0x02,
    /// QoS 1 acknowledgement.
    PubAck = 0x03,
    /// A subscription withdrawn.
    Unsubscribe = 0x04,
    /// Liveness and the full subscription set.
    Heartbeat = 0x05,
    /// QoS 2 step 2: received.
    PubRec = 0x06,
    /// QoS 2 step 3: release.
    PubRel = 0x07,
    /// QoS 2 step 4: complete.
    PubComp = 0x08,
    /// Freshness challenge and its echo (a receiver that does not know a session yet).
    Challenge = 0x09,
}

impl PacketType {
    /// Parses a type byte.
    ///
    /// # Errors
    /// [`WireError::UnknownType`] for any byte that is not a defined type.
    pub const fn from_u8(b: u8) -> Result<Self, WireError> {
        Ok(match b {
            0x01 => Self::Publish,
            0x02 => Self::Subscribe,
            0x03 => Self::PubAck,
            0x04 => Self::Unsubscribe,
            0x05 => Self::Heartbeat,
            0x06 => Self::PubRec,
            0x07 => Self::PubRel,
            0x08 => Self::PubComp,
            0x09 => Self::Challenge,
            _ => return Err(WireError::UnknownType(b)),
        })
    }
    /// Whether the body is a [`crate::body::Ack`].
    pub const fn is_ack(self) -> bool {
        matches!(self, Self::PubAck | Self::PubRec | Self::PubRel | Self::PubComp)
    }
}

/// Delivery guarantee.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum Qos {
    /// At most once: one transmission.
    #[default]
    AtMostOnce = 0,
    /// At least once: PUBACK, retransmission.
    AtLeastOnce = 1,
    /// Exactly once: PUBREC / PUBREL / PUBCOMP.
    ExactlyOnce = 2,
}

impl Qos {
    /// From the numeric level 0, 1 or 2.
    pub const fn from_level(n: u8) -> Option<Self> {
        match n {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
    /// The numeric level.
    pub const fn level(self) -> u8 {
        self as u8
    }
}

/// The flags byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Flags {
    /// Delivery guarantee.
    pub qos: Qos,
    /// Keep as the channel's retained value.
    pub retain: bool,
    /// This is a retransmission.
    pub dup: bool,
    /// 0 (lowest) to 15 (highest).
    pub priority: u8,
}

impl Flags {
    /// Parses the flags byte.
    ///
    /// # Errors
    /// [`WireError::InvalidQos`] when the QoS bits are 3.
    pub const fn from_byte(b: u8) -> Result<Self, WireError> {
        let qos = match Qos::from_level(b & 0b11) {
            Some(q) => q,
            None => return Err(WireError::InvalidQos),
        };
        Ok(Self { qos, retain: b & 0b100 != 0, dup: b & 0b1000 != 0, priority: b >> 4 })
    }
    /// The flags byte. Priorities above 15 are clamped.
    pub const fn to_byte(self) -> u8 {
        let p = if self.priority > 15 { 15 } else { self.priority };
        self.qos as u8 | (self.retain as u8) << 2 | (self.dup as u8) << 3 | p << 4
    }
}

/// A read/write view of a v4 packet in a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn be16(b: &[u8]) -> u16 {
    let mut a = [0; 2];
    a.copy_from_slice(b);
    u16::from_be_bytes(a)
}
fn be32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks. Getters panic if it is shorter than [`HEADER_LEN`];
    /// use [`Packet::new_checked`] for anything that came from the network.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps untrusted bytes after [`Packet::check`]: every getter is then safe.
    ///
    /// # Errors
    /// The first [`WireError`] found, in the order of [`Packet::check`].
    pub fn new_checked(buffer: T, max_payload: usize) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check(max_payload)?;
        Ok(p)
    }

    /// The cheap checks, in this order: length, magic, version, type, QoS bits, `n` a
    /// non-zero multiple of 16, `57 + n + 32` equal to the buffer length, `n ≤ max_payload`.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn check(&self, max_payload: usize) -> Result<(), WireError> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN + BLOCK_LEN + MAC_LEN {
            return Err(WireError::TooShort);
        }
        if be16(&b[field::MAGIC]) != MAGIC {
            return Err(WireError::BadMagic);
        }
        if b[field::VERSION] != VERSION {
            return Err(WireError::UnsupportedVersion(b[field::VERSION]));
        }
        PacketType::from_u8(b[field::TYPE])?;
        Flags::from_byte(b[field::FLAGS])?;
        let n = usize::from(be16(&b[field::PAYLOAD_LEN]));
        if n == 0 || n % BLOCK_LEN != 0 {
            return Err(WireError::PayloadNotBlockMultiple);
        }
        if HEADER_LEN + n + MAC_LEN != b.len() {
            return Err(WireError::LengthMismatch);
        }
        if n > max_payload {
            return Err(WireError::TooLarge);
        }
        Ok(())
    }

    /// Consumes the view, returning the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }
    /// Magic field.
    pub fn magic(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::MAGIC])
    }
    /// Version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    /// Raw packet type byte.
    pub fn type_byte(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
    /// Raw flags byte.
    pub fn flags_byte(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// Packet id field.
    pub fn packet_id(&self) -> PacketId {
        PacketId(be32(&self.buffer.as_ref()[field::PACKET_ID]))
    }
    /// Session id field.
    pub fn session_id(&self) -> SessionId {
        SessionId(be32(&self.buffer.as_ref()[field::SESSION_ID]))
    }
    /// TTL field, seconds.
    pub fn ttl(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::TTL])
    }
    /// IV field.
    pub fn iv(&self) -> [u8; 16] {
        let mut iv = [0; 16];
        iv.copy_from_slice(&self.buffer.as_ref()[field::IV]);
        iv
    }
    /// Timestamp field, Unix seconds.
    pub fn timestamp(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::TIMESTAMP])
    }
    /// Channel id field.
    pub fn channel_id(&self) -> ChannelId {
        let mut id = [0; 16];
        id.copy_from_slice(&self.buffer.as_ref()[field::CHANNEL_ID]);
        ChannelId(id)
    }
    /// Key id field: which key set sealed this packet.
    pub fn key_id(&self) -> KeyId {
        KeyId(be32(&self.buffer.as_ref()[field::KEY_ID]))
    }
    /// Payload (ciphertext) length field.
    pub fn payload_len(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::PAYLOAD_LEN])
    }
    /// Total length of this packet: header, ciphertext and MAC. The number of bytes the
    /// packet consumes when several are laid back to back.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len()) + MAC_LEN
    }
    /// The ciphertext. Requires a checked packet.
    pub fn payload(&self) -> &[u8] {
        let n = usize::from(self.payload_len());
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + n]
    }
    /// The MAC. Requires a checked packet.
    pub fn mac(&self) -> &[u8] {
        let n = usize::from(self.payload_len());
        &self.buffer.as_ref()[HEADER_LEN + n..HEADER_LEN + n + MAC_LEN]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn buf(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    /// Sets the magic field.
    pub fn set_magic(&mut self, v: u16) {
        self.buf()[field::MAGIC].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the version field.
    pub fn set_version(&mut self, v: u8) {
        self.buf()[field::VERSION] = v;
    }
    /// Sets the packet type.
    pub fn set_packet_type(&mut self, t: PacketType) {
        self.buf()[field::TYPE] = t as u8;
    }
    /// Sets the flags byte.
    pub fn set_flags(&mut self, f: Flags) {
        self.buf()[field::FLAGS] = f.to_byte();
    }
    /// Sets the packet id.
    pub fn set_packet_id(&mut self, v: PacketId) {
        self.buf()[field::PACKET_ID].copy_from_slice(&v.0.to_be_bytes());
    }
    /// Sets the session id.
    pub fn set_session_id(&mut self, v: SessionId) {
        self.buf()[field::SESSION_ID].copy_from_slice(&v.0.to_be_bytes());
    }
    /// Sets the TTL.
    pub fn set_ttl(&mut self, v: u16) {
        self.buf()[field::TTL].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the IV.
    pub fn set_iv(&mut self, v: &[u8; 16]) {
        self.buf()[field::IV].copy_from_slice(v);
    }
    /// Sets the timestamp.
    pub fn set_timestamp(&mut self, v: u32) {
        self.buf()[field::TIMESTAMP].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets the channel id.
    pub fn set_channel_id(&mut self, v: &ChannelId) {
        self.buf()[field::CHANNEL_ID].copy_from_slice(&v.0);
    }
    /// Sets the key id.
    pub fn set_key_id(&mut self, v: KeyId) {
        self.buf()[field::KEY_ID].copy_from_slice(&v.0.to_be_bytes());
    }
    /// Sets the payload length.
    pub fn set_payload_len(&mut self, v: u16) {
        self.buf()[field::PAYLOAD_LEN].copy_from_slice(&v.to_be_bytes());
    }
}

/// The parsed header of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header {
    /// Packet type.
    pub packet_type: PacketType,
    /// Flags.
    pub flags: Flags,
    /// Sender's packet counter.
    pub packet_id: PacketId,
    /// Sender's session.
    pub session_id: SessionId,
    /// Time to live, seconds from `timestamp`.
    pub ttl: u16,
    /// AES-CBC IV.
    pub iv: [u8; 16],
    /// Sender's clock, Unix seconds.
    pub timestamp: u32,
    /// Keyed channel id.
    pub channel_id: ChannelId,
    /// Id of the key set that sealed the packet (written by the seal functions).
    pub key_id: KeyId,
    /// Ciphertext length.
    pub payload_len: u16,
}

impl Header {
    /// A header of this type with every other field zero (default flags, no IV yet):
    /// the starting point for building one, field by field.
    pub const fn new(packet_type: PacketType) -> Self {
        Self {
            packet_type,
            flags: Flags { qos: Qos::AtMostOnce, retain: false, dup: false, priority: 0 },
            packet_id: PacketId(0),
            session_id: SessionId(0),
            ttl: 0,
            iv: [0; 16],
            timestamp: 0,
            channel_id: ChannelId([0; 16]),
            key_id: KeyId(0),
            payload_len: 0,
        }
    }

    /// Parses the header of a checked packet.
    ///
    /// # Errors
    /// [`WireError::UnknownType`] or [`WireError::InvalidQos`] if the packet was not checked.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Self, WireError> {
        Ok(Self {
            packet_type: PacketType::from_u8(p.type_byte())?,
            flags: Flags::from_byte(p.flags_byte())?,
            packet_id: p.packet_id(),
            session_id: p.session_id(),
            ttl: p.ttl(),
            iv: p.iv(),
            timestamp: p.timestamp(),
            channel_id: p.channel_id(),
            key_id: p.key_id(),
            payload_len: p.payload_len(),
        })
    }

    /// Length of the whole packet this header describes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize + MAC_LEN
    }

    /// Writes magic, version and every field into the first [`HEADER_LEN`] bytes.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`] (a caller bug, not network input).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        p.set_magic(MAGIC);
        p.set_version(VERSION);
        p.set_packet_type(self.packet_type);
        p.set_flags(self.flags);
        p.set_packet_id(self.packet_id);
        p.set_session_id(self.session_id);
        p.set_ttl(self.ttl);
        p.set_iv(&self.iv);
        p.set_timestamp(self.timestamp);
        p.set_channel_id(&self.channel_id);
        p.set_key_id(self.key_id);
        p.set_payload_len(self.payload_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PUBACK-sized packet (one block) with every field distinct, in hex.
    const FIXTURE: &str = "4e4d0403c6\
        01020304\
        a1b2c3d4\
        0e10\
        000102030405060708090a0b0c0d0e0f\
        65f1e2d3\
        f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff\
        5eed1d07\
        0010\
        11111111111111111111111111111111\
        2222222222222222222222222222222222222222222222222222222222222222";

    fn hex(s: &str) -> [u8; 105] {
        let mut out = [0u8; 105];
        let s = s.as_bytes();
        assert_eq!(s.len(), 210);
        for (i, o) in out.iter_mut().enumerate() {
            let d = |c: u8| (c as char).to_digit(16).unwrap() as u8;
            *o = d(s[2 * i]) << 4 | d(s[2 * i + 1]);
        }
        out
    }

    fn header() -> Header {
        Header {
            packet_type: PacketType::PubAck,
            flags: Flags { qos: Qos::ExactlyOnce, retain: true, dup: false, priority: 12 },
            packet_id: PacketId(0x0102_0304),
            session_id: SessionId(0xa1b2_c3d4),
            ttl: 3600,
            iv: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
            timestamp: 0x65f1_e2d3,
            channel_id: ChannelId([
                0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd,
                0xfe, 0xff,
            ]),
            key_id: KeyId(0x5eed_1d07),
            payload_len: 16,
        }
    }

    #[test]
    fn parse_fixture() {
        let bytes = hex(FIXTURE);
        let p = Packet::new_checked(&bytes[..], 1024).unwrap();
        assert_eq!(p.magic(), MAGIC);
        assert_eq!(p.version(), 4);
        assert_eq!(p.type_byte(), 0x03);
        assert_eq!(p.flags_byte(), 0xc6);
        assert_eq!(p.packet_id(), PacketId(0x0102_0304));
        assert_eq!(p.session_id(), SessionId(0xa1b2_c3d4));
        assert_eq!(p.ttl(), 3600);
        assert_eq!(p.iv()[15], 15);
        assert_eq!(p.timestamp(), 0x65f1_e2d3);
        assert_eq!(p.channel_id().0[0], 0xf0);
        assert_eq!(p.key_id(), KeyId(0x5eed_1d07));
        assert_eq!(p.payload_len(), 16);
        assert_eq!(p.payload(), &[0x11; 16]);
        assert_eq!(p.mac(), &[0x22; 32]);
        assert_eq!(p.total_len(), 105);
        assert_eq!(Header::parse(&p).unwrap(), header());
    }

    #[test]
    fn emit_fixture() {
        let expect = hex(FIXTURE);
        let mut buf = [0u8; 105];
        buf[57..73].fill(0x11);
        buf[73..].fill(0x22);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        header().emit(&mut p);
        assert_eq!(buf, expect);
        assert_eq!(header().buffer_len(), 105);
        assert_eq!((HEADER_LEN, OVERHEAD), (57, 89));
    }

    #[test]
    fn every_setter_round_trips() {
        let mut buf = [0u8; 105];
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_magic(0x1234);
        assert_eq!(p.magic(), 0x1234);
        p.set_version(7);
        assert_eq!(p.version(), 7);
        p.set_packet_type(PacketType::PubComp);
        assert_eq!(p.type_byte(), 8);
        let f = Flags { qos: Qos::AtLeastOnce, retain: false, dup: true, priority: 15 };
        p.set_flags(f);
        assert_eq!(Flags::from_byte(p.flags_byte()).unwrap(), f);
        p.set_packet_id(PacketId(u32::MAX));
        assert_eq!(p.packet_id(), PacketId(u32::MAX));
        p.set_session_id(SessionId(5));
        assert_eq!(p.session_id(), SessionId(5));
        p.set_ttl(65535);
        assert_eq!(p.ttl(), 65535);
        p.set_iv(&[9; 16]);
        assert_eq!(p.iv(), [9; 16]);
        p.set_timestamp(42);
        assert_eq!(p.timestamp(), 42);
        p.set_channel_id(&ChannelId([3; 16]));
        assert_eq!(p.channel_id(), ChannelId([3; 16]));
        p.set_key_id(KeyId(0xdead_beef));
        assert_eq!(p.key_id(), KeyId(0xdead_beef));
        assert_eq!(&buf[51..55], &[0xde, 0xad, 0xbe, 0xef]);
        let mut p = Packet::new_unchecked(&mut buf[..]);
        p.set_payload_len(32);
        assert_eq!(p.payload_len(), 32);
        assert_eq!(p.total_len(), 121);
    }

    #[test]
    fn flags_layout() {
        assert_eq!(
            Flags { qos: Qos::AtLeastOnce, retain: true, dup: true, priority: 3 }.to_byte(),
            0x3d
        );
        assert_eq!(Flags::from_byte(0x03), Err(WireError::InvalidQos));
        assert_eq!(Flags { priority: 200, ..Flags::default() }.to_byte(), 0xf0);
    }

    #[test]
    fn packet_len_splits_datagrams() {
        let good = hex(FIXTURE);
        let mut two = [0u8; 210];
        two[..105].copy_from_slice(&good);
        two[105..].copy_from_slice(&good);
        assert_eq!(packet_len(&two), Some(105));
        assert_eq!(packet_len(&two[105..]), Some(105));
        assert_eq!(packet_len(&good[..56]), None, "no whole header");
        assert_eq!(packet_len(&good[..57]), Some(105), "the length field is enough");
        let mut b = good;
        b[2] = 3;
        assert_eq!(packet_len(&b), None, "another version cannot be split");
        b = good;
        b[1] = 0;
        assert_eq!(packet_len(&b), None);
    }

    #[test]
    fn checks_in_order() {
        let good = hex(FIXTURE);
        let mut longer = [0u8; 106];
        longer[..105].copy_from_slice(&good);
        assert_eq!(Packet::new_checked(&longer[..], 1024).unwrap_err(), WireError::LengthMismatch);
        assert_eq!(Packet::new_checked(&good[..104], 1024).unwrap_err(), WireError::TooShort);
        assert_eq!(Packet::new_checked(&good[..60], 1024).unwrap_err(), WireError::TooShort);
        let mut b = good;
        b[0] = 0;
        assert_eq!(Packet::new_checked(&b[..], 1024).unwrap_err(), WireError::BadMagic);
        for v in [0, 1, 2, 3, 0xff] {
            let mut b = good;
            b[2] = v;
            assert_eq!(
                Packet::new_checked(&b[..], 1024).unwrap_err(),
                WireError::UnsupportedVersion(v)
            );
        }
        // The key id is opaque to the structural checks.
        let mut b = good;
        b[51..55].fill(0);
        assert!(Packet::new_checked(&b[..], 1024).is_ok());
        let mut b = good;
        b[3] = 10;
        assert_eq!(Packet::new_checked(&b[..], 1024).unwrap_err(), WireError::UnknownType(10));
        let mut b = good;
        b[3] = 0;
        assert_eq!(Packet::new_checked(&b[..], 1024).unwrap_err(), WireError::UnknownType(0));
        let mut b = good;
        b[4] = 0x03;
        assert_eq!(Packet::new_checked(&b[..], 1024).unwrap_err(), WireError::InvalidQos);
        let mut b = good;
        b[56] = 17;
        assert_eq!(
            Packet::new_checked(&b[..], 1024).unwrap_err(),
            WireError::PayloadNotBlockMultiple
        );
        let mut b = good;
        b[56] = 0;
        assert_eq!(
            Packet::new_checked(&b[..], 1024).unwrap_err(),
            WireError::PayloadNotBlockMultiple
        );
        let mut b = good;
        b[56] = 32;
        assert_eq!(Packet::new_checked(&b[..], 1024).unwrap_err(), WireError::LengthMismatch);
        assert_eq!(Packet::new_checked(&good[..], 15).unwrap_err(), WireError::TooLarge);
        for t in 1..=8u8 {
            let mut b = good;
            b[3] = t;
            assert_eq!(
                Header::parse(&Packet::new_checked(&b[..], 16).unwrap()).unwrap().packet_type as u8,
                t
            );
        }
    }
}
