//! What every adapter shares: the [`Engine`] calls it drives, and [`Flush`], the one
//! transmit loop — drain [`Node::poll_transmit`], resolve each [`Target`] to the
//! adapter's endpoints ([`Routes`]), hand each datagram to the socket, count. An adapter
//! keeps only its socket call:
//!
//! ```text
//! while let Some(d) = flush.next(&mut node, &routes, now, &mut buf) {
//!     let ok = socket.send_to(&buf[..d.len], d.to).is_ok();   // or `.await`
//!     flush.sent(ok);
//! }
//! ```

use super::Node;
use super::types::{Event, PublishError, PublishHandle, Stats, Status, SubscribeError, Target};
use super::types::{Message, PublishOptions, Transmit};
use crate::addr::Addr;
use crate::keys::KeyLookup;
use crate::time::Instant;

/// The engine calls an adapter needs, implemented for every [`Node`] whatever its
/// capacities, so adapters are generic over one type parameter instead of eight.
pub trait Engine {
    /// The node's event type ([`Event`] with its peer capacity).
    type Event;

    /// [`Node::handle_packet`].
    fn handle_packet<'a>(
        &mut self,
        now: Instant,
        from: Addr,
        buf: &'a mut [u8],
    ) -> Option<Message<'a>>;
    /// [`Node::refuse_delivery`].
    fn refuse_delivery(&mut self) -> bool;
    /// [`Node::handle_datagram`]: every packet of a datagram, each delivered message
    /// handed to `deliver` (refused when it returns `false`); returns how many were taken.
    fn handle_datagram(
        &mut self,
        now: Instant,
        from: Addr,
        datagram: &mut [u8],
        mut deliver: impl FnMut(Message<'_>) -> bool,
    ) -> usize
    where
        Self: Sized,
    {
        let mut taken = 0;
        for packet in Packets::new(datagram) {
            if let Some(m) = self.handle_packet(now, from, packet) {
                if deliver(m) {
                    taken += 1;
                } else {
                    self.refuse_delivery();
                }
            }
        }
        taken
    }
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
    K: KeyLookup,
    const P: usize,
    const S: usize,
    const O: usize,
    const R: usize,
    const Q: usize,
    const L: usize,
    const M: usize,
> Engine for Node<K, P, S, O, R, Q, L, M>
{
    type Event = Event<P>;

    fn handle_packet<'a>(
        &mut self,
        now: Instant,
        from: Addr,
        buf: &'a mut [u8],
    ) -> Option<Message<'a>> {
        Node::handle_packet(self, now, from, buf)
    }
    fn refuse_delivery(&mut self) -> bool {
        Node::refuse_delivery(self)
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

/// The packets of one received datagram, in order, each a disjoint slice of it (a
/// datagram carries one or more packets back to back: docs/PROTOCOL.md, "Datagrams").
/// Hand each to [`Node::handle_packet`]:
///
/// ```text
/// for packet in Packets::new(&mut buf[..n]) {
///     if let Some(m) = node.handle_packet(now, from, packet) { /* deliver */ }
/// }
/// ```
///
/// Splitting trusts only the cleartext length field: each packet is then authenticated
/// on its own, so a forged length can only make the rest of that datagram fail its
/// checks (counted), never make anything accepted. When a header cannot be read (too
/// short, not this protocol's magic or version) the rest of the datagram is yielded as
/// one packet, which the node refuses with the matching reason.
#[derive(Debug)]
pub struct Packets<'a> {
    rest: &'a mut [u8],
}

impl<'a> Packets<'a> {
    /// Splits `datagram`.
    pub fn new(datagram: &'a mut [u8]) -> Self {
        Self { rest: datagram }
    }
}

impl<'a> Iterator for Packets<'a> {
    type Item = &'a mut [u8];
    fn next(&mut self) -> Option<&'a mut [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = core::mem::take(&mut self.rest);
        let n = crate::wire::packet_len(rest).map_or(rest.len(), |n| n.min(rest.len()));
        let (packet, tail) = rest.split_at_mut(n);
        self.rest = tail;
        Some(packet)
    }
}

/// How an adapter reaches addresses: its socket's endpoint type, and the endpoints of
/// its fan-out ([`Target::Fanout`]: broadcast, a group, or a static peer list).
pub trait Routes {
    /// What the socket sends to.
    type Endpoint: Copy;
    /// The endpoint of a unicast or group address; `None` if the stack cannot carry it
    /// (counted as [`TxStats::unroutable`]).
    fn endpoint(&self, addr: Addr) -> Option<Self::Endpoint>;
    /// The `n`-th endpoint of the fan-out; `None` past the last.
    fn fanout(&self, n: usize) -> Option<Self::Endpoint>;
}

