//! `nomq-harness`: runs NoMQ scenarios and prints a PASS / FAIL / SKIP table.
//!
//! Exit status: 0 when nothing failed, 1 when a scenario failed, 2 for a usage error or a
//! mode that has no scenarios yet.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nomq::Qos;
use nomq_harness::device::{self, DeviceCheck};
use nomq_harness::netns::{Lab, LabError};
use nomq_harness::probe::{self, ProbeKind};
use nomq_harness::report::{Live, Report};
use nomq_harness::scenarios;
use nomq_harness::tap;

/// Environment variable that turns "namespaces not available" from SKIP into FAIL, so CI
/// cannot pass the broadcast mode without running it.
const REQUIRE_NETNS: &str = "NOMQ_REQUIRE_NETNS";

/// Hosts in the broadcast lab.
const LAB_HOSTS: usize = 3;

/// Runs NoMQ scenarios and prints a PASS / FAIL / SKIP table; exits non-zero on any failure.
#[derive(Debug, Parser)]
#[command(name = "nomq-harness", version, about)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    #[command(flatten)]
    opts: Options,
}

/// Options every mode takes.
#[derive(Debug, Args)]
struct Options {
    /// Seed for everything random in a run (relay loss, payloads), so a failure can be replayed.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Messages in the throughput and lossy scenarios.
    #[arg(long, global = true, default_value_t = 2000)]
    messages: u32,
    /// Print the report as one JSON object instead of a table. Standard output then holds
    /// only that object, printed at the end; the rows are streamed to standard error as
    /// they finish instead (unless --quiet).
    #[arg(long, global = true)]
    json: bool,
    /// Do not stream rows as they finish: print the whole table at the end (or, with
    /// --json, nothing but the JSON object).
    #[arg(long, global = true)]
    quiet: bool,
}

impl Options {
    /// A report that streams its rows as they finish: to standard output for the table,
    /// to standard error with --json, not at all with --quiet.
    fn report(&self, title: impl Into<String>) -> Report {
        let mut r = Report::new(title);
        if !self.quiet {
            r.stream(if self.json { Live::Stderr } else { Live::Stdout });
        }
        r
    }
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Several nodes on 127.0.0.1, in one process and in separate processes.
    Loopback,
    /// Hosts in network namespaces on a bridge: real broadcast and multicast (needs root and
    /// iproute2; prints SKIP where namespaces are not permitted, FAIL if NOMQ_REQUIRE_NETNS=1).
    Broadcast,
    /// Nodes talking through a UDP relay with seeded loss, duplication and reordering.
    Lossy,
    /// Checks a device running the device script (docs/DEVICE.md) from a nomq-host node.
    Device(DeviceArgs),
    /// The embedded adapters (embassy-net, smoltcp) on user-space IP stacks over a TAP device
    /// in a namespace, checked like a device (needs root and iproute2; SKIP or FAIL as
    /// `broadcast`).
    Tap,
    /// Internal: a device program on a user-space stack over a TAP device, run by `tap`.
    #[command(name = "__tap-device", hide = true)]
    TapDevice(TapDeviceArgs),
    /// Internal: a NoMQ node in its own process (a subscriber or a publisher).
    #[command(name = "__node", hide = true)]
    Node(NodeArgs),
    /// Internal: the device script over a std UDP socket (the `loopback` mode's device).
    #[command(name = "__device", hide = true)]
    StdDevice(StdDeviceArgs),
    /// Internal: one side of a lab probe, run inside a namespace by `broadcast`.
    #[command(name = "__netns-probe", hide = true)]
    NetnsProbe {
        #[command(subcommand)]
        role: ProbeRole,
    },
}

/// A device program's settings (see `nomq_harness::tap`).
#[derive(Debug, Args)]
struct TapDeviceArgs {
    /// Which user-space stack.
    #[arg(long, value_enum)]
    stack: tap::StackKind,
    /// TAP device to open.
    #[arg(long, default_value = "tap0")]
    tap: String,
    /// Own address on the TAP subnet (/24).
    #[arg(long, default_value_t = tap::DEVICE_IP)]
    ip: Ipv4Addr,
    /// Static peers (ip:port, comma-separated): the fan-out of every publish.
    #[arg(long, value_delimiter = ',', required = true)]
    peers: Vec<SocketAddrV4>,
    /// Device id.
    #[arg(long)]
    id: String,
    /// Exit after this long.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
}

