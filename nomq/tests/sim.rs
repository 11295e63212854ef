//! Deterministic simulation of several nodes on a virtual clock and a virtual lossy
//! network (seeded loss, duplication, reordering, delay). No sockets, no sleeps.

use nomq::node::{ClockMode, DropReason, Event, LostReason, PublishError, Status};
use nomq::{Addr, Duration, Keyring, Node, PublishOptions, Qos};

mod common;
#[path = "support/sim.rs"]
mod simnet;
use simnet::*;

#[test]
fn qos1_at_least_once_under_loss_dup_reorder() {
    let mut s = three(1, HOSTILE);
    s.publish_many(0, 10_000, PublishOptions::qos(Qos::AtLeastOnce));
    for b in [1, 2] {
        let c = s.counts(b);
        assert_eq!(c.len(), 10_000, "node {b} missed messages");
        assert!(c.values().all(|&n| n >= 1));
    }
    assert_all_acked(&s, 0, 10_000);
    assert!(
        s.members[0].node.stats().retransmissions > 1000,
        "loss must have forced retransmissions"
    );
}

#[test]
fn qos2_exactly_once_under_loss_dup_reorder() {
    let mut s = three(2, HOSTILE);
    s.publish_many(0, 10_000, PublishOptions::qos(Qos::ExactlyOnce));
    for b in [1, 2] {
        let c = s.counts(b);
        if c.len() != 10_000 {
            let missing: Vec<u32> = (0..10_000).filter(|i| !c.contains_key(i)).collect();
            eprintln!(
                "missing {missing:?}; drops {:?}",
                s.members[b].node.stats().nonzero().collect::<Vec<_>>()
            );
        }
        assert_eq!(c.len(), 10_000, "node {b} missed messages");
        let dups = c.values().filter(|&&n| n != 1).count();
        assert_eq!(dups, 0, "node {b} delivered duplicates");
        assert!(
            s.members[b].node.stats().drops(DropReason::Qos2Duplicate) > 0,
            "duplicates were offered"
        );
    }
    assert_all_acked(&s, 0, 10_000);
}

#[test]
fn qos0_delivery_rates() {
    let mut s = three(3, PERFECT);
    s.publish_many(0, 2_000, PublishOptions::qos(Qos::AtMostOnce));
    for b in [1, 2] {
        let c = s.counts(b);
        assert_eq!(c.len(), 2_000);
        assert!(c.values().all(|&n| n == 1));
    }
    assert!(s.members[0].log.outcomes.iter().all(|o| o.status == Status::Sent));

    let lossy = Faults { loss: 0.30, dup: 0.0, delay_min: 1000, delay_jitter: 5000 };
    let mut s = three(4, lossy);
    s.publish_many(0, 10_000, PublishOptions::qos(Qos::AtMostOnce));
    for b in [1, 2] {
        let got = s.counts(b).len() as f64 / 10_000.0;
        // Losses hit whole datagrams, several messages each: a wider spread than per message.
        assert!((0.62..=0.78).contains(&got), "delivered {got}");
    }
}

#[test]
fn retained_reaches_late_subscriber_and_expires() {
    let mut s = Sim::new(5, Faults { loss: 0.0, dup: 0.0, delay_min: 2000, delay_jitter: 0 });
    let a = s.add();
    let now = s.now;
    let keep =
        PublishOptions { retain: true, ttl: Some(100), ..PublishOptions::qos(Qos::AtLeastOnce) };
    let short =
        PublishOptions { retain: true, ttl: Some(2), ..PublishOptions::qos(Qos::AtMostOnce) };
    s.members[a].node.publish(now, "cfg/setpoint", b"21.5", keep).unwrap();
    s.members[a].node.publish(now, "cfg/short", b"gone", short).unwrap();
    s.run_for(Duration::from_secs(5));
    let late = s.add();
    s.members[late].node.subscribe("cfg/#").unwrap();
    let t0 = s.now;
    // One round trip is 4 ms here. Two: SUBSCRIBE out, CHALLENGE back (the holder does
    // not know the newcomer), echo and heartbeat out, retained value back.
    s.run_for(Duration::from_millis(9));
    let got = &s.members[late].log.delivered;
    assert_eq!(got.len(), 1, "retained value within two round trips (t0={t0:?})");
    assert_eq!(got[0].0, "cfg/setpoint");
    assert_eq!(got[0].1, b"21.5");
    s.run_for(Duration::from_secs(10));
    assert!(
        s.members[late].log.delivered.iter().all(|d| d.0 != "cfg/short"),
        "expired retained value delivered"
    );
    assert_eq!(s.members[late].log.delivered.len(), 1);
}

