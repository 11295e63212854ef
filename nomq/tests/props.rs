//! Property tests: envelope and body round trips, and garbage that must never panic.
//!
//! Case counts are modest so that the suite runs in seconds; the exhaustive sweep over
//! every plaintext length is a plain loop.

use nomq::body::{Ack, Heartbeat, MessageId, Publish, SUB_WANTS_RETAINED, Subscription};
use nomq::channel::MAX_NAME_LEN;
use nomq::envelope::{OpenError, SealError, max_plaintext, open, seal_in_place, sealed_len};
use nomq::keys::{Generation, ScopeIndex};
use nomq::wire::{HEADER_LEN, KeyId, MAC_LEN, WireError};
use nomq::{
    ChannelId, ChannelName, Flags, Header, KeyLookup, KeyPair, Keyring, PacketId, PacketType,
    Pattern, Qos, SessionId,
};
use proptest::prelude::*;

/// The payload limit the properties run under (a 1500-byte MTU minus IP/UDP and overhead).
const MAX_PAYLOAD: usize = 1376;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// A keyring with every kind of scope: network current and previous, and a channel scope
/// with its own current and previous keys.
fn ring() -> Keyring<2> {
    let mut r: Keyring<2> = Keyring::new(&KeyPair::new([0x01; 32], [0x02; 32])).unwrap();
    r.rotate(&KeyPair::new([0x03; 32], [0x04; 32])).unwrap();
    r.set_channel(
        "secret/#",
        &KeyPair::new([0x05; 32], [0x06; 32]),
        Some(&KeyPair::new([0x07; 32], [0x08; 32])),
    )
    .unwrap();
    r
}

fn packet_type() -> impl Strategy<Value = PacketType> {
    (1u8..=8).prop_map(|b| PacketType::from_u8(b).unwrap())
}

fn flags() -> impl Strategy<Value = Flags> {
    (0u8..=2, any::<bool>(), any::<bool>(), 0u8..=15).prop_map(|(q, retain, dup, priority)| Flags {
        qos: Qos::from_level(q).unwrap(),
        retain,
        dup,
        priority,
    })
}

prop_compose! {
    fn header()(
        packet_type in packet_type(),
        flags in flags(),
        packet_id in any::<u32>(),
        session_id in any::<u32>(),
        ttl in any::<u16>(),
        timestamp in any::<u32>(),
        channel_id in any::<[u8; 16]>(),
        junk_iv in any::<[u8; 16]>(),
        junk_key_id in any::<u32>(),
        junk_len in any::<u16>(),
    ) -> Header {
        Header {
            packet_type,
            flags,
            packet_id: PacketId(packet_id),
            session_id: SessionId(session_id),
            ttl,
            // These three are overwritten by seal_in_place; random values prove it.
            iv: junk_iv,
            timestamp,
            channel_id: ChannelId(channel_id),
            key_id: KeyId(junk_key_id),
            payload_len: junk_len,
        }
    }
}

/// One level of a channel name: possibly empty, possibly non-ASCII, never a wildcard.
fn level() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_ $.é€-]{0,8}"
}

/// A valid channel name.
fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..6)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("1..=MAX_NAME_LEN bytes", |s| !s.is_empty() && s.len() <= MAX_NAME_LEN)
}

/// A valid subscription pattern: literal and `+` levels, optionally ending in `#`.
fn pattern() -> impl Strategy<Value = String> {
    let lvl = prop_oneof![3 => level(), 1 => Just("+".to_owned())];
    (prop::collection::vec(lvl, 0..6), any::<bool>())
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
        .prop_filter("1..=MAX_NAME_LEN bytes", |s| !s.is_empty() && s.len() <= MAX_NAME_LEN)
}

fn msg_id() -> impl Strategy<Value = MessageId> {
    (any::<u32>(), any::<u32>())
        .prop_map(|(s, p)| MessageId { session: SessionId(s), packet_id: PacketId(p) })
}

