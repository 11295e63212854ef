//! Keys: secret key material, prepared crypto state, and the keyring the engine consults.
//!
//! A [`KeyPair`] is an AES-256 encryption key and a distinct HMAC-SHA256 key. A [`KeySet`]
//! is a key pair *prepared* once: AES round keys for both directions, the HMAC inner and
//! outer states, and the keyed hash that derives channel ids. Packets never re-run a key
//! schedule.
//!
//! A keyring ([`KeyLookup`]) holds a network key pair and optional per-channel key pairs,
//! each selected by a channel pattern: these act as a cryptographic ACL, since without a
//! channel's keys a node can neither read nor forge its packets. Every scope may hold a
//! *previous* key set next to the *current* one during rotation: receivers accept both,
//! senders use the current one.
//!
//! Derived keys (HMAC-SHA256 under the pair's MAC key, domain-separated by a label):
//! - channel-id key = `HMAC(mac_key, "nomq/v2/channel-id")`, taken from the network key
//!   pair (channel ids must be computable by every member, whatever its channel keys);
//! - fingerprint = first 8 bytes of `HMAC(mac_key, "nomq/v2/fingerprint" ‖ enc_key)`;
//!   safe to show, since it reveals nothing usable about either key;
//! - key id = first 4 bytes of `HMAC(mac_key, "nomq/v3/key-id" ‖ enc_key)`, carried in
//!   every packet's header so a receiver MACs only the key set that sealed it. A
//!   [`Keyring`] refuses two different pairs with one key id
//!   ([`KeyringError::KeyIdCollision`]), so a genuine packet always finds its keys.

use crate::channel::{CHANNEL_ID_CONTEXT, ChannelId, ChannelName, MAX_NAME_LEN, Pattern};
use crate::wire::KeyId;
use aes::{Aes256Dec, Aes256Enc};
use core::fmt;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// A 256-bit secret, zeroized on drop, compared in constant time, never printed.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// Wraps raw key bytes.
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The raw bytes. Handle with care.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}
impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}
impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}
impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for SecretKey {}

/// An encryption key and a MAC key. They must differ.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    /// AES-256-CBC key.
    pub encryption: SecretKey,
    /// HMAC-SHA256 key.
    pub mac: SecretKey,
}