/// A child node: `sub` prints `READY <bound address>`, then `MSG <channel> <body hex>` per
/// message; `pub` prints `READY <bound address>`, waits for `--subscribers` subscribers to
/// its channel, then prints `OUTCOME <status> acked=<n>` per message.
#[derive(Debug, Args)]
struct NodeArgs {
    /// `sub` or `pub`.
    #[arg(long)]
    role: String,
    #[arg(long)]
    bind: std::net::SocketAddr,
    #[arg(long)]
    peer: Vec<std::net::SocketAddr>,
    /// Fan out by broadcast to this address (only inside a lab namespace).
    #[arg(long)]
    broadcast: Vec<std::net::SocketAddr>,
    /// Fan out to this multicast group (only inside a lab namespace).
    #[arg(long)]
    multicast: Option<std::net::IpAddr>,
    #[arg(long, default_value = "#")]
    pattern: String,
    #[arg(long, default_value = "harness/x")]
    channel: String,
    #[arg(long, default_value_t = 1)]
    qos: u8,
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// `pub`: subscribers to the channel to wait for (within --timeout-ms) before publishing.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// The loopback device: prints READY once started, then `COUNTERS ...` when its time is up.
/// With --peers-from-stdin it first prints `BOUND <address>` and reads one line
/// `PEERS <ip:port,...>` from standard input.
#[derive(Debug, Args)]
struct StdDeviceArgs {
    /// Local address (loopback only, outside a lab namespace; port 0 for any).
    #[arg(long)]
    bind: std::net::SocketAddr,
    /// Static peers (ip:port, comma-separated): the fan-out of every publish.
    #[arg(long, value_delimiter = ',', required_unless_present = "peers_from_stdin")]
    peers: Vec<std::net::SocketAddr>,
    /// Print `BOUND <address>` once bound, then read the peers from standard input
    /// (`PEERS <ip:port,...>`): for peers that bind after the device.
    #[arg(long, conflicts_with = "peers")]
    peers_from_stdin: bool,
    /// Device id.
    #[arg(long)]
    id: String,
    /// Exit after this long.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
}

/// Where the device is and how to reach it.
#[derive(Debug, Args)]
struct DeviceArgs {
    /// The device's NoMQ address (ip:port).
    #[arg(long)]
    peer: std::net::SocketAddr,
    /// Local address of the checking node.
    #[arg(long, default_value_t = device::DEFAULT_BIND)]
    bind: std::net::SocketAddr,
    /// Local address of the capture socket [default: the bind IP, bind port + 1].
    #[arg(long)]
    capture: Option<std::net::SocketAddr>,
    /// Keyring file (JSON, as `nomq keys gen` writes) [default: the harness's fixed test keys].
    #[arg(long)]
    keys: Option<std::path::PathBuf>,
    /// Device id ([a-z0-9-], up to 16 characters), or + for the first device seen.
    #[arg(long, default_value = "+")]
    id: String,
    /// The longest one check may take, in seconds.
    #[arg(long, default_value_t = 20)]
    timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
enum ProbeRole {
    /// Wait for the token on 0.0.0.0:PORT; print READY, then RECEIVED <source>.
    Listen {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        token: String,
        /// Join this multicast group (with --iface).
        #[arg(long, requires = "iface")]
        group: Option<Ipv4Addr>,
        /// Local address of the interface to join the group on.
        #[arg(long)]
        iface: Option<Ipv4Addr>,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Send the token from FROM to TO (refused outside a lab namespace).
    Send {
        #[arg(long)]
        from: Ipv4Addr,
        #[arg(long)]
        to: SocketAddrV4,
        #[arg(long)]
        token: String,
    },
    /// Print the lab namespace this process runs in, or `-` outside any lab.
    Whereami,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nomq-harness: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.mode {
        Mode::Loopback => finish(&runtime.block_on(loopback(&cli.opts)), cli.opts.json),
        Mode::Lossy => finish(&runtime.block_on(lossy(&cli.opts)), cli.opts.json),
        Mode::Broadcast => finish(&broadcast(&cli.opts), cli.opts.json),
        Mode::Device(args) => {
            if !device::valid_id(&args.id) {
                eprintln!(
                    "nomq-harness: --id {:?}: expected [a-z0-9-], 1 to 16 characters, or +",
                    args.id
                );
                return ExitCode::from(2);
            }
            let opts = DeviceCheck {
                bind: args.bind,
                capture: args.capture,
                keys: args.keys,
                id: args.id,
                timeout: Duration::from_secs(args.timeout_secs.max(1)),
                ..DeviceCheck::new(args.peer)
            };
            let mut report = cli.opts.report(format!("nomq-harness device {}", args.peer));
            runtime.block_on(device::check_device(&opts, &mut report));
            finish(&report, cli.opts.json)
        }
        Mode::Node(args) => runtime.block_on(child_node(args)),
        Mode::StdDevice(args) => std_device(args),
        Mode::NetnsProbe { role } => netns_probe(role),
        Mode::Tap => finish(&tap_mode(&cli.opts), cli.opts.json),
        Mode::TapDevice(a) => {
            // Only ever inside a lab namespace: the TAP device must be the lab's.
            if nomq_harness::netns::lab_namespace().is_none() {
                eprintln!(
                    "__tap-device: runs only inside a lab namespace (use `nomq-harness tap`)"
                );
                return ExitCode::from(2);
            }
            let opts = tap::DeviceOpts {
                stack: a.stack,
                tap: a.tap,
                ip: a.ip,
                peers: a.peers,
                id: a.id,
                duration: Duration::from_secs(a.duration_secs),
            };
            ExitCode::from(u8::try_from(tap::run_device(opts)).unwrap_or(1))
        }
    }
}

async fn loopback(opts: &Options) -> Report {
    let mut r = opts.report("nomq-harness loopback (127.0.0.1, static peers)");
    r.check("crypto self-test", scenarios::crypto_self_test);
    scenarios::row(&mut r, "subscribe / unsubscribe", scenarios::subscribe_unsubscribe()).await;
    scenarios::row(&mut r, "QoS 0 publish / receive", scenarios::qos_levels(Qos::AtMostOnce, 20))
        .await;
    scenarios::row(&mut r, "QoS 1 publish / receive", scenarios::qos_levels(Qos::AtLeastOnce, 20))
        .await;
    scenarios::row(&mut r, "QoS 2 publish / receive", scenarios::qos_levels(Qos::ExactlyOnce, 20))
        .await;
    scenarios::row(&mut r, "retained to late joiner, TTL expiry", scenarios::retained_and_ttl())
        .await;
    scenarios::row(&mut r, "replay and tampering rejected", scenarios::replay_and_tamper()).await;
    scenarios::row(&mut r, "wrong key rejected, lockout", scenarios::wrong_key_and_lockout()).await;
    scenarios::row(&mut r, "rate limit", scenarios::rate_limit()).await;
    scenarios::row(&mut r, "peer liveness", scenarios::liveness()).await;
    scenarios::row(&mut r, "separate processes, QoS 2", separate_processes()).await;
    loopback_device(&mut r).await;
    scenarios::row(&mut r, "performance run", scenarios::throughput(opts.messages)).await;
    r
}

async fn lossy(opts: &Options) -> Report {
    let mut r = opts.report("nomq-harness lossy (UDP relay: 20% loss, 2% duplication, reordering)");
    let n = opts.messages;
    scenarios::row(
        &mut r,
        "QoS 1 through lossy relay",
        scenarios::lossy(Qos::AtLeastOnce, n, opts.seed, 0.2),
    )
    .await;
    scenarios::row(
        &mut r,
        "QoS 2 through lossy relay",
        scenarios::lossy(Qos::ExactlyOnce, n, opts.seed + 1, 0.2),
    )
    .await;
    r
}

/// Two subscriber processes and this process publishing QoS 2 to them.
///
/// The children bind port 0 and report their addresses (`READY <address>`). This
/// process's node must be their peer before it starts (its fan-out list is fixed at
/// start, and it needs theirs), so its port is picked: bound right after the children
/// are up, and on `EADDRINUSE` everything starts again on a fresh port.
async fn separate_processes() -> scenarios::Outcome {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..scenarios::BIND_TRIES {
        let parent = *scenarios::pick_ports(1).first().ok_or("no free loopback port")?;
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        for _ in 1..3 {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args([
                "__node",
                "--role",
                "sub",
                "--pattern",
                "proc/#",
                "--count",
                "5",
                "--timeout-ms",
                "30000",
                "--bind",
                "127.0.0.1:0",
            ])
            .arg("--peer")
            .arg(parent.to_string())
            .stdout(std::process::Stdio::piped());
            let child = ChildProc::spawn(cmd)?;
            match child.ready_addr() {
                Ok(addr) => addrs.push(addr),
                Err(e) => {
                    child.kill();
                    children.into_iter().for_each(ChildProc::kill);
                    return Err(format!("subscriber process: {e}"));
                }
            }
            children.push(child);
        }
        let a = match scenarios::start_node(
            parent,
            addrs.clone(),
            scenarios::keyring(1),
            scenarios::fast_engine(),
        )
        .await
        {
            Ok(a) => a,
            Err(e) if scenarios::addr_in_use(&e) => {
                last = format!("{parent}: {e}");
                children.into_iter().for_each(ChildProc::kill);
                continue;
            }
            Err(e) => {
                children.into_iter().for_each(ChildProc::kill);
                return Err(format!("node on {parent}: {e}"));
            }
        };
        let r = publish_to_processes(&a.handle, children).await;
        a.handle.shutdown().await;
        return r;
    }
    Err(format!(
        "picked ports kept being taken by other processes ({} tries, last {last})",
        scenarios::BIND_TRIES
    ))
}

async fn publish_to_processes(
    a: &nomq_host::Handle,
    children: Vec<ChildProc>,
) -> scenarios::Outcome {
    let seen =
        a.wait_for_subscribers("proc/x", 2, scenarios::WAIT).await.map_err(|e| e.to_string())?;
    if seen.is_none() {
        let n = a.subscribers("proc/x").await.map_or(0, |s| s.len());
        children.into_iter().for_each(ChildProc::kill);
        return Err(format!(
            "this process never saw both subscriber processes' subscriptions to 'proc/#' within {:?} ({n} of 2)",
            scenarios::WAIT
        ));
    }
    for i in 0..5u8 {
        let d = a
            .publish("proc/x", vec![i], nomq_host::PublishOptions::qos(Qos::ExactlyOnce))
            .await
            .map_err(|e| e.to_string());
        match d {
            Ok(d) if d.status == nomq_host::Status::Acknowledged && d.acked.len() == 2 => {}
            other => {
                children.into_iter().for_each(ChildProc::kill);
                return Err(format!("message {i}: {other:?}"));
            }
        }
    }
    for (k, child) in children.into_iter().enumerate() {
        let (ok, lines) = child.wait()?;
        let msgs = lines.iter().filter(|l| l.starts_with("MSG ")).count();
        if !ok || msgs != 5 {
            return Err(format!("subscriber process {k}: success {ok}, {msgs} messages"));
        }
    }
    Ok("5 QoS 2 messages to 2 subscriber processes: each printed exactly 5".into())
}

/// Device id of the loopback device.
const LOOPBACK_DEVICE_ID: &str = "loopback-1";

/// The device script in a child process (`__device`) on 127.0.0.1, checked by the device
/// checker; its rows are prefixed `std device:` and recorded as each check finishes.
///
/// Every socket binds port 0 once: the device binds first and reports its address
/// (`BOUND`), the checking node and the capture socket bind next with the device as
/// their peer, and the device then learns their addresses on standard input (`PEERS`).
async fn loopback_device(r: &mut Report) {
    let started = std::time::Instant::now();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            r.record("std device: process", Err(format!("cannot locate own binary: {e}")));
            return;
        }
    };
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["__device", "--id", LOOPBACK_DEVICE_ID, "--duration-secs", "180"])
        .args(["--bind", "127.0.0.1:0", "--peers-from-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let spawned = ChildProc::spawn(cmd).and_then(|c| {
        let addr = c.line("BOUND ", SPAWN_WAIT)?;
        let addr = addr.parse().map_err(|e| format!("device address {addr:?}: {e}"))?;
        Ok((c, addr))
    });
    let (mut child, device) = match spawned {
        Ok(c) => c,
        Err(e) => {
            r.record_timed("std device: process", started.elapsed(), Err(e));
            return;
        }
    };
    let lo = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let opts = DeviceCheck {
        bind: lo,
        capture: Some(lo),
        id: LOOPBACK_DEVICE_ID.into(),
        ..DeviceCheck::new(device)
    };
    let name = |n: &str| format!("std device: {}", n.strip_prefix("device ").unwrap_or(n));
    let mut stdin = child.child.stdin.take();
    device::check_device_as(&opts, r, &name, |node, capture| {
        use std::io::Write as _;
        let stdin = stdin.as_mut().ok_or("device has no standard input")?;
        writeln!(stdin, "PEERS {node},{capture}")
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("telling the device its peers: {e}"))
    })
    .await;
    drop(stdin);
    let early = child.child.try_wait().ok().flatten();
    child.kill();
    if let Some(status) = early {
        r.record("std device: process", Err(format!("exited during the check ({status})")));
    }
}

