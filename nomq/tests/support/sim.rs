//! The deterministic simulation shared by `sim.rs` and `security.rs`: several nodes on a
//! virtual clock and a virtual lossy network (seeded loss, duplication, reordering,
//! delay). No sockets, no sleeps.
#![allow(dead_code)]

use super::common::Rng;
use nomq::body::MessageId;
use nomq::node::{Event, Outcome, PublishError, Status, Target};
use nomq::{Addr, Config, Duration, Instant, KeyPair, Keyring, Node, PublishOptions};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

pub type SimNode = Node<Keyring<2>, 8, 8, 128, 4, 512, 8, 64>;
pub const UNIX_START: u32 = 1_700_000_000;

/// A datagram on the virtual wire: (arrival µs, sequence, to, from, bytes).
/// A datagram a member sent: (sender, its packets' type bytes and lengths, target).
pub type Sent = (usize, Vec<(u8, usize)>, Target);
pub type InFlight = (u64, u64, usize, Addr, Vec<u8>);

#[derive(Clone, Copy)]
pub struct Faults {
    pub loss: f64,
    pub dup: f64,
    pub delay_min: u64,
    pub delay_jitter: u64,
}
pub const PERFECT: Faults = Faults { loss: 0.0, dup: 0.0, delay_min: 1000, delay_jitter: 0 };
pub const HOSTILE: Faults = Faults { loss: 0.30, dup: 0.05, delay_min: 1000, delay_jitter: 20_000 };

#[derive(Default)]
pub struct Log {
    pub delivered: Vec<(String, Vec<u8>, bool)>,
    /// Message id of each delivery, in the same order.
    pub delivered_ids: Vec<MessageId>,
    pub outcomes: Vec<Outcome<8>>,
    pub events: Vec<(Instant, Event<8>)>,
}

pub struct Member {
    pub node: SimNode,
    pub addr: Addr,
    pub log: Log,
    /// Drops everything to and from it (a peer that went silent).
    pub silent: bool,
    /// Share of deliveries its application refuses (a full queue), seeded.
    pub refuse: f64,
    /// A state store (`restart_with_state`): `Some` once persistence is on, holding the
    /// last saved state (empty: nothing saved yet). Saved, as an adapter does, before
    /// every drain of `poll_transmit`; deliveries reach `log` only after that save.
    pub store: Option<Vec<u8>>,
    /// Deliveries waiting for the save (the application has not seen them).
    pub held: Vec<(String, Vec<u8>, bool, MessageId)>,
    /// Crash (restart from `store`) right after this many more deliveries, before the
    /// state holding the last one is saved.
    pub crash_after_delivery: Option<u32>,
    /// Crash right after this many more saves and the hand-over of what waited for them,
    /// before anything the save allowed (PUBREC) is sent.
    pub crash_after_save: Option<u32>,
    /// Crash right after this many more saves, before the messages they covered reach
    /// the application (the window docs/PROTOCOL.md "State store" describes).
    pub crash_before_hand_over: Option<u32>,
    /// Sessions of its earlier lives, oldest first.
    pub past_sessions: Vec<nomq::SessionId>,
    /// Its application defers the acknowledgement of every QoS 1/2 delivery
    /// (`Node::defer_delivery`), refusing what the table has no room for; the tokens
    /// wait in `deferred` (with the virtual time of delivery) for the test to complete.
    pub defer: bool,
    pub deferred: Vec<(nomq::node::DeliveryToken, Instant)>,
}

pub struct Sim {
    pub now: Instant,
    pub members: Vec<Member>,
    pub faults: Faults,
    pub rng: Rng,
    pub seq: u64,
    pub queue: BinaryHeap<Reverse<InFlight>>,
    /// Every datagram delivered: (to, from, bytes).
    pub recorded: Vec<(usize, Addr, Vec<u8>)>,
    pub trace: u64,
    /// Every datagram a member sent: (sender, its packets' type bytes and lengths, target).
    pub sent: Vec<Sent>,
}

pub fn keys(k: u8) -> Keyring<2> {
    Keyring::new(&KeyPair::new([k; 32], [k.wrapping_add(100); 32])).unwrap()
}

pub fn sim_config() -> Config {
    let mut c = Config::default();
    c.rate_limit = 1_000_000;
    c.max_attempts = 24;
    c.default_ttl = 600;
    c.qos2_window = 250;
    c
}

