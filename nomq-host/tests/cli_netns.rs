//! `nomq` nodes with default flags side by side on one host, by real broadcast, in a network
//! namespace of this test's own (broadcast from the root namespace would leave the machine).
//! Needs root and iproute2; where namespaces are not permitted the test prints SKIP and
//! passes, unless NOMQ_REQUIRE_NETNS=1 (CI) makes that a failure.

mod cli_support;

use cli_support::{NOMQ, Scratch, finish, outcome, text};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One namespace: `lo` up and a veth pair `v0`/`v1` (10.79.0.1/24, broadcast 10.79.0.255,
/// the default route and 224.0.0.0/4 on `v0`), so that 255.255.255.255 is routable and the
/// kernel loops broadcasts back to the namespace's own sockets. Dropping it kills the
/// processes it started (by their handles) and deletes the namespace.
struct Host {
    ns: String,
    /// Taken out when waited for.
    children: Vec<Option<Child>>,
}

fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("ip {}: {}", args.join(" "), text(&out.stderr).trim()))
    }
}

impl Host {
    /// The namespace, or `None` (after printing SKIP) where this machine cannot have one.
    fn create_or_skip(test: &str) -> Option<Host> {
        let ns = format!("nomqh-{}-{test}", std::process::id());
        if let Err(e) = ip(&["netns", "add", &ns]) {
            if std::env::var("NOMQ_REQUIRE_NETNS").as_deref() == Ok("1") {
                panic!("{test}: cannot create a network namespace: {e}");
            }
            eprintln!("SKIP {test}: network namespaces are not available here: {e}");
            return None;
        }
        let host = Host { ns, children: Vec::new() };
        let n = host.ns.as_str();
        for step in [
            &["-n", n, "link", "set", "lo", "up"][..],
            &["-n", n, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            &["-n", n, "addr", "add", "10.79.0.1/24", "broadcast", "10.79.0.255", "dev", "v0"],
            &["-n", n, "link", "set", "v1", "up"],
            &["-n", n, "link", "set", "v0", "up"],
            &["-n", n, "route", "add", "default", "dev", "v0"],
            &["-n", n, "route", "add", "224.0.0.0/4", "dev", "v0"],
        ] {
            // `host` is dropped on panic, which deletes the namespace.
            ip(step).unwrap_or_else(|e| panic!("{test}: namespace setup: {e}"));
        }
        Some(host)
    }

    /// `nomq args…` inside the namespace, with a clean environment, in `dir`.
    fn nomq(&self, dir: &Scratch, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, NOMQ]).args(args);
        c.current_dir(dir.dir()).stdin(Stdio::null()).stdout(Stdio::piped());
        c.stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("NOMQ_") || k == "RUST_LOG" {
                c.env_remove(k);
            }
        }
        c
    }

    /// Starts `nomq args…` in the namespace; the host kills it on drop if it still runs.
    fn spawn(&mut self, dir: &Scratch, args: &[&str]) -> usize {
        let child = self.nomq(dir, args).spawn().expect("spawn nomq in the namespace");
        self.children.push(Some(child));
        self.children.len() - 1
    }

    /// Waits (at most `limit`) for process `i` to end; its output.
    fn finish(&mut self, i: usize, limit: Duration) -> Output {
        let child = self.children[i].take().expect("each process is waited for once");
        finish(child, limit)
    }

    /// UDP sockets bound to `port` in the namespace (from its `/proc/net/udp`).
    fn bound(&self, port: u16) -> usize {
        let out = ip(&["netns", "exec", &self.ns, "cat", "/proc/net/udp"]).expect("read udp");
        let suffix = format!(":{port:04X}");
        let local = |l: &str| l.split_whitespace().nth(1).map(str::to_string);
        text(&out.stdout).lines().skip(1).filter_map(local).filter(|a| a.ends_with(&suffix)).count()
    }

    /// Waits (at most 10 s) until `n` sockets are bound to `port`.
    fn until_bound(&self, port: u16, n: usize) {
        let end = Instant::now() + Duration::from_secs(10);
        while self.bound(port) < n {
            assert!(Instant::now() < end, "fewer than {n} sockets bound to port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = ip(&["netns", "delete", &self.ns]);
    }
}

/// Two subscribers and a publisher, every one with default ports and flags (but the
/// keyring and the bounds of the run): all share port 8888 for broadcast discovery, each
/// sends from and gets its acknowledgements on a port of its own, and a QoS 1 message
/// reaches both subscribers and is acknowledged.
#[test]
fn default_nodes_share_a_host_by_broadcast() {
    let Some(host) = Host::create_or_skip("broadcast") else { return };
    two_subscribers_and_a_publisher(host, &[]);
}

/// The same with multicast fan-out: the group's port is the shared one.
#[test]
fn multicast_nodes_share_a_host() {
    let Some(host) = Host::create_or_skip("multicast") else { return };
    two_subscribers_and_a_publisher(host, &["--multicast", "239.77.0.1"]);
}

fn two_subscribers_and_a_publisher(mut host: Host, flags: &[&str]) {
    let dir = Scratch::new(&format!("netns-{}", host.ns));
    let keys = dir.keys("k.json");
    let sub = ["sub", "-c", "plant/#", "--keys", &keys, "--count", "1", "--timeout-s", "20"];
    let sub: Vec<&str> = sub.iter().chain(flags).copied().collect();
    let a = host.spawn(&dir, &sub);
    let b = host.spawn(&dir, &sub);
    // Each subscriber: a shared socket on 8888 and a unicast one of its own.
    host.until_bound(8888, 2);
    let publish = ["pub", "-c", "plant/boiler", "-m", "81.5", "-q", "1", "--keys", &keys];
    let publish: Vec<&str> = publish.iter().chain(flags).copied().collect();
    let p = host.spawn(&dir, &publish);
    let (code, stdout, stderr) = outcome(&host.finish(p, Duration::from_secs(20)));
    assert_eq!(code, Some(0), "pub: {stdout}{stderr}");
    // The publisher waits for the subscribers it knows when it publishes, which may be
    // one of the two (it publishes once it has heard from another node; measured: about
    // half the runs one, half two); both get the message.
    assert!(stdout.contains("acknowledged by "), "{stdout}{stderr}");
    // Acknowledgements come from the subscribers' own unicast ports, not the shared one.
    let ports: Vec<&str> = stdout.split(" at 10.79.0.1:").skip(1).collect();
    assert!(!ports.is_empty(), "the acknowledging subscribers are named: {stdout}");
    for p in ports {
        let port: u16 = p.trim_end().split(',').next().and_then(|p| p.parse().ok()).expect(p);
        assert_ne!(port, 8888, "{stdout}");
    }
    for (name, i) in [("first", a), ("second", b)] {
        let (code, stdout, stderr) = outcome(&host.finish(i, Duration::from_secs(25)));
        assert_eq!(code, Some(0), "{name} sub: {stderr}");
        assert_eq!(stdout, "81.5\n", "{name} sub; stderr: {stderr}");
    }
}
