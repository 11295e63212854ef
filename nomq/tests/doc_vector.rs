//! docs/PROTOCOL.md §6 read from the file and checked against the crate, so the document
//! an interoperable peer is written from cannot drift from the code: its inputs, sealed
//! here, must give its packet (field by field and as one string), its derived values and
//! plaintext must be what the crate computes, and its Python program (when `python3` and
//! `openssl` are installed) must print the same packet.

use nomq::body::{MessageId, Publish};
use nomq::envelope::{open, seal_in_place, sealed_len};
use nomq::keys::hmac_sha256;
use nomq::wire::{HEADER_LEN, KeyId};
use nomq::{
    ChannelName, Flags, Header, KeyPair, KeySet, Keyring, PacketId, PacketType, Qos, SessionId,
};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    std::fs::read_to_string(path).expect("docs/PROTOCOL.md")
}

/// The text of §6, up to the next top-level section.
fn section6(doc: &str) -> &str {
    let start = doc.find("## 6. Test vector").expect("§6 heading");
    let rest = &doc[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    &rest[..end]
}

/// The value column of the table row whose first (or, for the packet table, second)
/// column is `label`.
fn row<'a>(sec: &'a str, label: &str) -> &'a str {
    for line in sec.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if let Some(i) = cells.iter().position(|c| *c == label)
            && i + 1 < cells.len()
        {
            return cells[cells.len() - 1];
        }
    }
    panic!("§6 has no row {label:?}");
}

/// The first `code` in a cell, with spaces removed.
fn code(cell: &str) -> String {
    let a = cell.find('`').unwrap_or_else(|| panic!("no `code` in {cell:?}"));
    let b = cell[a + 1..].find('`').unwrap() + a + 1;
    cell[a + 1..b].replace(' ', "")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s:?}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn number(cell: &str) -> u64 {
    let digits: String =
        cell.split('(').next().unwrap().chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number in {cell:?}"))
}

fn fenced<'a>(sec: &'a str, after: &str, lang: &str) -> &'a str {
    let at = sec.find(after).unwrap_or_else(|| panic!("§6 has no {after:?}"));
    let open = format!("```{lang}\n");
    let a = sec[at..].find(&open).unwrap() + at + open.len();
    let b = sec[a..].find("```").unwrap() + a;
    &sec[a..b]
}

/// The packet §6 says its inputs make, as one string.
fn one_string(sec: &str) -> String {
    fenced(sec, "As one string", "text").split_whitespace().collect()
}

struct Inputs {
    pair: KeyPair,
    flags: u8,
    packet_id: u32,
    session: u32,
    ttl: u16,
    iv: [u8; 16],
    timestamp: u32,
    channel: String,
    recipient: u32,
    low_water: u32,
    body: Vec<u8>,
}

fn inputs(sec: &str) -> Inputs {
    let key = |l| -> [u8; 32] { unhex(&code(row(sec, l))).try_into().unwrap() };
    let session = code(row(sec, "session id"));
    let body_cell = row(sec, "application body");
    Inputs {
        pair: KeyPair::new(key("network encryption key"), key("network MAC key")),
        flags: u8::from_str_radix(code(row(sec, "flags")).trim_start_matches("0x"), 16).unwrap(),
        packet_id: u32::try_from(number(row(sec, "packet id"))).unwrap(),
        session: u32::from_str_radix(session.trim_start_matches("0x"), 16).unwrap(),
        ttl: u16::try_from(number(row(sec, "TTL"))).unwrap(),
        iv: unhex(&code(row(sec, "IV"))).try_into().unwrap(),
        timestamp: u32::try_from(number(row(sec, "timestamp"))).unwrap(),
        channel: code(row(sec, "channel name")),
        recipient: u32::from_str_radix(code(row(sec, "recipient")).trim_start_matches("0x"), 16)
            .unwrap(),
        low_water: u32::try_from(number(row(sec, "low-water mark"))).unwrap(),
        body: code(body_cell).into_bytes(),
    }
}

