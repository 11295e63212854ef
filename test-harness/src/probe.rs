//! Plain-UDP broadcast and multicast probes of a [`Lab`]: proof that the lab's network carries
//! what the `broadcast` mode needs, independent of NoMQ.
//!
//! [`run`] drives one probe from outside the namespaces. It starts the harness binary's hidden
//! subcommand `__netns-probe listen` in every host but host 0, waits until each prints `READY`,
//! then runs `__netns-probe send` in host 0 and waits until every listener prints
//! `RECEIVED <source>`. Every step has a deadline; children still running at the end are
//! killed.
//!
//! [`send`] refuses to run outside a lab network namespace, and only sends to the lab's
//! broadcast address or a 239.77.0.0/16 group: it cannot put a broadcast on a real network.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::netns::{self, BROADCAST, Lab, MULTICAST_GROUP};

/// How long a listener waits for the datagram, and the orchestrator for each step.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Copies the sender sends (a listener stops at the first; the rest cover a lost one).
const SEND_COUNT: u32 = 5;
const SEND_INTERVAL: Duration = Duration::from_millis(100);

/// Which kind of one-to-many delivery a probe checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// To the subnet broadcast address 10.77.0.255.
    Broadcast,
    /// To the multicast group 239.77.0.1, joined by each listener on its `eth0`.
    Multicast,
}

impl ProbeKind {
    /// The UDP port this kind of probe uses (one each, so the two never see each other's
    /// datagrams).
    #[must_use]
    pub fn port(self) -> u16 {
        match self {
            ProbeKind::Broadcast => 47_701,
            ProbeKind::Multicast => 47_702,
        }
    }

    /// Where host 0 sends.
    #[must_use]
    pub fn destination(self) -> SocketAddrV4 {
        match self {
            ProbeKind::Broadcast => SocketAddrV4::new(BROADCAST, self.port()),
            ProbeKind::Multicast => SocketAddrV4::new(MULTICAST_GROUP, self.port()),
        }
    }

    /// `broadcast` or `multicast`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Broadcast => "broadcast",
            ProbeKind::Multicast => "multicast",
        }
    }
}

/// Listens on `0.0.0.0:port` (joining `group` on interface `iface` when given) until a
/// datagram whose payload is `token` arrives or `timeout` passes. Prints `READY` once the
/// socket is bound (and joined), then `RECEIVED <source>` on success.
///
/// # Errors
///
/// A message when binding or joining fails or nothing arrives in time.
pub fn listen(
    port: u16,
    group: Option<(Ipv4Addr, Ipv4Addr)>,
    token: &str,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let socket =
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|e| format!("bind: {e}"))?;
    if let Some((group, iface)) = group {
        socket.join_multicast_v4(&group, &iface).map_err(|e| format!("join {group}: {e}"))?;
    }
    say("READY");
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no probe datagram within {} ms", timeout.as_millis()));
        }
        socket.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match socket.recv_from(&mut buf) {
            Ok((n, src)) if &buf[..n] == token.as_bytes() => {
                say(&format!("RECEIVED {src}"));
                return Ok(src);
            }
            // Someone else's datagram: keep waiting until the deadline.
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
}

/// Sends `token` from `from` (port chosen by the kernel) to `to`, 5 times
/// 100 ms apart, with broadcast allowed and multicast TTL 1.
///
/// # Errors
///
/// Refuses — before opening any socket — unless this process is in a lab network
/// namespace ([`netns::lab_namespace`]) and `to` is the lab broadcast address or a 239.77.0.0/16 group. Also any socket
/// error.
pub fn send(from: Ipv4Addr, to: SocketAddrV4, token: &str) -> Result<(), String> {
    check_send_allowed(netns::lab_namespace().as_deref(), to)?;
    let socket = UdpSocket::bind((from, 0)).map_err(|e| format!("bind {from}: {e}"))?;
    socket.set_broadcast(true).map_err(|e| e.to_string())?;
    socket.set_multicast_ttl_v4(1).map_err(|e| e.to_string())?;
    for k in 0..SEND_COUNT {
        if k > 0 {
            std::thread::sleep(SEND_INTERVAL);
        }
        socket.send_to(token.as_bytes(), to).map_err(|e| format!("send to {to}: {e}"))?;
    }
    Ok(())
}

/// The guard of [`send`]: the sender must be in a lab namespace (`namespace` is what
/// [`netns::lab_namespace`] found) and `to` must be the lab broadcast address or a
/// 239.77.0.0/16 group.
///
/// # Errors
///
/// Why sending is refused.
pub fn check_send_allowed(namespace: Option<&str>, to: SocketAddrV4) -> Result<(), String> {
    if namespace.is_none() {
        return Err("refusing to send: this process is not in a lab network namespace".into());
    }
    let [a, b, ..] = to.ip().octets();
    if *to.ip() != BROADCAST && (a, b) != (239, 77) {
        return Err(format!("refusing to send to {to}: not the lab's broadcast address or group"));
    }
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // The orchestrator reads these lines; if stdout is gone there is no one to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Kills and reaps every child still running when dropped, so no probe outlives its run.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// What the listeners (hosts 1..) have said so far; index 0 (the sender) stays unused.
struct Progress {
    ready: Vec<bool>,
    received: Vec<Option<String>>,
    ended: Vec<bool>,
}

impl Progress {
    fn new(hosts: usize) -> Self {
        Self { ready: vec![false; hosts], received: vec![None; hosts], ended: vec![false; hosts] }
    }

    /// Reads listener output until `done` holds for every listener, or [`TIMEOUT`] passes.
    fn wait(
        &mut self,
        rx: &mpsc::Receiver<(usize, Option<String>)>,
        what: &str,
        done: impl Fn(&Self, usize) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        while !(1..self.ready.len()).all(|i| done(self, i)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, Some(line))) => {
                    if line == "READY" {
                        self.ready[i] = true;
                    } else if let Some(src) = line.strip_prefix("RECEIVED ") {
                        self.received[i] = Some(src.to_string());
                    }
                }
                Ok((i, None)) => self.ended[i] = true,
                Err(_) => return Err(format!("timed out waiting for {what}")),
            }
        }
        Ok(())
    }
}

