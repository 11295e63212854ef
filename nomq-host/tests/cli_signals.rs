//! Issue 9, item 8: SIGINT and SIGTERM make `nomq sub` leave cleanly. It withdraws its
//! subscription (the peer sees it go at once, long before its liveness timeout) and exits
//! 130 or 143.

mod cli_support;

use cli_support::*;
use nomq_host::{HostConfig, NodeBuilder};
use std::process::Command;
use std::time::Duration;

#[cfg(unix)]
#[tokio::test]
async fn sigint_and_sigterm_unsubscribe_and_exit() {
    let dir = Scratch::new("signals");
    let keys = dir.keys("k.json");
    let ring = nomq_keys::KeyringFile::load(&keys).unwrap().keyring.to_core().unwrap();
    let [p1] = ports::<1>();
    let cfg = HostConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        peers: vec![p1],
        ..HostConfig::default()
    };
    let node = NodeBuilder::new(ring).config(cfg).start().await.unwrap();
    let peer = s(&node.local_addr());
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let sub = spawn(
            &dir,
            &["sub", "-c", "room/+/temp", "--bind", &s(&p1), "--peer", &peer, "--keys", &keys],
        );
        let subs = node.wait_for_subscribers("room/1/temp", 1, Duration::from_secs(10)).await;
        assert!(subs.unwrap().is_some(), "SIG{signal}: the subscription never arrived");
        let killed =
            Command::new("kill").arg(format!("-{signal}")).arg(sub.id().to_string()).status();
        assert!(killed.unwrap().success());
        let out = tokio::task::spawn_blocking(move || finish(sub, Duration::from_secs(10)))
            .await
            .unwrap();
        let (status, stdout, stderr) = outcome(&out);
        assert_eq!(status, Some(code), "SIG{signal}: {stderr}");
        assert_eq!(stdout, "");
        assert!(!stderr.contains("error"), "a signal is no error: {stderr}");
        // The liveness timeout is 15 s: gone within 3 s means the UNSUBSCRIBE arrived.
        let mut gone = false;
        for _ in 0..300 {
            if node.subscribers("room/1/temp").await.unwrap().is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "SIG{signal}: the peer still lists the subscription");
        // The port is free again for the next round.
        until_bound_free(p1);
    }
    node.shutdown().await;
}

/// Waits until nobody binds `addr` (at most 5 s).
#[cfg(unix)]
fn until_bound_free(addr: std::net::SocketAddr) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::UdpSocket::bind(addr).is_err() {
        assert!(std::time::Instant::now() < end, "{addr} still bound");
        std::thread::sleep(Duration::from_millis(10));
    }
}
