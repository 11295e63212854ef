//! NoMQ scenarios over real UDP sockets: the rows of the `loopback` and `lossy` tables.
//!
//! Every node binds 127.0.0.1 and reaches its peers through a static list, so nothing
//! here ever broadcasts from the root namespace. Every wait is bounded.

use crate::relay::{Relay, RelayConfig};
use crate::report::Report;
use nomq::node::{DropReason, Event, LostReason};
use nomq_host::{
    Delivery, Handle, HostError, NodeBuilder, NodeEvent, PublishOptions, Qos, Status, Subscription,
};
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::time::timeout;

type Ring = nomq::Keyring<{ nomq_host::HOST_CHANNEL_KEYS }>;
/// Result of one scenario: a detail line on success, the reason on failure.
pub type Outcome = Result<String, String>;

/// The harness's shared network key (a test key: never use fixed keys in production).
pub fn keyring(k: u8) -> Ring {
    nomq::Keyring::new(&nomq::KeyPair::new([k; 32], [k.wrapping_add(1); 32]))
        .expect("distinct keys")
}

/// Engine settings for quick scenarios: fast heartbeats and retransmissions.
pub fn fast_engine() -> nomq::Config {
    let mut c = nomq::Config::default();
    c.heartbeat_interval = nomq::Duration::from_millis(200);
    c.liveness_timeout = nomq::Duration::from_millis(1500);
    c.retransmit_initial = nomq::Duration::from_millis(50);
    c.retransmit_max = nomq::Duration::from_millis(500);
    c.rate_limit = 100_000;
    c
}

/// Free loopback ports (bound, then released).
pub fn free_ports(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> =
        (0..n).filter_map(|_| UdpSocket::bind("127.0.0.1:0").ok()).collect();
    socks.iter().filter_map(|s| s.local_addr().ok()).collect()
}

/// One node under test with its event stream.
pub struct TestNode {
    /// The node.
    pub handle: Handle,
    /// Peer and security events.
    pub events: mpsc::Receiver<NodeEvent>,
}

/// Starts a node on `bind` with static `peers`.
///
/// # Errors
/// Host errors, as text.
pub async fn node(
    bind: SocketAddr,
    peers: Vec<SocketAddr>,
    ring: Ring,
    engine: nomq::Config,
) -> Result<TestNode, String> {
    let (tx, events) = mpsc::channel(1024);
    let handle = NodeBuilder::new(ring)
        .engine(engine)
        .bind(bind)
        .peers(peers)
        .events(tx)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    Ok(TestNode { handle, events })
}

/// A full mesh of `n` nodes on 127.0.0.1.
///
/// # Errors
/// Host errors, as text.
pub async fn mesh(n: usize, engine: nomq::Config) -> Result<Vec<TestNode>, String> {
    let addrs = free_ports(n);
    let mut nodes = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let peers = addrs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect();
        nodes.push(node(*a, peers, keyring(1), engine).await?);
    }
    Ok(nodes)
}

async fn recv(sub: &mut Subscription, within: Duration) -> Result<nomq_host::Message, String> {
    timeout(within, sub.recv())
        .await
        .map_err(|_| format!("nothing arrived on '{}' within {within:?}", sub.pattern()))?
        .ok_or_else(|| "node stopped".to_string())
}

async fn nothing(sub: &mut Subscription, within: Duration) -> Result<(), String> {
    match timeout(within, sub.recv()).await {
        Err(_) => Ok(()),
        Ok(Some(m)) => Err(format!(
            "unexpected message on '{}': {:?}",
            m.channel,
            String::from_utf8_lossy(&m.body)
        )),
        Ok(None) => Err("node stopped".into()),
    }
}

/// Waits until `node` knows `n` peers subscribed to something (bounded).
async fn settle(_node: &Handle) {
    // Heartbeats every 200 ms; two intervals let every announcement arrive.
    tokio::time::sleep(Duration::from_millis(450)).await;
}

async fn drop_count(h: &Handle, r: DropReason) -> u64 {
    h.stats().await.map(|s| s.engine.drops(r)).unwrap_or(0)
}

/// Runs `f` and records it with its duration.
pub async fn row<F: std::future::Future<Output = Outcome>>(report: &mut Report, name: &str, f: F) {
    let t = Instant::now();
    let r = match timeout(Duration::from_secs(60), f).await {
        Ok(r) => r,
        Err(_) => Err("scenario timed out after 60 s".into()),
    };
    report.record_timed(name, t.elapsed(), r);
}