/// Seals `plaintext` under `pair` with `iv`; the packet is exactly `sealed_len` long.
fn seal_with(
    pair: &KeyPair,
    header: &Header,
    iv: [u8; 16],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let keys = nomq::KeySet::new(pair);
    let mut buf = vec![0u8; sealed_len(plaintext.len())];
    buf[HEADER_LEN..HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    let n = seal_in_place(&keys, header, iv, &mut buf, plaintext.len(), MAX_PAYLOAD)?;
    assert_eq!(n, buf.len());
    Ok(buf)
}

/// The key pairs of [`ring`], with the scope and generation `open` must report for each.
fn ring_pairs() -> [(KeyPair, ScopeIndex, Generation); 4] {
    [
        (KeyPair::new([0x03; 32], [0x04; 32]), ScopeIndex(0), Generation::Current),
        (KeyPair::new([0x01; 32], [0x02; 32]), ScopeIndex(0), Generation::Previous),
        (KeyPair::new([0x05; 32], [0x06; 32]), ScopeIndex(1), Generation::Current),
        (KeyPair::new([0x07; 32], [0x08; 32]), ScopeIndex(1), Generation::Previous),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn seal_open_round_trip(
        h in header(),
        iv in any::<[u8; 16]>(),
        plaintext in prop::collection::vec(any::<u8>(), 0..=max_plaintext(MAX_PAYLOAD)),
        which in 0usize..4,
    ) {
        let ring = ring();
        let (pair, scope, generation) = &ring_pairs()[which];
        let mut packet = seal_with(pair, &h, iv, &plaintext).unwrap();
        prop_assert_eq!(packet.len(), sealed_len(plaintext.len()));
        let opened = open(&ring, &mut packet, MAX_PAYLOAD).unwrap();
        let mut expect = h;
        expect.iv = iv;
        expect.key_id = nomq::KeySet::new(pair).key_id();
        expect.payload_len = (sealed_len(plaintext.len()) - HEADER_LEN - MAC_LEN) as u16;
        prop_assert_eq!(opened.header, expect);
        prop_assert_eq!(opened.plaintext, &plaintext[..]);
        prop_assert_eq!(opened.scope, *scope);
        prop_assert_eq!(opened.generation, *generation);
    }

    #[test]
    fn publish_round_trip(
        msg in msg_id(),
        low in any::<u32>(),
        name in name(),
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let p = Publish { msg, low_water: PacketId(low), name: ChannelName::new(&name).unwrap(), body: &body };
        let mut buf = vec![0u8; p.buffer_len()];
        prop_assert_eq!(p.emit(&mut buf), Ok(p.buffer_len()));
        prop_assert_eq!(Publish::parse(&buf), Ok(p));
        // One byte short of room is an error, not a panic or a truncated body.
        prop_assert!(p.emit(&mut buf[..p.buffer_len() - 1]).is_err());
    }

    #[test]
    fn ack_round_trip(msg in msg_id(), count in 1u16..) {
        let a = Ack { msg, count };
        let mut buf = [0u8; 10];
        prop_assert_eq!(a.emit(&mut buf), Ok(10));
        let fits = msg.packet_id.0.checked_add(u32::from(count) - 1).is_some();
        if fits {
            prop_assert_eq!(Ack::parse(&buf), Ok(a));
            prop_assert_eq!(a.ids().count(), usize::from(count));
            prop_assert!(a.ids().all(|m| a.contains(m)));
        } else {
            prop_assert!(Ack::parse(&buf).is_err());
        }
    }

    #[test]
    fn subscription_round_trip(options in any::<u8>(), pattern in pattern()) {
        let s = Subscription { options, pattern: Pattern::new(&pattern).unwrap() };
        let mut buf = [0u8; 2 + MAX_NAME_LEN];
        let n = s.emit(&mut buf).unwrap();
        prop_assert_eq!(n, 2 + pattern.len());
        prop_assert_eq!(Subscription::parse(&buf[..n]), Ok(s));
        prop_assert_eq!(s.options & SUB_WANTS_RETAINED, options & 1);
    }

    #[test]
    fn heartbeat_round_trip(
        interval_s in any::<u16>(),
        max_datagram in any::<u16>(),
        digest in any::<u32>(),
        total in any::<u8>(),
        first in any::<u8>(),
        patterns in prop::collection::vec(pattern(), 0..12),
    ) {
        let mut buf = vec![0u8; max_plaintext(MAX_PAYLOAD)];
        let mut w = Heartbeat::writer(&mut buf, (interval_s, max_datagram), digest, total, first).unwrap();
        for p in &patterns {
            prop_assert!(w.push(Pattern::new(p).unwrap()), "12 × 97 bytes fit a packet");
        }
        prop_assert_eq!(usize::from(w.count()), patterns.len());
        let n = w.finish();
        let h = Heartbeat::parse(&buf[..n]).unwrap();
        prop_assert_eq!(
            (h.interval_s, h.max_datagram, h.digest, h.total, h.first, usize::from(h.count)),
            (interval_s, max_datagram, digest, total, first, patterns.len())
        );
        let got: Vec<&str> = h.patterns().map(|p| p.as_str()).collect();
        prop_assert_eq!(got, patterns.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn garbage_never_panics_open(mut bytes in prop::collection::vec(any::<u8>(), 0..1600)) {
        let ring = ring();
        // Random bytes essentially never carry a valid MAC.
        prop_assert!(open(&ring, &mut bytes, MAX_PAYLOAD).is_err());
    }

    #[test]
    fn well_formed_garbage_is_bad_mac(
        h in header(),
        blocks in 1usize..=MAX_PAYLOAD / 16,
        fill in any::<u64>(),
        real_key_id in prop::option::of(0usize..4),
    ) {
        // Passes every cheap check, so reaches the MAC: must stop there. Whether or not
        // its key id is one the ring holds.
        let n = blocks * 16;
        let mut h = h;
        h.payload_len = n as u16;
        if let Some(i) = real_key_id {
            h.key_id = nomq::KeySet::new(&ring_pairs()[i].0).key_id();
        }
        let mut packet = vec![0u8; HEADER_LEN + n + MAC_LEN];
        let mut x = fill | 1;
        for b in &mut packet[HEADER_LEN..] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        h.emit(&mut nomq::Packet::new_unchecked(&mut packet[..]));
        prop_assert_eq!(open(&ring(), &mut packet, MAX_PAYLOAD).unwrap_err(), OpenError::BadMac);
    }

    #[test]
    fn garbage_never_panics_bodies(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        // Whatever parses re-emits to exactly the same bytes: the encodings are canonical.
        let mut out = vec![0u8; bytes.len() + 16];
        if let Ok(p) = Publish::parse(&bytes) {
            let n = p.emit(&mut out).unwrap();
            prop_assert_eq!(&out[..n], &bytes[..]);
        }
        if let Ok(a) = Ack::parse(&bytes) {
            let n = a.emit(&mut out).unwrap();
            prop_assert_eq!(&out[..n], &bytes[..]);
        }
        if let Ok(s) = Subscription::parse(&bytes) {
            let n = s.emit(&mut out).unwrap();
            prop_assert_eq!(&out[..n], &bytes[..]);
        }
        if let Ok(h) = Heartbeat::parse(&bytes) {
            prop_assert_eq!(h.patterns().count(), usize::from(h.count));
        }
    }

    #[test]
    fn structured_body_garbage_never_panics(
        prefix in prop::collection::vec(any::<u8>(), 0..12),
        len_byte in any::<u8>(),
        tail in prop::collection::vec(prop_oneof![Just(b'/'), Just(b'+'), Just(b'#'), any::<u8>()], 0..120),
    ) {
        // Bytes shaped like the bodies (a short prefix, a length, wildcard-heavy text) reach
        // deeper into the parsers than uniform noise.
        let mut bytes = prefix;
        bytes.push(len_byte);
        bytes.extend_from_slice(&tail);
        for cut in 0..=bytes.len() {
            let b = &bytes[..cut];
            let _ = Publish::parse(b);
            let _ = Ack::parse(b);
            let _ = Subscription::parse(b);
            if let Ok(h) = Heartbeat::parse(b) {
                prop_assert_eq!(h.patterns().count(), usize::from(h.count));
            }
        }
    }

    #[test]
    fn patterns_match_their_own_literal_names(name in name()) {
        // A name is also a pattern, matches itself, and `#` matches it unless it starts with `$`.
        let n = ChannelName::new(&name).unwrap();
        let p = Pattern::new(&name).unwrap();
        prop_assert!(p.matches(n));
        prop_assert_eq!(Pattern::new("#").unwrap().matches(n), !name.starts_with('$'));
        prop_assert_eq!(ring().channel_id(&name), ring().channel_id(p.as_str()));
    }
}

#[test]
fn every_plaintext_length_round_trips() {
    let ring = ring();
    let pair = &ring_pairs()[0].0;
    let h = Header {
        packet_type: PacketType::Publish,
        flags: Flags::default(),
        packet_id: PacketId(9),
        session_id: SessionId(9),
        ttl: 9,
        iv: [0; 16],
        timestamp: 9,
        channel_id: ChannelId([9; 16]),
        key_id: KeyId(0),
        payload_len: 0,
    };
    let max = max_plaintext(MAX_PAYLOAD);
    assert_eq!(max, 1375);
    let data: Vec<u8> = (0..=max).map(|i| (i * 7 + 3) as u8).collect();
    for len in 0..=max {
        let mut packet = seal_with(pair, &h, [len as u8; 16], &data[..len]).unwrap();
        let n = (packet.len() - HEADER_LEN - MAC_LEN) as u16;
        assert!(n as usize > len && n as usize <= len + 16 && n.is_multiple_of(16), "len {len}");
        let opened = open(&ring, &mut packet, MAX_PAYLOAD).unwrap();
        assert_eq!(opened.plaintext, &data[..len], "len {len}");
    }
}

#[test]
fn plaintext_limit_is_exact() {
    let pair = &ring_pairs()[0].0;
    let h = Header {
        packet_id: PacketId(1),
        session_id: SessionId(1),
        ..Header::new(PacketType::Publish)
    };
    let max = max_plaintext(MAX_PAYLOAD);
    assert!(seal_with(pair, &h, [0; 16], &vec![0; max]).is_ok());
    assert_eq!(
        seal_with(pair, &h, [0; 16], &vec![0; max + 1]).unwrap_err(),
        SealError::TooLarge { len: max + 17, max: MAX_PAYLOAD }
    );
    // A receiver configured below the sender's payload refuses before the MAC.
    let mut packet = seal_with(pair, &h, [0; 16], &vec![0; max]).unwrap();
    assert_eq!(
        open(&ring(), &mut packet, MAX_PAYLOAD - 16).unwrap_err(),
        OpenError::Wire(WireError::TooLarge)
    );
    assert!(open(&ring(), &mut packet, MAX_PAYLOAD).is_ok());
}

#[test]
fn keys_outside_the_ring_are_refused() {
    let h = Header {
        packet_type: PacketType::Heartbeat,
        flags: Flags::default(),
        packet_id: PacketId(1),
        session_id: SessionId(1),
        ttl: 0,
        iv: [0; 16],
        timestamp: 0,
        channel_id: ChannelId::default(),
        key_id: KeyId(0),
        payload_len: 0,
    };
    // Entirely foreign keys; and the network's encryption key with a foreign MAC key.
    for pair in [KeyPair::new([0x09; 32], [0x0a; 32]), KeyPair::new([0x03; 32], [0x09; 32])] {
        let mut packet = seal_with(&pair, &h, [1; 16], b"hello").unwrap();
        assert_eq!(open(&ring(), &mut packet, MAX_PAYLOAD).unwrap_err(), OpenError::BadMac);
        // Relabelled with the key id of every key set of the ring: still refused.
        for (p, _, _) in ring_pairs() {
            let mut relabelled = packet.clone();
            let id = nomq::KeySet::new(&p).key_id();
            nomq::Packet::new_unchecked(&mut relabelled[..]).set_key_id(id);
            assert_eq!(open(&ring(), &mut relabelled, MAX_PAYLOAD).unwrap_err(), OpenError::BadMac);
        }
    }
}
