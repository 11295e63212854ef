//! `tap` mode: the embedded adapters on a real network stack, on this machine.
//!
//! For each stack (embassy-net, then plain smoltcp) the harness makes a namespace with a
//! TAP device ([`TapLab`](crate::netns::TapLab)), starts the device program inside it (a
//! user-space IP stack on `tap0`, 192.168.69.2, running the `nomq-esp` adapter and the
//! device script of `docs/DEVICE.md`), and runs `nomq-harness device` against it from the
//! kernel side of `tap0` (192.168.69.1, a tokio `nomq-host` node):
//!
//! ```text
//!   namespace nomq-<pid>-<k>-tap
//!   ┌─────────────────────────────────────────────────────────────────────┐
//!   │ nomq-harness device (tokio)   kernel    tap0    device program      │
//!   │ 192.168.69.1:8888 / :8889  ── IP ───── fd ─────  embassy-net or     │
//!   │                                                  smoltcp, .2:8888   │
//!   └─────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The device programs are hidden subcommands of this binary (`__tap-device`), so one
//! build carries everything. They use the same smoltcp 0.13 that embassy-net 0.9 is built
//! on, as the firmware does.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nomq::node::ClockMode;
use nomq::{Config, Keyring, Node};
use nomq_esp::Fanout;
use nomq_esp::device::{DeviceApp, DeviceConfig};
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::netns::TapLab;
use crate::report::{Outcome, Report, Row};

/// The kernel's side of `tap0`, where the tokio node runs.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 69, 1);
/// The device program's address on `tap0`.
pub const DEVICE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 69, 2);
/// NoMQ's port on both sides.
pub const PORT: u16 = 8888;
/// The checker's capture socket (the device lists it as a peer, for the replay check).
pub const CAPTURE_PORT: u16 = 8889;

/// The user-space stack a device program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StackKind {
    /// embassy-net on the embassy std executor (`nomq_esp::embassy`).
    Embassy,
    /// smoltcp driven by a poll loop (`nomq_esp::poll`).
    Smoltcp,
}

impl StackKind {
    /// Lower-case name, as on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            StackKind::Embassy => "embassy",
            StackKind::Smoltcp => "smoltcp",
        }
    }
}

/// A device program's settings.
#[derive(Clone, Debug)]
pub struct DeviceOpts {
    /// Which stack.
    pub stack: StackKind,
    /// TAP interface name.
    pub tap: String,
    /// Own address (/24).
    pub ip: Ipv4Addr,
    /// Static peers: the fan-out of every publish.
    pub peers: Vec<SocketAddrV4>,
    /// Device id for the script's channels.
    pub id: String,
    /// How long to run before exiting 0.
    pub duration: Duration,
}

/// The device's node: MCU-like capacities (8 peers, 4 subscriptions each, 16 outbox
/// entries, 4 retained, 16 QoS 2 receive slots, 8 lockouts, 128-byte messages).
pub type DeviceNode = Node<Keyring<0>, 8, 4, 16, 4, 16, 8, 128>;

/// A device's node: the harness's test keys, an MCU's capacities ([`DeviceNode`]) and an
/// MCU's clock (unsynced, Unix time unknown), seeded from the OS generator through
/// `rand_core`, as firmware seeds from the chip's RNG.
///
/// # Errors
/// The OS random generator failed.
pub fn device_node(now: nomq::Instant) -> Result<DeviceNode, String> {
    let ring = Keyring::new(&crate::test_key_pair()).map_err(|e| format!("keyring: {e:?}"))?;
    let mut cfg = Config::default();
    // Like a fresh MCU without SNTP.
    cfg.clock = ClockMode::Unsynced;
    let mut rng = getrandom::SysRng;
    let seed = nomq_esp::seed(&mut rng).map_err(|e| format!("seed: {e}"))?;
    Ok(DeviceNode::new(cfg, ring, seed, now, 0))
}

fn peer_endpoints(peers: &[SocketAddrV4]) -> Vec<IpEndpoint> {
    peers.iter().map(|p| IpEndpoint::new(IpAddress::Ipv4(*p.ip()), p.port())).collect()
}

