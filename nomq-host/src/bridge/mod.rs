//! A bridge between a NoMQ network and an MQTT broker (or broker cluster): an ordinary
//! NoMQ node that is also an ordinary MQTT 5 client. See docs/BRIDGE.md.
//!
//! # Guarantees
//! - NoMQ → MQTT at QoS 1/2: the bridge subscribes with [`Handle::subscribe_acked`], so
//!   the NoMQ publisher's PUBACK/PUBREC leaves only after the broker's PUBACK/PUBCOMP.
//!   While the broker is unreachable nothing is taken from NoMQ: publishers retransmit,
//!   and finally report the bridge as missing.
//! - MQTT → NoMQ at QoS 1/2: manual acknowledgements; the bridge acknowledges the broker
//!   once the NoMQ publish ended (every known subscriber acknowledged), or at the
//!   configured deadline, counting what NoMQ did not deliver.
//! - No loops: MQTT 5 No Local (or, with shared subscriptions, which may not use it, an
//!   origin user property), and a bridge never carries up a message another bridge
//!   published into NoMQ (bridges know each other by the reserved channel
//!   [`BRIDGE_CHANNEL`]).
//!
//! The MQTT client is rumqttc: maintained, async on tokio (which the host adapter runs
//! on already), MQTT 5 with manual acknowledgements, session expiry, No Local and user
//! properties, and rustls for TLS (here with the *ring* provider, which builds with a C
//! compiler only: no cmake, no nasm).

pub mod mapping;
mod uplink;

pub use mapping::{Direction, Mapping, MappingSpec};

use crate::{Ack, Handle, HostError, Message, PublishOptions, Qos, SessionId, Status};
use rumqttc::v5::mqttbytes::QoS as MqttQos;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Filter, Packet, PubAckReason, PubCompReason, PubRecReason, Publish,
    PublishProperties, RetainForwardRule,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The reserved channel every bridge subscribes to, so that other nodes (other bridges)
/// know its session is a bridge's (docs/PROTOCOL.md, "Reserved channels").
pub const BRIDGE_CHANNEL: &str = "nomq/bridge";
/// A name no bridge subscribes to: a node whose subscriptions match it as well as
/// [`BRIDGE_CHANNEL`] subscribes by a wildcard (`#`, `nomq/+`) and is not a bridge.
pub const BRIDGE_PROBE: &str = "nomq/bridge-probe";
/// The MQTT 5 user property a bridge puts on what it publishes, with its group as value:
/// a bridge of the same group never carries a message with it back into NoMQ.
pub const ORIGIN_PROPERTY: &str = "nomq-origin";

/// TLS settings of the broker connection.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// CA certificates (PEM) to trust; without, the system's roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for brokers that authenticate clients.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

/// The broker session.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSpec {
    /// Host name or address.
    pub host: String,
    /// Port (1883, or 8883 with TLS).
    pub port: u16,
    /// MQTT client id: stable, so the broker keeps the session (default `nomq-bridge-<group>`).
    pub client_id: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// TLS; `None` for plain TCP.
    pub tls: Option<TlsSpec>,
    /// Keep alive, seconds.
    pub keep_alive_s: u64,
    /// How long the broker keeps the session (and the QoS 1/2 messages for it) after
    /// the bridge disconnects, seconds.
    pub session_expiry_s: u32,
}

impl Default for BrokerSpec {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            tls: None,
            keep_alive_s: 30,
            session_expiry_s: 86_400,
        }
    }
}

/// A bridge configuration file (JSON; docs/BRIDGE.md has an example).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSpec {
    /// The broker.
    pub broker: BrokerSpec,
    /// The bridges serving one NoMQ network: the origin marker, the shared subscription
    /// group and the default client id. Give each site its own.
    pub group: String,
    /// Subscribe through MQTT 5 shared subscriptions (`$share/<group>/...`), so that of
    /// several bridges of one group each message reaches one.
    pub shared: bool,
    /// How long an MQTT → NoMQ message waits for NoMQ's outcome before the broker is
    /// acknowledged anyway, seconds.
    pub ack_deadline_s: u64,
    /// TTL in NoMQ of an MQTT message without a Message Expiry Interval, seconds.
    pub default_ttl_s: u16,
    /// Most messages on their way in each direction at once (QoS 1/2 awaiting the other
    /// side's acknowledgement): the bounded buffer between the two sides.
    pub max_in_flight: usize,
    /// The mappings.
    pub mappings: Vec<MappingSpec>,
}

