//! `nomq peers`: what a keyring can see of the network: the peers that answered, their
//! subscriptions, the traffic and what was refused; live, or once for scripts.

use crate::common::{self, Failure, NodeArgs, PeerBook};
use nomq_host::{Handle, HostStats, NodeEvent, SessionId};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(clap::Args, Debug)]
pub struct PeersArgs {
    /// Listen for --listen-s seconds, print once and exit 0 (no screen control).
    #[arg(long)]
    once: bool,
    /// Print JSON: with --once, one object `{"node": {...}, "peers": [{"session", "addr",
    /// "subscriptions", "first_seen_s"}, ...], "refused": {reason: count}}`; live, one
    /// such object per line each second.
    #[arg(long)]
    json: bool,
    /// How long to listen: with --once before printing [default: 2], live before exiting
    /// [default: until Ctrl-C]. 0.1..=86400 seconds, fractional allowed. Peers usually
    /// answer a new node at once with an early heartbeat (each sends at most one per 100
    /// ms); one that skipped it is heard at its next regular heartbeat (every 5 s by
    /// default), so listen longer to be sure to see every peer.
    #[arg(long, value_name = "S", value_parser = common::seconds_arg(0.1, 86_400.0),
          allow_negative_numbers = true)]
    listen_s: Option<Duration>,
    #[command(flatten)]
    node: NodeArgs,
}

/// The refresh period of the live view.
const REFRESH: Duration = Duration::from_secs(1);
/// `--once` listens this long by default.
const ONCE_DEFAULT: Duration = Duration::from_secs(2);

pub async fn run(a: PeersArgs) -> Result<(), Failure> {
    let cfg = a.node.host_config()?;
    let keys = common::load_keys(&cfg)?;
    let (events, mut events_rx) = mpsc::channel(256);
    let node = common::start(&cfg, keys, Some(events), None).await?;
    let mut view = View::new(&cfg, node.local_addr(), a.once);
    let r = if a.once {
        let end = Instant::now() + a.listen_s.unwrap_or(ONCE_DEFAULT);
        // Polled meanwhile, so that a peer seen only briefly still has a first-seen time.
        while Instant::now() < end {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                e = events_rx.recv() => if let Some(e) = e { view.note(&e) },
            }
            view.poll(&node).await;
        }
        view.poll(&node).await;
        print(&a, &view, false)
    } else {
        live(&a, &node, &mut view, &mut events_rx).await
    };
    node.shutdown().await;
    r
}

/// Refreshes once a second until the time is up or a signal comes (a normal end: exit 0).
async fn live(
    a: &PeersArgs,
    node: &Handle,
    view: &mut View,
    events: &mut mpsc::Receiver<NodeEvent>,
) -> Result<(), Failure> {
    let end = a.listen_s.and_then(|d| Instant::now().checked_add(d));
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                view.poll(node).await;
                print(a, view, !a.json)?;
                if end.is_some_and(|e| Instant::now() >= e) {
                    return Ok(());
                }
            }
            e = events.recv() => if let Some(e) = e { view.note(&e) },
            () = &mut stop => return Ok(()),
        }
    }
}

/// SIGINT or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {}
                    _ = t.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A peer as seen from here.
struct Seen {
    addr: SocketAddr,
    subscriptions: usize,
    first_seen: Instant,
    /// Why it left the table, once it did.
    lost: Option<String>,
}

/// What the node saw, and the counters of the last two polls (for rates).
struct View {
    cfg: nomq_host::config::HostConfig,
    local: SocketAddr,
    start: Instant,
    peers: HashMap<SessionId, Seen>,
    book: PeerBook,
    stats: Option<HostStats>,
    /// rx, tx, delivered at the previous poll, and when; `--once` keeps `None`, so its
    /// rates are over the whole listen.
    prev: Option<(Instant, u64, u64, u64)>,
    once: bool,
    rates: (f64, f64, f64),
}

impl View {
    fn new(cfg: &nomq_host::config::HostConfig, local: SocketAddr, once: bool) -> Self {
        Self {
            cfg: cfg.clone(),
            local,
            start: Instant::now(),
            peers: HashMap::new(),
            book: PeerBook::default(),
            stats: None,
            prev: None,
            once,
            rates: (0.0, 0.0, 0.0),
        }
    }

    fn note(&mut self, e: &NodeEvent) {
        self.book.note(e);
        match e {
            nomq::Event::PeerJoined { session, addr } => {
                let seen = self.peers.entry(*session).or_insert_with(|| Seen {
                    addr: SocketAddr::from(*addr),
                    subscriptions: 0,
                    first_seen: Instant::now(),
                    lost: None,
                });
                seen.lost = None;
            }
            nomq::Event::PeerLost { session, reason, .. } => {
                if let Some(s) = self.peers.get_mut(session) {
                    s.lost = Some(format!("{reason:?}"));
                }
            }
            _ => {}
        }
    }

