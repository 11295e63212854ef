//! `nomq peers`: a three-node loopback network seen from the third node.

mod cli_support;
use cli_support::*;
use std::time::Duration;

#[test]
fn peers_once_json_lists_both_subscribers() {
    let dir = Scratch::new("peers");
    let keys = dir.keys("k.json");
    let [a, b, me] = ports::<3>();
    let sub = |bind, patterns: &[&str], others: [std::net::SocketAddr; 2]| {
        let mut args =
            vec!["sub".to_string(), "--keys".into(), keys.clone(), "-W".into(), "30".into()];
        for p in patterns {
            args.extend(["-c".to_string(), (*p).to_string()]);
        }
        args.extend(["--bind".to_string(), s(&bind)]);
        for o in others {
            args.extend(["--peer".to_string(), s(&o)]);
        }
        nomq(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
            .env("NOMQ_HEARTBEAT_MS", "500")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut subs = [sub(a, &["a/#"], [b, me]), sub(b, &["b/+", "c"], [a, me])];
    until_bound(a);
    until_bound(b);
    // A node answers a newcomer with an early heartbeat at most once per 100 ms, and the
    // two subscribers just answered each other: should they skip the third node's
    // arrival, their regular heartbeats (every 500 ms here, not 5 s) still come within
    // its 3 s of listening.
    let out = run(
        &dir,
        &["peers", "--once", "--json", "--listen-s", "3", "--keys", &keys, "--bind", &s(&me)]
            .into_iter()
            .chain(["--peer", &s(&a), "--peer", &s(&b)])
            .collect::<Vec<_>>(),
    );
    for c in &mut subs {
        let _ = c.kill();
    }
    for c in subs {
        let _ = finish(c, Duration::from_secs(10));
    }
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["node"]["bind"], s(&me), "{v}");
    assert!(v["node"]["rx_datagrams"].as_u64().unwrap() >= 2, "{v}");
    let peers = v["peers"].as_array().unwrap();
    let find = |addr| peers.iter().find(|p| p["addr"] == s(&addr));
    for (addr, subs) in [(a, 1), (b, 2)] {
        let p = find(addr).unwrap_or_else(|| panic!("{addr} not listed: {v}"));
        assert_eq!(p["subscriptions"], subs, "{v}");
        assert_eq!(p["session"].as_str().unwrap().len(), 8, "{v}");
    }
    assert_eq!(peers.len(), 2, "{v}");
    // Only the subscribers' first packets, sent before they answered our challenge.
    let refused = v["refused"].as_object().unwrap();
    assert!(refused.keys().all(|k| k == "Unverified"), "{v}");
}

/// Without --once, the view refreshes in place (cursor home, clear screen) once a second.
#[test]
fn peers_live_view_refreshes_in_place() {
    let dir = Scratch::new("peers-live");
    let keys = dir.keys("k.json");
    let [me, nobody] = ports::<2>();
    let out = run(
        &dir,
        &["peers", "--listen-s", "1.5", "--keys", &keys, "--bind", &s(&me), "--peer", &s(&nobody)],
    );
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.matches("\x1b[H\x1b[2J").count() >= 2, "{stdout:?}");
    assert!(stdout.contains("no peer heard from yet"), "{stdout}");
    assert!(stdout.contains("SUBSCRIPTIONS"), "{stdout}");
}
