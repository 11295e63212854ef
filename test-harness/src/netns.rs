//! A lab of hosts in Linux network namespaces, joined by veth pairs to a bridge, for the
//! `broadcast` mode: real broadcast and multicast that cannot leave the machine.
//!
//! ```text
//!   namespace nomq-<pid>-<k>-br          namespaces nomq-<pid>-<k>-h<i>
//!   ┌──────────────────────────┐         ┌──────────────────────────────┐
//!   │ br0 ── vh0 ══════════════╪═ veth ══╪═ eth0  10.77.0.1/24          │  host 0
//!   │     ── vh1 ══════════════╪═ veth ══╪═ eth0  10.77.0.2/24          │  host 1
//!   │     ── …                 │         │  lo up, 224.0.0.0/4 dev eth0 │  …
//!   └──────────────────────────┘         └──────────────────────────────┘
//! ```
//!
//! Every link is created inside the lab's own namespaces (`ip -n NS link add … peer name eth0
//! netns HOST`), so nothing is ever added to, or sent from, the root namespace. The bridge does
//! no IGMP snooping, so multicast reaches every port, like broadcast.
//!
//! Setup uses the `ip` command from iproute2 and needs `CAP_SYS_ADMIN` (root). Where that is
//! missing, [`Lab::create`] returns an error for which [`LabError::is_unavailable`] is true, so
//! a caller can print a clear SKIP. Dropping the [`Lab`] deletes its namespaces, and with them
//! the bridge and the veth pairs.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lab's subnet, 10.77.0.0/24; host `i` is 10.77.0.(i+1).
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
/// The lab subnet's broadcast address.
pub const BROADCAST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 255);
/// The multicast group the probes use (administratively scoped).
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(239, 77, 0, 1);
/// Most hosts a lab can hold (10.77.0.1 to 10.77.0.250).
pub const MAX_HOSTS: usize = 250;

/// Prefix of every namespace a lab creates; [`prune_stale`] only ever touches these.
const PREFIX: &str = "nomq-";

/// Why a lab could not be built or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The `ip` command (iproute2) is not installed.
    #[error("the `ip` command is missing: install iproute2 (apt-get install -y iproute2)")]
    IpMissing,
    /// Network namespaces cannot be created here (not root, no `CAP_SYS_ADMIN`, or a sandbox
    /// that forbids them). Holds what `ip` said.
    #[error("network namespaces are not permitted here (run as root): {0}")]
    NotPermitted(String),
    /// The host count is 0 or more than [`MAX_HOSTS`].
    #[error("a lab holds 1 to {MAX_HOSTS} hosts, not {0}")]
    BadSize(usize),
    /// A host index past the end of the lab.
    #[error("no host {0} in this lab")]
    NoSuchHost(usize),
    /// A setup or exec command failed. Holds the command line and what it printed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command that failed.
        command: String,
        /// Its standard error (or the spawn error).
        stderr: String,
    },
}

impl LabError {
    /// True when the machine cannot host a lab at all ([`LabError::IpMissing`] or
    /// [`LabError::NotPermitted`]): a reason to skip, not a failure of the code under test.
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LabError::IpMissing | LabError::NotPermitted(_))
    }
}

/// A set of namespace hosts on one bridge. Dropping it deletes everything it created.
#[derive(Debug)]
pub struct Lab {
    bridge_ns: String,
    hosts: Vec<String>,
    /// Every namespace created so far, bridge first; what Drop deletes.
    created: Vec<String>,
}