/// The core's power-on self-test (known answers through the crate's own functions).
pub fn crypto_self_test() -> Outcome {
    nomq::selftest::run().map_err(|e| e.to_string())?;
    Ok("AES-256-CBC (NIST F.2.5), HMAC-SHA256 (RFC 4231 #2), seal/open round trip".into())
}

/// Subscribe, receive, unsubscribe, receive nothing.
pub async fn subscribe_unsubscribe() -> Outcome {
    let nodes = mesh(2, fast_engine()).await?;
    let (a, b) = (&nodes[0].handle, &nodes[1].handle);
    let mut sub = b.subscribe("room/+/temp").await.map_err(|e| e.to_string())?;
    settle(a).await;
    a.publish("room/kitchen/temp", "20.5", PublishOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let m = recv(&mut sub, Duration::from_secs(2)).await?;
    if m.channel != "room/kitchen/temp" || m.body != b"20.5" {
        return Err(format!("wrong message {m:?}"));
    }
    a.publish("room/kitchen/humidity", "40", PublishOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    nothing(&mut sub, Duration::from_millis(300)).await?;
    drop(sub);
    settle(a).await;
    let d = a
        .publish("room/kitchen/temp", "21", PublishOptions::qos(Qos::AtLeastOnce))
        .await
        .map_err(|e| e.to_string())?;
    if d.status != Status::NoSubscribers {
        return Err(format!("after unsubscribe the publisher still saw a subscriber: {d:?}"));
    }
    Ok("wildcard match, non-match ignored, unsubscribe announced".into())
}

/// QoS 0, 1 and 2 between three nodes.
pub async fn qos_levels(qos: Qos, count: u32) -> Outcome {
    let nodes = mesh(3, fast_engine()).await?;
    let a = &nodes[0].handle;
    let mut subs = Vec::new();
    for n in &nodes[1..] {
        subs.push(n.handle.subscribe("plant/#").await.map_err(|e| e.to_string())?);
    }
    settle(a).await;
    for i in 0..count {
        let d = a
            .publish("plant/line1", i.to_be_bytes().to_vec(), PublishOptions::qos(qos))
            .await
            .map_err(|e| e.to_string())?;
        let want = if qos == Qos::AtMostOnce { Status::Sent } else { Status::Acknowledged };
        if d.status != want || (qos != Qos::AtMostOnce && d.acked.len() != 2) {
            return Err(format!("message {i}: {d:?}"));
        }
    }
    for (k, sub) in subs.iter_mut().enumerate() {
        let mut seen = HashMap::new();
        while seen.len() < count as usize {
            let m = recv(sub, Duration::from_secs(2))
                .await
                .map_err(|e| format!("subscriber {k}: {e}"))?;
            *seen.entry(m.body).or_insert(0u32) += 1;
        }
        if qos == Qos::ExactlyOnce {
            nothing(sub, Duration::from_millis(200)).await?;
            if seen.values().any(|&n| n != 1) {
                return Err(format!("subscriber {k} got duplicates"));
            }
        }
    }
    Ok(format!(
        "{count} messages to 2 subscribers, all delivered{}",
        match qos {
            Qos::AtMostOnce => "",
            Qos::AtLeastOnce => ", all acknowledged",
            Qos::ExactlyOnce => " exactly once, all completed",
        }
    ))
}

/// A late subscriber gets the retained value; an expired one is never delivered.
pub async fn retained_and_ttl() -> Outcome {
    let nodes = mesh(2, fast_engine()).await?;
    let (a, b) = (&nodes[0].handle, &nodes[1].handle);
    let keep =
        PublishOptions { retain: true, ttl: Some(60), ..PublishOptions::qos(Qos::AtLeastOnce) };
    let short = PublishOptions { retain: true, ttl: Some(1), ..PublishOptions::default() };
    a.publish("cfg/setpoint", "21.5", keep).await.map_err(|e| e.to_string())?;
    a.publish("cfg/short", "stale", short).await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    let mut sub = b.subscribe("cfg/#").await.map_err(|e| e.to_string())?;
    let m = recv(&mut sub, Duration::from_secs(2)).await?;
    let rtt = t.elapsed();
    if m.channel != "cfg/setpoint" || !m.retained {
        return Err(format!("expected the retained setpoint, got {m:?}"));
    }
    nothing(&mut sub, Duration::from_millis(500))
        .await
        .map_err(|e| format!("expired retained value delivered: {e}"))?;
    Ok(format!("retained value after {rtt:?}; the value with a 1 s TTL was not delivered"))
}

/// Sniffs A's datagrams through a socket standing in for B's address, then replays,
/// tampers and forwards them to B.
pub async fn replay_and_tamper() -> Outcome {
    let ports = free_ports(2);
    let (pa, pb_real) = (ports[0], ports[1]);
    let tap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let tap_addr = tap.local_addr().map_err(|e| e.to_string())?;
    // A believes the tap is its peer; B's peer is A.
    let a = node(pa, vec![tap_addr], keyring(1), fast_engine()).await?;
    let b = node(pb_real, vec![pa], keyring(1), fast_engine()).await?;
    let mut sub = b.handle.subscribe("vault/#").await.map_err(|e| e.to_string())?;
    a.handle
        .publish("vault/door", "open", PublishOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    // Capture A's datagrams for a moment (heartbeats and the publish).
    let mut captured = Vec::new();
    let mut buf = [0u8; 2048];
    let end = Instant::now() + Duration::from_millis(400);
    while let Ok(Ok((n, _))) =
        timeout(end.saturating_duration_since(Instant::now()), tap.recv_from(&mut buf)).await
    {
        captured.push(buf[..n].to_vec());
    }
    let publish =
        captured.iter().find(|d| d.len() > 3 && d[3] == 0x01).ok_or("no PUBLISH captured")?.clone();
    // A sends from pa, so B sees the tap's forwarded copies as coming from the tap: B
    // must judge by session, not address. Forward once: delivered.
    tap.send_to(&publish, pb_real).await.map_err(|e| e.to_string())?;
    let m = recv(&mut sub, Duration::from_secs(2)).await?;
    if m.body != b"open" {
        return Err("forwarded publish not delivered".into());
    }
    let replays_before = drop_count(&b.handle, DropReason::Replay).await;
    for _ in 0..5 {
        tap.send_to(&publish, pb_real).await.map_err(|e| e.to_string())?;
    }
    nothing(&mut sub, Duration::from_millis(300))
        .await
        .map_err(|e| format!("replay accepted: {e}"))?;
    let replays = drop_count(&b.handle, DropReason::Replay).await - replays_before;
    let mut tampered = publish.clone();
    let last = tampered.len() - 40;
    tampered[last] ^= 0x01;
    let macs_before = drop_count(&b.handle, DropReason::BadMac).await;
    tap.send_to(&tampered, pb_real).await.map_err(|e| e.to_string())?;
    nothing(&mut sub, Duration::from_millis(300))
        .await
        .map_err(|e| format!("tampered packet accepted: {e}"))?;
    let bad = drop_count(&b.handle, DropReason::BadMac).await - macs_before;
    if replays != 5 || bad != 1 {
        return Err(format!(
            "expected 5 replay drops and 1 MAC failure, counted {replays} and {bad}"
        ));
    }
    Ok("5 replays dropped (Replay), 1 flipped bit dropped (BadMac)".into())
}

/// A node with another key: nothing accepted either way, its address locked out, other
/// peers unaffected.
pub async fn wrong_key_and_lockout() -> Outcome {
    let ports = free_ports(3);
    let (pa, pb, pw) = (ports[0], ports[1], ports[2]);
    let a = node(pa, vec![pb, pw], keyring(1), fast_engine()).await?;
    let b = node(pb, vec![pa, pw], keyring(1), fast_engine()).await?;
    let w = node(pw, vec![pa, pb], keyring(42), fast_engine()).await?;
    let mut sub_b = b.handle.subscribe("#").await.map_err(|e| e.to_string())?;
    let mut sub_w = w.handle.subscribe("#").await.map_err(|e| e.to_string())?;
    settle(&a.handle).await;
    for i in 0..10u8 {
        w.handle
            .publish("x", vec![i], PublishOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    a.handle.publish("ok", "fine", PublishOptions::default()).await.map_err(|e| e.to_string())?;
    let m = recv(&mut sub_b, Duration::from_secs(2)).await?;
    if m.channel != "ok" {
        return Err(format!("B accepted a message from the wrong key: {m:?}"));
    }
    nothing(&mut sub_b, Duration::from_millis(300)).await?;
    nothing(&mut sub_w, Duration::from_millis(100))
        .await
        .map_err(|e| format!("wrong-key node read: {e}"))?;
    let locked = drop_count(&b.handle, DropReason::LockedOut).await;
    let bad = drop_count(&b.handle, DropReason::BadMac).await;
    if locked == 0 {
        return Err(format!("no lockout after {bad} authentication failures"));
    }
    Ok(format!("{bad} MAC failures then lockout ({locked} datagrams ignored); A→B unaffected"))
}

/// A peer sending 10× the limit has the excess dropped and counted; others unaffected.
pub async fn rate_limit() -> Outcome {
    let ports = free_ports(3);
    let mut limited = fast_engine();
    limited.rate_limit = 100;
    let b = node(ports[1], vec![ports[0], ports[2]], keyring(1), limited).await?;
    let x = node(ports[0], vec![ports[1]], keyring(1), fast_engine()).await?;
    let y = node(ports[2], vec![ports[1]], keyring(1), fast_engine()).await?;
    let mut flood = b.handle.subscribe("flood").await.map_err(|e| e.to_string())?;
    let mut polite = b.handle.subscribe("polite").await.map_err(|e| e.to_string())?;
    settle(&x.handle).await;
    let t = Instant::now();
    for i in 0..1000u32 {
        x.handle
            .publish("flood", i.to_be_bytes().to_vec(), PublishOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        if i % 100 == 0 {
            y.handle
                .publish("polite", i.to_be_bytes().to_vec(), PublishOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let spent = t.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = 0;
    while timeout(Duration::from_millis(50), flood.recv()).await.is_ok_and(|m| m.is_some()) {
        got += 1;
    }
    let mut polite_got = 0;
    while timeout(Duration::from_millis(50), polite.recv()).await.is_ok_and(|m| m.is_some()) {
        polite_got += 1;
    }
    let dropped = drop_count(&b.handle, DropReason::RateLimited).await;
    let mut events = 0;
    let mut bev = b.events;
    while let Ok(e) = bev.try_recv() {
        events += usize::from(matches!(e, Event::RateLimited { .. }));
    }
    if dropped < 500 || polite_got != 10 || events == 0 {
        return Err(format!(
            "flood delivered {got}, dropped {dropped}, polite {polite_got}/10, events {events}"
        ));
    }
    Ok(format!(
        "1000 in {spent:?} at limit 100/s: {got} delivered, {dropped} dropped; polite peer 10/10"
    ))
}

/// A peer that stops is reported lost after the liveness timeout; a QoS 1 publish
/// waiting on it lists it as missing.
pub async fn liveness() -> Outcome {
    let mut nodes = mesh(3, fast_engine()).await?;
    for n in &nodes[1..] {
        let s = n.handle.subscribe("alive/#").await.map_err(|e| e.to_string())?;
        std::mem::forget(s);
    }
    settle(&nodes[0].handle).await;
    let gone = nodes.pop().ok_or("mesh")?;
    gone.handle.shutdown().await;
    let t = Instant::now();
    let d: Delivery = nodes[0]
        .handle
        .publish(
            "alive/x",
            "ping",
            PublishOptions { ttl: Some(30), ..PublishOptions::qos(Qos::AtLeastOnce) },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut lost_after = None;
    while let Ok(e) = nodes[0].events.try_recv() {
        if let Event::PeerLost { reason: LostReason::Silent, .. } = e {
            lost_after = Some(t.elapsed());
        }
    }
    if d.status != Status::Unacknowledged || d.missing.len() != 1 || d.acked.len() != 1 {
        return Err(format!("outcome {d:?}"));
    }
    let lost_after = lost_after.ok_or("no PeerLost event")?;
    Ok(format!(
        "peer lost after {lost_after:?} (timeout 1.5 s); publish resolved with it missing, the live peer acked"
    ))
}

/// Messages per second of QoS 0 publishes from A received by B, and QoS 1 completions/s.
pub async fn throughput(count: u32) -> Outcome {
    let nodes = mesh(2, fast_engine()).await?;
    let (a, b) = (&nodes[0].handle, &nodes[1].handle);
    let mut sub = b.subscribe("perf/#").await.map_err(|e| e.to_string())?;
    settle(a).await;
    let t = Instant::now();
    let sender = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut waiters = Vec::new();
            let mut i = 0u32;
            while i < count {
                match a
                    .start_publish("perf/q0", i.to_be_bytes().to_vec(), PublishOptions::default())
                    .await
                {
                    Ok(w) => {
                        waiters.push(w);
                        i += 1;
                    }
                    Err(HostError::Publish(nomq::node::PublishError::OutboxFull)) => {
                        tokio::task::yield_now().await
                    }
                    Err(e) => return Err(e.to_string()),
                }
                if waiters.len() >= 64 {
                    for w in waiters.drain(..) {
                        let _ = w.await;
                    }
                }
            }
            Ok(())
        })
    };
    let mut got = 0u32;
    while got < count {
        match timeout(Duration::from_millis(500), sub.recv()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    let q0 = t.elapsed();
    sender.await.map_err(|e| e.to_string())??;
    let n1 = (count / 10).max(10);
    let t = Instant::now();
    for i in 0..n1 {
        let d = a
            .publish("perf/q1", i.to_be_bytes().to_vec(), PublishOptions::qos(Qos::AtLeastOnce))
            .await
            .map_err(|e| e.to_string())?;
        if d.status != Status::Acknowledged {
            return Err(format!("QoS 1 message {i}: {d:?}"));
        }
    }
    let q1 = t.elapsed();
    if got < count * 9 / 10 {
        return Err(format!("only {got}/{count} QoS 0 messages arrived"));
    }
    Ok(format!(
        "QoS 0: {got}/{count} in {q0:.2?} ({:.0} msg/s); QoS 1 sequential: {n1} in {q1:.2?} ({:.0} round trips/s)",
        f64::from(got) / q0.as_secs_f64(),
        f64::from(n1) / q1.as_secs_f64()
    ))
}

/// QoS 1 and 2 guarantees over real sockets through a lossy relay.
pub async fn lossy(qos: Qos, count: u32, seed: u64, loss: f64) -> Outcome {
    let ports = free_ports(3);
    let cfg = RelayConfig {
        seed,
        loss,
        dup: 0.02,
        delay_min: Duration::from_micros(200),
        delay_jitter: Duration::from_millis(3),
        ..RelayConfig::default()
    };
    let (relay, proxies) = Relay::start(cfg, ports.clone()).await.map_err(|e| e.to_string())?;
    let mut engine = fast_engine();
    engine.max_attempts = 30;
    engine.default_ttl = 300;
    engine.liveness_timeout = nomq::Duration::from_secs(10);
    engine.qos2_window = 256;
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let peers = proxies.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| *a).collect();
        nodes.push(node(*p, peers, keyring(1), engine).await?);
    }
    let mut subs = Vec::new();
    for n in &nodes[1..] {
        subs.push(n.handle.subscribe("lossy/#").await.map_err(|e| e.to_string())?);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let a = nodes[0].handle.clone();
    let t = Instant::now();
    let publisher = tokio::spawn(async move {
        let mut waiters = Vec::new();
        let mut i = 0u32;
        while i < count {
            match a
                .start_publish("lossy/x", i.to_be_bytes().to_vec(), PublishOptions::qos(qos))
                .await
            {
                Ok(w) => {
                    waiters.push(w);
                    i += 1;
                }
                Err(HostError::Publish(nomq::node::PublishError::OutboxFull)) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut bad = Vec::new();
        for w in waiters {
            let d = w.await.map_err(|e| e.to_string())?;
            if d.status != Status::Acknowledged || d.acked.len() != 2 {
                bad.push(d);
            }
        }
        Ok(bad)
    });
    let mut counts = vec![HashMap::<u32, u32>::new(); subs.len()];
    for (k, sub) in subs.iter_mut().enumerate() {
        while counts[k].len() < count as usize {
            match timeout(Duration::from_secs(20), sub.recv()).await {
                Ok(Some(m)) if m.body.len() == 4 => {
                    let i = u32::from_be_bytes([m.body[0], m.body[1], m.body[2], m.body[3]]);
                    *counts[k].entry(i).or_insert(0) += 1;
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    }
    let bad = publisher.await.map_err(|e| e.to_string())??;
    let elapsed = t.elapsed();
    if qos == Qos::ExactlyOnce {
        for sub in &mut subs {
            if let Ok(Some(m)) = timeout(Duration::from_millis(200), sub.recv()).await {
                return Err(format!("late duplicate {:?}", m.body));
            }
        }
    }
    let stats = relay.stats();
    for (k, c) in counts.iter().enumerate() {
        if c.len() != count as usize {
            return Err(format!(
                "subscriber {k} got {}/{count} distinct messages; relay {stats}",
                c.len()
            ));
        }
        if qos == Qos::ExactlyOnce && c.values().any(|&n| n != 1) {
            return Err(format!("subscriber {k} got duplicates"));
        }
    }
    if !bad.is_empty() {
        return Err(format!("{} outcomes not acknowledged by both, first {:?}", bad.len(), bad[0]));
    }
    Ok(format!(
        "{count} msgs × 2 subscribers at {:.0}% loss in {elapsed:.1?}: all delivered{}, all acknowledged; relay {stats}",
        loss * 100.0,
        if qos == Qos::ExactlyOnce { " exactly once" } else { " (≥ once)" }
    ))
}
