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

use nomq::node::{PublishError, PublishHandle, Stats, Status, SubscribeError, Transmit};
use nomq::{Addr, Event, Instant, KeyLookup, Message, Node, PublishOptions};

#[cfg(feature = "device")]
pub mod device;
#[cfg(feature = "embassy")]
pub mod embassy;
#[cfg(feature = "smoltcp")]
pub mod poll;

#[cfg(any(feature = "smoltcp", feature = "embassy"))]
mod net;
#[cfg(any(feature = "smoltcp", feature = "embassy"))]
pub use net::{Fanout, TxStats, endpoint, from_endpoint};

/// Largest datagram the adapters send or receive: one Ethernet / Wi-Fi frame of IPv4 UDP
/// (1500 − 20 − 8). [`nomq::Config::max_payload`]'s default keeps packets within it.
pub const MAX_DATAGRAM: usize = 1472;

/// The engine calls an adapter needs, implemented for every [`nomq::Node`] whatever its
/// capacities, so adapters are generic over one type parameter instead of eight.
pub trait Engine {
    /// The node's event type ([`nomq::Event`] with its peer capacity).
    type Event;

    /// [`Node::handle_datagram`].
    fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        from: Addr,
        buf: &'a mut [u8],
    ) -> Option<Message<'a>>;
    /// [`Node::handle_timeout`].
    fn handle_timeout(&mut self, now: Instant);
    /// [`Node::poll_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// [`Node::poll_transmit`].
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;
    /// [`Node::poll_event`].
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// [`Node::publish`].
    ///
    /// # Errors
    /// As [`Node::publish`]: nothing was queued.
    fn publish(
        &mut self,
        now: Instant,
        channel: &str,
        body: &[u8],
        opts: PublishOptions,
    ) -> Result<PublishHandle, PublishError>;
    /// [`Node::subscribe`].
    ///
    /// # Errors
    /// As [`Node::subscribe`].
    fn subscribe(&mut self, pattern: &str) -> Result<(), SubscribeError>;
    /// [`Node::unsubscribe`].
    fn unsubscribe(&mut self, pattern: &str) -> bool;
    /// [`Node::stats`].
    fn stats(&self) -> &Stats;
    /// The handle and status if `event` is a publish outcome.
    fn outcome(event: &Self::Event) -> Option<(PublishHandle, Status)>;
}

impl<
    K,
    const P: usize,
    const S: usize,
    const O: usize,
    const R: usize,
    const Q: usize,
    const L: usize,
    const M: usize,
> Engine for Node<K, P, S, O, R, Q, L, M>
where
    K: KeyLookup,
{
    type Event = Event<P>;

    fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        from: Addr,
        buf: &'a mut [u8],
    ) -> Option<Message<'a>> {
        Node::handle_datagram(self, now, from, buf)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Node::handle_timeout(self, now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Node::poll_timeout(self)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        Node::poll_transmit(self, now, buf)
    }
    fn poll_event(&mut self) -> Option<Event<P>> {
        Node::poll_event(self)
    }
    fn publish(
        &mut self,
        now: Instant,
        channel: &str,
        body: &[u8],
        opts: PublishOptions,
    ) -> Result<PublishHandle, PublishError> {
        Node::publish(self, now, channel, body, opts)
    }
    fn subscribe(&mut self, pattern: &str) -> Result<(), SubscribeError> {
        Node::subscribe(self, pattern)
    }
    fn unsubscribe(&mut self, pattern: &str) -> bool {
        Node::unsubscribe(self, pattern)
    }
    fn stats(&self) -> &Stats {
        Node::stats(self)
    }
    fn outcome(event: &Event<P>) -> Option<(PublishHandle, Status)> {
        match event {
            Event::Outcome(o) => Some((o.handle, o.status)),
            _ => None,
        }
    }
}

/// A 32-byte node seed (see [`Node::new`]) from a cryptographically secure generator,
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
