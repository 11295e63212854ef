//! Mappings between NoMQ channel patterns and MQTT topic filters.
//!
//! A mapping pairs a NoMQ pattern with an MQTT filter that differ only in their literal
//! prefix: the levels from the first wildcard on (the *tail*) must be the same on both
//! sides, so one matches exactly the names the other does (the wildcard rules are the
//! same: docs/PROTOCOL.md §5 and MQTT §4.7). `factory/#` ↔ `site-a/factory/#` maps
//! `factory/line1/temp` ↔ `site-a/factory/line1/temp`. A pattern without wildcards maps
//! one name to one topic.

use nomq::{ChannelName, Pattern};
use serde::Deserialize;
use std::fmt;

/// Which way a mapping carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// NoMQ → MQTT.
    Out,
    /// MQTT → NoMQ.
    In,
    /// Both ways.
    Both,
}

impl Direction {
    /// Carries NoMQ → MQTT.
    pub fn out(self) -> bool {
        matches!(self, Self::Out | Self::Both)
    }
    /// Carries MQTT → NoMQ.
    pub fn inward(self) -> bool {
        matches!(self, Self::In | Self::Both)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Out => "out",
            Self::In => "in",
            Self::Both => "both",
        })
    }
}

/// One mapping as written in a bridge configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// NoMQ channel pattern.
    pub nomq: String,
    /// MQTT topic filter.
    pub mqtt: String,
    /// Direction (default `both`).
    #[serde(default = "both")]
    pub direction: Direction,
    /// The highest QoS this mapping carries (default 1).
    #[serde(default = "one")]
    pub qos: u8,
}

fn both() -> Direction {
    Direction::Both
}
fn one() -> u8 {
    1
}

/// A validated mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The NoMQ pattern.
    pub nomq: String,
    /// The MQTT filter.
    pub mqtt: String,
    /// Direction.
    pub direction: Direction,
    /// The highest QoS carried (0..=2): a message goes through at the lower of its own
    /// QoS and this.
    pub qos: u8,
    /// Levels before the first wildcard, NoMQ side.
    nomq_prefix: Vec<String>,
    /// The same, MQTT side.
    mqtt_prefix: Vec<String>,
    /// Levels from the first wildcard on (the same on both sides).
    tail: Vec<String>,
}

/// Splits a filter into its literal prefix and its tail (from the first wildcard on).
fn split(f: &str) -> (Vec<String>, Vec<String>) {
    let levels: Vec<&str> = f.split('/').collect();
    let at = levels.iter().position(|l| *l == "+" || *l == "#").unwrap_or(levels.len());
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect();
    (own(&levels[..at]), own(&levels[at..]))
}

/// Checks an MQTT topic filter (MQTT 5 §4.7): not empty, no U+0000, wildcards fill
/// their level, `#` last, at most 65 535 bytes, and no `$` topic (the broker's own).
fn check_mqtt_filter(f: &str) -> Result<(), String> {
    if f.is_empty() {
        return Err("the MQTT topic is empty".into());
    }
    if f.len() > 65_535 {
        return Err("the MQTT topic is longer than 65535 bytes".into());
    }
    if f.contains('\0') {
        return Err("the MQTT topic contains U+0000".into());
    }
    if f.starts_with('$') {
        return Err(format!(
            "'{f}': topics starting with '$' belong to the broker ($SYS) or to shared subscriptions ($share, which the bridge adds itself with --shared)"
        ));
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if (l.contains('+') || l.contains('#')) && l.len() > 1 {
            return Err(format!("'{f}': a wildcard must fill its whole level ('{l}')"));
        }
        if *l == "#" && i + 1 != levels.len() {
            return Err(format!("'{f}': '#' must be the last level"));
        }
    }
    Ok(())
}