impl Default for BridgeSpec {
    fn default() -> Self {
        Self {
            broker: BrokerSpec::default(),
            group: "nomq".into(),
            shared: false,
            ack_deadline_s: 10,
            default_ttl_s: 300,
            max_in_flight: 100,
            mappings: Vec::new(),
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// Everything but the mappings, as given.
    pub spec: BridgeSpec,
    /// The mappings, validated.
    pub mappings: Vec<Mapping>,
}

impl BridgeConfig {
    /// Validates `spec`; `extra` are mappings given on the command line (`--map`).
    ///
    /// # Errors
    /// [`HostError::Config`] naming the mapping or setting and why.
    pub fn new(spec: BridgeSpec, extra: Vec<Mapping>) -> Result<Self, HostError> {
        let mut mappings = Vec::new();
        for (i, m) in spec.mappings.iter().enumerate() {
            let v = Mapping::new(&m.nomq, &m.mqtt, m.direction, m.qos)
                .map_err(|e| HostError::config(format!("mappings[{i}]"), e))?;
            mappings.push(v);
        }
        mappings.extend(extra);
        if mappings.is_empty() {
            return Err(HostError::config("mappings", "no mapping: give --map or a config file"));
        }
        if spec.group.is_empty() || spec.group.contains(['/', '+', '#']) {
            return Err(HostError::config("group", "one MQTT level without '/', '+' or '#'"));
        }
        if spec.max_in_flight == 0 || spec.max_in_flight > 1000 {
            return Err(HostError::config("max_in_flight", "outside 1..=1000"));
        }
        if spec.ack_deadline_s == 0 || spec.default_ttl_s == 0 {
            return Err(HostError::config("ack_deadline_s/default_ttl_s", "must be at least 1"));
        }
        if spec.broker.tls.as_ref().is_some_and(|t| t.cert.is_some() != t.key.is_some()) {
            return Err(HostError::config(
                "tls",
                "a client certificate needs its key, and a key its certificate",
            ));
        }
        Ok(Self { spec, mappings })
    }

    /// Loads a configuration file.
    ///
    /// # Errors
    /// [`HostError::Config`] with the file and the JSON path of the bad field.
    pub fn load_spec(path: &std::path::Path) -> Result<BridgeSpec, HostError> {
        let field = format!("bridge config {}", path.display());
        let text =
            std::fs::read_to_string(path).map_err(|e| HostError::config(&field, e.to_string()))?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de)
            .map_err(|e| HostError::config(&field, format!("{}: {}", e.path(), e.inner())))
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> String {
        self.spec
            .broker
            .client_id
            .clone()
            .unwrap_or_else(|| format!("nomq-bridge-{}", self.spec.group))
    }

    /// The MQTT filter subscribed for an inbound mapping.
    pub fn mqtt_subscription(&self, m: &Mapping) -> String {
        if self.spec.shared {
            format!("$share/{}/{}", self.spec.group, m.mqtt)
        } else {
            m.mqtt.clone()
        }
    }

    /// What `--dry-run` prints: one line per mapping and the session settings.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let b = &self.spec.broker;
        out.push_str(&format!(
            "broker {}:{} ({}), client id {}, clean start false, session expiry {} s\n",
            b.host,
            b.port,
            if b.tls.is_some() { "TLS" } else { "TCP" },
            self.client_id(),
            b.session_expiry_s
        ));
        out.push_str(&format!(
            "group {}{}; ack deadline {} s; at most {} in flight each way\n",
            self.spec.group,
            if self.spec.shared { ", shared subscriptions" } else { "" },
            self.spec.ack_deadline_s,
            self.spec.max_in_flight
        ));
        for m in &self.mappings {
            let arrow = match m.direction {
                Direction::Out => "->",
                Direction::In => "<-",
                Direction::Both => "<->",
            };
            let sub = if m.direction.inward() {
                format!(" (MQTT subscription '{}')", self.mqtt_subscription(m))
            } else {
                String::new()
            };
            out.push_str(&format!(
                "nomq '{}' {arrow} mqtt '{}' {} qos<={}{sub}\n",
                m.nomq, m.mqtt, m.direction, m.qos
            ));
        }
        out
    }
}

/// The bridge's counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// NoMQ → MQTT: published to the broker (acknowledged by it, for QoS 1/2).
    pub forwarded_out: AtomicU64,
    /// MQTT → NoMQ: published into NoMQ and ended as the QoS asked.
    pub forwarded_in: AtomicU64,
    /// MQTT → NoMQ: acknowledged to the broker without every NoMQ subscriber having
    /// acknowledged (unacknowledged, expired, past the deadline, no room).
    pub undelivered_in: AtomicU64,
    /// MQTT → NoMQ: no NoMQ subscriber was known.
    pub no_subscribers_in: AtomicU64,
    /// Messages refused: topics without a channel name, broker refusals, full buffers.
    pub refused: AtomicU64,
    /// NoMQ messages another bridge published (from MQTT): not carried back up.
    pub loop_skipped: AtomicU64,
    /// MQTT messages this group published (echoes): not carried back in.
    pub echo_skipped: AtomicU64,
    /// NoMQ messages left to the bridge that owns the uplink.
    pub standby: AtomicU64,
    /// Broker connections lost (and re-established or being retried).
    pub reconnects: AtomicU64,
    /// QoS 1/2 NoMQ → MQTT messages waiting for the broker now.
    pub waiting_out: AtomicU64,
    /// MQTT → NoMQ messages waiting for NoMQ now.
    pub waiting_in: AtomicU64,
    /// Broker sessions of lost bridges of this group taken over (and drained).
    pub takeovers: AtomicU64,
    /// NoMQ → MQTT messages given back to NoMQ unacknowledged without a broker refusal:
    /// the broker session was lost, or the MQTT client lost track of them (their
    /// publishers retransmit; see docs/BRIDGE.md).
    pub given_back_out: AtomicU64,
}

