//! `nomq pub`: publish one message and, for QoS 1/2, wait for its outcome.

use crate::common::{self, Failure, NodeArgs, PeerBook, Refusals};
use clap::value_parser;
use nomq::ChannelName;
use nomq_host::{Delivery, Destination, Handle, PublishOptions, Qos, Status};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("body").required(true).multiple(false)
    .args(["message", "stdin_file", "stdin_line", "file", "null_message"]))]
pub struct PubArgs {
    /// Channel to publish to (levels separated by `/`, no wildcards).
    #[arg(
        short = 'c',
        long = "channel",
        value_name = "CHANNEL",
        visible_short_alias = 't',
        visible_alias = "topic"
    )]
    channel: String,
    /// Message body, sent as the bytes given (need not be UTF-8). `-m -` sends a literal
    /// "-", as mosquitto_pub does: to read stdin, use -s or -l. Exactly one of
    /// -m/-s/-l/-f/-n.
    #[arg(short = 'm', long = "message", value_name = "MESSAGE")]
    message: Option<OsString>,
    /// Read the whole of stdin and send it as one message.
    #[arg(short = 's', long)]
    stdin_file: bool,
    /// Send each line of stdin as a message, in order, as lines arrive (the line ending,
    /// \n or \r\n, is not sent; empty lines are skipped, as mosquitto_pub does). At QoS 1/2
    /// each line's outcome is checked: exit 1 if any line was not confirmed.
    #[arg(short = 'l', long)]
    stdin_line: bool,
    /// Send the contents of FILE as the message.
    #[arg(short = 'f', long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// Send an empty message (zero-length body).
    #[arg(short = 'n', long)]
    null_message: bool,
    /// Delivery guarantee: 0 at most once, 1 at least once, 2 exactly once.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Keep as the channel's retained value while this process runs (see --linger-s).
    #[arg(short = 'r', long)]
    retain: bool,
    /// Seconds the message lives, 0..=65535, fractional allowed; retransmissions stop at
    /// its end. The wire carries whole seconds: a fraction is rounded up (2.5 → 3). 0
    /// means no expiry; this version sends the longest TTL, 65535 s (about 18 h), instead.
    #[arg(long, value_name = "S", default_value = "10", value_parser = ttl_arg, allow_negative_numbers = true)]
    ttl: u16,
    /// 0 (lowest) to 15 (highest). As the protocol specifies, more than 15 is sent as 15
    /// (with a warning).
    #[arg(long, value_name = "P", default_value_t = 0, allow_negative_numbers = true)]
    priority: u8,
    /// Send to this one peer instead of the fan-out.
    #[arg(long, value_name = "ADDR", value_parser = common::addr_arg)]
    to: Option<common::AddrArg>,
    /// QoS 1/2: wait up to this many milliseconds, 0..=600000, to hear from a peer (and
    /// learn its subscriptions) before publishing.
    #[arg(long, value_name = "N", default_value_t = 1500,
          value_parser = value_parser!(u64).range(0..=600_000), allow_negative_numbers = true)]
    wait_ms: u64,
    /// Keep running this many seconds after the outcome, 0..=86400, fractional allowed
    /// (serves a retained value to subscribers that join meanwhile).
    #[arg(long, value_name = "S", default_value = "0",
          value_parser = common::seconds_arg(0.0, 86_400.0), allow_negative_numbers = true)]
    linger_s: Duration,
    #[command(flatten)]
    node: NodeArgs,
}

/// Highest priority on the wire.
const MAX_PRIORITY: u8 = 15;

/// `--ttl`: seconds, fractional allowed, rounded up to whole seconds; 0 (no expiry on the
/// wire) becomes the longest TTL, since the engine refuses 0.
fn ttl_arg(s: &str) -> Result<u16, String> {
    let d = common::seconds_arg(0.0, f64::from(u16::MAX))(s)?;
    if d.is_zero() {
        return Ok(u16::MAX);
    }
    // 0 < d ≤ 65535 s, so the rounded-up seconds fit a u16.
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u16::try_from(secs).map_err(|_| format!("{s} is outside 0..=65535 seconds"))
}

