//! `nomq sub`: print the messages of channel patterns as they arrive.

use crate::common::{self, Failure, NodeArgs};
use clap::value_parser;
use futures_core::Stream;
use nomq::{ChannelName, Pattern};
use nomq_host::{Handle, Message, Subscription};
use std::io::Write;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SubArgs {
    /// Channel pattern to subscribe to: `+` matches one level, `#` the rest (repeatable).
    #[arg(short = 'c', long = "channel", value_name = "PATTERN", required = true)]
    patterns: Vec<String>,
    /// Print one JSON object per message: channel, body, encoding ("utf8" or "hex"),
    /// from, session, qos, retained, dup.
    #[arg(long)]
    json: bool,
    /// Exit 0 after this many messages.
    #[arg(short = 'C', long, value_name = "N", value_parser = value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Exit 1 if fewer than --count messages (or none, without --count) arrived by then.
    #[arg(short = 'W', long = "timeout-s", value_name = "S")]
    timeout_s: Option<u64>,
    #[command(flatten)]
    node: NodeArgs,
}

/// After the last message wanted, keep the node running until it has been quiet this
/// long (so the QoS 1/2 acknowledgements finish), but no longer than `LINGER_MAX`.
const LINGER_QUIET: Duration = Duration::from_millis(300);
const LINGER_MAX: Duration = Duration::from_secs(2);

pub async fn run(a: SubArgs) -> Result<(), Failure> {
    let mut patterns: Vec<String> = Vec::new();
    for p in &a.patterns {
        Pattern::new(p)
            .map_err(|e| Failure::usage(format!("invalid channel pattern {p:?}: {e}")))?;
        if !patterns.contains(p) {
            patterns.push(p.clone());
        }
    }
    let cfg = a.node.host_config()?;
    let keys = common::load_keys(&cfg)?;
    let node = common::start(&cfg, keys, None).await?;
    let mut subs = Vec::with_capacity(patterns.len());
    for p in &patterns {
        match node.subscribe(p).await {
            Ok(s) => subs.push(s),
            Err(e) => {
                node.shutdown().await;
                return Err(e.into());
            }
        }
    }
    let result = receive(&a, &node, &mut subs).await;
    if result.is_ok() {
        linger(&node).await;
    }
    drop(subs);
    node.shutdown().await;
    result
}

async fn receive(a: &SubArgs, node: &Handle, subs: &mut [Subscription]) -> Result<(), Failure> {
    let deadline = a.timeout_s.map(|s| Instant::now() + Duration::from_secs(s));
    let mut printed = 0u64;
    let mut warned_auth = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut stdout = std::io::stdout().lock();
    loop {
        if a.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = next(subs) => {
                let Some((i, m)) = m else {
                    return Err(Failure::network("the node stopped unexpectedly"));
                };
                if matched_earlier(subs, i, &m.channel) {
                    continue;
                }
                let line = if a.json { json_line(&m) } else { text_line(&m) };
                match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
                    Ok(()) => printed += 1,
                    // The reader went away (`| head -1`): a normal end.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(Failure::network(format!("cannot write to stdout: {e}"))),
                }
            }
            _ = tick.tick(), if !warned_auth => {
                if let Some(h) = common::auth_hint(node).await {
                    eprintln!("warning: {h}");
                    warned_auth = true;
                }
            }
            () = timeout => return timed_out(a, node, printed).await,
        }
    }
}

async fn timed_out(a: &SubArgs, node: &Handle, printed: u64) -> Result<(), Failure> {
    let s = a.timeout_s.unwrap_or_default();
    let got = match a.count {
        Some(n) => format!("received {printed} of {n} messages"),
        None if printed > 0 => return Ok(()),
        None => "no message arrived".to_string(),
    };
    let stats = node.stats().await.ok();
    let why = match (common::auth_hint(node).await, stats) {
        (Some(h), _) => format!("; {h}"),
        (None, Some(st)) if st.engine.rx_datagrams == 0 => {
            "; no datagram arrived at all (check --peer/--bind on both sides)".to_string()
        }
        _ => String::new(),
    };
    Err(Failure::undelivered(format!("timed out after {s} s: {got}{why}")))
}

/// The next message of any subscription, with its index; `None` once the node stopped.
async fn next(subs: &mut [Subscription]) -> Option<(usize, Message)> {
    if subs.is_empty() {
        return None;
    }
    let mut start = 0;
    std::future::poll_fn(|cx| {
        let n = subs.len();
        for k in 0..n {
            let i = (start + k) % n;
            match Pin::new(&mut subs[i]).poll_next(cx) {
                Poll::Ready(Some(m)) => {
                    start = (i + 1) % n;
                    return Poll::Ready(Some((i, m)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Every subscription whose pattern matches receives the message: print it once, from
/// the first.
fn matched_earlier(subs: &[Subscription], i: usize, channel: &str) -> bool {
    let Ok(name) = ChannelName::new(channel) else { return false };
    subs[..i].iter().any(|s| Pattern::new(s.pattern()).is_ok_and(|p| p.matches(name)))
}

/// The body as text if it is UTF-8, else hex.
fn body(m: &Message) -> (String, &'static str) {
    match std::str::from_utf8(&m.body) {
        Ok(s) => (s.to_string(), "utf8"),
        Err(_) => (common::hex(&m.body), "hex"),
    }
}

fn text_line(m: &Message) -> String {
    format!("{} {}", m.channel, body(m).0)
}

fn json_line(m: &Message) -> String {
    let (body, encoding) = body(m);
    serde_json::json!({
        "channel": m.channel,
        "body": body,
        "encoding": encoding,
        "from": m.from.to_string(),
        "session": m.session.to_string(),
        "qos": m.qos.level(),
        "retained": m.retained,
        "dup": m.dup,
    })
    .to_string()
}

/// Keeps the node up until it has been quiet for a moment, so the acknowledgements of
/// what was printed (PUBACK, PUBREC/PUBCOMP) go out and the publisher can finish.
async fn linger(node: &Handle) {
    let end = Instant::now() + LINGER_MAX;
    let mut last = node.stats().await.map_or(0, |s| s.engine.rx_datagrams);
    let mut quiet_since = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(s) = node.stats().await else { return };
        if s.engine.rx_datagrams != last {
            last = s.engine.rx_datagrams;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= LINGER_QUIET {
            return;
        }
    }
}