impl KeyPair {
    /// A key pair from raw bytes.
    pub const fn new(encryption: [u8; 32], mac: [u8; 32]) -> Self {
        Self { encryption: SecretKey::new(encryption), mac: SecretKey::new(mac) }
    }
    /// A fresh key pair from a CSPRNG.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut e = [0; 32];
        let mut m = [0; 32];
        rng.fill_bytes(&mut e);
        rng.fill_bytes(&mut m);
        let kp = Self::new(e, m);
        e.zeroize();
        m.zeroize();
        kp
    }
    /// A short public identifier of this pair (see the module docs).
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut h = mac_for(self.mac.expose());
        h.update(b"nomq/v2/fingerprint");
        h.update(self.encryption.expose());
        let full = h.finalize().into_bytes();
        let mut fp = [0; 8];
        fp.copy_from_slice(&full[..8]);
        fp
    }
}
impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fp = self.fingerprint();
        write!(f, "KeyPair(fingerprint ")?;
        for b in fp {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts` under `key` (any length).
///
/// The same primitive the envelope uses, exposed for known-answer tests and derivations.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes any key length"),
    };
    for p in parts {
        h.update(p);
    }
    h.finalize().into_bytes().into()
}

fn mac_for(key: &[u8; 32]) -> HmacSha256 {
    // A 32-byte key is always a valid HMAC key.
    // HMAC accepts keys of any length; 32 bytes is never an error.
    match <HmacSha256 as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes any key length"),
    }
}

/// A key pair prepared for use: cipher round keys and HMAC states computed once.
///
/// Holds secret state; the underlying crates zeroize it on drop.
#[derive(Clone)]
pub struct KeySet {
    pub(crate) enc: Aes256Enc,
    pub(crate) dec: Aes256Dec,
    pub(crate) mac: HmacSha256,
    id: HmacSha256,
    fingerprint: [u8; 8],
    key_id: KeyId,
}

/// Label of the key id derivation.
const KEY_ID_LABEL: &[u8] = b"nomq/v3/key-id";

impl KeySet {
    /// Prepares a key pair.
    pub fn new(pair: &KeyPair) -> Self {
        let k = pair.encryption.expose();
        let mut id_key = mac_for(pair.mac.expose());
        id_key.update(b"nomq/v2/channel-id");
        let mut idk: [u8; 32] = id_key.finalize().into_bytes().into();
        let id = mac_for(&idk);
        idk.zeroize();
        let mac = mac_for(pair.mac.expose());
        let mut kid = mac.clone();
        kid.update(KEY_ID_LABEL);
        kid.update(k);
        let full = kid.finalize().into_bytes();
        let key_id = KeyId(u32::from_be_bytes([full[0], full[1], full[2], full[3]]));
        Self {
            enc: Aes256Enc::new(k.into()),
            dec: Aes256Dec::new(k.into()),
            mac,
            id,
            fingerprint: pair.fingerprint(),
            key_id,
        }
    }
    /// The fingerprint of the pair this was prepared from.
    pub fn fingerprint(&self) -> [u8; 8] {
        self.fingerprint
    }
    /// The key id of the pair this was prepared from: what [`crate::envelope::seal_in_place`]
    /// writes into header bytes 51–54 (see the module docs for its definition).
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }
    /// Whether `other` was prepared from a different pair that has the same key id, which
    /// would make the key id ambiguous. Fingerprints tell pairs apart (a different
    /// derivation, 64 bits).
    fn clashes_with(&self, other: &KeySet) -> bool {
        self.key_id == other.key_id && self.fingerprint != other.fingerprint
    }
    /// The keyed id of a channel name or pattern string under this key set.
    pub fn channel_id(&self, name: &str) -> ChannelId {
        let mut h = self.id.clone();
        h.update(CHANNEL_ID_CONTEXT);
        h.update(name.as_bytes());
        let full = h.finalize().into_bytes();
        let mut id = [0; 16];
        id.copy_from_slice(&full[..16]);
        ChannelId(id)
    }
}
impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySet({:02x?})", self.fingerprint)
    }
}

/// Which key set of a scope verified a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Generation {
    /// The current keys.
    Current,
    /// The previous keys, accepted during a rotation overlap.
    Previous,
}

/// The keys of one scope: the network, or one channel pattern.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    /// `None` for the network scope; the channel pattern otherwise.
    pub pattern: Option<Pattern<'a>>,
    /// Keys senders use.
    pub current: &'a KeySet,
    /// Keys also accepted during rotation.
    pub previous: Option<&'a KeySet>,
}

/// The most key sets [`KeyLookup::find_key`] returns, and so the most MACs a receiver
/// computes for one datagram.
pub const MAX_KEY_MATCHES: usize = 2;

/// Key sets that carry one key id, from [`KeyLookup::find_key`]: at most
/// [`MAX_KEY_MATCHES`], in scope order, each with the scope and generation it belongs to.
pub type KeyMatches<'a> = [Option<(ScopeIndex, Generation, &'a KeySet)>; MAX_KEY_MATCHES];

/// Index of a scope in a [`KeyLookup`]: 0 is the network, `1..` are channel scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ScopeIndex(pub u8);

impl ScopeIndex {
    /// The network scope.
    pub const NETWORK: ScopeIndex = ScopeIndex(0);
}

/// Where the engine gets keys. Implement it to back keys with a file, a map, a vault.
///
/// Scope 0 is the network; scopes `1..scope_count()` are channel scopes, tried in order,
/// the first whose pattern matches a name governing that name.
pub trait KeyLookup {
    /// Number of scopes, at least 1.
    fn scope_count(&self) -> usize;
    /// One scope; `None` if `i` is out of range.
    fn scope(&self, i: ScopeIndex) -> Option<Scope<'_>>;

    /// The network scope.
    fn network(&self) -> Scope<'_> {
        // Invariant of the trait: scope 0 always exists.
        match self.scope(ScopeIndex::NETWORK) {
            Some(s) => s,
            None => unreachable!("KeyLookup without a network scope"),
        }
    }

    /// The scope that governs `name`: the first channel scope whose pattern matches it,
    /// else the network.
    fn scope_for(&self, name: ChannelName<'_>) -> ScopeIndex {
        for i in 1..self.scope_count().min(256) {
            let idx = ScopeIndex(i as u8);
            if let Some(Scope { pattern: Some(p), .. }) = self.scope(idx)
                && p.matches(name)
            {
                return idx;
            }
        }
        ScopeIndex::NETWORK
    }

    /// The scope a subscription to `pattern` is announced under: the first channel
    /// scope whose pattern covers it (every name it matches, that scope's pattern matches
    /// too), else the network. So only holders of a channel scope's keys learn who
    /// subscribes within it; a pattern no single scope covers (`#`) is announced to all.
    fn scope_for_pattern(&self, pattern: Pattern<'_>) -> ScopeIndex {
        for i in 1..self.scope_count().min(256) {
            let idx = ScopeIndex(i as u8);
            if let Some(Scope { pattern: Some(p), .. }) = self.scope(idx)
                && p.covers(pattern)
            {
                return idx;
            }
        }
        ScopeIndex::NETWORK
    }

    /// The channel id of `name` (under the current network keys).
    fn channel_id(&self, name: &str) -> ChannelId {
        self.network().current.channel_id(name)
    }

    /// The first [`MAX_KEY_MATCHES`] key sets whose key id is `id`, in the order of
    /// [`crate::envelope::verify`] (scopes in order, current before previous). Only
    /// compares ids: no MAC is computed. Empty when no key set has that id.
    fn find_key(&self, id: KeyId) -> KeyMatches<'_> {
        let sets = (0..self.scope_count().min(256)).flat_map(|i| {
            let idx = ScopeIndex(i as u8);
            self.scope(idx).into_iter().flat_map(move |s| {
                core::iter::once((idx, Generation::Current, s.current))
                    .chain(s.previous.map(|p| (idx, Generation::Previous, p)))
            })
        });
        first_matches(id, sets)
    }
}

