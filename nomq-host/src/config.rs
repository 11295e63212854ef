//! Host configuration: defaults, a JSON file, environment variables.

use crate::HostError;
use nomq::node::ClockMode;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default UDP port (the reference NoMQ's).
pub const DEFAULT_PORT: u16 = 8888;

/// Everything a host node needs that is not a key. Defaults in [`HostConfig::default`].
///
/// File (JSON, every field optional):
/// ```json
/// { "bind": "0.0.0.0:8888", "keyring": "nomq-keys.json", "peers": ["192.0.2.7:8888"],
///   "broadcast": ["255.255.255.255:8888"], "multicast": "239.77.0.1", "multicast_ttl": 1,
///   "heartbeat_ms": 5000, "liveness_ms": 15000, "default_ttl_s": 60,
///   "clock_skew_s": 30, "unsynced_clock": false, "retransmit_initial_ms": 200,
///   "retransmit_max_ms": 3000, "max_attempts": 8, "rate_limit": 1000 }
/// ```
/// Environment: `NOMQ_BIND`, `NOMQ_KEYRING`, `NOMQ_PEERS` (comma-separated),
/// `NOMQ_BROADCAST` (comma-separated), `NOMQ_MULTICAST`, `NOMQ_HEARTBEAT_MS`,
/// `NOMQ_LIVENESS_MS`, `NOMQ_DEFAULT_TTL_S`, `NOMQ_MAX_ATTEMPTS`, `NOMQ_RATE_LIMIT`.
/// Environment overrides the file; explicit builder calls override both.
#[derive(Clone, Debug, PartialEq)]
pub struct HostConfig {
    /// Local address (default `0.0.0.0:8888`).
    pub bind: SocketAddr,
    /// Keyring file (default `nomq-keys.json`).
    pub keyring: PathBuf,
    /// Static peers: fan-out by unicast (networks without broadcast; every test here).
    pub peers: Vec<SocketAddr>,
    /// Broadcast addresses for fan-out (default: `255.255.255.255:<port>` when bound to a
    /// non-loopback address and no peers or multicast group are set; none otherwise).
    pub broadcast: Option<Vec<SocketAddr>>,
    /// Multicast group for fan-out (IPv4 or IPv6; joined on start).
    pub multicast: Option<IpAddr>,
    /// Multicast hop limit (default 1: the local link).
    pub multicast_ttl: u32,
    /// IPv6 interface index for link-local multicast (default 0: the system's choice).
    pub multicast_if: u32,
    /// Engine settings (timeouts, TTL, clock mode, rate limit).
    pub engine: nomq::Config,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            keyring: PathBuf::from("nomq-keys.json"),
            peers: Vec::new(),
            broadcast: None,
            multicast: None,
            multicast_ttl: 1,
            multicast_if: 0,
            engine: nomq::Config::default(),
        }
    }
}

fn ms(v: u64) -> nomq::Duration {
    nomq::Duration::from_millis(v)
}

fn parse_addrs(what: &str, s: &str) -> Result<Vec<SocketAddr>, HostError> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| parse_addr(what, p)).collect()
}

/// Parses `host:port`, or a bare IP with the default port.
pub fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, HostError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(HostError::config(what, format!("'{s}' is not an address (expected IP:PORT)")))
}

