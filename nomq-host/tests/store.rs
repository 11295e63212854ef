//! `nomq sub --state FILE` across `kill -9`, over real sockets on 127.0.0.1: a publisher
//! (a node in this test) sends 300 QoS 2 messages; the subscriber process is killed
//! four times mid-stream and restarted with the same FILE and port. Every message is
//! printed exactly once over its lives, and every outcome is Acknowledged, by the
//! subscriber's session of the time.
//!
//! Between the two processes runs a relay in this test, which can drop one direction:
//! it puts the kills where the protocol is mid-exchange — the subscriber received and
//! printed a wave whose PUBRECs were all lost, or a wave is in flight that the
//! subscriber never received — while keeping them out of the one window the state
//! store does not cover (a message saved but not yet printed; see docs/PROTOCOL.md
//! "State store"), which a blind kill could hit.

mod cli_support;
use cli_support::*;
use nomq::node::{Event, LostReason};
use nomq_host::{NodeBuilder, NodeEvent, PublishOptions, Qos, SessionId, Status};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const N: usize = 300;
const WAVE: usize = 25;

/// What the relay lets through.
const PASS: u8 = 0;
/// Drops subscriber → publisher (PUBREC, PUBCOMP, everything).
const DROP_FROM_SUB: u8 = 1;
/// Drops publisher → subscriber.
const DROP_TO_SUB: u8 = 2;

/// A UDP relay: the publisher's peer is `pub_side`, the subscriber's is `sub_side`.
struct Relay {
    pub_side: SocketAddr,
    sub_side: SocketAddr,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn new(publisher: SocketAddr, subscriber: SocketAddr) -> Self {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (pub_side, sub_side) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        }
        let mode = Arc::new(AtomicU8::new(PASS));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, st) = (mode.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            // Bounded: the test stops it, and it stops itself after 10 minutes.
            let end = Instant::now() + Duration::from_secs(600);
            while !st.load(Ordering::Relaxed) && Instant::now() < end {
                for (from, to, dest, dropped) in
                    [(&a, &b, subscriber, DROP_TO_SUB), (&b, &a, publisher, DROP_FROM_SUB)]
                {
                    for _ in 0..64 {
                        let Ok((n, _)) = from.recv_from(&mut buf) else { break };
                        if m.load(Ordering::Relaxed) != dropped {
                            let _ = to.send_to(&buf[..n], dest);
                        }
                    }
                }
            }
        });
        Self { pub_side, sub_side, mode, stop, thread: Some(thread) }
    }
    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One life of the subscriber: the child and the thread collecting its stdout lines.
struct Life {
    child: Child,
    reader: std::thread::JoinHandle<()>,
}

fn start_sub(
    dir: &Scratch,
    keys: &str,
    bind: SocketAddr,
    peer: SocketAddr,
    lines: &Arc<Mutex<Vec<String>>>,
) -> Life {
    let state = dir.path("sub.state");
    let args = [
        "sub",
        "--keys",
        keys,
        "-c",
        "t/#",
        "--bind",
        &s(&bind),
        "--peer",
        &s(&peer),
        "--state",
        state.to_str().unwrap(),
        "-W",
        "300",
    ];
    let mut child = nomq(dir, &args)
        .env("NOMQ_HEARTBEAT_MS", "500")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let lines = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    });
    until_bound(bind);
    Life { child, reader }
}