/// The first [`MAX_KEY_MATCHES`] of `sets` whose key id is `id`; stops looking then.
fn first_matches<'a>(
    id: KeyId,
    sets: impl Iterator<Item = (ScopeIndex, Generation, &'a KeySet)>,
) -> KeyMatches<'a> {
    let mut found: KeyMatches<'a> = [None; MAX_KEY_MATCHES];
    for (slot, m) in found.iter_mut().zip(sets.filter(|(_, _, ks)| ks.key_id() == id)) {
        *slot = Some(m);
    }
    found
}

/// Why a keyring refused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum KeyringError {
    /// The keyring holds as many channel scopes as it can.
    Full,
    /// The pattern is not a valid subscription pattern.
    BadPattern(crate::channel::ChannelError),
    /// Encryption and MAC keys are equal.
    SameKeys,
    /// The pair's key id equals that of a different pair the keyring holds (any scope,
    /// current or previous): a receiver could not tell them apart by the header. About one
    /// chance in 2³² per pair of pairs; generate a new pair.
    KeyIdCollision,
}
impl fmt::Display for KeyringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("keyring has no room for another channel key"),
            Self::BadPattern(e) => write!(f, "channel key pattern: {e}"),
            Self::SameKeys => f.write_str("encryption and MAC keys must differ"),
            Self::KeyIdCollision => f.write_str(
                "key id collides with another key pair in the keyring; generate a new pair",
            ),
        }
    }
}
impl core::error::Error for KeyringError {}

