//! Deferred acknowledgement (`Node::defer_delivery`) in the deterministic simulation:
//! a subscriber acknowledges a QoS 1/2 message only once its application completed it,
//! retransmissions meanwhile are neither delivered nor acknowledged, an abandoned one is
//! delivered again, and an entry nobody completes ends with its message.

use nomq::node::{CompleteError, DropReason, Status};
use nomq::{Duration, Instant, PublishOptions, Qos};
use std::collections::HashMap;

mod common;
#[path = "support/sim.rs"]
mod simnet;
use simnet::*;

/// A and B (subscribed to `sensors/#`, deferring its acknowledgements) have met.
fn pair(seed: u64, faults: Faults) -> Sim {
    let mut s = Sim::new(seed, faults);
    let (a, b) = (s.add(), s.add());
    s.members[b].defer = true;
    s.members[b].node.subscribe("sensors/#").unwrap();
    s.discover(a, 1);
    s.meet();
    s
}

fn publish(s: &mut Sim, n: u32, opts: PublishOptions) {
    let now = s.now;
    s.members[0].node.publish(now, "sensors/temp", &n.to_be_bytes(), opts).unwrap();
}

fn qos(q: Qos) -> PublishOptions {
    PublishOptions::qos(q).ttl(30)
}

/// Completes every deferred delivery of B; returns how many.
fn complete_all(s: &mut Sim) -> usize {
    let now = s.now;
    let tokens: Vec<_> = s.members[1].deferred.drain(..).collect();
    for (t, _) in &tokens {
        s.members[1].node.complete_delivery(now, *t).expect("still deferred");
    }
    tokens.len()
}

#[test]
fn qos1_and_qos2_are_acknowledged_only_after_completion() {
    for q in [Qos::AtLeastOnce, Qos::ExactlyOnce] {
        let mut s = pair(7, PERFECT);
        publish(&mut s, 1, qos(q));
        // Long enough for several retransmissions.
        s.run_for(Duration::from_secs(5));
        let (a, b) = (&s.members[0], &s.members[1]);
        assert!(a.log.outcomes.is_empty(), "{q:?}: acknowledged before completion");
        assert!(a.node.stats().retransmissions >= 2, "{q:?}: the publisher retransmits");
        assert_eq!(b.log.delivered.len(), 1, "{q:?}: a deferred message is delivered once");
        assert!(b.node.stats().drops(DropReason::DeferredDuplicate) >= 2);
        assert_eq!(b.node.deferred_len(), 1);
        assert_eq!(complete_all(&mut s), 1);
        s.run_for(Duration::from_secs(2));
        let (a, b) = (&s.members[0], &s.members[1]);
        assert_eq!(a.log.outcomes.len(), 1);
        assert_eq!(a.log.outcomes[0].status, Status::Acknowledged, "{q:?}");
        assert_eq!(b.log.delivered.len(), 1, "{q:?}");
        assert_eq!(b.node.deferred_len(), 0);
    }
}

#[test]
fn abandoned_delivery_is_delivered_again() {
    for q in [Qos::AtLeastOnce, Qos::ExactlyOnce] {
        let mut s = pair(11, PERFECT);
        publish(&mut s, 5, qos(q));
        s.run_for(Duration::from_millis(300));
        assert_eq!(s.members[1].log.delivered.len(), 1);
        let (t, _) = s.members[1].deferred.pop().unwrap();
        assert!(s.members[1].node.abandon_delivery(t));
        assert!(!s.members[1].node.abandon_delivery(t), "abandons once");
        let now = s.now;
        assert_eq!(s.members[1].node.complete_delivery(now, t), Err(CompleteError::Unknown));
        // The next retransmission is a first copy again.
        for _ in 0..100 {
            if s.members[1].log.delivered.len() == 2 {
                break;
            }
            s.run_for(Duration::from_millis(100));
        }
        assert_eq!(s.members[1].log.delivered.len(), 2, "{q:?}: delivered again");
        assert!(s.members[0].log.outcomes.is_empty());
        assert_eq!(complete_all(&mut s), 1);
        s.run_for(Duration::from_secs(2));
        assert_eq!(s.members[0].log.outcomes[0].status, Status::Acknowledged, "{q:?}");
        assert_eq!(s.members[1].node.stats().drops(DropReason::DeliveryRefused), 1);
    }
}

