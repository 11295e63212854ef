//! The crypto envelope: AES-256-CBC with PKCS#7, then HMAC-SHA256 over header and
//! ciphertext (encrypt-then-MAC, RFC 2104 HMAC under a key distinct from the cipher key).
//!
//! [`open`] works in the order the design fixes: the cheap structural checks of
//! [`Packet::check`] ([`check`]), then a constant-time MAC verification under the key sets
//! whose key id is the header's, at most [`MAX_KEY_MATCHES`] of them ([`verify_mac`]),
//! then decryption in place, then unpadding. A forged datagram thus costs a receiver at
//! most two HMACs, whatever the size of its keyring, and none when no key set carries its
//! key id. Nothing is decrypted before the MAC has
//! been verified, so padding errors carry no information to an attacker. No step allocates
//! and no input makes any step panic.

use crate::keys::{Generation, KeyLookup, KeySet, MAX_KEY_MATCHES, ScopeIndex};
use crate::wire::{BLOCK_LEN, HEADER_LEN, Header, MAC_LEN, Packet, WireError};
use aes::cipher::array::Array;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt};
use core::fmt;
use hmac::Mac;

/// Why a datagram was not accepted by [`open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum OpenError {
    /// A structural check failed.
    Wire(WireError),
    /// No key set with the header's key id verifies the MAC (or none has that key id):
    /// tampered, or sealed under keys this keyring does not hold.
    BadMac,
    /// The MAC verified but PKCS#7 padding is malformed (a sender bug, never an attacker).
    BadPadding,
}
impl From<WireError> for OpenError {
    fn from(e: WireError) -> Self {
        Self::Wire(e)
    }
}
impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wire(e) => fmt::Display::fmt(e, f),
            Self::BadMac => {
                f.write_str("authentication failed (tampered, or sealed with another key)")
            }
            Self::BadPadding => f.write_str("bad PKCS#7 padding"),
        }
    }
}
impl core::error::Error for OpenError {}

/// Why [`seal`] could not build a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SealError {
    /// The output buffer cannot hold header, padded ciphertext and MAC.
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
    },
    /// The padded plaintext exceeds the maximum payload.
    TooLarge {
        /// Padded length.
        len: usize,
        /// The limit.
        max: usize,
    },
}
impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BufferTooSmall { needed } => {
                write!(f, "buffer too small: packet needs {needed} bytes")
            }
            Self::TooLarge { len, max } => {
                write!(f, "payload of {len} bytes (padded) exceeds the maximum of {max}")
            }
        }
    }
}
impl core::error::Error for SealError {}

/// Ciphertext length for a plaintext of `len` bytes: PKCS#7 always adds 1 to 16 bytes.
pub const fn padded_len(len: usize) -> usize {
    (len / BLOCK_LEN + 1) * BLOCK_LEN
}

/// Largest plaintext whose packet has a ciphertext of at most `max_payload` bytes.
pub const fn max_plaintext(max_payload: usize) -> usize {
    (max_payload / BLOCK_LEN) * BLOCK_LEN - 1
}

/// Whole packet length for a plaintext of `len` bytes.
pub const fn sealed_len(len: usize) -> usize {
    HEADER_LEN + padded_len(len) + MAC_LEN
}

/// Seals a packet whose plaintext the caller already wrote at
/// `buf[HEADER_LEN..HEADER_LEN + plaintext_len]`: pads, encrypts in place with `iv`,
/// writes `header` (its `iv`, `key_id` and `payload_len` are replaced by `iv`,
/// `keys.key_id()` and the ciphertext length) and appends the MAC.
/// Returns the packet length. [`prepare_in_place`] then [`seal_prepared`].
///
/// # Errors
/// [`SealError::TooLarge`] past `max_payload`, [`SealError::BufferTooSmall`].
pub fn seal_in_place(
    keys: &KeySet,
    header: &Header,
    iv: [u8; 16],
    buf: &mut [u8],
    plaintext_len: usize,
    max_payload: usize,
) -> Result<usize, SealError> {
    let total = prepare_in_place(keys, header, iv, buf, plaintext_len, max_payload)?;
    seal_one(keys, &mut buf[..total]);
    Ok(total)
}

