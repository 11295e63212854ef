//! `nomq bridge`: a NoMQ node that is also an MQTT 5 client of a broker (docs/BRIDGE.md).

use crate::common::{Failure, NodeArgs, load_keys};
use nomq_host::NodeBuilder;
use nomq_host::bridge::{self, BridgeConfig, BridgeError, BridgeSpec, Counters, Mapping, TlsSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `nomq bridge`. Precedence: flags > `--bridge-config` file > defaults.
#[derive(clap::Args, Debug)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// A mapping (repeatable): `NOMQ=MQTT[:out|in|both[:QOS]]`, e.g.
    /// 'factory/#=site-a/factory/#:both:1'. Both sides must have the same wildcard levels
    /// after their literal prefix. Direction defaults to both, QoS (the most carried) to 1
    #[arg(long = "map", value_name = "MAPPING", value_parser = Mapping::parse)]
    pub maps: Vec<Mapping>,
    /// Bridge configuration file (JSON: broker, group, mappings, ...; see docs/BRIDGE.md)
    #[arg(long, value_name = "FILE")]
    pub bridge_config: Option<PathBuf>,
    /// The MQTT broker, HOST:PORT [default: 127.0.0.1:1883, or the file's]
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: Option<String>,
    /// MQTT client id (stable, so the broker keeps the session) [default: nomq-bridge-GROUP]
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// MQTT user name
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,
    /// MQTT password [default: $NOMQ_MQTT_PASSWORD]
    #[arg(long, value_name = "PASSWORD")]
    pub password: Option<String>,
    /// Connect with TLS, trusting the system's CA certificates (or --ca)
    #[arg(long)]
    pub tls: bool,
    /// Connect with TLS, trusting the CA certificates of this PEM file
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for TLS client authentication (with --key)
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM)
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The group of bridges serving this NoMQ network: origin marker, shared
    /// subscription group, default client id. One per site [default: nomq]
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Subscribe through MQTT 5 shared subscriptions ($share/GROUP/...), for several
    /// bridges of one group
    #[arg(long)]
    pub shared: bool,
    /// Seconds an MQTT -> NoMQ message waits for every NoMQ subscriber's acknowledgement
    /// before the broker is acknowledged anyway (and the message counted undelivered)
    #[arg(long, value_name = "SECONDS")]
    pub ack_deadline_s: Option<u64>,
    /// Most messages in flight each way (the bounded buffers between the sides)
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Print the mapping and the session settings, then exit
    #[arg(long)]
    pub dry_run: bool,
    /// Print the counters to stderr each second (when they change)
    #[arg(short, long)]
    pub verbose: bool,
}

/// Builds the configuration: defaults, then the file, then the flags.
fn config(a: &BridgeArgs) -> Result<BridgeConfig, Failure> {
    let mut spec = match &a.bridge_config {
        Some(f) => BridgeConfig::load_spec(f).map_err(|e| Failure::usage(e.to_string()))?,
        None => BridgeSpec::default(),
    };
    if let Some(b) = &a.broker {
        let (host, port) = b
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
            .ok_or_else(|| Failure::usage(format!("--broker {b}: write HOST:PORT")))?;
        spec.broker.host = host;
        spec.broker.port = port;
    }
    if a.client_id.is_some() {
        spec.broker.client_id.clone_from(&a.client_id);
    }
    if a.username.is_some() {
        spec.broker.username.clone_from(&a.username);
    }
    if let Some(p) = a.password.clone().or_else(|| std::env::var("NOMQ_MQTT_PASSWORD").ok()) {
        spec.broker.password = Some(p);
    }
    if a.tls || a.ca.is_some() || a.cert.is_some() || a.key.is_some() {
        let t = spec.broker.tls.get_or_insert_with(TlsSpec::default);
        if a.ca.is_some() {
            t.ca.clone_from(&a.ca);
        }
        if a.cert.is_some() || a.key.is_some() {
            t.cert.clone_from(&a.cert);
            t.key.clone_from(&a.key);
        }
    }
    if let Some(g) = &a.group {
        spec.group.clone_from(g);
    }
    spec.shared |= a.shared;
    if let Some(d) = a.ack_deadline_s {
        spec.ack_deadline_s = d;
    }
    if let Some(n) = a.max_in_flight {
        spec.max_in_flight = n;
    }
    BridgeConfig::new(spec, a.maps.clone()).map_err(|e| Failure::usage(e.to_string()))
}

pub async fn run(a: BridgeArgs) -> Result<(), Failure> {
    let cfg = config(&a)?;
    if a.dry_run {
        print!("{}", cfg.describe());
        return Ok(());
    }
    // The TLS files are read now, so that a bad one is a usage error before anything runs.
    bridge::mqtt_options(&cfg).map_err(|e| Failure::usage(e.to_string()))?;
    let host = a.node.host_config()?;
    let keys = load_keys(&host)?;
    let node = NodeBuilder::new(keys)
        .config(host)
        // A small window: when the broker is slow, NoMQ publishers feel it at once.
        .stream_depth(cfg.spec.max_in_flight)
        .start()
        .await
        .map_err(Failure::from)?;
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(bridge::run(cfg, node.clone(), counters.clone(), stop_rx));
    let mut task = std::pin::pin!(task);
    let (mut int, mut term) = signals()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = String::new();
    let result = loop {
        tokio::select! {
            _ = int.recv() => break None,
            _ = term.recv() => break None,
            r = &mut task => break Some(r),
            _ = tick.tick(), if a.verbose => {
                let line = counters.line();
                if line != last {
                    eprintln!("bridge: {line}");
                    last = line;
                }
            }
        }
    };
    let result = match result {
        Some(r) => r,
        None => {
            let _ = stop_tx.send(true);
            task.await
        }
    };
    node.shutdown().await;
    eprintln!("bridge: {}", counters.line());
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(BridgeError::Refused(m))) => Err(Failure::network(m)),
        Ok(Err(e)) => Err(Failure::network(e.to_string())),
        Err(e) => Err(Failure::network(format!("bridge task failed: {e}"))),
    }
}

fn signals() -> Result<(tokio::signal::unix::Signal, tokio::signal::unix::Signal), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |k: SignalKind| {
        signal(k).map_err(|e| Failure::network(format!("cannot handle signals: {e}")))
    };
    Ok((listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?))
}
