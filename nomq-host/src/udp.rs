//! Reading datagrams in batches: one `recvmmsg` system call for up to [`BATCH`] datagrams
//! on Linux, one `recv_from` per datagram elsewhere.
//!
//! A busy receiver — a node that many sensors report to, or a publisher collecting the
//! acknowledgements of many subscribers — finds several datagrams queued when it wakes.
//! Reading them one by one costs a system call each, plus one more that says the socket is
//! empty; `recvmmsg` takes them all in one call. The datagrams land in slots of one buffer
//! allocated once, each [`nomq::node::Node::max_datagram_len`] bytes long, the most a peer
//! may send this node (docs/PROTOCOL.md §1.2); a longer one is cut by the kernel, counted as
//! truncated and dropped.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

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
}

impl RecvBatch {
    /// Slots of `slot` bytes (at least one, at most [`BATCH`], about [`BUFFER_BYTES`] in all).
    pub(crate) fn new(slot: usize) -> Self {
        let slot = slot.max(1);
        let slots = (BUFFER_BYTES / slot).clamp(1, BATCH);
        Self { buf: vec![0; slot * slots], slot, got: Vec::with_capacity(slots) }
    }

    /// Datagrams one [`RecvBatch::recv`] can return.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len() / self.slot
    }

    /// Reads up to `max` (at least 1) datagrams that are waiting on `socket` without
    /// waiting for more; `WouldBlock` if there is none (which clears tokio's readiness).
    pub(crate) fn recv(&mut self, socket: &UdpSocket, max: usize) -> io::Result<usize> {
        let max = max.clamp(1, self.capacity());
        self.got.clear();
        let (buf, slot, got) = (&mut self.buf, self.slot, &mut self.got);
        socket.try_io(Interest::READABLE, || read(socket, &mut buf[..slot * max], slot, got))?;
        Ok(self.got.len())
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
fn read(
    socket: &UdpSocket,
    buf: &mut [u8],
    slot: usize,
    got: &mut Vec<Received>,
) -> io::Result<()> {
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
    for (i, m) in msgs.enumerate() {
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
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn read(
    socket: &UdpSocket,
    buf: &mut [u8],
    slot: usize,
    got: &mut Vec<Received>,
) -> io::Result<()> {
    // One datagram, into the first slot (`recv_from` cannot tell a cut datagram).
    let (len, from) = socket.try_recv_from(&mut buf[..slot])?;
    got.push(Received { slot: 0, len, from, truncated: false });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Datagrams queued on a socket come out in order, each in its own slot with its
    /// sender; on Linux in one call.
    #[test]
    fn a_batch_reads_queued_datagrams_in_order() {
        rt().block_on(async {
            let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
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

    /// A datagram longer than a slot is reported cut, and the next one is whole.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_datagram_longer_than_its_slot_is_reported_truncated() {
        rt().block_on(async {
            let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
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
}
