//! Capacity presets by name, instead of eight positional const generics.
//!
//! [`Node`]'s capacities are const generics (no heap: every table is an array in the
//! node). Their coupling is easy to miss: `P` also bounds the targets one publish
//! tracks and the wildcard patterns peers announce; `S` also bounds the subscriptions
//! remembered *per peer*; `O × M` is the outbox's message store. These presets choose
//! them together:
//!
//! | preset | `P` peers | `S` subs | `O` outbox | `R` retained | `Q` QoS 2 rx | `L` lockouts | `M` bytes | node RAM, 32-bit | node RAM, x86_64 |
//! |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|
//! | [`Mcu`] | 2 | 2 | 4 | 1 | 4 | 2 | 48 | ≈ 7.1 KB | 11 616 B |
//! | [`Device`] | 8 | 4 | 8 | 4 | 8 | 8 | 128 | ≈ 12.8 KB | 17 632 B |
//! | [`Node<K>`](Node) (defaults) | 32 | 20 | 50 | 16 | 32 | 64 | 256 | ≈ 72 KB | 79 600 B |
//! | [`Host`] | 64 | 32 | 128 | 32 | 512 | 256 | 1 362 | ≈ 421 KB | 440 448 B |
//!
//! RAM is `size_of` the node with a `Keyring<0>` (each channel key scope adds about
//! 1.6 KB); `cargo test -p nomq --lib presets -- --nocapture` prints it on the machine
//! at hand, and the 32-bit figures come from `scripts/footprint.sh` (docs/FOOTPRINT.md).
//! The deferred-acknowledgement table (`Q` entries, `node/deferred.rs`) costs about
//! 64 B per `Q` on x86_64; the 32-bit figures with ≈ add an estimate of it.
//! [`Mcu`] keeps a node within 8 KiB of static RAM on a microcontroller.
//!
//! A preset is a type alias, so `presets::Mcu<Keyring<0>>::new(..)` is an ordinary
//! [`Node`]; choose other numbers by naming `Node<K, P, S, O, R, Q, L, M>` directly.

use super::Node;

/// The smallest useful node, for a microcontroller with a few KiB to spare: two peers,
/// two subscriptions, four outbox entries of 48 bytes (name + body). Within 8 KiB.
pub type Mcu<K> = Node<K, 2, 2, 4, 1, 4, 2, 48>;

/// An ESP32-class device on Wi-Fi (the ESP32-C3 example firmware): eight peers, four
/// subscriptions, eight outbox entries of 128 bytes.
pub type Device<K> = Node<K, 8, 4, 8, 4, 8, 8, 128>;

/// A host (laptop, server, gateway): 64 peers, 32 subscriptions, 128 outbox entries of
/// a full packet each, 512 QoS 2 receive states, 256 lockout entries. Heap-allocate it
/// (`Box`): it is far larger than a thread's stack should hold.
pub type Host<K> = Node<K, 64, 32, 128, 32, 512, 256, HOST_MESSAGE_LEN>;

/// Most bytes of channel name + body one message carries with the default maximum
/// payload (1376): the padded plaintext of a PUBLISH minus its fixed fields.
pub const HOST_MESSAGE_LEN: usize =
    crate::envelope::max_plaintext(1376) - crate::body::PUBLISH_OVERHEAD;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyring;
    use core::mem::size_of;

    /// Prints each preset's RAM (with `--nocapture`) and holds the MCU preset to its
    /// budget, so a change that grows the engine's state is noticed.
    #[test]
    fn preset_ram() {
        let mcu = size_of::<Mcu<Keyring<0>>>();
        let device = size_of::<Device<Keyring<0>>>();
        let default = size_of::<Node<Keyring<0>>>();
        let host = size_of::<Host<Keyring<0>>>();
        std::println!(
            "node RAM (this target): Mcu {mcu} B, Device {device} B, default {default} B, Host {host} B"
        );
        // The 8 KiB budget holds on the 32-bit targets it is meant for (measured there by
        // scripts/footprint.sh); on a 64-bit host, wider fields make the same node larger.
        #[cfg(target_pointer_width = "32")]
        assert!(mcu <= 8 * 1024, "Mcu preset: {mcu} bytes");
        // (11 616 B with the outbox summaries of `outbox.rs`: 56 B per outbox entry.)
        #[cfg(target_pointer_width = "64")]
        assert!(mcu <= 11_700, "Mcu preset grew: {mcu} bytes");
        assert!(mcu < device && device < default && default < host);
        assert_eq!(HOST_MESSAGE_LEN, 1358);
    }
}
