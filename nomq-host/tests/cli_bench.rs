//! `nomq bench`: a run cut at the time limit says so; the help matches the code.

mod cli_support;
use cli_support::*;

#[test]
fn a_run_cut_at_the_time_limit_says_so() {
    let dir = Scratch::new("bench-cut");
    let args = ["bench", "--messages", "10000000", "--samples", "1000000", "--max-seconds", "0.2"];
    let (code, stdout, stderr) =
        outcome(&run(&dir, &args.into_iter().chain(["--json"]).collect::<Vec<_>>()));
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["max_seconds"], 0.2);
    for phase in ["raw_udp", "nomq_qos0", "qos1_rtt"] {
        assert_eq!(v[phase]["cut"], true, "{phase}: {v}");
    }
    let sent = v["nomq_qos0"]["sent"].as_u64().unwrap();
    assert!(sent > 0 && sent < 10_000_000, "{v}");

    let (code, stdout, stderr) = outcome(&run(&dir, &args));
    assert_eq!(code, Some(0), "{stderr}");
    let cut: Vec<&str> = stdout.lines().filter(|l| l.contains("cut at the 0.2 s limit")).collect();
    assert_eq!(cut.len(), 3, "{stdout}");
    assert!(cut[0].contains("of 10000000 sent") && cut[2].contains("of 1000000 timed"), "{stdout}");

    // A run that completes is not reported as cut.
    let args = ["bench", "--messages", "200", "--samples", "20", "--max-seconds", "30", "--json"];
    let (code, stdout, stderr) = outcome(&run(&dir, &args));
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for phase in ["raw_udp", "nomq_qos0", "qos1_rtt"] {
        assert_eq!(v[phase]["cut"], false, "{phase}: {v}");
    }
}

#[test]
fn bench_help_matches_the_engine() {
    let dir = Scratch::new("bench-help");
    let (code, stdout, _) = outcome(&run(&dir, &["bench", "--help"]));
    assert_eq!(code, Some(0));
    assert!(!stdout.contains("shifts its outbox"), "{stdout}");
    assert!(stdout.contains("swap-removed") && stdout.contains("--max-seconds"), "{stdout}");
    let (code, _, stderr) = outcome(&run(&dir, &["bench", "--max-seconds", "0"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--max-seconds"), "{stderr}");
}
