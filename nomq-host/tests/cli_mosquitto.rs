//! The habits of mosquitto_pub / mosquitto_sub: `-t`, the body sources `-m/-s/-l/-f/-n`
//! (any bytes), and the output of `nomq sub`: the body alone, `-v`, `-N`, `-F`.

mod cli_support;
use cli_support::*;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

/// `nomq pub` from `from` to `peers` at QoS 1 (after the body arguments), with `stdin`.
fn publish(
    dir: &Scratch,
    keys: &str,
    from: SocketAddr,
    peers: &[SocketAddr],
    body: &[&std::ffi::OsStr],
    stdin: &[u8],
) -> Output {
    let mut c = nomq(dir, &["pub", "-q", "1", "--keys", keys, "--bind", &s(&from)]);
    for p in peers {
        c.args(["--peer", &s(p)]);
    }
    c.args(body);
    let mut child =
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    finish(child, Duration::from_secs(20))
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

/// Every body source reaches the subscriber byte for byte, and `-v` prints `channel body`.
#[test]
fn every_body_source_arrives_byte_for_byte() {
    let dir = Scratch::new("mosq-sources");
    let keys = dir.keys("k.json");
    let [p1, p2] = ports::<2>();
    let file = dir.path("body.bin");
    std::fs::write(&file, [0u8, 0xff, b'\n', b'z']).unwrap();
    let sub = spawn(
        &dir,
        &["sub", "-t", "in/#", "-v", "-C", "5", "-W", "30", "--keys", &keys]
            .into_iter()
            .chain(["--bind", &s(&p1), "--peer", &s(&p2)])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    #[cfg(unix)]
    let raw = {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::OsStr::from_bytes(&[0xff, 0xfe, b'a']).to_os_string()
    };
    #[cfg(not(unix))]
    let raw = std::ffi::OsString::from("\u{ff}\u{fe}a");
    let runs: [(&str, Vec<&std::ffi::OsStr>, &[u8]); 5] = [
        ("in/m", vec![os("-m"), &raw], b""),
        ("in/f", vec![os("-f"), file.as_os_str()], b""),
        ("in/n", vec![os("-n")], b""),
        ("in/s", vec![os("-s")], b"hello\nworld"),
        ("in/dash", vec![os("-m"), os("-")], b"not read"),
    ];
    for (channel, body, stdin) in &runs {
        let mut args = vec![os("--topic"), os(channel)];
        args.extend(body.iter().copied());
        let (code, stdout, stderr) = outcome(&publish(&dir, &keys, p2, &[p1], &args, stdin));
        assert_eq!(code, Some(0), "{channel}: {stdout} {stderr}");
        assert!(stdout.contains("acknowledged by 1 subscriber"), "{channel}: {stdout}");
    }
    let out = finish(sub, Duration::from_secs(20));
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, Some(0), "sub: {stderr}");
    let mut want = Vec::new();
    #[cfg(unix)]
    want.extend_from_slice(b"in/m \xff\xfea\n");
    #[cfg(not(unix))]
    want.extend_from_slice("in/m \u{ff}\u{fe}a\n".as_bytes());
    want.extend_from_slice(b"in/f \x00\xff\nz\nin/n \nin/s hello\nworld\nin/dash -\n");
    assert_eq!(out.stdout, want, "got {:?}", text(&out.stdout));
}

/// `-l` sends one message per line, in order, skipping empty lines; the default output
/// is the body alone. At QoS 1 each line is checked: unconfirmed lines make exit 1.
#[test]
fn stdin_line_sends_each_line_and_checks_each_outcome() {
    let dir = Scratch::new("mosq-lines");
    let keys = dir.keys("k.json");
    let [p1, p2, nobody] = ports::<3>();
    let sub = spawn(
        &dir,
        &["sub", "-c", "l/1", "-C", "3", "-W", "30", "--keys", &keys]
            .into_iter()
            .chain(["--bind", &s(&p1), "--peer", &s(&p2)])
            .collect::<Vec<_>>(),
    );
    until_bound(p1);
    let args = [os("-t"), os("l/1"), os("-l")];
    let out = publish(&dir, &keys, p2, &[p1], &args, b"one\n\ntwo\r\nthree");
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert_eq!(stdout.matches("acknowledged by 1 subscriber").count(), 3, "{stdout}");
    let (code, got, stderr) = outcome(&finish(sub, Duration::from_secs(20)));
    assert_eq!(code, Some(0), "sub: {stderr}");
    assert_eq!(got, "one\ntwo\nthree\n");

    // Nobody subscribes: every line is reported, and the exit code says so.
    let [p3] = ports::<1>();
    let args = [os("-t"), os("l/1"), os("-l"), os("--wait-ms"), os("200")];
    let out = publish(&dir, &keys, p3, &[nobody], &args, b"a\nb\n");
    let (code, _, stderr) = outcome(&out);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("line 1:") && stderr.contains("line 2:"), "{stderr}");
    assert!(stderr.contains("2 of 2 lines failed"), "{stderr}");
}

