//! The keyring as held in memory.

use crate::error::{EditError, Error, RandomError};
use nomq::keys::KeyringError;
use nomq::{KeyPair, Keyring, Pattern};
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// A fresh key pair from the operating system's random number generator.
///
/// The two keys always differ.
///
/// # Errors
/// [`RandomError`] if the operating system cannot supply random bytes.
pub fn generate_pair() -> Result<KeyPair, RandomError> {
    let mut enc = [0u8; 32];
    let mut mac = [0u8; 32];
    let drawn = loop {
        if let Err(e) = getrandom::fill(&mut enc).and_then(|()| getrandom::fill(&mut mac)) {
            break Err(RandomError(e));
        }
        // Equal keys have probability 2^-256; drawing again costs nothing and keeps the promise.
        if enc != mac {
            break Ok(KeyPair::new(enc, mac));
        }
    };
    enc.zeroize();
    mac.zeroize();
    drawn
}

fn check_pair(pair: &KeyPair) -> Result<(), EditError> {
    if pair.encryption == pair.mac { Err(EditError::SameKeys) } else { Ok(()) }
}

fn check_pattern(pattern: &str) -> Result<(), EditError> {
    Pattern::new(pattern)
        .map(drop)
        .map_err(|error| EditError::BadPattern { pattern: pattern.to_owned(), error })
}

/// The keys of one channel pattern.
#[derive(Clone, Debug)]
pub struct ChannelKeys {
    pub(crate) pattern: String,
    pub(crate) current: KeyPair,
    pub(crate) previous: Option<KeyPair>,
}

impl ChannelKeys {
    /// The channel pattern these keys govern (`secret/#`).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
    /// The keys senders use.
    pub fn current(&self) -> &KeyPair {
        &self.current
    }
    /// The keys also accepted during a rotation overlap.
    pub fn previous(&self) -> Option<&KeyPair> {
        self.previous.as_ref()
    }
}

/// A keyring as stored in a keyring file: network keys, their previous generation, and
/// per-channel keys by pattern.
///
/// Every key pair in it has distinct encryption and MAC keys, every pattern is a valid
/// subscription pattern, and no pattern appears twice: the constructors and editors check
/// this, so [`to_core`](Self::to_core) only fails on capacity, or in the one-in-2³² case of
/// two different pairs with the same key id. Channel entries keep their
/// order, which matters: on overlap the earlier pattern governs a channel.
///
/// `Debug` shows fingerprints, never keys. Keys are zeroized when dropped.
#[derive(Clone, Debug)]
pub struct KeyringFile {
    pub(crate) network: KeyPair,
    pub(crate) previous: Option<KeyPair>,
    pub(crate) channels: Vec<ChannelKeys>,
    pub(crate) source: Option<PathBuf>,
}

impl KeyringFile {
    /// A keyring with these network keys and nothing else.
    ///
    /// # Errors
    /// [`EditError::SameKeys`].
    pub fn new(network: KeyPair) -> Result<Self, EditError> {
        check_pair(&network)?;
        Ok(Self { network, previous: None, channels: Vec::new(), source: None })
    }

    /// A keyring with fresh network keys from the operating system's RNG.
    ///
    /// # Errors
    /// [`EditError::Random`].
    pub fn generate() -> Result<Self, EditError> {
        Self::new(generate_pair()?)
    }

    /// The current network keys.
    pub fn network(&self) -> &KeyPair {
        &self.network
    }

    /// The previous network keys, accepted during a rotation overlap.
    pub fn previous(&self) -> Option<&KeyPair> {
        self.previous.as_ref()
    }

    /// The channel entries, in order.
    pub fn channels(&self) -> &[ChannelKeys] {
        &self.channels
    }

    /// The channel entry for exactly this pattern.
    pub fn channel(&self, pattern: &str) -> Option<&ChannelKeys> {
        self.channels.iter().find(|c| c.pattern == pattern)
    }

    /// The file this keyring was loaded from, if it was.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Replaces the previous network keys.
    ///
    /// # Errors
    /// [`EditError::SameKeys`].
    pub fn set_previous(&mut self, previous: Option<KeyPair>) -> Result<(), EditError> {
        if let Some(p) = &previous {
            check_pair(p)?;
        }
        self.previous = previous;
        Ok(())
    }