/// Runs a device program until `opts.duration` passes. Returns the process exit code.
#[must_use]
pub fn run_device(opts: DeviceOpts) -> i32 {
    let app = match DeviceApp::new(&opts.id, DeviceConfig::default()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("__tap-device: {e}");
            return 2;
        }
    };
    let r = match opts.stack {
        StackKind::Embassy => embassy_device::run(opts, app),
        StackKind::Smoltcp => smoltcp_device::run(opts, app),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("__tap-device: {e}");
            1
        }
    }
}

/// The embassy-net device: the stack runner, the NoMQ runner and the device script are
/// three tasks on embassy's std executor.
mod embassy_device {
    use super::*;
    use embassy_executor::{Executor, Spawner};
    use embassy_net::{Ipv4Cidr, StackResources, StaticConfigV4};
    use embassy_net_tuntap::TunTapDevice;
    use embassy_time::Timer;
    use nomq_esp::embassy::{Client, NoopRawMutex, Resources, Runner, State};

    type NomqRunner = Runner<'static, NoopRawMutex, DeviceNode>;
    type NomqClient = Client<'static, NoopRawMutex, DeviceNode>;

    static DONE: AtomicBool = AtomicBool::new(false);
    static CODE: AtomicI32 = AtomicI32::new(0);

    pub(super) fn run(opts: DeviceOpts, app: DeviceApp) -> Result<(), String> {
        let executor: &'static mut Executor = Box::leak(Box::new(Executor::new()));
        executor.run_until(
            |spawner| match main_task(spawner, opts, app) {
                Ok(t) => spawner.spawn(t),
                Err(e) => finish(Err(format!("spawn: {e:?}"))),
            },
            || DONE.load(Ordering::SeqCst),
        );
        match CODE.load(Ordering::SeqCst) {
            0 => Ok(()),
            _ => Err("embassy device failed (see above)".into()),
        }
    }

    fn finish(r: Result<(), String>) {
        if let Err(e) = r {
            eprintln!("__tap-device embassy: {e}");
            CODE.store(1, Ordering::SeqCst);
        }
        DONE.store(true, Ordering::SeqCst);
    }

    #[embassy_executor::task]
    async fn net_task(mut runner: embassy_net::Runner<'static, TunTapDevice>) -> ! {
        runner.run().await
    }

    #[embassy_executor::task]
    async fn nomq_task(mut runner: NomqRunner) -> ! {
        runner.run().await
    }

    #[embassy_executor::task]
    async fn device_task(client: NomqClient, app: DeviceApp) {
        let r = nomq_esp::embassy::run_device(client, app).await;
        finish(r.map(|_| ()).map_err(|e| e.to_string()));
    }

    #[embassy_executor::task]
    async fn main_task(spawner: Spawner, opts: DeviceOpts, app: DeviceApp) {
        finish(start(spawner, opts, app).await);
    }

    async fn start(spawner: Spawner, opts: DeviceOpts, app: DeviceApp) -> Result<(), String> {
        let mut tap =
            TunTapDevice::new(&opts.tap).map_err(|e| format!("open {}: {e}", opts.tap))?;
        tap.set_hardware_address([0x02, 0, 0, 0x69, 0, 2]);
        let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
            address: Ipv4Cidr::new(opts.ip, 24),
            gateway: None,
            dns_servers: heapless::Vec::new(),
        });
        let mut rng = getrandom::SysRng;
        let seed = nomq_esp::seed(&mut rng).map_err(|e| format!("seed: {e}"))?;
        let [s0, s1, s2, s3, s4, s5, s6, s7, ..] = seed;
        let resources: &'static mut StackResources<4> = Box::leak(Box::new(StackResources::new()));
        let (stack, net_runner) = embassy_net::new(
            tap,
            config,
            resources,
            u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        );
        spawner.spawn(net_task(net_runner).map_err(|e| format!("{e:?}"))?);

        let node = device_node(nomq_esp::embassy::now())?;
        let state: &'static State<NoopRawMutex, DeviceNode> = Box::leak(Box::new(State::new(node)));
        let sockets: &'static mut Resources = Box::leak(Box::new(Resources::new()));
        let peers: &'static [IpEndpoint] =
            Box::leak(peer_endpoints(&opts.peers).into_boxed_slice());
        let (client, nomq_runner) =
            nomq_esp::embassy::new(stack, state, sockets, PORT, Fanout::Peers(peers))
                .map_err(|e| format!("bind: {e:?}"))?;
        spawner.spawn(nomq_task(nomq_runner).map_err(|e| format!("{e:?}"))?);
        spawner.spawn(device_task(client, app).map_err(|e| format!("{e:?}"))?);
        println!("embassy device {} up at {}:{PORT}, peers {:?}", opts.id, opts.ip, opts.peers);

        Timer::after(embassy_time::Duration::from_micros(opts.duration.as_micros() as u64)).await;
        let s = client.with_node(|n| n.stats().clone());
        println!("embassy device done: {s:?} {:?}", client.tx_stats());
        Ok(())
    }
}

