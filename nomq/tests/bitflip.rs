//! Tamper resistance: 10 000 single-bit flips over sealed packets; `open` accepts none.

use nomq::envelope::{OpenError, open, seal_in_place, sealed_len};
use nomq::keys::KeySet;
use nomq::wire::{HEADER_LEN, KeyId};
use nomq::{ChannelId, Flags, Header, KeyPair, Keyring, PacketId, PacketType, Qos, SessionId};

const MAX_PAYLOAD: usize = 1376;
const TRIALS: usize = 10_000;
/// Plaintext lengths around every padding boundary, up to the largest that fits.
const SIZES: [usize; 12] = [0, 1, 15, 16, 17, 26, 31, 32, 64, 100, 1024, 1375];

mod common;
use common::Rng;

#[test]
fn single_bit_flips_are_never_accepted() {
    let pair = KeyPair::new([0x11; 32], [0x22; 32]);
    let mut ring: Keyring<1> = Keyring::new(&pair).unwrap();
    // Several key sets: a flip in the key id field must not make another one accept.
    ring.set_previous(Some(&KeyPair::new([0x33; 32], [0x44; 32]))).unwrap();
    ring.set_channel("a/#", &KeyPair::new([0x55; 32], [0x66; 32]), None).unwrap();
    let keys = KeySet::new(&pair);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    let mut tried = 0usize;
    let mut accepted = 0usize;
    let mut wire_rejects = 0usize;
    let mut mac_rejects = 0usize;
    let mut key_id_rejects = 0usize;
    let mut tested_sizes = [0usize; SIZES.len()];
    let mut packet = vec![0u8; sealed_len(SIZES[SIZES.len() - 1])];
    let mut pristine = packet.clone();

    for trial in 0..TRIALS {
        let si = trial % SIZES.len();
        let len = SIZES[si];
        let header = Header {
            packet_type: PacketType::from_u8(1 + rng.below(8) as u8).unwrap(),
            flags: Flags {
                qos: Qos::from_level(rng.below(3) as u8).unwrap(),
                retain: rng.below(2) == 1,
                dup: rng.below(2) == 1,
                priority: rng.below(16) as u8,
            },
            packet_id: PacketId(rng.next() as u32),
            session_id: SessionId(rng.next() as u32),
            ttl: rng.next() as u16,
            iv: [0; 16],
            timestamp: rng.next() as u32,
            channel_id: ChannelId(rng.next().to_le_bytes().repeat(2).try_into().unwrap()),
            key_id: KeyId(rng.next() as u32), // overwritten by seal_in_place
            payload_len: 0,
        };
        let iv: [u8; 16] = core::array::from_fn(|_| rng.next() as u8);
        for b in &mut packet[HEADER_LEN..HEADER_LEN + len] {
            *b = rng.next() as u8;
        }
        let total = seal_in_place(&keys, &header, iv, &mut packet, len, MAX_PAYLOAD).unwrap();
        pristine[..total].copy_from_slice(&packet[..total]);
        // The untouched packet opens: the flips below are what make it fail.
        assert!(open(&ring, &mut packet[..total], MAX_PAYLOAD).is_ok());
        packet[..total].copy_from_slice(&pristine[..total]);

        let bit = rng.below(total as u64 * 8) as usize;
        packet[bit / 8] ^= 1 << (bit % 8);
        tried += 1;
        tested_sizes[si] += 1;
        match open(&ring, &mut packet[..total], MAX_PAYLOAD) {
            Ok(_) => accepted += 1,
            Err(OpenError::Wire(_)) => {
                // Only the structural fields can fail a cheap check: magic, version,
                // type, flags (QoS 3) and the payload length.
                let byte = bit / 8;
                assert!(byte < 5 || (55..57).contains(&byte), "wire error at byte {byte}");
                wire_rejects += 1;
            }
            Err(OpenError::BadMac) => {
                // A flipped key id names no key set of the ring: refused before any MAC.
                key_id_rejects += usize::from((51..55).contains(&(bit / 8)));
                mac_rejects += 1;
            }
            // Padding is only looked at after the MAC verified: a tampered packet that got
            // that far would be a forgery.
            Err(e) => panic!("trial {trial}: bit {bit} of {total}: unexpected {e:?}"),
        }
    }

    assert_eq!(tried, TRIALS);
    assert_eq!(accepted, 0, "{accepted} tampered packets accepted");
    assert_eq!(wire_rejects + mac_rejects, TRIALS);
    assert!(mac_rejects > TRIALS / 2, "most flips reach the MAC check: {mac_rejects}");
    assert!(key_id_rejects > 0, "some flips hit the key id");
    assert!(tested_sizes.iter().all(|&n| n >= TRIALS / SIZES.len()), "{tested_sizes:?}");
}
