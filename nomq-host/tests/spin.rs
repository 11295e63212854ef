//! The driver's spin (`HostConfig::spin`): while an application waits for a publish's
//! outcome the driver polls instead of sleeping, for at most the spin after the publish,
//! and it leaves the runtime to other tasks meanwhile. Over real sockets on 127.0.0.1.

use nomq_host::{Handle, Message, NodeBuilder, PublishOptions, Qos, Subscription};
use std::net::UdpSocket;
use std::time::Duration;

/// Generous: CI machines are busy.
const WAIT: Duration = Duration::from_secs(10);

fn keyring() -> nomq::Keyring<{ nomq_host::HOST_CHANNEL_KEYS }> {
    nomq::Keyring::new(&nomq::KeyPair::new([7; 32], [8; 32])).unwrap()
}

/// A publisher with this spin, and a subscriber of `spin/#` that never acknowledges
/// (an acked subscription whose acks are held, never completed): every QoS 1 outcome is
/// awaited until its TTL.
async fn unanswered(spin: Duration) -> (Handle, Handle, Subscription) {
    let (a, b) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let mut engine = nomq::Config::default();
    engine.retransmit_initial = nomq::Duration::from_millis(20);
    let publisher = NodeBuilder::new(keyring())
        .engine(engine)
        .socket(a)
        .peers([ba])
        .spin(spin)
        .start()
        .await
        .unwrap();
    let subscriber =
        NodeBuilder::new(keyring()).engine(engine).socket(b).peers([aa]).start().await.unwrap();
    let sub = subscriber.subscribe_acked("spin/#").await.unwrap();
    let seen = publisher.wait_for_subscribers("spin/x", 1, WAIT).await.unwrap();
    assert!(seen.is_some(), "the publisher never heard the subscriber");
    (publisher, subscriber, sub)
}

fn qos1() -> PublishOptions {
    PublishOptions { ttl: Some(5), ..PublishOptions::qos(Qos::AtLeastOnce) }
}

/// Waits for the subscriber to hold `n` messages (their acks withheld).
async fn hold(sub: &mut Subscription, held: &mut Vec<Message>, n: usize) {
    while held.len() < n {
        let m = tokio::time::timeout(WAIT, sub.recv()).await.expect("no delivery").unwrap();
        held.push(m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_publish_costs_at_most_the_spin() {
    let spin = nomq_host::config::MAX_SPIN;
    let (publisher, subscriber, mut sub) = unanswered(spin).await;
    let mut held = Vec::new();
    let before = publisher.stats().await.unwrap().spun;
    let rx = publisher.start_publish("spin/x", b"1".to_vec(), qos1()).await.unwrap();
    hold(&mut sub, &mut held, 1).await;
    // The outcome stays awaited (retransmissions go on) for far longer than the spin.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let spun = publisher.stats().await.unwrap().spun - before;
    // About 10 ms: the driver polled right after the publish, then slept although the
    // outcome is still awaited. Spinning for as long as it is awaited would be 400 ms.
    assert!(spun >= Duration::from_millis(3), "spun only {spun:?} of a 10 ms spin");
    assert!(spun <= Duration::from_millis(120), "spun {spun:?}: the 10 ms spin is not bounded");
    drop(rx);
    drop(held);
    publisher.shutdown().await;
    subscriber.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spin_when_it_is_off() {
    let (publisher, subscriber, mut sub) = unanswered(Duration::ZERO).await;
    let mut held = Vec::new();
    let rx = publisher.start_publish("spin/x", b"1".to_vec(), qos1()).await.unwrap();
    hold(&mut sub, &mut held, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(publisher.stats().await.unwrap().spun, Duration::ZERO);
    drop(rx);
    publisher.shutdown().await;
    subscriber.shutdown().await;
}

/// On a current-thread runtime the spinning driver shares the thread: the publishing task
/// gets its reply and runs again after a yield at once, not after the spin (10 ms here).
#[tokio::test(flavor = "current_thread")]
async fn spinning_leaves_the_runtime_to_other_tasks() {
    let spin = nomq_host::config::MAX_SPIN;
    let (publisher, subscriber, mut sub) = unanswered(spin).await;
    let mut held = Vec::new();
    let mut waits = Vec::new();
    let mut outcomes = Vec::new();
    for i in 0..5u8 {
        // The driver spins once it has taken the publish (an outcome is awaited, no
        // answer comes): this task gets its reply, and runs again after a yield, at once.
        let t = std::time::Instant::now();
        outcomes.push(publisher.start_publish("spin/x", vec![i], qos1()).await.unwrap());
        tokio::task::yield_now().await;
        waits.push(t.elapsed());
        hold(&mut sub, &mut held, usize::from(i) + 1).await;
        // Past this publish's spin, so that the next one starts its own.
        tokio::time::sleep(spin * 2).await;
    }
    let fastest = waits.iter().min().copied().unwrap();
    assert!(
        fastest < spin / 2,
        "a publish and a yield took {waits:?}: the spin blocked the runtime thread"
    );
    assert!(publisher.stats().await.unwrap().spun > Duration::ZERO, "the driver never spun");
    drop(outcomes);
    publisher.shutdown().await;
    subscriber.shutdown().await;
}

/// With the spin on, a sequential QoS 1 round trip still completes and reports what the
/// spin cost, no more than the round trips took.
#[tokio::test(flavor = "current_thread")]
async fn round_trips_with_the_spin_are_acknowledged() {
    let (a, b) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let publisher = NodeBuilder::new(keyring()).socket(a).peers([ba]).start().await.unwrap();
    let subscriber = NodeBuilder::new(keyring()).socket(b).peers([aa]).start().await.unwrap();
    let mut sub = subscriber.subscribe("spin/#").await.unwrap();
    assert!(publisher.wait_for_subscribers("spin/x", 1, WAIT).await.unwrap().is_some());
    let start = std::time::Instant::now();
    for i in 0..50u8 {
        let d = publisher.publish("spin/x", vec![i], qos1()).await.unwrap();
        assert_eq!(d.status, nomq_host::Status::Acknowledged, "{d:?}");
        let m = tokio::time::timeout(WAIT, sub.recv()).await.unwrap().unwrap();
        assert_eq!(&m.body[..], &[i]);
    }
    let took = start.elapsed();
    let spun = publisher.stats().await.unwrap().spun;
    assert!(spun <= took, "spun {spun:?} in {took:?}");
    publisher.shutdown().await;
    subscriber.shutdown().await;
}