#[test]
fn replays_are_never_accepted() {
    let mut s = three(6, Faults { loss: 0.1, dup: 0.05, delay_min: 1000, delay_jitter: 5000 });
    s.publish_many(0, 300, PublishOptions::qos(Qos::ExactlyOnce));
    s.run_for(Duration::from_secs(2));
    let recorded = std::mem::take(&mut s.recorded);
    assert!(recorded.len() > 1000);
    let inject = |s: &mut Sim, other_source: bool| {
        let before: Vec<(u64, u64)> = s
            .members
            .iter()
            .map(|m| (m.node.stats().delivered, m.node.stats().total_drops()))
            .collect();
        let mut accepted = 0;
        for (to, from, data) in &recorded {
            let from = if other_source { Addr::V4([10, 9, 9, 9], 1234) } else { *from };
            let mut d = data.clone();
            let now = s.now;
            let m = &mut s.members[*to];
            let drops = m.node.stats().total_drops();
            // A replayed CHALLENGE may be answered (echoing a stale nonce proves nothing),
            // but nothing else may pass uncounted.
            let challenge = data[3] == 0x09;
            if m.node.handle_packet(now, from, &mut d).is_some()
                || (!challenge && m.node.stats().total_drops() != drops + 1)
            {
                accepted += 1;
            }
        }
        for (m, (d, _)) in s.members.iter().zip(before) {
            assert_eq!(m.node.stats().delivered, d);
        }
        accepted
    };
    assert_eq!(inject(&mut s, false), 0, "same source, inside the freshness window");
    assert_eq!(inject(&mut s, true), 0, "other source, inside the freshness window");
    // Senders go silent; the peer tables evict them after the liveness timeout.
    for m in &mut s.members {
        m.silent = true;
    }
    s.run_for(Duration::from_secs(20));
    assert_eq!(s.members[1].node.peers().count(), 0, "peers evicted");
    assert_eq!(inject(&mut s, false), 0, "after eviction, inside the freshness window");
    s.run_for(Duration::from_secs(60));
    assert_eq!(inject(&mut s, true), 0, "outside the freshness window");
    assert!(s.members[1].node.stats().drops(DropReason::Stale) > 0);
    assert!(s.members[1].node.stats().drops(DropReason::Unverified) > 0);
    assert!(s.members[1].node.stats().drops(DropReason::Replay) > 0);
}

#[test]
fn wrong_key_is_refused_and_locked_out() {
    let mut s = Sim::new(7, PERFECT);
    let (a, b) = (s.add(), s.add());
    let w = s.add_with(sim_config(), keys(9));
    for m in [a, b, w] {
        s.members[m].node.subscribe("sensors/#").unwrap();
    }
    s.discover(a, 1);
    for i in 0..20u32 {
        let now = s.now;
        s.members[w]
            .node
            .publish(now, "sensors/temp", &i.to_be_bytes(), PublishOptions::default())
            .unwrap();
        s.members[a]
            .node
            .publish(now, "sensors/temp", &i.to_be_bytes(), PublishOptions::default())
            .unwrap();
        s.run_for(Duration::from_millis(50));
    }
    assert_eq!(s.members[w].log.delivered.len(), 0, "wrong-key node read nothing");
    assert_eq!(s.counts(a).len(), 0, "nothing from the wrong-key node accepted");
    assert_eq!(s.counts(b).len(), 20, "A to B unaffected");
    let waddr = s.members[w].addr;
    assert!(
        s.members[a]
            .log
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::LockedOut { addr, .. } if *addr == waddr.host())),
        "wrong-key host locked out"
    );
    assert!(s.members[a].node.stats().drops(DropReason::LockedOut) > 0);
    assert!(s.members[a].node.peers().all(|p| p.1 != waddr));
}

