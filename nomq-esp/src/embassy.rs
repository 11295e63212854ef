//! Async adapter over an `embassy-net` UDP socket.
//!
//! ```text
//! static RESOURCES: StaticCell<Resources> = StaticCell::new();
//! static STATE: StaticCell<State<CriticalSectionRawMutex, MyNode>> = StaticCell::new();
//!
//! let state = STATE.init(State::new(node));
//! let (client, mut runner) =
//!     nomq_esp::embassy::new(stack, state, RESOURCES.init(Resources::new()), 8888, Fanout::Broadcast(8888))?;
//! spawner.spawn(nomq_task(runner)?);          // async fn nomq_task(mut r: Runner<..>) -> ! { r.run().await }
//! client.subscribe("cmd/#")?;
//! client.publish("sensor/t", b"21.5", PublishOptions::qos(Qos::AtLeastOnce))?;
//! loop { client.receive(|msg, _node| info!("{}", msg.name)).await }
//! ```
//!
//! - [`Runner::run`] owns the socket: it receives datagrams into the engine, sends what
//!   the engine queues (the first copy of a publish to the [`Fanout`], everything else
//!   unicast), and sleeps until the engine's next deadline.
//! - [`Client`] is `Copy`; any task may publish, subscribe and receive through it.
//! - A delivered message stays in the one receive buffer until [`Client::receive`] takes
//!   it (zero-copy). Until then the runner reads no further datagrams and the socket's
//!   buffer holds them, so an application that subscribes must keep receiving. Nothing
//!   is dropped silently: QoS 1/2 senders retransmit what overflows the socket; the
//!   engine's counters ([`nomq::node::Stats`]) and [`TxStats`] count the rest.
//! - No heap: [`Resources`] (socket buffers) and [`State`] (the node and the receive
//!   buffer) are the caller's, typically in a `StaticCell`.

use core::cell::RefCell;
use core::future::{Future, poll_fn};
use core::ops::Range;
use core::pin::Pin;
use core::task::{Context, Poll};

use embassy_net::Stack;
use embassy_net::udp::{BindError, PacketMetadata, RecvError, UdpSocket};
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::waitqueue::WakerRegistration;
use embassy_time::Timer;
use nomq::body::MessageId;
use nomq::node::{PublishError, PublishHandle, SubscribeError};
use nomq::{Addr, ChannelName, Instant, Message, PublishOptions, Qos, SessionId};

use nomq::node::Flush;

use crate::{Engine, Fanout, MAX_DATAGRAM, TxStats, from_endpoint};

/// The blocking mutexes [`State`] can use, re-exported so firmware need not depend on
/// `embassy-sync` (and match its version) only to name one.
pub use embassy_sync::blocking_mutex::raw::{CriticalSectionRawMutex, NoopRawMutex, RawMutex};

/// The engine's clock: embassy-time's, in microseconds.
pub fn now() -> Instant {
    Instant::from_micros(embassy_time::Instant::now().as_micros())
}

fn at(t: Instant) -> embassy_time::Instant {
    embassy_time::Instant::from_micros(t.total_micros())
}

/// Socket storage, owned by the caller: `META` datagrams of metadata and `BUF` bytes of
/// payload each way, plus one outgoing datagram. The defaults (8 datagrams, 4 KiB) hold
/// a burst of small packets or two full-size ones.
pub struct Resources<const META: usize = 8, const BUF: usize = 4096> {
    rx_meta: [PacketMetadata; META],
    rx_buf: [u8; BUF],
    tx_meta: [PacketMetadata; META],
    tx_buf: [u8; BUF],
    datagram: [u8; MAX_DATAGRAM],
}

impl<const META: usize, const BUF: usize> Resources<META, BUF> {
    /// Zeroed storage (a `const fn`, so it can live in a `static`).
    pub const fn new() -> Self {
        Self {
            rx_meta: [PacketMetadata::EMPTY; META],
            rx_buf: [0; BUF],
            tx_meta: [PacketMetadata::EMPTY; META],
            tx_buf: [0; BUF],
            datagram: [0; MAX_DATAGRAM],
        }
    }
}