/// The first half of [`seal_in_place`]: pads the plaintext at
/// `buf[HEADER_LEN..HEADER_LEN + plaintext_len]` and writes the header, with `iv`,
/// `keys.key_id()` and the ciphertext length. Returns the packet length. The packet is
/// **still plaintext** until [`seal_prepared`] encrypts and MACs it: a sender that
/// prepares several packets of one datagram seals them together, which lets the cipher
/// work on several packets at once.
///
/// # Errors
/// As [`seal_in_place`].
pub fn prepare_in_place(
    keys: &KeySet,
    header: &Header,
    iv: [u8; 16],
    buf: &mut [u8],
    plaintext_len: usize,
    max_payload: usize,
) -> Result<usize, SealError> {
    let n = padded_len(plaintext_len);
    if n > max_payload || n > usize::from(u16::MAX) {
        return Err(SealError::TooLarge { len: n, max: max_payload });
    }
    let total = HEADER_LEN + n + MAC_LEN;
    if buf.len() < total {
        return Err(SealError::BufferTooSmall { needed: total });
    }
    let buf = &mut buf[..total];
    let pad = (n - plaintext_len) as u8; // 1..=16
    buf[HEADER_LEN + plaintext_len..HEADER_LEN + n].fill(pad);

    let mut h = *header;
    h.iv = iv;
    h.key_id = keys.key_id();
    h.payload_len = n as u16;
    h.emit(&mut Packet::new_unchecked(&mut *buf));
    Ok(total)
}

