//! `nomq sub`: print the messages of channel patterns as they arrive.

use crate::common::{self, Failure, NodeArgs, Refusals};
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
    #[arg(
        short = 'c',
        long = "channel",
        value_name = "PATTERN",
        required = true,
        visible_short_alias = 't',
        visible_alias = "topic"
    )]
    patterns: Vec<String>,
    /// Print `channel body` per message instead of the body alone (as mosquitto_sub -v).
    #[arg(short = 'v', long, conflicts_with_all = ["json", "format"])]
    verbose: bool,
    /// Print each message by this format instead (as mosquitto_sub -F): %t channel, %p
    /// body (raw bytes), %x body in hex, %l body length, %q QoS, %r retained (0/1), %d dup
    /// (0/1), %i message id (SESSION:PACKET_ID), %s sender session, %a sender IP:PORT, %U receipt Unix time
    /// (seconds, fractional), %j
    /// the JSON line of --json, %% a %; \n newline, \t tab, \\ backslash.
    #[arg(short = 'F', long, value_name = "FORMAT", conflicts_with = "json")]
    format: Option<String>,
    /// No newline after each message (as mosquitto_sub -N).
    #[arg(short = 'N', long)]
    no_newline: bool,
    /// Print one JSON object per line: channel, body, encoding ("utf8" or "hex"), from
    /// (the sender's IP:PORT), session (the sender's), id {session, packet_id} (the
    /// message id, the same in every repeat of a QoS 1 message: de-duplicate on it), qos,
    /// retained, dup (a retransmission), and received (Unix time in seconds as a float,
    /// e.g. 1764627000.123, taken as the message is printed, right after it arrived).
    #[arg(long)]
    json: bool,
    /// Exit 0 after this many messages.
    #[arg(short = 'C', long, value_name = "N", value_parser = value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Exit 1 if fewer than --count messages (or none, without --count) arrived within
    /// this many seconds, 0.001..=31536000 (a year), fractional allowed (e.g. 2.5).
    #[arg(short = 'W', long = "timeout-s", value_name = "S",
          value_parser = common::seconds_arg(0.001, 31_536_000.0), allow_negative_numbers = true)]
    timeout_s: Option<Duration>,
    /// Keep this node's QoS 2 state in FILE, so that no QoS 2 message is printed twice,
    /// even across a crash (`kill -9`, power loss) and restart with the same FILE: the
    /// state is saved (FILE.tmp, fsync, rename) before a message is printed and before
    /// its publisher is told it arrived, and the restarted node announces that it
    /// replaces the old one, so publishers finish what was in flight with it. Not
    /// covered: a message saved but not yet printed when the process died (a window from
    /// one fsync to the next write to stdout) is never printed, as its publisher was told
    /// it arrived. Exactly-once end to end needs the application's effect saved in the
    /// same atomic write as the state (see the nomq StateStore docs). One process per
    /// FILE [default: none: a restarted subscriber may print a QoS 2 message again]
    #[arg(long, value_name = "FILE", env = "NOMQ_STATE")]
    state: Option<std::path::PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

/// After the last message wanted, keep the node running until it has been quiet this
/// long (so the QoS 1/2 acknowledgements finish), but no longer than `LINGER_MAX`.
const LINGER_QUIET: Duration = Duration::from_millis(300);
const LINGER_MAX: Duration = Duration::from_secs(2);

pub async fn run(a: SubArgs) -> Result<(), Failure> {
    // First, so that a signal from now on ends the command cleanly.
    let mut signals = Signals::new()?;
    let mut patterns: Vec<String> = Vec::new();
    for p in &a.patterns {
        Pattern::new(p)
            .map_err(|e| Failure::usage(format!("invalid channel pattern {p:?}: {e}")))?;
        if !patterns.contains(p) {
            patterns.push(p.clone());
        }
    }
    let format = Format::from_args(&a)?;
    let cfg = a.node.host_config()?;
    let keys = common::load_keys(&cfg)?;
    let node = common::start(&cfg, keys, None, a.state.as_deref()).await?;
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
    let mut refusals = Refusals::new(&cfg);
    let result = receive(&a, &format, &node, &mut subs, &mut refusals, &mut signals).await;
    if result.is_ok() {
        linger(&node).await;
    }
    // Dropping the subscriptions queues their UNSUBSCRIBEs; shutting down sends what is
    // queued before the driver stops, so peers stop sending to us at once (also when a
    // signal ended the command).
    drop(subs);
    node.shutdown().await;
    result
}

