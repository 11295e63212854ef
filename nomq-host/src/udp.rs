//! Reading and writing datagrams in batches: one `recvmmsg` or `sendmmsg` system call for
//! up to [`BATCH`] datagrams on Linux, one `recv_from` or `send_to` per datagram elsewhere.
//!
//! A busy receiver — a node that many sensors report to, or a publisher collecting the
//! acknowledgements of many subscribers — finds several datagrams queued when it wakes.
//! Reading them one by one costs a system call each, plus one more that says the socket is
//! empty; `recvmmsg` takes them all in one call. The datagrams land in slots of one buffer
//! allocated once, each [`nomq::node::Node::max_datagram_len`] bytes long, the most a peer
//! may send this node (docs/PROTOCOL.md §1.2); a longer one is cut by the kernel, counted as
//! truncated and dropped.
//!
//! On the way out, [`SendBatch`] queues the datagrams of one flush — a burst of coalesced
//! publishes, the acknowledgements of many publishers, one datagram to every static peer
//! of a fan-out (each destination of a fan-out points at the same bytes) — and hands them
//! to the kernel together with `sendmmsg`.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;

/// The socket type the batch calls work on: a standard socket (its descriptor for
/// `recvmmsg`/`sendmmsg`) on Linux, tokio's elsewhere.
#[cfg(target_os = "linux")]
pub(crate) type Raw = std::net::UdpSocket;
#[cfg(not(target_os = "linux"))]
pub(crate) type Raw = tokio::net::UdpSocket;

/// A node's UDP socket, registered with the runtime **for reading only** on Linux.
///
/// tokio's `UdpSocket` asks epoll for readability and writability, and Linux reports a UDP
/// socket writable again whenever the kernel releases a datagram it sent: with
/// edge-triggered epoll that wakes a node blocked in `epoll_wait` once for every datagram
/// it sent (on loopback, as the peer reads it), for nothing, since this node's sends never
/// wait on readiness. On a QoS 1 round trip that was one wasted wake-up on each side. Sends
/// here are plain non-blocking calls; the rare one that finds the send buffer full waits
/// for writability through a duplicate descriptor registered for writing only while it
/// waits. Elsewhere this is tokio's socket.
pub(crate) struct Socket {
    #[cfg(target_os = "linux")]
    io: tokio::io::unix::AsyncFd<Raw>,
    #[cfg(not(target_os = "linux"))]
    io: Raw,
}

/// Registers `socket` with the runtime for `interest`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn register(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<tokio::io::unix::AsyncFd<Raw>> {
    // SAFETY: the `UdpSocket` owns its descriptor and the `AsyncFd` owns the socket, so the
    // descriptor stays open, and is not replaced, for as long as it is registered; it is
    // closed only when the `AsyncFd` is dropped, after deregistering it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(socket, interest) }
        .map_err(|e| e.into_parts().1)
}