/// `__device`: the device script over a std UDP socket until its time is up.
fn std_device(a: StdDeviceArgs) -> ExitCode {
    let loopback_only = nomq_harness::netns::lab_namespace().is_none();
    let allowed = |p: &std::net::SocketAddr| !loopback_only || p.ip().is_loopback();
    if !std::iter::once(&a.bind).chain(&a.peers).all(allowed) {
        eprintln!("__device: outside a lab namespace it binds and sends to loopback only");
        return ExitCode::from(2);
    }
    let opts = device::StdDevice {
        bind: a.bind,
        peers: a.peers,
        id: a.id,
        duration: Duration::from_secs(a.duration_secs),
    };
    let ready = |_| {
        use std::io::Write as _;
        println!("READY");
        let _ = std::io::stdout().flush();
    };
    let from_stdin = a.peers_from_stdin;
    let peers = |local: std::net::SocketAddr| {
        if !from_stdin {
            return Ok(opts.peers.clone());
        }
        use std::io::{BufRead as _, Write as _};
        println!("BOUND {local}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("stdin: {e}"))?;
        let list = line
            .trim()
            .strip_prefix("PEERS ")
            .ok_or_else(|| format!("expected PEERS <ip:port,...>, got {line:?}"))?;
        let peers = list
            .split(',')
            .map(|p| p.parse().map_err(|e| format!("peer {p:?}: {e}")))
            .collect::<Result<Vec<std::net::SocketAddr>, String>>()?;
        if !peers.iter().all(allowed) || peers.is_empty() {
            return Err("outside a lab namespace it sends to loopback only".to_string());
        }
        Ok(peers)
    };
    match device::run_std_device_late_peers(&opts, peers, ready) {
        Ok(c) => {
            println!(
                "COUNTERS readings={} replies={} refused={} ignored={} sent={} acked={} unacked={}",
                c.readings, c.replies, c.refused, c.ignored, c.sent, c.acked, c.unacked
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("__device: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long a child process may take to print its first line.
const SPAWN_WAIT: Duration = Duration::from_secs(20);

/// A child process whose standard output lines a reader thread hands over.
struct ChildProc {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Lines read while looking for another.
    skipped: std::cell::RefCell<Vec<String>>,
}

impl ChildProc {
    /// Spawns `cmd` (its stdout must be piped).
    fn spawn(mut cmd: std::process::Command) -> Result<Self, String> {
        use std::io::{BufRead, BufReader};
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines, skipped: std::cell::RefCell::new(Vec::new()) })
    }

    /// Waits (bounded) for a line starting with `prefix` and returns the rest of it.
    fn line(&self, prefix: &str, within: Duration) -> Result<String, String> {
        let end = std::time::Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => match l.strip_prefix(prefix) {
                    Some(rest) => return Ok(rest.trim().to_string()),
                    None => self.skipped.borrow_mut().push(l),
                },
                Err(_) => {
                    return Err(format!(
                        "child process printed no {:?} line within {within:?}",
                        prefix.trim()
                    ));
                }
            }
        }
    }

    /// Waits for `READY <address>` and returns the address.
    fn ready_addr(&self) -> Result<std::net::SocketAddr, String> {
        let a = self.line("READY", SPAWN_WAIT)?;
        a.parse().map_err(|e| format!("child's address {a:?}: {e}"))
    }

    /// Kills the child and reaps it.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the child to exit; whether it succeeded and the lines it printed that
    /// were not waited for.
    fn wait(mut self) -> Result<(bool, Vec<String>), String> {
        let status = self.child.wait().map_err(|e| e.to_string())?;
        let mut lines = self.skipped.take();
        lines.extend(self.lines.try_iter());
        // The reader may still be draining the pipe: take what it has left.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            lines.push(l);
        }
        Ok((status.success(), lines))
    }
}

async fn child_node(a: NodeArgs) -> ExitCode {
    use nomq_host::{NodeBuilder, PublishOptions, Status};
    let fans_out_wide = !a.broadcast.is_empty() || a.multicast.is_some();
    if fans_out_wide && nomq_harness::netns::lab_namespace().is_none() {
        eprintln!("__node: broadcast/multicast only inside a lab namespace");
        return ExitCode::from(2);
    }
    let mut b = NodeBuilder::new(scenarios::keyring(1))
        .engine(scenarios::fast_engine())
        .bind(a.bind)
        .peers(a.peer);
    if !a.broadcast.is_empty() {
        b = b.broadcast(a.broadcast);
    }
    if let Some(g) = a.multicast {
        b = b.multicast(g);
    }
    let node = match b.start().await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("__node: {e}");
            return ExitCode::from(3);
        }
    };
    let deadline = Duration::from_millis(a.timeout_ms);
    let ready = || {
        use std::io::Write as _;
        println!("READY {}", node.local_addr());
        let _ = std::io::stdout().flush();
    };
    if a.role == "sub" {
        let mut sub = match node.subscribe(&a.pattern).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("__node: {e}");
                return ExitCode::from(2);
            }
        };
        ready();
        let mut got = 0;
        let end = tokio::time::Instant::now() + deadline;
        while got < a.count {
            match tokio::time::timeout_at(end, sub.recv()).await {
                Ok(Some(m)) => {
                    let hex: String = m.body.iter().map(|b| format!("{b:02x}")).collect();
                    println!("MSG {} {hex}", m.channel);
                    got += 1;
                }
                _ => return ExitCode::FAILURE,
            }
        }
        // Negative check: stay a moment so late duplicates would show (exactly-once is
        // checked by count; the window is the test).
        tokio::time::sleep(Duration::from_millis(300)).await;
        node.shutdown().await;
        return ExitCode::SUCCESS;
    }
    ready();
    if a.subscribers > 0 {
        match node.wait_for_subscribers(&a.channel, a.subscribers, deadline).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                let n = node.subscribers(&a.channel).await.map_or(0, |s| s.len());
                println!(
                    "OUTCOME no-subscribers: saw {n} of {} subscribers to {} within {deadline:?}",
                    a.subscribers, a.channel
                );
                node.shutdown().await;
                return ExitCode::FAILURE;
            }
            Err(e) => {
                println!("OUTCOME error {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let qos = Qos::from_level(a.qos).unwrap_or(Qos::AtLeastOnce);
    let mut ok = true;
    for i in 0..a.count {
        match tokio::time::timeout(
            deadline,
            node.publish(&a.channel, i.to_be_bytes().to_vec(), PublishOptions::qos(qos)),
        )
        .await
        {
            Ok(Ok(d)) => {
                println!("OUTCOME {:?} acked={}", d.status, d.acked.len());
                ok &= d.status
                    == if qos == Qos::AtMostOnce { Status::Sent } else { Status::Acknowledged };
            }
            Ok(Err(e)) => {
                println!("OUTCOME error {e}");
                ok = false;
            }
            Err(_) => {
                println!("OUTCOME timeout");
                ok = false;
            }
        }
    }
    node.shutdown().await;
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Prints the end of the run: the summary line after streamed rows (the whole table if
/// nothing streamed), and with `json` the one JSON object on standard output.
fn finish(report: &Report, json: bool) -> ExitCode {
    if json {
        if report.live().is_some() {
            report.print_end();
        }
        println!("{}", report.to_json());
    } else {
        report.print_end();
    }
    ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1))
}

/// The `broadcast` mode: builds the namespace lab, checks it carries broadcast and
/// multicast, then runs NoMQ nodes in it: one publisher, two subscribers, by subnet
/// broadcast and by multicast.
fn broadcast(opts: &Options) -> Report {
    let mut report = opts.report("nomq-harness broadcast");
    let probes = [
        ("netns broadcast probe", ProbeKind::Broadcast),
        ("netns multicast probe", ProbeKind::Multicast),
    ];
    let lab = match Lab::create(LAB_HOSTS) {
        Ok(lab) => lab,
        Err(e) => {
            let required = std::env::var(REQUIRE_NETNS).is_ok_and(|v| v == "1");
            for (name, _) in probes {
                if e.is_unavailable() && !required {
                    report.skip(name, e.to_string());
                } else {
                    report.record(name, Err(lab_failure(&e)));
                }
            }
            return report;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            report.record("netns probes", Err(format!("cannot locate own binary: {e}")));
            return report;
        }
    };
    for (name, kind) in probes {
        report.check(name, || probe::run(&lab, &exe, kind));
    }
    report.check("NoMQ QoS 1 by subnet broadcast, 3 hosts", || nomq_in_lab(&lab, &exe, false));
    report.check("NoMQ QoS 1 by multicast, 3 hosts", || nomq_in_lab(&lab, &exe, true));
    report
}

/// Subscribers in hosts 1 and 2, a publisher in host 0; fan-out by broadcast or multicast.
fn nomq_in_lab(lab: &Lab, exe: &std::path::Path, multicast: bool) -> Result<String, String> {
    const PORT: u16 = 47_888;
    let fanout: Vec<String> = if multicast {
        vec!["--multicast".into(), nomq_harness::netns::MULTICAST_GROUP.to_string()]
    } else {
        vec!["--broadcast".into(), format!("{}:{PORT}", nomq_harness::netns::BROADCAST)]
    };
    let mut subs = Vec::new();
    for i in 1..LAB_HOSTS {
        let mut cmd = lab.command(i, exe).map_err(|e| e.to_string())?;
        cmd.args([
            "__node",
            "--role",
            "sub",
            "--pattern",
            "lab/#",
            "--count",
            "3",
            "--timeout-ms",
            "30000",
        ])
        .arg("--bind")
        .arg(format!("0.0.0.0:{PORT}"))
        .args(&fanout)
        .stdout(std::process::Stdio::piped());
        let child = ChildProc::spawn(cmd)?;
        child.line("READY", SPAWN_WAIT)?;
        subs.push(child);
    }
    // The publisher waits until it knows both subscribers (it learns them from their
    // heartbeats), within its --timeout-ms.
    let mut cmd = lab.command(0, exe).map_err(|e| e.to_string())?;
    cmd.args(["__node", "--role", "pub", "--channel", "lab/temp", "--qos", "1", "--count", "3"])
        .args(["--subscribers", "2", "--timeout-ms", "10000"])
        .arg("--bind")
        .arg(format!("0.0.0.0:{PORT}"))
        .args(&fanout);
    let out = cmd.output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let acked = text.lines().filter(|l| l.starts_with("OUTCOME Acknowledged acked=2")).count();
    for (k, child) in subs.into_iter().enumerate() {
        let (ok, lines) = child.wait()?;
        if !ok || lines.iter().filter(|l| l.starts_with("MSG ")).count() != 3 {
            return Err(format!("subscriber in host {} did not get 3 messages", k + 1));
        }
    }
    if !out.status.success() || acked != 3 {
        return Err(format!(
            "publisher: {} / {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(format!("3 messages, both subscribers delivered, {acked}/3 acknowledged by both"))
}

/// Both embedded stacks, each in its own TAP namespace.
fn tap_mode(opts: &Options) -> Report {
    let mut report = opts.report(
        "nomq-harness tap (nomq-esp on embassy-net and smoltcp over a TAP device, vs nomq-host)",
    );
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            report.record("tap", Err(format!("cannot locate own binary: {e}")));
            return report;
        }
    };
    for stack in [tap::StackKind::Embassy, tap::StackKind::Smoltcp] {
        if let Err(e) = tap::run_stack(stack, &exe, &mut report) {
            let name = format!("{}: TAP namespace", stack.name());
            let required = std::env::var(REQUIRE_NETNS).is_ok_and(|v| v == "1");
            if e.is_unavailable() && !required {
                report.skip(name, e.to_string());
            } else {
                report.record(name, Err(lab_failure(&e)));
            }
        }
    }
    report
}

fn lab_failure(e: &LabError) -> String {
    if e.is_unavailable() { format!("{e} ({REQUIRE_NETNS}=1 is set)") } else { e.to_string() }
}

fn netns_probe(role: ProbeRole) -> ExitCode {
    let result = match role {
        ProbeRole::Listen { port, token, group, iface, timeout_ms } => {
            let group = group.zip(iface);
            probe::listen(port, group, &token, Duration::from_millis(timeout_ms)).map(drop)
        }
        ProbeRole::Send { from, to, token } => probe::send(from, to, &token),
        ProbeRole::Whereami => {
            match nomq_harness::netns::lab_namespace() {
                Some(name) => println!("{name}"),
                None => println!("-"),
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("__netns-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
