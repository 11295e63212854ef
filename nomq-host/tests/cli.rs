//! The `nomq` binary as a shell user runs it. Every node binds 127.0.0.1 and reaches its
//! peer through `--peer 127.0.0.1:PORT`; nothing relies on broadcast.

mod cli_support;
use cli_support::*;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

#[test]
fn keys_gen_is_private_and_show_prints_no_secret() {
    let dir = Scratch::new("keys");
    let file = dir.keys("k.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let (code, _, stderr) = outcome(&run(&dir, &["keys", "gen", "--out", "k.json"]));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("already exists") && stderr.contains("--force"), "{stderr}");
    let (code, _, _) = outcome(&run(&dir, &["keys", "gen", "--out", "k.json", "--force"]));
    assert_eq!(code, Some(0));

    let (code, stdout, stderr) = outcome(&run(&dir, &["keys", "show", "k.json"]));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.starts_with("network  "), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    for field in ["encryption_key", "hmac_key"] {
        let secret = json[field].as_str().unwrap();
        assert_eq!(secret.len(), 64);
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{field} leaked");
        // Not even a piece of it.
        assert!(!stdout.contains(&secret[..16]), "{field} leaked in part");
    }
}

/// Acceptance 2: the subscriber prints the QoS 2 message exactly once and the publisher
/// exits 0 after the exchange completes.
#[test]
fn pub_sub_qos2_exactly_once() {
    let dir = Scratch::new("qos2");
    let keys = dir.keys("k.json");
    let keys = keys.as_str();
    let [p1, p2] = ports::<2>();
    let sub = spawn(
        &dir,
        &["sub", "-c", "factory/#", "-v", "--bind", &s(&p1), "--peer", &s(&p2), "--keys", keys]
            .into_iter()
            .chain(["--count", "1", "--timeout-s", "10"])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    let publish = run(
        &dir,
        &["pub", "-c", "factory/line1", "-m", "hi", "--qos", "2", "--keys", keys]
            .into_iter()
            .chain(["--bind", &s(&p2), "--peer", &s(&p1)])
            .collect::<Vec<_>>(),
    );
    let (code, stdout, stderr) = outcome(&publish);
    assert_eq!(code, Some(0), "pub: {stderr}");
    assert!(stdout.contains("acknowledged by 1 subscriber"), "{stdout}");
    assert!(stdout.contains(&s(&p1)), "the acknowledging peer is named: {stdout}");
    let (code, stdout, stderr) = outcome(&finish(sub, Duration::from_secs(15)));
    assert_eq!(code, Some(0), "sub: {stderr}");
    assert_eq!(stdout, "factory/line1 hi\n");
}

#[test]
fn sub_json_and_qos1() {
    let dir = Scratch::new("json");
    let keys = dir.keys("k.json");
    let keys = keys.as_str();
    let [p1, p2] = ports::<2>();
    let sub = spawn(
        &dir,
        &["sub", "-c", "a/+", "-c", "a/#", "--json", "--bind", &s(&p1), "--peer", &s(&p2)]
            .into_iter()
            .chain(["--keys", keys, "--count", "1", "--timeout-s", "10"])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    let publish = run(
        &dir,
        &["pub", "-c", "a/b", "-m", "21.5", "-q", "1", "--keys", keys, "--bind", &s(&p2)]
            .into_iter()
            .chain(["--peer", &s(&p1)])
            .collect::<Vec<_>>(),
    );
    let (code, _, stderr) = outcome(&publish);
    assert_eq!(code, Some(0), "pub: {stderr}");
    let (code, stdout, stderr) = outcome(&finish(sub, Duration::from_secs(15)));
    assert_eq!(code, Some(0), "sub: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "printed once though two patterns match: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["channel"], "a/b");
    assert_eq!(v["body"], "21.5");
    assert_eq!(v["encoding"], "utf8");
    assert_eq!(v["qos"], 1);
    assert_eq!(v["from"], s(&p2));
    assert_eq!(v["retained"], false);
}

#[test]
fn bad_input_is_refused_clearly() {
    let dir = Scratch::new("bad");
    let keys = dir.keys("k.json");
    let keys = keys.as_str();
    std::fs::write(dir.path("broken.json"), "{\"encryption_key\": ").unwrap();
    std::fs::write(dir.path("cfg.json"), r#"{"max_attempts": "many"}"#).unwrap();
    let big = "x".repeat(1400);
    let bind = "127.0.0.1:0";
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &["pub", "-c", "a", "-m", "x", "--bind", bind, "--keys", "broken.json"],
            2,
            &["broken.json", "not valid JSON"],
        ),
        (
            &["sub", "-c", "a", "--bind", bind, "--keys", "missing.json"],
            2,
            &["missing.json", "nomq keys gen"],
        ),
        (
            &["pub", "-c", "a", "-m", &big, "--bind", bind, "--keys", keys],
            2,
            &["too large", "1400"],
        ),
        (
            &["pub", "-c", "factory/+", "-m", "x", "--bind", bind, "--keys", keys],
            2,
            &["invalid channel name", "factory/+"],
        ),
        (&["pub", "-c", "", "-m", "x", "--bind", bind, "--keys", keys], 2, &["empty"]),
        (
            &["sub", "-c", "a/#/b", "--bind", bind, "--keys", keys],
            2,
            &["invalid channel pattern", "a/#/b", "last level"],
        ),
        (&["sub", "-c", "a+", "--bind", bind, "--keys", keys], 2, &["invalid channel pattern"]),
        (
            &["sub", "-c", "a", "--bind", bind, "--keys", keys, "--config", "cfg.json"],
            2,
            &["cfg.json", "max_attempts"],
        ),
        (&["pub", "-c", "a", "-m", "x", "--qos", "3"], 2, &["0..=2"]),
        (&["pub", "-c", "a", "-m", "x", "--to", "nowhere"], 2, &["not an address"]),
        (
            &["pub", "-c", "a", "-m", "x", "-q", "1", "--to", "127.0.0.1:1", "--bind", bind]
                .into_iter()
                .chain(["--keys", keys])
                .collect::<Vec<_>>(),
            1,
            &["not delivered", "127.0.0.1:1 did not answer"],
        ),
    ];
    for (args, want, needles) in cases {
        let started = Instant::now();
        let (code, _, stderr) = outcome(&run(&dir, args));
        assert_eq!(code, Some(*want), "{args:?}: {stderr}");
        for n in *needles {
            assert!(stderr.contains(n), "{args:?}: expected {n:?} in: {stderr}");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?} took too long");
    }
}

#[test]
fn bind_failure_is_a_network_error() {
    let dir = Scratch::new("bind");
    let keys = dir.keys("k.json");
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s(&taken.local_addr().unwrap());
    let args = ["sub", "-c", "a", "--bind", &addr, "--keys", keys.as_str()];
    let (code, _, stderr) = outcome(&run(&dir, &args));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains(&addr) && stderr.contains("--bind"), "{stderr}");
}

/// A publisher with another keyring reaches nobody: it exits 1 and says why; the
/// subscriber prints nothing and times out.
#[test]
fn wrong_key_is_rejected() {
    let dir = Scratch::new("wrongkey");
    let (ka, kb) = (dir.keys("a.json"), dir.keys("b.json"));
    let [p1, p2] = ports::<2>();
    let sub = spawn(
        &dir,
        &["sub", "-c", "factory/#", "--bind", &s(&p1), "--peer", &s(&p2)]
            .into_iter()
            .chain(["--keys", ka.as_str(), "--count", "1", "--timeout-s", "4"])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    let publish = run(
        &dir,
        &["pub", "-c", "factory/line1", "-m", "hi", "--qos", "1", "--bind", &s(&p2)]
            .into_iter()
            .chain(["--peer", &s(&p1), "--keys", kb.as_str(), "--ttl", "3"])
            .collect::<Vec<_>>(),
    );
    let (code, stdout, stderr) = outcome(&publish);
    assert_eq!(code, Some(1), "pub: {stdout} {stderr}");
    assert!(stderr.contains("not delivered"), "{stderr}");
    let (code, stdout, stderr) = outcome(&finish(sub, Duration::from_secs(15)));
    assert_eq!(code, Some(1), "sub: {stderr}");
    assert_eq!(stdout, "", "nothing forged or misread gets printed");
    assert!(stderr.contains("timed out") && stderr.contains("authentication"), "{stderr}");
}

#[test]
fn help_names_the_commands() {
    let dir = Scratch::new("help");
    let (code, stdout, _) = outcome(&run(&dir, &["--help"]));
    assert_eq!(code, Some(0));
    for c in ["keys", "pub", "sub", "bench"] {
        assert!(stdout.contains(c), "{stdout}");
    }
    let (code, _, stderr) = outcome(&run(&dir, &["pub", "-m", "x"]));
    assert_eq!(code, Some(2), "a missing -c is a usage error: {stderr}");
}
