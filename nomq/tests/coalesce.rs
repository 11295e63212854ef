//! Several packets per datagram (docs/PROTOCOL.md, "Datagrams"): bursts share datagrams
//! within every receiver's announced limit, a lone packet leaves alone and at once,
//! acknowledgements of a burst travel as runs, and splicing, replaying or forging lengths
//! inside a datagram is refused as each packet alone would be.

use nomq::node::{DropReason, Target};
use nomq::wire::{HEADER_LEN, PacketType};
use nomq::{Duration, PublishOptions, Qos};

mod common;
#[path = "support/sim.rs"]
mod simnet;
use simnet::*;

/// A publisher (0) and a subscriber to `sensors/#` (1) that know each other.
fn pair(seed: u64) -> Sim {
    let mut s = Sim::new(seed, PERFECT);
    let (a, b) = (s.add(), s.add());
    s.members[b].node.subscribe("sensors/#").unwrap();
    s.discover(a, 1);
    s.meet();
    s.sent.clear();
    s
}

/// Packets in the datagrams `from` sent since the log was cleared, by type byte.
fn packets_of(s: &Sim, from: usize, kind: PacketType) -> usize {
    let rec = s.recorded.iter().filter(|r| r.2.get(3) == Some(&(kind as u8)));
    rec.filter(|r| r.1 == s.members[from].addr).count()
}

