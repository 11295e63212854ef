//! The Wireshark dissector (`tools/wireshark/nomq.lua`) against real NoMQ traffic.
//!
//! Two nodes on 127.0.0.1 talk through a small relay that records every datagram; the
//! exchange (SUBSCRIBE, QoS 0/1/2 PUBLISH with their PUBACK/PUBREC/PUBREL/PUBCOMP,
//! HEARTBEAT, UNSUBSCRIBE) is written as a classic libpcap file (LINKTYPE_RAW, hand-built
//! IPv4 + UDP headers) together with a few hand-made malformed datagrams, then decoded by
//! `tshark` with the dissector. Every decoded field is compared with the recorded bytes.
//!
//! Without `tshark` the test prints `SKIP: tshark not installed` and passes, unless
//! `NOMQ_REQUIRE_TSHARK=1` is set (CI), where it fails. `NOMQ_WIRESHARK_PCAP=<file>` keeps a
//! copy of the capture.

use nomq_host::{Handle, NodeBuilder, PublishOptions, Qos, Status};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Generous: CI machines are busy.
const WAIT: Duration = Duration::from_secs(5);

const TYPE_NAMES: [&str; 9] = [
    "PUBLISH",
    "SUBSCRIBE",
    "PUBACK",
    "UNSUBSCRIBE",
    "HEARTBEAT",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "CHALLENGE",
];

/// One datagram the relay forwarded: when, from which node to which, and its bytes.
#[derive(Clone)]
struct Record {
    time: SystemTime,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    data: Vec<u8>,
}

type Log = Arc<Mutex<Vec<Record>>>;

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("not IPv4: {a}"),
    }
}

fn keyring() -> nomq::Keyring<{ nomq_host::HOST_CHANNEL_KEYS }> {
    nomq::Keyring::new(&nomq::KeyPair::new([21; 32], [22; 32])).unwrap()
}

/// The key id of [`keyring`]'s network keys, which seal every packet of the capture.
fn network_key_id() -> u32 {
    use nomq::KeyLookup;
    keyring().network().current.key_id().0
}

fn fast() -> nomq::Config {
    let mut c = nomq::Config::default();
    c.heartbeat_interval = nomq::Duration::from_millis(200);
    c.retransmit_initial = nomq::Duration::from_millis(50);
    c
}

/// Forwards everything `inbound` receives (sent by the node at `from`) to `to`, sending it
/// from `outbound` so that the receiver sees the relay address standing for `from`, and
/// records it as `from → to`.
async fn forward(
    inbound: Arc<tokio::net::UdpSocket>,
    outbound: Arc<tokio::net::UdpSocket>,
    from: SocketAddrV4,
    to: SocketAddrV4,
    log: Log,
) {
    let mut buf = vec![0u8; 65_536];
    // Bounded: the task is aborted at the end of the test, and stops on a socket error.
    while let Ok((n, _)) = inbound.recv_from(&mut buf).await {
        log.lock().unwrap().push(Record {
            time: SystemTime::now(),
            src: from,
            dst: to,
            data: buf[..n].to_vec(),
        });
        let _ = outbound.send_to(&buf[..n], to).await;
    }
}

fn tokio_socket(s: UdpSocket) -> Arc<tokio::net::UdpSocket> {
    s.set_nonblocking(true).unwrap();
    Arc::new(tokio::net::UdpSocket::from_std(s).unwrap())
}

