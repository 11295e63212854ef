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

/// How long a scenario waits for something that must happen (a peer's subscription seen,
/// a message arriving, a counter moving) before it fails saying what never happened.
/// Generous on purpose: CI is a busy 2-core machine. Latency is measured and reported,
/// not asserted.
pub const WAIT: Duration = Duration::from_secs(10);

/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(10);

/// How often a set of nodes is started again on fresh ports when another process took
/// one of the picked ports first.
pub const BIND_TRIES: usize = 5;

/// Picks `n` distinct free loopback ports: binds `n` sockets to port 0 together, reads
/// their ports and releases them.
///
/// Only for what cannot bind first and report its address: a picked port can be taken
/// by another process before it is bound again, so bind it at once and retry on
/// `EADDRINUSE` ([`start_nodes`] does).
pub fn pick_ports(n: usize) -> Vec<SocketAddr> {
    let socks: Vec<UdpSocket> =
        (0..n).filter_map(|_| UdpSocket::bind("127.0.0.1:0").ok()).collect();
    socks.iter().filter_map(|s| s.local_addr().ok()).collect()
}

/// Whether a start failed because the port is taken (worth a retry on other ports).
#[must_use]
pub fn addr_in_use(e: &HostError) -> bool {
    matches!(e, HostError::Network { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
}

/// One node under test with its event stream.
pub struct TestNode {
    /// The node.
    pub handle: Handle,
    /// Peer and security events.
    pub events: mpsc::Receiver<NodeEvent>,
}

/// Starts a node on `bind` with static `peers`, keeping the host's error (to tell a
/// taken port, [`addr_in_use`], from other failures).
///
/// # Errors
/// Host errors.
pub async fn start_node(
    bind: SocketAddr,
    peers: Vec<SocketAddr>,
    ring: Ring,
    engine: nomq::Config,
) -> Result<TestNode, HostError> {
    let (tx, events) = mpsc::channel(1024);
    let handle =
        NodeBuilder::new(ring).engine(engine).bind(bind).peers(peers).events(tx).start().await?;
    Ok(TestNode { handle, events })
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
    start_node(bind, peers, ring, engine).await.map_err(|e| format!("node on {bind}: {e}"))
}

/// One node of [`start_nodes`]: its engine, its key (as [`keyring`] takes it) and the
/// indices of its static peers among the nodes.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Engine settings.
    pub engine: nomq::Config,
    /// The key byte of [`keyring`].
    pub key: u8,
    /// Indices of its static peers.
    pub peers: Vec<usize>,
}

/// Starts nodes on 127.0.0.1 whose static peers are each other.
///
/// Their ports are picked, not bound to port 0 and read back: a node's fan-out list is
/// fixed when it starts and `NodeBuilder` binds its own socket, so nodes that are each
/// other's peers must know each other's ports before any of them binds. Each picked
/// port is bound right away; if another process took one in between (`EADDRINUSE`),
/// the nodes started so far are shut down and the set starts again on fresh ports, up to
/// [`BIND_TRIES`] times.
///
/// # Errors
/// Host errors other than a taken port, as text; ports taken on every try.
pub async fn start_nodes(specs: &[Spec]) -> Result<Vec<TestNode>, String> {
    let mut last = String::new();
    for _ in 0..BIND_TRIES {
        let ports = pick_ports(specs.len());
        if ports.len() != specs.len() {
            return Err(format!("cannot find {} free loopback ports", specs.len()));
        }
        let mut nodes = Vec::new();
        let mut taken = None;
        for (i, s) in specs.iter().enumerate() {
            let peers = s.peers.iter().map(|&j| ports[j]).collect();
            match start_node(ports[i], peers, keyring(s.key), s.engine).await {
                Ok(n) => nodes.push(n),
                Err(e) if addr_in_use(&e) => {
                    taken = Some(format!("{}: {e}", ports[i]));
                    break;
                }
                Err(e) => return Err(format!("node on {}: {e}", ports[i])),
            }
        }
        let Some(e) = taken else { return Ok(nodes) };
        for n in &nodes {
            n.handle.shutdown().await;
        }
        last = e;
    }
    Err(format!(
        "picked ports kept being taken by other processes ({BIND_TRIES} tries, last {last})"
    ))
}

/// A full mesh of `n` nodes on 127.0.0.1.
///
/// # Errors
/// Host errors, as text.
pub async fn mesh(n: usize, engine: nomq::Config) -> Result<Vec<TestNode>, String> {
    let specs: Vec<Spec> = (0..n)
        .map(|i| Spec { engine, key: 1, peers: (0..n).filter(|&j| j != i).collect() })
        .collect();
    start_nodes(&specs).await
}

/// Shuts every node down (a scenario's nodes must not keep heartbeating to ports a later
/// scenario may get).
async fn shutdown_all(nodes: &[TestNode]) {
    for n in nodes {
        n.handle.shutdown().await;
    }
}

/// Polls `cond` every [`POLL`] until it holds and returns how long that took, or fails
/// with `what never happened` after `within`.
///
/// # Errors
/// `cond`'s own error; `"{what} within {within:?}"` at the deadline.
pub async fn wait_until<F, Fut>(
    within: Duration,
    what: impl FnOnce() -> String,
    mut cond: F,
) -> Result<Duration, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let t = Instant::now();
    loop {
        if cond().await? {
            return Ok(t.elapsed());
        }
        if t.elapsed() >= within {
            return Err(format!("{} within {within:?}", what()));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `publisher` (called `who`) knows `n` subscribers to `channel`, as
/// subscribers (called `by`) to `pattern` announced themselves.
async fn subscribed(
    publisher: &Handle,
    who: &str,
    n: usize,
    channel: &str,
    by: &str,
    pattern: &str,
) -> Result<Duration, String> {
    let t = Instant::now();
    match publisher.wait_for_subscribers(channel, n, WAIT).await.map_err(|e| e.to_string())? {
        Some(_) => Ok(t.elapsed()),
        None => {
            let seen = publisher.subscribers(channel).await.map_or(0, |s| s.len());
            let peers = publisher.peers().await.map_or(0, |p| p.len());
            Err(format!(
                "{who} never saw {by}'s subscription to '{pattern}' within {WAIT:?} ({seen} of {n} subscribers to '{channel}', {peers} peers known)"
            ))
        }
    }
}

async fn recv(sub: &mut Subscription, within: Duration) -> Result<nomq_host::Message, String> {
    timeout(within, sub.recv())
        .await
        .map_err(|_| format!("nothing arrived on '{}' within {within:?}", sub.pattern()))?
        .ok_or_else(|| "node stopped".to_string())
}

/// A negative check: nothing arrives on `sub` for `within` (the window is the test).
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

async fn drop_count(h: &Handle, r: DropReason) -> u64 {
    h.stats().await.map(|s| s.engine.drops(r)).unwrap_or(0)
}

/// Waits until `h`'s (called `who`) drop counter for `r` is at least `n`, and returns it.
async fn drops_reach(h: &Handle, who: &str, r: DropReason, n: u64) -> Result<u64, String> {
    let end = Instant::now() + WAIT;
    loop {
        let seen = drop_count(h, r).await;
        if seen >= n {
            return Ok(seen);
        }
        if Instant::now() >= end {
            return Err(format!(
                "{who}'s {} drops reached {seen}, not {n}, within {WAIT:?}",
                r.name()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
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
    let r = subscribe_unsubscribe_on(&nodes[0].handle, &nodes[1].handle).await;
    shutdown_all(&nodes).await;
    r
}

async fn subscribe_unsubscribe_on(a: &Handle, b: &Handle) -> Outcome {
    let mut sub = b.subscribe("room/+/temp").await.map_err(|e| e.to_string())?;
    let seen = subscribed(a, "a", 1, "room/kitchen/temp", "b", "room/+/temp").await?;
    a.publish("room/kitchen/temp", "20.5", PublishOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let m = recv(&mut sub, WAIT).await?;
    if m.channel != "room/kitchen/temp" || m.body != b"20.5"[..] {
        return Err(format!("wrong message {m:?}"));
    }
    a.publish("room/kitchen/humidity", "40", PublishOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    // Negative check: the non-matching channel must not arrive (the window is the test).
    nothing(&mut sub, Duration::from_millis(300)).await?;
    drop(sub);
    let gone = wait_until(
        WAIT,
        || {
            "a still lists b as a subscriber to 'room/kitchen/temp' after b dropped its \
             'room/+/temp' subscription"
                .to_string()
        },
        move || async move {
            Ok(a.subscribers("room/kitchen/temp").await.map_err(|e| e.to_string())?.is_empty())
        },
    )
    .await;
    let gone = match gone {
        Ok(d) => d,
        Err(e) => {
            // Tell a lost announcement from a subscription b still holds: b's heartbeats
            // carry how many patterns it subscribes to.
            let counts: Vec<String> = a
                .peers()
                .await
                .map(|p| p.iter().map(|p| p.subscriptions.to_string()).collect())
                .unwrap_or_default();
            return Err(format!(
                "{e}; b's heartbeats still announce {} subscription(s)",
                counts.join("/")
            ));
        }
    };
    let d = a
        .publish("room/kitchen/temp", "21", PublishOptions::qos(Qos::AtLeastOnce))
        .await
        .map_err(|e| e.to_string())?;
    if d.status != Status::NoSubscribers {
        return Err(format!("after unsubscribe the publisher still saw a subscriber: {d:?}"));
    }
    Ok(format!(
        "wildcard match, non-match ignored, unsubscribe announced (subscription seen after {seen:.1?}, unsubscription after {gone:.1?})"
    ))
}

/// QoS 0, 1 and 2 between three nodes.
pub async fn qos_levels(qos: Qos, count: u32) -> Outcome {
    let nodes = mesh(3, fast_engine()).await?;
    let r = qos_levels_on(&nodes, qos, count).await;
    shutdown_all(&nodes).await;
    r
}

async fn qos_levels_on(nodes: &[TestNode], qos: Qos, count: u32) -> Outcome {
    let a = &nodes[0].handle;
    let mut subs = Vec::new();
    for n in &nodes[1..] {
        subs.push(n.handle.subscribe("plant/#").await.map_err(|e| e.to_string())?);
    }
    subscribed(a, "a", 2, "plant/line1", "b and c", "plant/#").await?;
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
            let m = recv(sub, WAIT).await.map_err(|e| {
                format!("subscriber {k}: {e} ({} of {count} distinct so far)", seen.len())
            })?;
            *seen.entry(m.body).or_insert(0u32) += 1;
        }
        if qos == Qos::ExactlyOnce {
            // Negative check: no late duplicate (the window is the test).
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
    let r = retained_and_ttl_on(&nodes[0].handle, &nodes[1].handle).await;
    shutdown_all(&nodes).await;
    r
}

async fn retained_and_ttl_on(a: &Handle, b: &Handle) -> Outcome {
    let keep =
        PublishOptions { retain: true, ttl: Some(60), ..PublishOptions::qos(Qos::AtLeastOnce) };
    let short = PublishOptions { retain: true, ttl: Some(1), ..PublishOptions::default() };
    a.publish("cfg/setpoint", "21.5", keep).await.map_err(|e| e.to_string())?;
    a.publish("cfg/short", "stale", short).await.map_err(|e| e.to_string())?;
    // The engine stamped the value before the publish returned: its expiry is at most
    // now + TTL (monotonic: publish time + TTL).
    let stored = Instant::now();
    // The test itself: wait past the 1 s TTL so the short retained value has expired.
    // Sleeping longer under load only makes it more expired.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(stored.elapsed())).await;
    let t = Instant::now();
    let mut sub = b.subscribe("cfg/#").await.map_err(|e| e.to_string())?;
    let m = recv(&mut sub, WAIT).await.map_err(|e| format!("late joiner b: {e}"))?;
    let rtt = t.elapsed();
    if m.channel != "cfg/setpoint" || !m.retained {
        return Err(format!("expected the retained setpoint, got {m:?}"));
    }
    // Negative check: the expired value must not follow (the window is the test).
    nothing(&mut sub, Duration::from_millis(500))
        .await
        .map_err(|e| format!("expired retained value delivered: {e}"))?;
    Ok(format!("retained value after {rtt:?}; the value with a 1 s TTL was not delivered"))
}

/// Sniffs A's datagrams through a socket standing in for B's address, then replays,
/// tampers and forwards them to B.
pub async fn replay_and_tamper() -> Outcome {
    let tap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let tap_addr = tap.local_addr().map_err(|e| e.to_string())?;
    let lo: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    // A believes the tap is its peer; B's peer is A. Both bind port 0: nobody needs
    // B's address before it is bound but the tap, which reads it from B's handle.
    let a = node(lo, vec![tap_addr], keyring(1), fast_engine()).await?;
    let pa = a.handle.local_addr();
    let b = node(lo, vec![pa], keyring(1), fast_engine()).await?;
    let r = replay_and_tamper_on(&tap, &a, &b).await;
    shutdown_all(&[a, b]).await;
    r
}

async fn replay_and_tamper_on(tap: &tokio::net::UdpSocket, a: &TestNode, b: &TestNode) -> Outcome {
    let pb_real = b.handle.local_addr();
    let mut sub = b.handle.subscribe("vault/#").await.map_err(|e| e.to_string())?;
    // B accepts nothing from a session that has not answered its challenge: let the
    // two meet first (B's heartbeat reaches A directly; A's challenge and B's echo too).
    subscribed(&a.handle, "a", 1, "vault/door", "b", "vault/#").await?;
    let b_knows_a = || async { Ok(b.handle.peers().await.map_err(|e| e.to_string())?.len() == 1) };
    wait_until(WAIT, || "b never verified a".into(), b_knows_a).await?;
    a.handle
        .publish("vault/door", "open", PublishOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    // Capture A's datagrams (heartbeats and the publish) until the PUBLISH shows up.
    let mut buf = vec![0u8; 65_536];
    let end = Instant::now() + WAIT;
    let mut captured = 0;
    let publish = loop {
        let left = end.saturating_duration_since(Instant::now());
        match timeout(left, tap.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                captured += 1;
                if n > 3 && buf[3] == 0x01 {
                    break buf[..n].to_vec();
                }
            }
            Ok(Err(e)) => return Err(format!("tap socket: {e}")),
            Err(_) => {
                return Err(format!(
                    "the tap captured no PUBLISH from a within {WAIT:?} ({captured} other datagrams)"
                ));
            }
        }
    };
    // A sends from pa, so B sees the tap's forwarded copies as coming from the tap: B
    // must judge by session, not address. Forward once: delivered.
    tap.send_to(&publish, pb_real).await.map_err(|e| e.to_string())?;
    let m = recv(&mut sub, WAIT).await.map_err(|e| format!("forwarded publish: {e}"))?;
    if m.body != b"open"[..] {
        return Err("forwarded publish not delivered".into());
    }
    let replays_before = drop_count(&b.handle, DropReason::Replay).await;
    for _ in 0..5 {
        tap.send_to(&publish, pb_real).await.map_err(|e| e.to_string())?;
    }
    // Negative check: no replay delivered (the window is the test).
    nothing(&mut sub, Duration::from_millis(300))
        .await
        .map_err(|e| format!("replay accepted: {e}"))?;
    // Every copy must be counted; wait for B to have handled all five.
    let replays = drops_reach(&b.handle, "b", DropReason::Replay, replays_before + 5)
        .await
        .map_err(|e| format!("5 replays sent: {e}"))?
        - replays_before;
    let mut tampered = publish.clone();
    let last = tampered.len() - 40;
    tampered[last] ^= 0x01;
    let macs_before = drop_count(&b.handle, DropReason::BadMac).await;
    tap.send_to(&tampered, pb_real).await.map_err(|e| e.to_string())?;
    nothing(&mut sub, Duration::from_millis(300))
        .await
        .map_err(|e| format!("tampered packet accepted: {e}"))?;
    let bad = drops_reach(&b.handle, "b", DropReason::BadMac, macs_before + 1)
        .await
        .map_err(|e| format!("1 tampered datagram sent: {e}"))?
        - macs_before;
    // Read the replay count again: more than five (anything else counted as a replay)
    // must still fail.
    let replays = replays.max(drop_count(&b.handle, DropReason::Replay).await - replays_before);
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
    let e = fast_engine();
    let nodes = start_nodes(&[
        Spec { engine: e, key: 1, peers: vec![1, 2] },
        Spec { engine: e, key: 1, peers: vec![0, 2] },
        Spec { engine: e, key: 42, peers: vec![0, 1] },
    ])
    .await?;
    let r = wrong_key_on(&nodes[0].handle, &nodes[1].handle, &nodes[2].handle).await;
    shutdown_all(&nodes).await;
    r
}

async fn wrong_key_on(a: &Handle, b: &Handle, w: &Handle) -> Outcome {
    let mut sub_b = b.subscribe("#").await.map_err(|e| e.to_string())?;
    let mut sub_w = w.subscribe("#").await.map_err(|e| e.to_string())?;
    subscribed(a, "a", 1, "ok", "b", "#").await?;
    for i in 0..10u8 {
        w.publish("x", vec![i], PublishOptions::default()).await.map_err(|e| e.to_string())?;
    }
    a.publish("ok", "fine", PublishOptions::default()).await.map_err(|e| e.to_string())?;
    let m = recv(&mut sub_b, WAIT).await?;
    if m.channel != "ok" {
        return Err(format!("B accepted a message from the wrong key: {m:?}"));
    }
    // Negative checks: nothing else reaches B, nothing reaches W (the windows are the test).
    nothing(&mut sub_b, Duration::from_millis(300)).await?;
    nothing(&mut sub_w, Duration::from_millis(100))
        .await
        .map_err(|e| format!("wrong-key node read: {e}"))?;
    // W keeps sending (heartbeats); B must lock its address out after the failures.
    let locked = drops_reach(b, "b", DropReason::LockedOut, 1)
        .await
        .map_err(|e| format!("no lockout of the wrong-key node: {e}"))?;
    let bad = drop_count(b, DropReason::BadMac).await;
    Ok(format!("{bad} MAC failures then lockout ({locked} datagrams ignored); A→B unaffected"))
}

/// A peer sending 10× the limit has the excess dropped and counted; others unaffected.
pub async fn rate_limit() -> Outcome {
    let mut limited = fast_engine();
    limited.rate_limit = 100;
    // x (0) and y (2) reach b (1) only.
    let mut nodes = start_nodes(&[
        Spec { engine: fast_engine(), key: 1, peers: vec![1] },
        Spec { engine: limited, key: 1, peers: vec![0, 2] },
        Spec { engine: fast_engine(), key: 1, peers: vec![1] },
    ])
    .await?;
    let y = nodes.pop().ok_or("nodes")?;
    let b = nodes.pop().ok_or("nodes")?;
    let x = nodes.pop().ok_or("nodes")?;
    let handles = [x.handle.clone(), b.handle.clone(), y.handle.clone()];
    let r = rate_limit_on(&x.handle, b, &y.handle).await;
    for h in &handles {
        h.shutdown().await;
    }
    r
}

async fn rate_limit_on(x: &Handle, b: TestNode, y: &Handle) -> Outcome {
    let mut flood = b.handle.subscribe("flood").await.map_err(|e| e.to_string())?;
    let mut polite = b.handle.subscribe("polite").await.map_err(|e| e.to_string())?;
    subscribed(x, "x", 1, "flood", "b", "flood").await?;
    subscribed(y, "y", 1, "polite", "b", "polite").await?;
    let t = Instant::now();
    for i in 0..1000u32 {
        x.publish("flood", i.to_be_bytes().to_vec(), PublishOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        if i % 100 == 0 {
            y.publish("polite", i.to_be_bytes().to_vec(), PublishOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            // Pacing, part of the test: spreads the polite peer's ten messages over
            // the flood.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let spent = t.elapsed();
    // All ten polite messages must arrive; the flood keeps arriving meanwhile.
    let end = Instant::now() + WAIT;
    let (mut got, mut polite_got) = (0u32, 0u32);
    while polite_got < 10 {
        tokio::select! {
            m = flood.recv() => {
                if m.is_none() { return Err("node b stopped".into()) }
                got += 1;
            }
            m = polite.recv() => {
                if m.is_none() { return Err("node b stopped".into()) }
                polite_got += 1;
            }
            () = tokio::time::sleep_until(end.into()) => break,
        }
    }
    // What is left of the flood (a short quiet gap ends it: only reported, not asserted).
    while timeout(Duration::from_millis(50), flood.recv()).await.is_ok_and(|m| m.is_some()) {
        got += 1;
    }
    // Every flood datagram B did not deliver must be counted as rate-limited.
    let dropped = match drops_reach(&b.handle, "b", DropReason::RateLimited, 500).await {
        Ok(n) => n,
        Err(_) => drop_count(&b.handle, DropReason::RateLimited).await,
    };
    let mut events = 0;
    let mut bev = b.events;
    while let Ok(e) = bev.try_recv() {
        events += usize::from(matches!(e, Event::RateLimited { .. }));
    }
    if dropped < 500 || polite_got != 10 || events == 0 {
        return Err(format!(
            "1000 sent in {spent:?}: flood delivered {got}, dropped {dropped}, polite {polite_got}/10 (waited up to {WAIT:?}), events {events}"
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
    let r = liveness_on(&mut nodes).await;
    shutdown_all(&nodes).await;
    r
}

async fn liveness_on(nodes: &mut Vec<TestNode>) -> Outcome {
    let mut keep = Vec::new();
    for n in &nodes[1..] {
        keep.push(n.handle.subscribe("alive/#").await.map_err(|e| e.to_string())?);
    }
    subscribed(&nodes[0].handle, "a", 2, "alive/x", "b and c", "alive/#").await?;
    let gone = nodes.pop().ok_or("mesh")?;
    // The test itself: c stops and stays silent past the liveness timeout.
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
    if d.status != Status::Unacknowledged || d.missing.len() != 1 || d.acked.len() != 1 {
        return Err(format!("outcome {d:?}"));
    }
    // The PeerLost event may be handed over just after the outcome: wait for it.
    let end = Instant::now() + WAIT;
    let lost_after = loop {
        match tokio::time::timeout_at(end.into(), nodes[0].events.recv()).await {
            Ok(Some(Event::PeerLost { reason: LostReason::Silent, .. })) => break t.elapsed(),
            Ok(Some(_)) => {}
            Ok(None) => return Err("a's event stream closed".into()),
            Err(_) => {
                return Err(format!(
                    "a never reported the stopped peer lost (PeerLost, Silent) within {WAIT:?} of the outcome"
                ));
            }
        }
    };
    drop(keep);
    Ok(format!(
        "peer lost after {lost_after:?} (timeout 1.5 s); publish resolved with it missing, the live peer acked"
    ))
}

/// Messages per second of QoS 0 publishes from A received by B, and QoS 1 completions/s.
pub async fn throughput(count: u32) -> Outcome {
    let nodes = mesh(2, fast_engine()).await?;
    let r = throughput_on(&nodes[0].handle, &nodes[1].handle, count).await;
    shutdown_all(&nodes).await;
    r
}

/// After the sender is done, QoS 0 messages still missing count as lost once none has
/// arrived for this long (QoS 0 may be lost; this only ends the count).
const QOS0_QUIET: Duration = Duration::from_secs(2);

async fn throughput_on(a: &Handle, b: &Handle, count: u32) -> Outcome {
    let mut sub = b.subscribe("perf/#").await.map_err(|e| e.to_string())?;
    subscribed(a, "a", 1, "perf/q1", "b", "perf/#").await?;
    let t = Instant::now();
    let mut sender = {
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
    // Receive until all arrived, or the sender is done and nothing arrived for
    // QOS0_QUIET; bounded in total.
    let end = Instant::now() + WAIT * 6;
    let mut got = 0u32;
    let mut sent: Option<Result<(), String>> = None;
    let mut last = Instant::now();
    while got < count && Instant::now() < end {
        if sent.is_some() && last.elapsed() >= QOS0_QUIET {
            break;
        }
        tokio::select! {
            m = sub.recv() => match m {
                Some(_) => {
                    got += 1;
                    last = Instant::now();
                }
                None => return Err("node b stopped".into()),
            },
            r = &mut sender, if sent.is_none() => {
                sent = Some(r.map_err(|e| e.to_string()).and_then(|r| r));
                last = last.max(Instant::now());
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let q0 = t.elapsed();
    match sent {
        Some(r) => r?,
        None => sender.await.map_err(|e| e.to_string())??,
    }
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
    let cfg = RelayConfig {
        seed,
        loss,
        dup: 0.02,
        delay_min: Duration::from_micros(200),
        delay_jitter: Duration::from_millis(3),
        ..RelayConfig::default()
    };
    // The relay's proxies bind first; the nodes bind port 0 with the proxies as peers; the
    // relay then learns the nodes' addresses. Every socket is bound once.
    let bound = Relay::bind(cfg, 3).await.map_err(|e| format!("relay: {e}"))?;
    let proxies = bound.proxies().to_vec();
    let mut engine = fast_engine();
    engine.max_attempts = 30;
    engine.default_ttl = 300;
    engine.liveness_timeout = nomq::Duration::from_secs(10);
    engine.qos2_window = 256;
    let lo: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    let mut nodes = Vec::new();
    for i in 0..proxies.len() {
        let peers = proxies.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| *a).collect();
        nodes.push(node(lo, peers, keyring(1), engine).await?);
    }
    let relay = bound
        .start(nodes.iter().map(|n| n.handle.local_addr()).collect())
        .map_err(|e| format!("relay: {e}"))?;
    let r = lossy_on(&relay, &nodes, qos, count, loss).await;
    shutdown_all(&nodes).await;
    r
}

async fn lossy_on(relay: &Relay, nodes: &[TestNode], qos: Qos, count: u32, loss: f64) -> Outcome {
    let mut subs = Vec::new();
    for n in &nodes[1..] {
        subs.push(n.handle.subscribe("lossy/#").await.map_err(|e| e.to_string())?);
    }
    subscribed(&nodes[0].handle, "a", 2, "lossy/x", "b and c", "lossy/#")
        .await
        .map_err(|e| format!("{e}; relay {}", relay.stats()))?;
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
                    // Back-off while the outbox drains (acknowledgements free it).
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
        // Negative check: no late duplicate (the window is the test).
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