impl Mapping {
    /// Validates a mapping.
    ///
    /// # Errors
    /// Why it cannot be expressed: an invalid pattern or filter, tails that differ (the
    /// two sides would not match the same names), a QoS above 2.
    pub fn new(nomq: &str, mqtt: &str, direction: Direction, qos: u8) -> Result<Self, String> {
        Pattern::new(nomq).map_err(|e| format!("NoMQ pattern '{nomq}': {e}"))?;
        check_mqtt_filter(mqtt)?;
        if qos > 2 {
            return Err(format!("QoS {qos}: MQTT and NoMQ know 0, 1 and 2"));
        }
        let (nomq_prefix, tail) = split(nomq);
        let (mqtt_prefix, mqtt_tail) = split(mqtt);
        if tail != mqtt_tail {
            return Err(format!(
                "'{nomq}' and '{mqtt}' cannot map one to one: after the literal prefix they must have the same wildcard levels ('{}' vs '{}'), e.g. 'factory/#' and 'site-a/factory/#'",
                tail.join("/"),
                mqtt_tail.join("/")
            ));
        }
        if nomq_prefix.is_empty() && tail.first().is_some_and(|l| l == "#") {
            // `#` matches its parent level: `x/#` ↔ `#` would map the topic `x` to the
            // empty channel name, which NoMQ does not have.
            if !mqtt_prefix.is_empty() && direction.inward() {
                return Err(format!(
                    "'{nomq}' ↔ '{mqtt}': the MQTT topic '{}' (which '{mqtt}' matches) would map to an empty channel name; give the NoMQ side a prefix",
                    mqtt_prefix.join("/")
                ));
            }
        }
        Ok(Self {
            nomq: nomq.to_string(),
            mqtt: mqtt.to_string(),
            direction,
            qos,
            nomq_prefix,
            mqtt_prefix,
            tail,
        })
    }

    /// Parses a `--map` argument: `NOMQ=MQTT[:DIRECTION[:QOS]]`, direction `out`, `in` or
    /// `both` (default), QoS 0, 1 (default) or 2.
    ///
    /// # Errors
    /// A malformed argument, or a mapping [`Mapping::new`] refuses.
    pub fn parse(arg: &str) -> Result<Self, String> {
        let (nomq, rest) = arg.split_once('=').ok_or_else(|| {
            format!("'{arg}': write NOMQ=MQTT[:out|in|both[:0|1|2]], e.g. 'factory/#=site-a/factory/#:both:1'")
        })?;
        let dir_of = |s: &str| match s {
            "out" => Some(Direction::Out),
            "in" => Some(Direction::In),
            "both" => Some(Direction::Both),
            _ => None,
        };
        // Topics may contain ':'; only trailing known words are options.
        let (mut mqtt, mut direction, mut qos) = (rest, Direction::Both, 1u8);
        if let Some((head, last)) = rest.rsplit_once(':') {
            if let Ok(q) = last.parse::<u8>() {
                let Some((m, d)) = head.rsplit_once(':').and_then(|(m, d)| Some((m, dir_of(d)?)))
                else {
                    return Err(format!(
                        "'{arg}': a QoS comes after a direction: NOMQ=MQTT:out|in|both:QOS"
                    ));
                };
                (mqtt, direction, qos) = (m, d, q);
            } else if let Some(d) = dir_of(last) {
                (mqtt, direction) = (head, d);
            }
        }
        Self::new(nomq, mqtt, direction, qos)
    }

    /// Whether the NoMQ channel `name` is one this mapping carries.
    pub fn matches_channel(&self, name: &str) -> bool {
        let (Ok(p), Ok(n)) = (Pattern::new(&self.nomq), ChannelName::new(name)) else {
            return false;
        };
        p.matches(n)
    }

    /// Whether the MQTT topic `topic` is one this mapping carries (same wildcard rules).
    pub fn matches_topic(&self, topic: &str) -> bool {
        topic_matches(&self.mqtt, topic)
    }

    /// The MQTT topic of NoMQ channel `name` (which [`Mapping::matches_channel`]).
    pub fn to_topic(&self, name: &str) -> Option<String> {
        let rest = strip(name, &self.nomq_prefix)?;
        Some(join(&self.mqtt_prefix, rest))
    }

