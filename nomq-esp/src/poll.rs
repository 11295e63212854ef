//! Poll-based adapter over a smoltcp UDP socket, for firmware without an async executor.
//!
//! ```text
//! let socket = udp::Socket::new(rx_buffer, tx_buffer);        // the caller's storage
//! let mut nomq = Poller::new(node, &mut sockets, socket, 8888, Fanout::Broadcast(8888))?;
//! loop {
//!     let now = clock.now();                                   // smoltcp::time::Instant
//!     iface.poll(now, &mut device, &mut sockets);
//!     let next = nomq.poll(now, &mut sockets, |msg, node| { /* a delivered message */ });
//!     iface.poll(now, &mut device, &mut sockets);              // send what nomq queued
//!     sleep_until(min(next, now + iface.poll_delay(now, &sockets)));
//! }
//! ```
//!
//! [`Poller::poll`] receives every datagram the socket holds into the engine, handles
//! the engine's timers, queues what the engine wants sent (the first copy of a publish to
//! the [`Fanout`], everything else unicast) while the socket has room, and returns when
//! it wants to be called again. Publish and subscribe through [`Poller::node`].

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::udp::{self, BindError, RecvError};
use smoltcp::time::Instant as SmolInstant;

use nomq::{Instant, Message};

use nomq::node::Flush;

use crate::{Engine, Fanout, MAX_DATAGRAM, TxStats, from_endpoint};

/// The engine's clock from smoltcp's (negative times clamp to zero).
pub fn instant(t: SmolInstant) -> Instant {
    Instant::from_micros(u64::try_from(t.total_micros()).unwrap_or(0))
}

fn smol(t: Instant) -> SmolInstant {
    SmolInstant::from_micros(i64::try_from(t.total_micros()).unwrap_or(i64::MAX))
}

/// A node bound to one smoltcp UDP socket.
pub struct Poller<'a, N> {
    node: N,
    handle: SocketHandle,
    fanout: Fanout<'a>,
    rx: [u8; MAX_DATAGRAM],
    tx: [u8; MAX_DATAGRAM],
    flush: Flush,
}

impl<'a, N: Engine> Poller<'a, N> {
    /// Binds `socket` to `port`, adds it to `sockets` and wraps `node`.
    ///
    /// # Errors
    /// The socket could not be bound (port 0, already bound).
    pub fn new(
        node: N,
        sockets: &mut SocketSet<'a>,
        mut socket: udp::Socket<'a>,
        port: u16,
        fanout: Fanout<'a>,
    ) -> Result<Self, BindError> {
        socket.bind(port)?;
        let handle = sockets.add(socket);
        Ok(Self {
            node,
            handle,
            fanout,
            rx: [0; MAX_DATAGRAM],
            tx: [0; MAX_DATAGRAM],
            flush: Flush::new(),
        })
    }

    /// The node: publish, subscribe, read its counters and events.
    pub fn node(&mut self) -> &mut N {
        &mut self.node
    }

    /// The socket's handle in the set.
    pub fn handle(&self) -> SocketHandle {
        self.handle
    }

    /// The adapter's transmit counters.
    pub fn tx_stats(&self) -> TxStats {
        self.flush.stats()
    }

    /// Moves datagrams both ways and runs the engine's timers; `on_message` gets each
    /// delivered message with the node (to publish a reply, say). Returns when to call
    /// again at the latest (`now` if datagrams wait for room in the socket), or `None`
    /// if only incoming traffic can give the engine work.
    ///
    /// # Panics
    /// If `sockets` is not the set the socket was added to in [`Poller::new`] (smoltcp's
    /// `SocketSet::get_mut` panics on a foreign handle).
    pub fn poll(
        &mut self,
        now: SmolInstant,
        sockets: &mut SocketSet<'_>,
        mut on_message: impl FnMut(Message<'_>, &mut N),
    ) -> Option<SmolInstant> {
        let t = instant(now);
        let socket = sockets.get_mut::<udp::Socket<'_>>(self.handle);
        loop {
            match socket.recv_slice(&mut self.rx) {
                Ok((len, meta)) => {
                    let from = from_endpoint(meta.endpoint);
                    for packet in nomq::node::Packets::new(&mut self.rx[..len]) {
                        if let Some(m) = self.node.handle_packet(t, from, packet) {
                            on_message(m, &mut self.node);
                        }
                    }
                }
                Err(RecvError::Truncated) => self.flush.truncated(),
                Err(RecvError::Exhausted) => break,
            }
        }
        if self.node.poll_timeout().is_some_and(|d| d <= t) {
            self.node.handle_timeout(t);
        }
        while socket.can_send() {
            let Some(d) = self.flush.next(&mut self.node, &self.fanout, t, &mut self.tx) else {
                return self.node.poll_timeout().map(smol);
            };
            let sent = socket.send_slice(&self.tx[..d.len], d.to);
            self.flush.sent(sent.is_ok());
        }
        // The socket is full; the rest waits in the engine until the interface drains it.
        Some(now)
    }
}