impl Counters {
    /// One line, `name=value` pairs.
    pub fn line(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "forwarded_out={} forwarded_in={} undelivered_in={} no_subscribers_in={} refused={} loop_skipped={} echo_skipped={} standby={} reconnects={} waiting_out={} waiting_in={} takeovers={} given_back_out={}",
            g(&self.forwarded_out),
            g(&self.forwarded_in),
            g(&self.undelivered_in),
            g(&self.no_subscribers_in),
            g(&self.refused),
            g(&self.loop_skipped),
            g(&self.echo_skipped),
            g(&self.standby),
            g(&self.reconnects),
            g(&self.waiting_out),
            g(&self.waiting_in),
            g(&self.takeovers),
            g(&self.given_back_out),
        )
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

fn mqtt_qos(q: u8) -> MqttQos {
    match q {
        0 => MqttQos::AtMostOnce,
        1 => MqttQos::AtLeastOnce,
        _ => MqttQos::ExactlyOnce,
    }
}

fn qos_level(q: Qos) -> u8 {
    match q {
        Qos::AtMostOnce => 0,
        Qos::AtLeastOnce => 1,
        Qos::ExactlyOnce => 2,
    }
}

fn nomq_qos(q: u8) -> Qos {
    match q {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        _ => Qos::ExactlyOnce,
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, HostError> {
    std::fs::read(path).map_err(|e| HostError::config(what, format!("{}: {e}", path.display())))
}

/// The rustls client configuration (ring provider).
fn tls_config(t: &TlsSpec) -> Result<rustls::ClientConfig, HostError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca {
        Some(ca) => {
            let pem = read(ca, "ca")?;
            let mut n = 0;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| HostError::config("ca", format!("{}: {e}", ca.display())))?;
                roots
                    .add(c)
                    .map_err(|e| HostError::config("ca", format!("{}: {e}", ca.display())))?;
                n += 1;
            }
            if n == 0 {
                return Err(HostError::config(
                    "ca",
                    format!("{}: no PEM certificate", ca.display()),
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err(HostError::config("ca", "no system CA certificates found; give --ca"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HostError::config("tls", e.to_string()))?
        .with_root_certificates(roots);
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let pem = read(cert, "cert")?;
            let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
            let chain =
                chain.map_err(|e| HostError::config("cert", format!("{}: {e}", cert.display())))?;
            let key_pem = read(key, "key")?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| HostError::config("key", format!("{}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| HostError::config("cert", e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// The MQTT options of the broker session.
///
/// # Errors
/// [`HostError::Config`] for unreadable TLS files.
pub fn mqtt_options(cfg: &BridgeConfig) -> Result<MqttOptions, HostError> {
    let b = &cfg.spec.broker;
    let mut o = MqttOptions::new(cfg.client_id(), b.host.clone(), b.port);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(b.session_expiry_s));
    o.set_keep_alive(Duration::from_secs(b.keep_alive_s.max(5)));
    o.set_manual_acks(true);
    let window = u16::try_from(cfg.spec.max_in_flight).unwrap_or(u16::MAX);
    // The broker sends at most this many unacknowledged QoS 1/2 messages: the bound of
    // the MQTT → NoMQ direction.
    o.set_receive_maximum(Some(window));
    o.set_outgoing_inflight_upper_limit(window);
    o.set_connection_timeout(10);
    if let Some(u) = &b.username {
        o.set_credentials(u.clone(), b.password.clone().unwrap_or_default());
    }
    if let Some(t) = &b.tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls_config(t)?))));
    }
    Ok(o)
}

/// Reconnection delays: exponential from 100 ms to 30 s, with ±50 % jitter.
struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Self { next: Duration::from_millis(100), rng: u64::from_le_bytes(seed) | 1 }
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
    fn delay(&mut self) -> Duration {
        // xorshift64: jitter only, nothing secret.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        let frac = (self.rng % 1000) as f64 / 1000.0;
        base.mul_f64(0.5 + frac)
    }
}

/// Why the bridge stopped.
#[derive(Debug)]
pub enum BridgeError {
    /// The broker refused the connection for a reason retrying cannot fix (bad
    /// credentials, not authorized, TLS certificate not trusted).
    Refused(String),
    /// The NoMQ node stopped.
    Node(HostError),
}

impl std::fmt::Display for BridgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(m) => f.write_str(m),
            Self::Node(e) => write!(f, "NoMQ node: {e}"),
        }
    }
}

impl std::error::Error for BridgeError {}