/// The smoltcp device: one poll loop over the TAP interface, the adapter and the script.
mod smoltcp_device {
    use super::*;
    use nomq_esp::poll::{Poller, instant};
    use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
    use smoltcp::phy::{Medium, TunTapInterface, wait};
    use smoltcp::socket::udp;
    use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
    use smoltcp::wire::{EthernetAddress, IpCidr};

    pub(super) fn run(opts: DeviceOpts, mut app: DeviceApp) -> Result<(), String> {
        let mut tap = TunTapInterface::new(&opts.tap, Medium::Ethernet)
            .map_err(|e| format!("open {}: {e}", opts.tap))?;
        let mut cfg = IfaceConfig::new(EthernetAddress([0x02, 0, 0, 0x69, 0, 3]).into());
        let mut rng = getrandom::SysRng;
        let seed = nomq_esp::seed(&mut rng).map_err(|e| format!("seed: {e}"))?;
        cfg.random_seed = u64::from_le_bytes([
            seed[0], seed[1], seed[2], seed[3], seed[4], seed[5], seed[6], seed[7],
        ]);
        let start = SmolInstant::now();
        let mut iface = Interface::new(cfg, &mut tap, start);
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(opts.ip), 24));
        });

        let rx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
        let tx = udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 8192]);
        let mut sockets = SocketSet::new(vec![]);
        let peers = peer_endpoints(&opts.peers);
        let node = device_node(instant(start))?;
        let mut nomq =
            Poller::new(node, &mut sockets, udp::Socket::new(rx, tx), PORT, Fanout::Peers(&peers))
                .map_err(|e| format!("bind: {e:?}"))?;
        println!("smoltcp device {} up at {}:{PORT}, peers {:?}", opts.id, opts.ip, opts.peers);

        let end = start + SmolDuration::from_micros(opts.duration.as_micros() as u64);
        loop {
            let now = SmolInstant::now();
            if now >= end {
                break;
            }
            iface.poll(now, &mut tap, &mut sockets);
            let t = instant(now);
            let mut failed = None;
            let next = nomq.poll(now, &mut sockets, |m, n| app.on_message(t, n, &m));
            if let Err(e) = app.poll(t, nomq.node()) {
                failed = Some(e.to_string());
            }
            // What the script queued leaves in this same round.
            let next = next
                .into_iter()
                .chain(nomq.poll(now, &mut sockets, |m, n| app.on_message(t, n, &m)))
                .min();
            if let Some(e) = failed {
                return Err(e);
            }
            iface.poll(now, &mut tap, &mut sockets);
            let app_at = SmolInstant::from_micros(app.poll_at().total_micros() as i64);
            let mut wake = next.unwrap_or(end).min(app_at).min(end);
            if let Some(d) = iface.poll_delay(now, &sockets) {
                wake = wake.min(now + d);
            }
            let delay = if wake > now { wake - now } else { SmolDuration::ZERO };
            if delay > SmolDuration::ZERO {
                wait(tap_fd(&tap), Some(delay)).map_err(|e| format!("wait: {e}"))?;
            }
        }
        let tx = nomq.tx_stats();
        println!("smoltcp device done: {:?} {tx:?}", nomq.node().stats());
        Ok(())
    }

    fn tap_fd(tap: &TunTapInterface) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        tap.as_raw_fd()
    }
}

