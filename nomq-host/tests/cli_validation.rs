//! Issue 9, items 6 and 7: every configuration value and every duration on the command
//! line is range-checked; a refusal exits 2 and names the option and its range; nothing
//! panics (exit 101); special files as keyrings fail fast.

mod cli_support;

use cli_support::*;
use std::time::{Duration, Instant};

/// Runs each case; checks its exit code, the words of its message, and that it was quick.
fn check_cases(dir: &Scratch, cases: &[(Vec<&str>, i32, Vec<&str>)], env: &[(&str, &str)]) {
    for (args, want, needles) in cases {
        let started = Instant::now();
        let mut c = nomq(dir, args);
        for (k, v) in env {
            c.env(k, v);
        }
        let (code, _, stderr) = outcome(&run_cmd(c));
        assert_eq!(code, Some(*want), "{args:?} {env:?}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?} {env:?}: expected {n:?} in: {stderr}");
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?} took too long");
    }
}

#[test]
fn durations_out_of_range_are_usage_errors_not_panics() {
    let dir = Scratch::new("durations");
    let keys = dir.keys("k.json");
    let k = keys.as_str();
    let b = "127.0.0.1:0";
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        // Panicked with "overflow when adding duration to instant" before.
        (
            vec!["sub", "-c", "a", "--keys", k, "--bind", b, "-W", "18446744073709551615"],
            2,
            vec!["--timeout-s", "0.001..=31536000 seconds"],
        ),
        (vec!["sub", "-c", "a", "--keys", k, "-W", "1e300"], 2, vec!["--timeout-s"]),
        (vec!["sub", "-c", "a", "--keys", k, "-W", "-1"], 2, vec!["--timeout-s"]),
        (vec!["sub", "-c", "a", "--keys", k, "-W", "0"], 2, vec!["--timeout-s", "outside"]),
        (vec!["sub", "-c", "a", "--keys", k, "-W", "NaN"], 2, vec!["--timeout-s"]),
        (vec!["sub", "-c", "a", "--keys", k, "-W", "inf"], 2, vec!["--timeout-s"]),
        (vec!["sub", "-c", "a", "--keys", k, "-W", "soon"], 2, vec!["--timeout-s", "not a number"]),
        (vec!["pub", "-c", "a", "-m", "x", "--ttl", "65536"], 2, vec!["--ttl", "0..=65535"]),
        (vec!["pub", "-c", "a", "-m", "x", "--ttl", "-0.5"], 2, vec!["--ttl", "0..=65535"]),
        (vec!["pub", "-c", "a", "-m", "x", "--ttl", "1e20"], 2, vec!["--ttl"]),
        (
            vec!["pub", "-c", "a", "-m", "x", "--linger-s", "1e20"],
            2,
            vec!["--linger-s", "0..=86400"],
        ),
        (
            vec!["pub", "-c", "a", "-m", "x", "--wait-ms", "18446744073709551615"],
            2,
            vec!["--wait-ms", "0..=600000"],
        ),
        (vec!["pub", "-c", "a", "-m", "x", "--priority", "256"], 2, vec!["--priority"]),
        (vec!["pub", "-c", "a", "-m", "x", "--priority", "-1"], 2, vec!["--priority"]),
        (vec!["pub", "-c", "a", "-m", "x", "--wait-ms", "-5"], 2, vec!["--wait-ms"]),
        (vec!["pub", "-c", "a", "-m", "x", "--linger-s", "-5"], 2, vec!["--linger-s"]),
        (vec!["sub", "-c", "a", "-C", "0"], 2, vec!["--count"]),
    ];
    check_cases(&dir, &cases, &[]);
}

