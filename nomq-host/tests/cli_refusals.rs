//! Issue 9, items 9, 10 and 12: `nomq sub` says why it refused datagrams (wrong keyring,
//! a sender's clock off), `--unsynced-clock` accepts packets from a sender without a
//! synced clock, and `--json` carries what a consumer needs to de-duplicate.

mod cli_support;

use cli_support::*;
use nomq::node::{Destination, PublishOptions};
use nomq::{Instant as CoreInstant, Qos};
use nomq_host::{HOST_CHANNEL_KEYS, HostNode};
use std::net::{SocketAddr, UdpSocket};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DAY: u32 = 86_400;

/// A sender whose wall clock reads `behind` seconds ago: a core node in this process, its
/// packets sealed with the keyring in `keys` and sent from a plain UDP socket.
struct OldClockSender {
    node: Box<HostNode>,
    socket: UdpSocket,
    started: Instant,
}

impl OldClockSender {
    fn new(keys: &str, behind: u32) -> Self {
        let ring = nomq_keys::KeyringFile::load(keys).unwrap().keyring;
        let ring = ring.to_core::<HOST_CHANNEL_KEYS>().unwrap();
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let then = u32::try_from(unix).unwrap() - behind;
        let mut seed = [7u8; 32];
        seed[0] = std::process::id() as u8;
        // A device without a synced clock: it does not judge others' timestamps.
        let mut config = nomq::Config::default();
        config.clock = nomq::node::ClockMode::Unsynced;
        let node = HostNode::new(config, ring, seed, CoreInstant::ZERO, then);
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        Self { node: Box::new(node), socket, started: Instant::now() }
    }

    /// Handles what arrived (challenges from the subscriber, which it answers).
    fn receive(&mut self) {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            let now = self.now();
            self.node.handle_datagram(now, from.into(), &mut buf[..n], |_| true);
        }
    }

    /// Publishes on a channel `to` does not subscribe to, answering its challenges,
    /// until `to` has proved itself live to us (by then we have to it, too).
    fn meet(&mut self, to: SocketAddr) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.node.peers().count() == 0 {
            assert!(Instant::now() < end, "no handshake with {to} in 10 s");
            let _ = self.publish(to, "warm/up", "");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn now(&self) -> CoreInstant {
        CoreInstant::from_micros(self.started.elapsed().as_micros() as u64)
    }

    /// Publishes one QoS 0 message and sends everything queued to `to`; returns the
    /// datagrams sent.
    fn publish(&mut self, to: SocketAddr, channel: &str, body: &str) -> Vec<Vec<u8>> {
        let opts = PublishOptions {
            qos: Qos::AtMostOnce,
            ttl: Some(60),
            destination: Destination::All,
            ..PublishOptions::default()
        };
        self.receive();
        let now = self.now();
        self.node.publish(now, channel, body.as_bytes(), opts).unwrap();
        let mut buf = vec![0u8; self.node.max_datagram_len()];
        let mut sent = Vec::new();
        for _ in 0..64 {
            let Some(t) = self.node.poll_transmit(now, &mut buf) else { break };
            self.socket.send_to(&buf[..t.len], to).unwrap();
            sent.push(buf[..t.len].to_vec());
        }
        sent
    }
}

