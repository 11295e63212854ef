//! Host nodes over real UDP sockets on 127.0.0.1 with static peers.

use nomq_host::{Handle, HostError, NodeBuilder, PublishOptions, Qos, Status};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

fn keyring(k: u8) -> nomq::Keyring<{ nomq_host::HOST_CHANNEL_KEYS }> {
    nomq::Keyring::new(&nomq::KeyPair::new([k; 32], [k + 1; 32])).unwrap()
}

/// Free loopback ports (bound then released).
fn ports(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> = (0..n).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    socks.iter().map(|s| s.local_addr().unwrap()).collect()
}

fn fast() -> nomq::Config {
    let mut c = nomq::Config::default();
    c.heartbeat_interval = nomq::Duration::from_millis(200);
    c.retransmit_initial = nomq::Duration::from_millis(50);
    c
}

async fn pair(ka: u8, kb: u8) -> (Handle, Handle) {
    let p = ports(2);
    let a = NodeBuilder::new(keyring(ka))
        .engine(fast())
        .bind(p[0])
        .peers([p[1]])
        .start()
        .await
        .unwrap();
    let b = NodeBuilder::new(keyring(kb))
        .engine(fast())
        .bind(p[1])
        .peers([p[0]])
        .start()
        .await
        .unwrap();
    (a, b)
}

async fn until_known(a: &Handle) {
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = a.stats().await.unwrap();
        if s.engine.rx_datagrams > 2 {
            return;
        }
    }
}

#[tokio::test]
async fn qos_0_1_2_both_directions() {
    let (a, b) = pair(1, 1).await;
    let mut sa = a.subscribe("to/a/#").await.unwrap();
    let mut sb = b.subscribe("to/b/+").await.unwrap();
    until_known(&a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (qos, n) in [(Qos::AtMostOnce, 0u8), (Qos::AtLeastOnce, 1), (Qos::ExactlyOnce, 2)] {
        let d = a.publish("to/b/x", vec![n], PublishOptions::qos(qos)).await.unwrap();
        let expect = if qos == Qos::AtMostOnce { Status::Sent } else { Status::Acknowledged };
        assert_eq!(d.status, expect, "{qos:?}: {d:?}");
        let m = tokio::time::timeout(Duration::from_secs(2), sb.recv()).await.unwrap().unwrap();
        assert_eq!((&*m.channel, &m.body[..], m.qos), ("to/b/x", &[n][..], qos));
        let d = b.publish("to/a/y/z", vec![n], PublishOptions::qos(qos)).await.unwrap();
        assert_eq!(d.status, expect);
        let m = tokio::time::timeout(Duration::from_secs(2), sa.recv()).await.unwrap().unwrap();
        assert_eq!(m.body, vec![n]);
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// The messages of one datagram share one buffer, and nothing else holds it: each
/// message's channel name lies right before its body in it (the PUBLISH plaintext), a
/// body outlives the message it came with, and the buffer goes when its last slice does.
#[tokio::test]
async fn messages_of_one_datagram_share_one_buffer() {
    let (a, b) = pair(1, 1).await;
    let mut sb = b.subscribe("share/#").await.unwrap();
    let wait = Duration::from_secs(10);
    assert!(a.wait_for_subscribers("share/x", 1, wait).await.unwrap().is_some());
    let bodies: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 64]).collect();
    let opts = PublishOptions::qos(Qos::AtMostOnce);
    assert_eq!(a.publish_batch("share/x", bodies.clone(), opts).await.unwrap(), 40);
    let mut got = Vec::new();
    while got.len() < 40 {
        got.push(tokio::time::timeout(wait, sb.recv()).await.unwrap().unwrap());
    }
    for (m, want) in got.iter().zip(&bodies) {
        assert_eq!((&*m.channel, &m.body[..]), ("share/x", &want[..]));
        let name_end = m.channel.as_bytes().as_ptr_range().end;
        assert_eq!(name_end, m.body.as_ptr(), "channel and body of one message are one buffer");
    }
    // 40 × 64 B queued at once leave coalesced: the first message is not alone in its
    // buffer once its own channel name is gone.
    let mut got = got.into_iter();
    let first = got.next().unwrap();
    let (channel, body) = (first.channel.clone(), first.body.clone());
    drop((first, channel));
    assert!(!body.is_unique(), "the first datagram carried one message only");
    drop(got);
    assert!(body.is_unique(), "another holder of the datagram's buffer");
    assert_eq!(body, bodies[0]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn typed_payloads_and_retained() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Reading {
        celsius: f32,
        line: u8,
    }
    let (a, b) = pair(3, 3).await;
    let r = Reading { celsius: 21.5, line: 1 };
    let retain = PublishOptions { retain: true, ..PublishOptions::qos(Qos::AtLeastOnce) };
    // No subscriber yet: kept as retained, reported honestly.
    let d = a.publish_postcard("factory/line1/temp", &r, retain).await.unwrap();
    assert_eq!(d.status, Status::NoSubscribers);
    let mut sb = b.subscribe("factory/#").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(2), sb.recv()).await.unwrap().unwrap();
    assert!(m.retained);
    assert_eq!(m.postcard::<Reading>().unwrap(), r);
    a.publish_json("factory/line1/temp", &r, PublishOptions::default()).await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(2), sb.recv()).await.unwrap().unwrap();
    assert_eq!(m.json::<Reading>().unwrap(), r);
}

#[tokio::test]
async fn wrong_key_and_bad_input_are_refused() {
    let (a, b) = pair(5, 7).await;
    let mut sb = b.subscribe("#").await.unwrap();
    for i in 0..10u8 {
        a.publish("x/y", vec![i], PublishOptions::default()).await.unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sb.recv()).await.is_err(),
        "nothing decrypts"
    );
    let s = b.stats().await.unwrap();
    assert!(s.engine.drops(nomq::node::DropReason::BadMac) >= 5);
    assert!(s.engine.drops(nomq::node::DropReason::LockedOut) >= 1, "locked out after 5 failures");
    assert!(matches!(
        a.publish("bad/+", "x", PublishOptions::default()).await,
        Err(HostError::Publish(_))
    ));
    assert!(matches!(
        a.publish("ok", vec![0; 5000], PublishOptions::default()).await,
        Err(HostError::Publish(_))
    ));
    assert!(matches!(a.subscribe("a/#/b").await, Err(HostError::Subscribe(_))));
}

#[tokio::test]
async fn ipv6_unicast_on_loopback() {
    let socks: Vec<UdpSocket> = (0..2).filter_map(|_| UdpSocket::bind("[::1]:0").ok()).collect();
    if socks.len() < 2 {
        eprintln!("SKIP: no IPv6 loopback here");
        return;
    }
    let p: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
    drop(socks);
    let a =
        NodeBuilder::new(keyring(9)).engine(fast()).bind(p[0]).peers([p[1]]).start().await.unwrap();
    let b =
        NodeBuilder::new(keyring(9)).engine(fast()).bind(p[1]).peers([p[0]]).start().await.unwrap();
    let mut sb = b.subscribe("v6/#").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let d = a.publish("v6/x", "over ::1", PublishOptions::qos(Qos::ExactlyOnce)).await.unwrap();
    assert_eq!(d.status, Status::Acknowledged);
    let m = tokio::time::timeout(Duration::from_secs(2), sb.recv()).await.unwrap().unwrap();
    assert_eq!(m.body, &b"over ::1"[..]);
    assert!(m.from.is_ipv6());
}
