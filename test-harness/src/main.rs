//! `nomq-harness`: runs NoMQ scenarios and prints a PASS / FAIL / SKIP table.
//!
//! Exit status: 0 when nothing failed, 1 when a scenario failed, 2 for a usage error or a
//! mode that has no scenarios yet.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use nomq_harness::netns::{Lab, LabError};
use nomq_harness::probe::{self, ProbeKind};
use nomq_harness::report::Report;

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
    /// Internal: one side of a lab probe, run inside a namespace by `broadcast`.
    #[command(name = "__netns-probe", hide = true)]
    NetnsProbe {
        #[command(subcommand)]
        role: ProbeRole,
    },
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
    match cli.mode {
        Mode::Loopback => not_yet("loopback"),
        Mode::Lossy => not_yet("lossy"),
        Mode::Broadcast => finish(&broadcast(), cli.opts.json),
        Mode::NetnsProbe { role } => netns_probe(role),
    }
}

/// Modes whose NoMQ scenarios need the host adapter, which is not there yet.
fn not_yet(mode: &str) -> ExitCode {
    eprintln!(
        "nomq-harness {mode}: the {mode} scenarios arrive with the host adapter (nomq-host); \
         nothing to run yet"
    );
    ExitCode::from(2)
}

fn finish(report: &Report, json: bool) -> ExitCode {
    if json {
        println!("{}", report.to_json());
    } else {
        report.print();
    }
    ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1))
}

/// The `broadcast` mode: builds the namespace lab and checks it carries broadcast and
/// multicast. NoMQ scenarios over the lab join these rows once the host adapter exists.
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
