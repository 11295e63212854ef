//! The namespace lab against the real kernel: needs root and iproute2. Where namespaces are
//! not permitted each test prints SKIP and passes, unless NOMQ_REQUIRE_NETNS=1 (CI) makes
//! that a failure.

use std::path::Path;
use std::process::Command;

use nomq_harness::netns::{Lab, LabError};
use nomq_harness::probe::{self, ProbeKind};

const EXE: &str = env!("CARGO_BIN_EXE_nomq-harness");

/// A lab of `n` hosts, or `None` (after printing SKIP) where this machine cannot have one.
fn lab_or_skip(test: &str, n: usize) -> Option<Lab> {
    match Lab::create(n) {
        Ok(lab) => Some(lab),
        Err(e)
            if e.is_unavailable() && std::env::var("NOMQ_REQUIRE_NETNS").as_deref() != Ok("1") =>
        {
            eprintln!("SKIP {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: cannot build the lab: {e}"),
    }
}

fn namespaces() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_hosts_get_broadcast_and_multicast() {
    let Some(lab) = lab_or_skip("three_hosts_get_broadcast_and_multicast", 3) else { return };
    let exe = Path::new(EXE);
    for kind in [ProbeKind::Broadcast, ProbeKind::Multicast] {
        let detail = probe::run(&lab, exe, kind).unwrap_or_else(|e| panic!("{e}"));
        assert!(detail.contains("2 of 2 hosts received from 10.77.0.1"), "{detail}");
    }
}

#[test]
fn probe_names_the_host_that_did_not_receive() {
    let Some(lab) = lab_or_skip("probe_names_the_host_that_did_not_receive", 3) else { return };
    // Cut host 2 off the bridge: the probe must fail, and say which host missed out.
    lab.exec(2, &["ip", "link", "set", "eth0", "down"]).expect("take eth0 down");
    let err = probe::run(&lab, Path::new(EXE), ProbeKind::Broadcast).unwrap_err();
    assert!(err.contains("host(s) 2 received nothing"), "{err}");
}

#[test]
fn hosts_know_they_are_in_the_lab_and_the_root_does_not() {
    let Some(lab) = lab_or_skip("hosts_know_they_are_in_the_lab_and_the_root_does_not", 2) else {
        return;
    };
    let out = lab.exec(1, &[EXE, "__netns-probe", "whereami"]).expect("whereami in host 1");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), lab.namespace(1).unwrap());
    let out = Command::new(EXE).args(["__netns-probe", "whereami"]).output().expect("whereami");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "-");
    // Addresses and the multicast route are in place.
    let addr = lab.exec(1, &["ip", "-4", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains("10.77.0.2/24 brd 10.77.0.255"));
    let route = lab.exec(1, &["ip", "route", "show", "224.0.0.0/4"]).unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).contains("dev eth0"));
    assert!(matches!(lab.command(2, "true"), Err(LabError::NoSuchHost(2))));
}

#[test]
fn dropping_the_lab_removes_its_namespaces_and_stale_ones_are_pruned() {
    let Some(lab) = lab_or_skip("dropping_the_lab_removes_its_namespaces", 2) else { return };
    let names: Vec<String> =
        [lab.bridge_namespace(), lab.namespace(0).unwrap(), lab.namespace(1).unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let before = namespaces();
    assert!(names.iter().all(|n| before.contains(n.as_str())), "{before}");
    drop(lab);
    let after = namespaces();
    assert!(names.iter().all(|n| !after.contains(n.as_str())), "left behind: {after}");

    // A namespace of a harness process that is gone (pid of an exited child) is pruned;
    // a `nomq-` namespace of this live process is not.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait true");
    let stale = format!("nomq-{dead}-0-h0");
    let live = format!("nomq-{}-999-h0", std::process::id());
    for ns in [&stale, &live] {
        assert!(Command::new("ip").args(["netns", "add", ns]).status().unwrap().success());
    }
    // (Another test's Lab::create may prune it first; either way it must be gone.)
    nomq_harness::netns::prune_stale();
    let left = namespaces();
    for ns in [&stale, &live] {
        let _ = Command::new("ip").args(["netns", "delete", ns]).output();
    }
    assert!(!left.contains(stale.as_str()), "stale namespace survived: {left}");
    assert!(left.contains(live.as_str()), "a live process's namespace was pruned");
}