impl Socket {
    /// Makes `socket` non-blocking and registers it with the current runtime.
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        #[cfg(target_os = "linux")]
        return Ok(Self { io: register(socket, Interest::READABLE)? });
        #[cfg(not(target_os = "linux"))]
        return Ok(Self { io: tokio::net::UdpSocket::from_std(socket)? });
    }

    /// The socket the system calls take.
    pub(crate) fn raw(&self) -> &Raw {
        #[cfg(target_os = "linux")]
        return self.io.get_ref();
        #[cfg(not(target_os = "linux"))]
        return &self.io;
    }

    /// The address it is bound to.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.raw().local_addr()
    }

    /// Waits until a datagram (or an error) may be waiting; cancel safe. Readiness stays
    /// set until a read finds the socket empty ([`Socket::try_read`]).
    pub(crate) async fn readable(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        return self.io.readable().await.map(drop);
        #[cfg(not(target_os = "linux"))]
        return self.io.readable().await;
    }

    /// Runs the non-blocking read `f` if the socket may be readable; its `WouldBlock`
    /// clears the readiness (and a `WouldBlock` comes back at once while none is set).
    pub(crate) fn try_read<R>(&self, f: impl FnOnce(&Raw) -> io::Result<R>) -> io::Result<R> {
        #[cfg(target_os = "linux")]
        return self.io.try_io(Interest::READABLE, f);
        #[cfg(not(target_os = "linux"))]
        return self.io.try_io(Interest::READABLE, || f(&self.io));
    }

    /// Runs the non-blocking send `f`, and again each time the socket becomes writable
    /// while `f` finds its buffer full.
    #[cfg(target_os = "linux")]
    pub(crate) async fn write<R>(&self, mut f: impl FnMut(&Raw) -> io::Result<R>) -> io::Result<R> {
        loop {
            match f(self.raw()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            // The send buffer is full (rare: a burst faster than the interface). A
            // descriptor registered now is reported writable at once if room was made
            // meanwhile, so no wake-up is missed; it is deregistered when dropped.
            let waiter = register(self.raw().try_clone()?, Interest::WRITABLE)?;
            drop(waiter.writable().await?);
        }
    }

    /// Runs the non-blocking send `f`, and again each time the socket becomes writable
    /// while `f` finds its buffer full.
    #[cfg(not(target_os = "linux"))]
    pub(crate) async fn write<R>(&self, mut f: impl FnMut(&Raw) -> io::Result<R>) -> io::Result<R> {
        match self.io.try_io(Interest::WRITABLE, || f(&self.io)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.io.async_io(Interest::WRITABLE, || f(&self.io)).await
            }
            r => r,
        }
    }
}

/// Most datagrams one call reads.
pub(crate) const BATCH: usize = 32;
/// Bound on the batch buffer: fewer slots when datagrams may be large (loopback).
const BUFFER_BYTES: usize = 256 * 1024;

/// One datagram of a batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    /// The slot it is in.
    slot: usize,
    pub(crate) len: usize,
    pub(crate) from: SocketAddr,
    /// Longer than its slot: the kernel kept only the first `len` bytes.
    pub(crate) truncated: bool,
}

/// The receive buffer and the result of the last read.
pub(crate) struct RecvBatch {
    buf: Vec<u8>,
    slot: usize,
    got: Vec<Received>,
    /// Whether the last read returned fewer datagrams than it asked for.
    short: bool,
}

impl RecvBatch {
    /// Slots of `slot` bytes (at least one, at most [`BATCH`], about [`BUFFER_BYTES`] in all).
    pub(crate) fn new(slot: usize) -> Self {
        let slot = slot.max(1);
        let slots = (BUFFER_BYTES / slot).clamp(1, BATCH);
        Self { buf: vec![0; slot * slots], slot, got: Vec::with_capacity(slots), short: false }
    }

    /// Datagrams one [`RecvBatch::recv`] can return.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len() / self.slot
    }

    /// Reads up to `max` (at least 1) datagrams that are waiting on `socket` without
    /// waiting for more; `WouldBlock` if there is none. Either way, a read that finds the
    /// socket empty clears tokio's readiness, so the next wait blocks until a datagram
    /// arrives.
    ///
    /// On Linux a short `recvmmsg` (fewer datagrams than asked for) already says the
    /// socket is empty: the closure reports it to `try_io` as `WouldBlock`, keeping the
    /// datagrams, so the readiness is cleared without a second call that would return
    /// nothing. `try_io` clears only the readiness it saw before the read: one that a
    /// newer epoll event set (a datagram that arrived since, collected by another worker's
    /// driver) stays, and a datagram that arrived since but is not collected yet is
    /// reported by epoll at the next wait (edge-triggered: its arrival is the edge).
    pub(crate) fn recv(&mut self, socket: &Socket, max: usize) -> io::Result<usize> {
        let max = max.clamp(1, self.capacity());
        self.got.clear();
        let (buf, slot, got) = (&mut self.buf, self.slot, &mut self.got);
        let mut returned = 0;
        let r = socket.try_read(|raw| {
            returned = read(raw, &mut buf[..slot * max], slot, got)?;
            if cfg!(target_os = "linux") && returned < max {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(returned)
        });
        match r {
            Ok(_) => self.short = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && returned > 0 => self.short = true,
            Err(e) => return Err(e),
        }
        Ok(self.got.len())
    }

    /// Whether the last read found the socket empty after what it returned (on Linux,
    /// `recvmmsg` returned fewer than it was asked for, and the readiness is cleared):
    /// a caller is done with the socket until it is readable again. Never true
    /// elsewhere, where a read returns one datagram and the next read finds out.
    pub(crate) fn drained(&self) -> bool {
        cfg!(target_os = "linux") && self.short
    }

    /// Datagram `i` of the last read: its bytes (in place, to be opened there) and where
    /// it came from.
    pub(crate) fn get(&mut self, i: usize) -> (&mut [u8], Received) {
        let r = self.got[i];
        let at = r.slot * self.slot;
        (&mut self.buf[at..at + r.len], r)
    }
}

