//! `nomq bench`: a run cut at the time limit says so; the help matches the code; the
//! windowed QoS 1 stream, --sweep and the receiver report.

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
    for phase in ["raw_udp", "nomq_qos0", "nomq_qos1_window", "qos1_rtt"] {
        assert_eq!(v[phase]["cut"], true, "{phase}: {v}");
    }
    let sent = v["nomq_qos0"]["sent"].as_u64().unwrap();
    assert!(sent > 0 && sent < 10_000_000, "{v}");

    let (code, stdout, stderr) = outcome(&run(&dir, &args));
    assert_eq!(code, Some(0), "{stderr}");
    let cut: Vec<&str> = stdout.lines().filter(|l| l.contains("cut at the 0.2 s limit")).collect();
    assert_eq!(cut.len(), 4, "{stdout}");
    assert!(cut[0].contains("of 10000000 sent") && cut[3].contains("of 1000000 timed"), "{stdout}");

    // A run that completes is not reported as cut.
    let args = ["bench", "--messages", "200", "--samples", "20", "--max-seconds", "30", "--json"];
    let (code, stdout, stderr) = outcome(&run(&dir, &args));
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for phase in ["raw_udp", "nomq_qos0", "nomq_qos1_window", "qos1_rtt"] {
        assert_eq!(v[phase]["cut"], false, "{phase}: {v}");
    }
}

#[test]
fn bench_help_matches_the_engine() {
    let dir = Scratch::new("bench-help");
    let (code, stdout, _) = outcome(&run(&dir, &["bench", "--help"]));
    assert_eq!(code, Some(0));
    // The help of --pipeline describes what the bench does, not an old engine cost.
    assert!(!stdout.contains("shifts its outbox") && !stdout.contains("scans its whole outbox"));
    for flag in ["--pipeline", "--batch", "--window", "--sweep", "--max-seconds"] {
        assert!(stdout.contains(flag), "{flag}: {stdout}");
    }
    assert!(stdout.contains("1..=1024") && stdout.contains("publish_batch"), "{stdout}");
    let (code, _, stderr) = outcome(&run(&dir, &["bench", "--max-seconds", "0"]));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--max-seconds"), "{stderr}");
    for (flag, bad) in
        [("--window", "0"), ("--pipeline", "1025"), ("--batch", "0"), ("--window", "x")]
    {
        let (code, _, stderr) = outcome(&run(&dir, &["bench", flag, bad]));
        assert_eq!(code, Some(2), "{flag} {bad}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {bad}: {stderr}");
    }
}

/// The receiver report of a phase: memory at both ends, kernel overflows, node drops.
fn assert_receiver(phase: &serde_json::Value, node: bool) {
    let rx = &phase["receiver"];
    let (a, b) = (rx["rss_start_kib"].as_u64().unwrap(), rx["rss_end_kib"].as_u64().unwrap());
    assert!(a > 0 && b > 0, "{rx}");
    assert!(rx["udp_rcvbuf_errors"].is_u64(), "{rx}");
    if node {
        assert!(rx["engine_drops"].is_u64() && rx["app_dropped"].is_u64(), "{rx}");
        assert!(rx["drops"].is_object(), "{rx}");
    }
}

#[test]
fn the_windowed_qos1_stream_counts_acknowledged_outcomes() {
    let dir = Scratch::new("bench-window");
    let args = [
        "bench",
        "--messages",
        "300",
        "--samples",
        "5",
        "--window",
        "32",
        "--pipeline",
        "200",
        "--batch",
        "7",
        "--max-seconds",
        "20",
        "--json",
    ];
    let (code, stdout, stderr) = outcome(&run(&dir, &args));
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let w = &v["nomq_qos1_window"];
    assert_eq!(w["window"], 32, "{w}");
    assert_eq!(w["sent"], 300, "{w}");
    // On loopback with no loss every one of them is acknowledged, and each counts once.
    assert_eq!(w["acked"], 300, "{w}");
    assert_eq!(w["failed"], 0, "{w}");
    assert_eq!(w["unresolved"], 0, "{w}");
    assert!(w["per_second"].as_f64().unwrap() > 0.0, "{w}");
    assert_eq!(v["nomq_qos0"]["sent"], 300, "{v}");
    assert_eq!(v["nomq_qos0"]["received"], 300, "{v}");
    assert_eq!((v["pipeline"].as_u64(), v["batch"].as_u64()), (Some(200), Some(7)), "{v}");
    // Every message delivered once: the receiving engine dropped nothing in these phases.
    for phase in ["nomq_qos0", "nomq_qos1_window"] {
        assert_receiver(&v[phase], true);
        assert_eq!(v[phase]["receiver"]["engine_drops"], 0, "{phase}: {v}");
        assert!(v[phase]["receiver"]["delivered"].as_u64().unwrap() >= 300, "{phase}: {v}");
    }
    assert_receiver(&v["raw_udp"], false);

    // The text form reports the stream and the receiver.
    let (code, stdout, stderr) = outcome(&run(&dir, &args[..args.len() - 1]));
    assert_eq!(code, Some(0), "{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("NoMQ QoS 1 window")).unwrap_or_default();
    assert!(line.contains("acked/s") && line.contains("300 acknowledged"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.contains("receiver: RSS")).count(), 3, "{stdout}");
}

#[test]
fn a_sweep_covers_every_payload_size() {
    let dir = Scratch::new("bench-sweep");
    let args = ["bench", "--sweep", "--messages", "100", "--window", "8", "--max-seconds", "10"];
    let (code, stdout, stderr) = outcome(&run(&dir, &[&args[..], &["--json"]].concat()));
    assert_eq!(code, Some(0), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(stdout.trim()).unwrap();
    let sizes: Vec<u64> = rows.iter().map(|r| r["body_len"].as_u64().unwrap()).collect();
    assert_eq!(sizes, [16, 64, 256, 1024, 4096, 8192]);
    let mut carried = 0;
    for r in &rows {
        assert_eq!(r["raw_udp"]["sent"], 100, "{r}");
        assert_receiver(&r["raw_udp"], false);
        let size = r["body_len"].as_u64().unwrap();
        let mb = r["raw_udp"]["mb_per_second"].as_f64().unwrap();
        let rate = r["raw_udp"]["per_second"].as_f64().unwrap();
        assert!((mb - rate * size as f64 / 1e6).abs() <= 0.002 + mb * 1e-3, "{r}");
        if let Some(why) = r["nomq_qos0"]["skipped"].as_str() {
            // A size that does not fit one packet says so, for both NoMQ phases.
            assert!(why.contains(&format!("{size} B")), "{r}");
            assert!(r["nomq_qos1_window"]["skipped"].is_string(), "{r}");
            continue;
        }
        carried += 1;
        assert_eq!(r["nomq_qos0"]["received"], 100, "{r}");
        assert_eq!(r["nomq_qos1_window"]["acked"], 100, "{r}");
        assert_receiver(&r["nomq_qos0"], true);
        assert_receiver(&r["nomq_qos1_window"], true);
    }
    // 16 .. 1024 B fit any packet NoMQ sends.
    assert!(carried >= 4, "{stdout}");

    let (code, stdout, stderr) = outcome(&run(&dir, &args));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.lines().next().unwrap_or_default().contains("QoS1w msg/s"), "{stdout}");
    for size in ["16", "64", "256", "1024", "4096", "8192"] {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().next() == Some(size)),
            "{size}: {stdout}"
        );
    }
}