/// Whether a connection error will not go away by retrying, and what to tell the user.
fn fatal(e: &ConnectionError, connected_once: bool) -> Option<String> {
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::Banned
            | ConnectReturnCode::BadAuthenticationMethod
            | ConnectReturnCode::ClientIdentifierNotValid => {
                Some(format!("the broker refused the connection: {code:?}"))
            }
            _ => None,
        },
        _ if !connected_once && is_tls_failure(e) => Some(format!(
            "TLS handshake with the broker failed: {e} (is --ca the CA that signed the broker's certificate, does that certificate name the host given, and does the broker require a client certificate, --cert/--key?)"
        )),
        _ => None,
    }
}

/// A TLS failure: a certificate not trusted or not given, a TLS alert. rustls errors
/// reach us wrapped in I/O errors (during the handshake, or at the first read when the
/// server refuses a TLS 1.3 client afterwards), so they are recognised by their text.
fn is_tls_failure(e: &ConnectionError) -> bool {
    if matches!(e, ConnectionError::Tls(_)) {
        return true;
    }
    let t = e.to_string().to_ascii_lowercase();
    t.contains("certificate") || t.contains("alert") || t.contains("handshake")
}

/// The channel pattern of the client-id announcements of `cfg`'s group,
/// `nomq/bridge/<group>/+`; `None` if the group is no valid channel level.
fn announce_pattern(cfg: &BridgeConfig) -> Option<String> {
    let p = format!("{BRIDGE_CHANNEL}/{}/+", cfg.spec.group);
    nomq::ChannelName::new(&format!("{BRIDGE_CHANNEL}/{}/00000000", cfg.spec.group))
        .is_ok()
        .then_some(p)
}

/// Resumes the broker session `cfg` names (a lost bridge's), carries what it holds into
/// NoMQ, leaves its shared subscriptions and ends it. Returns the messages carried.
async fn take_over(
    down: &Downlink,
    cfg: &BridgeConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<u64, String> {
    let opts = mqtt_options(cfg).map_err(|e| e.to_string())?;
    let (client, mut eventloop) = AsyncClient::new(opts, cfg.spec.max_in_flight * 2 + 64);
    let started = tokio::time::Instant::now();
    let mut last = started;
    let mut carried = 0;
    let mut tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // Quiet: UNSUBSCRIBE sent; left: its UNSUBACK came, so nothing more is routed here.
    let (mut leaving, mut left, mut disconnecting) = (false, false, false);
    let mut connected = false;
    let filters: Vec<String> = cfg
        .mappings
        .iter()
        .filter(|m| m.direction.inward())
        .map(|m| cfg.mqtt_subscription(m))
        .collect();
    loop {
        // One `poll` future until it completes (see `run`): the 100 ms tick must not drop
        // a connection being made.
        let poll = eventloop.poll();
        tokio::pin!(poll);
        let ev = loop {
            tokio::select! {
                _ = stop.changed() => return Ok(carried),
                ev = &mut poll => break ev,
                _ = tick.tick() => {
                    tasks.retain(|t| !t.is_finished());
                    let quiet = tasks.is_empty() && last.elapsed() >= TAKEOVER_QUIET;
                    if connected && !leaving && (quiet || started.elapsed() >= TAKEOVER_LIMIT) {
                        leaving = true;
                        for f in &filters {
                            let _ = client.try_unsubscribe(f.clone());
                        }
                        if filters.is_empty() {
                            left = true;
                        }
                    }
                    // Every message routed here before the UNSUBACK has ended in NoMQ (and
                    // its acknowledgement is queued before the DISCONNECT).
                    if left && tasks.is_empty() && !disconnecting {
                        disconnecting = true;
                        let _ = client.try_disconnect();
                    }
                    if started.elapsed() >= TAKEOVER_LIMIT + Duration::from_secs(30) {
                        return Err(format!("not drained in {TAKEOVER_LIMIT:?} ({carried} messages carried)"));
                    }
                }
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ca))) => {
                connected = true;
                // Quiet is counted from here: what the session holds comes first.
                last = tokio::time::Instant::now();
                if !ca.session_present {
                    // Expired, or ended by its owner: nothing waits there.
                    left = true;
                }
                tracing::info!(
                    session_present = ca.session_present,
                    "connected as the lost bridge"
                );
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                last = tokio::time::Instant::now();
                carried += 1;
                tasks.push(down.publish(&client, p));
            }
            Ok(Event::Incoming(Packet::UnsubAck(_))) => left = true,
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(carried),
            Ok(_) => {}
            // Not connected yet (the broker is down, say): try again, within the limit.
            Err(e) if !connected && started.elapsed() < TAKEOVER_LIMIT => {
                tracing::debug!(error = %e, "cannot connect as the lost bridge yet");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return Ok(carried),
                }
            }
            // Taken back (the bridge is alive after all), or the broker went away:
            // what was not acknowledged stays in the session, for its owner.
            Err(e) => return Err(format!("{e} ({carried} messages carried)")),
        }
    }
}

