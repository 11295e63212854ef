//! The floor under `nomq bench`'s QoS 1 round trip: plain 64-byte UDP ping-pong over
//! 127.0.0.1, no crypto, no engine, in one process as the bench runs (two tasks on a
//! two-worker tokio runtime, and two blocking std threads).
//!
//! `cargo run --release -p nomq-host --example udp_pingpong [-- SAMPLES]` prints the p50 of
//! each. The bench's round trip crosses four task wake-ups (application → publisher's
//! driver → subscriber's driver → publisher's driver → application); this one crosses two.

use std::net::UdpSocket as StdSocket;
use std::time::{Duration, Instant};

fn p50(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

fn main() -> std::io::Result<()> {
    let samples: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().map_err(|_| std::io::Error::other("SAMPLES: a number"))?,
        None => 2000,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let tokio_p50 = rt.block_on(async {
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let b = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let ba = b.local_addr()?;
        let echo = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            for _ in 0..samples {
                let (n, from) = b.recv_from(&mut buf).await?;
                b.send_to(&buf[..n], from).await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let mut times = Vec::with_capacity(samples);
        let mut buf = [0u8; 64];
        for _ in 0..samples {
            let t = Instant::now();
            a.send_to(&[7; 64], ba).await?;
            a.recv_from(&mut buf).await?;
            times.push(t.elapsed());
        }
        echo.await.map_err(std::io::Error::other)??;
        Ok::<_, std::io::Error>(p50(times))
    })?;
    let a = StdSocket::bind("127.0.0.1:0")?;
    let b = StdSocket::bind("127.0.0.1:0")?;
    let ba = b.local_addr()?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..samples {
            let (n, from) = b.recv_from(&mut buf)?;
            b.send_to(&buf[..n], from)?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut times = Vec::with_capacity(samples);
    let mut buf = [0u8; 64];
    for _ in 0..samples {
        let t = Instant::now();
        a.send_to(&[7; 64], ba)?;
        a.recv_from(&mut buf)?;
        times.push(t.elapsed());
    }
    echo.join().map_err(|_| std::io::Error::other("echo thread panicked"))??;
    println!(
        "64 B UDP ping-pong on 127.0.0.1, {samples} samples, p50: tokio (2 workers) {tokio_p50:.1} us, \
         std threads {:.1} us",
        p50(times)
    );
    Ok(())
}
