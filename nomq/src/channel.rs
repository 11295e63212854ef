//! Channel names, subscription patterns (MQTT wildcards) and keyed channel ids.
//!
//! A **channel name** is what a publisher publishes to: `factory/line1/temp`. It is UTF-8,
//! 1 to [`MAX_NAME_LEN`] bytes, split into levels by `/` (empty levels are allowed, as in
//! MQTT), and contains neither wildcard character nor U+0000.
//!
//! A **pattern** is what a subscriber subscribes to. It follows MQTT 3.1.1 §4.7: `+` stands
//! for exactly one level (possibly empty) and must fill its level; `#` stands for the rest
//! of the name, including the parent level itself, and must be the last level. A pattern
//! that starts with a wildcard does not match names starting with `$` (MQTT §4.7.2).
//!
//! The **channel id** on the wire is the first 16 bytes of
//! `HMAC-SHA256(channel-id key, "nomq/channel/" ‖ name)`; see [`crate::keys::KeySet`].

use core::fmt;

/// Longest channel name or pattern, in bytes.
///
/// Chosen so that a subscription list fits a heartbeat and a peer table stays small on an
/// MCU; MQTT's 65 535 would make every bounded cache enormous.
pub const MAX_NAME_LEN: usize = 96;

/// Prefix hashed before the name when deriving a channel id.
pub const CHANNEL_ID_CONTEXT: &[u8] = b"nomq/channel/";

/// What is wrong with a channel name or pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ChannelError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The bytes are not valid UTF-8.
    NotUtf8,
    /// The name contains U+0000.
    NulCharacter {
        /// Byte offset of the NUL.
        at: usize,
    },
    /// A channel name that is published to contains `+` or `#`.
    WildcardInName {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// A `+` or `#` shares its level with other characters (`sport+`, `sport/tennis#`).
    WildcardNotWholeLevel {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// `#` is not the last level (`sport/#/ranking`).
    HashNotLast {
        /// Byte offset of the `#`.
        at: usize,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Empty => f.write_str("channel name is empty"),
            Self::TooLong { len } => {
                write!(f, "channel name is {len} bytes long; the limit is {MAX_NAME_LEN}")
            }
            Self::NotUtf8 => f.write_str("channel name is not valid UTF-8"),
            Self::NulCharacter { at } => write!(f, "channel name contains U+0000 at byte {at}"),
            Self::WildcardInName { at } => write!(
                f,
                "wildcard at byte {at}: '+' and '#' are allowed in subscription patterns, not in names published to"
            ),
            Self::WildcardNotWholeLevel { at } => write!(
                f,
                "wildcard at byte {at} must fill its whole level (write 'a/+/b' or 'a/#', not 'a+' or 'a#')"
            ),
            Self::HashNotLast { at } => write!(f, "'#' at byte {at} must be the last level"),
        }
    }
}

impl core::error::Error for ChannelError {}

fn check_common(s: &str) -> Result<(), ChannelError> {
    if s.is_empty() {
        return Err(ChannelError::Empty);
    }
    if s.len() > MAX_NAME_LEN {
        return Err(ChannelError::TooLong { len: s.len() });
    }
    if let Some(at) = s.bytes().position(|b| b == 0) {
        return Err(ChannelError::NulCharacter { at });
    }
    Ok(())
}

/// A validated channel name (no wildcards), borrowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelName<'a>(&'a str);

impl<'a> ChannelName<'a> {
    /// Validates `s` as a name that can be published to.
    ///
    /// # Errors
    /// The [`ChannelError`] says what is wrong and where.
    pub fn new(s: &'a str) -> Result<Self, ChannelError> {
        check_common(s)?;
        if let Some(at) = s.bytes().position(|b| b == b'+' || b == b'#') {
            return Err(ChannelError::WildcardInName { at });
        }
        Ok(Self(s))
    }

    /// Validates untrusted bytes (from the network) as a channel name.
    ///
    /// # Errors
    /// [`ChannelError::NotUtf8`] or any error of [`ChannelName::new`].
    pub fn from_bytes(b: &'a [u8]) -> Result<Self, ChannelError> {
        Self::new(core::str::from_utf8(b).map_err(|_| ChannelError::NotUtf8)?)
    }

    /// The name as a string.
    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl fmt::Debug for ChannelName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}
impl fmt::Display for ChannelName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A validated subscription pattern, borrowed. A pattern without wildcards is also a name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pattern<'a>(&'a str);

impl<'a> Pattern<'a> {
    /// Validates `s` as a subscription pattern.
    ///
    /// # Errors
    /// The [`ChannelError`] says what is wrong and where.
    pub fn new(s: &'a str) -> Result<Self, ChannelError> {
        check_common(s)?;
        let mut start = 0;
        let bytes = s.as_bytes();
        for level in s.split('/') {
            let lb = level.as_bytes();
            if let Some(off) = lb.iter().position(|&b| b == b'+' || b == b'#') {
                let at = start + off;
                if lb.len() != 1 {
                    return Err(ChannelError::WildcardNotWholeLevel { at });
                }
                if lb[0] == b'#' && at + 1 != bytes.len() {
                    return Err(ChannelError::HashNotLast { at });
                }
            }
            start += level.len() + 1;
        }
        Ok(Self(s))
    }

    /// Validates untrusted bytes (from the network) as a pattern.
    ///
    /// # Errors
    /// [`ChannelError::NotUtf8`] or any error of [`Pattern::new`].
    pub fn from_bytes(b: &'a [u8]) -> Result<Self, ChannelError> {
        Self::new(core::str::from_utf8(b).map_err(|_| ChannelError::NotUtf8)?)
    }