#[test]
fn a_burst_shares_datagrams_and_arrives_once_in_order() {
    let mut s = pair(61);
    let (a, b) = (0, 1);
    let now = s.now;
    for i in 0u32..100 {
        let opts = PublishOptions::qos(Qos::AtMostOnce);
        s.members[a].node.publish(now, "sensors/t", &i.to_be_bytes(), opts).unwrap();
    }
    s.flush(a);
    let publishes: Vec<&Sent> = s.sent.iter().filter(|d| d.0 == a).collect();
    let packets: usize = publishes.iter().map(|d| d.1.len()).sum();
    assert_eq!(packets, 100, "every message is one packet");
    for (_, lens, _) in &publishes {
        let len: usize = lens.iter().map(|p| p.1).sum();
        assert!(len <= 1472, "within the default limit: {lens:?}");
    }
    // 137-byte packets: 10 fit 1472 bytes.
    assert!(publishes.len() <= 10, "{} datagrams for 100 messages", publishes.len());
    s.run_for(Duration::from_millis(50));
    let got: Vec<u32> = s.members[b]
        .log
        .delivered
        .iter()
        .map(|(_, body, _)| u32::from_be_bytes(body[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got, (0..100).collect::<Vec<_>>(), "once each, in publish order");
}

#[test]
fn a_lone_message_leaves_alone_and_at_once() {
    let mut s = pair(62);
    let (a, b) = (0, 1);
    let now = s.now;
    s.members[a]
        .node
        .publish(now, "sensors/t", b"x", PublishOptions::qos(Qos::AtLeastOnce))
        .unwrap();
    let mut buf = [0u8; 1500];
    let t = s.members[a].node.poll_transmit(now, &mut buf).expect("leaves without any wait");
    assert_eq!(buf[3], PacketType::Publish as u8);
    assert_eq!(nomq::wire::packet_len(&buf[..t.len]), Some(t.len), "one packet, alone");
    assert!(s.members[a].node.poll_transmit(now, &mut buf).is_none());
    let _ = b;
}

#[test]
fn no_datagram_exceeds_what_its_receivers_announced() {
    let mut s = Sim::new(63, PERFECT);
    let a = s.add();
    let mut small = sim_config();
    small.max_datagram = 400;
    let b = s.add_with(small, keys(1));
    let c = s.add();
    s.members[b].node.subscribe("sensors/#").unwrap();
    s.members[c].node.subscribe("sensors/#").unwrap();
    s.discover(a, 2);
    s.meet();
    s.sent.clear();
    s.publish_many(a, 300, PublishOptions::qos(Qos::AtLeastOnce));
    assert_all_acked(&s, a, 300);
    let (mut coalesced, mut total) = (0, 0);
    for (from, lens, target) in &s.sent {
        let len: usize = lens.iter().map(|p| p.1).sum();
        total += 1;
        if lens.len() > 1 {
            coalesced += 1;
        }
        let reaches_b = match target {
            Target::Unicast(addr) => *addr == s.members[b].addr,
            _ => true,
        };
        if reaches_b && lens.len() > 1 {
            assert!(len <= 400, "member {from} sent {len} bytes ({lens:?}) that b receives");
        }
        assert!(len <= 1472, "{lens:?}");
    }
    assert!(coalesced > 0, "some datagrams ({total}) carried several packets");
    // b's fan-out share is capped at 400 bytes: 300 publishes of ~100 bytes cannot fit
    // fewer than 100 datagrams.
    let from_a = s.sent.iter().filter(|d| d.0 == a).count();
    assert!(from_a >= 100, "{from_a} datagrams from a");
}

#[test]
fn a_burst_is_acknowledged_by_runs() {
    let mut s = pair(64);
    let (a, b) = (0, 1);
    s.recorded.clear();
    s.publish_many(a, 200, PublishOptions::qos(Qos::AtLeastOnce));
    assert_all_acked(&s, a, 200);
    let acks = packets_of(&s, b, PacketType::PubAck);
    assert!(acks * 5 <= 200, "{acks} PUBACK packets for 200 messages");
    assert_eq!(s.members[a].node.stats().retransmissions, 0);

    s.recorded.clear();
    s.members[a].log.outcomes.clear();
    s.publish_many(a, 200, PublishOptions::qos(Qos::ExactlyOnce));
    assert_all_acked(&s, a, 200);
    for (from, kind) in [(b, PacketType::PubRec), (a, PacketType::PubRel), (b, PacketType::PubComp)]
    {
        let n = packets_of(&s, from, kind);
        assert!(n * 5 <= 200, "{n} {kind:?} packets for 200 messages");
    }
    let ids = &s.members[b].log.delivered_ids;
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (400, 400), "each message once");
}

/// Datagrams `from` sends next, taken off the simulated network undelivered.
fn intercept(s: &mut Sim, from: usize) -> Vec<Vec<u8>> {
    s.flush(from);
    let mut out = Vec::new();
    let mut keep = Vec::new();
    while let Some(d) = s.queue.pop() {
        if d.0.3 == s.members[from].addr { out.push(d.0.4.clone()) } else { keep.push(d) }
    }
    s.queue.extend(keep);
    out
}

#[test]
fn splicing_replaying_and_forged_lengths_inside_a_datagram_are_refused() {
    let mut s = pair(65);
    let (a, b) = (0, 1);
    let publish = |s: &mut Sim, n: u32| {
        let now = s.now;
        for i in 0..n {
            let opts = PublishOptions::qos(Qos::AtMostOnce);
            s.members[a].node.publish(now, "sensors/t", &i.to_be_bytes(), opts).unwrap();
        }
    };
    publish(&mut s, 3);
    let old = intercept(&mut s, a);
    assert_eq!(old.len(), 1, "three packets, one datagram");
    let (now, from) = (s.now, s.members[a].addr);
    let node = &mut s.members[b].node;
    assert_eq!(node.handle_datagram(now, from, &mut old[0].clone(), |_| true), 3);

    // A replayed datagram delivers nothing; each of its packets is counted.
    let replays = node.stats().drops(DropReason::Replay);
    assert_eq!(node.handle_datagram(now, from, &mut old[0].clone(), |_| true), 0);
    assert_eq!(node.stats().drops(DropReason::Replay), replays + 3);

    // Spliced: an old packet in front of fresh ones. Only the fresh ones are delivered.
    publish(&mut s, 2);
    let fresh = intercept(&mut s, a).remove(0);
    let first_old = nomq::wire::packet_len(&old[0]).unwrap();
    let mut spliced = old[0][..first_old].to_vec();
    spliced.extend_from_slice(&fresh);
    let now = s.now;
    let node = &mut s.members[b].node;
    assert_eq!(node.handle_datagram(now, from, &mut spliced.clone(), |_| true), 2);

    // A forged length field: that packet fails its MAC, the rest cannot be split, nothing
    // is delivered, and every piece is counted.
    publish(&mut s, 2);
    let mut forged = intercept(&mut s, a).remove(0);
    forged[HEADER_LEN - 1] += 16;
    let now = s.now;
    let node = &mut s.members[b].node;
    let drops = node.stats().total_drops();
    assert_eq!(node.handle_datagram(now, from, &mut forged, |_| true), 0);
    assert!(node.stats().total_drops() >= drops + 2, "the forged packet and the rest");

    // Trailing garbage after a good packet: the packet is delivered, the tail counted.
    publish(&mut s, 1);
    let mut tail = intercept(&mut s, a).remove(0);
    tail.extend_from_slice(&[0x4e, 0x4d, 4, 1, 0, 0]);
    let now = s.now;
    let node = &mut s.members[b].node;
    let drops = node.stats().total_drops();
    assert_eq!(node.handle_datagram(now, from, &mut tail, |_| true), 1);
    assert_eq!(node.stats().total_drops(), drops + 1);
}

#[test]
fn heartbeats_and_challenges_travel_alone() {
    let mut s = Sim::new(66, PERFECT);
    let a = s.add();
    let b = s.add();
    s.members[b].node.subscribe("sensors/#").unwrap();
    s.discover(a, 1);
    s.meet();
    s.publish_many(a, 300, PublishOptions::qos(Qos::AtLeastOnce));
    s.run_for(Duration::from_secs(12));
    let alone = [PacketType::Heartbeat as u8, PacketType::Challenge as u8];
    let (mut lone, mut coalesced) = (0, 0);
    for (from, packets, _) in &s.sent {
        if packets.len() > 1 {
            coalesced += 1;
            assert!(
                packets.iter().all(|p| !alone.contains(&p.0)),
                "member {from} coalesced a heartbeat or challenge: {packets:?}"
            );
        } else if alone.contains(&packets[0].0) {
            lone += 1;
        }
    }
    assert!(coalesced > 0 && lone > 4, "{coalesced} coalesced, {lone} heartbeats/challenges");
}

#[test]
fn a_run_finishing_more_entries_than_the_event_queue_holds_reports_them_at_once() {
    let mut s = pair(67);
    let (a, b) = (0, 1);
    let (now, addr_a, addr_b) = (s.now, s.members[a].addr, s.members[b].addr);
    for i in 0u32..100 {
        let opts = PublishOptions::qos(Qos::AtLeastOnce);
        s.members[a].node.publish(now, "sensors/t", &i.to_be_bytes(), opts).unwrap();
    }
    // By hand, at one instant: a's datagrams to b, b's acknowledgements back.
    let mut buf = [0u8; 1500];
    let mut to_b = Vec::new();
    while let Some(t) = s.members[a].node.poll_transmit(now, &mut buf) {
        to_b.push(buf[..t.len].to_vec());
    }
    let mut delivered = 0;
    for mut d in to_b {
        delivered += s.members[b].node.handle_datagram(now, addr_a, &mut d, |_| true);
    }
    assert_eq!(delivered, 100);
    let mut acks = Vec::new();
    while let Some(t) = s.members[b].node.poll_transmit(now, &mut buf) {
        acks.push(buf[..t.len].to_vec());
    }
    assert!(acks.len() <= 2, "{} ack datagrams for 100 messages", acks.len());
    let node = &mut s.members[a].node;
    for mut d in acks {
        node.handle_datagram(now, addr_b, &mut d, |_| true);
    }
    // Draining the events alone reports every outcome: no poll, no timer needed.
    let mut outcomes = 0;
    while let Some(e) = node.poll_event() {
        if let nomq::Event::Outcome(o) = e {
            assert_eq!(o.status, nomq::node::Status::Acknowledged);
            outcomes += 1;
        }
    }
    assert_eq!(outcomes, 100, "the event queue holds {}", nomq::node::EVENT_QUEUE);
    assert_eq!(node.outbox_len(), 0);
}