/// The running bridge's state (one task).
struct Bridge {
    cfg: BridgeConfig,
    node: Handle,
    client: AsyncClient,
    counters: Arc<Counters>,
    connected: bool,
    /// Publishes handed to the client until the broker's answer, with the NoMQ
    /// acknowledgement each holds back.
    up: uplink::Tracker<Option<Ack>>,
    /// Sessions of the other bridges of this NoMQ network.
    bridges: HashSet<SessionId>,
    own_session: Option<SessionId>,
    /// What MQTT → NoMQ needs, shared with session take-overs.
    down: Arc<Downlink>,
    /// The MQTT client ids the bridges of this group announced, by session.
    client_ids: HashMap<SessionId, String>,
    /// Client ids whose session is being taken over now.
    taking_over: Arc<std::sync::Mutex<HashSet<String>>>,
    stop: watch::Receiver<bool>,
}

/// The MQTT → NoMQ side: the configuration, the node, the counters and the bound on
/// messages on their way at once (shared by the bridge's own session and the sessions
/// it takes over).
struct Downlink {
    cfg: BridgeConfig,
    node: Handle,
    counters: Arc<Counters>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Quiet time after which a taken-over session is drained: no message arrived for it
/// this long and every one that did has ended in NoMQ.
const TAKEOVER_QUIET: Duration = Duration::from_secs(1);
/// Longest a session take-over lasts.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(120);

/// Runs the bridge until `stop` turns true: joins NoMQ through `node`, keeps a session
/// with the broker, and carries messages as the mappings say. Returns the counters.
///
/// # Errors
/// [`BridgeError::Refused`] when the broker refuses the bridge for good (credentials,
/// TLS trust); [`BridgeError::Node`] when the node fails.
pub async fn run(
    cfg: BridgeConfig,
    node: Handle,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BridgeError> {
    let opts = mqtt_options(&cfg).map_err(BridgeError::Node)?;
    // Room for a full window of publishes plus acknowledgements and subscriptions.
    let (client, mut eventloop) = AsyncClient::new(opts, cfg.spec.max_in_flight * 2 + 64);
    let marker = node.subscribe(BRIDGE_CHANNEL).await.map_err(BridgeError::Node)?;
    let (up_tx, mut up_rx) = mpsc::channel::<Message>(cfg.spec.max_in_flight);
    let mut subs = Vec::new();
    let patterns: Vec<String> = {
        let mut seen = Vec::new();
        for m in cfg.mappings.iter().filter(|m| m.direction.out()) {
            if !seen.contains(&m.nomq) {
                seen.push(m.nomq.clone());
            }
        }
        seen
    };
    for p in &patterns {
        let mut sub = node.subscribe_acked(p).await.map_err(BridgeError::Node)?;
        let tx = up_tx.clone();
        subs.push(tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(up_tx);
    let announcements = match announce_pattern(&cfg) {
        Some(p) => Some(node.subscribe(&p).await.map_err(BridgeError::Node)?),
        None => None,
    };
    let (ann_tx, mut ann_rx) = mpsc::channel::<Message>(16);
    let ann_task = announcements.map(|mut sub| {
        tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                if ann_tx.send(m).await.is_err() {
                    return;
                }
            }
        })
    });
    let down = Arc::new(Downlink {
        cfg: cfg.clone(),
        node: node.clone(),
        counters: counters.clone(),
        permits: Arc::new(tokio::sync::Semaphore::new(cfg.spec.max_in_flight)),
    });
    let mut b = Bridge {
        cfg,
        node,
        client,
        counters,
        connected: false,
        up: uplink::Tracker::default(),
        bridges: HashSet::new(),
        own_session: None,
        down,
        client_ids: HashMap::new(),
        taking_over: Arc::default(),
        stop: stop.clone(),
    };
    b.announce().await;
    let mut backoff = Backoff::new();
    let mut connected_once = false;
    let mut peers_tick = tokio::time::interval(Duration::from_millis(500));
    // No outbound mapping: nothing ever comes from NoMQ.
    let mut up_open = !patterns.is_empty();
    let result = 'run: loop {
        // One `poll` future until it completes: rumqttc's EventLoop::poll is not cancel
        // safe while it connects (a dropped poll drops the half-made connection), and the
        // other branches fire every 500 ms, so a connection that takes longer (TLS to a
        // distant broker) would never be made. The other branches run while it waits.
        let poll = eventloop.poll();
        tokio::pin!(poll);
        let ev = loop {
            let room = b.up.len() < b.cfg.spec.max_in_flight;
            tokio::select! {
                _ = stop.changed() => break 'run Ok(()),
                _ = peers_tick.tick() => {
                    b.refresh_bridges().await;
                    let back = b.up.settle(std::time::Instant::now());
                    b.give_back(back, "not retransmitted by the MQTT client after the reconnection");
                }
                Some(m) = ann_rx.recv() => b.on_announcement(m),
                ev = &mut poll => break ev,
                m = up_rx.recv(), if up_open && b.connected && room => match m {
                    Some(m) => b.uplink(m),
                    None => up_open = false,
                },
            }
        };
        match ev {
            Ok(ev) => {
                if matches!(ev, Event::Incoming(Packet::ConnAck(_))) {
                    connected_once = true;
                    backoff.reset();
                }
                b.on_event(ev).await;
            }
            Err(e) => {
                if let Some(m) = fatal(&e, connected_once) {
                    break Err(BridgeError::Refused(m));
                }
                if b.connected {
                    bump(&b.counters.reconnects);
                }
                b.connected = false;
                b.up.disconnected();
                let d = backoff.delay();
                tracing::warn!(error = %e, retry_in = ?d, "broker connection lost or refused; NoMQ → MQTT holds back until it is back");
                // Meanwhile the other bridges are still watched: one lost while the
                // broker is away is taken over when it is back.
                let until = tokio::time::Instant::now() + d;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        _ = stop.changed() => break 'run Ok(()),
                        _ = peers_tick.tick() => b.refresh_bridges().await,
                        Some(m) = ann_rx.recv() => b.on_announcement(m),
                    }
                }
            }
        }
    };
    drop(marker);
    for s in subs.into_iter().chain(ann_task) {
        s.abort();
    }
    // Messages the broker has not acknowledged stay unacknowledged in NoMQ (their Acks
    // drop here: abandoned), and the broker keeps the session for the next start.
    let _ = b.client.try_disconnect();
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout_at(until, eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(ev)) => b.on_event(ev).await,
        }
    }
    result
}