/// Runs one stack's device program in a fresh TAP namespace and the checker against it;
/// adds the checker's rows to `report`, prefixed with the stack's name.
///
/// # Errors
/// The namespace could not be made (the caller decides between SKIP and FAIL).
pub fn run_stack(
    stack: StackKind,
    exe: &Path,
    report: &mut Report,
) -> Result<(), crate::netns::LabError> {
    let lab = TapLab::create(HOST_IP)?;
    let name = stack.name();
    let id = format!("tap-{name}");
    let log = std::env::temp_dir().join(format!("nomq-tap-{}-{name}.log", std::process::id()));
    let started = Instant::now();
    let device = File::create(&log).and_then(|out| {
        let err = out.try_clone()?;
        lab.command(exe)
            .args(["__tap-device", "--stack", name, "--tap", TapLab::TAP, "--id", &id])
            .args(["--ip", &DEVICE_IP.to_string(), "--duration-secs", "90"])
            .arg("--peers")
            .arg(format!("{HOST_IP}:{PORT},{HOST_IP}:{CAPTURE_PORT}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
    });
    let mut device = match device {
        Ok(c) => c,
        Err(e) => {
            report.record(format!("{name}: device program"), Err(format!("cannot start: {e}")));
            return Ok(());
        }
    };
    let check = lab
        .command(exe)
        // --quiet: only the JSON object (the rows are streamed here when parsed).
        .args(["--json", "--quiet", "device", "--id", &id, "--timeout-secs", "20"])
        .args(["--peer", &format!("{DEVICE_IP}:{PORT}")])
        .args(["--bind", &format!("{HOST_IP}:{PORT}")])
        .args(["--capture", &format!("{HOST_IP}:{CAPTURE_PORT}")])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    let early_exit = device.try_wait().ok().flatten();
    let _ = device.kill();
    let _ = device.wait();
    let device_log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let tail = || device_log.lines().rev().take(6).collect::<Vec<_>>().join(" / ");
    if let Some(status) = early_exit {
        report.record(
            format!("{name}: device program"),
            Err(format!("exited early ({status}): {}", tail())),
        );
        return Ok(());
    }
    let rows = match check {
        Ok(out) => parse_rows(&String::from_utf8_lossy(&out.stdout)),
        Err(e) => Err(format!("cannot run the checker: {e}")),
    };
    match rows {
        Ok(rows) if !rows.is_empty() => {
            let failed = rows.iter().any(|r| r.outcome == Outcome::Fail);
            for mut row in rows {
                row.name = format!("{name}: {}", row.name);
                report.push(row);
            }
            if failed {
                eprintln!("{name} device log (last lines): {}", tail());
            }
        }
        Ok(_) => report.record_timed(
            format!("{name}: checker"),
            started.elapsed(),
            Err(format!("no results; device log: {}", tail())),
        ),
        Err(e) => report.record_timed(format!("{name}: checker"), started.elapsed(), Err(e)),
    }
    Ok(())
}

/// The rows of a report printed with `--json`.
fn parse_rows(json: &str) -> Result<Vec<Row>, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .map_err(|e| format!("checker output is not a JSON report ({e}): {}", json.trim()))?;
    let results = v["results"].as_array().ok_or("checker report has no results")?;
    Ok(results
        .iter()
        .map(|r| Row {
            name: r["name"].as_str().unwrap_or("?").to_string(),
            outcome: match r["outcome"].as_str() {
                Some("PASS") => Outcome::Pass,
                Some("SKIP") => Outcome::Skip,
                _ => Outcome::Fail,
            },
            detail: r["detail"].as_str().unwrap_or_default().to_string(),
            duration: r["duration_ms"].as_f64().map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        })
        .collect())
}
