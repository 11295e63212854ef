//! What the host adapter promises about delivery, over real sockets on 127.0.0.1:
//! dropping a subscription unsubscribes; nothing is acknowledged and then lost to a slow
//! reader; events are counted when they cannot be handed over; cancelled calls leave
//! nothing behind.

use nomq::node::Event;
use nomq_host::{Handle, NodeBuilder, NodeEvent, PublishOptions, Qos, Status};
use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::Duration;
use tokio::sync::mpsc;

/// Generous: CI machines are busy.
const WAIT: Duration = Duration::from_secs(10);

fn keyring() -> nomq::Keyring<{ nomq_host::HOST_CHANNEL_KEYS }> {
    nomq::Keyring::new(&nomq::KeyPair::new([7; 32], [8; 32])).unwrap()
}

fn fast() -> nomq::Config {
    let mut c = nomq::Config::default();
    c.heartbeat_interval = nomq::Duration::from_millis(200);
    c.retransmit_initial = nomq::Duration::from_millis(20);
    c.rate_limit = 1_000_000;
    c
}

/// `n` nodes on 127.0.0.1, each with all the others as static peers. The sockets are
/// bound first and handed over, so no port is found free and then lost.
async fn mesh(n: usize, engine: nomq::Config, depth: usize) -> Vec<Handle> {
    let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, s) in socks.into_iter().enumerate() {
        let peers = addrs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| *a);
        let node = NodeBuilder::new(keyring())
            .engine(engine)
            .socket(s)
            .peers(peers)
            .stream_depth(depth)
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    nodes
}