#[test]
fn a_deferral_nobody_completes_expires_with_its_message() {
    let mut s = pair(13, PERFECT);
    publish(&mut s, 9, PublishOptions::qos(Qos::AtLeastOnce).ttl(5));
    s.run_for(Duration::from_secs(8));
    let (a, b) = (&s.members[0], &s.members[1]);
    assert_eq!(a.log.outcomes.len(), 1);
    assert_ne!(a.log.outcomes[0].status, Status::Acknowledged);
    assert_eq!(a.log.outcomes[0].missing.len(), 1);
    assert_eq!(b.node.deferred_len(), 0, "the entry ended with its message");
    assert_eq!(b.node.stats().drops(DropReason::DeferralExpired), 1);
    let (t, _) = s.members[1].deferred[0];
    let now = s.now;
    assert_eq!(s.members[1].node.complete_delivery(now, t), Err(CompleteError::Unknown));
}

#[test]
fn qos0_is_not_deferred() {
    let mut s = pair(17, PERFECT);
    s.members[1].defer = false;
    publish(&mut s, 1, qos(Qos::AtMostOnce));
    let mut buf = [0u8; 1500];
    let now = s.now;
    let t = s.members[0].node.poll_transmit(now, &mut buf).unwrap();
    let from = s.members[0].addr;
    let b = &mut s.members[1].node;
    let packet = nomq::node::Packets::new(&mut buf[..t.len]).next().unwrap();
    assert!(b.handle_packet(now, from, packet).is_some());
    assert!(b.defer_delivery().is_none(), "QoS 0 has no ack to withhold");
    assert!(b.refuse_delivery(), "and the caller may still refuse it");
}

/// Under loss, duplication and reordering, with completions at random later times:
/// every message is acknowledged, never before B completed it; QoS 2 exactly once,
/// QoS 1 at least once (once per deferral).
#[test]
fn hostile_network_with_late_completions() {
    for (seed, q) in [(21, Qos::AtLeastOnce), (22, Qos::ExactlyOnce), (23, Qos::ExactlyOnce)] {
        let mut s = pair(seed, HOSTILE);
        let n = 60u32;
        let mut handles = HashMap::new();
        let mut completed_at: HashMap<nomq::body::MessageId, Instant> = HashMap::new();
        let mut sent = 0;
        let deadline = s.now + Duration::from_secs(600);
        while s.members[0].log.outcomes.len() < n as usize {
            if sent < n {
                let now = s.now;
                let opts = PublishOptions::qos(q).ttl(300);
                if let Ok(h) =
                    s.members[0].node.publish(now, "sensors/t", &sent.to_be_bytes(), opts)
                {
                    handles.insert(h, sent);
                    sent += 1;
                }
            }
            s.run_for(Duration::from_millis(20));
            // Complete what waited at least 200 ms, in a seeded order.
            let now = s.now;
            let m = &mut s.members[1];
            let mut keep = Vec::new();
            for (t, at) in m.deferred.drain(..) {
                if now - at >= Duration::from_millis(200) && s.rng.chance(0.5) {
                    m.node.complete_delivery(now, t).expect("deferred");
                    completed_at.entry(t.message()).or_insert(now);
                } else {
                    keep.push((t, at));
                }
            }
            m.deferred = keep;
            assert!(s.now < deadline, "stalled at {}", s.members[0].log.outcomes.len());
        }
        for o in &s.members[0].log.outcomes {
            assert_eq!(o.status, Status::Acknowledged, "{q:?} {o:?}");
            let msg = o.msg.unwrap();
            assert!(completed_at.contains_key(&msg), "{q:?}: acknowledged, never completed");
        }
        let mut counts: HashMap<Vec<u8>, u32> = HashMap::new();
        for (_, body, _) in &s.members[1].log.delivered {
            *counts.entry(body.clone()).or_default() += 1;
        }
        assert_eq!(counts.len(), n as usize, "{q:?}: every message delivered");
        if q == Qos::ExactlyOnce {
            assert!(counts.values().all(|&c| c == 1), "{q:?}: exactly once: {counts:?}");
        }
        assert_eq!(s.members[1].node.deferred_len(), 0);
        let _ = handles;
    }
}