/// SIGINT and SIGTERM, as the exit codes they map to (128 + the signal number).
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

/// Exit code after SIGINT (Ctrl-C).
const EXIT_SIGINT: u8 = 130;
/// Exit code after SIGTERM.
#[cfg(unix)]
const EXIT_SIGTERM: u8 = 143;

impl Signals {
    #[cfg(unix)]
    fn new() -> Result<Self, Failure> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |k: SignalKind| {
            signal(k).map_err(|e| Failure::network(format!("cannot handle signals: {e}")))
        };
        Ok(Self { int: listen(SignalKind::interrupt())?, term: listen(SignalKind::terminate())? })
    }
    #[cfg(not(unix))]
    fn new() -> Result<Self, Failure> {
        Ok(Self {})
    }

    /// Waits for a signal; returns the exit code it maps to.
    #[cfg(unix)]
    async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.int.recv() => EXIT_SIGINT,
            _ = self.term.recv() => EXIT_SIGTERM,
        }
    }
    #[cfg(not(unix))]
    async fn recv(&mut self) -> u8 {
        match tokio::signal::ctrl_c().await {
            Ok(()) => EXIT_SIGINT,
            Err(_) => std::future::pending().await,
        }
    }
}

async fn receive(
    a: &SubArgs,
    format: &Format,
    node: &Handle,
    subs: &mut [Subscription],
    refusals: &mut Refusals,
    signals: &mut Signals,
) -> Result<(), Failure> {
    // `None` past the end of time (not within -W's range): no deadline.
    let deadline = a.timeout_s.and_then(|d| Instant::now().checked_add(d));
    let mut printed = 0u64;
    let verbose = a.node.refusals;
    let mut warned_auth = false;
    // One summary line per second at most: the rate limit of --refusals.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                let mut out = Vec::with_capacity(m.body.len() + m.channel.len() + 2);
                format.render(&m, &mut out);
                if !a.no_newline {
                    out.push(b'\n');
                }
                match stdout.write_all(&out).and_then(|()| stdout.flush()) {
                    Ok(()) => printed += 1,
                    // The reader went away (`| head -1`): a normal end.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(Failure::network(format!("cannot write to stdout: {e}"))),
                }
            }
            _ = tick.tick(), if verbose || !warned_auth => {
                if verbose {
                    refusals.report_changes(node).await;
                } else if let Some(h) = refusals.auth_warning(node).await {
                    eprintln!("warning: {h}");
                    warned_auth = true;
                }
            }
            code = signals.recv() => return Err(Failure::signalled(code)),
            () = timeout => return timed_out(a, node, printed, refusals).await,
        }
    }
}

async fn timed_out(
    a: &SubArgs,
    node: &Handle,
    printed: u64,
    refusals: &Refusals,
) -> Result<(), Failure> {
    let s = common::fmt_duration(a.timeout_s.unwrap_or_default());
    let got = match a.count {
        Some(n) => format!("received {printed} of {n} messages"),
        None if printed > 0 => return Ok(()),
        None => "no message arrived".to_string(),
    };
    let refused = refusals.print_totals(node).await;
    let stats = node.stats().await.ok();
    let why = match stats {
        _ if refused => "; datagrams were refused (reasons above)".to_string(),
        Some(st) if st.engine.rx_datagrams == 0 => {
            "; no datagram arrived at all (check --peer/--bind on both sides)".to_string()
        }
        _ => String::new(),
    };
    Err(Failure::undelivered(format!("timed out after {s}: {got}{why}")))
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
        Err(_) => (hex::encode(&m.body), "hex"),
    }
}

/// One piece of a `-F` format.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(Vec<u8>),
    Channel,
    Body,
    BodyHex,
    BodyLen,
    Qos,
    Retained,
    Dup,
    Id,
    Session,
    From,
    Received,
    Json,
}

/// How each message is printed: the pieces of `-F`, or those of the body-only, `-v` and
/// `--json` modes.
#[derive(Debug)]
pub struct Format(Vec<Piece>);

impl Format {
    fn from_args(a: &SubArgs) -> Result<Self, Failure> {
        if let Some(f) = &a.format {
            return Self::parse(f).map_err(|e| Failure::usage(format!("-F/--format {f:?}: {e}")));
        }
        Ok(Self(if a.json {
            vec![Piece::Json]
        } else if a.verbose {
            vec![Piece::Channel, Piece::Text(b" ".to_vec()), Piece::Body]
        } else {
            vec![Piece::Body]
        }))
    }

