//! `nomq pub`: publish one message and, for QoS 1/2, wait for its outcome.

use crate::common::{self, Failure, NodeArgs, PeerBook};
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
    /// Seconds the message lives; retransmissions stop at its end.
    #[arg(long, value_name = "S", default_value_t = 10,
          value_parser = value_parser!(u16).range(1..))]
    ttl: u16,
    /// 0 (lowest) to 15 (highest).
    #[arg(long, value_name = "P", default_value_t = 0,
          value_parser = value_parser!(u8).range(0..=15))]
    priority: u8,
    /// Send to this one peer instead of the fan-out.
    #[arg(long, value_name = "ADDR", value_parser = common::addr_arg)]
    to: Option<SocketAddr>,
    /// QoS 1/2: wait up to this long to hear from a peer (and learn its subscriptions)
    /// before publishing.
    #[arg(long, value_name = "N", default_value_t = 1500)]
    wait_ms: u64,
    /// Keep running this long after the outcome (serves a retained value to subscribers
    /// that join meanwhile).
    #[arg(long, value_name = "S", default_value_t = 0)]
    linger_s: u64,
    #[command(flatten)]
    node: NodeArgs,
}

pub async fn run(a: PubArgs) -> Result<(), Failure> {
    let cfg = a.node.host_config()?;
    check(&a.channel, a.message.len(), cfg.engine.max_payload)?;
    let keys = common::load_keys(&cfg)?;
    let (events, mut events_rx) = mpsc::channel(256);
    let node = common::start(&cfg, keys, Some(events)).await?;
    // Checked by clap: 0..=2.
    let qos = Qos::from_level(a.qos).unwrap_or_default();
    let opts = PublishOptions {
        qos,
        retain: a.retain,
        ttl: Some(a.ttl),
        priority: a.priority,
        destination: a.to.map_or(Destination::All, |t| Destination::Peer(t.into())),
    };
    let heard = if qos != Qos::AtMostOnce && common::has_fanout(&cfg) {
        wait_for_peer(&node, Duration::from_millis(a.wait_ms)).await
    } else {
        false
    };
    let result = node.publish(&a.channel, a.message.into_bytes(), opts).await;
    let mut book = PeerBook::default();
    book.drain(&mut events_rx);
    let hint = common::auth_hint(&node).await;
    if a.linger_s > 0 && result.is_ok() {
        tokio::time::sleep(Duration::from_secs(a.linger_s)).await;
    }
    node.shutdown().await;
    let d = result?;
    report(&a.channel, a.to, a.ttl, heard, &d, &book, hint)
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
    let end = Instant::now() + limit;
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
    hint: Option<String>,
) -> Result<(), Failure> {
    let hint = hint.map_or(String::new(), |h| format!("; {h}"));
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
                "not delivered: no subscriber of {channel:?} acknowledged: {why}{hint}"
            )))
        }
        Status::Unacknowledged => Err(Failure::undelivered(format!(
            "not confirmed: retransmissions exhausted; {}{hint}",
            who(d, book)
        ))),
        Status::Expired => Err(Failure::undelivered(format!(
            "not confirmed: the TTL of {ttl} s ran out (raise it with --ttl); {}{hint}",
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