impl<const META: usize, const BUF: usize> Default for Resources<META, BUF> {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a delivered message sits in the receive buffer.
struct Pending {
    name: Range<usize>,
    body: Range<usize>,
    from: Addr,
    session: SessionId,
    msg: MessageId,
    qos: Qos,
    retained: bool,
    ttl: u16,
    dup: bool,
    subscriptions: nomq::node::SubscriptionSet,
}

struct Shared<N> {
    node: N,
    rx: [u8; MAX_DATAGRAM],
    /// The packets of the datagram in `rx` not handled yet, and where it came from.
    rest: core::ops::Range<usize>,
    from: nomq::Addr,
    pending: Option<Pending>,
    /// Something was queued: the runner should flush and recompute its deadline.
    kick: bool,
    runner: WakerRegistration,
    receiver: WakerRegistration,
    events: WakerRegistration,
    flush: Flush,
}

/// What the runner and the clients share: the node and the receive buffer, behind a
/// blocking mutex `M` (`CriticalSectionRawMutex` if clients run in interrupt executors
/// or on another core, `NoopRawMutex` if everything runs in one executor).
pub struct State<M: RawMutex, N> {
    inner: Mutex<M, RefCell<Shared<N>>>,
}

impl<M: RawMutex, N: Engine> State<M, N> {
    /// State around a freshly made node.
    pub fn new(node: N) -> Self {
        Self {
            inner: Mutex::new(RefCell::new(Shared {
                node,
                rx: [0; MAX_DATAGRAM],
                rest: 0..0,
                from: nomq::Addr::V4([0; 4], 0),
                pending: None,
                kick: false,
                runner: WakerRegistration::new(),
                receiver: WakerRegistration::new(),
                events: WakerRegistration::new(),
                flush: Flush::new(),
            })),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared<N>) -> R) -> R {
        self.inner.lock(|c| f(&mut c.borrow_mut()))
    }
}

/// The two halves [`new`] returns.
pub type Adapter<'d, M, N> = (Client<'d, M, N>, Runner<'d, M, N>);

/// Opens the socket on `port` and splits the adapter into a [`Client`] and the
/// [`Runner`] that must be polled (spawned in a task) for anything to move.
///
/// # Errors
/// The socket could not be bound.
pub fn new<'d, M: RawMutex, N: Engine, const META: usize, const BUF: usize>(
    stack: Stack<'d>,
    state: &'d State<M, N>,
    resources: &'d mut Resources<META, BUF>,
    port: u16,
    fanout: Fanout<'d>,
) -> Result<Adapter<'d, M, N>, BindError> {
    let Resources { rx_meta, rx_buf, tx_meta, tx_buf, datagram } = resources;
    let mut socket = UdpSocket::new(stack, rx_meta, rx_buf, tx_meta, tx_buf);
    socket.bind(port)?;
    Ok((Client { state }, Runner { state, socket, datagram, fanout }))
}

/// Drives the engine over the socket. Spawn [`Runner::run`] in its own task.
pub struct Runner<'d, M: RawMutex, N> {
    state: &'d State<M, N>,
    socket: UdpSocket<'d>,
    datagram: &'d mut [u8; MAX_DATAGRAM],
    fanout: Fanout<'d>,
}

