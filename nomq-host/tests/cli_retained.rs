//! `nomq pub --retain --linger-s`: a late subscriber that acknowledges the retained copy
//! during the linger makes the publish a confirmed delivery, and receives it once.

mod cli_support;
use cli_support::*;
use std::time::Duration;

#[test]
fn late_subscriber_acknowledging_the_retained_copy_is_success() {
    let dir = Scratch::new("retained-linger");
    let keys = dir.keys("k.json");
    let [p1, p2] = ports::<2>();
    let publisher = spawn(
        &dir,
        &[
            "pub",
            "-c",
            "cfg/mode",
            "-m",
            "eco",
            "--qos",
            "1",
            "--retain",
            "--linger-s",
            "6",
            "--wait-ms",
            "300",
            "--bind",
            &s(&p1),
            "--peer",
            &s(&p2),
            "--keys",
            &keys,
        ],
    );
    until_bound(p1);
    // Past the publish's own fan-out repeats (about 1.7 s): it ended NoSubscribers.
    std::thread::sleep(Duration::from_millis(3000));
    let sub = run(
        &dir,
        &[
            "sub",
            "-c",
            "cfg/#",
            "-v",
            "--bind",
            &s(&p2),
            "--peer",
            &s(&p1),
            "--keys",
            &keys,
            "-W",
            "3",
        ],
    );
    let (_, got, _) = outcome(&sub);
    assert_eq!(got.matches("cfg/mode eco").count(), 1, "late subscriber printed: {got}");
    let out = finish(publisher, Duration::from_secs(20));
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("retained value acknowledged during the linger"), "{stdout}");
    assert!(stderr.contains("at publish time"), "the publish itself ended unconfirmed: {stderr}");
}
