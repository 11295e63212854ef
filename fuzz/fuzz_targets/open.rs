//! Arbitrary bytes through every path that network bytes reach in the core:
//! `nomq::open` (structure checks, MAC under the key sets with the header's key id,
//! decryption, unpadding) and every plaintext body parser. The datagram is also opened
//! with its key id replaced by one the keyring holds, so arbitrary bytes reach the MAC
//! step with a key set to compute it under. Since the fuzzer cannot forge a MAC, the
//! same bytes are also sealed as a plaintext under the keyring's keys and opened again,
//! which drives the body parsers through the real decrypt path.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nomq::body::{self, Ack, Challenge, Heartbeat, Publish, Subscription};
use nomq::envelope::{max_plaintext, open, seal_in_place, sealed_len};
use nomq::wire::HEADER_LEN;
use nomq::{
    ChannelId, Flags, Header, KeyId, KeyPair, KeySet, Keyring, PacketId, PacketType, SessionId,
};
use std::sync::LazyLock;

const MAX_PAYLOAD: usize = 1376;

fn pairs() -> [KeyPair; 4] {
    [
        KeyPair::new([0x01; 32], [0x02; 32]),
        KeyPair::new([0x03; 32], [0x04; 32]),
        KeyPair::new([0x05; 32], [0x06; 32]),
        KeyPair::new([0x07; 32], [0x08; 32]),
    ]
}

struct Fixture {
    ring: Keyring<1>,
    sets: [KeySet; 4],
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let [a, b, c, d] = pairs();
    let mut ring: Keyring<1> = Keyring::new(&b).expect("distinct keys");
    ring.set_previous(Some(&a)).expect("distinct keys");
    ring.set_channel("secret/#", &c, Some(&d)).expect("valid pattern");
    Fixture { ring, sets: pairs().map(|p| KeySet::new(&p)) }
});

/// Parses a plaintext (recipient, then the body of `t`); whatever parses must re-emit
/// to the same bytes.
fn parse_body(t: PacketType, plaintext: &[u8]) {
    let Ok((to, b)) = body::split_recipient(plaintext) else { return };
    let mut head = [0u8; body::RECIPIENT_LEN];
    assert_eq!(body::emit_recipient(to, &mut head), Ok(body::RECIPIENT_LEN));
    assert_eq!(&head, &plaintext[..body::RECIPIENT_LEN]);
    // Each encoding is at most as long as what it was parsed from.
    let mut out = vec![0u8; b.len()];
    match t {
        PacketType::Challenge => {
            if let Ok(c) = Challenge::parse(b) {
                let n = c.emit(&mut out).expect("fits");
                assert_eq!(&out[..n], b);
            }
        }
        PacketType::Publish => {
            if let Ok(p) = Publish::parse(b) {
                let n = p.emit(&mut out).expect("fits");
                assert_eq!(&out[..n], b);
            }
        }
        PacketType::Subscribe | PacketType::Unsubscribe => {
            if let Ok(s) = Subscription::parse(b) {
                let n = s.emit(&mut out).expect("fits");
                assert_eq!(&out[..n], b);
            }
        }
        PacketType::Heartbeat => {
            if let Ok(h) = Heartbeat::parse(b) {
                assert_eq!(h.patterns().count(), usize::from(h.count));
            }
        }
        PacketType::PubAck | PacketType::PubRec | PacketType::PubRel | PacketType::PubComp => {
            if let Ok(a) = Ack::parse(b) {
                let n = a.emit(&mut out).expect("fits");
                assert_eq!(&out[..n], b);
            }
        }
    }
}

const TYPES: [PacketType; 9] = [
    PacketType::Challenge,
    PacketType::Publish,
    PacketType::Subscribe,
    PacketType::PubAck,
    PacketType::Unsubscribe,
    PacketType::Heartbeat,
    PacketType::PubRec,
    PacketType::PubRel,
    PacketType::PubComp,
];

fuzz_target!(|data: &[u8]| {
    let fx = &*FIXTURE;

    // 1. As a datagram off the wire.
    let mut datagram = data.to_vec();
    if let Ok(opened) = open(&fx.ring, &mut datagram, MAX_PAYLOAD) {
        parse_body(opened.header.packet_type, opened.plaintext);
    }
    // 1b. The same with a key id of the ring at bytes 51..55, where the header has one.
    if let Some(&sel) = data.first() {
        let mut relabelled = data.to_vec();
        let id = fx.sets[usize::from(sel & 3)].key_id().0.to_be_bytes();
        if let Some(field) = relabelled.get_mut(51..55) {
            field.copy_from_slice(&id);
            if let Ok(opened) = open(&fx.ring, &mut relabelled, MAX_PAYLOAD) {
                parse_body(opened.header.packet_type, opened.plaintext);
            }
        }
    }

    // 2. As a plaintext body of every type.
    for t in TYPES {
        parse_body(t, data);
    }

    // 3. As a plaintext sealed under one of the ring's keys: must open to itself.
    let Some((&sel, rest)) = data.split_first() else { return };
    let plaintext = &rest[..rest.len().min(max_plaintext(MAX_PAYLOAD))];
    let t = TYPES[usize::from(sel & 7)];
    let header = Header {
        packet_type: t,
        flags: Flags::from_byte(sel).unwrap_or_default(),
        packet_id: PacketId(u32::from(sel) * 0x0101_0101),
        session_id: SessionId(!u32::from(sel)),
        ttl: u16::from(sel),
        iv: [0; 16],
        timestamp: u32::from(sel) << 8,
        channel_id: ChannelId([sel; 16]),
        key_id: KeyId(0), // written by seal_in_place
        payload_len: 0,
    };
    let keys = &fx.sets[usize::from(sel >> 6)];
    let mut buf = vec![0u8; sealed_len(plaintext.len())];
    buf[HEADER_LEN..HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    let n = seal_in_place(keys, &header, [sel; 16], &mut buf, plaintext.len(), MAX_PAYLOAD)
        .expect("plaintext within the limit");
    assert_eq!(n, buf.len());
    let opened = open(&fx.ring, &mut buf, MAX_PAYLOAD).expect("own packet opens");
    assert_eq!(opened.plaintext, plaintext);
    assert_eq!(opened.header.packet_type, t);
    assert_eq!(opened.header.flags, header.flags);
    assert_eq!(opened.header.channel_id, header.channel_id);
    assert_eq!(opened.header.key_id, keys.key_id());
    parse_body(t, opened.plaintext);
});