#[test]
fn section_6_inputs_seal_to_its_packet() {
    let doc = doc();
    let sec = section6(&doc);
    let i = inputs(sec);
    let keys = KeySet::new(&i.pair);
    assert_eq!(i.flags, 0x51, "the flags row says QoS 1, priority 5");
    let flags = Flags { qos: Qos::AtLeastOnce, retain: false, dup: false, priority: 5 };
    let header = Header {
        packet_type: PacketType::Publish,
        flags,
        packet_id: PacketId(i.packet_id),
        session_id: SessionId(i.session),
        ttl: i.ttl,
        iv: [0; 16],
        timestamp: i.timestamp,
        channel_id: keys.channel_id(&i.channel),
        key_id: KeyId(0), // written by seal_in_place
        payload_len: 0,
    };
    let publish = Publish {
        msg: MessageId { session: SessionId(i.session), packet_id: PacketId(i.packet_id) },
        low_water: PacketId(i.low_water),
        name: ChannelName::new(&i.channel).unwrap(),
        body: &i.body,
    };
    // Every version 3 plaintext begins with the recipient session id, then the body.
    let recipient = i.recipient.to_be_bytes();
    assert_eq!(i.recipient, 0, "§6 addresses every member");
    let mut buf = vec![0u8; sealed_len(recipient.len() + publish.buffer_len())];
    buf[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&recipient);
    let len = 4 + publish.emit(&mut buf[HEADER_LEN + 4..]).unwrap();
    let plaintext = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    let n = seal_in_place(&keys, &header, i.iv, &mut buf, len, 1376).unwrap();
    buf.truncate(n);

    // Derived values.
    let id_key = hmac_sha256(i.pair.mac.expose(), &[b"nomq/v2/channel-id"]);
    assert_eq!(hex(&id_key), code(row(sec, "channel-id key")));
    assert_eq!(
        hex(&keys.channel_id(&i.channel).0),
        code(row(sec, "channel id of `factory/line1`"))
    );
    assert_eq!(hex(&i.pair.fingerprint()), code(row(sec, "key pair fingerprint")));
    let kid = hmac_sha256(i.pair.mac.expose(), &[b"nomq/v3/key-id", i.pair.encryption.expose()]);
    assert_eq!(keys.key_id().0.to_be_bytes(), kid[..4]);
    assert_eq!(hex(&kid[..4]), code(row(sec, "key id of the network key pair")));
    assert_eq!(hex(&plaintext), code(row(sec, "plaintext (34 bytes)")));
    assert_eq!(plaintext.len(), 34);
    let pad = 16 - plaintext.len() % 16;
    assert_eq!(code(row(sec, "padded plaintext (48 bytes)")), hex(&vec![pad as u8; pad]));

    // The plaintext field by field, at the offsets the table gives.
    let t = sec.find("| plaintext field |").expect("plaintext field table");
    let t = &sec[t..sec[t..].find("\n\n").map_or(sec.len(), |e| t + e)];
    let mut at = 0;
    for (label, want) in [
        ("recipient session id", hex(&recipient)),
        ("message id", format!("{:08x}{:08x}", i.session, i.packet_id)),
        ("low-water mark", format!("{:08x}", i.low_water)),
        ("name length", format!("{:02x}", i.channel.len())),
        ("name", hex(i.channel.as_bytes())),
        ("application body", hex(&i.body)),
    ] {
        let line = t.lines().find(|l| l.starts_with(&format!("| {label} |"))).unwrap();
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells[1].parse::<usize>().unwrap(), at, "offset of {label}");
        assert_eq!(code(cells[2]), want, "{label}");
        assert_eq!(hex(&plaintext[at..at + want.len() / 2]), want, "{label} in the plaintext");
        at += want.len() / 2;
    }
    assert_eq!(at, plaintext.len(), "the field table covers the plaintext");

    // The packet: as one string, and field by field.
    let packet = one_string(sec);
    assert_eq!(hex(&buf), packet, "§6 'As one string' is not what the inputs seal to");
    let fields = [
        "magic, version, type, flags",
        "packet id",
        "session id",
        "TTL",
        "IV",
        "timestamp",
        "channel id",
        "key id",
        "payload length",
        "ciphertext",
        "MAC",
    ];
    let table: String = {
        let t = sec.find("The packet, 137 bytes").expect("packet table");
        let t = &sec[t..];
        fields.iter().map(|f| code(row(t, f))).collect()
    };
    assert_eq!(table, packet, "§6 field table disagrees with the string");
    assert_eq!(buf.len(), 137);
    assert_eq!(code(row(sec, "key id")), hex(&kid[..4]), "key id field");

    // And it opens to its inputs.
    let ring: Keyring<0> = Keyring::new(&i.pair).unwrap();
    let opened = open(&ring, &mut buf, 1376).unwrap();
    assert_eq!(opened.header.key_id, keys.key_id());
    assert_eq!(opened.plaintext[..4], recipient);
    assert_eq!(Publish::parse(&opened.plaintext[4..]).unwrap(), publish);
}

#[test]
fn section_6_python_program_prints_the_packet() {
    let doc = doc();
    let sec = section6(&doc);
    let program = fenced(sec, "To reproduce it in another language", "python");
    let have = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd).arg(arg).output().is_ok_and(|o| o.status.success())
    };
    if !have("python3", "--version") || !have("openssl", "version") {
        eprintln!("SKIP: python3 or openssl not installed; the program in §6 was not run");
        return;
    }
    let out = std::process::Command::new("python3").arg("-c").arg(program).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), one_string(sec));
}
