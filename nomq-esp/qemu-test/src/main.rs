//! Test firmware: runs the core's known-answer vectors and a two-node in-memory
//! QoS 0/1/2 exchange on an emulated Cortex-M3 or RV32IMC core (the ESP32-C3's
//! instruction set). The semihosting exit code is the verdict.
#![no_std]
#![no_main]

#[cfg(target_arch = "arm")]
use cortex_m_semihosting::{debug, hprintln};
#[cfg(target_arch = "riscv32")]
use riscv_semihosting::{debug, hprintln};
use nomq::node::{Event, PublishOptions, Status, Target};
use nomq::{Addr, Config, Duration, Instant, KeyPair, Keyring, Qos};

/// Small capacities, as an MCU would choose: 2 peers, 2 subscriptions, 4 outbox entries.
type Mcu = nomq::node::presets::Mcu<Keyring<0>>;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    hprintln!("PANIC: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {}
}

fn check(ok: bool, what: &str) {
    if ok {
        hprintln!("ok   {}", what);
    } else {
        hprintln!("FAIL {}", what);
        debug::exit(debug::EXIT_FAILURE);
    }
}

fn known_answers() {
    let r = nomq::selftest::run();
    if let Err(e) = r {
        hprintln!("{}", e);
    }
    check(r.is_ok(), "self-test: HMAC-SHA256 RFC 4231 #2, AES-256-CBC NIST F.2.5, seal/open");
}

fn exchange() {
    let ring = || Keyring::new(&KeyPair::new([1; 32], [2; 32])).unwrap_or_else(|_| panic!("keys"));
    let mut cfg = Config::default();
    cfg.retransmit_initial = Duration::from_millis(20);
    let mut now = Instant::from_secs(1);
    let addr = [Addr::V4([10, 0, 0, 1], 8888), Addr::V4([10, 0, 0, 2], 8888)];
    let mut nodes = [Mcu::new(cfg, ring(), [3; 32], now, 1_700_000_000), Mcu::new(cfg, ring(), [4; 32], now, 1_700_000_000)];
    check(nodes[1].subscribe("sensor/#").is_ok(), "subscribe");
    let mut buf = [0u8; 200];
    let mut delivered = [0u32; 3];
    let mut outcomes = [None; 3];
    let mut published = false;
    // Bounded: 2000 steps of 5 ms of virtual time.
    for step in 0..2000u32 {
        if step == 20 && !published {
            for (q, qos) in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce].into_iter().enumerate() {
                let r = nodes[0].publish(now, "sensor/t", &[q as u8], PublishOptions::qos(qos));
                check(r.is_ok(), "publish");
            }
            published = true;
        }
        for from in 0..2 {
            while let Some(t) = nodes[from].poll_transmit(now, &mut buf) {
                let to = 1 - from;
                let ok = match t.target {
                    Target::Fanout | Target::Group(_) => true,
                    Target::Unicast(a) => a == addr[to],
                    _ => false,
                };
                if ok {
                    let mut d = [0u8; 1472];
                    let Some(d) = d.get_mut(..t.len) else { continue };
                    d.copy_from_slice(&buf[..t.len]);
                    nodes[to].handle_datagram(now, addr[from], d, |m| {
                        if let Some(&q) = m.body.first() {
                            delivered[usize::from(q) % 3] += 1;
                        }
                        true
                    });
                }
            }
        }
        while let Some(e) = nodes[0].poll_event() {
            if let Event::Outcome(o) = e {
                outcomes[o.qos.level() as usize] = Some(o.status);
            }
        }
        while nodes[1].poll_event().is_some() {}
        if outcomes.iter().all(Option::is_some) {
            break;
        }
        now += Duration::from_millis(5);
        for n in &mut nodes {
            n.handle_timeout(now);
        }
    }
    check(delivered == [1, 1, 1], "QoS 0/1/2 each delivered once");
    check(outcomes[0] == Some(Status::Sent), "QoS 0 outcome Sent");
    check(outcomes[1] == Some(Status::Acknowledged), "QoS 1 outcome Acknowledged");
    check(outcomes[2] == Some(Status::Acknowledged), "QoS 2 outcome Acknowledged");
}

#[cfg_attr(target_arch = "arm", cortex_m_rt::entry)]
#[cfg_attr(target_arch = "riscv32", riscv_rt::entry)]
fn main() -> ! {
    hprintln!("nomq test firmware: {} bytes per node", core::mem::size_of::<Mcu>());
    known_answers();
    exchange();
    hprintln!("all passed");
    debug::exit(debug::EXIT_SUCCESS);
    loop {}
}
