//! Host names where an address is taken: `--bind`, `--peer`, `--to`.

mod cli_support;
use cli_support::*;
use std::time::Duration;

#[test]
fn localhost_works_for_bind_peer_and_to() {
    let dir = Scratch::new("names");
    let keys = dir.keys("k.json");
    let [p1, p2] = ports::<2>();
    let (n1, n2) = (format!("localhost:{}", p1.port()), format!("localhost:{}", p2.port()));
    let sub = spawn(
        &dir,
        &["sub", "-c", "n/#", "-C", "1", "-W", "20", "--keys", &keys, "--bind", &n1, "--peer", &n2],
    );
    until_bound(p1);
    let out = run(
        &dir,
        &["pub", "-c", "n/a", "-m", "hi", "-q", "1", "--keys", &keys]
            .into_iter()
            .chain(["--bind", &n2, "--peer", &n1, "--to", &n1])
            .collect::<Vec<_>>(),
    );
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(stdout.contains("acknowledged by 1 subscriber"), "{stdout}");
    let (code, got, stderr) = outcome(&finish(sub, Duration::from_secs(20)));
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(got, "hi\n");
}

#[test]
fn unresolvable_names_are_usage_errors_naming_the_option() {
    let dir = Scratch::new("names-bad");
    for opt in ["--bind", "--peer", "--to"] {
        let args = ["pub", "-c", "a", "-m", "x", opt, "nomq.invalid:7001"];
        let (code, _, stderr) = outcome(&run(&dir, &args));
        assert_eq!(code, Some(2), "{opt}: {stderr}");
        assert!(stderr.contains(opt) && stderr.contains("cannot resolve"), "{opt}: {stderr}");
    }
}