/// `-F` fields, `-N`, and the refusal of a bad format or of two body sources.
#[test]
fn format_and_no_newline() {
    let dir = Scratch::new("mosq-format");
    let keys = dir.keys("k.json");
    // Each subscriber has a publisher port of its own: a subscriber announces itself to
    // its --peer, so with one shared publisher port a publish could reach both (as it may).
    let [p1, p2, q1, q2] = ports::<4>();
    let spawn_sub = |bind: SocketAddr, publisher: SocketAddr, extra: &[&str]| {
        let mut args = vec!["sub", "-c", "f/#", "-C", "2", "-W", "30", "--keys", &keys];
        let (b, p) = (s(&bind), s(&publisher));
        args.extend(["--bind", &b, "--peer", &p]);
        args.extend(extra);
        spawn(&dir, &args)
    };
    let formatted = spawn_sub(p1, q1, &["-F", "%t|%p|%q|%r|%l|%x|%%|%i|%j"]);
    let bare = spawn_sub(p2, q2, &["-N"]);
    until_bound(p1);
    until_bound(p2);
    // One publish per subscriber: `nomq pub` publishes once it heard from any peer.
    for body in ["x", "y"] {
        for (to, from) in [(p1, q1), (p2, q2)] {
            let args = [os("-c"), os("f/a"), os("-m"), os(body)];
            let (code, stdout, stderr) = outcome(&publish(&dir, &keys, from, &[to], &args, b""));
            assert_eq!(code, Some(0), "{stdout} {stderr}");
            assert!(stdout.contains("acknowledged by 1 subscriber"), "{stdout}");
        }
    }
    let (code, got, stderr) = outcome(&finish(bare, Duration::from_secs(20)));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(got, "xy", "-N: no newline after each message");
    let (code, got, stderr) = outcome(&finish(formatted, Duration::from_secs(20)));
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    for (line, body) in lines.iter().zip(["x", "y"]) {
        let f: Vec<&str> = line.splitn(9, '|').collect();
        let hex = format!("{:02x}", body.as_bytes()[0]);
        assert_eq!(&f[..7], ["f/a", body, "1", "0", "1", hex.as_str(), "%"], "{line}");
        let (session, id) = f[7].split_once(':').unwrap();
        let v: serde_json::Value = serde_json::from_str(f[8]).unwrap();
        assert_eq!(v["body"], body);
        assert_eq!(v["id"]["session"], session, "{line}");
        assert_eq!(v["id"]["packet_id"].to_string(), id, "{line}");
    }

    for (args, names) in [
        (vec!["sub", "-c", "a", "-F", "%z"], "-F/--format"),
        (vec!["sub", "-c", "a", "-F", "%"], "-F/--format"),
        (vec!["sub", "-c", "a", "-F", "%p", "--json"], "--json"),
        (vec!["pub", "-c", "a", "-m", "x", "-n"], "--null-message"),
        (vec!["pub", "-c", "a", "-s", "-l"], "--stdin-line"),
        (vec!["pub", "-c", "a"], "--message"),
        (vec!["pub", "-c", "a", "-f", "/nonexistent/nomq"], "--file"),
    ] {
        let (code, _, stderr) = outcome(&run(&dir, &args));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
    }
}