#[test]
fn rate_limit_drops_only_the_flooder() {
    let mut s = Sim::new(8, PERFECT);
    let mut cfg = sim_config();
    cfg.rate_limit = 100;
    let b = s.add_with(cfg, keys(1));
    let (x, y) = (s.add(), s.add());
    s.members[b].node.subscribe("sensors/#").unwrap();
    s.run_for(Duration::from_secs(1));
    // x sends 1000/s (10x the limit) for 2 s; y sends 20/s.
    for i in 0..2000u32 {
        let now = s.now;
        s.members[x]
            .node
            .publish(now, "sensors/flood", &i.to_be_bytes(), PublishOptions::default())
            .unwrap();
        if i % 50 == 0 {
            s.members[y]
                .node
                .publish(now, "sensors/temp", &i.to_be_bytes(), PublishOptions::default())
                .unwrap();
        }
        s.run_for(Duration::from_millis(1));
    }
    s.run_for(Duration::from_millis(100));
    let flood = s.members[b].log.delivered.iter().filter(|d| d.0 == "sensors/flood").count();
    assert!((150..=300).contains(&flood), "flood delivered {flood}");
    assert!(s.members[b].node.stats().drops(DropReason::RateLimited) >= 1700);
    assert_eq!(s.counts(b).len(), 40, "the polite peer is unaffected");
    let xs = s.members[x].node.session();
    assert!(
        s.members[b]
            .log
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::RateLimited { session, .. } if *session == xs))
    );
}

#[test]
fn outbox_full_and_priority_order() {
    let mut s = Sim::new(9, PERFECT);
    let (a, b) = (s.add(), s.add());
    s.members[b].node.subscribe("#").unwrap();
    s.run_for(Duration::from_secs(1));
    let now = s.now;
    let node = &mut s.members[a].node;
    for i in 0..127u32 {
        node.publish(now, "low", &i.to_be_bytes(), PublishOptions::default()).unwrap();
    }
    let hi = PublishOptions { priority: 15, ..PublishOptions::default() };
    node.publish(now, "high", b"first", hi).unwrap();
    assert_eq!(
        node.publish(now, "low", b"x", PublishOptions::default()),
        Err(PublishError::OutboxFull)
    );
    s.run_for(Duration::from_secs(1));
    let got = &s.members[b].log.delivered;
    assert_eq!(got.len(), 128);
    assert_eq!(got[0].0, "high", "high priority leaves first");
    assert_eq!(got[1].1, 0u32.to_be_bytes(), "then FIFO");
}

#[test]
fn counter_rollover_starts_a_new_session() {
    let mut s = Sim::new(10, PERFECT);
    let a = s.add_with(sim_config(), keys(1));
    s.members[a].node.__set_next_packet_id(u32::MAX - 50);
    let b = s.add();
    s.members[b].node.subscribe("sensors/#").unwrap();
    s.discover(a, 1);
    let before = s.members[a].node.session();
    s.publish_many(a, 200, PublishOptions::qos(Qos::AtLeastOnce));
    assert_ne!(s.members[a].node.session(), before);
    assert!(s.members[a].log.events.iter().any(|(_, e)| matches!(e, Event::SessionRenewed { .. })));
    assert_eq!(s.counts(b).len(), 200, "receiver keeps accepting across the rollover");
    // The new session proved itself live and said it replaces the old one.
    s.run_for(Duration::from_secs(1));
    assert!(s.members[b].log.events.iter().any(|(_, e)| matches!(
        e,
        Event::PeerLost { session, reason: LostReason::Replaced, .. } if *session == before
    )));
    assert_eq!(s.members[b].node.peers().count(), 1);
    assert!(
        s.members[a].log.outcomes.iter().all(|o| o.status == Status::Acknowledged),
        "{:?}",
        s.members[a].log.outcomes.iter().find(|o| o.status != Status::Acknowledged)
    );
}