/// Distinguishes labs of one process (tests may build several at once).
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds a lab of `n` hosts. Namespaces left behind by harness processes that no longer
    /// exist are removed first (see [`prune_stale`]).
    ///
    /// # Errors
    ///
    /// [`LabError::IpMissing`] or [`LabError::NotPermitted`] when this machine cannot host a
    /// lab; [`LabError::BadSize`]; [`LabError::Command`] when a setup step fails. Whatever was
    /// created before the failure is deleted again.
    pub fn create(n: usize) -> Result<Lab, LabError> {
        if n == 0 || n > MAX_HOSTS {
            return Err(LabError::BadSize(n));
        }
        ip_available()?;
        prune_stale();
        let tag =
            format!("{PREFIX}{}-{}", std::process::id(), NEXT_LAB.fetch_add(1, Ordering::Relaxed));
        let mut lab =
            Lab { bridge_ns: format!("{tag}-br"), hosts: Vec::new(), created: Vec::new() };

        // The first step tells "cannot have namespaces here" apart from real failures.
        let br = lab.bridge_ns.clone();
        add_namespace(&br)?;
        lab.created.push(br.clone());
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;

        for i in 0..n {
            let host = format!("{tag}-h{i}");
            ip(&["netns", "add", &host])?;
            lab.created.push(host.clone());
            lab.hosts.push(host.clone());
            let port = format!("vh{i}");
            let addr = format!("{}/24", Lab::address_of(i));
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &host,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &host,
                "addr",
                "add",
                &addr,
                "broadcast",
                &BROADCAST.to_string(),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lab)
    }

    /// How many hosts the lab has.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Always false: a lab has at least one host.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The namespace of host `i`, if there is one.
    #[must_use]
    pub fn namespace(&self, i: usize) -> Option<&str> {
        self.hosts.get(i).map(String::as_str)
    }

    /// The namespace that holds the bridge.
    #[must_use]
    pub fn bridge_namespace(&self) -> &str {
        &self.bridge_ns
    }

    /// The address of host `i` (whether or not the lab has that host): 10.77.0.(i+1).
    #[must_use]
    pub fn address_of(i: usize) -> Ipv4Addr {
        let [a, b, c, _] = SUBNET.octets();
        // Hosts are at most MAX_HOSTS (250), so i + 1 fits in a u8.
        Ipv4Addr::new(a, b, c, u8::try_from(i + 1).unwrap_or(u8::MAX))
    }

    /// A command that runs `program` inside host `i`'s namespace
    /// (`ip netns exec <ns> <program>`); add arguments, pipes, and spawn it as usual.
    ///
    /// # Errors
    ///
    /// [`LabError::NoSuchHost`] for an index past the end.
    pub fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Result<Command, LabError> {
        let ns = self.namespace(i).ok_or(LabError::NoSuchHost(i))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        Ok(cmd)
    }

    /// Runs `args[0]` with the rest as arguments inside host `i`'s namespace and waits for it.
    /// The program must bound its own running time.
    ///
    /// # Errors
    ///
    /// [`LabError::NoSuchHost`], or [`LabError::Command`] when it cannot start or exits
    /// non-zero.
    pub fn exec(&self, i: usize, args: &[&str]) -> Result<Output, LabError> {
        let (program, rest) = args.split_first().ok_or_else(|| LabError::Command {
            command: String::new(),
            stderr: "no program given".into(),
        })?;
        let mut cmd = self.command(i, program)?;
        cmd.args(rest);
        let line = format!("ip netns exec {} {}", self.hosts[i], args.join(" "));
        checked(cmd.stdin(Stdio::null()).output(), line)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Hosts first, then the bridge; deleting a namespace destroys its veth ends.
        for ns in self.created.iter().rev() {
            let _ = ip(&["netns", "delete", ns]);
        }
    }
}

/// One namespace with a TAP device, for the `tap` mode: `tap0` is 192.168.69.1/24 on the
/// kernel's side; a user-space IP stack (embassy-net, smoltcp) opened on `tap0` from inside
/// the namespace is the other host of that subnet. Dropping it deletes the namespace and
/// with it the TAP device.
#[derive(Debug)]
pub struct TapLab {
    ns: String,
}

impl TapLab {
    /// The TAP device's name inside the namespace.
    pub const TAP: &'static str = "tap0";

    /// Makes the namespace and `tap0` with `host_ip`/24, up.
    ///
    /// # Errors
    ///
    /// As [`Lab::create`]: unavailable (no `ip`, not permitted) or a failed setup step.
    pub fn create(host_ip: Ipv4Addr) -> Result<TapLab, LabError> {
        ip_available()?;
        prune_stale();
        let ns = format!(
            "{PREFIX}{}-{}-tap",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        add_namespace(&ns)?;
        let lab = TapLab { ns };
        let ns = lab.ns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "tuntap", "add", "name", Self::TAP, "mode", "tap"])?;
        ip(&["-n", ns, "addr", "add", &format!("{host_ip}/24"), "dev", Self::TAP])?;
        ip(&["-n", ns, "link", "set", Self::TAP, "up"])?;
        Ok(lab)
    }

    /// The namespace's name.
    #[must_use]
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// A command that runs `program` inside the namespace.
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }
}

impl Drop for TapLab {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.ns]);
    }
}

/// `ip netns add`, telling "cannot have namespaces here" apart from real failures.
fn add_namespace(ns: &str) -> Result<(), LabError> {
    match ip(&["netns", "add", ns]) {
        Ok(_) => Ok(()),
        Err(LabError::Command { stderr, .. }) if looks_unpermitted(&stderr) => {
            Err(LabError::NotPermitted(stderr))
        }
        Err(e) => Err(e),
    }
}