/// Publishes from the day-old sender every 200 ms until `sub` exits (at most 15 s).
fn feed_until_exit(
    sender: &mut OldClockSender,
    mut sub: Child,
    to: SocketAddr,
) -> std::process::Output {
    let end = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while sub.try_wait().unwrap().is_none() {
        if Instant::now() >= end {
            let _ = sub.kill();
            panic!("nomq sub still running after 15 s");
        }
        let _ = sender.publish(to, "sensor/c3/reading", &format!("seq={n}"));
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    finish(sub, Duration::from_secs(1))
}

/// Ends a child of this test (by its own handle, never by name).
fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A sender with another keyring: the subscriber's -W timeout prints the BadMac total
/// with its hint; with --refusals, running summaries came before.
#[test]
fn wrong_keyring_total_and_hint_on_timeout() {
    let dir = Scratch::new("badmac");
    let (ka, kb) = (dir.keys("a.json"), dir.keys("b.json"));
    let [p1, p2] = ports::<2>();
    let sub = spawn(
        &dir,
        &["sub", "-c", "factory/#", "--bind", &s(&p1), "--peer", &s(&p2), "--keys", &ka]
            .into_iter()
            .chain(["-W", "4", "--refusals"])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    let (code, _, stderr) = outcome(&run(
        &dir,
        &["pub", "-c", "factory/line1", "-m", "hi", "--bind", &s(&p2), "--peer", &s(&p1)]
            .into_iter()
            .chain(["--keys", &kb])
            .collect::<Vec<_>>(),
    ));
    assert_eq!(code, Some(0), "QoS 0 is sent, not confirmed: {stderr}");
    let (code, stdout, stderr) = outcome(&finish(sub, Duration::from_secs(15)));
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("refused so far: ") && stderr.contains(" BadMac"), "{stderr}");
    let total = stderr
        .lines()
        .find(|l| l.contains("refused as BadMac: "))
        .unwrap_or_else(|| panic!("no BadMac total: {stderr}"));
    let n: u64 = total.split(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2, "the heartbeat and the publish at least: {total}");
    assert!(total.contains("wrong keyring?") && total.contains("nomq keys show"), "{total}");
    assert!(stderr.contains("timed out after 4 s"), "{stderr}");
}

/// A QoS 1 publisher with another keyring exits 1 and prints the totals too.
#[test]
fn failed_delivery_prints_refusal_totals() {
    let dir = Scratch::new("pubtotals");
    let (ka, kb) = (dir.keys("a.json"), dir.keys("b.json"));
    let [p1, p2] = ports::<2>();
    // Heartbeats every 200 ms: the publisher hears (and refuses) some while it waits.
    let sub = nomq(
        &dir,
        &["sub", "-c", "a/#", "--bind", &s(&p1), "--peer", &s(&p2), "--keys", &ka, "-W", "8"],
    )
    .env("NOMQ_HEARTBEAT_MS", "200")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    until_bound(p1);
    let (code, _, stderr) = outcome(&run(
        &dir,
        &["pub", "-c", "a/b", "-m", "hi", "-q", "1", "--ttl", "1.5", "--bind", &s(&p2)]
            .into_iter()
            .chain(["--peer", &s(&p1), "--keys", &kb, "--wait-ms", "3000"])
            .collect::<Vec<_>>(),
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("refused as BadMac: ") && stderr.contains("wrong keyring?"),
        "{stderr}"
    );
    // Done with it: no need to wait for its -W.
    stop(sub);
}

/// A sender whose clock is a day behind: refused as Stale, with the --unsynced-clock
/// hint; with --unsynced-clock its readings are printed.
#[test]
fn stale_clock_refused_by_default_accepted_with_unsynced_clock() {
    let dir = Scratch::new("stale");
    let keys = dir.keys("k.json");
    let mut sender = OldClockSender::new(&keys, DAY);
    let [p1] = ports::<1>();
    let peer = s(&sender.socket.local_addr().unwrap());
    let base = ["sub", "-c", "sensor/#", "--bind", &s(&p1), "--peer", &peer, "--keys", &keys];

    let sub = spawn(&dir, &base.into_iter().chain(["-W", "2"]).collect::<Vec<_>>());
    until_bound(p1);
    let (code, stdout, stderr) = outcome(&feed_until_exit(&mut sender, sub, p1));
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout, "", "nothing stale is printed");
    let line = stderr
        .lines()
        .find(|l| l.contains("refused as Stale: "))
        .unwrap_or_else(|| panic!("no Stale total: {stderr}"));
    assert!(
        line.contains("differs from ours by more than 30 s") && line.contains("--unsynced-clock"),
        "{line}"
    );

    for how in ["flag", "env"] {
        let args: Vec<&str> = base.into_iter().chain(["-v", "-C", "1", "-W", "10"]).collect();
        let mut c = nomq(&dir, &args);
        match how {
            "flag" => c.arg("--unsynced-clock"),
            _ => c.env("NOMQ_UNSYNCED_CLOCK", "1"),
        };
        let sub = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        until_bound(p1);
        let (code, stdout, stderr) = outcome(&feed_until_exit(&mut sender, sub, p1));
        assert_eq!(code, Some(0), "{how}: {stderr}");
        assert!(stdout.starts_with("sensor/c3/reading seq="), "{how}: {stdout}");
    }
}

/// `--json` carries the message id, QoS, flags, sender and receive time.
#[test]
fn json_has_message_id_and_receive_time() {
    let dir = Scratch::new("json");
    let keys = dir.keys("k.json");
    let [p1, p2] = ports::<2>();
    let sub = spawn(
        &dir,
        &["sub", "-c", "a/#", "--json", "--bind", &s(&p1), "--peer", &s(&p2), "--keys", &keys]
            .into_iter()
            .chain(["-C", "1", "-W", "10"])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let (code, _, stderr) = outcome(&run(
        &dir,
        &["pub", "-c", "a/b", "-m", "21.5", "-q", "1", "-r", "--keys", &keys, "--bind", &s(&p2)]
            .into_iter()
            .chain(["--peer", &s(&p1)])
            .collect::<Vec<_>>(),
    ));
    assert_eq!(code, Some(0), "pub: {stderr}");
    let (code, stdout, stderr) = outcome(&finish(sub, Duration::from_secs(15)));
    assert_eq!(code, Some(0), "sub: {stderr}");
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["channel"], "a/b");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["from"], s(&p2));
    assert!(v["retained"].is_boolean() && v["dup"].is_boolean(), "{v}");
    let session = v["id"]["session"].as_str().unwrap();
    assert_eq!(session.len(), 8, "hex session: {v}");
    assert!(u32::from_str_radix(session, 16).unwrap() != 0);
    assert!(v["id"]["packet_id"].as_u64().unwrap() >= 1, "{v}");
    let received = v["received"].as_f64().unwrap();
    assert!(
        before - 1.0 <= received && received <= after + 1.0,
        "{received} not in {before}..{after}"
    );
}