    /// Rotates the network keys to fresh ones: the current keys become the previous ones,
    /// and the keys that were previous are discarded.
    ///
    /// # Errors
    /// [`EditError::Random`]; the keyring is unchanged then.
    pub fn rotate(&mut self) -> Result<(), EditError> {
        self.rotate_to(generate_pair()?)
    }

    /// Rotates the network keys to `next`, as [`rotate`](Self::rotate) does.
    ///
    /// # Errors
    /// [`EditError::SameKeys`]; the keyring is unchanged then.
    pub fn rotate_to(&mut self, next: KeyPair) -> Result<(), EditError> {
        check_pair(&next)?;
        self.previous = Some(core::mem::replace(&mut self.network, next));
        Ok(())
    }

    /// Ends every rotation overlap: no previous keys remain, network or channel.
    pub fn drop_previous(&mut self) {
        self.previous = None;
        for c in &mut self.channels {
            c.previous = None;
        }
    }

    /// Sets the keys of a channel pattern: replaces the entry with exactly this pattern in
    /// place, or appends a new entry.
    ///
    /// # Errors
    /// [`EditError::BadPattern`], [`EditError::SameKeys`].
    pub fn set_channel(
        &mut self,
        pattern: &str,
        current: KeyPair,
        previous: Option<KeyPair>,
    ) -> Result<(), EditError> {
        check_pattern(pattern)?;
        check_pair(&current)?;
        if let Some(p) = &previous {
            check_pair(p)?;
        }
        let entry = ChannelKeys { pattern: pattern.to_owned(), current, previous };
        match self.channels.iter_mut().find(|c| c.pattern == pattern) {
            Some(slot) => *slot = entry,
            None => self.channels.push(entry),
        }
        Ok(())
    }

    /// Appends an entry with fresh keys for a new channel pattern.
    ///
    /// # Errors
    /// [`EditError::BadPattern`], [`EditError::DuplicatePattern`], [`EditError::Random`].
    pub fn add_channel(&mut self, pattern: &str) -> Result<&ChannelKeys, EditError> {
        check_pattern(pattern)?;
        if self.channel(pattern).is_some() {
            return Err(EditError::DuplicatePattern { pattern: pattern.to_owned() });
        }
        let current = generate_pair()?;
        self.channels.push(ChannelKeys { pattern: pattern.to_owned(), current, previous: None });
        Ok(&self.channels[self.channels.len() - 1])
    }

    /// Rotates a channel's keys to fresh ones: current becomes previous.
    ///
    /// # Errors
    /// [`EditError::UnknownChannel`], [`EditError::Random`]; the keyring is unchanged then.
    pub fn rotate_channel(&mut self, pattern: &str) -> Result<(), EditError> {
        if self.channel(pattern).is_none() {
            return Err(EditError::UnknownChannel { pattern: pattern.to_owned() });
        }
        self.rotate_channel_to(pattern, generate_pair()?)
    }

    /// Rotates a channel's keys to `next`: current becomes previous.
    ///
    /// # Errors
    /// [`EditError::UnknownChannel`], [`EditError::SameKeys`]; the keyring is unchanged then.
    pub fn rotate_channel_to(&mut self, pattern: &str, next: KeyPair) -> Result<(), EditError> {
        let Some(entry) = self.channels.iter_mut().find(|c| c.pattern == pattern) else {
            return Err(EditError::UnknownChannel { pattern: pattern.to_owned() });
        };
        check_pair(&next)?;
        entry.previous = Some(core::mem::replace(&mut entry.current, next));
        Ok(())
    }

    /// Removes the entry with exactly this pattern and returns it.
    ///
    /// # Errors
    /// [`EditError::UnknownChannel`].
    pub fn remove_channel(&mut self, pattern: &str) -> Result<ChannelKeys, EditError> {
        match self.channels.iter().position(|c| c.pattern == pattern) {
            Some(i) => Ok(self.channels.remove(i)),
            None => Err(EditError::UnknownChannel { pattern: pattern.to_owned() }),
        }
    }