/// Checks that `ip` runs.
fn ip_available() -> Result<(), LabError> {
    match Command::new("ip").arg("-V").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(LabError::IpMissing),
    }
}

fn looks_unpermitted(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    ["permission denied", "operation not permitted", "read-only file system", "not supported"]
        .iter()
        .any(|m| s.contains(m))
}

/// Runs `ip args…`, failing with its stderr when it exits non-zero.
fn ip(args: &[&str]) -> Result<Output, LabError> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output();
    checked(out, format!("ip {}", args.join(" ")))
}

fn checked(out: std::io::Result<Output>, command: String) -> Result<Output, LabError> {
    match out {
        Ok(out) if out.status.success() => Ok(out),
        Ok(out) => Err(LabError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }),
        Err(e) => Err(LabError::Command { command, stderr: e.to_string() }),
    }
}

/// Deletes lab namespaces (`nomq-<pid>-…`) whose harness process `<pid>` no longer runs, left
/// behind by a run that was killed before it could clean up. Never touches other namespaces.
/// Returns how many it deleted; does nothing where `ip` or `/proc` are unavailable.
pub fn prune_stale() -> usize {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).stdin(Stdio::null()).output() else {
        return 0;
    };
    let list = String::from_utf8_lossy(&out.stdout);
    let mut deleted = 0;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && ip(&["netns", "delete", name]).is_ok()
        {
            deleted += 1;
        }
    }
    deleted
}

/// The name of the lab namespace this process runs in: `Some("nomq-…")` when its network
/// namespace is one of the `nomq-` namespaces under `/run/netns` (compared by device and
/// inode, as `ip netns identify` does), `None` otherwise, e.g. in the root namespace.
///
/// The probe refuses to send broadcast or multicast unless this is `Some`: the check is
/// positive (we are in a lab host) rather than negative (we are not in PID 1's namespace),
/// so it holds even where `/proc/1` cannot be read.
#[must_use]
pub fn lab_namespace() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    for entry in std::fs::read_dir("/run/netns").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(entry.path())
            && (meta.dev(), meta.ino()) == (own.dev(), own.ino())
        {
            return Some(name);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_error_texts() {
        assert_eq!(
            LabError::BadSize(0).to_string(),
            format!("a lab holds 1 to {MAX_HOSTS} hosts, not 0")
        );
        assert_eq!(LabError::NoSuchHost(3).to_string(), "no host 3 in this lab");
        let e = LabError::Command { command: "ip x".into(), stderr: "nope".into() };
        assert_eq!(e.to_string(), "`ip x` failed: nope");
        assert!(
            LabError::NotPermitted("EPERM".into()).to_string().ends_with("(run as root): EPERM")
        );
        assert!(LabError::IpMissing.to_string().contains("install iproute2"));
    }

    #[test]
    fn addresses_follow_host_index() {
        assert_eq!(Lab::address_of(0), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(Lab::address_of(2), Ipv4Addr::new(10, 77, 0, 3));
        assert_eq!(Lab::address_of(MAX_HOSTS - 1), Ipv4Addr::new(10, 77, 0, 250));
    }

    #[test]
    fn bad_sizes_are_refused_before_touching_anything() {
        assert_eq!(Lab::create(0).unwrap_err(), LabError::BadSize(0));
        assert_eq!(Lab::create(MAX_HOSTS + 1).unwrap_err(), LabError::BadSize(MAX_HOSTS + 1));
    }

    #[test]
    fn classifies_unpermitted_errors() {
        assert!(looks_unpermitted(
            "mount --make-shared /run/netns failed: Operation not permitted"
        ));
        assert!(looks_unpermitted(
            "Cannot create namespace file \"/run/netns/x\": Permission denied"
        ));
        assert!(!looks_unpermitted("Cannot find device \"eth0\""));
        assert!(LabError::NotPermitted(String::new()).is_unavailable());
        assert!(LabError::IpMissing.is_unavailable());
        assert!(!LabError::BadSize(0).is_unavailable());
        assert!(LabError::IpMissing.to_string().contains("apt-get install -y iproute2"));
    }

    #[test]
    fn test_process_is_not_in_a_lab_namespace() {
        // `cargo test` runs outside any lab, so the probe's guard must refuse here.
        assert_eq!(lab_namespace(), None);
    }
}