async fn wait_gone(publisher: &Handle, channel: &str, run: usize) {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if publisher.subscribers(channel).await.unwrap().is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "run {run}: the publisher still lists a subscriber of {channel} {WAIT:?} after the drop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn drop_unsubscribes(runs: usize) {
    let nodes = mesh(2, fast(), 16).await;
    let (sub, publisher) = (&nodes[0], &nodes[1]);
    for run in 0..runs {
        let channel = "drop/me";
        let s = sub.subscribe(channel).await.unwrap();
        let seen = publisher.wait_for_subscribers(channel, 1, WAIT).await.unwrap();
        assert!(seen.is_some(), "run {run}: the publisher never saw the subscription");
        drop(s);
        wait_gone(publisher, channel, run).await;
        if run % 10 == 0 {
            let d = publisher
                .publish(channel, b"x".to_vec(), PublishOptions::qos(Qos::AtLeastOnce))
                .await
                .unwrap();
            assert_eq!(d.status, Status::NoSubscribers, "run {run}: {d:?}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_a_subscription_unsubscribes_current_thread() {
    drop_unsubscribes(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_unsubscribes_multi_thread() {
    drop_unsubscribes(100).await;
}

/// Two subscriptions to one pattern: dropping one keeps the other delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pattern_stays_while_one_subscription_lives() {
    let nodes = mesh(2, fast(), 16).await;
    let (sub, publisher) = (&nodes[0], &nodes[1]);
    let first = sub.subscribe("shared/#").await.unwrap();
    let mut second = sub.subscribe("shared/#").await.unwrap();
    assert!(publisher.wait_for_subscribers("shared/x", 1, WAIT).await.unwrap().is_some());
    drop(first);
    let d = publisher
        .publish("shared/x", b"still".to_vec(), PublishOptions::qos(Qos::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(d.status, Status::Acknowledged, "{d:?}");
    let m = tokio::time::timeout(WAIT, second.recv()).await.unwrap().unwrap();
    assert_eq!(m.body, &b"still"[..]);
}

/// Publishes `count` messages at `qos` with as many in flight as the outbox holds, and
/// returns every outcome.
async fn publish_window(p: &Handle, channel: &str, count: u32, qos: Qos) -> Vec<Status> {
    let mut waiting = std::collections::VecDeque::new();
    let mut statuses = Vec::new();
    for i in 0..count {
        loop {
            match p.start_publish(channel, i.to_be_bytes().to_vec(), PublishOptions::qos(qos)).await
            {
                Ok(rx) => {
                    waiting.push_back(rx);
                    break;
                }
                Err(nomq_host::HostError::Publish(nomq::node::PublishError::OutboxFull)) => {
                    let rx: tokio::sync::oneshot::Receiver<_> =
                        waiting.pop_front().expect("outbox full with nothing in flight");
                    statuses.push(rx.await.unwrap().status);
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    for rx in waiting {
        statuses.push(rx.await.unwrap().status);
    }
    statuses
}

/// A reader that takes 1 ms per message: every message the publisher was told is
/// acknowledged reached it (QoS 2: exactly once), none was acknowledged and then dropped
/// by a full stream.
async fn slow_reader(qos: Qos, engine: nomq::Config, must_fill: bool) {
    const COUNT: u32 = 8_000;
    let nodes = mesh(2, engine, nomq_host::STREAM_DEPTH).await;
    let (sub, publisher) = (&nodes[0], &nodes[1]);
    let mut s = sub.subscribe("slow/reader").await.unwrap();
    assert!(publisher.wait_for_subscribers("slow/reader", 1, WAIT).await.unwrap().is_some());
    let reader = tokio::spawn(async move {
        let mut seen: HashMap<u32, u32> = HashMap::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(120);
        while seen.len() < COUNT as usize && tokio::time::Instant::now() < end {
            let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(20), s.recv()).await else {
                break;
            };
            *seen.entry(u32::from_be_bytes(m.body[..4].try_into().unwrap())).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen
    });
    let statuses = publish_window(publisher, "slow/reader", COUNT, qos).await;
    let seen = reader.await.unwrap();
    let acked = statuses.iter().filter(|s| **s == Status::Acknowledged).count();
    let stats = sub.stats().await.unwrap();
    assert_eq!(
        acked,
        COUNT as usize,
        "outcomes: {:?}; subscriber drops {:?}",
        count_statuses(&statuses),
        stats.engine.nonzero().collect::<Vec<_>>()
    );
    assert_eq!(seen.len(), COUNT as usize, "reader got {} distinct messages", seen.len());
    if qos == Qos::ExactlyOnce {
        assert!(seen.values().all(|&n| n == 1), "a QoS 2 message arrived twice");
    }
    if must_fill {
        assert!(stats.app_deferred > 0, "the stream never filled: the test proves nothing");
    }
    assert_eq!(stats.app_dropped, 0);
    assert_eq!(
        stats.engine.drops(nomq::node::DropReason::DeliveryRefused),
        stats.app_deferred,
        "every refusal counted once"
    );
}

fn count_statuses(s: &[Status]) -> HashMap<String, usize> {
    let mut h = HashMap::new();
    for x in s {
        *h.entry(format!("{x:?}")).or_default() += 1;
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_qos1_nothing_acknowledged_then_lost() {
    slow_reader(Qos::AtLeastOnce, fast(), true).await;
}

/// The same with the host's default engine settings (what `NodeBuilder::new` uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_qos1_host_defaults() {
    slow_reader(Qos::AtLeastOnce, nomq_host::HostConfig::default().engine, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_qos2_exactly_once() {
    slow_reader(Qos::ExactlyOnce, fast(), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_qos2_host_defaults() {
    slow_reader(Qos::ExactlyOnce, nomq_host::HostConfig::default().engine, false).await;
}

/// QoS 0 into a stream nobody reads: the overflow is counted, not hidden.
#[tokio::test]
async fn qos0_overflow_is_counted() {
    let nodes = mesh(2, fast(), 16).await;
    let (sub, publisher) = (&nodes[0], &nodes[1]);
    let _s = sub.subscribe("full/#").await.unwrap();
    assert!(publisher.wait_for_subscribers("full/x", 1, WAIT).await.unwrap().is_some());
    for i in 0..100u32 {
        publisher
            .publish("full/x", i.to_be_bytes().to_vec(), PublishOptions::default())
            .await
            .unwrap();
    }
    delivered(sub, 16, 84).await;
}

/// Waits until `sub` has delivered or refused (QoS 0) `ok + dropped` messages; asserts the
/// split, and that every refusal was counted by the engine too.
async fn delivered(sub: &Handle, ok: u64, dropped: u64) {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let st = sub.stats().await.unwrap();
        if st.engine.delivered + st.app_dropped >= ok + dropped {
            assert_eq!((st.engine.delivered, st.app_dropped), (ok, dropped), "{st:?}");
            assert_eq!(st.engine.drops(nomq::node::DropReason::DeliveryRefused), dropped);
            return;
        }
        assert!(tokio::time::Instant::now() < end, "only {st:?} after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A message refused because one matching stream is full gives back the places it took
/// in the other matching streams: once the full stream's subscription is dropped, the
/// other takes every message again.
#[tokio::test]
async fn a_refused_message_gives_back_its_places() {
    let nodes = mesh(2, fast(), 16).await;
    let (sub, publisher) = (&nodes[0], &nodes[1]);
    let unread = sub.subscribe("full/#").await.unwrap();
    let mut read = sub.subscribe("full/x").await.unwrap();
    assert!(publisher.wait_for_subscribers("full/x", 1, WAIT).await.unwrap().is_some());
    let publish =
        |i: u32| publisher.publish("full/x", i.to_be_bytes().to_vec(), PublishOptions::default());
    // 16 fill both streams; the read one is emptied, the other stays full.
    for i in 0..16u32 {
        publish(i).await.unwrap();
    }
    delivered(sub, 16, 0).await;
    for i in 0..16u32 {
        let m = tokio::time::timeout(WAIT, read.recv()).await.unwrap().unwrap();
        assert_eq!(m.body[..], i.to_be_bytes());
    }
    // Refused, all of them (one matching stream is full), though the other has room.
    for i in 16..100u32 {
        publish(i).await.unwrap();
    }
    delivered(sub, 16, 84).await;
    drop(unread);
    // The drop is taken before any later command.
    sub.stats().await.unwrap();
    for round in 0..10u32 {
        for i in 0..10 {
            publish(1000 + round * 10 + i).await.unwrap();
        }
        for i in 0..10 {
            let m = tokio::time::timeout(WAIT, read.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: message {i} never came"))
                .unwrap();
            assert_eq!(m.body[..], (1000 + round * 10 + i).to_be_bytes());
        }
    }
    assert_eq!(sub.stats().await.unwrap().app_dropped, 84, "nothing refused after the drop");
}

/// `publish` and `start_publish` wait for the outcome, so they report success even for
/// options marked `quiet` (which only `publish_batch`'s unawaited outcomes use).
#[tokio::test]
async fn a_quiet_publish_still_answers_its_caller() {
    let nodes = mesh(2, fast(), 16).await;
    let (sub, publisher) = (&nodes[0], &nodes[1]);
    let mut s = sub.subscribe("quiet/x").await.unwrap();
    assert!(publisher.wait_for_subscribers("quiet/x", 1, WAIT).await.unwrap().is_some());
    for qos in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce] {
        let opts = PublishOptions::qos(qos).quiet(true);
        let d = tokio::time::timeout(WAIT, publisher.publish("quiet/x", b"a".to_vec(), opts))
            .await
            .unwrap_or_else(|_| panic!("{qos:?}: publish never answered"))
            .unwrap();
        let want = if qos == Qos::AtMostOnce { Status::Sent } else { Status::Acknowledged };
        assert_eq!(d.status, want);
        let rx = publisher.start_publish("quiet/x", b"b".to_vec(), opts).await.unwrap();
        let d = tokio::time::timeout(WAIT, rx)
            .await
            .unwrap_or_else(|_| panic!("{qos:?}: start_publish never answered"))
            .unwrap();
        assert_eq!(d.status, want);
        for _ in 0..2 {
            tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap();
        }
    }
}

/// An events channel nobody reads: what does not fit is counted.
#[tokio::test]
async fn events_that_do_not_fit_are_counted() {
    let socks: Vec<UdpSocket> = (0..4).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
    let (tx, _rx) = mpsc::channel::<NodeEvent>(1);
    let mut socks = socks.into_iter();
    let watched = NodeBuilder::new(keyring())
        .engine(fast())
        .socket(socks.next().unwrap())
        .peers(addrs[1..].iter().copied())
        .events(tx)
        .start()
        .await
        .unwrap();
    let mut others = Vec::new();
    for s in socks {
        others.push(
            NodeBuilder::new(keyring())
                .engine(fast())
                .socket(s)
                .peers([addrs[0]])
                .start()
                .await
                .unwrap(),
        );
    }
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let st = watched.stats().await.unwrap();
        // Three PeerJoined events; the channel holds one.
        if st.events_dropped >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "events_dropped {} after {WAIT:?}",
            st.events_dropped
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `f` once and drops it if it is not done: a cancellation right after the call
/// handed its command to the driver (unconstrained, so tokio's cooperative budget cannot
/// make that first poll stop short). Returns whether it was cancelled.
async fn poll_once_then_cancel<F: std::future::Future>(f: F) -> bool {
    let f = tokio::task::unconstrained(f);
    tokio::select! {
        biased;
        _ = f => false,
        () = std::future::ready(()) => true,
    }
}

/// A `subscribe()` cancelled before it returns leaves no subscription behind.
// Current-thread: the driver cannot answer while the call is being polled, so the
// cancellation always falls between the hand-over and the reply.
#[tokio::test(flavor = "current_thread")]
async fn cancelled_subscribe_leaves_nothing_behind() {
    let nodes = mesh(2, fast(), 16).await;
    let (sub, publisher) = (&nodes[0], &nodes[1]);
    let _marker = sub.subscribe("marker").await.unwrap();
    assert!(publisher.wait_for_subscribers("marker", 1, WAIT).await.unwrap().is_some());
    for run in 0..20 {
        let cancelled = poll_once_then_cancel(sub.subscribe("cancelled/#")).await;
        assert!(cancelled, "run {run}: the subscribe completed in its first poll");
    }
    // Three heartbeat intervals: any subscription left behind would have been announced.
    tokio::time::sleep(Duration::from_millis(600)).await;
    wait_gone(publisher, "cancelled/x", 0).await;
    let d = publisher
        .publish("cancelled/x", b"x".to_vec(), PublishOptions::qos(Qos::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(d.status, Status::NoSubscribers, "{d:?}");
}

/// A `publish()` cancelled after it reached the driver is still published and its outbox
/// entry still ends: 300 cancelled publishes (more than the outbox holds) all arrive, and
/// the outbox has room afterwards.
#[tokio::test(flavor = "current_thread")]
async fn cancelled_publish_still_resolves() {
    let nodes = mesh(2, fast(), 1024).await;
    let (sub, publisher) = (&nodes[0], &nodes[1]);
    let mut s = sub.subscribe("cancel/pub").await.unwrap();
    assert!(publisher.wait_for_subscribers("cancel/pub", 1, WAIT).await.unwrap().is_some());
    let mut cancelled = 0;
    for i in 0..300u32 {
        let opts = PublishOptions::qos(Qos::AtLeastOnce);
        if poll_once_then_cancel(publisher.publish("cancel/pub", i.to_be_bytes().to_vec(), opts))
            .await
        {
            cancelled += 1;
        }
        if i % 100 == 99 {
            // Let the outbox drain: each entry must end although nobody awaits it.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(cancelled > 250, "only {cancelled} of 300 publishes were cancelled");
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 300 {
        let Ok(m) = tokio::time::timeout(WAIT, s.recv()).await else {
            panic!(
                "{} of 300 cancelled publishes arrived; publisher {:?}; subscriber {:?}",
                seen.len(),
                publisher.stats().await,
                sub.stats().await
            );
        };
        seen.insert(m.unwrap().body);
    }
    let d = publisher
        .publish("cancel/pub", b"after".to_vec(), PublishOptions::qos(Qos::AtLeastOnce))
        .await
        .unwrap();
    assert_eq!(d.status, Status::Acknowledged);
}

/// A retained value sent on its own to a late subscriber reports its outcome on the
/// events channel (no publish waits for it).
#[tokio::test]
async fn retained_reply_outcome_is_reported() {
    let socks: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
    let mut socks = socks.into_iter();
    let (tx, mut events) = mpsc::channel::<NodeEvent>(64);
    let holder = NodeBuilder::new(keyring())
        .engine(fast())
        .socket(socks.next().unwrap())
        .peers([addrs[1]])
        .events(tx)
        .start()
        .await
        .unwrap();
    let opts = PublishOptions { retain: true, ..PublishOptions::qos(Qos::AtLeastOnce) };
    let d = holder.publish("cfg/mode", b"eco".to_vec(), opts).await.unwrap();
    assert_eq!(d.status, Status::NoSubscribers);
    let late = NodeBuilder::new(keyring())
        .engine(fast())
        .socket(socks.next().unwrap())
        .peers([addrs[0]])
        .start()
        .await
        .unwrap();
    let mut s = late.subscribe("cfg/#").await.unwrap();
    let m = tokio::time::timeout(WAIT, s.recv()).await.unwrap().unwrap();
    assert!(m.retained && m.body == b"eco"[..]);
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(end, events.recv())
            .await
            .expect("no retained outcome")
            .unwrap();
        if let Event::Outcome(o) = e {
            assert!(o.retained_reply);
            assert_eq!(o.status, Status::Acknowledged, "{o:?}");
            break;
        }
    }
}

/// A QoS 1 stream with the whole outbox in flight: acknowledgements come back as runs that
/// finish many entries at once, more than the engine's event queue holds, and every outcome
/// must still be reported at once, not at the next retransmission timer (a run once stalled
/// such a stream to a few thousand messages a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_of_qos1_is_acknowledged_without_waiting_for_timers() {
    let mut engine = fast();
    // A stalled outcome would wait a full second per outbox load: 24 loads for 3000.
    engine.retransmit_initial = nomq::Duration::from_secs(1);
    engine.retransmit_max = nomq::Duration::from_secs(2);
    let nodes = mesh(2, engine, 4096).await;
    let (p, s) = (&nodes[0], &nodes[1]);
    let mut sub = s.subscribe("win/#").await.unwrap();
    p.wait_for_subscribers("win/a", 1, WAIT).await.unwrap();
    let reader = tokio::spawn(async move {
        // At least once: a retransmission on a busy machine may repeat one.
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 3000 {
            let m = tokio::time::timeout(WAIT, sub.recv()).await.expect("stream stalled").unwrap();
            seen.insert(u32::from_be_bytes(m.body[..4].try_into().unwrap()));
        }
    });
    let start = std::time::Instant::now();
    let statuses = tokio::time::timeout(WAIT, publish_window(p, "win/a", 3000, Qos::AtLeastOnce))
        .await
        .expect("3000 QoS 1 messages did not finish in 10 s");
    let took = start.elapsed();
    assert!(statuses.iter().all(|s| *s == Status::Acknowledged), "{:?}", count_statuses(&statuses));
    reader.await.unwrap();
    let stats = p.stats().await.unwrap();
    eprintln!("3000 QoS 1 in {took:?}, {} retransmissions", stats.engine.retransmissions);
}