    /// The NoMQ channel name of MQTT topic `topic`, if it is a valid one (at most 96
    /// bytes, say).
    ///
    /// # Errors
    /// Why the topic has no channel name.
    pub fn to_channel(&self, topic: &str) -> Result<String, String> {
        let rest = strip(topic, &self.mqtt_prefix)
            .ok_or_else(|| format!("'{topic}' is not under '{}'", self.mqtt))?;
        let name = join(&self.nomq_prefix, rest);
        ChannelName::new(&name).map_err(|e| format!("MQTT topic '{topic}' → '{name}': {e}"))?;
        Ok(name)
    }

    /// The levels from the first wildcard on, as written.
    pub fn tail(&self) -> String {
        self.tail.join("/")
    }
}

/// `name` without the literal `prefix` levels: the remaining levels (`None` if it does
/// not start with them). `Some(None)` means nothing remains (the parent level).
fn strip<'a>(name: &'a str, prefix: &[String]) -> Option<Option<&'a str>> {
    if prefix.is_empty() {
        return Some(Some(name));
    }
    let p = prefix.join("/");
    let rest = name.strip_prefix(p.as_str())?;
    if rest.is_empty() {
        return Some(None);
    }
    rest.strip_prefix('/').map(Some)
}

fn join(prefix: &[String], rest: Option<&str>) -> String {
    match (prefix.is_empty(), rest) {
        (true, Some(r)) => r.to_string(),
        (true, None) => String::new(),
        (false, Some(r)) => format!("{}/{r}", prefix.join("/")),
        (false, None) => prefix.join("/"),
    }
}

/// MQTT topic matching (MQTT 5 §4.7), the same rules as NoMQ patterns but for any length.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_map_names_both_ways() {
        let m = Mapping::parse("factory/#=site-a/factory/#:both:1").unwrap();
        assert_eq!((m.direction, m.qos), (Direction::Both, 1));
        assert_eq!(m.to_topic("factory/line1/temp").unwrap(), "site-a/factory/line1/temp");
        assert_eq!(m.to_topic("factory").unwrap(), "site-a/factory");
        assert_eq!(m.to_channel("site-a/factory/l/t").unwrap(), "factory/l/t");
        assert_eq!(m.to_channel("site-a/factory").unwrap(), "factory");
        assert!(m.matches_topic("site-a/factory/x") && !m.matches_topic("site-b/factory/x"));
        assert!(m.matches_channel("factory/x") && !m.matches_channel("factoryx"));
        let m = Mapping::parse("sensors/+/temp=s/sensors/+/temp:out:2").unwrap();
        assert_eq!(m.to_topic("sensors/k/temp").unwrap(), "s/sensors/k/temp");
        assert_eq!((m.direction, m.qos), (Direction::Out, 2));
        let m = Mapping::parse("#=site/#:out").unwrap();
        assert_eq!(m.to_topic("a/b").unwrap(), "site/a/b");
        let m = Mapping::parse("a/b=x/y").unwrap();
        assert_eq!((m.to_topic("a/b").unwrap().as_str(), m.direction), ("x/y", Direction::Both));
        // ':' inside a topic is allowed.
        let m = Mapping::parse("a/#=urn:x/#:in").unwrap();
        assert_eq!((m.mqtt.as_str(), m.direction), ("urn:x/#", Direction::In));
    }

    #[test]
    fn mappings_that_cannot_be_expressed_are_refused_with_a_reason() {
        for (arg, why) in [
            ("factory/#", "NOMQ=MQTT"),
            ("factory/#=site/+:both:1", "same wildcard levels"),
            ("a/+/b=x/#", "same wildcard levels"),
            ("a/#=$SYS/#", "'$'"),
            ("a/#=x/y#", "whole level"),
            ("a/#/b=x/#/b", "NoMQ pattern"),
            ("a/#=x/#:both:3", "QoS 3"),
            ("#=x/#:in", "empty channel name"),
        ] {
            let e = Mapping::parse(arg).unwrap_err();
            assert!(e.contains(why), "{arg}: {e}");
        }
        let long = format!("x/{}", "y".repeat(100));
        let m = Mapping::parse("a/#=x/#").unwrap();
        assert!(m.to_channel(&long).unwrap_err().contains("96"));
    }

    #[test]
    fn topic_matching_follows_mqtt() {
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/+", "a/"));
        assert!(!topic_matches("a/+", "a"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(topic_matches("+/b", "a/b"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }
}