/// A fan-out that is a list of socket addresses: static peers, a broadcast or a
/// multicast address.
#[cfg(feature = "std")]
impl Routes for [std::net::SocketAddr] {
    type Endpoint = std::net::SocketAddr;
    fn endpoint(&self, addr: Addr) -> Option<std::net::SocketAddr> {
        Some(addr.into())
    }
    fn fanout(&self, n: usize) -> Option<std::net::SocketAddr> {
        self.get(n).copied()
    }
}

/// Adapter-level counters: what happened to datagrams between the engine and the
/// socket. The engine's own counters are in [`Stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TxStats {
    /// Datagrams handed to the socket (one per destination).
    pub sent: u64,
    /// Datagrams the socket refused (no route, buffer full, too large). QoS 1/2 messages
    /// are retransmitted by the engine; QoS 0 copies are lost and counted here.
    pub send_errors: u64,
    /// Destinations the stack cannot address (IPv6 on an IPv4-only stack).
    pub unroutable: u64,
    /// Received datagrams larger than the adapter's buffer, dropped.
    pub truncated: u64,
}

/// One datagram to send: the first `len` bytes of the buffer given to [`Flush::next`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Datagram<E> {
    /// Bytes at the start of the buffer.
    pub len: usize,
    /// Where to.
    pub to: E,
}

/// The transmit loop shared by every adapter (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default)]
pub struct Flush {
    /// The transmit being sent: its length and target; `next` its next destination.
    current: Option<(usize, Target)>,
    next: usize,
    stats: TxStats,
}

impl Flush {
    /// A flush with zeroed counters.
    pub const fn new() -> Self {
        Self {
            current: None,
            next: 0,
            stats: TxStats { sent: 0, send_errors: 0, unroutable: 0, truncated: 0 },
        }
    }