    /// Public identifiers of every key pair, for display.
    pub fn fingerprints(&self) -> Fingerprints {
        Fingerprints {
            network: Fingerprint::of(&self.network),
            previous: self.previous.as_ref().map(Fingerprint::of),
            channels: self
                .channels
                .iter()
                .map(|c| ChannelFingerprints {
                    pattern: c.pattern.clone(),
                    current: Fingerprint::of(&c.current),
                    previous: c.previous.as_ref().map(Fingerprint::of),
                })
                .collect(),
        }
    }

    /// The core keyring with these keys, ready for a node, with room for `C` channel scopes.
    ///
    /// # Errors
    /// [`Error::TooManyChannels`] if the keyring has more than `C` channel entries;
    /// [`Error::KeyIdCollision`] if two different pairs share a key id.
    pub fn to_core<const C: usize>(&self) -> Result<Keyring<C>, Error> {
        let too_many = || Error::TooManyChannels {
            path: self.source.clone(),
            channels: self.channels.len(),
            capacity: C,
        };
        if self.channels.len() > C {
            return Err(too_many());
        }
        // Only `Full` and `KeyIdCollision` can happen: every pair and pattern was checked
        // when it entered this keyring (the same checks the core makes), and patterns are
        // unique. Key ids are left to the core, which alone defines them.
        let core_err = |e: KeyringError| match e {
            KeyringError::Full => too_many(),
            KeyringError::KeyIdCollision => Error::KeyIdCollision { path: self.source.clone() },
            other => unreachable!("keyring invariant broken: {other}"),
        };
        let mut ring = Keyring::new(&self.network).map_err(core_err)?;
        ring.set_previous(self.previous.as_ref()).map_err(core_err)?;
        for c in &self.channels {
            ring.set_channel(&c.pattern, &c.current, c.previous.as_ref()).map_err(core_err)?;
        }
        Ok(ring)
    }
}

/// The public identifier of a key pair: [`KeyPair::fingerprint`], shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 8]);

impl Fingerprint {
    /// The fingerprint of a key pair.
    pub fn of(pair: &KeyPair) -> Self {
        Self(pair.fingerprint())
    }
}
impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}
impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// Fingerprints of one channel entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelFingerprints {
    /// The channel pattern.
    pub pattern: String,
    /// Fingerprint of the current keys.
    pub current: Fingerprint,
    /// Fingerprint of the previous keys, if any.
    pub previous: Option<Fingerprint>,
}

/// Fingerprints of every key pair of a keyring: what `keys show` prints.
///
/// `Display` writes one line per scope:
///
/// ```text
/// network  3fa4c2d19b0e7781  previous 0c1d2e3f40516273
/// channel  5b6c7d8e9fa0b1c2  secret/#
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fingerprints {
    /// Fingerprint of the current network keys.
    pub network: Fingerprint,
    /// Fingerprint of the previous network keys, if any.
    pub previous: Option<Fingerprint>,
    /// Channel entries, in order.
    pub channels: Vec<ChannelFingerprints>,
}