impl<M: RawMutex, N: Engine> Runner<'_, M, N> {
    /// Runs the adapter forever.
    pub async fn run(&mut self) -> ! {
        loop {
            let t = now();
            let due = self.state.with(|s| s.node.poll_timeout().is_some_and(|d| d <= t));
            if due {
                self.state.with(|s| s.node.handle_timeout(t));
            }
            self.flush().await;
            let deadline = self.state.with(|s| {
                // Outcomes and peer events may have been queued by any of the above.
                s.events.wake();
                s.node.poll_timeout()
            });
            let mut timer = deadline.map(|d| Timer::at(at(d)));
            let (state, socket) = (self.state, &self.socket);
            poll_fn(|cx| {
                if timer.as_mut().is_some_and(|t| Pin::new(t).poll(cx).is_ready()) {
                    return Poll::Ready(());
                }
                state.with(|s| Self::poll_wake(s, socket, cx))
            })
            .await;
        }
    }

    /// Ready when a client queued something or a datagram was handled. Reads the socket
    /// only while the receive buffer is free.
    fn poll_wake(s: &mut Shared<N>, socket: &UdpSocket<'_>, cx: &mut Context<'_>) -> Poll<()> {
        if core::mem::take(&mut s.kick) {
            return Poll::Ready(());
        }
        s.runner.register(cx.waker());
        if s.pending.is_some() {
            return Poll::Pending;
        }
        if s.rest.is_empty() {
            match socket.poll_recv_from(&mut s.rx, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(RecvError::Truncated)) => {
                    s.flush.truncated();
                    return Poll::Ready(());
                }
                Poll::Ready(Ok((len, meta))) => {
                    s.rest = 0..len;
                    s.from = from_endpoint(meta.endpoint);
                }
            }
        }
        // The datagram's packets, up to the first message delivered: the rest waits in
        // the buffer until the client took it.
        let base = s.rx.as_ptr() as usize;
        while s.pending.is_none() && !s.rest.is_empty() {
            let at = s.rest.clone();
            let n = nomq::wire::packet_len(&s.rx[at.clone()]).map_or(at.len(), |n| n.min(at.len()));
            s.rest.start += n;
            let Some(m) = s.node.handle_packet(now(), s.from, &mut s.rx[at.start..at.start + n])
            else {
                continue;
            };
            let range = |b: &[u8]| {
                let start = b.as_ptr() as usize - base;
                start..start + b.len()
            };
            s.pending = Some(Pending {
                name: range(m.name.as_str().as_bytes()),
                body: range(m.body),
                from: m.from,
                session: m.session,
                msg: m.msg,
                qos: m.qos,
                retained: m.retained,
                ttl: m.ttl,
                dup: m.dup,
                subscriptions: m.subscriptions,
            });
            s.receiver.wake();
        }
        Poll::Ready(())
    }

    /// Sends everything the engine has queued.
    async fn flush(&mut self) {
        loop {
            let (t, buf, fanout) = (now(), &mut self.datagram[..], &self.fanout);
            let Some(d) = self.state.with(|s| s.flush.next(&mut s.node, fanout, t, buf)) else {
                return;
            };
            let sent = self.socket.send_to(&self.datagram[..d.len], d.to).await;
            self.state.with(|s| s.flush.sent(sent.is_ok()));
        }
    }
}

/// Publishes, subscribes and receives. `Copy`: hand one to every task that needs it.
pub struct Client<'d, M: RawMutex, N> {
    state: &'d State<M, N>,
}

impl<M: RawMutex, N> Clone for Client<'_, M, N> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M: RawMutex, N> Copy for Client<'_, M, N> {}