    async fn poll(&mut self, node: &Handle) {
        if let Ok(list) = node.peers().await {
            for p in list {
                let seen = self.peers.entry(p.session).or_insert_with(|| Seen {
                    addr: p.addr,
                    subscriptions: 0,
                    first_seen: Instant::now(),
                    lost: None,
                });
                seen.addr = p.addr;
                seen.subscriptions = p.subscriptions;
                seen.lost = None;
            }
        }
        if let Ok(s) = node.stats().await {
            let now = Instant::now();
            let (rx, tx, dl) = (s.engine.rx_datagrams, s.engine.tx_datagrams, s.engine.delivered);
            let (t0, rx0, tx0, dl0) = self.prev.unwrap_or((self.start, 0, 0, 0));
            let dt = (now - t0).as_secs_f64();
            if dt > 0.0 {
                let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                self.rates = (rate(rx, rx0), rate(tx, tx0), rate(dl, dl0));
            }
            if !self.once {
                self.prev = Some((now, rx, tx, dl));
            }
            self.stats = Some(s);
        }
    }

    /// Peers by address, then session.
    fn sorted(&self) -> Vec<(&SessionId, &Seen)> {
        let mut v: Vec<_> = self.peers.iter().collect();
        v.sort_by_key(|(s, p)| (p.addr, s.0));
        v
    }

    fn refused(&self) -> Vec<(nomq::node::DropReason, u64)> {
        let Some(s) = &self.stats else { return Vec::new() };
        s.engine.nonzero().filter(|&(r, _)| common::refusal_hint(r, &self.cfg).is_some()).collect()
    }

    fn json(&self) -> serde_json::Value {
        let e = self.stats.as_ref().map(|s| s.engine.clone()).unwrap_or_default();
        let round = |v: f64| (v * 10.0).round() / 10.0;
        let peers: Vec<serde_json::Value> = self
            .sorted()
            .into_iter()
            .map(|(s, p)| {
                let mut v = serde_json::json!({
                    "session": s.to_string(),
                    "addr": p.addr.to_string(),
                    "subscriptions": p.subscriptions,
                    "first_seen_s": round((p.first_seen - self.start).as_secs_f64()),
                });
                if let Some(l) = &p.lost {
                    v["lost"] = l.clone().into();
                }
                v
            })
            .collect();
        let refused: serde_json::Map<String, serde_json::Value> =
            self.refused().into_iter().map(|(r, n)| (r.name().to_string(), n.into())).collect();
        serde_json::json!({
            "node": {
                "bind": self.local.to_string(),
                "listened_s": round(self.start.elapsed().as_secs_f64()),
                "rx_datagrams": e.rx_datagrams,
                "tx_datagrams": e.tx_datagrams,
                "delivered": e.delivered,
                "retransmissions": e.retransmissions,
                "rx_per_s": round(self.rates.0),
                "tx_per_s": round(self.rates.1),
                "delivered_per_s": round(self.rates.2),
            },
            "peers": peers,
            "refused": refused,
        })
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut o = String::new();
        let e = self.stats.as_ref().map(|s| s.engine.clone()).unwrap_or_default();
        let _ = writeln!(
            o,
            "nomq peers: node {} listening {:.0} s; in {:.0}/s, out {:.0}/s, delivered {:.0}/s \
             (totals {} in, {} out, {} retransmitted)",
            self.local,
            self.start.elapsed().as_secs_f64(),
            self.rates.0,
            self.rates.1,
            self.rates.2,
            e.rx_datagrams,
            e.tx_datagrams,
            e.retransmissions
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<10} {:<24} {:>13} {:>12}  state",
            "SESSION", "ADDRESS", "SUBSCRIPTIONS", "FIRST SEEN"
        );
        let peers = self.sorted();
        if peers.is_empty() {
            let _ = writeln!(o, "(no peer heard from yet: check --peer/--bind and the keyring)");
        }
        for (s, p) in peers {
            let first = format!("{:.0} s ago", p.first_seen.elapsed().as_secs_f64());
            let state = p.lost.as_deref().map_or("up".to_string(), |l| format!("lost ({l})"));
            let _ = writeln!(
                o,
                "{:<10} {:<24} {:>13} {:>12}  {state}",
                s.to_string(),
                p.addr.to_string(),
                p.subscriptions,
                first
            );
        }
        let refused = self.refused();
        let _ = writeln!(o);
        if refused.is_empty() {
            let _ = writeln!(o, "refused: none");
        }
        for (r, n) in refused {
            let hint = common::refusal_hint(r, &self.cfg).unwrap_or_default();
            let _ = writeln!(o, "refused {n} as {}: {hint}", r.name());
        }
        o
    }
}

/// Prints the view; `screen` clears the terminal first (cursor home, clear screen).
fn print(a: &PeersArgs, view: &View, screen: bool) -> Result<(), Failure> {
    let body = if a.json { format!("{}\n", view.json()) } else { view.text() };
    let mut out = std::io::stdout().lock();
    let r = if screen { out.write_all(b"\x1b[H\x1b[2J") } else { Ok(()) };
    match r.and_then(|()| out.write_all(body.as_bytes())).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // The reader went away (`| head`): a normal end.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::network(format!("cannot write to stdout: {e}"))),
    }
}
