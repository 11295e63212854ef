//! Footprint firmware: the smallest bare-metal program that uses the NoMQ engine the way
//! a device does, and the same program without it, so `scripts/footprint.sh` can take
//! the difference of their section sizes as the cost of "engine + crypto".
//!
//! Without features this is the baseline: the runtime (cortex-m-rt or riscv-rt), a
//! receive and a transmit buffer, and a loop that echoes a checksum of each frame.
//! With `caps-default` or `caps-mcu` the same loop also drives one [`nomq::Node`] held
//! in static RAM (so it shows in `.bss`): subscribe, publish at QoS 0, 1 and 2,
//! `handle_packet`, `poll_transmit`, `poll_event`, `poll_timeout`, `handle_timeout`.
//!
//! Every input (frames, time, keys, seed, configuration, options) passes through
//! [`core::hint::black_box`], so the optimizer can neither constant-fold a branch of the
//! engine away nor delete an output; nothing is printed, so no formatting code is linked.
//! The self-test (`nomq::selftest`) is deliberately not linked.
#![no_std]
#![no_main]

use core::hint::black_box;

/// Bytes the radio hands over per frame: the UDP payload of one Ethernet frame, which
/// is also the largest datagram a node at the default `max_payload` produces.
const FRAME: usize = 1472;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// A frame from the radio: the buffer as its DMA left it (opaque to the compiler) and
/// its length.
fn receive(rx: &mut [u8; FRAME]) -> &mut [u8] {
    let rx = black_box(rx);
    let len = black_box(0usize).min(FRAME);
    &mut rx[..len]
}

/// Hands bytes to the radio.
fn transmit(frame: &[u8]) {
    black_box(frame);
}

/// The baseline's whole application: echo a checksum of the frame.
fn echo(frame: &[u8], tx: &mut [u8; FRAME]) {
    tx[0] = frame.iter().fold(0, |a, b| a ^ b);
    transmit(&tx[..1]);
}

#[cfg_attr(target_arch = "arm", cortex_m_rt::entry)]
#[cfg_attr(target_arch = "riscv32", riscv_rt::entry)]
fn main() -> ! {
    // The radio driver's buffers, on the stack: the same in every variant, so they
    // cancel out of the difference.
    let mut rx = [0u8; FRAME];
    let mut tx = [0u8; FRAME];
    #[cfg(feature = "nomq")]
    let node = engine::start();
    loop {
        let frame = receive(&mut rx);
        echo(frame, &mut tx);
        #[cfg(feature = "nomq")]
        engine::step(node, frame, &mut tx);
    }
}

#[cfg(feature = "nomq")]
mod engine {
    use super::{FRAME, black_box, transmit};
    use nomq::{Addr, Config, Instant, KeyPair, Keyring, Node, PublishOptions, Qos};
    use static_cell::StaticCell;

    #[cfg(all(feature = "caps-default", feature = "caps-mcu"))]
    compile_error!("choose one capacity feature: caps-default or caps-mcu");
    #[cfg(not(any(feature = "caps-default", feature = "caps-mcu")))]
    compile_error!("feature `nomq` needs a capacity feature: caps-default or caps-mcu");

    /// The default capacities: 32 peers, 20 subscriptions, 50 outbox entries, 16
    /// retained channels, 32 QoS 2 states, 64 lockouts, 256-byte messages.
    #[cfg(feature = "caps-default")]
    pub type Engine = Node<Keyring<0>>;
    /// The MCU preset (the same as qemu-test): 2 peers, 2 subscriptions, 4 outbox
    /// entries, 1 retained, 4 QoS 2 states, 2 lockouts, 48 bytes.
    #[cfg(all(feature = "caps-mcu", not(feature = "caps-default")))]
    pub type Engine = nomq::node::presets::Mcu<Keyring<0>>;

    /// The node, in `.bss` (a `StaticCell` is all zeros until initialised).
    static NODE: StaticCell<Engine> = StaticCell::new();

    /// The monotonic clock, in microseconds.
    fn now() -> Instant {
        Instant::from_micros(black_box(0))
    }

    /// Creates the node from provisioned keys and a seed from the chip's RNG.
    pub fn start() -> &'static mut Engine {
        let pair = KeyPair::new(black_box([1; 32]), black_box([2; 32]));
        let Ok(keys) = Keyring::new(&pair) else { panic!() };
        let node = NODE.init(Engine::new(
            black_box(Config::default()),
            keys,
            black_box([3; 32]),
            now(),
            black_box(1_700_000_000),
        ));
        // Result ignored: a firmware would log it; here it only must not be optimized out.
        black_box(node.subscribe(black_box("sensor/#")).is_ok());
        node
    }

    /// One turn of the driving loop (see `nomq::node`): input, publishes, outputs, timer.
    pub fn step(node: &mut Engine, frame: &mut [u8], tx: &mut [u8; FRAME]) {
        let now = now();
        let from = Addr::V4(black_box([192, 168, 1, 2]), black_box(8888));
        for packet in nomq::node::Packets::new(frame) {
            if let Some(m) = node.handle_packet(now, from, packet) {
                black_box((m.name.as_str(), m.body, m.from, m.session, m.msg, m.qos));
                black_box((m.retained, m.dup));
            }
        }
        if black_box(false) {
            // A sensor reading, published at every QoS; the options are opaque so no
            // path (retain, TTL, priority, destination) is folded away.
            let reading: [u8; 8] = black_box([0; 8]);
            for qos in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce] {
                let opts = black_box(PublishOptions::qos(qos));
                black_box(node.publish(now, black_box("sensor/t"), &reading, opts).is_ok());
            }
        }
        while let Some(t) = node.poll_transmit(now, tx) {
            black_box(t.target);
            transmit(tx.get(..t.len).unwrap_or_default());
        }
        while let Some(e) = node.poll_event() {
            black_box(&e);
        }
        // The real loop sleeps until this deadline; here it is only compared.
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
    }
}
