//! Known-answer tests through the crate's own functions: AES-256-CBC (NIST SP 800-38A),
//! HMAC-SHA256 (RFC 4231) and one pinned full packet (also printed in `docs/PROTOCOL.md`).

use nomq::body::{MessageId, Publish};
use nomq::envelope::{OpenError, open, seal_in_place, sealed_len};
use nomq::keys::hmac_sha256;
use nomq::wire::{HEADER_LEN, MAC_LEN};
use nomq::{
    ChannelName, Flags, Header, KeyLookup, KeyPair, KeySet, Keyring, PacketId, PacketType, Qos,
    SessionId, wire::KeyId,
};

/// Decodes hex, ignoring whitespace; panics on anything else (test fixtures only).
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|c| (c as char).to_digit(16).expect("hex digit") as u8)
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn arr32(v: &[u8]) -> [u8; 32] {
    v.try_into().expect("32 bytes")
}

const MAX_PAYLOAD: usize = 1376;

// ---------------------------------------------------------------------------------------
// AES-256-CBC: NIST SP 800-38A, appendix F.2.5 (CBC-AES256.Encrypt) and F.2.6 (Decrypt).

const NIST_KEY: &str = "603deb1015ca71be2b73aef0857d7781 1f352c073b6108d72d9810a30914dff4";
const NIST_IV: &str = "000102030405060708090a0b0c0d0e0f";
const NIST_PLAINTEXT: &str = "6bc1bee22e409f96e93d7e117393172a
                              ae2d8a571e03ac9c9eb76fac45af8e51
                              30c81c46a35ce411e5fbc1191a0a52ef
                              f69f2445df4f9b17ad2b417be66c3710";
const NIST_CIPHERTEXT: &str = "f58c4c04d6e5f1ba779eabfb5f7bfbd6
                               9cfc4e967edb808d679f777bc6702c7d
                               39f23369a9d9bacfa530e26304231461
                               b2eb05e2c39be9fcda6c19078c6a9d1b";

fn any_header() -> Header {
    Header { packet_id: PacketId(1), session_id: SessionId(1), ..Header::new(PacketType::Publish) }
}

#[test]
fn aes256_cbc_nist_sp800_38a_f25() {
    let pair = KeyPair::new(arr32(&hex(NIST_KEY)), [0x5a; 32]);
    let keys = KeySet::new(&pair);
    let iv: [u8; 16] = hex(NIST_IV).try_into().unwrap();
    let pt = hex(NIST_PLAINTEXT);
    let ct = hex(NIST_CIPHERTEXT);
    assert_eq!(pt.len(), 64);

    let mut buf = [0u8; HEADER_LEN + 80 + MAC_LEN];
    buf[HEADER_LEN..HEADER_LEN + 64].copy_from_slice(&pt);
    let n = seal_in_place(&keys, &any_header(), iv, &mut buf, 64, MAX_PAYLOAD).unwrap();
    // 64 bytes of plaintext get a whole block of padding (16 × 0x10).
    assert_eq!(n, HEADER_LEN + 80 + MAC_LEN);
    assert_eq!(n, sealed_len(64));
    assert_eq!(&buf[15..31], &iv, "IV field carries the IV");
    assert_eq!(to_hex(&buf[HEADER_LEN..HEADER_LEN + 64]), to_hex(&ct));

    // F.2.6: the same vector decrypts back, through `open`.
    let ring: Keyring<0> = Keyring::new(&pair).unwrap();
    let opened = open(&ring, &mut buf, MAX_PAYLOAD).unwrap();
    assert_eq!(opened.plaintext, &pt[..]);
    assert_eq!(opened.header.iv, iv);
}

#[test]
fn aes256_cbc_nist_prefixes() {
    // Every prefix of whole NIST blocks encrypts to the matching prefix of the NIST
    // ciphertext: CBC block i depends only on blocks 0..=i.
    let pair = KeyPair::new(arr32(&hex(NIST_KEY)), [0x5a; 32]);
    let keys = KeySet::new(&pair);
    let iv: [u8; 16] = hex(NIST_IV).try_into().unwrap();
    let pt = hex(NIST_PLAINTEXT);
    let ct = hex(NIST_CIPHERTEXT);
    for blocks in 1..=4 {
        let len = blocks * 16;
        let mut buf = vec![0u8; sealed_len(len)];
        buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&pt[..len]);
        seal_in_place(&keys, &any_header(), iv, &mut buf, len, MAX_PAYLOAD).unwrap();
        assert_eq!(&buf[HEADER_LEN..HEADER_LEN + len], &ct[..len], "{blocks} blocks");
    }
}

// ---------------------------------------------------------------------------------------
// HMAC-SHA256: RFC 4231 section 4, test cases 1 to 7.

struct Rfc4231 {
    case: u8,
    key: Vec<u8>,
    data: Vec<u8>,
    /// Case 5 gives only the first 128 bits.
    mac: &'static str,
}