/// Whether the AES backend is a hardware unit that takes [`LANES`] blocks in one
/// pipelined pass but fewer one by one (AES-NI, ARMv8): there packets are encrypted side
/// by side and a short run of blocks is padded to a full one. Elsewhere (an MCU's
/// bitsliced software backend) neither is done: the code it would take, 6 KB of flash,
/// buys little there.
pub(crate) const PIPELINED: bool =
    cfg!(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64"));

/// Packets encrypted side by side by [`seal_prepared`]: the number of blocks AES-NI and
/// the ARMv8 unit take in one pipelined pass.
const LANES: usize = 8;

/// The second half of [`seal_in_place`]: encrypts and MACs `packets`, one or more
/// packets back to back that [`prepare_in_place`] prepared under `keys` (each read by
/// its header's payload length). CBC chains one block after the other within a packet,
/// so one packet alone keeps the cipher waiting on each block; packets are independent,
/// so with an AES unit ([`PIPELINED`]) up to 8 are encrypted together, block `j` of each
/// in one call to the cipher. The result is byte for byte that of sealing each packet on
/// its own.
///
/// # Errors
/// [`SealError::BufferTooSmall`] if `packets` does not end exactly with a packet (a
/// header's payload length points past it, or is not a multiple of 16): nothing was
/// sealed from that packet on, and what was sealed before it stays sealed.
pub fn seal_prepared(keys: &KeySet, mut packets: &mut [u8]) -> Result<(), SealError> {
    while !packets.is_empty() {
        let mut lanes: heapless::Vec<&mut [u8], LANES> = heapless::Vec::new();
        while !packets.is_empty() && !lanes.is_full() {
            let n = packets
                .get(crate::wire::field::PAYLOAD_LEN)
                .map_or(usize::MAX, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
            let total = HEADER_LEN.saturating_add(n).saturating_add(MAC_LEN);
            if !n.is_multiple_of(BLOCK_LEN) || total > packets.len() {
                seal_lanes(keys, &mut lanes);
                return Err(SealError::BufferTooSmall { needed: total });
            }
            let (packet, rest) = core::mem::take(&mut packets).split_at_mut(total);
            let _ = lanes.push(packet);
            packets = rest;
        }
        seal_lanes(keys, &mut lanes);
    }
    Ok(())
}

/// Encrypts the prepared packets of `lanes` side by side, then MACs each.
fn seal_lanes(keys: &KeySet, lanes: &mut [&mut [u8]]) {
    if !PIPELINED || lanes.len() == 1 {
        for p in lanes.iter_mut() {
            seal_one(keys, p);
        }
        return;
    }
    cbc_encrypt_lanes(&keys.enc, lanes);
    for p in lanes.iter_mut() {
        append_mac(keys, p);
    }
}

/// Encrypts and MACs one prepared packet, exactly `packet` long.
pub(crate) fn seal_one(keys: &KeySet, packet: &mut [u8]) {
    let mut iv = aes::Block::default();
    iv.copy_from_slice(&packet[crate::wire::field::IV]);
    let ct_end = packet.len() - MAC_LEN;
    let (blocks, _) = Array::slice_as_chunks_mut(&mut packet[HEADER_LEN..ct_end]);
    cbc_encrypt(&keys.enc, &iv, blocks);
    append_mac(keys, packet);
}

/// Writes the MAC of a packet's header and ciphertext into its last 32 bytes.
fn append_mac(keys: &KeySet, packet: &mut [u8]) {
    let (covered, tag) = packet.split_at_mut(packet.len() - MAC_LEN);
    let mut mac = keys.mac.clone();
    mac.update(covered);
    tag.copy_from_slice(&mac.finalize().into_bytes());
}

/// Seals `plaintext` into `out` with an IV drawn from `rng`. Returns the packet length.
///
/// # Errors
/// As [`seal_in_place`].
pub fn seal<R: rand_core::CryptoRng + ?Sized>(
    keys: &KeySet,
    rng: &mut R,
    header: &Header,
    plaintext: &[u8],
    out: &mut [u8],
    max_payload: usize,
) -> Result<usize, SealError> {
    let needed = sealed_len(plaintext.len());
    if out.len() < needed {
        return Err(SealError::BufferTooSmall { needed });
    }
    out[HEADER_LEN..HEADER_LEN + plaintext.len()].copy_from_slice(plaintext);
    let mut iv = [0; 16];
    rng.fill_bytes(&mut iv);
    seal_in_place(keys, header, iv, out, plaintext.len(), max_payload)
}

/// A verified, decrypted packet.
#[derive(Debug)]
pub struct Opened<'a> {
    /// The header.
    pub header: Header,
    /// The plaintext, decrypted in place inside the datagram buffer.
    pub plaintext: &'a [u8],
    /// The key scope whose keys verified the MAC.
    pub scope: ScopeIndex,
    /// Current or previous keys of that scope.
    pub generation: Generation,
}

#[cfg(test)]
std::thread_local! {
    /// MACs this thread has verified, for tests that bound the work per datagram.
    static MACS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Every MAC verification goes through here (the MAC-count tests rely on it).
fn mac_ok(keys: &KeySet, authed: &[u8], tag: &[u8]) -> bool {
    #[cfg(test)]
    MACS.with(|c| c.set(c.get() + 1));
    let mut mac = keys.mac.clone();
    mac.update(authed);
    mac.verify_slice(tag).is_ok()
}

/// The structural checks of [`Packet::check`] (no cryptography), then the parsed header.
/// The first half of [`verify`]: a caller can look at the header (its sender, its key id)
/// before paying for a MAC.
///
/// # Errors
/// [`OpenError::Wire`] with the first check that fails.
pub fn check(datagram: &[u8], max_payload: usize) -> Result<Header, OpenError> {
    let p = Packet::new_checked(datagram, max_payload)?;
    Ok(Header::parse(&p)?)
}

/// Verifies the MAC of `datagram`, whose header [`check`] returned as `header`, under the
/// key sets of `keys` whose key id is `header.key_id`: those [`KeyLookup::find_key`]
/// returns, in its order, and never more than [`MAX_KEY_MATCHES`] even if a custom lookup
/// returns others. No key set with that id means no MAC is computed. Returns the key set
/// that verified, with its scope and generation.
///
/// # Errors
/// [`OpenError::BadMac`]; [`OpenError::Wire`] with [`WireError::LengthMismatch`] if
/// `datagram` is not the length `header` gives (it was not the datagram checked).
pub fn verify_mac<'k, K: KeyLookup + ?Sized>(
    keys: &'k K,
    header: &Header,
    datagram: &[u8],
) -> Result<(ScopeIndex, Generation, &'k KeySet), OpenError> {
    if datagram.len() != header.buffer_len() {
        return Err(OpenError::Wire(WireError::LengthMismatch));
    }
    let (authed, tag) = datagram.split_at(HEADER_LEN + usize::from(header.payload_len));
    keys.find_key(header.key_id)
        .into_iter()
        .flatten()
        .filter(|(_, _, ks)| ks.key_id() == header.key_id)
        .take(MAX_KEY_MATCHES)
        .find(|(_, _, ks)| mac_ok(ks, authed, tag))
        .ok_or(OpenError::BadMac)
}

/// [`check`], then [`verify_mac`]: the header and the key set that verified the MAC.
///
/// # Errors
/// [`OpenError::Wire`] or [`OpenError::BadMac`].
pub fn verify<'k, K: KeyLookup + ?Sized>(
    keys: &'k K,
    datagram: &[u8],
    max_payload: usize,
) -> Result<(Header, ScopeIndex, Generation, &'k KeySet), OpenError> {
    let header = check(datagram, max_payload)?;
    let (scope, generation, ks) = verify_mac(keys, &header, datagram)?;
    Ok((header, scope, generation, ks))
}