    /// The next datagram to send, taking the engine's next transmit once every
    /// destination of the current one was handed out. `buf` must be the same buffer at
    /// every call (the datagram waits in it) and at least
    /// [`Node::max_datagram_len`] bytes. After sending, report with [`Flush::sent`].
    pub fn next<E: Engine + ?Sized, R: Routes + ?Sized>(
        &mut self,
        engine: &mut E,
        routes: &R,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<Datagram<R::Endpoint>> {
        loop {
            if let Some(d) = self.more(routes) {
                return Some(d);
            }
            let tx = engine.poll_transmit(now, buf)?;
            self.current = Some((tx.len, tx.target));
            self.next = 0;
        }
    }

    /// The next destination of the datagram [`Flush::next`] last wrote, if it has one
    /// more (a fan-out reaches several); `None` once every destination was handed out.
    /// An adapter that sends many datagrams in one system call takes every destination
    /// of a datagram with `more` — they all send the bytes in that buffer — and then gives
    /// [`Flush::next`] a fresh buffer for the next datagram, so that the queued ones stay
    /// intact until the call:
    ///
    /// ```text
    /// loop {
    ///     let d = match flush.more(&routes) {
    ///         Some(d) => d,                            // same bytes, next destination
    ///         None => match flush.next(&mut node, &routes, now, batch.fresh()) {
    ///             Some(d) => d,                        // a new datagram in the fresh buffer
    ///             None => break,
    ///         },
    ///     };
    ///     batch.queue(d);                              // send when full, and at the end
    /// }
    /// ```
    pub fn more<R: Routes + ?Sized>(&mut self, routes: &R) -> Option<Datagram<R::Endpoint>> {
        while let Some((len, target)) = self.current {
            let n = self.next;
            self.next += 1;
            let to = match target {
                Target::Fanout => match routes.fanout(n) {
                    Some(to) => Some(to),
                    None => {
                        self.current = None;
                        continue;
                    }
                },
                _ if n > 0 => {
                    self.current = None;
                    continue;
                }
                Target::Unicast(a) | Target::Group(a) => routes.endpoint(a),
            };
            match to {
                Some(to) => return Some(Datagram { len, to }),
                None => self.stats.unroutable += 1,
            }
        }
        None
    }

    /// Reports what the socket did with the datagram [`Flush::next`] returned.
    pub fn sent(&mut self, ok: bool) {
        if ok {
            self.stats.sent += 1;
        } else {
            self.stats.send_errors += 1;
        }
    }

    /// Counts a received datagram that did not fit the adapter's buffer.
    pub fn truncated(&mut self) {
        self.stats.truncated += 1;
    }

    /// The counters.
    pub fn stats(&self) -> TxStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::types::Transmit;

    /// An engine that hands out a fixed list of transmits.
    struct Script(heapless::Deque<Transmit, 4>, Stats);
    impl Engine for Script {
        type Event = ();
        fn handle_packet<'a>(
            &mut self,
            _: Instant,
            _: Addr,
            _: &'a mut [u8],
        ) -> Option<Message<'a>> {
            None
        }
        fn refuse_delivery(&mut self) -> bool {
            false
        }
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<Transmit> {
            let t = self.0.pop_front()?;
            buf[0] = t.len as u8;
            Some(t)
        }
        fn poll_event(&mut self) -> Option<()> {
            None
        }
        fn publish(
            &mut self,
            _: Instant,
            _: &str,
            _: &[u8],
            _: PublishOptions,
        ) -> Result<PublishHandle, PublishError> {
            Err(PublishError::OutboxFull)
        }
        fn subscribe(&mut self, _: &str) -> Result<(), SubscribeError> {
            Ok(())
        }
        fn unsubscribe(&mut self, _: &str) -> bool {
            false
        }
        fn stats(&self) -> &Stats {
            &self.1
        }
        fn outcome(_: &()) -> Option<(PublishHandle, Status)> {
            None
        }
    }

    /// Fan-out to ports 1 and 2; IPv6 unroutable.
    struct Ports;
    impl Routes for Ports {
        type Endpoint = u16;
        fn endpoint(&self, addr: Addr) -> Option<u16> {
            match addr {
                Addr::V4(_, p) => Some(p),
                Addr::V6(..) => None,
            }
        }
        fn fanout(&self, n: usize) -> Option<u16> {
            [1, 2].get(n).copied()
        }
    }

    #[test]
    fn resolves_fanout_unicast_and_group_and_counts() {
        let mut q = heapless::Deque::new();
        for t in [
            Target::Fanout,
            Target::Unicast(Addr::V4([1; 4], 7)),
            Target::Unicast(Addr::V6([0; 16], 8)),
            Target::Group(Addr::V4([239, 0, 0, 1], 9)),
        ] {
            q.push_back(Transmit { target: t, len: 10 }).unwrap();
        }
        let mut engine = Script(q, Stats::default());
        let mut f = Flush::new();
        let mut buf = [0u8; 16];
        let mut sent: heapless::Vec<u16, 8> = heapless::Vec::new();
        while let Some(d) = f.next(&mut engine, &Ports, Instant::ZERO, &mut buf) {
            assert_eq!((d.len, buf[0]), (10, 10));
            sent.push(d.to).unwrap();
            f.sent(d.to != 2);
        }
        assert_eq!(sent.as_slice(), &[1, 2, 7, 9]);
        let s = f.stats();
        assert_eq!((s.sent, s.send_errors, s.unroutable), (3, 1, 1));
    }

    /// `more` hands out the remaining destinations of the datagram already written and
    /// never takes a new transmit, so each datagram can have a buffer of its own.
    #[test]
    fn more_takes_destinations_without_polling() {
        let mut q = heapless::Deque::new();
        q.push_back(Transmit { target: Target::Fanout, len: 3 }).unwrap();
        q.push_back(Transmit { target: Target::Unicast(Addr::V4([1; 4], 7)), len: 4 }).unwrap();
        let mut engine = Script(q, Stats::default());
        let mut f = Flush::new();
        assert_eq!(f.more(&Ports), None, "nothing taken yet");
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        let d = f.next(&mut engine, &Ports, Instant::ZERO, &mut a).unwrap();
        assert_eq!((d.len, d.to, a[0]), (3, 1, 3));
        assert_eq!(f.more(&Ports), Some(Datagram { len: 3, to: 2 }));
        assert_eq!(f.more(&Ports), None);
        assert_eq!(f.more(&Ports), None, "stays done");
        let d = f.next(&mut engine, &Ports, Instant::ZERO, &mut b).unwrap();
        assert_eq!((d.len, d.to, a[0], b[0]), (4, 7, 3, 4));
        assert_eq!(f.more(&Ports), None);
        assert!(f.next(&mut engine, &Ports, Instant::ZERO, &mut a).is_none());
    }
}