/// Where the body (or, with `-l`, the bodies) comes from.
enum Source {
    /// One body, already read.
    One(Vec<u8>),
    /// Lines of stdin, read as they arrive.
    Lines,
}

impl PubArgs {
    /// The body of `-m`/`-s`/`-f`/`-n`, read before any socket is bound.
    fn source(&self) -> Result<Source, Failure> {
        use std::io::Read;
        if let Some(m) = &self.message {
            return Ok(Source::One(os_bytes(m)));
        }
        if self.stdin_file {
            let mut body = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut body)
                .map_err(|e| Failure::usage(format!("--stdin-file: cannot read stdin: {e}")))?;
            return Ok(Source::One(body));
        }
        if let Some(f) = &self.file {
            let body = std::fs::read(f)
                .map_err(|e| Failure::usage(format!("--file {}: {e}", f.display())))?;
            return Ok(Source::One(body));
        }
        if self.stdin_line {
            return Ok(Source::Lines);
        }
        // -n (clap requires one of the group).
        Ok(Source::One(Vec::new()))
    }
}

/// The lines of stdin, read on a thread of their own as they arrive (a blocking read
/// must not stall the node's runtime); an error ends them.
fn stdin_lines() -> mpsc::Receiver<Result<Vec<u8>, Failure>> {
    use std::io::BufRead;
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            let r = match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => Ok(line),
                Err(e) => Err(Failure::usage(format!("--stdin-line: cannot read stdin: {e}"))),
            };
            let stop = r.is_err();
            if tx.blocking_send(r).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// The bytes of an argument as the shell passed them (on Unix, any bytes).
fn os_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        s.as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        s.to_string_lossy().into_owned().into_bytes()
    }
}

pub async fn run(a: PubArgs) -> Result<(), Failure> {
    let cfg = a.node.host_config()?;
    let to = a.to.as_ref().map(|t| t.pick("--to", Some(cfg.bind))).transpose()?;
    let source = a.source()?;
    let max_body = check(&a.channel, cfg.engine.max_payload)?;
    if let Source::One(body) = &source {
        check_len(&a.channel, body.len(), max_body)?;
    }
    let priority = if a.priority > MAX_PRIORITY {
        eprintln!(
            "warning: --priority {} is above {MAX_PRIORITY}, the highest; sending {MAX_PRIORITY}",
            a.priority
        );
        MAX_PRIORITY
    } else {
        a.priority
    };
    let keys = common::load_keys(&cfg)?;
    let (events, mut events_rx) = mpsc::channel(256);
    let node = common::start(&cfg, keys, Some(events), None).await?;
    let mut refusals = Refusals::new(&cfg);
    let verbose = a.node.refusals;
    // Checked by clap: 0..=2.
    let qos = Qos::from_level(a.qos).unwrap_or_default();
    let opts = PublishOptions::qos(qos)
        .retain(a.retain)
        .ttl(a.ttl)
        .priority(priority)
        .to(to.map_or(Destination::All, |t| Destination::Peer(t.into())));
    let heard = if qos != Qos::AtMostOnce && common::has_fanout(&cfg) {
        let wait = wait_for_peer(&node, Duration::from_millis(a.wait_ms));
        summarised(wait, &node, &mut refusals, verbose).await
    } else {
        false
    };
    let mut book = PeerBook::default();
    let ctx = Context { channel: &a.channel, to, ttl: a.ttl, heard };
    let outcome = match source {
        Source::One(body) => {
            let publish = node.publish(&a.channel, body, opts);
            let result = summarised(publish, &node, &mut refusals, verbose).await;
            book.drain(&mut events_rx);
            let mut late = Vec::new();
            if !a.linger_s.is_zero() && result.is_ok() {
                let linger = linger(a.linger_s, &mut events_rx, &mut book, &mut late);
                summarised(linger, &node, &mut refusals, verbose).await;
            }
            match result {
                Ok(d) => report_with_late(&ctx, &d, &book, &late),
                Err(e) => Err(Failure::from(e)),
            }
        }
        Source::Lines => {
            let lines = publish_lines(&a, &ctx, &node, &opts, max_body, &mut book, &mut events_rx);
            let r = summarised(lines, &node, &mut refusals, verbose).await;
            if r.is_ok() && !a.linger_s.is_zero() {
                let mut late = Vec::new();
                let linger = linger(a.linger_s, &mut events_rx, &mut book, &mut late);
                summarised(linger, &node, &mut refusals, verbose).await;
            }
            r
        }
    };
    if outcome.as_ref().is_err_and(|f| f.code == 1) {
        refusals.print_totals(&node).await;
    } else if verbose {
        // The last counts, if they changed since the last summary line.
        refusals.report_changes(&node).await;
    }
    node.shutdown().await;
    outcome
}