    /// A pattern this node checked with [`Pattern::new`] when it stored it, not checked
    /// again on each match (its levels would be split twice per message). Matching a
    /// string that is not a valid pattern only compares levels: no panic, no error.
    pub(crate) fn stored(s: &'a str) -> Self {
        Self(s)
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// Whether the pattern contains `+` or `#`.
    pub fn has_wildcard(&self) -> bool {
        self.0.bytes().any(|b| b == b'+' || b == b'#')
    }

    /// Whether `name` matches this pattern under MQTT rules.
    pub fn matches(&self, name: ChannelName<'_>) -> bool {
        let n = name.as_str();
        if n.starts_with('$') && (self.0.starts_with('+') || self.0.starts_with('#')) {
            return false;
        }
        let mut pat = self.0.split('/');
        let mut nam = n.split('/');
        loop {
            match (pat.next(), nam.next()) {
                (Some("#"), _) => return true,
                (Some("+"), Some(_)) => {}
                (Some(p), Some(l)) if p == l => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl Pattern<'_> {
    /// Whether every name `sub` matches is matched by this pattern too (`secret/#`
    /// covers `secret/a/+` and `secret`; `+/x` does not cover `$SYS/x`).
    pub fn covers(&self, sub: Pattern<'_>) -> bool {
        let wild_first = self.0.starts_with('+') || self.0.starts_with('#');
        if wild_first && sub.0.starts_with('$') {
            return false;
        }
        let (mut mine, mut theirs) = (self.0.split('/'), sub.0.split('/'));
        loop {
            match (mine.next(), theirs.next()) {
                (Some("#"), _) => return true,
                // A `#` of theirs matches more levels (or fewer) than anything but `#`.
                (Some(_), Some("#")) => return false,
                (Some("+"), Some(_)) => {}
                (Some(a), Some(b)) if a == b && b != "+" => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }
}

impl fmt::Debug for Pattern<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}
impl fmt::Display for Pattern<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The 16-byte keyed identifier of a channel (or of a pattern, for announcements).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChannelId(pub [u8; 16]);

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_patterns() {
        let p = |s| Pattern::new(s).unwrap();
        for (outer, inner) in [
            ("secret/#", "secret/a/+"),
            ("secret/#", "secret"),
            ("secret/#", "secret/#"),
            ("#", "a/b"),
            ("+/x", "a/x"),
            ("+/x", "+/x"),
            ("a/+", "a/b"),
            ("$SYS/#", "$SYS/x"),
        ] {
            assert!(p(outer).covers(p(inner)), "{outer} covers {inner}");
        }
        for (outer, inner) in [
            ("secret/#", "#"),
            ("secret/+", "secret/#"),
            ("secret/+", "secret"),
            ("a/b", "a/+"),
            ("+/x", "$SYS/x"),
            ("#", "$SYS/#"),
            ("a/+/#", "a/#"),
            ("a", "a/b"),
        ] {
            assert!(!p(outer).covers(p(inner)), "{outer} does not cover {inner}");
        }
    }

    fn m(p: &str, n: &str) -> bool {
        Pattern::new(p).unwrap().matches(ChannelName::new(n).unwrap())
    }

    #[test]
    fn mqtt_spec_examples() {
        // MQTT 3.1.1 §4.7.1.2
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon"));
        assert!(m("sport/#", "sport"));
        assert!(m("sport/tennis/#", "sport/tennis"));
        assert!(m("sport/tennis/#", "sport/tennis/player1/ranking"));
        assert!(m("#", "sport/tennis"));
        // §4.7.1.3
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(m("sport/tennis/+", "sport/tennis/player2"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(!m("sport/+", "sport/tennis/player1"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
        // `+` matches an empty level
        assert!(m("a/+/c", "a//c"));
        // §4.7.2 `$` names
        assert!(!m("#", "$SYS/x"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/monitor/Clients"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
        // exact
        assert!(m("factory/line1", "factory/line1"));
        assert!(!m("factory/line1", "factory/line10"));
        assert!(!m("factory/line1", "factory"));
    }

    #[test]
    fn invalid_patterns_say_what_is_wrong() {
        assert_eq!(
            Pattern::new("sport/tennis#"),
            Err(ChannelError::WildcardNotWholeLevel { at: 12 })
        );
        assert_eq!(Pattern::new("sport/#/ranking"), Err(ChannelError::HashNotLast { at: 6 }));
        assert_eq!(Pattern::new("sport+"), Err(ChannelError::WildcardNotWholeLevel { at: 5 }));
        assert_eq!(Pattern::new(""), Err(ChannelError::Empty));
        assert!(Pattern::new("+").is_ok());
        assert!(Pattern::new("#").is_ok());
        assert!(Pattern::new("+/tennis/#").is_ok());
        assert!(Pattern::new("a/\0").is_err());
        let long = [b'a'; MAX_NAME_LEN + 1];
        let long = core::str::from_utf8(&long).unwrap();
        assert_eq!(Pattern::new(long), Err(ChannelError::TooLong { len: MAX_NAME_LEN + 1 }));
        assert!(Pattern::new(&long[..MAX_NAME_LEN]).is_ok());
    }

    #[test]
    fn invalid_names_say_what_is_wrong() {
        assert_eq!(ChannelName::new("a/+/b"), Err(ChannelError::WildcardInName { at: 2 }));
        assert_eq!(ChannelName::new("a/#"), Err(ChannelError::WildcardInName { at: 2 }));
        assert_eq!(ChannelName::new(""), Err(ChannelError::Empty));
        assert_eq!(ChannelName::new("x\0"), Err(ChannelError::NulCharacter { at: 1 }));
        assert_eq!(ChannelName::from_bytes(&[0x66, 0xff]), Err(ChannelError::NotUtf8));
        assert!(ChannelName::new("/a//b/").is_ok());
        assert!(ChannelName::new("usine/café").is_ok());
    }
}