impl Bridge {
    /// Learns which sessions are other bridges, and this node's session.
    async fn refresh_bridges(&mut self) {
        let (Ok(marked), Ok(probe), Ok(own)) = (
            self.node.subscribers(BRIDGE_CHANNEL).await,
            self.node.subscribers(BRIDGE_PROBE).await,
            self.node.session().await,
        ) else {
            return;
        };
        let probe: HashSet<SessionId> = probe.into_iter().collect();
        let now: HashSet<SessionId> = marked.into_iter().filter(|s| !probe.contains(s)).collect();
        if now != self.bridges {
            tracing::info!(bridges = ?now, own = ?own, "other bridges of this network");
        }
        let joined = now.difference(&self.bridges).count() > 0;
        let lost: Vec<SessionId> = self.bridges.difference(&now).copied().collect();
        self.bridges = now;
        self.own_session = Some(own);
        if joined {
            // A bridge that joined after our announcement gets it as a retained value;
            // publishing again covers one whose retained request was lost.
            self.announce().await;
        }
        for session in lost {
            if let Some(id) = self.client_ids.remove(&session) {
                self.take_over(session, id);
            }
        }
    }

    /// Publishes this bridge's MQTT client id to the other bridges of its group
    /// (docs/PROTOCOL.md §5.1, `nomq/bridge/<group>/<session>`), retained.
    async fn announce(&mut self) {
        if announce_pattern(&self.cfg).is_none() {
            return;
        }
        let Ok(own) = self.node.session().await else { return };
        self.own_session = Some(own);
        let channel = format!("{BRIDGE_CHANNEL}/{}/{:08x}", self.cfg.spec.group, own.0);
        let opts = PublishOptions::qos(Qos::AtLeastOnce).retain(true).ttl(u16::MAX);
        // The outcome does not matter: a bridge not reached now asks for the retained
        // value when it subscribes.
        if let Err(e) = self.node.start_publish(&channel, self.cfg.client_id(), opts).await {
            tracing::warn!(%channel, error = %e, "cannot announce this bridge's client id");
        }
    }