#[cfg(target_os = "linux")]
fn read(socket: &Raw, buf: &mut [u8], slot: usize, got: &mut Vec<Received>) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;
    let n = buf.len() / slot;
    let mut chunks = buf.chunks_exact_mut(slot);
    let mut slices: [[IoSliceMut<'_>; 1]; BATCH] =
        std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
    // Per call: nix's headers hold raw pointers, so the driver (a Send future) cannot keep
    // them between calls. Two small allocations per batch, none per datagram.
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
    let msgs = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices[..n].iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    let mut returned = 0;
    for (i, m) in msgs.enumerate() {
        returned += 1;
        let from = m.address.and_then(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(SocketAddr::V4((*v4).into()))
            } else {
                a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
            }
        });
        // A datagram without an IP source cannot be answered or attributed: skipped.
        let Some(from) = from else { continue };
        let truncated = m.flags.contains(MsgFlags::MSG_TRUNC);
        got.push(Received { slot: i, len: m.bytes.min(slot), from, truncated });
    }
    Ok(returned)
}

#[cfg(not(target_os = "linux"))]
fn read(socket: &Raw, buf: &mut [u8], slot: usize, got: &mut Vec<Received>) -> io::Result<usize> {
    // One datagram, into the first slot (`recv_from` cannot tell a cut datagram).
    let (len, from) = socket.try_recv_from(&mut buf[..slot])?;
    got.push(Received { slot: 0, len, from, truncated: false });
    Ok(1)
}

/// The datagrams of one flush waiting to be sent together: slots of one buffer made at
/// start (each [`nomq::node::Node::max_datagram_len`] bytes, at least two, at most
/// [`BATCH`]) that [`nomq::node::Flush::next`] writes into, and up to [`BATCH`]
/// (slot, length, destination) entries; a fan-out queues one entry per destination on one
/// slot. Slots are taken in turn, so the slot of the datagram still being fanned out is
/// never handed out again before its last destination is queued.
pub(crate) struct SendBatch {
    buf: Vec<u8>,
    slot: usize,
    /// The slot the last datagram was written to.
    cur: usize,
    /// Slots holding a datagram written since the last send (the current one counts).
    used: usize,
    queued: Vec<(usize, usize, SocketAddr)>,
}

impl SendBatch {
    /// Slots of `slot` bytes (2 to [`BATCH`] of them, about [`BUFFER_BYTES`] in all).
    pub(crate) fn new(slot: usize) -> Self {
        let slot = slot.max(1);
        let slots = (BUFFER_BYTES / slot).clamp(2, BATCH);
        Self { buf: vec![0; slot * slots], slot, cur: slots - 1, used: 0, queued: Vec::new() }
    }

    fn slots(&self) -> usize {
        self.buf.len() / self.slot
    }