/// `nomq pub --refusals` (or `NOMQ_REFUSALS=1`) reports refusals as they happen (here
/// while it lingers).
#[test]
fn pub_verbose_reports_refusals() {
    let dir = Scratch::new("pubverbose");
    let (ka, kb) = (dir.keys("a.json"), dir.keys("b.json"));
    let [p1, p2] = ports::<2>();
    let sub = nomq(
        &dir,
        &["sub", "-c", "a/#", "--bind", &s(&p1), "--peer", &s(&p2), "--keys", &ka, "-W", "8"],
    )
    .env("NOMQ_HEARTBEAT_MS", "100")
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    until_bound(p1);
    for how in ["flag", "env"] {
        let (bind, peer) = (s(&p2), s(&p1));
        let args = ["pub", "-c", "a/b", "-m", "hi", "--linger-s", "1.5", "--bind", &bind];
        let mut c = nomq(&dir, &args);
        c.args(["--peer", &peer, "--keys", &kb]);
        if how == "flag" {
            c.arg("--refusals");
        } else {
            c.env("NOMQ_REFUSALS", "1");
        }
        let (code, _, stderr) = outcome(&run_cmd(c));
        assert_eq!(code, Some(0), "{how}: QoS 0 is sent: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("nomq: refused so far: "))
            .unwrap_or_else(|| panic!("{how}: no summary: {stderr}"));
        assert!(line.contains(" BadMac"), "{how}: {line}");
    }
    // Done with it: no need to wait for its -W.
    stop(sub);
}

/// A captured datagram sent again is refused as Replay, and the timeout says so.
#[test]
fn replayed_datagram_total_and_hint() {
    let dir = Scratch::new("replay");
    let keys = dir.keys("k.json");
    let mut sender = OldClockSender::new(&keys, 0);
    let [p1] = ports::<1>();
    let peer = s(&sender.socket.local_addr().unwrap());
    let sub = spawn(
        &dir,
        &["sub", "-c", "a/#", "-v", "--bind", &s(&p1), "--peer", &peer, "--keys", &keys]
            .into_iter()
            .chain(["-C", "2", "-W", "2"])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    // The subscriber challenges a session it does not know; once that is answered, the
    // replay window is checked before the subscription: whether or not the first copy
    // arrives before the subscriber has subscribed, the later copies are replays.
    sender.meet(p1);
    let capture = sender.publish(p1, "a/b", "once");
    for d in &capture {
        for _ in 0..3 {
            sender.socket.send_to(d, p1).unwrap();
        }
    }
    let (code, stdout, stderr) = outcome(&finish(sub, Duration::from_secs(15)));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.lines().all(|l| l == "a/b once"), "{stdout}");
    let line = stderr
        .lines()
        .find(|l| l.contains("refused as Replay: "))
        .unwrap_or_else(|| panic!("no Replay total: {stderr}"));
    assert!(line.contains("replayed or duplicated capture"), "{line}");
}
