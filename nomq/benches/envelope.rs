//! Envelope throughput: `seal_in_place` and `open`, ns per packet at 16 B, 64 B and 1 KiB.
//!
//! ```sh
//! cargo bench -p nomq --bench envelope              # table
//! cargo bench -p nomq --bench envelope -- --json    # JSON (or NOMQ_BENCH_JSON=1)
//! NOMQ_BENCH_SECS=0.2 cargo bench -p nomq --bench envelope   # shorter runs
//! cargo bench -p nomq --bench envelope -- forged    # only ops whose name contains "forged"
//! ```
//!
//! Each measurement runs batches of iterations for about `NOMQ_BENCH_SECS` seconds
//! (default 1) after a short warm-up, and reports the median and the fastest batch in
//! ns per operation. The median resists noise from other processes; the minimum is the
//! best the machine did.
//!
//! - `seal`: copy the plaintext into the packet buffer, then `seal_in_place` (pad, header,
//!   AES-256-CBC, HMAC-SHA256) with a fresh IV. The copy is part of sealing: that is what
//!   `nomq::seal` does.
//! - `seal-x8`: what `Node::poll_transmit` does for a datagram of 8 packets: the plaintext
//!   of each copied in and `prepare_in_place` (pad, header), then one `seal_prepared` over
//!   the 8 (their CBC chains side by side, then a MAC each); per packet.
//! - `open`: `open` decrypts in place, so each iteration first copies the sealed packet into
//!   a scratch buffer. `copy` measures that copy alone, and `open-copy` is the difference:
//!   the cost of `open` itself.
//! - `forged-1` / `forged-8p`: `open` of a forged datagram (a genuine 64 B packet with one
//!   MAC byte flipped, so its key id is real) against a keyring of the network scope only,
//!   and against one of network current + previous and 8 channel scopes each with current +
//!   previous keys (18 key sets). What one forged datagram costs a receiver; includes the
//!   copy. Version 2 tried every key set (18 MACs); version 3 MACs only the key set with
//!   the header's key id (1 MAC), so the two should cost about the same.

use nomq::envelope::{open, prepare_in_place, seal_in_place, seal_prepared, sealed_len};
use nomq::wire::HEADER_LEN;
use nomq::{
    Flags, Header, KeyId, KeyLookup, KeyPair, KeySet, Keyring, PacketId, PacketType, SessionId,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

const MAX_PAYLOAD: usize = 1376;
const SIZES: [usize; 3] = [16, 64, 1024];
const BATCH_TARGET: Duration = Duration::from_millis(5);

struct Stats {
    iterations: u64,
    median_ns: f64,
    min_ns: f64,
    mean_ns: f64,
}

/// Runs `f` in batches for about `secs` seconds; `f` does one operation per call.
fn measure(secs: f64, mut f: impl FnMut()) -> Stats {
    // Warm up, and size a batch to take about BATCH_TARGET.
    let mut batch: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        if t.elapsed() >= BATCH_TARGET {
            break;
        }
        batch *= 2;
    }
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut per_op = Vec::new();
    let mut iterations = 0;
    while start.elapsed() < budget || per_op.len() < 5 {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        per_op.push(t.elapsed().as_nanos() as f64 / batch as f64);
        iterations += batch;
    }
    let mean_ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    per_op.sort_by(f64::total_cmp);
    Stats { iterations, median_ns: per_op[per_op.len() / 2], min_ns: per_op[0], mean_ns }
}

struct Row {
    op: &'static str,
    plaintext: usize,
    packet: usize,
    stats: Stats,
}

fn header(keys: &KeySet) -> Header {
    Header {
        packet_type: PacketType::Publish,
        flags: Flags::default(),
        packet_id: PacketId(1),
        session_id: SessionId(0x1234_5678),
        ttl: 60,
        iv: [0; 16],
        timestamp: 1_700_000_000,
        channel_id: keys.channel_id("bench/envelope"),
        key_id: KeyId(0), // written by seal_in_place
        payload_len: 0,
    }
}

fn run(secs: f64, filter: &[String]) -> Vec<Row> {
    let want = |op: &str| filter.is_empty() || filter.iter().any(|f| op.contains(f.as_str()));
    let pair = KeyPair::new([0x11; 32], [0x22; 32]);
    let keys = KeySet::new(&pair);
    let ring: Keyring<0> = Keyring::new(&pair).expect("distinct keys");
    let header = header(&keys);
    let mut rows = Vec::new();

    let basic = ["seal", "seal-x8", "open", "copy", "open-copy"].iter().any(|op| want(op));
    for &len in SIZES.iter().filter(|_| basic) {
        let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let total = sealed_len(len);
        let mut buf = vec![0u8; total];
        let mut counter: u64 = 0;

        let seal = measure(secs, || {
            counter = counter.wrapping_add(1);
            let mut iv = [0u8; 16];
            iv[..8].copy_from_slice(&counter.to_le_bytes());
            buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(black_box(&plaintext));
            let n = seal_in_place(&keys, &header, iv, black_box(&mut buf), len, MAX_PAYLOAD);
            black_box(n.expect("fits"));
        });

        let mut eight = vec![0u8; 8 * total];
        let together = measure(secs / 8.0, || {
            for (k, packet) in eight.chunks_exact_mut(total).enumerate() {
                counter = counter.wrapping_add(1);
                let mut iv = [0u8; 16];
                iv[..8].copy_from_slice(&counter.to_le_bytes());
                packet[HEADER_LEN..HEADER_LEN + len].copy_from_slice(black_box(&plaintext));
                let n = prepare_in_place(&keys, &header, iv, packet, len, MAX_PAYLOAD);
                black_box((k, n.expect("fits")));
            }
            seal_prepared(&keys, black_box(&mut eight)).expect("whole packets");
        });
        let seal_x8 = Stats {
            iterations: together.iterations * 8,
            median_ns: together.median_ns / 8.0,
            min_ns: together.min_ns / 8.0,
            mean_ns: together.mean_ns / 8.0,
        };
        assert!(open(&ring, &mut eight[..total], MAX_PAYLOAD).is_ok());

        let sealed = buf.clone();
        let mut scratch = vec![0u8; total];
        let copy = measure(secs, || {
            scratch.copy_from_slice(black_box(&sealed));
            black_box(&mut scratch);
        });
        let open_stats = measure(secs, || {
            scratch.copy_from_slice(black_box(&sealed));
            match open(&ring, black_box(&mut scratch), MAX_PAYLOAD) {
                Ok(o) => {
                    black_box(o.plaintext);
                }
                Err(e) => panic!("bench packet must open: {e}"),
            }
        });
        let net = Stats {
            iterations: open_stats.iterations,
            median_ns: open_stats.median_ns - copy.median_ns,
            min_ns: open_stats.min_ns - copy.min_ns,
            mean_ns: open_stats.mean_ns - copy.mean_ns,
        };
        for (op, stats) in [
            ("seal", seal),
            ("seal-x8", seal_x8),
            ("open", open_stats),
            ("copy", copy),
            ("open-copy", net),
        ] {
            if want(op) {
                rows.push(Row { op, plaintext: len, packet: total, stats });
            }
        }
    }
    if want("forged-1") || want("forged-8p") {
        rows.extend(forged(secs, &header).into_iter().filter(|r| want(r.op)));
    }
    rows
}