struct ChannelScope {
    pattern: heapless::String<MAX_NAME_LEN>,
    current: KeySet,
    previous: Option<KeySet>,
}

/// A keyring in fixed memory: network keys plus up to `C` channel scopes.
pub struct Keyring<const C: usize = 4> {
    current: KeySet,
    previous: Option<KeySet>,
    channels: heapless::Vec<ChannelScope, C>,
}

impl<const C: usize> fmt::Debug for Keyring<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("network", &self.current)
            .field("previous", &self.previous)
            .field("channels", &self.channels.len())
            .finish()
    }
}

fn check_pair(p: &KeyPair) -> Result<(), KeyringError> {
    if p.encryption == p.mac {
        return Err(KeyringError::SameKeys);
    }
    Ok(())
}

impl<const C: usize> Keyring<C> {
    /// A keyring with network keys only.
    ///
    /// # Errors
    /// [`KeyringError::SameKeys`] if the encryption and MAC keys are equal.
    pub fn new(network: &KeyPair) -> Result<Self, KeyringError> {
        check_pair(network)?;
        Ok(Self { current: KeySet::new(network), previous: None, channels: heapless::Vec::new() })
    }

    /// Makes `next` the network's current keys and keeps the old current as previous.
    ///
    /// # Errors
    /// [`KeyringError::SameKeys`], [`KeyringError::KeyIdCollision`]; the keyring is then
    /// unchanged.
    pub fn rotate(&mut self, next: &KeyPair) -> Result<(), KeyringError> {
        check_pair(next)?;
        let next = KeySet::new(next);
        // The old previous keys go; everything else stays.
        self.check_unique(&next, false, None)?;
        let old = core::mem::replace(&mut self.current, next);
        self.previous = Some(old);
        Ok(())
    }

    /// Sets the network's previous keys explicitly (loaded from a file, say).
    ///
    /// # Errors
    /// [`KeyringError::SameKeys`], [`KeyringError::KeyIdCollision`]; the keyring is then
    /// unchanged.
    pub fn set_previous(&mut self, prev: Option<&KeyPair>) -> Result<(), KeyringError> {
        let prev = match prev {
            Some(p) => {
                check_pair(p)?;
                let ks = KeySet::new(p);
                self.check_unique(&ks, false, None)?;
                Some(ks)
            }
            None => None,
        };
        self.previous = prev;
        Ok(())
    }

    /// Refuses `new` if its key id is that of a different pair held here, leaving out the
    /// network's previous keys unless `network_previous`, and the channel scope of
    /// `replacing`: the key sets the change at hand replaces.
    fn check_unique(
        &self,
        new: &KeySet,
        network_previous: bool,
        replacing: Option<&str>,
    ) -> Result<(), KeyringError> {
        let network = core::iter::once(&self.current)
            .chain(self.previous.iter().filter(|_| network_previous));
        let channels = self
            .channels
            .iter()
            .filter(|c| Some(c.pattern.as_str()) != replacing)
            .flat_map(|c| core::iter::once(&c.current).chain(c.previous.iter()));
        if network.chain(channels).any(|held| held.clashes_with(new)) {
            return Err(KeyringError::KeyIdCollision);
        }
        Ok(())
    }

    /// Ends the rotation overlap: previous keys are no longer accepted.
    pub fn drop_previous(&mut self) {
        self.previous = None;
        for c in &mut self.channels {
            c.previous = None;
        }
    }