/// Runs one probe in `lab` (at least 2 hosts): host 0 sends, every other host must receive
/// from 10.77.0.1. `exe` is the harness binary (it must have the `__netns-probe`
/// subcommand). Takes at most about 3 × [`TIMEOUT`].
///
/// # Errors
///
/// A one-line reason naming the hosts that did not receive, or the step that failed.
pub fn run(lab: &Lab, exe: &Path, kind: ProbeKind) -> Result<String, String> {
    if lab.len() < 2 {
        return Err("a probe needs at least 2 hosts".into());
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let token = format!("nomq-probe-{}-{}-{nanos}", kind.name(), std::process::id());
    let timeout_ms = TIMEOUT.as_millis().to_string();
    let port = kind.port().to_string();

    let (tx, rx) = mpsc::channel::<(usize, Option<String>)>();
    let mut children = Children(Vec::new());
    let mut readers = Vec::new();
    for i in 1..lab.len() {
        let mut cmd = lab.command(i, exe).map_err(|e| e.to_string())?;
        cmd.args(["__netns-probe", "listen", "--port", &port, "--token", &token]);
        cmd.args(["--timeout-ms", &timeout_ms]);
        if kind == ProbeKind::Multicast {
            let iface = Lab::address_of(i).to_string();
            cmd.args(["--group", &MULTICAST_GROUP.to_string(), "--iface", &iface]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start listener in host {i}: {e}"))?;
        let stdout = child.stdout.take();
        children.0.push(child);
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            if let Some(stdout) = stdout {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send((i, Some(line)));
                }
            }
            // End of output: the listener exited (or was killed).
            let _ = tx.send((i, None));
        }));
    }
    drop(tx);

    let listeners = lab.len() - 1;
    let mut progress = Progress::new(lab.len());
    // 1. Every listener bound (a listener that exits early ends this step too).
    progress.wait(&rx, "listeners to be ready", |p, i| p.ready[i] || p.ended[i])?;
    if let Some(i) = (1..lab.len()).find(|&i| !progress.ready[i]) {
        return Err(format!("listener in host {i} exited before it was ready"));
    }

    // 2. Host 0 sends.
    let exe_str = exe.to_string_lossy();
    let from = Lab::address_of(0).to_string();
    let to = kind.destination().to_string();
    let args =
        [&*exe_str, "__netns-probe", "send", "--from", &from, "--to", &to, "--token", &token];
    lab.exec(0, &args).map_err(|e| format!("sender in host 0: {e}"))?;

    // 3. Every listener received, or exited, or the deadline passed.
    let waited = progress.wait(&rx, "datagrams", |p, i| p.received[i].is_some() || p.ended[i]);
    drop(children);
    for reader in readers {
        let _ = reader.join();
    }

    let received = progress.received;
    let missing: Vec<String> =
        (1..lab.len()).filter(|&i| received[i].is_none()).map(|i| i.to_string()).collect();
    if !missing.is_empty() {
        let why = waited.err().unwrap_or_else(|| "listener gave up".into());
        return Err(format!(
            "{} to {to}: host(s) {} received nothing ({why})",
            kind.name(),
            missing.join(", ")
        ));
    }
    let wrong: Vec<String> = (1..lab.len())
        .filter_map(|i| {
            received[i]
                .as_ref()
                .filter(|s| !s.starts_with(&format!("{from}:")))
                .map(|s| format!("host {i} from {s}"))
        })
        .collect();
    if !wrong.is_empty() {
        return Err(format!("unexpected source: {}", wrong.join(", ")));
    }
    Ok(format!("{} to {to}: {listeners} of {listeners} hosts received from {from}", kind.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sending_needs_a_lab_namespace_and_a_lab_destination() {
        let lab = Some("nomq-1-0-h0");
        for kind in [ProbeKind::Broadcast, ProbeKind::Multicast] {
            assert_eq!(check_send_allowed(lab, kind.destination()), Ok(()));
            let refused = check_send_allowed(None, kind.destination()).unwrap_err();
            assert!(refused.contains("not in a lab network namespace"), "{refused}");
        }
        for outside in ["255.255.255.255:1", "10.0.0.255:1", "224.0.0.251:5353", "8.8.8.8:53"] {
            let to: SocketAddrV4 = outside.parse().unwrap();
            assert!(check_send_allowed(lab, to).is_err(), "{outside} must be refused");
        }
    }

    #[test]
    fn send_refuses_here_before_opening_a_socket() {
        // The test process is in no lab namespace. The destination is the lab's, so only the
        // namespace guard stands between this call and a socket; it must refuse. (Were it
        // broken, the loopback source would still keep the datagram on this machine: Linux
        // refuses to route a 127.0.0.0/8 source out of a non-loopback interface.)
        let err = send(Ipv4Addr::LOCALHOST, ProbeKind::Broadcast.destination(), "t").unwrap_err();
        assert!(err.contains("not in a lab network namespace"), "{err}");
    }

    #[test]
    fn kinds_use_distinct_ports_and_lab_destinations() {
        assert_ne!(ProbeKind::Broadcast.port(), ProbeKind::Multicast.port());
        assert_eq!(*ProbeKind::Broadcast.destination().ip(), BROADCAST);
        assert_eq!(*ProbeKind::Multicast.destination().ip(), MULTICAST_GROUP);
    }
}