/// `-l`: publishes each non-empty line of stdin in order, reporting each outcome. Every
/// line is tried; the result is the worst failure (an oversized line is a usage error,
/// exit 2; an unconfirmed one exit 1).
async fn publish_lines(
    a: &PubArgs,
    ctx: &Context<'_>,
    node: &Handle,
    opts: &PublishOptions,
    max_body: usize,
    book: &mut PeerBook,
    events: &mut mpsc::Receiver<nomq_host::NodeEvent>,
) -> Result<(), Failure> {
    let mut lines = stdin_lines();
    let (mut n, mut failed) = (0u64, 0u64);
    let mut worst: Option<Failure> = None;
    while let Some(line) = lines.recv().await {
        let mut line = line?;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if line.is_empty() {
            continue;
        }
        n += 1;
        let result = match check_len(&a.channel, line.len(), max_body) {
            Err(f) => Err(f),
            Ok(()) => match node.publish(&a.channel, line, *opts).await {
                Ok(d) => {
                    book.drain(events);
                    report(ctx, &d, book)
                }
                Err(e) => Err(Failure::from(e)),
            },
        };
        if let Err(f) = result {
            failed += 1;
            eprintln!("error: line {n}: {f}");
            if worst.as_ref().is_none_or(|w| f.code > w.code) {
                worst = Some(f);
            }
        }
    }
    match worst {
        None => Ok(()),
        Some(w) => {
            let s = if n == 1 { "" } else { "s" };
            Err(Failure { code: w.code, message: format!("{failed} of {n} line{s} failed") })
        }
    }
}

/// Serves the retained value for `d`, collecting the late subscribers that acknowledged
/// the copy the node sent them on its own (and the addresses of peers that joined).
async fn linger(
    d: Duration,
    events: &mut mpsc::Receiver<nomq_host::NodeEvent>,
    book: &mut PeerBook,
    late: &mut Vec<nomq::SessionId>,
) {
    let end = tokio::time::sleep(d);
    tokio::pin!(end);
    loop {
        tokio::select! {
            () = &mut end => return,
            e = events.recv() => match e {
                Some(nomq::Event::Outcome(o)) if o.retained_reply => {
                    if o.status == Status::Acknowledged {
                        late.extend(o.acked.iter().copied());
                    }
                }
                Some(e) => book.note(&e),
                // The node is gone: nothing more to serve.
                None => return,
            },
        }
    }
}

/// [`report`], where late subscribers that acknowledged the retained copy during the
/// linger count as delivery: the value reached them, confirmed.
fn report_with_late(
    ctx: &Context<'_>,
    d: &Delivery,
    book: &PeerBook,
    late: &[nomq::SessionId],
) -> Result<(), Failure> {
    let mut late: Vec<_> = late.iter().copied().filter(|s| !d.acked.contains(s)).collect();
    late.sort_unstable_by_key(|s| s.0);
    late.dedup();
    let r = report(ctx, d, book);
    if late.is_empty() {
        return r;
    }
    let n = late.len();
    let s = if n == 1 { "" } else { "s" };
    match r {
        Ok(()) => {
            println!("retained value acknowledged by {n} late subscriber{s}: {}", book.list(&late));
            Ok(())
        }
        Err(f) => {
            eprintln!("note: at publish time: {f}");
            println!(
                "retained value acknowledged during the linger by {n} late subscriber{s}: {}",
                book.list(&late)
            );
            Ok(())
        }
    }
}