/// Nodes A and B, with relay sockets `ra` (stands for A, as B sees it) and `rb` (stands
/// for B, as A sees it). A's only peer is `rb`, B's only peer is `ra`.
async fn relayed_pair(log: &Log) -> (Handle, Handle, Vec<tokio::task::JoinHandle<()>>) {
    let sa = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sb = UdpSocket::bind("127.0.0.1:0").unwrap();
    let ra = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rb = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (a_addr, b_addr) = (v4(sa.local_addr().unwrap()), v4(sb.local_addr().unwrap()));
    let (ra_addr, rb_addr) = (ra.local_addr().unwrap(), rb.local_addr().unwrap());
    let (ra, rb) = (tokio_socket(ra), tokio_socket(rb));
    let tasks = vec![
        tokio::spawn(forward(rb.clone(), ra.clone(), a_addr, b_addr, log.clone())),
        tokio::spawn(forward(ra, rb, b_addr, a_addr, log.clone())),
    ];
    let a = NodeBuilder::new(keyring()).engine(fast()).socket(sa).peers([rb_addr]);
    let b = NodeBuilder::new(keyring()).engine(fast()).socket(sb).peers([ra_addr]);
    (a.start().await.unwrap(), b.start().await.unwrap(), tasks)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < end, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the exchange and returns what the relay saw and the two nodes' addresses.
async fn capture() -> (Vec<Record>, SocketAddrV4, SocketAddrV4) {
    let log: Log = Arc::default();
    let (a, b, relay) = relayed_pair(&log).await;
    let (a_addr, b_addr) = (v4(a.local_addr()), v4(b.local_addr()));

    // SUBSCRIBE (B → A), then heartbeats both ways.
    let mut sub = b.subscribe("ws/#").await.unwrap();
    let seen = a.wait_for_subscribers("ws/x", 1, WAIT).await.unwrap();
    assert!(seen.is_some(), "A never saw B's subscription");

    // QoS 0; QoS 1 (PUBACK); QoS 2 with retain and priority 9 (PUBREC, PUBREL, PUBCOMP).
    let qos2 =
        PublishOptions { qos: Qos::ExactlyOnce, retain: true, priority: 9, ..Default::default() };
    for (i, opts) in
        [PublishOptions::qos(Qos::AtMostOnce), PublishOptions::qos(Qos::AtLeastOnce), qos2]
            .into_iter()
            .enumerate()
    {
        let qos = opts.qos;
        let d = a.publish("ws/x", format!("message {i}").into_bytes(), opts).await.unwrap();
        if qos != Qos::AtMostOnce {
            assert_eq!(d.status, Status::Acknowledged, "{qos:?}: {d:?}");
        }
        let m = tokio::time::timeout(WAIT, sub.recv()).await.unwrap().unwrap();
        assert_eq!(m.body, format!("message {i}").into_bytes());
    }
    // The QoS 2 exchange ends with PUBCOMP at A.
    until("PUBCOMP", || log.lock().unwrap().iter().any(|r| r.data.get(3) == Some(&8))).await;

    // UNSUBSCRIBE (B → A).
    drop(sub);
    let end = tokio::time::Instant::now() + WAIT;
    while !a.subscribers("ws/x").await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < end, "A still lists B as a subscriber");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A heartbeat from each side.
    for node in [a_addr, b_addr] {
        until("heartbeat", || {
            log.lock().unwrap().iter().any(|r| r.src == node && r.data.get(3) == Some(&5))
        })
        .await;
    }

    // Cross-check the sessions the nodes know each other by against the recorded bytes.
    let recorded = log.lock().unwrap().clone();
    let a_sessions = sessions(&recorded, a_addr);
    let b_sessions = sessions(&recorded, b_addr);
    assert_eq!(a_sessions.len(), 1, "A sent under several sessions: {a_sessions:x?}");
    assert_eq!(b_sessions.len(), 1, "B sent under several sessions: {b_sessions:x?}");
    let peers_of_a: Vec<u32> = a.peers().await.unwrap().iter().map(|p| p.session.0).collect();
    assert_eq!(peers_of_a, b_sessions, "A's view of B's session");
    let peers_of_b: Vec<u32> = b.peers().await.unwrap().iter().map(|p| p.session.0).collect();
    assert_eq!(peers_of_b, a_sessions, "B's view of A's session");

    a.shutdown().await;
    b.shutdown().await;
    for t in relay {
        t.abort();
    }
    let recorded = log.lock().unwrap().clone();
    (recorded, a_addr, b_addr)
}

/// The distinct session ids (header bytes 9–12) of the datagrams sent by `node`.
fn sessions(records: &[Record], node: SocketAddrV4) -> Vec<u32> {
    let mut s: Vec<u32> = records
        .iter()
        .filter(|r| r.src == node)
        .map(|r| u32::from_be_bytes(r.data[9..13].try_into().unwrap()))
        .collect();
    s.sort_unstable();
    s.dedup();
    s
}

fn be16(d: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([d[at], d[at + 1]])
}

