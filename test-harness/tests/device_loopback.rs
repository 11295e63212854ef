//! The device checker against the loopback device (`nomq-harness __device`) on 127.0.0.1:
//! every check passes, including the host-side replay (the device lists the capture socket).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use nomq_harness::device::{DeviceCheck, check_device};
use nomq_harness::report::{Outcome, Report};
use nomq_harness::scenarios::free_ports;

/// Kills the device process however the test ends.
struct Device(std::process::Child);
impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_device(bind: SocketAddr, peers: &[SocketAddr]) -> Device {
    let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nomq-harness"))
        .args(["__device", "--id", "it-1", "--duration-secs", "60"])
        .args(["--bind", &bind.to_string(), "--peers", &peers.join(",")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn __device");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read READY");
    assert_eq!(line.trim(), "READY");
    Device(child)
}

/// Runs the checker from `bind` (capture socket `capture`) against the device at `device`.
async fn check(
    device: SocketAddr,
    bind: SocketAddr,
    capture: SocketAddr,
    id: &str,
    secs: u64,
) -> Report {
    let opts = DeviceCheck {
        bind,
        capture: Some(capture),
        id: id.into(),
        timeout: Duration::from_secs(secs),
        ..DeviceCheck::new(device)
    };
    let mut report = Report::new(format!("device checker vs loopback device, id {id}"));
    check_device(&opts, &mut report).await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_device_passes_every_check() {
    let ports = free_ports(3);
    let _device = spawn_device(ports[0], &ports[1..]);
    let report = check(ports[0], ports[1], ports[2], "it-1", 15).await;
    let text = report.render();
    assert_eq!(report.rows().len(), 5, "{text}");
    assert!(report.rows().iter().all(|r| r.outcome == Outcome::Pass), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_capture_peer_the_host_replay_is_skipped_and_a_wrong_id_fails() {
    let ports = free_ports(3);
    // The device does not send to the capture socket.
    let _device = spawn_device(ports[0], &ports[1..2]);
    let report = check(ports[0], ports[1], ports[2], "it-1", 15).await;
    let text = report.render();
    let outcomes: Vec<Outcome> = report.rows().iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [Outcome::Pass, Outcome::Pass, Outcome::Pass, Outcome::Pass, Outcome::Skip],
        "{text}"
    );
    assert!(text.contains("does not list the capture address"), "{text}");

    // Another id: the retained status of `it-1` is not the one asked for.
    let ports2 = free_ports(2);
    let report = check(ports[0], ports2[0], ports2[1], "someone-else", 2).await;
    assert_eq!(report.rows()[0].outcome, Outcome::Fail, "{}", report.render());
    assert_eq!(report.exit_code(), 1);
}
