//! `nomq pub`: publish one message and, for QoS 1/2, wait for its outcome.

use crate::common::{self, Failure, NodeArgs, PeerBook, Refusals};
use clap::value_parser;
use nomq::ChannelName;
use nomq_host::{Delivery, Destination, Handle, PublishOptions, Qos, Status};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(clap::Args, Debug)]
pub struct PubArgs {
    /// Channel to publish to (levels separated by `/`, no wildcards).
    #[arg(short = 'c', long = "channel", value_name = "CHANNEL")]
    channel: String,
    /// Message body, sent as the UTF-8 bytes given.
    #[arg(short = 'm', long = "message", value_name = "MESSAGE")]
    message: String,
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
    to: Option<SocketAddr>,
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

pub async fn run(a: PubArgs) -> Result<(), Failure> {
    let cfg = a.node.host_config()?;
    check(&a.channel, a.message.len(), cfg.engine.max_payload)?;
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
    let node = common::start(&cfg, keys, Some(events)).await?;
    let mut refusals = Refusals::new(&cfg);
    let verbose = a.node.verbose;
    // Checked by clap: 0..=2.
    let qos = Qos::from_level(a.qos).unwrap_or_default();
    let opts = PublishOptions {
        qos,
        retain: a.retain,
        ttl: Some(a.ttl),
        priority,
        destination: a.to.map_or(Destination::All, |t| Destination::Peer(t.into())),
    };
    let heard = if qos != Qos::AtMostOnce && common::has_fanout(&cfg) {
        let wait = wait_for_peer(&node, Duration::from_millis(a.wait_ms));
        summarised(wait, &node, &mut refusals, verbose).await
    } else {
        false
    };
    let publish = node.publish(&a.channel, a.message.into_bytes(), opts);
    let result = summarised(publish, &node, &mut refusals, verbose).await;
    let mut book = PeerBook::default();
    book.drain(&mut events_rx);
    let mut late = Vec::new();
    if !a.linger_s.is_zero() && result.is_ok() {
        let linger = linger(a.linger_s, &mut events_rx, &mut book, &mut late);
        summarised(linger, &node, &mut refusals, verbose).await;
    }
    let outcome = match result {
        Ok(d) => report_with_late(&a.channel, a.to, a.ttl, heard, &d, &book, &late),
        Err(e) => Err(Failure::from(e)),
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
    channel: &str,
    to: Option<SocketAddr>,
    ttl: u16,
    heard: bool,
    d: &Delivery,
    book: &PeerBook,
    late: &[nomq::SessionId],
) -> Result<(), Failure> {
    let mut late: Vec<_> = late.iter().copied().filter(|s| !d.acked.contains(s)).collect();
    late.sort_unstable_by_key(|s| s.0);
    late.dedup();
    let r = report(channel, to, ttl, heard, d, book);
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

/// Runs `f`; with `--verbose`, reports refusal counts once a second meanwhile.
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

/// Refuses a bad channel or an oversized message before any socket is bound.
fn check(channel: &str, body_len: usize, max_payload: usize) -> Result<(), Failure> {
    ChannelName::new(channel)
        .map_err(|e| Failure::usage(format!("invalid channel name {channel:?}: {e}")))?;
    let max = nomq::envelope::max_plaintext(max_payload)
        .saturating_sub(nomq::body::PUBLISH_PREFIX_LEN)
        .saturating_sub(channel.len());
    if body_len > max {
        return Err(Failure::usage(format!(
            "message too large: {body_len} bytes; on channel {channel:?} one packet holds at most \
             {max} bytes of body (split it, or publish a reference to it)"
        )));
    }
    Ok(())
}

/// Waits until the node has received a datagram (a peer's heartbeat announces its
/// subscriptions), at most `limit`.
async fn wait_for_peer(node: &Handle, limit: Duration) -> bool {
    // Past the end of time (not with --wait-ms ≤ 600000) means: wait no longer.
    let end = Instant::now().checked_add(limit).unwrap_or_else(Instant::now);
    loop {
        if node.stats().await.is_ok_and(|s| s.engine.rx_datagrams > 0) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn report(
    channel: &str,
    to: Option<SocketAddr>,
    ttl: u16,
    heard: bool,
    d: &Delivery,
    book: &PeerBook,
) -> Result<(), Failure> {
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