    /// The buffer for the next datagram, or `None` while every slot holds one not yet
    /// sent ([`SendBatch::send`] first). Call [`SendBatch::wrote`] if a datagram was
    /// written to it.
    pub(crate) fn fresh(&mut self) -> Option<&mut [u8]> {
        if self.used == self.slots() {
            return None;
        }
        let at = (self.cur + 1) % self.slots() * self.slot;
        Some(&mut self.buf[at..at + self.slot])
    }

    /// The buffer [`SendBatch::fresh`] gave now holds a datagram.
    pub(crate) fn wrote(&mut self) {
        self.cur = (self.cur + 1) % self.slots();
        self.used += 1;
    }

    /// Queues the first `len` bytes of the last datagram written, to `to`.
    pub(crate) fn queue(&mut self, len: usize, to: SocketAddr) {
        debug_assert!(self.used > 0 && len <= self.slot);
        self.queued.push((self.cur, len.min(self.slot), to));
    }

    /// Whether no more entries fit: [`SendBatch::send`] before queueing another.
    pub(crate) fn is_full(&self) -> bool {
        self.queued.len() >= BATCH
    }

    /// Sends every queued datagram, in order, waiting while the socket's buffer is full;
    /// `done` learns what became of each (`None`: sent). A datagram the kernel refuses
    /// (no route, too large) is reported and the ones after it are still sent. The slot of
    /// the last datagram written stays intact (its fan-out may go on).
    pub(crate) async fn send(
        &mut self,
        socket: &Socket,
        mut done: impl FnMut(SocketAddr, Option<&io::Error>),
    ) {
        let mut at = 0;
        while at < self.queued.len() {
            let rest = &self.queued[at..];
            let (buf, slot) = (&self.buf, self.slot);
            let r = socket.write(|raw| write(raw, buf, slot, rest)).await;
            match r {
                Ok(n) if n > 0 => {
                    let n = n.min(rest.len());
                    rest[..n].iter().for_each(|q| done(q.2, None));
                    at += n;
                }
                Ok(_) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "no datagram sent");
                    done(rest[0].2, Some(&e));
                    at += 1;
                }
                Err(e) => {
                    done(rest[0].2, Some(&e));
                    at += 1;
                }
            }
        }
        self.queued.clear();
        self.used = self.used.min(1);
    }
}