/// Runs `f`; with `--refusals`, reports refusal counts once a second meanwhile.
async fn summarised<F: Future>(
    f: F,
    node: &Handle,
    refusals: &mut Refusals,
    verbose: bool,
) -> F::Output {
    if !verbose {
        return f.await;
    }
    let mut f = std::pin::pin!(f);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = &mut f => return r,
            _ = tick.tick() => refusals.report_changes(node).await,
        }
    }
}

/// Refuses a bad channel before any socket is bound; returns the largest body a packet
/// on it holds.
fn check(channel: &str, max_payload: usize) -> Result<usize, Failure> {
    ChannelName::new(channel)
        .map_err(|e| Failure::usage(format!("invalid channel name {channel:?}: {e}")))?;
    Ok(nomq::envelope::max_plaintext(max_payload)
        .saturating_sub(nomq::body::PUBLISH_OVERHEAD)
        .saturating_sub(channel.len()))
}

/// Refuses an oversized message.
fn check_len(channel: &str, body_len: usize, max: usize) -> Result<(), Failure> {
    if body_len > max {
        return Err(Failure::usage(format!(
            "message too large: {body_len} bytes; on channel {channel:?} one packet holds at most \
             {max} bytes of body (split it, or publish a reference to it)"
        )));
    }
    Ok(())
}

/// Waits until the node has received a datagram from another node (a peer's heartbeat
/// announces its subscriptions), at most `limit`. Our own broadcasts and multicasts,
/// which the kernel loops back to the discovery socket, do not count.
async fn wait_for_peer(node: &Handle, limit: Duration) -> bool {
    // Past the end of time (not with --wait-ms ≤ 600000) means: wait no longer.
    let end = Instant::now().checked_add(limit).unwrap_or_else(Instant::now);
    let others = |s: &nomq_host::HostStats| {
        s.engine.rx_datagrams > s.engine.drops(nomq::node::DropReason::OwnPacket)
    };
    loop {
        if node.stats().await.is_ok_and(|s| others(&s)) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What an outcome is reported against.
struct Context<'a> {
    channel: &'a str,
    /// `--to`, if the publish went to one peer.
    to: Option<SocketAddr>,
    ttl: u16,
    /// Whether any peer was heard from before publishing.
    heard: bool,
}

fn report(ctx: &Context<'_>, d: &Delivery, book: &PeerBook) -> Result<(), Failure> {
    let Context { channel, to, ttl, heard } = *ctx;
    match d.status {
        Status::Sent => Ok(()),
        Status::Acknowledged => {
            let n = d.acked.len();
            let s = if n == 1 { "" } else { "s" };
            println!("acknowledged by {n} subscriber{s}: {}", book.list(&d.acked));
            Ok(())
        }
        Status::NoSubscribers => {
            let why = match to {
                Some(t) => format!(
                    "{t} did not answer (is `nomq sub` running there with a matching pattern?)"
                ),
                None if !heard => "no peer was heard from (check --peer/--bind on both sides, \
                     and that `nomq sub` is running)"
                    .to_string(),
                None => "no peer announced a matching subscription".to_string(),
            };
            Err(Failure::undelivered(format!(
                "not delivered: no subscriber of {channel:?} acknowledged: {why}"
            )))
        }
        Status::Unacknowledged => Err(Failure::undelivered(format!(
            "not confirmed: retransmissions exhausted; {}",
            who(d, book)
        ))),
        Status::Expired => Err(Failure::undelivered(format!(
            "not confirmed: the TTL of {ttl} s ran out (raise it with --ttl); {}",
            who(d, book)
        ))),
        other => Err(Failure::undelivered(format!("not confirmed: {other:?}; {}", who(d, book)))),
    }
}

/// Who is missing and who acknowledged.
fn who(d: &Delivery, book: &PeerBook) -> String {
    let (missing, acked) = (book.list(&d.missing), book.list(&d.acked));
    match (d.missing.is_empty(), d.acked.is_empty()) {
        (true, true) => "no subscriber acknowledged".to_string(),
        (true, false) => format!("acknowledged by {acked}"),
        (false, true) => format!("missing {missing}"),
        (false, false) => format!("missing {missing} (acknowledged by {acked})"),
    }
}