#[test]
fn config_values_out_of_range_are_refused_by_name() {
    let dir = Scratch::new("config");
    let keys = dir.keys("k.json");
    let k = keys.as_str();
    std::fs::write(dir.path("hb0.json"), r#"{"heartbeat_ms": 0}"#).unwrap();
    std::fs::write(dir.path("ttl0.json"), r#"{"default_ttl_s": 0}"#).unwrap();
    std::fs::write(dir.path("live.json"), r#"{"heartbeat_ms": 5000, "liveness_ms": 4000}"#)
        .unwrap();
    std::fs::write(
        dir.path("rt.json"),
        r#"{"retransmit_initial_ms": 5000, "retransmit_max_ms": 1000}"#,
    )
    .unwrap();
    std::fs::write(dir.path("skew.json"), r#"{"clock_skew_s": 0}"#).unwrap();
    std::fs::write(dir.path("peer0.json"), r#"{"peers": ["127.0.0.1:0"]}"#).unwrap();
    let b = "127.0.0.1:0";
    let sub = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["sub", "-c", "a", "--bind", "127.0.0.1:0", "-W", "5"];
        v.extend_from_slice(extra);
        v
    };
    let with_keys = |mut v: Vec<&'static str>, k: &'static str| {
        v.extend_from_slice(&["--keys", k]);
        v
    };
    // 'static for the closures above: the keyring path lives for the whole test.
    let k: &'static str = Box::leak(k.to_string().into_boxed_str());
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        (
            with_keys(sub(&["--config", "hb0.json"]), k),
            2,
            vec!["heartbeat_ms", "NOMQ_HEARTBEAT_MS", "10..=3600000 ms"],
        ),
        (with_keys(sub(&["--config", "ttl0.json"]), k), 2, vec!["default_ttl_s", "1..=65535"]),
        (with_keys(sub(&["--config", "live.json"]), k), 2, vec!["liveness_ms", "5001..=86400000"]),
        (with_keys(sub(&["--config", "rt.json"]), k), 2, vec!["retransmit_initial_ms", "1..=1000"]),
        (with_keys(sub(&["--config", "skew.json"]), k), 2, vec!["clock_skew_s", "1..=86400"]),
        (with_keys(sub(&["--config", "peer0.json"]), k), 2, vec!["peer", "port 0"]),
        (with_keys(sub(&["--peer", "127.0.0.1:0"]), k), 2, vec!["--peer", "port 0", "1..=65535"]),
        (
            with_keys(sub(&["--peer", "[::1]:7000"]), k),
            2,
            vec!["[::1]:7000", "IPv6", "IPv4", "--bind"],
        ),
        (with_keys(sub(&["--broadcast", "[::1]:7000"]), k), 2, vec!["--broadcast", "IPv6", "IPv4"]),
        (
            with_keys(sub(&["--multicast", "192.0.2.1"]), k),
            2,
            vec!["--multicast", "not a multicast address"],
        ),
        (with_keys(sub(&["--multicast", "ff02::1"]), k), 2, vec!["--multicast", "IPv6", "IPv4"]),
        // Exited 0 at QoS 0 before while every send failed.
        (
            vec!["pub", "-c", "a", "-m", "x", "--bind", b, "--peer", "[::1]:7000", "--keys", k],
            2,
            vec!["--peer", "IPv6", "IPv4"],
        ),
        (
            vec!["pub", "-c", "a", "-m", "x", "--bind", "[::1]:0", "--peer", "127.0.0.1:7000"]
                .into_iter()
                .chain(["--keys", k])
                .collect(),
            2,
            vec!["--peer", "127.0.0.1:7000", "IPv4", "IPv6"],
        ),
    ];
    check_cases(&dir, &cases, &[]);

    // The environment goes through the same checks.
    let env_cases: &[(&str, &str, &[&str])] = &[
        ("NOMQ_HEARTBEAT_MS", "0", &["NOMQ_HEARTBEAT_MS", "10..=3600000 ms"]),
        ("NOMQ_MAX_ATTEMPTS", "0", &["NOMQ_MAX_ATTEMPTS", "1..=255"]),
        ("NOMQ_RATE_LIMIT", "0", &["NOMQ_RATE_LIMIT", "1..="]),
        ("NOMQ_DEFAULT_TTL_S", "0", &["NOMQ_DEFAULT_TTL_S", "1..=65535"]),
        ("NOMQ_PEERS", "127.0.0.1:0", &["NOMQ_PEERS", "port 0"]),
        ("NOMQ_MULTICAST", "10.0.0.1", &["NOMQ_MULTICAST", "not a multicast address"]),
        ("NOMQ_UNSYNCED_CLOCK", "perhaps", &["NOMQ_UNSYNCED_CLOCK", "perhaps"]),
    ];
    for (var, val, needles) in env_cases {
        let cases = vec![(with_keys(sub(&[]), k), 2, needles.to_vec())];
        check_cases(&dir, &cases, &[(var, val)]);
    }
}

#[cfg(unix)]
#[test]
fn special_files_as_keyring_or_config_fail_fast() {
    let dir = Scratch::new("fifo");
    let Some(fifo) = fifo(&dir, "keys.fifo") else {
        eprintln!("SKIP: mkfifo unavailable");
        return;
    };
    let f = fifo.to_str().unwrap();
    let d = dir.dir().to_str().unwrap();
    let b = "127.0.0.1:0";
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        // Blocked forever before.
        (vec!["pub", "-c", "a", "-m", "x", "--bind", b, "--keys", f], 2, vec!["keys.fifo", "FIFO"]),
        (vec!["sub", "-c", "a", "--bind", b, "--keys", f], 2, vec!["keys.fifo", "FIFO", "--keys"]),
        (vec!["pub", "-c", "a", "-m", "x", "--bind", b, "--keys", d], 2, vec!["a directory"]),
        (vec!["sub", "-c", "a", "--bind", b, "--config", f], 2, vec!["keys.fifo", "FIFO"]),
        (vec!["keys", "show", f], 2, vec!["FIFO"]),
        (vec!["keys", "rotate", f], 2, vec!["FIFO"]),
    ];
    check_cases(&dir, &cases, &[]);
    let cases = vec![(vec!["pub", "-c", "a", "-m", "x", "--bind", b], 2, vec!["FIFO"])];
    check_cases(&dir, &cases, &[("NOMQ_KEYRING", f)]);
}

/// `--ttl` and `-W` take fractional seconds; `--ttl 0` (no expiry) is accepted; a
/// priority above 15 is sent as 15 with a warning, as docs/PROTOCOL.md specifies.
#[test]
fn fractional_seconds_ttl_zero_and_priority_clamp() {
    let dir = Scratch::new("fraction");
    let keys = dir.keys("k.json");
    let k = keys.as_str();
    let [p1, p2] = ports::<2>();
    let started = Instant::now();
    let (code, _, stderr) =
        outcome(&run(&dir, &["sub", "-c", "a", "--keys", k, "--bind", &s(&p1), "-W", "0.5"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("timed out after 0.5 s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(8));

    let sub = spawn(
        &dir,
        &["sub", "-c", "a/#", "--keys", k, "--bind", &s(&p1), "--peer", &s(&p2)]
            .into_iter()
            .chain(["-C", "3", "-W", "9.5", "--json"])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    for (ttl, prio) in [("2.5", "3"), ("0", "15"), ("0.001", "200")] {
        let (code, _, stderr) = outcome(&run(
            &dir,
            &["pub", "-c", "a/b", "-m", ttl, "-q", "1", "--ttl", ttl, "--priority", prio]
                .into_iter()
                .chain(["--keys", k, "--bind", &s(&p2), "--peer", &s(&p1)])
                .collect::<Vec<_>>(),
        ));
        assert_eq!(code, Some(0), "--ttl {ttl} --priority {prio}: {stderr}");
        let warned = stderr.contains("--priority 200 is above 15") && stderr.contains("sending 15");
        assert_eq!(warned, prio == "200", "{stderr}");
    }
    let (code, stdout, stderr) = outcome(&finish(sub, Duration::from_secs(15)));
    assert_eq!(code, Some(0), "{stderr}");
    let bodies: Vec<String> = stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["body"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(bodies, ["2.5", "0", "0.001"]);
}

#[test]
fn help_documents_exit_codes_and_units() {
    let dir = Scratch::new("help");
    let (code, stdout, _) = outcome(&run(&dir, &["sub", "--help"]));
    assert_eq!(code, Some(0));
    for n in [
        "130",
        "SIGINT",
        "143",
        "SIGTERM",
        "--unsynced-clock",
        "--refusals",
        "-v, --verbose",
        "Unix time",
    ] {
        assert!(stdout.contains(n), "sub --help lacks {n:?}: {stdout}");
    }
    let (code, stdout, _) = outcome(&run(&dir, &["pub", "--help"]));
    assert_eq!(code, Some(0));
    for n in
        ["rounded up", "65535", "no expiry", "sent as 15", "--refusals", "[aliases: -t, --topic]"]
    {
        assert!(stdout.contains(n), "pub --help lacks {n:?}: {stdout}");
    }
}

/// Issue 14: the `NOMQ_*` variable of a flag is read by clap as that flag: honoured when
/// the flag is absent, overridden when it is given, empty meaning unset, shown in
/// `--help`, and named when its value is refused.
#[test]
fn environment_variables_stand_for_their_flags() {
    let dir = Scratch::new("env-flags");
    let good = dir.keys("good.json");
    let missing = dir.path("missing.json");
    let missing = missing.to_str().unwrap();
    // Runs quietly for 0.3 s and exits 1 (nothing arrived) when everything was accepted.
    let sub = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["sub", "-c", "a", "-W", "0.3"];
        v.extend_from_slice(extra);
        v
    };
    let g: &'static str = Box::leak(good.clone().into_boxed_str());
    let m: &'static str = Box::leak(missing.to_string().into_boxed_str());
    let b = "127.0.0.1:0";

    // NOMQ_KEYRING and NOMQ_BIND alone are enough.
    check_cases(&dir, &[(sub(&[]), 1, vec![])], &[("NOMQ_KEYRING", g), ("NOMQ_BIND", b)]);
    // NOMQ_KEYRING is used: a missing file is named.
    check_cases(&dir, &[(sub(&["--bind", b]), 2, vec!["missing.json"])], &[("NOMQ_KEYRING", m)]);
    // --keys wins over NOMQ_KEYRING, either way round.
    check_cases(
        &dir,
        &[(sub(&["--keys", g]), 1, vec![])],
        &[("NOMQ_KEYRING", m), ("NOMQ_BIND", b)],
    );
    check_cases(
        &dir,
        &[(sub(&["--keys", m, "--bind", b]), 2, vec!["missing.json"])],
        &[("NOMQ_KEYRING", g)],
    );
    // --bind wins over a NOMQ_BIND that could not be bound.
    check_cases(
        &dir,
        &[(sub(&["--bind", b]), 1, vec![])],
        &[("NOMQ_KEYRING", g), ("NOMQ_BIND", "192.0.2.1:9")],
    );
    check_cases(
        &dir,
        &[(sub(&[]), 3, vec!["192.0.2.1:9"])],
        &[("NOMQ_KEYRING", g), ("NOMQ_BIND", "192.0.2.1:9")],
    );
    // Empty means unset: the default keyring name, not an empty path; a library
    // variable (no flag) likewise.
    check_cases(&dir, &[(sub(&["--bind", b]), 2, vec!["nomq-keys.json"])], &[("NOMQ_KEYRING", "")]);
    check_cases(
        &dir,
        &[(sub(&["--bind", b, "--keys", g]), 1, vec![])],
        &[("NOMQ_HEARTBEAT_MS", " ")],
    );

    // Booleans: 1/true/yes/on and 0/false/no/off; anything else is refused, naming the
    // variable; the flag itself needs no variable and ignores it.
    let with = |extra: &[&'static str]| {
        let mut v = sub(&["--bind", b, "--keys", g]);
        v.extend_from_slice(extra);
        v
    };
    for v in ["1", "TRUE", "yes", "0", "off"] {
        check_cases(
            &dir,
            &[(with(&[]), 1, vec![])],
            &[("NOMQ_UNSYNCED_CLOCK", v), ("NOMQ_REFUSALS", v)],
        );
    }
    check_cases(
        &dir,
        &[(with(&[]), 2, vec!["NOMQ_REFUSALS", "maybe"])],
        &[("NOMQ_REFUSALS", "maybe")],
    );
    check_cases(&dir, &[(with(&["--refusals"]), 1, vec![])], &[("NOMQ_REFUSALS", "maybe")]);
    // A refused value from the environment says where it came from; from the command
    // line it does not.
    check_cases(
        &dir,
        &[(
            with(&[]),
            2,
            vec!["--unicast-port", "70000", "environment variable NOMQ_UNICAST_PORT"],
        )],
        &[("NOMQ_UNICAST_PORT", "70000")],
    );
    let out = run(&dir, &with(&["--unicast-port", "70000"]));
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(!stderr.contains("environment variable"), "{stderr}");
    // NOMQ_PEERS is a comma-separated list, as the repeated flag.
    check_cases(
        &dir,
        &[(with(&[]), 2, vec!["127.0.0.1:0", "port 0"])],
        &[("NOMQ_PEERS", "127.0.0.1:9001, 127.0.0.1:0")],
    );

    // clap writes the variables into --help (and so into the man page).
    let help = outcome(&run(&dir, &["sub", "--help"])).1;
    for var in [
        "NOMQ_KEYRING",
        "NOMQ_BIND",
        "NOMQ_UNICAST_PORT",
        "NOMQ_PEERS",
        "NOMQ_BROADCAST",
        "NOMQ_MULTICAST",
        "NOMQ_UNSYNCED_CLOCK",
        "NOMQ_REFUSALS",
        "NOMQ_STATE",
    ] {
        assert!(help.contains(&format!("[env: {var}=")), "{var} missing from --help:\n{help}");
    }
    let man = outcome(&run(&dir, &["man"])).1;
    assert!(man.contains("NOMQ_KEYRING"), "the man page lacks the variables");
}