impl Sim {
    pub fn new(seed: u64, faults: Faults) -> Self {
        Self {
            now: Instant::from_secs(1),
            members: Vec::new(),
            faults,
            rng: Rng(seed | 1),
            seq: 0,
            queue: BinaryHeap::new(),
            recorded: Vec::new(),
            sent: Vec::new(),
            trace: 0xcbf2_9ce4_8422_2325,
        }
    }

    pub fn add_with(&mut self, config: Config, keyring: Keyring<2>) -> usize {
        let i = self.members.len();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        let node = SimNode::new(config, keyring, seed, self.now, self.unix_now());
        let addr = Addr::V4([10, 0, 0, i as u8 + 1], 8888);
        self.members.push(Member {
            node,
            addr,
            log: Log::default(),
            silent: false,
            refuse: 0.0,
            store: None,
            held: Vec::new(),
            crash_after_delivery: None,
            crash_after_save: None,
            crash_before_hand_over: None,
            past_sessions: Vec::new(),
            defer: false,
            deferred: Vec::new(),
        });
        i
    }
    /// Member `i` restarts: a new node (new seed, so a new session, and no state) with
    /// `config` and `keyring` at the same address. Its log is kept.
    pub fn restart(&mut self, i: usize, config: Config, keyring: Keyring<2>) {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.rng.next().to_le_bytes());
        self.members[i].node = SimNode::new(config, keyring, seed, self.now, self.unix_now());
    }

    /// Member `i` is killed and restarts from its state store: a new node (new seed,
    /// so a new session) restored from the last saved state, with persistence on (a
    /// member without a store restarts with nothing, as `restart` does). Same config,
    /// keys `keys(1)`; the application subscribes to its patterns again.
    /// Deliveries not yet saved are lost with the process. Its log is kept.
    pub fn restart_with_state(&mut self, i: usize) {
        // Keyrings are not `Clone`: every member that uses this has the test keys `keys(1)`.
        let (config, keyring) = (*self.members[i].node.config(), keys(1));
        let old = self.members[i].node.session();
        let patterns: Vec<String> =
            self.members[i].node.subscriptions().map(String::from).collect();
        self.members[i].past_sessions.push(old);
        self.restart(i, config, keyring);
        // The application subscribes again at start, as it did before.
        for p in &patterns {
            self.members[i].node.subscribe(p).unwrap();
        }
        let now = self.now;
        let m = &mut self.members[i];
        m.held.clear();
        // Without a store: a plain restart, nothing restored.
        let Some(saved) = &m.store else { return };
        if !saved.is_empty() {
            m.node.restore(now, saved).expect("the saved state restores");
        }
        m.node.enable_persistence();
    }

    /// Turns member `i`'s state store on (a fresh node: nothing saved yet).
    pub fn persist(&mut self, i: usize) {
        self.members[i].store = Some(Vec::new());
        self.members[i].node.enable_persistence();
    }

    /// Saves member `i`'s state if it must be saved, and hands over what waited for it.
    /// Returns false if it crashed right after (`crash_after_save`).
    fn save(&mut self, i: usize) -> bool {
        let now = self.now;
        let m = &mut self.members[i];
        if m.store.is_none() || !m.node.state_unsaved() {
            return true;
        }
        let mut buf = vec![0u8; SimNode::STATE_LEN];
        let len = m.node.export_state(now, &mut buf).expect("state fits STATE_LEN");
        m.store = Some(buf[..len].to_vec());
        if let Some(n) = m.crash_before_hand_over.as_mut() {
            *n -= 1;
            if *n == 0 {
                m.crash_before_hand_over = None;
                self.restart_with_state(i);
                return false;
            }
        }
        let m = &mut self.members[i];
        for (name, body, dup, id) in m.held.drain(..) {
            m.log.delivered.push((name, body, dup));
            m.log.delivered_ids.push(id);
        }
        if let Some(n) = m.crash_after_save.as_mut() {
            *n -= 1;
            if *n == 0 {
                m.crash_after_save = None;
                self.restart_with_state(i);
                return false;
            }
        }
        true
    }

    /// Adds a member at `addr` (which may be another member's: a shared port).
    pub fn add_at(&mut self, addr: Addr) -> usize {
        let i = self.add();
        self.members[i].addr = addr;
        i
    }

    /// The wall clock every node agrees on: [`UNIX_START`] at virtual time 0.
    pub fn unix_now(&self) -> u32 {
        UNIX_START + (self.now.total_micros() / 1_000_000) as u32
    }

    pub fn add(&mut self) -> usize {
        self.add_with(sim_config(), keys(1))
    }

    pub fn send(&mut self, from: usize, to: usize, data: &[u8]) {
        let f = self.faults;
        if self.members[from].silent || self.members[to].silent || self.rng.chance(f.loss) {
            return;
        }
        let copies = if self.rng.chance(f.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = self.now.total_micros() + f.delay_min + self.rng.below(f.delay_jitter + 1);
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq, to, self.members[from].addr, data.to_vec())));
        }
    }

    pub fn flush(&mut self, i: usize) {
        let mut buf = [0u8; 1500];
        if !self.save(i) {
            return;
        }
        if let Some(m) = self.members.get_mut(i).filter(|m| m.store.is_some()) {
            // Deliveries without a new state (QoS 0/1, duplicates) need no save.
            for (name, body, dup, id) in m.held.drain(..) {
                m.log.delivered.push((name, body, dup));
                m.log.delivered_ids.push(id);
            }
        }
        loop {
            let now = self.now;
            let Some(t) = self.members[i].node.poll_transmit(now, &mut buf) else { break };
            let mut data = buf[..t.len].to_vec();
            let lens = nomq::node::Packets::new(&mut data).map(|p| (p[3], p.len())).collect();
            self.sent.push((i, lens, t.target));
            for b in &data {
                self.trace = (self.trace ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
            match t.target {
                Target::Fanout | Target::Group(_) => {
                    for j in 0..self.members.len() {
                        if j != i {
                            self.send(i, j, &data);
                        }
                    }
                }
                Target::Unicast(a) => {
                    // Every member bound to that address gets it (a shared port).
                    for j in 0..self.members.len() {
                        if j != i && self.members[j].addr == a {
                            self.send(i, j, &data);
                        }
                    }
                }
                other => panic!("the simulation does not know target {other:?}"),
            }
        }
        let m = &mut self.members[i];
        while let Some(e) = m.node.poll_event() {
            if let Event::Outcome(o) = &e {
                m.log.outcomes.push(o.clone());
            }
            m.log.events.push((self.now, e));
        }
    }

    /// Hands a datagram to member `to`, packet by packet (a crash after a delivery ends
    /// it: the rest of the datagram is lost with the process).
    pub fn deliver(&mut self, to: usize, from: Addr, mut data: Vec<u8>) {
        for packet in nomq::node::Packets::new(&mut data) {
            // Recorded packet by packet: a replay sends each on its own.
            self.recorded.push((to, from, packet.to_vec()));
            if self.deliver_packet(to, from, packet) {
                break;
            }
        }
    }

    /// One packet to member `to`; returns whether the member crashed after it.
    fn deliver_packet(&mut self, to: usize, from: Addr, data: &mut [u8]) -> bool {
        let now = self.now;
        let refuse = self.members[to].refuse > 0.0 && self.rng.chance(self.members[to].refuse);
        let m = &mut self.members[to];
        let mut got = false;
        if let Some(msg) = m.node.handle_packet(now, from, data) {
            got = !refuse;
            if !refuse && m.defer && msg.qos != nomq::Qos::AtMostOnce {
                match m.node.defer_delivery() {
                    Some(t) => m.deferred.push((t, now)),
                    None => {
                        // The deferral table is full: the application refuses it.
                        got = false;
                        assert!(m.node.refuse_delivery());
                    }
                }
            }
            if refuse {
                assert!(m.node.refuse_delivery());
                assert!(!m.node.refuse_delivery(), "refuses only once");
            } else if !got {
                // Refused above.
            } else if m.store.is_some() {
                m.held.push((msg.name.as_str().to_string(), msg.body.to_vec(), msg.dup, msg.msg));
            } else {
                m.log.delivered.push((msg.name.as_str().to_string(), msg.body.to_vec(), msg.dup));
                m.log.delivered_ids.push(msg.msg);
            }
        }
        if let Some(n) = m.crash_after_delivery.as_mut().filter(|_| got) {
            *n -= 1;
            if *n == 0 {
                m.crash_after_delivery = None;
                self.restart_with_state(to);
                return true;
            }
        }
        false
    }

    /// Runs until `end` (virtual time).
    pub fn run_until(&mut self, end: Instant) {
        loop {
            for i in 0..self.members.len() {
                self.flush(i);
            }
            let mut next = end;
            if let Some(Reverse((at, ..))) = self.queue.peek() {
                next = next.min(Instant::from_micros(*at));
            }
            for m in &self.members {
                if let Some(t) = m.node.poll_timeout() {
                    next = next.min(t);
                }
            }
            // Always advance: timers due now were just handled.
            next = next.max(self.now + Duration::from_micros(50));
            if next > end {
                self.now = end;
                return;
            }
            self.now = next;
            while let Some(Reverse((at, ..))) = self.queue.peek() {
                if *at > self.now.total_micros() {
                    break;
                }
                let Reverse((_, _, to, from, data)) = self.queue.pop().unwrap();
                self.deliver(to, from, data);
                self.flush(to);
            }
            let now = self.now;
            for m in &mut self.members {
                m.node.handle_timeout(now);
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Runs until `a` knows `n` peers with subscriptions (bounded).
    pub fn discover(&mut self, a: usize, n: usize) {
        for _ in 0..600 {
            if self.members[a].node.peers().filter(|p| p.2 > 0).count() >= n {
                return;
            }
            self.run_for(Duration::from_millis(100));
        }
        panic!("discovery did not complete");
    }

    /// Runs until every member knows every other (each proved itself live to each), so
    /// that QoS 0 measurements do not count the handshake (bounded).
    pub fn meet(&mut self) {
        let n = self.members.len() - 1;
        for _ in 0..600 {
            if self.members.iter().all(|m| m.node.peers().count() >= n) {
                return;
            }
            self.run_for(Duration::from_millis(100));
        }
        panic!("members did not all meet");
    }

    /// Publishes `count` messages from `a`, waiting for outbox room; then runs until all
    /// outcomes are in (bounded).
    pub fn publish_many(&mut self, a: usize, count: u32, opts: PublishOptions) {
        let mut sent = 0;
        let deadline = self.now + Duration::from_secs(3600);
        while sent < count {
            let now = self.now;
            match self.members[a].node.publish(now, "sensors/temp", &sent.to_be_bytes(), opts) {
                Ok(_) => sent += 1,
                Err(PublishError::OutboxFull) => self.run_for(Duration::from_millis(5)),
                Err(e) => panic!("{e}"),
            }
            assert!(self.now < deadline, "publishing stalled");
        }
        // A quiet publish that ends as asked reports nothing: wait for the outbox to empty.
        while opts.quiet && self.members[a].node.outbox_len() > 0 {
            self.run_for(Duration::from_millis(100));
            assert!(
                self.now < deadline,
                "{} still in the outbox",
                self.members[a].node.outbox_len()
            );
        }
        while !opts.quiet && self.members[a].log.outcomes.len() < count as usize {
            self.run_for(Duration::from_millis(100));
            assert!(
                self.now < deadline,
                "outcomes stalled at {}",
                self.members[a].log.outcomes.len()
            );
        }
    }

    pub fn counts(&self, b: usize) -> HashMap<u32, u32> {
        let mut h = HashMap::new();
        for (name, body, _) in &self.members[b].log.delivered {
            if name == "sensors/temp" && body.len() == 4 {
                *h.entry(u32::from_be_bytes(body[..4].try_into().unwrap())).or_default() += 1;
            }
        }
        h
    }
}

pub fn three(seed: u64, faults: Faults) -> Sim {
    let mut s = Sim::new(seed, faults);
    let (a, b, c) = (s.add(), s.add(), s.add());
    s.members[b].node.subscribe("sensors/#").unwrap();
    s.members[c].node.subscribe("sensors/+").unwrap();
    s.discover(a, 2);
    assert_eq!(s.members[a].node.peers().count(), 2);
    s.meet();
    let _ = c;
    s
}

pub fn assert_all_acked(s: &Sim, a: usize, n: usize) {
    let others = s.members.iter().enumerate().filter(|(i, _)| *i != a);
    let sessions: Vec<_> = others.map(|(_, m)| m.node.session()).collect();
    let outcomes = &s.members[a].log.outcomes;
    assert_eq!(outcomes.len(), n);
    for o in outcomes {
        assert_eq!(o.status, Status::Acknowledged, "{o:?}");
        assert!(o.missing.is_empty());
        for sess in &sessions {
            assert!(o.acked.contains(sess), "{o:?}");
        }
    }
}