fn be32(d: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(d[at..at + 4].try_into().unwrap())
}

/// Classic libpcap, LINKTYPE_RAW (101): each record an IPv4 header + UDP header + payload.
/// The IPv4 header checksum is computed; the UDP checksum is 0 (none, allowed over IPv4).
fn pcap(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, microsecond timestamps
    out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65_535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&101u32.to_le_bytes()); // LINKTYPE_RAW
    for (i, r) in records.iter().enumerate() {
        let udp_len = 8 + r.data.len();
        let ip_len = 20 + udp_len;
        let mut ip = Vec::with_capacity(ip_len);
        ip.extend_from_slice(&[0x45, 0]);
        ip.extend_from_slice(&u16::try_from(ip_len).unwrap().to_be_bytes());
        ip.extend_from_slice(&u16::try_from(i & 0xffff).unwrap().to_be_bytes()); // id
        ip.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum later
        ip.extend_from_slice(&r.src.ip().octets());
        ip.extend_from_slice(&r.dst.ip().octets());
        let sum = ip.chunks(2).map(|w| u32::from(be16(w, 0))).sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        ip.extend_from_slice(&r.src.port().to_be_bytes());
        ip.extend_from_slice(&r.dst.port().to_be_bytes());
        ip.extend_from_slice(&u16::try_from(udp_len).unwrap().to_be_bytes());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&r.data);

        let t = r.time.duration_since(UNIX_EPOCH).unwrap();
        out.extend_from_slice(&u32::try_from(t.as_secs()).unwrap().to_le_bytes());
        out.extend_from_slice(&t.subsec_micros().to_le_bytes());
        out.extend_from_slice(&u32::try_from(ip.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&u32::try_from(ip.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&ip);
    }
    out
}