/// Checks, authenticates, decrypts and unpads one packet that fills `datagram` exactly.
///
/// # Errors
/// The first failing step: [`OpenError::Wire`], [`OpenError::BadMac`], [`OpenError::BadPadding`].
pub fn open<'a, K: KeyLookup + ?Sized>(
    keys: &K,
    datagram: &'a mut [u8],
    max_payload: usize,
) -> Result<Opened<'a>, OpenError> {
    let (header, scope, generation, ks) = verify(keys, datagram, max_payload)?;
    let plaintext = decrypt_verified(ks, &header, datagram)?;
    Ok(Opened { header, plaintext, scope, generation })
}

/// Decrypts and unpads a packet that [`verify`] accepted with `keys` (the second half
/// of [`open`], so a caller that needed the header between the two steps does not pay
/// for a second MAC). Returns the plaintext, decrypted in place.
///
/// # Errors
/// [`OpenError::BadPadding`]; [`OpenError::Wire`] if `datagram` is shorter than
/// `header` says (it was not the datagram that was verified).
pub fn decrypt_verified<'a>(
    keys: &KeySet,
    header: &Header,
    datagram: &'a mut [u8],
) -> Result<&'a [u8], OpenError> {
    let n = usize::from(header.payload_len);
    let ct = datagram
        .get_mut(HEADER_LEN..HEADER_LEN + n)
        .ok_or(OpenError::Wire(WireError::LengthMismatch))?;
    cbc_decrypt(&keys.dec, &header.iv, ct);
    let len = unpad(ct).ok_or(OpenError::BadPadding)?;
    Ok(&datagram[HEADER_LEN..HEADER_LEN + len])
}