/// A keyring of the network (current + previous) and 8 channel scopes, each with current
/// and previous keys: 18 key sets, all distinct.
fn big_ring(network: &KeyPair) -> Keyring<8> {
    let k = |a: u8, b: u8| KeyPair::new([a; 32], [b; 32]);
    let mut ring: Keyring<8> = Keyring::new(network).expect("distinct keys");
    ring.set_previous(Some(&k(0xa0, 0xa1))).expect("distinct keys");
    for i in 0..8u8 {
        let pattern = format!("scope{i}/#");
        ring.set_channel(&pattern, &k(i * 4, i * 4 + 1), Some(&k(i * 4 + 2, i * 4 + 3)))
            .expect("room for 8");
    }
    ring
}

/// `open` of a forged datagram against a small and a large keyring.
fn forged(secs: f64, header: &Header) -> Vec<Row> {
    let pair = KeyPair::new([0x11; 32], [0x22; 32]);
    let keys = KeySet::new(&pair);
    let small: Keyring<0> = Keyring::new(&pair).expect("distinct keys");
    let big = big_ring(&pair);
    let len = 64;
    let total = sealed_len(len);
    let mut sealed = vec![0u8; total];
    let n = seal_in_place(&keys, header, [7; 16], &mut sealed, len, MAX_PAYLOAD).expect("fits");
    sealed[n - 1] ^= 1;
    let one = open_forged(secs, &small, &sealed);
    let eight = open_forged(secs, &big, &sealed);
    vec![
        Row { op: "forged-1", plaintext: len, packet: total, stats: one },
        Row { op: "forged-8p", plaintext: len, packet: total, stats: eight },
    ]
}

fn open_forged<K: KeyLookup>(secs: f64, ring: &K, sealed: &[u8]) -> Stats {
    let mut scratch = vec![0u8; sealed.len()];
    measure(secs, || {
        scratch.copy_from_slice(black_box(sealed));
        match open(ring, black_box(&mut scratch), MAX_PAYLOAD) {
            Ok(_) => panic!("forged packet must not open"),
            Err(e) => {
                black_box(e);
            }
        }
    })
}

fn print_table(rows: &[Row], secs: f64) {
    println!("nomq envelope: AES-256-CBC + HMAC-SHA256, ~{secs} s per measurement");
    println!(
        "{:<10} {:>9} {:>8} {:>12} {:>10} {:>10} {:>10} {:>10}",
        "op", "plaintext", "packet", "iterations", "median ns", "min ns", "mean ns", "MB/s"
    );
    for r in rows {
        let mbps = r.plaintext as f64 / r.stats.median_ns * 1e3;
        println!(
            "{:<10} {:>9} {:>8} {:>12} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            r.op,
            r.plaintext,
            r.packet,
            r.stats.iterations,
            r.stats.median_ns,
            r.stats.min_ns,
            r.stats.mean_ns,
            mbps
        );
    }
}

fn print_json(rows: &[Row], secs: f64) {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"op\":\"{}\",\"plaintext_bytes\":{},\"packet_bytes\":{},\"iterations\":{},\
                 \"median_ns\":{:.1},\"min_ns\":{:.1},\"mean_ns\":{:.1}}}",
                r.op,
                r.plaintext,
                r.packet,
                r.stats.iterations,
                r.stats.median_ns,
                r.stats.min_ns,
                r.stats.mean_ns
            )
        })
        .collect();
    println!(
        "{{\"bench\":\"nomq-envelope\",\"unit\":\"ns/op\",\"seconds_per_measurement\":{secs},\
         \"results\":[{}]}}",
        items.join(",")
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else unknown is ignored too.
    let json = std::env::args().any(|a| a == "--json")
        || std::env::var("NOMQ_BENCH_JSON").is_ok_and(|v| v == "1");
    let secs = std::env::var("NOMQ_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    // Arguments that are not flags select ops by substring.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rows = run(secs, &filter);
    if json {
        print_json(&rows, secs);
    } else {
        print_table(&rows, secs);
    }
}
