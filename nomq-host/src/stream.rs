//! A subscription's stream: bounded by a count of messages, handed over in batches.
//!
//! The driver reserves a place for a message when the engine delivers it (so a QoS 1/2
//! message is acknowledged only once it is sure to reach the reader), stages it at the
//! next flush, and sends what it staged as one batch at the end of that flush. A reader
//! parked on another thread is woken once per batch, not once per message: on a 2-core
//! machine the woken reader takes the core from the driver at once, so a wake-up per
//! message (what a channel of messages does) cost a pair of context switches for every
//! few messages of a burst.
//!
//! The bound is the one a bounded channel of `depth` messages would give: places reserved
//! and not yet sent, plus messages sent and not yet taken by the reader, never exceed
//! `depth`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A new stream of at most `depth` (at least 1) messages.
pub(crate) fn stream<T>(depth: usize) -> (StreamTx<T>, StreamRx<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let tx = StreamTx {
        tx,
        queued: Arc::clone(&queued),
        depth: depth.max(1),
        reserved: 0,
        staged: Vec::new(),
    };
    (tx, StreamRx { rx, queued, batch: Vec::new().into_iter() })
}

/// The driver's end.
#[derive(Debug)]
pub(crate) struct StreamTx<T> {
    tx: mpsc::UnboundedSender<Vec<T>>,
    /// Messages sent and not yet taken by the reader (it decrements).
    queued: Arc<AtomicUsize>,
    depth: usize,
    /// Places reserved and not yet sent (staged ones included).
    reserved: usize,
    staged: Vec<T>,
}

/// Why [`StreamTx::reserve`] found no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// `depth` messages are reserved or waiting for the reader.
    Full,
    /// The reader is gone.
    Closed,
}

impl<T> StreamTx<T> {
    /// Reserves a place for one message, to be filled by [`StreamTx::stage`].
    pub(crate) fn reserve(&mut self) -> Result<(), Full> {
        if self.tx.is_closed() {
            return Err(Full::Closed);
        }
        // The reader only ever lowers `queued`, so a stale reading errs on the full side.
        if self.queued.load(Ordering::Acquire) + self.reserved >= self.depth {
            return Err(Full::Full);
        }
        self.reserved += 1;
        Ok(())
    }

    /// Gives back a place reserved and never staged.
    pub(crate) fn unreserve(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Puts a message in a reserved place; it reaches the reader at [`StreamTx::send`].
    pub(crate) fn stage(&mut self, message: T) {
        debug_assert!(self.staged.len() < self.reserved, "staged without a reserved place");
        self.staged.push(message);
    }

    /// Sends what was staged, as one batch (one wake-up of the reader).
    pub(crate) fn send(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.staged);
        let n = batch.len();
        self.reserved = self.reserved.saturating_sub(n);
        // Counted before it is visible to the reader, which subtracts as it takes.
        self.queued.fetch_add(n, Ordering::AcqRel);
        if let Err(e) = self.tx.send(batch) {
            // The reader is gone: nothing waits for these.
            self.queued.fetch_sub(e.0.len(), Ordering::AcqRel);
        }
    }
}

/// The reader's end.
#[derive(Debug)]
pub(crate) struct StreamRx<T> {
    rx: mpsc::UnboundedReceiver<Vec<T>>,
    queued: Arc<AtomicUsize>,
    /// The rest of the batch being read.
    batch: std::vec::IntoIter<T>,
}

impl<T> StreamRx<T> {
    fn took(&self, n: usize) {
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// The next message; `None` once the driver's end is gone and everything was read.
    /// Cancel safe: a batch is kept as soon as it is received.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            if let Some(m) = self.batch.next() {
                self.took(1);
                return Poll::Ready(Some(m));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => self.batch = b.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Waits for at least one message, then appends to `buf` every message already
    /// waiting, up to `limit`. Returns how many: 0 only once the driver's end is gone
    /// and everything was read, or for a `limit` of 0. Cancel safe.
    pub(crate) async fn recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        if self.batch.len() == 0 {
            match self.rx.recv().await {
                Some(b) => self.batch = b.into_iter(),
                None => return 0,
            }
        }
        let mut n = 0;
        loop {
            let take = (limit - n).min(self.batch.len());
            buf.extend(self.batch.by_ref().take(take));
            n += take;
            if n == limit {
                break;
            }
            match self.rx.try_recv() {
                Ok(b) => self.batch = b.into_iter(),
                Err(_) => break,
            }
        }
        self.took(n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_by_reserved_and_unread_messages() {
        let (mut tx, mut rx) = stream::<u32>(3);
        for i in 0..3 {
            tx.reserve().unwrap();
            tx.stage(i);
        }
        assert_eq!(tx.reserve(), Err(Full::Full), "3 reserved");
        tx.send();
        assert_eq!(tx.reserve(), Err(Full::Full), "3 sent, unread");
        assert_eq!(rx.recv().await, Some(0));
        tx.reserve().expect("one was read");
        assert_eq!(tx.reserve(), Err(Full::Full));
        tx.unreserve();
        tx.reserve().expect("given back");
        tx.stage(3);
        tx.send();
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 10).await, 3);
        assert_eq!(buf, [1, 2, 3]);
        for _ in 0..3 {
            tx.reserve().expect("all read");
        }
        drop(rx);
        assert_eq!(tx.reserve(), Err(Full::Closed));
    }

    #[tokio::test]
    async fn recv_many_spans_batches_and_stops_at_the_limit() {
        let (mut tx, mut rx) = stream::<u32>(100);
        for batch in [0..4u32, 4..5, 5..9] {
            for i in batch {
                tx.reserve().unwrap();
                tx.stage(i);
            }
            tx.send();
        }
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 6).await, 6);
        assert_eq!(buf, [0, 1, 2, 3, 4, 5]);
        assert_eq!(rx.recv().await, Some(6));
        buf.clear();
        assert_eq!(rx.recv_many(&mut buf, 0).await, 0);
        assert_eq!(rx.recv_many(&mut buf, 6).await, 2);
        assert_eq!(buf, [7, 8]);
        // Everything read: 100 places again.
        for _ in 0..100 {
            tx.reserve().unwrap();
        }
        assert_eq!(tx.reserve(), Err(Full::Full));
        drop(tx);
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.recv_many(&mut buf, 6).await, 0);
    }

    /// One batch, one wake-up: a reader parked on another thread is woken once for all
    /// the messages of a flush.
    #[test]
    fn a_batch_wakes_the_reader_once() {
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let (mut tx, mut rx) = stream::<u32>(64);
        assert!(rx.poll_recv(&mut cx).is_pending());
        for i in 0..50 {
            tx.reserve().unwrap();
            tx.stage(i);
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "staging wakes nobody");
        tx.send();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake-up for the batch");
        for i in 0..50 {
            assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(i)));
        }
        assert!(rx.poll_recv(&mut cx).is_pending());
    }
}