/// Sends `queued` (slot, length, destination) from `buf`'s slots of `slot` bytes in one
/// `sendmmsg`; how many the kernel took (the first refused one is the error of the next
/// call, which starts with it).
#[cfg(target_os = "linux")]
fn write(
    socket: &Raw,
    buf: &[u8],
    slot: usize,
    queued: &[(usize, usize, SocketAddr)],
) -> io::Result<usize> {
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;
    let queued = &queued[..queued.len().min(BATCH)];
    let slices: Vec<[IoSlice<'_>; 1]> =
        queued.iter().map(|&(s, len, _)| [IoSlice::new(&buf[s * slot..s * slot + len])]).collect();
    let addrs: Vec<Option<SockaddrStorage>> =
        queued.iter().map(|q| Some(SockaddrStorage::from(q.2))).collect();
    // As for recvmmsg: nix's headers hold raw pointers, so they are made per call.
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(queued.len(), None);
    let sent =
        sendmmsg(socket.as_raw_fd(), &mut headers, &slices, &addrs, [], MsgFlags::MSG_DONTWAIT)
            .map_err(io::Error::from)?;
    Ok(sent.count())
}

#[cfg(not(target_os = "linux"))]
fn write(
    socket: &Raw,
    buf: &[u8],
    slot: usize,
    queued: &[(usize, usize, SocketAddr)],
) -> io::Result<usize> {
    let (s, len, to) = queued[0];
    socket.try_send_to(&buf[s * slot..s * slot + len], to).map(|_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UdpSocket;

    /// A node-side socket on 127.0.0.1 (call inside a runtime).
    fn node_socket() -> Socket {
        Socket::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Datagrams queued on a socket come out in order, each in its own slot with its
    /// sender; on Linux in one call.
    #[test]
    fn a_batch_reads_queued_datagrams_in_order() {
        rt().block_on(async {
            let rx = node_socket();
            let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let to = rx.local_addr().unwrap();
            for i in 0..10u8 {
                let s = if i % 2 == 0 { &a } else { &b };
                s.send_to(&vec![i; 10 + usize::from(i)], to).await.unwrap();
            }
            rx.readable().await.unwrap();
            let mut batch = RecvBatch::new(100);
            let mut seen = Vec::new();
            while seen.len() < 10 {
                let n = match batch.recv(&rx, 64) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        rx.readable().await.unwrap();
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                if cfg!(target_os = "linux") {
                    assert_eq!(n, 10, "all ten queued datagrams in one call");
                }
                for i in 0..n {
                    let (bytes, r) = batch.get(i);
                    seen.push((bytes.to_vec(), r.from, r.truncated));
                }
            }
            for (i, (bytes, from, truncated)) in seen.into_iter().enumerate() {
                let i = u8::try_from(i).unwrap();
                assert_eq!(bytes, vec![i; 10 + usize::from(i)]);
                let s = if i % 2 == 0 { &a } else { &b };
                assert_eq!(from, s.local_addr().unwrap());
                assert!(!truncated);
            }
            assert_eq!(batch.recv(&rx, 64).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        });
    }

    /// A short read says the socket is empty: it clears the readiness, so the next wait
    /// blocks instead of leading to a read that finds nothing, and the next datagram ends
    /// that wait; on both runtime flavours (on the multi-threaded one another worker's
    /// driver may collect the epoll event).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_short_read_clears_readiness_and_the_next_datagram_ends_the_wait() {
        use std::time::Duration;
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for rt in [rt(), multi] {
            rt.block_on(async {
                let rx = node_socket();
                let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let to = rx.local_addr().unwrap();
                let mut batch = RecvBatch::new(100);
                for round in 0..10u8 {
                    tx.send_to(&[round; 20], to).await.unwrap();
                    tx.send_to(&[round; 21], to).await.unwrap();
                    let mut got = Vec::new();
                    while got.len() < 2 {
                        tokio::time::timeout(Duration::from_secs(5), rx.readable())
                            .await
                            .expect("a queued datagram ends the wait")
                            .unwrap();
                        let n = match batch.recv(&rx, 64) {
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                            Err(e) => panic!("{e}"),
                        };
                        got.extend((0..n).map(|i| batch.get(i).0.to_vec()));
                    }
                    assert_eq!(got, [vec![round; 20], vec![round; 21]]);
                    assert!(batch.drained());
                    let wait = tokio::time::timeout(Duration::from_millis(20), rx.readable()).await;
                    assert!(wait.is_err(), "round {round}: readiness left set after a short read");
                }
            });
        }
    }

    /// A datagram longer than a slot is reported cut, and the next one is whole.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_datagram_longer_than_its_slot_is_reported_truncated() {
        rt().block_on(async {
            let rx = node_socket();
            let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let to = rx.local_addr().unwrap();
            tx.send_to(&[7; 300], to).await.unwrap();
            tx.send_to(&[8; 50], to).await.unwrap();
            rx.readable().await.unwrap();
            let mut batch = RecvBatch::new(100);
            let n = batch.recv(&rx, 64).unwrap();
            assert_eq!(n, 2);
            let (bytes, r) = batch.get(0);
            assert!(r.truncated);
            assert_eq!(bytes, &[7; 100][..]);
            let (bytes, r) = batch.get(1);
            assert!(!r.truncated);
            assert_eq!(bytes, &[8; 50][..]);
        });
    }

    /// The buffer stays bounded whatever the slot size.
    #[test]
    fn slots_are_bounded() {
        assert_eq!(RecvBatch::new(1472).capacity(), BATCH);
        assert_eq!(RecvBatch::new(65_507).capacity(), 4);
        assert_eq!(RecvBatch::new(1 << 20).capacity(), 1);
    }

    /// Datagrams queued in slots, one of them fanned out to three receivers, leave in one
    /// flush in order; a destination the socket cannot reach is reported and its
    /// neighbours still go.
    #[test]
    fn a_send_batch_fans_out_and_survives_a_refused_destination() {
        rt().block_on(async {
            let tx = node_socket();
            let mut rx = Vec::new();
            for _ in 0..3 {
                rx.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            }
            let to: Vec<SocketAddr> = rx.iter().map(|s| s.local_addr().unwrap()).collect();
            // An IPv6 destination from an IPv4 socket: refused by the kernel.
            let v6: SocketAddr = "[::1]:9".parse().unwrap();
            let mut batch = SendBatch::new(64);
            assert_eq!(batch.slots(), BATCH);
            let mut plan: Vec<(u8, SocketAddr)> = Vec::new();
            let mut outcomes = Vec::new();
            for i in 0..40u8 {
                let b = batch.fresh().expect("a slot is free");
                b[..4].fill(i);
                batch.wrote();
                let dests: Vec<SocketAddr> = match i {
                    // 27: its three entries straddle the first batch of 32.
                    5 | 27 => to.clone(),
                    7 => vec![to[0], v6, to[1]],
                    _ => vec![to[usize::from(i) % 3]],
                };
                for d in dests {
                    if batch.is_full() {
                        batch.send(&tx, |to, e| outcomes.push((to, e.is_none()))).await;
                    }
                    batch.queue(4, d);
                    plan.push((i, d));
                }
                if batch.fresh().is_none() {
                    batch.send(&tx, |to, e| outcomes.push((to, e.is_none()))).await;
                }
            }
            batch.send(&tx, |to, e| outcomes.push((to, e.is_none()))).await;
            let want: Vec<(SocketAddr, bool)> = plan.iter().map(|p| (p.1, p.1 != v6)).collect();
            assert_eq!(outcomes, want, "each datagram reported once, in order");
            let mut buf = [0u8; 64];
            for (k, t) in to.iter().enumerate() {
                let expect: Vec<u8> = plan.iter().filter(|p| p.1 == *t).map(|p| p.0).collect();
                let mut got = Vec::new();
                for _ in 0..expect.len() {
                    let wait = std::time::Duration::from_secs(5);
                    let (n, from) = tokio::time::timeout(wait, rx[k].recv_from(&mut buf))
                        .await
                        .expect("every queued datagram arrives")
                        .unwrap();
                    assert_eq!((n, from), (4, tx.local_addr().unwrap()));
                    assert!(buf[..4].iter().all(|&b| b == buf[0]));
                    got.push(buf[0]);
                }
                assert_eq!(got, expect, "receiver {k}: each datagram once, in order");
                assert!(rx[k].try_recv_from(&mut buf).is_err(), "and nothing more");
            }
        });
    }

    /// A send that finds the buffer full waits for writability and is made again; the
    /// socket, registered for reading only, still reads afterwards.
    #[test]
    fn a_send_that_would_block_is_retried_once_writable() {
        rt().block_on(async {
            let s = node_socket();
            let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let to = peer.local_addr().unwrap();
            let mut calls = 0;
            let wait = std::time::Duration::from_secs(5);
            let r = tokio::time::timeout(
                wait,
                s.write(|raw| {
                    calls += 1;
                    if calls == 1 {
                        return Err(io::Error::from(io::ErrorKind::WouldBlock));
                    }
                    write(raw, &[9; 8], 8, &[(0, 8, to)])
                }),
            )
            .await
            .expect("writable again at once: no missed wake-up");
            assert_eq!((r.unwrap(), calls), (1, 2));
            let mut buf = [0; 16];
            let (n, from) = peer.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (&[9; 8][..], s.local_addr().unwrap()));
            peer.send_to(b"back", from).await.unwrap();
            tokio::time::timeout(wait, s.readable()).await.unwrap().unwrap();
            let mut batch = RecvBatch::new(64);
            assert_eq!(batch.recv(&s, 4).unwrap(), 1);
            assert_eq!(batch.get(0).0, b"back");
        });
    }
}
