//! Drives two engines with an arbitrary schedule of API calls, timer ticks, genuine
//! packets (delivered, dropped, replayed, bit-flipped) and arbitrary datagrams.
//! Finds panics; memory is bounded by construction (fixed capacities, small here so
//! every eviction path runs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nomq::node::{Destination, PublishOptions};
use nomq::{Addr, Config, Duration, Instant, KeyPair, Keyring, Node, Qos};

type Tiny = Node<Keyring<1>, 3, 3, 4, 2, 4, 2, 48>;

const CHANNELS: [&str; 4] = ["a/b", "a/c", "z", "secret/x"];
const PATTERNS: [&str; 5] = ["a/#", "a/+", "z", "#", "secret/#"];

struct Cursor<'a>(&'a [u8]);
impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

fn ring() -> Keyring<1> {
    let mut r = Keyring::new(&KeyPair::new([1; 32], [2; 32])).unwrap();
    r.set_channel("secret/#", &KeyPair::new([3; 32], [4; 32]), None).unwrap();
    r
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor(data);
    let mut cfg = Config::default();
    cfg.max_attempts = 3;
    cfg.rate_limit = 50;
    let mut now = Instant::from_secs(10);
    let addrs = [Addr::V4([10, 0, 0, 1], 1), Addr::V4([10, 0, 0, 2], 1)];
    let mut nodes = [Tiny::new(cfg, ring(), [7; 32], now, 1_700_000_000), Tiny::new(cfg, ring(), [8; 32], now, 1_700_000_000)];
    let mut wire: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut buf = [0u8; 1500];
    while let Some(op) = c.u8() {
        let who = usize::from(op >> 7);
        match op & 0x0f {
            0 => now += Duration::from_millis(u64::from(c.u16().unwrap_or(0))),
            1 => {
                let ch = CHANNELS[usize::from(c.u8().unwrap_or(0)) % CHANNELS.len()];
                let f = c.u8().unwrap_or(0);
                let len = usize::from(c.u8().unwrap_or(0));
                let body = c.bytes(len).to_vec();
                let opts = PublishOptions {
                    qos: Qos::from_level(f & 3).unwrap_or(Qos::AtMostOnce),
                    retain: f & 4 != 0,
                    ttl: Some(u16::from(f >> 4)),
                    priority: f >> 3,
                    destination: if f & 8 != 0 { Destination::Peer(addrs[1 - who]) } else { Destination::All },
                    quiet: f & 0x40 != 0,
                };
                let _ = nodes[who].publish(now, ch, &body, opts);
            }
            2 => {
                let p = PATTERNS[usize::from(c.u8().unwrap_or(0)) % PATTERNS.len()];
                let _ = nodes[who].subscribe(p);
            }
            3 => {
                let p = PATTERNS[usize::from(c.u8().unwrap_or(0)) % PATTERNS.len()];
                let _ = nodes[who].unsubscribe(p);
            }
            4 | 5 | 6 => {
                // Deliver (4), drop (5) or bit-flip-then-deliver (6) the next genuine packet.
                if !wire.is_empty() {
                    let (to, mut d) = wire.remove(0);
                    if op & 0x0f == 6 && !d.is_empty() {
                        let bit = usize::from(c.u16().unwrap_or(0)) % (d.len() * 8);
                        d[bit / 8] ^= 1 << (bit % 8);
                    }
                    if op & 0x0f != 5 {
                        if seen.len() < 64 {
                            seen.push(d.clone());
                        }
                        nodes[to].handle_datagram(now, addrs[1 - to], &mut d, |m| m.body.len() % 2 == 0);
                    }
                }
            }
            7 => {
                // Replay a seen packet, from either address.
                if !seen.is_empty() {
                    let i = usize::from(c.u8().unwrap_or(0)) % seen.len();
                    let mut d = seen[i].clone();
                    let from = addrs[usize::from(op >> 6 & 1)];
                    nodes[who].handle_datagram(now, from, &mut d, |_| true);
                }
            }
            8 => {
                let len = usize::from(c.u16().unwrap_or(0)) % 1600;
                let mut d = c.bytes(len).to_vec();
                nodes[who].handle_datagram(now, Addr::V4([192, 0, 2, op], 9), &mut d, |_| true);
            }
            _ => nodes[who].handle_timeout(now),
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            while let Some(t) = n.poll_transmit(now, &mut buf) {
                if wire.len() < 256 {
                    wire.push((1 - i, buf[..t.len].to_vec()));
                }
            }
            while n.poll_event().is_some() {}
            assert!(n.outbox_len() <= 4);
            assert!(n.peers().count() <= 3);
        }
    }
});