fn rfc4231_cases() -> Vec<Rfc4231> {
    vec![
        Rfc4231 {
            case: 1,
            key: vec![0x0b; 20],
            data: b"Hi There".to_vec(),
            mac: "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        },
        Rfc4231 {
            case: 2,
            key: b"Jefe".to_vec(),
            data: b"what do ya want for nothing?".to_vec(),
            mac: "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        },
        Rfc4231 {
            case: 3,
            key: vec![0xaa; 20],
            data: vec![0xdd; 50],
            mac: "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        },
        Rfc4231 {
            case: 4,
            key: (0x01..=0x19).collect(),
            data: vec![0xcd; 50],
            mac: "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        },
        Rfc4231 {
            case: 5,
            key: vec![0x0c; 20],
            data: b"Test With Truncation".to_vec(),
            mac: "a3b6167473100ee06e0c796c2955552b",
        },
        Rfc4231 {
            case: 6,
            key: vec![0xaa; 131],
            data: b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            mac: "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        },
        Rfc4231 {
            case: 7,
            key: vec![0xaa; 131],
            data: b"This is a test using a larger than block-size key and a larger than \
                    block-size data. The key needs to be hashed before being used by the \
                    HMAC algorithm."
                .to_vec(),
            mac: "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        },
    ]
}

#[test]
fn hmac_sha256_rfc4231_all_cases() {
    let cases = rfc4231_cases();
    assert_eq!(cases.len(), 7);
    for c in &cases {
        let expect = hex(c.mac);
        let got = hmac_sha256(&c.key, &[&c.data]);
        assert_eq!(to_hex(&got[..expect.len()]), c.mac, "RFC 4231 case {}", c.case);
        // The data may arrive in parts: the MAC is over their concatenation.
        let (a, b) = c.data.split_at(c.data.len() / 3);
        assert_eq!(hmac_sha256(&c.key, &[a, &[], b]), got, "case {} in parts", c.case);
    }
    assert_eq!(cases[3].key.len(), 25);
    assert_eq!(cases[6].data.len(), 152);
}

// ---------------------------------------------------------------------------------------
// Key derivations, checked against their definition in keys.rs / PROTOCOL.md.

fn pinned_pair() -> KeyPair {
    let enc: [u8; 32] = core::array::from_fn(|i| i as u8); // 00..1f
    let mac: [u8; 32] = core::array::from_fn(|i| 0x20 + i as u8); // 20..3f
    KeyPair::new(enc, mac)
}

#[test]
fn derivations_follow_their_definition() {
    let pair = pinned_pair();
    let keys = KeySet::new(&pair);
    let mac_key = pair.mac.expose();
    let id_key = hmac_sha256(mac_key, &[b"nomq/v2/channel-id"]);
    assert_eq!(to_hex(&id_key), "1da5602a599d88026ae55bf4d35fa44fad89f71a82cbac1ff2d58a0fcc512a19");
    let full = hmac_sha256(&id_key, &[b"nomq/channel/", b"factory/line1"]);
    assert_eq!(keys.channel_id("factory/line1").0, full[..16]);
    let fp = hmac_sha256(mac_key, &[b"nomq/v2/fingerprint", pair.encryption.expose()]);
    assert_eq!(pair.fingerprint(), fp[..8]);
    assert_eq!(keys.fingerprint(), fp[..8]);
    assert_eq!(to_hex(&pair.fingerprint()), PINNED_FINGERPRINT);
    let kid = hmac_sha256(mac_key, &[b"nomq/v3/key-id", pair.encryption.expose()]);
    assert_eq!(keys.key_id().0.to_be_bytes(), kid[..4]);
    assert_eq!(keys.key_id(), KeyId(PINNED_KEY_ID));
}

// ---------------------------------------------------------------------------------------
// The pinned full packet. Inputs are listed in docs/PROTOCOL.md, "Test vector"; the
// expected bytes were produced by this crate and cross-checked with an independent
// implementation (Python `hmac` + OpenSSL AES-256-CBC).

const PINNED_CHANNEL: &str = "factory/line1";
const PINNED_BODY: &[u8] = b"21.5";
const PINNED_IV: [u8; 16] = [
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f,
];
const PINNED_CHANNEL_ID: &str = "1435f1c102176a2c6309797cbeaad2b6";
const PINNED_FINGERPRINT: &str = "6057982be6a6e666";
const PINNED_KEY_ID: u32 = 0x1bd4_714b;
/// Plaintexts (since version 3) begin with the recipient session id, 0 for every member
/// (docs/PROTOCOL.md §4); it is written by hand here, ahead of the body codec.
const PINNED_RECIPIENT: [u8; 4] = [0; 4];
/// recipient (00000000) | message id (c0ffee01 00000001) | low-water mark (00000001) |
/// name length 0x0d | "factory/line1" | "21.5"
const PINNED_PLAINTEXT: &str =
    "00000000c0ffee0100000001000000010d666163746f72792f6c696e653132312e35";
/// The 137 bytes of the packet, in wire order (see docs/PROTOCOL.md for the table).
const PINNED_PACKET: &str = "
4e4d04015100000001c0ffee01003c404142434445464748494a4b4c4d4e4f6553f1001435f1c102
176a2c6309797cbeaad2b61bd4714b003065fb34fb1882201d7d01c6920c403cbdd1ad768a9b5876
dc553e4ae8405e9320bc82996c037c3714727fe6e276a929f50868ce064c61fedf34c8e02b4d3864
5130e9e4fad2ef0bdf7d30f43e6e763078";

fn pinned_header(keys: &KeySet) -> Header {
    Header {
        packet_type: PacketType::Publish,
        flags: Flags { qos: Qos::AtLeastOnce, retain: false, dup: false, priority: 5 },
        packet_id: PacketId(1),
        session_id: SessionId(0xc0ff_ee01),
        ttl: 60,
        iv: [0; 16], // replaced by seal_in_place
        timestamp: 1_700_000_000,
        channel_id: keys.channel_id(PINNED_CHANNEL),
        key_id: KeyId(0), // replaced by seal_in_place
        payload_len: 0,   // replaced by seal_in_place
    }
}

fn pinned_publish() -> Publish<'static> {
    Publish {
        msg: MessageId { session: SessionId(0xc0ff_ee01), packet_id: PacketId(1) },
        low_water: PacketId(1),
        name: ChannelName::new(PINNED_CHANNEL).unwrap(),
        body: PINNED_BODY,
    }
}

fn seal_pinned() -> Vec<u8> {
    let keys = KeySet::new(&pinned_pair());
    let p = pinned_publish();
    let r = PINNED_RECIPIENT.len();
    let mut buf = vec![0u8; sealed_len(r + p.buffer_len())];
    buf[HEADER_LEN..HEADER_LEN + r].copy_from_slice(&PINNED_RECIPIENT);
    let len = r + p.emit(&mut buf[HEADER_LEN + r..]).unwrap();
    let n =
        seal_in_place(&keys, &pinned_header(&keys), PINNED_IV, &mut buf, len, MAX_PAYLOAD).unwrap();
    assert_eq!(n, buf.len());
    buf
}

#[test]
fn pinned_publish_packet() {
    let keys = KeySet::new(&pinned_pair());
    let cid = keys.channel_id(PINNED_CHANNEL);
    let packet = seal_pinned();
    let mut plain = [0u8; 64];
    plain[..4].copy_from_slice(&PINNED_RECIPIENT);
    let plen = 4 + pinned_publish().emit(&mut plain[4..]).unwrap();
    println!("channel id  {}", to_hex(&cid.0));
    println!("fingerprint {}", to_hex(&keys.fingerprint()));
    println!("plaintext   {}", to_hex(&plain[..plen]));
    println!("packet      {}", to_hex(&packet));

    assert_eq!(to_hex(&cid.0), PINNED_CHANNEL_ID);
    assert_eq!(to_hex(&plain[..plen]), PINNED_PLAINTEXT);
    assert_eq!(to_hex(&packet), to_hex(&hex(PINNED_PACKET)));
    assert_eq!(packet.len(), 137);
    assert_eq!(&packet[35..51], &cid.0, "channel id sits at offset 35");
    assert_eq!(&packet[51..55], &PINNED_KEY_ID.to_be_bytes(), "key id sits at offset 51");
    assert_eq!(&packet[55..57], &[0, 48], "payload length sits at offset 55");
}

#[test]
fn pinned_packet_opens_to_its_inputs() {
    let pair = pinned_pair();
    let ring: Keyring<0> = Keyring::new(&pair).unwrap();
    let mut packet = hex(PINNED_PACKET);
    let opened = open(&ring, &mut packet, MAX_PAYLOAD).unwrap();
    let mut expect = pinned_header(&KeySet::new(&pair));
    expect.iv = PINNED_IV;
    expect.key_id = KeyId(PINNED_KEY_ID);
    expect.payload_len = 48;
    assert_eq!(opened.header, expect);
    assert_eq!(opened.plaintext[..4], PINNED_RECIPIENT);
    let body = Publish::parse(&opened.plaintext[4..]).unwrap();
    assert_eq!(body, pinned_publish());
    assert_eq!(ring.channel_id(body.name.as_str()), opened.header.channel_id);
}

#[test]
fn pinned_packet_refused_under_other_keys() {
    let mut other_mac = pinned_pair();
    other_mac.mac = nomq::SecretKey::new([0x77; 32]);
    let ring: Keyring<0> = Keyring::new(&other_mac).unwrap();
    let mut packet = hex(PINNED_PACKET);
    assert_eq!(open(&ring, &mut packet, MAX_PAYLOAD).unwrap_err(), OpenError::BadMac);
}