impl fmt::Display for Fingerprints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network  {}", self.network)?;
        if let Some(p) = self.previous {
            write!(f, "  previous {p}")?;
        }
        for c in &self.channels {
            write!(f, "\nchannel  {}", c.current)?;
            if let Some(p) = c.previous {
                write!(f, "  previous {p}")?;
            }
            write!(f, "  {}", c.pattern)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomq::ChannelError;

    fn pair(e: u8, m: u8) -> KeyPair {
        KeyPair::new([e; 32], [m; 32])
    }

    #[test]
    fn generated_pairs_are_fresh_and_distinct() {
        let a = generate_pair().unwrap();
        let b = generate_pair().unwrap();
        assert_ne!(a.encryption, a.mac);
        assert_ne!(a, b);
        assert_ne!(a.encryption.expose(), &[0; 32]);
    }

    #[test]
    fn edit_error_same_keys() {
        assert_eq!(KeyringFile::new(pair(1, 1)).unwrap_err(), EditError::SameKeys);
        let mut ring = KeyringFile::new(pair(1, 2)).unwrap();
        assert_eq!(ring.set_previous(Some(pair(3, 3))), Err(EditError::SameKeys));
        assert_eq!(ring.rotate_to(pair(4, 4)), Err(EditError::SameKeys));
        assert_eq!(ring.set_channel("a", pair(5, 5), None), Err(EditError::SameKeys));
        assert_eq!(ring.set_channel("a", pair(5, 6), Some(pair(7, 7))), Err(EditError::SameKeys));
        ring.set_channel("a", pair(5, 6), None).unwrap();
        assert_eq!(ring.rotate_channel_to("a", pair(8, 8)), Err(EditError::SameKeys));
        // Refused edits change nothing.
        assert_eq!(ring.network(), &pair(1, 2));
        assert!(ring.previous().is_none());
        assert!(ring.channels()[0].previous().is_none());
        assert_eq!(EditError::SameKeys.to_string(), "the encryption and MAC keys must differ");
    }

    #[test]
    fn edit_error_bad_pattern() {
        let mut ring = KeyringFile::generate().unwrap();
        let err = ring.set_channel("a+", pair(1, 2), None).unwrap_err();
        let EditError::BadPattern { pattern, error } = &err else { panic!("{err:?}") };
        assert_eq!(pattern, "a+");
        assert_eq!(*error, ChannelError::WildcardNotWholeLevel { at: 1 });
        assert!(err.to_string().contains("\"a+\""), "{err}");
        assert!(matches!(ring.add_channel("#/a"), Err(EditError::BadPattern { .. })));
        assert!(ring.channels().is_empty());
    }

    #[test]
    fn edit_error_duplicate_and_unknown_channel() {
        let mut ring = KeyringFile::generate().unwrap();
        let fp = Fingerprint::of(ring.add_channel("a/#").unwrap().current());
        let err = ring.add_channel("a/#").unwrap_err();
        assert_eq!(err, EditError::DuplicatePattern { pattern: "a/#".into() });
        assert!(err.to_string().contains("already"), "{err}");
        assert_eq!(ring.fingerprints().channels[0].current, fp, "duplicate replaced keys");

        let unknown = EditError::UnknownChannel { pattern: "b".into() };
        assert_eq!(ring.rotate_channel("b"), Err(unknown.clone()));
        assert_eq!(ring.rotate_channel_to("b", pair(1, 2)), Err(unknown.clone()));
        assert_eq!(ring.remove_channel("b").unwrap_err(), unknown);
        assert!(unknown.to_string().contains("no keys for channel pattern \"b\""));
        assert_eq!(ring.remove_channel("a/#").unwrap().pattern(), "a/#");
        assert!(ring.channels().is_empty());
    }

    #[test]
    fn set_channel_replaces_in_place_and_keeps_order() {
        let mut ring = KeyringFile::new(pair(1, 2)).unwrap();
        ring.set_channel("a", pair(3, 4), None).unwrap();
        ring.set_channel("b", pair(5, 6), None).unwrap();
        ring.set_channel("a", pair(7, 8), Some(pair(3, 4))).unwrap();
        let fps = ring.fingerprints();
        let patterns: Vec<_> = fps.channels.iter().map(|c| c.pattern.as_str()).collect();
        assert_eq!(patterns, ["a", "b"]);
        assert_eq!(fps.channels[0].current, Fingerprint::of(&pair(7, 8)));
        assert_eq!(fps.channels[0].previous, Some(Fingerprint::of(&pair(3, 4))));
    }

    #[test]
    fn fingerprints_display() {
        let mut ring = KeyringFile::new(pair(1, 2)).unwrap();
        ring.rotate_to(pair(3, 4)).unwrap();
        ring.set_channel("s/#", pair(5, 6), None).unwrap();
        let f = |p: &KeyPair| Fingerprint::of(p).to_string();
        let shown = ring.fingerprints().to_string();
        let want = format!(
            "network  {}  previous {}\nchannel  {}  s/#",
            f(&pair(3, 4)),
            f(&pair(1, 2)),
            f(&pair(5, 6))
        );
        assert_eq!(shown, want);
        assert_eq!(f(&pair(1, 2)).len(), 16);
    }
}