    /// Parses a `-F` format; an unknown `%x` or a trailing `%` is refused.
    fn parse(f: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        let mut chars = f.chars();
        while let Some(c) = chars.next() {
            let piece = match c {
                '%' => match chars.next() {
                    Some('%') => None,
                    Some('t') => Some(Piece::Channel),
                    Some('p') => Some(Piece::Body),
                    Some('x') => Some(Piece::BodyHex),
                    Some('l') => Some(Piece::BodyLen),
                    Some('q') => Some(Piece::Qos),
                    Some('r') => Some(Piece::Retained),
                    Some('d') => Some(Piece::Dup),
                    Some('i') => Some(Piece::Id),
                    Some('s') => Some(Piece::Session),
                    Some('a') => Some(Piece::From),
                    Some('U') => Some(Piece::Received),
                    Some('j') => Some(Piece::Json),
                    Some(o) => return Err(format!("unknown field %{o} (see --help)")),
                    None => return Err("a lone % at the end (write %% for a %)".into()),
                },
                '\\' => match chars.next() {
                    Some('n') => {
                        text.push(b'\n');
                        continue;
                    }
                    Some('t') => {
                        text.push(b'\t');
                        continue;
                    }
                    Some('\\') | None => None,
                    Some(o) => return Err(format!("unknown escape \\{o} (\\n, \\t, \\\\)")),
                },
                _ => None,
            };
            match piece {
                Some(p) => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(p);
                }
                // `%%`, `\\`, or plain text: the character itself.
                None => {
                    let mut buf = [0; 4];
                    text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Self(pieces))
    }

    /// Appends the message as this format prints it (no newline).
    fn render(&self, m: &Message, out: &mut Vec<u8>) {
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.extend_from_slice(t),
                Piece::Channel => out.extend_from_slice(m.channel.as_bytes()),
                Piece::Body => out.extend_from_slice(&m.body),
                Piece::BodyHex => out.extend_from_slice(hex::encode(&m.body).as_bytes()),
                Piece::BodyLen => out.extend_from_slice(m.body.len().to_string().as_bytes()),
                Piece::Qos => out.extend_from_slice(m.qos.level().to_string().as_bytes()),
                Piece::Retained => out.push(if m.retained { b'1' } else { b'0' }),
                Piece::Dup => out.push(if m.dup { b'1' } else { b'0' }),
                Piece::Id => out.extend_from_slice(
                    format!("{}:{}", m.msg.session, m.msg.packet_id.0).as_bytes(),
                ),
                Piece::Session => out.extend_from_slice(m.session.to_string().as_bytes()),
                Piece::From => out.extend_from_slice(m.from.to_string().as_bytes()),
                Piece::Received => out.extend_from_slice(format!("{:.6}", unix_now()).as_bytes()),
                Piece::Json => out.extend_from_slice(json_line(m).as_bytes()),
            }
        }
    }
}

/// Seconds since the Unix epoch (0 on a clock before it).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn json_line(m: &Message) -> String {
    let (body, encoding) = body(m);
    let received = unix_now();
    serde_json::json!({
        "channel": m.channel,
        "body": body,
        "encoding": encoding,
        "from": m.from.to_string(),
        "session": m.session.to_string(),
        "id": { "session": m.msg.session.to_string(), "packet_id": m.msg.packet_id.0 },
        "qos": m.qos.level(),
        "retained": m.retained,
        "dup": m.dup,
        "received": received,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_fields_escapes_and_refuse_unknowns() {
        let f = Format::parse("%t=%p%%\\n\\\\x\\").unwrap();
        assert_eq!(
            f.0,
            [
                Piece::Channel,
                Piece::Text(b"=".to_vec()),
                Piece::Body,
                Piece::Text(b"%\n\\x\\".to_vec())
            ]
        );
        assert!(Format::parse("%U %j").is_ok());
        assert!(Format::parse("%z").unwrap_err().contains("%z"));
        assert!(Format::parse("abc%").unwrap_err().contains("lone %"));
        assert!(Format::parse("\\q").unwrap_err().contains("\\q"));
        assert_eq!(Format::parse("").unwrap().0, []);
    }
}