    /// Adds (or replaces) the keys of a channel pattern. Earlier patterns win on overlap.
    ///
    /// # Errors
    /// [`KeyringError::BadPattern`], [`KeyringError::SameKeys`],
    /// [`KeyringError::KeyIdCollision`] (between `current` and `previous`, or with any key
    /// set of another scope), [`KeyringError::Full`]; the keyring is then unchanged.
    pub fn set_channel(
        &mut self,
        pattern: &str,
        current: &KeyPair,
        previous: Option<&KeyPair>,
    ) -> Result<(), KeyringError> {
        Pattern::new(pattern).map_err(KeyringError::BadPattern)?;
        check_pair(current)?;
        if let Some(p) = previous {
            check_pair(p)?;
        }
        let entry = ChannelScope {
            pattern: heapless::String::try_from(pattern).map_err(|_| KeyringError::Full)?,
            current: KeySet::new(current),
            previous: previous.map(KeySet::new),
        };
        if let Some(prev) = &entry.previous
            && prev.clashes_with(&entry.current)
        {
            return Err(KeyringError::KeyIdCollision);
        }
        for ks in core::iter::once(&entry.current).chain(entry.previous.iter()) {
            self.check_unique(ks, true, Some(pattern))?;
        }
        if let Some(slot) = self.channels.iter_mut().find(|c| c.pattern == pattern) {
            *slot = entry;
            return Ok(());
        }
        self.channels.push(entry).map_err(|_| KeyringError::Full)
    }
}