    /// Another bridge of this group announced its MQTT client id.
    fn on_announcement(&mut self, m: Message) {
        if Some(m.session) == self.own_session {
            return;
        }
        match String::from_utf8(m.body.to_vec()) {
            Ok(id) if !id.is_empty() && id != self.cfg.client_id() => {
                if self.client_ids.get(&m.session) != Some(&id) {
                    tracing::info!(session = ?m.session, client_id = %id, "bridge of this group");
                }
                self.client_ids.insert(m.session, id);
            }
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(session = ?m.session, "bridge announcement is not UTF-8; ignored")
            }
        }
    }

    /// A bridge of this group left the NoMQ network (its liveness ran out: killed, or
    /// cut off). With shared subscriptions the broker keeps queueing that bridge's
    /// share of the inbound messages in its persistent session, where nobody reads
    /// them: resume that session under its client id, carry what it holds into NoMQ,
    /// leave the shared subscriptions and end the session (docs/BRIDGE.md, "Two
    /// bridges"). Should the other bridge still be connected, the broker hands the
    /// session over to whichever connected last, and the take-over ends at once.
    fn take_over(&mut self, session: SessionId, client_id: String) {
        let inbound = self.cfg.mappings.iter().any(|m| m.direction.inward());
        if !self.cfg.spec.shared || !inbound {
            return;
        }
        if !self.taking_over.lock().unwrap().insert(client_id.clone()) {
            return;
        }
        let mut cfg = self.cfg.clone();
        cfg.spec.broker.client_id = Some(client_id.clone());
        // Ends with the connection: the session is not kept for anyone.
        cfg.spec.broker.session_expiry_s = 0;
        let (down, active, stop) = (self.down.clone(), self.taking_over.clone(), self.stop.clone());
        bump(&self.counters.takeovers);
        tracing::warn!(?session, %client_id, "bridge lost: taking over its broker session");
        tokio::spawn(async move {
            let r = take_over(&down, &cfg, stop).await;
            match r {
                Ok(n) => tracing::info!(%client_id, messages = n, "session taken over and ended"),
                Err(e) => tracing::warn!(%client_id, error = %e, "session take-over ended"),
            }
            active.lock().unwrap().remove(&client_id);
        });
    }

    /// This bridge carries NoMQ → MQTT: it has the lowest session of the live bridges.
    fn owns_uplink(&self) -> bool {
        let Some(own) = self.own_session else { return true };
        self.bridges.iter().all(|s| s.0 > own.0)
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(ca)) => {
                self.connected = true;
                tracing::info!(session_present = ca.session_present, "connected to the broker");
                // Without the session, the broker forgot what it had not acknowledged
                // (and the client dropped it): given back, NoMQ publishers retransmit.
                let back = self.up.connected(ca.session_present, std::time::Instant::now());
                self.give_back(back, "broker session lost");
                self.subscribe_inbound();
            }
            Event::Incoming(Packet::Publish(p)) => {
                drop(self.down.publish(&self.client, p));
            }
            Event::Incoming(Packet::PubAck(a)) => {
                let ok =
                    matches!(a.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers);
                let done = self.up.puback(a.pkid, ok);
                self.finish(done, a.pkid, &format!("{:?}", a.reason));
            }
            Event::Incoming(Packet::PubRec(r)) => {
                let ok =
                    matches!(r.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers);
                let done = self.up.pubrec(r.pkid, ok);
                self.finish(done, r.pkid, &format!("{:?}", r.reason));
            }
            Event::Incoming(Packet::PubComp(c)) => {
                let done = self.up.pubcomp(c.pkid, c.reason == PubCompReason::Success);
                self.finish(done, c.pkid, &format!("{:?}", c.reason));
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                tracing::warn!(reason = ?d.reason_code, "the broker disconnected the bridge");
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let done = self.up.outgoing_publish(pkid);
                self.finish(done, pkid, "");
            }
            Event::Outgoing(Outgoing::PubRel(pkid)) => self.up.outgoing_pubrel(pkid),
            _ => {}
        }
    }

    fn set_waiting(&self) {
        self.counters.waiting_out.store(self.up.len() as u64, Ordering::Relaxed);
    }

    /// What became of an uplink message: acknowledge it in NoMQ, or not.
    fn finish(&mut self, done: Option<uplink::Done<Option<Ack>>>, pkid: u16, reason: &str) {
        use uplink::Done;
        match done {
            None => return,
            Some(Done::Answered(ack, true) | Done::Written(ack)) => {
                if let Some(a) = ack {
                    a.complete();
                }
                bump(&self.counters.forwarded_out);
            }
            Some(Done::Answered(_, false)) => {
                // Dropped unacknowledged: the NoMQ publisher retransmits, and finally
                // reports the bridge as missing.
                bump(&self.counters.refused);
                tracing::warn!(
                    pkid,
                    reason,
                    "the broker refused a publish; not acknowledged in NoMQ"
                );
            }
            Some(Done::GivenBack(ack)) => {
                self.give_back(vec![ack], "packet id reused before its PUBCOMP (ambiguous PUBREC)");
                return;
            }
        }
        self.set_waiting();
    }

    /// Drops messages unacknowledged (abandoned in NoMQ: their publishers retransmit).
    fn give_back(&mut self, acks: Vec<Option<Ack>>, why: &str) {
        if acks.is_empty() {
            return;
        }
        let n = acks.len() as u64;
        drop(acks);
        self.counters.given_back_out.fetch_add(n, Ordering::Relaxed);
        tracing::warn!(
            messages = n,
            why,
            "NoMQ → MQTT messages given back unacknowledged (NoMQ publishers retransmit them)"
        );
        self.set_waiting();
    }

    fn subscribe_inbound(&self) {
        let mut filters = Vec::new();
        for m in self.cfg.mappings.iter().filter(|m| m.direction.inward()) {
            let mut f = Filter::new(self.cfg.mqtt_subscription(m), mqtt_qos(m.qos));
            // No Local: never our own publishes back (not allowed on shared
            // subscriptions, where the origin property does it).
            f.nolocal = !self.cfg.spec.shared;
            // Retain As Published: a retained value stays retained in NoMQ.
            f.preserve_retain = true;
            // Retained values at a new subscription only (not at every reconnection).
            f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
            filters.push(f);
        }
        if !filters.is_empty()
            && let Err(e) = self.client.try_subscribe_many(filters)
        {
            tracing::error!(error = %e, "cannot subscribe at the broker");
        }
    }

    /// A NoMQ message for the broker.
    fn uplink(&mut self, m: Message) {
        let c = &self.counters;
        if self.bridges.contains(&m.session) {
            // Another bridge published it into NoMQ: it came from MQTT.
            bump(&c.loop_skipped);
            if let Some(a) = m.ack {
                a.complete();
            }
            return;
        }
        if !self.owns_uplink() {
            // Another bridge of this network carries it up.
            bump(&c.standby);
            if let Some(a) = m.ack {
                a.complete();
            }
            return;
        }
        let Some((map, topic)) = self
            .cfg
            .mappings
            .iter()
            .filter(|x| x.direction.out() && x.matches_channel(&m.channel))
            .find_map(|x| Some((x, x.to_topic(&m.channel)?)))
        else {
            bump(&c.refused);
            return;
        };
        let qos = qos_level(m.qos).min(map.qos);
        let props = PublishProperties {
            message_expiry_interval: Some(u32::from(m.ttl.max(1))),
            user_properties: vec![(ORIGIN_PROPERTY.to_string(), self.cfg.spec.group.clone())],
            ..Default::default()
        };
        let r = self.client.try_publish_with_properties(
            topic,
            mqtt_qos(qos),
            m.retained,
            m.body,
            props,
        );
        match r {
            Ok(()) => self.up.handed(qos, m.ack),
            Err(e) => {
                // Not handed over (its Ack drops: abandoned, so retransmitted).
                bump(&c.refused);
                tracing::warn!(error = %e, "MQTT client queue full; message not acknowledged in NoMQ");
            }
        }
        self.set_waiting();
    }
}