/// CBC encryption in place of each prepared packet of `lanes` (at most [`LANES`]) over
/// the prepared key schedule (borrowed: the `cbc` crate's modes take the cipher by
/// value, and copying plus zeroizing ~1 KB of round keys per packet cost more than the
/// encryption itself). Each packet's chain starts from the IV in its header and runs
/// over its ciphertext field; round `j` encrypts block `j` of every packet that has one
/// in one call, so the cipher pipelines the packets' blocks.
fn cbc_encrypt_lanes(cipher: &aes::Aes256Enc, lanes: &mut [&mut [u8]]) {
    let mut prev = [aes::Block::default(); LANES];
    let mut chains: heapless::Vec<&mut [aes::Block], LANES> = heapless::Vec::new();
    for (p, lane) in prev.iter_mut().zip(lanes.iter_mut()) {
        let (head, rest) = lane.split_at_mut(HEADER_LEN);
        p.copy_from_slice(&head[crate::wire::field::IV]);
        let ct_len = rest.len() - MAC_LEN;
        let (blocks, _) = Array::slice_as_chunks_mut(&mut rest[..ct_len]);
        let _ = chains.push(blocks);
    }
    let rounds = chains.iter().map(|c| c.len()).max().unwrap_or(0);
    for j in 0..rounds {
        // A lane without a block `j` (a shorter packet, or no packet) is encrypted and
        // its result thrown away.
        for (p, c) in prev.iter_mut().zip(chains.iter()) {
            if let Some(b) = c.get(j) {
                xor_into(p, b);
            }
        }
        cipher.encrypt_blocks(&mut prev);
        for (p, c) in prev.iter().zip(chains.iter_mut()) {
            if let Some(b) = c.get_mut(j) {
                *b = *p;
            }
        }
    }
}

/// CBC encryption of one packet's blocks in place from `iv`.
fn cbc_encrypt(cipher: &aes::Aes256Enc, iv: &aes::Block, blocks: &mut [aes::Block]) {
    let mut prev = *iv;
    for b in blocks.iter_mut() {
        xor_into(b, &prev);
        cipher.encrypt_block(b);
        prev = *b;
    }
}

/// `dst ^= src`.
fn xor_into(dst: &mut aes::Block, src: &aes::Block) {
    for (x, y) in dst.iter_mut().zip(src.iter()) {
        *x ^= y;
    }
}

/// CBC decryption in place, last chunk first so each block's predecessor is still
/// ciphertext when it is needed. Chunks of 8 blocks go through the cipher together,
/// which lets AES-NI pipeline them. `data.len()` is a multiple of 16.
fn cbc_decrypt(cipher: &aes::Aes256Dec, iv: &[u8; 16], data: &mut [u8]) {
    const CHUNK: usize = 8;
    let (blocks, _): (&mut [aes::Block], _) = Array::slice_as_chunks_mut(data);
    let mut end = blocks.len();
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let mut prev = [aes::Block::default(); CHUNK];
        for (k, p) in prev.iter_mut().enumerate().take(end - start) {
            let i = start + k;
            *p = if i == 0 { (*iv).into() } else { blocks[i - 1] };
        }
        if PIPELINED && end - start > 1 && end - start < CHUNK {
            // A short chunk would go through the cipher one block at a time: give it a
            // full one (the spare blocks are decrypted and thrown away).
            let mut full = [aes::Block::default(); CHUNK];
            full[..end - start].copy_from_slice(&blocks[start..end]);
            cipher.decrypt_blocks(&mut full);
            blocks[start..end].copy_from_slice(&full[..end - start]);
        } else {
            cipher.decrypt_blocks(&mut blocks[start..end]);
        }
        for (b, p) in blocks[start..end].iter_mut().zip(&prev) {
            xor_into(b, p);
        }
        end = start;
    }
}

