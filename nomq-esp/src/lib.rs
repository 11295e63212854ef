//! NoMQ on microcontrollers: adapters that drive the sans-IO [`nomq::Node`] over an
//! embedded network stack.
//!
//! - [`embassy`] (feature `embassy`): async, over an `embassy-net` [`UdpSocket`]. A
//!   [`Runner`](embassy::Runner) future drives the engine; a [`Client`](embassy::Client)
//!   publishes, subscribes and receives. All storage is the caller's (no heap), in the
//!   manner of `embassy_net::StackResources`.
//! - [`poll`] (feature `smoltcp`): for firmware without an async executor. One
//!   [`Poller::poll`](poll::Poller::poll) call after each `Interface::poll` moves
//!   datagrams both ways and tells when to call again.
//! - [`device`] (feature `device`): the device side of the test harness (readings, echo,
//!   retained status, counters), sans-IO, shared by the ESP32-C3 firmware and the TAP tests.
//!
//! Randomness comes from the chip's RNG through `rand_core` ([`seed`]); time from
//! `embassy-time` (async adapter) or from the caller (poll adapter).
//!
//! Both adapters use the smoltcp 0.13 that `embassy-net` 0.9 is built on; [`Fanout`] and
//! the address conversions are shared between them.
//!
//! [`UdpSocket`]: https://docs.embassy.dev/embassy-net/git/default/udp/struct.UdpSocket.html
#![no_std]
#![forbid(unsafe_code)]

/// The engine calls the adapters drive, and the transmit counters; both live in the core
/// (`nomq::node::flush`), next to the one transmit loop every adapter shares.
pub use nomq::node::{Engine, TxStats};

#[cfg(feature = "device")]
pub mod device;
#[cfg(feature = "embassy")]
pub mod embassy;
#[cfg(feature = "smoltcp")]
pub mod poll;

#[cfg(any(feature = "smoltcp", feature = "embassy"))]
mod net;
#[cfg(any(feature = "smoltcp", feature = "embassy"))]
pub use net::{Fanout, endpoint, from_endpoint};

/// Largest datagram the adapters send or receive: one Ethernet / Wi-Fi frame of IPv4 UDP
/// (1500 − 20 − 8). [`nomq::Config::max_payload`]'s default keeps packets within it.
pub const MAX_DATAGRAM: usize = 1472;

/// A 32-byte node seed (see [`Node::new`](nomq::Node::new)) from a cryptographically secure generator,
/// such as the chip's hardware RNG.
///
/// # Errors
/// The generator's own error.
pub fn seed<R: rand_core::TryCryptoRng + ?Sized>(rng: &mut R) -> Result<[u8; 32], R::Error> {
    let mut s = [0u8; 32];
    rng.try_fill_bytes(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);
    impl rand_core::TryRng for Counter {
        type Error = core::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(u32::from(self.0))
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(u64::from(self.0))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            for b in dst {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
            Ok(())
        }
    }
    impl rand_core::TryCryptoRng for Counter {}

    #[test]
    fn seed_fills_all_32_bytes_from_the_rng() {
        let s = seed(&mut Counter(0)).unwrap();
        assert_eq!(s[0], 1);
        assert_eq!(s[31], 32);
    }
}
