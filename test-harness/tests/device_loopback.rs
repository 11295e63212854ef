//! The device checker against the loopback device (`nomq-harness __device`) on 127.0.0.1:
//! every check passes, including the host-side replay (the device lists the capture socket).
//!
//! Every socket binds port 0 once: the device binds first and prints `BOUND <address>`,
//! the checker's node and capture socket bind next, and the device learns them on its
//! standard input (`PEERS ...`).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use nomq_harness::device::{DeviceCheck, check_device_as};
use nomq_harness::report::{Outcome, Report};

/// Kills the device process however the test ends.
struct Device {
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    /// Kept open so the device's later lines (READY) do not hit a closed pipe.
    _stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}
impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the device on a port of its own and reads its address.
fn spawn_device() -> Device {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nomq-harness"))
        .args(["__device", "--id", "it-1", "--duration-secs", "60"])
        .args(["--bind", "127.0.0.1:0", "--peers-from-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn __device");
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout");
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read BOUND");
    let addr = line.trim().strip_prefix("BOUND ").expect("BOUND <address>").parse().unwrap();
    Device { child, stdin, _stdout: stdout, addr }
}

/// Runs the checker (node and capture socket on ports of their own) against `device`;
/// with `tell`, first tells the device its peers: the node, and the capture socket if
/// `capture_peer`.
async fn check(device: &mut Device, tell: bool, capture_peer: bool, id: &str, secs: u64) -> Report {
    let lo: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let opts = DeviceCheck {
        bind: lo,
        capture: Some(lo),
        id: id.into(),
        timeout: Duration::from_secs(secs),
        ..DeviceCheck::new(device.addr)
    };
    let mut report = Report::new(format!("device checker vs loopback device, id {id}"));
    let stdin = &mut device.stdin;
    check_device_as(&opts, &mut report, &|n| n.to_string(), |node, capture| {
        if !tell {
            return Ok(());
        }
        let stdin = stdin.as_mut().ok_or("no stdin")?;
        let peers = if capture_peer { format!("{node},{capture}") } else { node.to_string() };
        writeln!(stdin, "PEERS {peers}").and_then(|()| stdin.flush()).map_err(|e| e.to_string())
    })
    .await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_device_passes_every_check() {
    let mut device = spawn_device();
    let report = check(&mut device, true, true, "it-1", 15).await;
    let text = report.render();
    assert_eq!(report.rows().len(), 5, "{text}");
    assert!(report.rows().iter().all(|r| r.outcome == Outcome::Pass), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_capture_peer_the_host_replay_is_skipped_and_a_wrong_id_fails() {
    let mut device = spawn_device();
    // The device does not send to the capture socket.
    let report = check(&mut device, true, false, "it-1", 15).await;
    let text = report.render();
    let outcomes: Vec<Outcome> = report.rows().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Pass, Outcome::Pass, Outcome::Pass, Outcome::Pass, Outcome::Skip],
        "{text}"
    );
    assert!(text.contains("does not list the capture address"), "{text}");

    // Another id: the retained status of `it-1` is not the one asked for.
    let report = check(&mut device, false, false, "someone-else", 2).await;
    assert_eq!(report.rows()[0].outcome, Outcome::Fail, "{}", report.render());
    assert_eq!(report.exit_code(), 1);
}