impl Downlink {
    /// An MQTT message for NoMQ, received by `client`: published there in its own task
    /// (returned), and acknowledged to the broker when NoMQ's outcome is in (or at the
    /// deadline).
    fn publish(&self, client: &AsyncClient, p: Publish) -> tokio::task::JoinHandle<()> {
        let c = self.counters.clone();
        let client = client.clone();
        let qos_in = match p.qos {
            MqttQos::AtMostOnce => 0,
            MqttQos::AtLeastOnce => 1,
            MqttQos::ExactlyOnce => 2,
        };
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let echo = p.properties.as_ref().is_some_and(|pr| {
            pr.user_properties
                .iter()
                .any(|(k, v)| k == ORIGIN_PROPERTY && *v == self.cfg.spec.group)
        });
        let target = self
            .cfg
            .mappings
            .iter()
            .filter(|m| m.direction.inward() && m.matches_topic(&topic))
            .map(|m| (m.qos, m.to_channel(&topic)))
            .next();
        let ack_now = |client: AsyncClient, p: Publish| async move {
            if p.qos != MqttQos::AtMostOnce {
                let _ = client.ack(&p).await;
            }
        };
        if echo {
            bump(&c.echo_skipped);
            return tokio::spawn(ack_now(client, p));
        }
        let (map_qos, name) = match target {
            Some((q, Ok(n))) => (q, n),
            Some((_, Err(e))) => {
                bump(&c.refused);
                tracing::warn!(%topic, error = %e, "MQTT topic has no NoMQ channel name; dropped");
                return tokio::spawn(ack_now(client, p));
            }
            None => {
                bump(&c.refused);
                return tokio::spawn(ack_now(client, p));
            }
        };
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Only QoS 0 can exceed the broker's receive maximum.
                bump(&c.undelivered_in);
                return tokio::spawn(ack_now(client, p));
            }
        };
        let qos = nomq_qos(qos_in.min(map_qos));
        let ttl = p
            .properties
            .as_ref()
            .and_then(|pr| pr.message_expiry_interval)
            .map_or(self.cfg.spec.default_ttl_s, |s| u16::try_from(s.max(1)).unwrap_or(u16::MAX));
        let opts = PublishOptions::qos(qos).retain(p.retain).ttl(ttl);
        let node = self.node.clone();
        let deadline = Duration::from_secs(self.cfg.spec.ack_deadline_s);
        tokio::spawn(async move {
            c.waiting_in.fetch_add(1, Ordering::Relaxed);
            let end = tokio::time::Instant::now() + deadline;
            let outcome = loop {
                match node.start_publish(&name, p.payload.to_vec(), opts).await {
                    Ok(rx) => {
                        break tokio::time::timeout_at(end, rx).await.ok().and_then(Result::ok);
                    }
                    Err(HostError::Publish(nomq::node::PublishError::OutboxFull))
                        if tokio::time::Instant::now() < end =>
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        tracing::warn!(channel = %name, error = %e, "NoMQ refused the publish");
                        break None;
                    }
                }
            };
            match outcome.map(|d| d.status) {
                Some(Status::Acknowledged | Status::Sent) => bump(&c.forwarded_in),
                Some(Status::NoSubscribers) => bump(&c.no_subscribers_in),
                other => {
                    bump(&c.undelivered_in);
                    tracing::debug!(channel = %name, outcome = ?other, "not every NoMQ subscriber acknowledged before the deadline");
                }
            }
            c.waiting_in.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            ack_now(client, p).await;
        })
    }
}