impl<M: RawMutex, N: Engine> Client<'_, M, N> {
    /// Runs `f` on the node (publish, subscribe, read counters, rotate keys...), then
    /// wakes the runner so anything queued leaves now.
    pub fn with_node<R>(&self, f: impl FnOnce(&mut N) -> R) -> R {
        self.state.with(|s| {
            let r = f(&mut s.node);
            s.kick = true;
            s.runner.wake();
            r
        })
    }

    /// Queues a message; its outcome arrives as an event ([`Client::next_event`]).
    ///
    /// # Errors
    /// [`PublishError`]: nothing was queued.
    pub fn publish(
        &self,
        channel: &str,
        body: &[u8],
        opts: PublishOptions,
    ) -> Result<PublishHandle, PublishError> {
        self.with_node(|n| n.publish(now(), channel, body, opts))
    }

    /// Subscribes to a pattern (announced to peers at once).
    ///
    /// # Errors
    /// [`SubscribeError`].
    pub fn subscribe(&self, pattern: &str) -> Result<(), SubscribeError> {
        self.with_node(|n| n.subscribe(pattern))
    }

    /// Unsubscribes; `false` if the pattern was not subscribed.
    pub fn unsubscribe(&self, pattern: &str) -> bool {
        self.with_node(|n| n.unsubscribe(pattern))
    }

    /// The adapter's transmit counters.
    pub fn tx_stats(&self) -> TxStats {
        self.state.with(|s| s.flush.stats())
    }

    /// Waits for the next delivered message and calls `f` with it and the node (to
    /// publish a reply, say). The receive buffer is free again when `f` returns.
    pub async fn receive<R>(&self, f: impl FnOnce(Message<'_>, &mut N) -> R) -> R {
        let mut f = Some(f);
        poll_fn(|cx| self.poll_receive(cx, &mut f)).await
    }

    /// Calls `f` with a delivered message if one is waiting.
    pub fn try_receive<R>(&self, f: impl FnOnce(Message<'_>, &mut N) -> R) -> Option<R> {
        self.take_message(&mut Some(f))
    }

    /// [`Client::receive`] as a poll function, for hand-written futures and selects:
    /// calls (and consumes) `f` only when a message is there.
    pub fn poll_receive<R, F: FnOnce(Message<'_>, &mut N) -> R>(
        &self,
        cx: &mut Context<'_>,
        f: &mut Option<F>,
    ) -> Poll<R> {
        if let Some(r) = self.take_message(f) {
            return Poll::Ready(r);
        }
        self.state.with(|s| s.receiver.register(cx.waker()));
        // A message may have landed between the two locks.
        self.take_message(f).map_or(Poll::Pending, Poll::Ready)
    }

    fn take_message<R, F: FnOnce(Message<'_>, &mut N) -> R>(&self, f: &mut Option<F>) -> Option<R> {
        self.state.with(|s| {
            if f.is_none() {
                return None;
            }
            let p = s.pending.take()?;
            s.kick = true;
            s.runner.wake();
            let name =
                core::str::from_utf8(&s.rx[p.name]).ok().and_then(|n| ChannelName::new(n).ok())?;
            let m = Message {
                name,
                body: &s.rx[p.body],
                from: p.from,
                session: p.session,
                msg: p.msg,
                qos: p.qos,
                retained: p.retained,
                ttl: p.ttl,
                dup: p.dup,
                subscriptions: p.subscriptions,
            };
            let f = f.take()?;
            let r = f(m, &mut s.node);
            Some(r)
        })
    }

    /// Waits for the next engine event: publish outcomes, peers joining and leaving.
    pub async fn next_event(&self) -> N::Event {
        poll_fn(|cx| {
            self.state.with(|s| match s.node.poll_event() {
                Some(e) => Poll::Ready(e),
                None => {
                    s.events.register(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await
    }
}

/// Runs the harness device script ([`crate::device`]) over this adapter: polls the script
/// when it is due and answers every delivered message. Returns only if the script
/// cannot start (the node refused its subscription).
///
/// # Errors
/// [`DeviceError`](crate::device::DeviceError) from the first poll.
#[cfg(feature = "device")]
pub async fn run_device<M: RawMutex, N: Engine>(
    client: Client<'_, M, N>,
    mut app: crate::device::DeviceApp,
) -> Result<core::convert::Infallible, crate::device::DeviceError> {
    loop {
        client.with_node(|n| app.poll(now(), n))?;
        let mut timer = Timer::at(at(app.poll_at()));
        poll_fn(|cx| {
            if Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut on = Some(|m: Message<'_>, n: &mut N| app.on_message(now(), n, &m));
            client.poll_receive(cx, &mut on)
        })
        .await;
    }
}