impl HostConfig {
    /// Applies a JSON configuration file.
    ///
    /// # Errors
    /// [`HostError::Config`] naming the file and field.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), HostError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            HostError::config(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| HostError::config(path.display().to_string(), format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| {
            HostError::config(path.display().to_string(), "expected a JSON object")
        })?;
        let bad = |k: &str, want: &str| {
            HostError::config(
                format!("{}: field '{k}'", path.display()),
                format!("expected {want}"),
            )
        };
        for (k, val) in obj {
            let s = || val.as_str().ok_or_else(|| bad(k, "a string"));
            let n = || val.as_u64().ok_or_else(|| bad(k, "a non-negative integer"));
            let list = || -> Result<Vec<SocketAddr>, HostError> {
                let arr = val.as_array().ok_or_else(|| bad(k, "an array of addresses"))?;
                arr.iter()
                    .map(|x| {
                        x.as_str()
                            .ok_or_else(|| bad(k, "an array of strings"))
                            .and_then(|x| parse_addr(k, x))
                    })
                    .collect()
            };
            match k.as_str() {
                "bind" => self.bind = parse_addr(k, s()?)?,
                "keyring" => self.keyring = PathBuf::from(s()?),
                "peers" => self.peers = list()?,
                "broadcast" => self.broadcast = Some(list()?),
                "multicast" => {
                    self.multicast = Some(s()?.parse().map_err(|_| bad(k, "an IP address"))?);
                }
                "multicast_ttl" => {
                    self.multicast_ttl =
                        u32::try_from(n()?).map_err(|_| bad(k, "a small integer"))?
                }
                "heartbeat_ms" => self.engine.heartbeat_interval = ms(n()?),
                "liveness_ms" => self.engine.liveness_timeout = ms(n()?),
                "default_ttl_s" => {
                    self.engine.default_ttl = u16::try_from(n()?).map_err(|_| bad(k, "1..65535"))?
                }
                "clock_skew_s" => {
                    self.engine.clock = ClockMode::Synced { skew: nomq::Duration::from_secs(n()?) };
                }
                "unsynced_clock" => {
                    if val.as_bool().ok_or_else(|| bad(k, "true or false"))? {
                        self.engine.clock = ClockMode::Unsynced;
                    }
                }
                "retransmit_initial_ms" => self.engine.retransmit_initial = ms(n()?),
                "retransmit_max_ms" => self.engine.retransmit_max = ms(n()?),
                "max_attempts" => {
                    self.engine.max_attempts = u8::try_from(n()?).map_err(|_| bad(k, "0..255"))?
                }
                "rate_limit" => {
                    self.engine.rate_limit = u32::try_from(n()?).map_err(|_| bad(k, "a u32"))?
                }
                other => {
                    tracing::warn!(file = %path.display(), field = other, "unknown configuration field ignored")
                }
            }
        }
        Ok(())
    }

    /// Applies `NOMQ_*` environment variables.
    ///
    /// # Errors
    /// [`HostError::Config`] naming the variable.
    pub fn apply_env(&mut self) -> Result<(), HostError> {
        self.apply_vars(|k| std::env::var(k).ok())
    }

    /// Applies variables from any source (testable form of [`HostConfig::apply_env`]).
    ///
    /// # Errors
    /// [`HostError::Config`] naming the variable.
    pub fn apply_vars(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), HostError> {
        let num = |k: &str, v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| HostError::config(k, format!("'{v}' is not a number")))
        };
        if let Some(v) = get("NOMQ_BIND") {
            self.bind = parse_addr("NOMQ_BIND", &v)?;
        }
        if let Some(v) = get("NOMQ_KEYRING") {
            self.keyring = PathBuf::from(v);
        }
        if let Some(v) = get("NOMQ_PEERS") {
            self.peers = parse_addrs("NOMQ_PEERS", &v)?;
        }
        if let Some(v) = get("NOMQ_BROADCAST") {
            self.broadcast = Some(parse_addrs("NOMQ_BROADCAST", &v)?);
        }
        if let Some(v) = get("NOMQ_MULTICAST") {
            self.multicast =
                Some(v.trim().parse().map_err(|_| {
                    HostError::config("NOMQ_MULTICAST", format!("'{v}' is not an IP"))
                })?);
        }
        if let Some(v) = get("NOMQ_HEARTBEAT_MS") {
            self.engine.heartbeat_interval = ms(num("NOMQ_HEARTBEAT_MS", &v)?);
        }
        if let Some(v) = get("NOMQ_LIVENESS_MS") {
            self.engine.liveness_timeout = ms(num("NOMQ_LIVENESS_MS", &v)?);
        }
        if let Some(v) = get("NOMQ_DEFAULT_TTL_S") {
            self.engine.default_ttl = u16::try_from(num("NOMQ_DEFAULT_TTL_S", &v)?)
                .map_err(|_| HostError::config("NOMQ_DEFAULT_TTL_S", "above 65535"))?;
        }
        if let Some(v) = get("NOMQ_MAX_ATTEMPTS") {
            self.engine.max_attempts = u8::try_from(num("NOMQ_MAX_ATTEMPTS", &v)?)
                .map_err(|_| HostError::config("NOMQ_MAX_ATTEMPTS", "above 255"))?;
        }
        if let Some(v) = get("NOMQ_RATE_LIMIT") {
            self.engine.rate_limit = u32::try_from(num("NOMQ_RATE_LIMIT", &v)?)
                .map_err(|_| HostError::config("NOMQ_RATE_LIMIT", "too large"))?;
        }
        Ok(())
    }

    /// The broadcast addresses fan-out uses (see [`HostConfig::broadcast`]).
    pub fn effective_broadcast(&self) -> Vec<SocketAddr> {
        match &self.broadcast {
            Some(b) => b.clone(),
            None if self.peers.is_empty()
                && self.multicast.is_none()
                && !self.bind.ip().is_loopback() =>
            {
                vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), self.bind.port())]
            }
            None => Vec::new(),
        }
    }

    /// Converts a duration for display.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_micros(self.engine.heartbeat_interval.total_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_errors() {
        let mut c = HostConfig::default();
        let vars = |k: &str| match k {
            "NOMQ_BIND" => Some("127.0.0.1:9000".to_string()),
            "NOMQ_PEERS" => Some("127.0.0.1:9001, 127.0.0.1".to_string()),
            "NOMQ_HEARTBEAT_MS" => Some("250".to_string()),
            _ => None,
        };
        c.apply_vars(vars).unwrap();
        assert_eq!(c.bind, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[1].port(), DEFAULT_PORT);
        assert_eq!(c.engine.heartbeat_interval, nomq::Duration::from_millis(250));
        assert!(c.effective_broadcast().is_empty(), "loopback never broadcasts by default");
        let err = c.apply_vars(|k| (k == "NOMQ_PEERS").then(|| "nope".to_string())).unwrap_err();
        assert!(err.to_string().contains("NOMQ_PEERS"), "{err}");
        let err =
            c.apply_vars(|k| (k == "NOMQ_MAX_ATTEMPTS").then(|| "999".to_string())).unwrap_err();
        assert!(err.to_string().contains("NOMQ_MAX_ATTEMPTS"));
    }

    #[test]
    fn defaults_broadcast_only_off_loopback() {
        let c = HostConfig::default();
        assert_eq!(c.effective_broadcast(), vec!["255.255.255.255:8888".parse().unwrap()]);
        let c =
            HostConfig { peers: vec!["192.0.2.1:8888".parse().unwrap()], ..HostConfig::default() };
        assert!(c.effective_broadcast().is_empty());
    }

    #[test]
    fn file_fields_and_errors() {
        let dir = std::env::temp_dir().join(format!("nomq-host-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.json");
        std::fs::write(
            &f,
            r#"{"bind":"127.0.0.1:7000","peers":["127.0.0.1:7001"],"max_attempts":3}"#,
        )
        .unwrap();
        let mut c = HostConfig::default();
        c.apply_file(&f).unwrap();
        assert_eq!(c.bind.port(), 7000);
        assert_eq!(c.engine.max_attempts, 3);
        std::fs::write(&f, r#"{"max_attempts":"x"}"#).unwrap();
        let e = c.apply_file(&f).unwrap_err().to_string();
        assert!(e.contains("max_attempts") && e.contains("c.json"), "{e}");
        std::fs::write(&f, "{").unwrap();
        assert!(c.apply_file(&f).unwrap_err().to_string().contains("not JSON"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
