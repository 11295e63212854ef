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
use nomq_harness::report::Report;
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
    /// Print the report as one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
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

/// A child node: `sub` prints READY, then `MSG <channel> <body hex>` per message;
/// `pub` prints `OUTCOME <status> acked=<n>` per message.
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
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// The loopback device: prints READY once started, then `COUNTERS ...` when its time is up.
#[derive(Debug, Args)]
struct StdDeviceArgs {
    /// Local address (loopback only, outside a lab namespace).
    #[arg(long)]
    bind: std::net::SocketAddr,
    /// Static peers (ip:port, comma-separated): the fan-out of every publish.
    #[arg(long, value_delimiter = ',', required = true)]
    peers: Vec<std::net::SocketAddr>,
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
        Mode::Broadcast => finish(&broadcast(), cli.opts.json),
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
            let mut report = Report::new(format!("nomq-harness device {}", args.peer));
            runtime.block_on(device::check_device(&opts, &mut report));
            finish(&report, cli.opts.json)
        }
        Mode::Node(args) => runtime.block_on(child_node(args)),
        Mode::StdDevice(args) => std_device(args),
        Mode::NetnsProbe { role } => netns_probe(role),
        Mode::Tap => finish(&tap_mode(), cli.opts.json),
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
    let mut r = Report::new("nomq-harness loopback (127.0.0.1, static peers)");
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
    let mut r = Report::new("nomq-harness lossy (UDP relay: 20% loss, 2% duplication, reordering)");
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
async fn separate_processes() -> scenarios::Outcome {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let ports = scenarios::free_ports(3);
    let mut children = Vec::new();
    for i in 1..3 {
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
            "8000",
        ])
        .arg("--bind")
        .arg(ports[i].to_string())
        .arg("--peer")
        .arg(ports[0].to_string())
        .stdout(std::process::Stdio::piped());
        children.push(spawn_ready(cmd)?);
    }
    let a = scenarios::node(
        ports[0],
        ports[1..].to_vec(),
        scenarios::keyring(1),
        scenarios::fast_engine(),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..5u8 {
        let d = a
            .handle
            .publish("proc/x", vec![i], nomq_host::PublishOptions::qos(Qos::ExactlyOnce))
            .await
            .map_err(|e| e.to_string())?;
        if d.status != nomq_host::Status::Acknowledged || d.acked.len() != 2 {
            return Err(format!("message {i}: {d:?}"));
        }
    }
    for (k, child) in children.into_iter().enumerate() {
        let (ok, lines) = wait_child(child)?;
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
/// checker; its rows are prefixed `std device:`.
async fn loopback_device(r: &mut Report) {
    let started = std::time::Instant::now();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            r.record("std device: process", Err(format!("cannot locate own binary: {e}")));
            return;
        }
    };
    // Device, checking node, capture socket.
    let ports = scenarios::free_ports(3);
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["__device", "--id", LOOPBACK_DEVICE_ID, "--duration-secs", "180"])
        .arg("--bind")
        .arg(ports[0].to_string())
        .arg("--peers")
        .arg(format!("{},{}", ports[1], ports[2]))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = match spawn_ready(cmd) {
        Ok(c) => c,
        Err(e) => {
            r.record_timed("std device: process", started.elapsed(), Err(e));
            return;
        }
    };
    let opts = DeviceCheck {
        bind: ports[1],
        capture: Some(ports[2]),
        id: LOOPBACK_DEVICE_ID.into(),
        ..DeviceCheck::new(ports[0])
    };
    let mut rows = Report::new("std device");
    device::check_device(&opts, &mut rows).await;
    let early = child.0.try_wait().ok().flatten();
    let _ = child.0.kill();
    let _ = wait_child(child);
    for row in rows.rows() {
        let mut row = row.clone();
        let name = row.name.strip_prefix("device ").unwrap_or(&row.name);
        row.name = format!("std device: {name}");
        r.push(row);
    }
    if let Some(status) = early {
        r.record("std device: process", Err(format!("exited during the check ({status})")));
    }
}

/// `__device`: the device script over a std UDP socket until its time is up.
fn std_device(a: StdDeviceArgs) -> ExitCode {
    let loopback_only = nomq_harness::netns::lab_namespace().is_none();
    if loopback_only && !std::iter::once(&a.bind).chain(&a.peers).all(|p| p.ip().is_loopback()) {
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
    match device::run_std_device(&opts, ready) {
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

/// A child node and the lines it prints after READY.
type Child = (std::process::Child, std::thread::JoinHandle<Vec<String>>);

/// Waits for a child and returns whether it succeeded and its output lines.
fn wait_child((mut child, lines): Child) -> Result<(bool, Vec<String>), String> {
    let status = child.wait().map_err(|e| e.to_string())?;
    Ok((status.success(), lines.join().unwrap_or_default()))
}

/// Spawns a child node and waits (bounded) for its READY line.
fn spawn_ready(mut cmd: std::process::Command) -> Result<Child, String> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut rest = Vec::new();
        let mut ready = false;
        for l in lines.by_ref().map_while(Result::ok) {
            if !ready && l == "READY" {
                ready = true;
                let _ = tx.send(());
                continue;
            }
            rest.push(l);
        }
        rest
    });
    rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
        let _ = child.kill();
        "child node never became ready".to_string()
    })?;
    Ok((child, reader))
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
    if a.role == "sub" {
        let mut sub = match node.subscribe(&a.pattern).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("__node: {e}");
                return ExitCode::from(2);
            }
        };
        println!("READY");
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
        // Stay a moment so late duplicates would show (exactly-once is checked by count).
        tokio::time::sleep(Duration::from_millis(300)).await;
        node.shutdown().await;
        return ExitCode::SUCCESS;
    }
    println!("READY");
    tokio::time::sleep(Duration::from_millis(600)).await;
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

fn finish(report: &Report, json: bool) -> ExitCode {
    if json {
        println!("{}", report.to_json());
    } else {
        report.print();
    }
    ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1))
}

/// The `broadcast` mode: builds the namespace lab, checks it carries broadcast and
/// multicast, then runs NoMQ nodes in it: one publisher, two subscribers, by subnet
/// broadcast and by multicast.
fn broadcast() -> Report {
    let mut report = Report::new("nomq-harness broadcast");
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
            "8000",
        ])
        .arg("--bind")
        .arg(format!("0.0.0.0:{PORT}"))
        .args(&fanout)
        .stdout(std::process::Stdio::piped());
        subs.push(spawn_ready(cmd)?);
    }
    let mut cmd = lab.command(0, exe).map_err(|e| e.to_string())?;
    cmd.args(["__node", "--role", "pub", "--channel", "lab/temp", "--qos", "1", "--count", "3"])
        .arg("--bind")
        .arg(format!("0.0.0.0:{PORT}"))
        .args(&fanout);
    let out = cmd.output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let acked = text.lines().filter(|l| l.starts_with("OUTCOME Acknowledged acked=2")).count();
    for (k, child) in subs.into_iter().enumerate() {
        let (ok, lines) = wait_child(child)?;
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
fn tap_mode() -> Report {
    let mut report = Report::new(
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
