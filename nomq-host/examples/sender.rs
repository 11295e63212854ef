//! Publishes a random temperature to `factory` every second.
//!
//! ```text
//! cargo run -p nomq-host --example sender -- [COUNT] [--bind ADDR] [--peer ADDR]...
//! ```
//! The keyring, bind address and peers may also come from `NOMQ_KEYRING`, `NOMQ_BIND` and
//! `NOMQ_PEERS` (flags win). Try it on one machine with `examples/receiver.rs`:
//! `receiver --bind 127.0.0.1:7001 --peer 127.0.0.1:7002` and
//! `sender 5 --bind 127.0.0.1:7002 --peer 127.0.0.1:7001`.

use nomq_host::{HostConfig, NodeBuilder, PublishOptions};
use std::error::Error;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut cfg = HostConfig::default();
    cfg.apply_env()?;
    let mut count = u64::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => cfg.bind = args.next().ok_or("--bind needs an address")?.parse()?,
            "--peer" => cfg.peers.push(args.next().ok_or("--peer needs an address")?.parse()?),
            n => count = n.parse().map_err(|_| format!("'{n}' is not a count"))?,
        }
    }
    let node = NodeBuilder::from_keyring_file(&cfg.keyring)?.config(cfg).start().await?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for _ in 0..count {
        tick.tick().await;
        // 15.0 to 30.0 °C.
        let celsius = 15.0 + f64::from(getrandom::u32()? % 151) / 10.0;
        let body = format!("{celsius:.1}");
        node.publish("factory", body.as_str(), PublishOptions::default()).await?;
        println!("factory {body}");
    }
    node.shutdown().await;
    Ok(())
}