/// The date part of Wireshark's absolute time display in UTC for Unix second `secs`, in
/// both its formats: `Dec  1, 2026` (up to 4.0) and `2026-12-01` (ISO 8601, 4.2 and later).
fn wireshark_date(secs: u64) -> [String; 2] {
    // Howard Hinnant's civil_from_days.
    let z = i64::try_from(secs / 86_400).unwrap() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    [
        format!("{} {day:>2}, {year}", MONTHS[usize::try_from(month - 1).unwrap()]),
        format!("{year}-{month:02}-{day:02}"),
    ]
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs tshark with the dissector on `file` and returns its standard output.
fn tshark(file: &Path, args: &[&str]) -> String {
    let script = repo_root().join("tools/wireshark/nomq.lua");
    let out = Command::new("tshark")
        .arg("-n") // no name resolution
        .arg("-X")
        .arg(format!("lua_script:{}", script.display()))
        // Our heuristic before any port-based dissector, whatever ports the test got.
        .args(["-o", "udp.try_heuristic_first:TRUE"])
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .expect("running tshark");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark {args:?} failed: {}\n{stderr}\n{stdout}", out.status);
    // tshark reports Lua errors on stderr and goes on; they are failures here. (As root it
    // also warns "Running as user \"root\"", which is harmless.)
    assert!(!stderr.contains("Lua"), "tshark reported a Lua problem:\n{stderr}");
    stdout
}

fn tshark_available() -> bool {
    match Command::new("tshark").arg("--version").output() {
        Ok(o) => o.status.success(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tshark_decodes_real_traffic() {
    if !tshark_available() {
        assert!(
            std::env::var("NOMQ_REQUIRE_TSHARK").as_deref() != Ok("1"),
            "NOMQ_REQUIRE_TSHARK=1 but tshark is not installed (apt-get install tshark)"
        );
        println!("SKIP: tshark not installed");
        return;
    }
    let today_before =
        wireshark_date(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs());
    let (mut records, a_addr, b_addr) = capture().await;
    let today_after =
        wireshark_date(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs());
    let real = records.len();
    for t in 1..=9u8 {
        assert!(
            records.iter().any(|r| r.data[3] == t),
            "no {} in the capture",
            TYPE_NAMES[usize::from(t - 1)]
        );
    }

    // Hand-made datagrams, made from real packets, and the expert info each must carry.
    // Those to random ports go through the heuristic (magic and version 1 to 4); those
    // to port 8888 with version 5 can only be decoded by the port registration.
    let mut template = records[0].clone();
    template.time = records[real - 1].time;
    let edit = |f: &dyn Fn(&mut Record)| {
        let mut r = template.clone();
        f(&mut r);
        r
    };
    let heartbeat = records.iter().find(|r| r.data[3] == 5).unwrap().data.clone();
    let publish = records.iter().find(|r| r.data[3] == 1).unwrap().data.clone();
    let made: Vec<(Record, &[&str])> = vec![
        (edit(&|r| r.data[2] = 1), &["Unsupported version 1"]),
        (edit(&|r| r.data[2] = 2), &["Unsupported version 2"]),
        (edit(&|r| r.data[2] = 3), &["Unsupported version 3"]),
        (edit(&|r| r.data.extend_from_slice(&[0xee; 5])), &["Length mismatch: 57 + "]),
        (edit(&|r| r.data.truncate(r.data.len() - 1)), &["Length mismatch: 57 + "]),
        (
            edit(&|r| {
                r.data[2] = 5;
                r.dst.set_port(8888);
            }),
            &["Unsupported version 5"],
        ),
        (
            edit(&|r| {
                r.data[0] = 0x4f;
                r.dst.set_port(8888);
            }),
            &["Bad magic 0x4f4d"],
        ),
        (
            edit(&|r| {
                r.data[3] = 10;
                r.data[4] |= 3;
            }),
            &["Unknown packet type 0x0a", "Reserved QoS 3"],
        ),
        (
            edit(&|r| {
                r.data[56] = 17;
                r.data.push(0);
            }),
            &["Payload length 17 is not a non-zero multiple of 16"],
        ),
        (edit(&|r| r.data.truncate(40)), &["Too short: 40 bytes"]),
        (
            edit(&|r| r.data = [heartbeat.clone(), publish.clone()].concat()),
            &["Packet 2 of this datagram"],
        ),
    ];
    records.extend(made.iter().map(|(r, _)| r.clone()));

    let dir = std::env::temp_dir().join(format!("nomq-wireshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("capture.pcap");
    std::fs::write(&file, pcap(&records)).unwrap();
    // To look at the capture yourself: NOMQ_WIRESHARK_PCAP=/tmp/nomq.pcap cargo test ...
    if let Some(keep) = std::env::var_os("NOMQ_WIRESHARK_PCAP") {
        std::fs::copy(&file, keep).unwrap();
    }

    // Fields, one line per frame.
    let fields = tshark(
        &file,
        &[
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-E",
            "occurrence=f",
            "-e",
            "frame.number",
            "-e",
            "nomq.magic",
            "-e",
            "nomq.version",
            "-e",
            "nomq.type",
            "-e",
            "nomq.flags",
            "-e",
            "nomq.flags.qos",
            "-e",
            "nomq.flags.retain",
            "-e",
            "nomq.flags.priority",
            "-e",
            "nomq.packet_id",
            "-e",
            "nomq.session_id",
            "-e",
            "nomq.ttl",
            "-e",
            "nomq.timestamp",
            "-e",
            "nomq.payload_len",
            "-e",
            "nomq.key_id",
            "-e",
            "_ws.col.Info",
        ],
    );
    let lines: Vec<&str> = fields.lines().collect();
    assert_eq!(lines.len(), records.len(), "one line per frame:\n{fields}");
    let (sess_a, sess_b) =
        (sessions(&records[..real], a_addr)[0], sessions(&records[..real], b_addr)[0]);
    assert_ne!(sess_a, sess_b);
    let mut qos2_publish = false;
    for (i, (line, r)) in lines.iter().zip(&records[..real]).enumerate() {
        let f: Vec<&str> = line.split('|').collect();
        let d = &r.data;
        let ctx = format!("frame {}: {line}", i + 1);
        assert_eq!(f[0], (i + 1).to_string(), "{ctx}");
        assert_eq!(f[1], "0x4e4d", "{ctx}");
        assert_eq!(f[2], "4", "{ctx}");
        assert_eq!(f[3], format!("0x{:02x}", d[3]), "{ctx}");
        assert_eq!(f[4], format!("0x{:02x}", d[4]), "{ctx}");
        assert_eq!(f[5], (d[4] & 3).to_string(), "{ctx}");
        // Booleans print as 1/0 (4.0) or True/False (later versions).
        let retain = f[6] == "1" || f[6].eq_ignore_ascii_case("true");
        assert_eq!(retain, d[4] & 4 != 0, "{ctx}");
        assert_eq!(f[7], (d[4] >> 4).to_string(), "{ctx}");
        assert_eq!(f[8], be32(d, 5).to_string(), "{ctx}");
        let sess = be32(d, 9);
        assert_eq!(f[9], format!("0x{sess:08x}"), "{ctx}");
        assert_eq!(sess, if r.src == a_addr { sess_a } else { sess_b }, "{ctx}");
        assert_eq!(f[10], be16(d, 13).to_string(), "{ctx}");
        let ts = u64::from(be32(d, 31));
        let dated = |dates: &[String; 2]| dates.iter().any(|d| f[11].starts_with(d.as_str()));
        assert!(dated(&wireshark_date(ts)) && f[11].ends_with("UTC"), "{ctx}");
        assert!(dated(&today_before) || dated(&today_after), "not today ({today_before:?}): {ctx}");
        assert_eq!(f[12], be16(d, 55).to_string(), "{ctx}");
        assert_eq!(usize::from(be16(d, 55)) + 89, d.len(), "{ctx}");
        // Every packet here is sealed under the one network key pair.
        assert_eq!(f[13], format!("0x{:08x}", network_key_id()), "{ctx}");
        assert_eq!(be32(d, 51), network_key_id(), "{ctx}");
        let name = TYPE_NAMES[usize::from(d[3] - 1)];
        let info = format!("{name} QoS{} sess=0x{sess:08x} pid={}", d[4] & 3, be32(d, 5));
        assert!(f[14].starts_with(&info), "Info should start with {info:?}: {ctx}");
        if d[3] == 1 && d[4] & 3 == 2 {
            qos2_publish = true;
            assert_eq!(f[5], "2", "{ctx}");
            assert!(retain, "retain: {ctx}");
            assert_eq!(f[7], "9", "priority: {ctx}");
        }
    }
    assert!(qos2_publish, "no QoS 2 PUBLISH decoded");

    // The full tree: every type by name, and the expert info of the malformed datagrams.
    let tree = tshark(&file, &["-V", "-Y", "nomq"]);
    for (t, name) in TYPE_NAMES.iter().enumerate() {
        let want = format!("Type: {name} (0x{:02x})", t + 1);
        assert!(tree.contains(&want), "no {want:?} in tshark -V output");
    }
    for want in [
        "QoS: Exactly once (2)",
        "Retain: True",
        "Timestamp: ",
        "Session id: ",
        "Channel id: ",
        "Key id: 0x",
        "Ciphertext (AES-256-CBC): ",
        "MAC (HMAC-SHA256): ",
        "Unsupported version 1",
        "Unsupported version 2",
        "Unsupported version 3",
        "Unsupported version 5",
        "Length mismatch: 57 + ",
    ] {
        assert!(tree.contains(want), "no {want:?} in tshark -V output:\n{tree}");
    }
    // The malformed frames, by number, carry the right expert info.
    let expert = tshark(
        &file,
        &["-T", "fields", "-E", "separator=|", "-e", "frame.number", "-e", "_ws.expert.message"],
    );
    let expert: Vec<&str> = expert.lines().collect();
    assert_eq!(expert.len(), records.len(), "one line per frame");
    for (i, (_, wants)) in made.iter().enumerate() {
        for want in *wants {
            let line = expert[real + i];
            assert!(line.contains(want), "frame {}: want {want:?}: {line}", real + i + 1);
        }
    }
    // Back to back: both packets decoded, in order.
    let last = records.len();
    let both = tshark(
        &file,
        &[
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-e",
            "nomq.type",
            "-Y",
            &format!("frame.number == {last}"),
        ],
    );
    assert_eq!(both.trim(), "0x05,0x01", "two packets in one datagram");
    for line in &expert[..real] {
        assert!(
            line.split('|').nth(1).is_none_or(str::is_empty),
            "expert info on real traffic: {line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