impl<const C: usize> KeyLookup for Keyring<C> {
    fn scope_count(&self) -> usize {
        1 + self.channels.len()
    }
    fn scope(&self, i: ScopeIndex) -> Option<Scope<'_>> {
        match i.0 {
            0 => Some(Scope {
                pattern: None,
                current: &self.current,
                previous: self.previous.as_ref(),
            }),
            n => self.channels.get(usize::from(n) - 1).map(|c| Scope {
                // Validated on insertion.
                pattern: Pattern::new(c.pattern.as_str()).ok(),
                current: &c.current,
                previous: c.previous.as_ref(),
            }),
        }
    }
    /// As the default, over the fields directly: [`KeyLookup::scope`] re-validates each
    /// channel pattern, which would cost more than the comparisons.
    fn find_key(&self, id: KeyId) -> KeyMatches<'_> {
        let network = core::iter::once((ScopeIndex::NETWORK, Generation::Current, &self.current))
            .chain(self.previous.iter().map(|p| (ScopeIndex::NETWORK, Generation::Previous, p)));
        // A ScopeIndex holds at most 255 channel scopes; `take` keeps the cast exact.
        let channels = self.channels.iter().take(255).enumerate().flat_map(|(i, c)| {
            let idx = ScopeIndex(i as u8 + 1);
            core::iter::once((idx, Generation::Current, &c.current))
                .chain(c.previous.iter().map(move |p| (idx, Generation::Previous, p)))
        });
        first_matches(id, network.chain(channels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_compared() {
        let a = KeyPair::new([1; 32], [2; 32]);
        let s = alloc_fmt(&a.encryption);
        assert!(!s.contains("1,"), "{s}");
        assert!(s.contains("redacted"));
        assert_eq!(a, KeyPair::new([1; 32], [2; 32]));
        assert_ne!(a, KeyPair::new([1; 32], [3; 32]));
        assert_ne!(a.fingerprint(), KeyPair::new([1; 32], [3; 32]).fingerprint());
    }

    fn alloc_fmt(k: &SecretKey) -> heapless::String<64> {
        let mut s = heapless::String::new();
        core::fmt::write(&mut s, format_args!("{k:?}")).unwrap();
        s
    }

    #[test]
    fn scopes_and_rotation() {
        let mut ring: Keyring<2> = Keyring::new(&KeyPair::new([1; 32], [2; 32])).unwrap();
        assert_eq!(
            Keyring::<2>::new(&KeyPair::new([1; 32], [1; 32])).unwrap_err(),
            KeyringError::SameKeys
        );
        ring.set_channel("secret/#", &KeyPair::new([3; 32], [4; 32]), None).unwrap();
        ring.set_channel("ops/+", &KeyPair::new([5; 32], [6; 32]), None).unwrap();
        assert_eq!(
            ring.set_channel("more", &KeyPair::new([7; 32], [8; 32]), None),
            Err(KeyringError::Full)
        );
        assert!(matches!(
            ring.set_channel("bad#", &KeyPair::new([7; 32], [8; 32]), None),
            Err(KeyringError::BadPattern(_))
        ));
        let n = |s| ChannelName::new(s).unwrap();
        assert_eq!(ring.scope_for(n("secret/a/b")), ScopeIndex(1));
        assert_eq!(ring.scope_for(n("ops/x")), ScopeIndex(2));
        assert_eq!(ring.scope_for(n("ops/x/y")), ScopeIndex::NETWORK);
        let id1 = ring.channel_id("a/b");
        assert_ne!(id1, ring.channel_id("a/c"));
        ring.rotate(&KeyPair::new([9; 32], [10; 32])).unwrap();
        assert_ne!(id1, ring.channel_id("a/b"));
        assert!(ring.network().previous.is_some());
        ring.drop_previous();
        assert!(ring.network().previous.is_none());
    }

    /// Two different pairs with one key id, found by search: encryption keys are a
    /// big-endian counter (2440 and 2729) then zeros, the MAC key `0x55` throughout.
    fn colliding() -> (KeyPair, KeyPair) {
        let enc = |i: u32| {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            k
        };
        (KeyPair::new(enc(2440), [0x55; 32]), KeyPair::new(enc(2729), [0x55; 32]))
    }

    #[test]
    fn key_id_follows_its_definition() {
        let pair = KeyPair::new([1; 32], [2; 32]);
        let full = hmac_sha256(&[2; 32], &[b"nomq/v3/key-id", &[1; 32]]);
        let ks = KeySet::new(&pair);
        assert_eq!(ks.key_id(), KeyId(u32::from_be_bytes([full[0], full[1], full[2], full[3]])));
        assert_ne!(ks.key_id(), KeySet::new(&KeyPair::new([1; 32], [3; 32])).key_id());
        let (a, b) = colliding();
        assert_ne!(a, b);
        assert_eq!(KeySet::new(&a).key_id(), KeyId(0x1621_27f1));
        assert_eq!(KeySet::new(&b).key_id(), KeyId(0x1621_27f1));
    }

    #[test]
    fn keyring_refuses_key_id_collisions() {
        let (a, b) = colliding();
        let other = |x: u8| KeyPair::new([x; 32], [x ^ 0xff; 32]);
        let mut ring: Keyring<2> = Keyring::new(&a).unwrap();
        assert_eq!(ring.rotate(&b), Err(KeyringError::KeyIdCollision));
        assert_eq!(ring.set_previous(Some(&b)), Err(KeyringError::KeyIdCollision));
        assert_eq!(ring.set_channel("c/#", &b, None), Err(KeyringError::KeyIdCollision));
        assert_eq!(ring.set_channel("c/#", &other(1), Some(&b)), Err(KeyringError::KeyIdCollision));
        // Refusals leave the keyring as it was.
        assert_eq!(ring.scope_count(), 1);
        assert!(ring.network().previous.is_none());
        assert_eq!(ring.network().current.key_id(), KeySet::new(&a).key_id());

        // Within one channel scope, and across channel scopes.
        let mut ring: Keyring<2> = Keyring::new(&other(1)).unwrap();
        assert_eq!(ring.set_channel("c/#", &a, Some(&b)), Err(KeyringError::KeyIdCollision));
        ring.set_channel("c/#", &a, None).unwrap();
        assert_eq!(ring.set_channel("d/#", &b, None), Err(KeyringError::KeyIdCollision));
        assert_eq!(ring.rotate(&b), Err(KeyringError::KeyIdCollision));
        // Replacing a scope's keys does not collide with the keys it replaces.
        ring.set_channel("c/#", &b, Some(&other(2))).unwrap();
        assert_eq!(ring.set_channel("d/#", &a, None), Err(KeyringError::KeyIdCollision));

        // The network's previous keys are dropped by a rotation, so they do not collide.
        let mut ring: Keyring<0> = Keyring::new(&other(3)).unwrap();
        ring.set_previous(Some(&a)).unwrap();
        assert_eq!(ring.set_previous(Some(&b)), Ok(()));
        ring.set_previous(Some(&a)).unwrap();
        ring.rotate(&b).unwrap();
        assert_eq!(
            ring.network().previous.map(KeySet::key_id),
            Some(KeySet::new(&other(3)).key_id())
        );
    }

    #[test]
    fn the_same_pair_again_is_no_collision() {
        let a = KeyPair::new([1; 32], [2; 32]);
        let mut ring: Keyring<2> = Keyring::new(&a).unwrap();
        ring.rotate(&a).unwrap();
        ring.set_previous(Some(&a)).unwrap();
        ring.set_channel("c/#", &a, Some(&a)).unwrap();
        ring.set_channel("c/#", &a, None).unwrap();
        // Four key sets share the id; find_key stops at two, in scope order.
        let id = KeySet::new(&a).key_id();
        ring.set_channel("c/#", &a, Some(&a)).unwrap();
        let found = ring.find_key(id);
        assert_eq!(
            found.map(|m| m.map(|(s, g, _)| (s, g))),
            [
                Some((ScopeIndex::NETWORK, Generation::Current)),
                Some((ScopeIndex::NETWORK, Generation::Previous))
            ]
        );
    }

    /// A lookup with only the required methods: `find_key` is the trait's default.
    struct Plain<'a, const C: usize>(&'a Keyring<C>);
    impl<const C: usize> KeyLookup for Plain<'_, C> {
        fn scope_count(&self) -> usize {
            self.0.scope_count()
        }
        fn scope(&self, i: ScopeIndex) -> Option<Scope<'_>> {
            self.0.scope(i)
        }
    }

    #[test]
    fn default_find_key_agrees_with_the_keyring() {
        let k = |x: u8| KeyPair::new([x; 32], [x ^ 0xff; 32]);
        let mut ring: Keyring<3> = Keyring::new(&k(1)).unwrap();
        ring.set_previous(Some(&k(2))).unwrap();
        ring.set_channel("a/#", &k(3), Some(&k(4))).unwrap();
        ring.set_channel("b/#", &k(5), None).unwrap();
        ring.set_channel("c/#", &k(1), Some(&k(1))).unwrap();
        let strip = |m: KeyMatches<'_>| m.map(|m| m.map(|(s, g, ks)| (s, g, ks.key_id())));
        for x in 1..=6 {
            let id = KeySet::new(&k(x)).key_id();
            assert_eq!(strip(Plain(&ring).find_key(id)), strip(ring.find_key(id)), "pair {x}");
        }
        // The same pair three times: the first two, in scope order.
        let id = KeySet::new(&k(1)).key_id();
        assert_eq!(
            strip(ring.find_key(id)),
            [
                Some((ScopeIndex(0), Generation::Current, id)),
                Some((ScopeIndex(3), Generation::Current, id))
            ]
        );
    }

    #[test]
    fn find_key_compares_ids_in_scope_order() {
        let k = |x: u8| KeyPair::new([x; 32], [x ^ 0xff; 32]);
        let mut ring: Keyring<3> = Keyring::new(&k(1)).unwrap();
        ring.set_previous(Some(&k(2))).unwrap();
        ring.set_channel("a/#", &k(3), Some(&k(4))).unwrap();
        ring.set_channel("b/#", &k(5), None).unwrap();
        let id = |x: u8| KeySet::new(&k(x)).key_id();
        let only = |x: u8| ring.find_key(id(x)).map(|m| m.map(|(s, g, ks)| (s, g, ks.key_id())));
        assert_eq!(only(1), [Some((ScopeIndex(0), Generation::Current, id(1))), None]);
        assert_eq!(only(2), [Some((ScopeIndex(0), Generation::Previous, id(2))), None]);
        assert_eq!(only(4), [Some((ScopeIndex(1), Generation::Previous, id(4))), None]);
        assert_eq!(only(5), [Some((ScopeIndex(2), Generation::Current, id(5))), None]);
        assert_eq!(only(6), [None, None]);
    }
}