/// Length of the PKCS#7-padded `data` without its padding, or `None` if malformed.
fn unpad(data: &[u8]) -> Option<usize> {
    let &last = data.last()?;
    let p = usize::from(last);
    if p == 0 || p > BLOCK_LEN || p > data.len() {
        return None;
    }
    let body = data.len() - p;
    data[body..].iter().all(|&b| b == last).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyPair, Keyring};
    use crate::wire::{KeyId, PacketId, PacketType, SessionId};

    #[test]
    fn unpad_rules() {
        let mut b = [7u8; 16];
        assert_eq!(unpad(&b), Some(9));
        b[15] = 0;
        assert_eq!(unpad(&b), None);
        b[15] = 17;
        assert_eq!(unpad(&b), None);
        b[15] = 2;
        b[14] = 3;
        assert_eq!(unpad(&b), None);
        assert_eq!(unpad(&[16u8; 16]), Some(0));
        assert_eq!(unpad(&[]), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(padded_len(0), 16);
        assert_eq!(padded_len(15), 16);
        assert_eq!(padded_len(16), 32);
        assert_eq!(max_plaintext(1376), 1375);
        assert_eq!(max_plaintext(1380), 1375);
        assert_eq!(sealed_len(64), 57 + 80 + 32);
    }

    #[test]
    fn bad_padding_after_valid_mac_is_reported() {
        // A sender that emits garbage padding: encrypt a block whose last byte is 0.
        let ring: Keyring<0> = Keyring::new(&KeyPair::new([1; 32], [2; 32])).unwrap();
        let ks = ring.network().current;
        let h = Header {
            packet_id: PacketId(1),
            session_id: SessionId(1),
            ..Header::new(PacketType::Publish)
        };
        let mut buf = [0u8; 105];
        // 15 bytes of plaintext get 1 byte of padding; then overwrite that byte with 0
        // by sealing 16 bytes and truncating is not possible, so build it by hand:
        let n = seal_in_place(ks, &h, [5; 16], &mut buf, 15, 1024).unwrap();
        assert_eq!(n, 105);
        // Decrypt, corrupt the pad byte, re-encrypt and re-MAC as a buggy sender would.
        cbc_decrypt(&ks.dec, &[5; 16], &mut buf[57..73]);
        buf[72] = 0;
        seal_prepared(ks, &mut buf).unwrap();
        assert_eq!(open(&ring, &mut buf, 1024).unwrap_err(), OpenError::BadPadding);
    }

    /// `count` packets of plaintexts of `lens` (cycled), prepared back to back with IVs
    /// 1, 2, ..., and where each starts.
    fn prepared(
        ks: &KeySet,
        lens: &[usize],
        count: usize,
    ) -> (std::vec::Vec<u8>, std::vec::Vec<usize>) {
        let (mut buf, mut starts) = (std::vec::Vec::new(), std::vec::Vec::new());
        for k in 0..count {
            let len = lens[k % lens.len()];
            let h = Header {
                packet_id: PacketId(k as u32 + 1),
                session_id: SessionId(9),
                ..Header::new(PacketType::Publish)
            };
            let at = buf.len();
            buf.resize(at + sealed_len(len), 0);
            for (i, b) in buf[at + HEADER_LEN..at + HEADER_LEN + len].iter_mut().enumerate() {
                *b = (i * 7 + k) as u8;
            }
            let iv = [k as u8 + 1; 16];
            prepare_in_place(ks, &h, iv, &mut buf[at..], len, 1376).unwrap();
            starts.push(at);
        }
        (buf, starts)
    }

    #[test]
    fn packets_sealed_together_are_the_packets_sealed_alone() {
        let ring: Keyring<0> = Keyring::new(&pair(3)).unwrap();
        let ks = ring.network().current;
        // Equal lengths, mixed lengths (lanes ending at different blocks), one long
        // packet among short ones, an empty plaintext; 1 to 19 packets (more than one
        // group of 8, and a partial last group).
        let shapes: [&[usize]; 4] = [&[64], &[0, 15, 16, 100, 37], &[1000, 20, 64], &[255]];
        for lens in shapes {
            for count in 1..20 {
                let (mut together, starts) = prepared(ks, lens, count);
                let (mut alone, _) = prepared(ks, lens, count);
                seal_prepared(ks, &mut together).unwrap();
                let ends = starts.iter().skip(1).copied().chain([alone.len()]);
                for (&a, b) in starts.iter().zip(ends) {
                    seal_prepared(ks, &mut alone[a..b]).unwrap();
                }
                assert_eq!(together, alone, "lens {lens:?}, {count} packets");
                for (k, (&a, b)) in starts
                    .iter()
                    .zip(starts.iter().skip(1).copied().chain([together.len()]))
                    .enumerate()
                {
                    let len = lens[k % lens.len()];
                    let o = open(&ring, &mut together[a..b], 1376).unwrap();
                    let want: std::vec::Vec<u8> = (0..len).map(|i| (i * 7 + k) as u8).collect();
                    assert_eq!(o.plaintext, &want[..]);
                    assert_eq!(o.header.iv, [k as u8 + 1; 16]);
                }
            }
        }
    }

    #[test]
    fn sealing_a_cut_datagram_stops_at_the_cut() {
        let ring: Keyring<0> = Keyring::new(&pair(3)).unwrap();
        let ks = ring.network().current;
        let (mut buf, starts) = prepared(ks, &[64], 3);
        let cut = buf.len() - 1;
        assert_eq!(
            seal_prepared(ks, &mut buf[..cut]),
            Err(SealError::BufferTooSmall { needed: sealed_len(64) })
        );
        // The whole packets before the cut are sealed; the cut one is not.
        assert!(open(&ring, &mut buf[..starts[1]], 1376).is_ok());
        assert!(open(&ring, &mut buf[starts[1]..starts[2]], 1376).is_ok());
        assert_eq!(
            seal_prepared(ks, &mut buf[..3]),
            Err(SealError::BufferTooSmall { needed: usize::MAX })
        );
    }

    /// MACs `f` verifies on this thread.
    fn macs(f: impl FnOnce()) -> usize {
        let before = MACS.with(|c| c.get());
        f();
        MACS.with(|c| c.get()) - before
    }

    fn pair(x: u8) -> KeyPair {
        KeyPair::new([x; 32], [x ^ 0xff; 32])
    }

    /// Network current + previous and 8 channel scopes each with current + previous keys:
    /// 18 key sets, which the version 2 receiver tried one after the other.
    fn big_ring() -> Keyring<8> {
        let mut ring: Keyring<8> = Keyring::new(&pair(1)).unwrap();
        ring.set_previous(Some(&pair(2))).unwrap();
        for i in 0..8u8 {
            let mut pattern: heapless::String<8> = heapless::String::new();
            core::fmt::write(&mut pattern, format_args!("s{i}/#")).unwrap();
            ring.set_channel(&pattern, &pair(10 + 2 * i), Some(&pair(11 + 2 * i))).unwrap();
        }
        ring
    }

    /// Every key set of `ring` with its scope and generation, in scope order.
    fn every_key_set(ring: &Keyring<8>) -> heapless::Vec<(ScopeIndex, Generation, &KeySet), 18> {
        let mut all = heapless::Vec::new();
        for i in 0..ring.scope_count() {
            let s = ring.scope(ScopeIndex(i as u8)).unwrap();
            all.push((ScopeIndex(i as u8), Generation::Current, s.current)).unwrap();
            all.push((ScopeIndex(i as u8), Generation::Previous, s.previous.unwrap())).unwrap();
        }
        all
    }

    fn sealed(ks: &KeySet) -> [u8; 121] {
        let h = Header {
            packet_id: PacketId(7),
            session_id: SessionId(9),
            ..Header::new(PacketType::Publish)
        };
        let mut buf = [0u8; 121];
        buf[HEADER_LEN..HEADER_LEN + 20].fill(0xab);
        assert_eq!(seal_in_place(ks, &h, [3; 16], &mut buf, 20, 1024), Ok(121));
        buf
    }

    #[test]
    fn forged_datagram_costs_at_most_two_macs() {
        let ring = big_ring();
        let all = every_key_set(&ring);
        assert_eq!(all.len(), 18);
        for &(scope, generation, ks) in &all {
            // Genuine: exactly one MAC, under the right key set, even for the last of 18.
            let mut good = sealed(ks);
            assert_eq!(&good[51..55], &ks.key_id().0.to_be_bytes());
            let n = macs(|| {
                let (_, s, g, k) = verify(&ring, &good, 1024).unwrap();
                assert_eq!((s, g, k.key_id()), (scope, generation, ks.key_id()));
            });
            assert_eq!(n, 1, "genuine packet under {scope:?} {generation:?}");
            assert!(open(&ring, &mut good, 1024).is_ok());

            // Forged: a real key id copied from a genuine packet, a wrong MAC.
            let mut forged = sealed(ks);
            forged[120] ^= 1;
            let n =
                macs(|| assert_eq!(verify(&ring, &forged, 1024).unwrap_err(), OpenError::BadMac));
            assert!(n <= MAX_KEY_MATCHES, "{n} MACs for one forged datagram");
            assert_eq!(n, 1);
            // Forged: valid structure, a body changed without the keys.
            let mut forged = sealed(ks);
            forged[HEADER_LEN] ^= 1;
            let n =
                macs(|| assert_eq!(open(&ring, &mut forged, 1024).unwrap_err(), OpenError::BadMac));
            assert!(n <= MAX_KEY_MATCHES, "{n} MACs for one forged datagram");
        }
        // Forged: a key id no key set has costs no MAC at all.
        let mut forged = sealed(all[17].2);
        forged[51..55].copy_from_slice(&[0x5a; 4]);
        assert!(all.iter().all(|(_, _, ks)| ks.key_id() != KeyId(0x5a5a_5a5a)));
        let n = macs(|| assert_eq!(verify(&ring, &forged, 1024).unwrap_err(), OpenError::BadMac));
        assert_eq!(n, 0);
        // The structural checks compute none either.
        forged[2] = 0x02;
        let n = macs(|| {
            assert_eq!(
                verify(&ring, &forged, 1024).unwrap_err(),
                OpenError::Wire(WireError::UnsupportedVersion(2))
            );
        });
        assert_eq!(n, 0);
    }

    /// A lookup whose `find_key` ignores the id and hands out every network key set.
    struct Careless<'a>(&'a Keyring<8>);
    impl KeyLookup for Careless<'_> {
        fn scope_count(&self) -> usize {
            self.0.scope_count()
        }
        fn scope(&self, i: ScopeIndex) -> Option<crate::keys::Scope<'_>> {
            self.0.scope(i)
        }
        fn find_key(&self, _: KeyId) -> crate::keys::KeyMatches<'_> {
            let n = self.0.network();
            [
                Some((ScopeIndex::NETWORK, Generation::Current, n.current)),
                n.previous.map(|p| (ScopeIndex::NETWORK, Generation::Previous, p)),
            ]
        }
    }

    #[test]
    fn verify_mac_only_macs_key_sets_with_the_header_key_id() {
        let ring = big_ring();
        let careless = Careless(&ring);
        // Sealed under scope 3's keys: the careless lookup offers only network keys, whose
        // ids differ, so nothing is MACed.
        let ks = ring.scope(ScopeIndex(3)).unwrap().current;
        let good = sealed(ks);
        let header = check(&good, 1024).unwrap();
        assert_eq!(header.key_id, ks.key_id());
        let n = macs(|| {
            assert_eq!(verify_mac(&careless, &header, &good).unwrap_err(), OpenError::BadMac);
        });
        assert_eq!(n, 0);
        // Under the network's previous keys it finds them, with one MAC.
        let prev = ring.network().previous.unwrap();
        let good = sealed(prev);
        let header = check(&good, 1024).unwrap();
        let n = macs(|| {
            let (s, g, _) = verify_mac(&careless, &header, &good).unwrap();
            assert_eq!((s, g), (ScopeIndex::NETWORK, Generation::Previous));
        });
        assert_eq!(n, 1);
        // A header that is not this datagram's.
        assert_eq!(
            verify_mac(&ring, &header, &good[..120]).unwrap_err(),
            OpenError::Wire(WireError::LengthMismatch)
        );
    }

    #[test]
    fn check_is_the_structural_half() {
        let ring = big_ring();
        let ks = ring.network().current;
        let good = sealed(ks);
        let n = macs(|| {
            let h = check(&good, 1024).unwrap();
            assert_eq!(h.key_id, ks.key_id());
            assert_eq!(h.payload_len, 32);
            assert_eq!(
                check(&good[..120], 1024).unwrap_err(),
                OpenError::Wire(WireError::LengthMismatch)
            );
            assert_eq!(check(&good, 16).unwrap_err(), OpenError::Wire(WireError::TooLarge));
        });
        assert_eq!(n, 0);
    }
}