#[test]
fn silent_peer_is_lost_and_listed_missing() {
    let mut s = three(11, PERFECT);
    let c_session = s.members[2].node.session();
    s.members[2].silent = true;
    let t_silent = s.now;
    let now = s.now;
    let opts = PublishOptions { ttl: Some(600), ..PublishOptions::qos(Qos::AtLeastOnce) };
    s.members[0].node.publish(now, "sensors/temp", &7u32.to_be_bytes(), opts).unwrap();
    s.run_for(Duration::from_secs(30));
    let lost = s.members[0].log.events.iter().find_map(|(t, e)| match e {
        Event::PeerLost { session, reason: LostReason::Silent, .. } if *session == c_session => {
            Some(*t)
        }
        _ => None,
    });
    let lost = lost.expect("peer reported lost");
    let after = lost - t_silent;
    assert!(
        after <= Duration::from_secs(16) && after >= Duration::from_secs(13),
        "lost after {after:?}"
    );
    let o = &s.members[0].log.outcomes[0];
    assert_eq!(o.status, Status::Unacknowledged);
    assert_eq!(o.missing.as_slice(), &[c_session]);
    assert_eq!(o.acked.as_slice(), &[s.members[1].node.session()]);
}

/// `PublishOptions::quiet`: a publish that ends as asked (sent, acknowledged by all)
/// makes no outcome event; one that does not is still reported.
#[test]
fn quiet_publishes_report_only_what_went_wrong() {
    for (seed, qos, faults) in [
        (21, Qos::AtMostOnce, PERFECT),
        (22, Qos::AtLeastOnce, HOSTILE),
        (23, Qos::ExactlyOnce, HOSTILE),
    ] {
        let mut s = three(seed, faults);
        s.publish_many(0, 1_000, PublishOptions::qos(qos).quiet(true));
        s.run_for(Duration::from_secs(30));
        for b in [1, 2] {
            assert_eq!(s.counts(b).len(), 1_000, "{qos:?}: node {b} missed messages");
        }
        assert!(
            s.members[0].log.outcomes.is_empty(),
            "{qos:?}: {:?}",
            s.members[0].log.outcomes.first()
        );
        if qos == Qos::AtMostOnce {
            continue; // Sent to the fan-out whoever listens: it cannot miss a subscriber.
        }
        // The same publish with nobody to take it is reported.
        let now = s.now;
        let opts = PublishOptions::qos(qos).quiet(true).ttl(5);
        s.members[0].node.publish(now, "nobody/home", b"?", opts).unwrap();
        s.run_for(Duration::from_secs(10));
        let outcomes = &s.members[0].log.outcomes;
        assert_eq!(outcomes.len(), 1, "{qos:?}: {outcomes:?}");
        assert_eq!(outcomes[0].status, Status::NoSubscribers, "{qos:?}");
    }
}

#[test]
fn no_subscriber_known_is_reported() {
    let mut s = Sim::new(12, PERFECT);
    let a = s.add();
    let now = s.now;
    let opts = PublishOptions { ttl: Some(5), ..PublishOptions::qos(Qos::AtLeastOnce) };
    s.members[a].node.publish(now, "nobody/home", b"?", opts).unwrap();
    s.run_for(Duration::from_secs(10));
    assert_eq!(s.members[a].log.outcomes.len(), 1);
    assert_eq!(s.members[a].log.outcomes[0].status, Status::NoSubscribers);
}

#[test]
fn same_seed_same_trace() {
    let run = |seed| {
        let mut s = three(seed, HOSTILE);
        s.publish_many(0, 200, PublishOptions::qos(Qos::ExactlyOnce));
        s.trace
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(44));
}