fn kill(life: Life) {
    let Life { mut child, reader } = life;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    reader.join().unwrap();
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn printed(lines: &Arc<Mutex<Vec<String>>>) -> usize {
    lines.lock().unwrap().len()
}

#[test]
fn qos2_exactly_once_across_kill_9_of_the_subscriber() {
    let dir = Scratch::new("store");
    let keys = dir.keys("k.json");
    let [pub_addr, sub_addr] = ports::<2>();
    let relay = Relay::new(pub_addr, sub_addr);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut life = start_sub(&dir, &keys, sub_addr, relay.sub_side, &lines);

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut engine = nomq::Config::default();
    engine.retransmit_initial = nomq::Duration::from_millis(20);
    engine.retransmit_max = nomq::Duration::from_millis(300);
    engine.max_attempts = 100;
    engine.heartbeat_interval = nomq::Duration::from_millis(500);
    engine.rate_limit = 1_000_000;
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<NodeEvent>(1024);
    let publisher = rt.block_on(async {
        NodeBuilder::from_keyring_file(std::path::Path::new(&keys))
            .unwrap()
            .engine(engine)
            .bind(pub_addr)
            .peers([relay.pub_side])
            .events(ev_tx)
            .start()
            .await
            .unwrap()
    });
    let seen = rt.block_on(publisher.wait_for_subscribers("t/s", 1, WAIT)).unwrap();
    assert!(seen.is_some(), "the publisher never saw the subscriber");

    // Wave index → how the subscriber is killed during it.
    let kills = [(2, DROP_FROM_SUB), (5, DROP_TO_SUB), (8, DROP_FROM_SUB), (10, DROP_TO_SUB)];
    let mut acked_by: Vec<(usize, SessionId)> = Vec::new();
    let mut killed_waves = Vec::new();
    for wave in 0..N / WAVE {
        let kill_mode = kills.iter().find(|(w, _)| *w == wave).map(|k| k.1);
        let before = printed(&lines);
        if kill_mode == Some(DROP_TO_SUB) {
            relay.set(DROP_TO_SUB);
        } else if kill_mode == Some(DROP_FROM_SUB) {
            relay.set(DROP_FROM_SUB);
        }
        let waiters: Vec<_> = (wave * WAVE..(wave + 1) * WAVE)
            .map(|i| {
                let body = format!("m-{i:03}");
                rt.block_on(publisher.start_publish(
                    "t/s",
                    body,
                    PublishOptions::qos(Qos::ExactlyOnce),
                ))
                .unwrap()
            })
            .collect();
        match kill_mode {
            Some(DROP_FROM_SUB) => {
                // It received, saved and printed the whole wave; none of its PUBRECs got
                // through. Killed now, its next life must not print any of them again.
                wait_until("the wave printed", || printed(&lines) >= before + WAVE);
                std::thread::sleep(Duration::from_millis(100));
                kill(life);
                killed_waves.push(wave);
                relay.set(PASS);
                life = start_sub(&dir, &keys, sub_addr, relay.sub_side, &lines);
            }
            Some(_) => {
                // The wave is in flight (retransmitted, dropped); it never arrived.
                std::thread::sleep(Duration::from_millis(300));
                assert_eq!(printed(&lines), before);
                kill(life);
                killed_waves.push(wave);
                life = start_sub(&dir, &keys, sub_addr, relay.sub_side, &lines);
                relay.set(PASS);
            }
            None => {}
        }
        for (k, w) in waiters.into_iter().enumerate() {
            let d = rt
                .block_on(async { tokio::time::timeout(WAIT, w).await })
                .unwrap_or_else(|_| panic!("wave {wave}: outcome {k} timed out"))
                .unwrap();
            assert_eq!(d.status, Status::Acknowledged, "wave {wave} message {k}: {d:?}");
            assert!(d.missing.is_empty(), "{d:?}");
            assert_eq!(d.acked.len(), 1, "{d:?}");
            acked_by.push((wave, d.acked[0]));
        }
    }
    // Let the last PUBCOMPs and prints settle, then end the last life the same way.
    std::thread::sleep(Duration::from_millis(300));
    kill(life);

    let lines = lines.lock().unwrap().clone();
    let mut counts = std::collections::HashMap::new();
    for l in &lines {
        *counts.entry(l.clone()).or_insert(0u32) += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "printed more than once: {twice:?}");
    let missing: Vec<_> =
        (0..N).map(|i| format!("m-{i:03}")).filter(|m| !counts.contains_key(m)).collect();
    assert!(missing.is_empty(), "never printed: {missing:?}");
    assert_eq!(lines.len(), N);

    // Every kill gave the subscriber a new session, which acknowledged the wave it was
    // killed in, and retired its predecessor (a CHALLENGE naming it: `Replaced`).
    let mut sessions: Vec<SessionId> = Vec::new();
    for (_, s) in &acked_by {
        if !sessions.contains(s) {
            sessions.push(*s);
        }
    }
    assert_eq!(sessions.len(), kills.len() + 1, "one session per life: {sessions:?}");
    for (k, w) in killed_waves.iter().enumerate() {
        let in_wave: Vec<_> = acked_by.iter().filter(|(x, _)| x == w).map(|(_, s)| *s).collect();
        assert!(in_wave.iter().all(|s| *s == sessions[k + 1]), "wave {w} acked by the new life");
    }
    let mut replaced = 0;
    while let Ok(e) = ev_rx.try_recv() {
        if let Event::PeerLost { session, reason: LostReason::Replaced, .. } = e {
            assert!(sessions[..kills.len()].contains(&session), "{session:?}");
            replaced += 1;
        }
    }
    assert_eq!(replaced, kills.len(), "each old session retired as Replaced");
    rt.block_on(publisher.shutdown());
}

/// A state file that cannot be written, or that holds no state, fails the start and
/// names the file (usage error, exit 2), instead of a node that never acknowledges.
#[test]
fn a_bad_state_file_fails_the_start_and_names_it() {
    let dir = Scratch::new("store-bad");
    let keys = dir.keys("k.json");
    let [bind] = ports::<1>();
    let garbage = dir.path("garbage.state");
    std::fs::write(&garbage, b"not a state").unwrap();
    let unwritable = dir.path("no-such-dir").join("x.state");
    for (file, problem) in [(&garbage, "unsupported state version"), (&unwritable, "no-such-dir")] {
        let args = [
            "sub",
            "--keys",
            &keys,
            "-c",
            "t/#",
            "--bind",
            &s(&bind),
            "--state",
            file.to_str().unwrap(),
        ];
        let (code, _, stderr) = outcome(&run(&dir, &args));
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains(file.to_str().unwrap()) && stderr.contains(problem), "{stderr}");
    }
    // Through the environment too.
    let mut c = nomq(&dir, &["sub", "--keys", &keys, "-c", "t/#", "--bind", &s(&bind)]);
    c.env("NOMQ_STATE", &garbage);
    let (code, _, stderr) = outcome(&run_cmd(c));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("garbage.state"), "{stderr}");
}