#[test]
fn unsynced_clock_mode_delivers_and_refuses_replays() {
    let mut s = Sim::new(13, PERFECT);
    let mut cfg = sim_config();
    cfg.clock = ClockMode::Unsynced;
    let a = s.add_with(cfg, keys(1));
    let b = s.add_with(cfg, keys(1));
    s.members[b].node.subscribe("sensors/#").unwrap();
    s.discover(a, 1);
    s.publish_many(a, 50, PublishOptions::qos(Qos::ExactlyOnce));
    assert_eq!(s.counts(b).len(), 50);
    let rec = std::mem::take(&mut s.recorded);
    let d0 = s.members[b].node.stats().delivered;
    for (to, from, data) in rec {
        let mut d = data;
        let now = s.now;
        assert!(s.members[to].node.handle_packet(now, from, &mut d).is_none());
    }
    assert_eq!(s.members[b].node.stats().delivered, d0);
}

/// Reports the engine's memory at default capacities (printed with `--nocapture`) and
/// keeps it from growing unnoticed.
#[test]
fn node_size_at_default_capacities() {
    let default = std::mem::size_of::<Node<Keyring<0>>>();
    let with_keys = std::mem::size_of::<Node<Keyring<4>>>();
    println!(
        "Node<Keyring<0>> default capacities: {default} bytes; with 4 channel key scopes: {with_keys} bytes"
    );
    assert!(default < 80 * 1024, "{default}");
}

/// An application whose queue is often full refuses deliveries: nothing it refused was
/// acknowledged, so publishers retransmit; every message still arrives (QoS 2 once) and
/// every outcome is Acknowledged.
#[test]
fn refused_deliveries_are_retransmitted_not_lost() {
    for (seed, qos) in [(11, Qos::AtLeastOnce), (12, Qos::ExactlyOnce)] {
        let mut s = three(seed, HOSTILE);
        // With 30 % loss each way, an attempt then succeeds with p ≈ 0.7 × 0.75 × 0.7;
        // 24 attempts leave about 2e-5 per message unacknowledged.
        s.members[1].refuse = 0.25;
        s.members[2].refuse = 0.1;
        s.publish_many(0, 2_000, PublishOptions::qos(qos));
        for b in [1, 2] {
            let c = s.counts(b);
            assert_eq!(c.len(), 2_000, "node {b} missed messages at {qos:?}");
            if qos == Qos::ExactlyOnce {
                assert!(c.values().all(|&n| n == 1), "node {b} delivered a QoS 2 message twice");
            }
            assert!(s.members[b].node.stats().drops(DropReason::DeliveryRefused) > 100);
        }
        assert_all_acked(&s, 0, 2_000);
    }
}

/// A late subscriber joins while the publish that set the retained value is still being
/// retried (another subscriber does not answer): it receives the value once, under the
/// original message id, and its acknowledgement is in the original publish's outcome.
#[test]
fn retained_reaches_late_subscriber_once_while_original_is_retried() {
    let mut s = Sim::new(13, PERFECT);
    let (a, b) = (s.add(), s.add());
    s.members[b].node.subscribe("cfg/#").unwrap();
    s.discover(a, 1);
    s.members[b].silent = true;
    let now = s.now;
    let opts =
        PublishOptions { retain: true, ttl: Some(100), ..PublishOptions::qos(Qos::AtLeastOnce) };
    s.members[a].node.publish(now, "cfg/setpoint", b"21.5", opts).unwrap();
    s.run_for(Duration::from_secs(1));
    assert!(s.members[a].log.outcomes.is_empty(), "still retrying towards the silent peer");
    let late = s.add();
    s.members[late].node.subscribe("cfg/#").unwrap();
    s.run_for(Duration::from_secs(40));
    let got: Vec<_> =
        s.members[late].log.delivered.iter().filter(|d| d.0 == "cfg/setpoint").collect();
    assert_eq!(got.len(), 1, "retained value delivered {} times", got.len());
    let outcomes = &s.members[a].log.outcomes;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    let o = &outcomes[0];
    assert!(!o.retained_reply);
    assert!(o.acked.contains(&s.members[late].node.session()), "{o:?}");
    assert!(o.missing.contains(&s.members[b].node.session()), "{o:?}");
}
