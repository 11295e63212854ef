//! Prints what arrives on `factory/#` (`factory` itself included).
//!
//! ```text
//! cargo run -p nomq-host --example receiver -- [--bind ADDR] [--peer ADDR]...
//! ```
//! The keyring, bind address and peers may also come from `NOMQ_KEYRING`, `NOMQ_BIND` and
//! `NOMQ_PEERS` (flags win). See `examples/sender.rs`.

use nomq_host::{HostConfig, NodeBuilder};
use std::error::Error;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut cfg = HostConfig::default();
    cfg.apply_env()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bind" => cfg.bind = args.next().ok_or("--bind needs an address")?.parse()?,
            "--peer" => cfg.peers.push(args.next().ok_or("--peer needs an address")?.parse()?),
            other => return Err(format!("unknown argument '{other}'").into()),
        }
    }
    let node = NodeBuilder::from_keyring_file(&cfg.keyring)?.config(cfg).start().await?;
    let mut sub = node.subscribe("factory/#").await?;
    while let Some(m) = sub.recv().await {
        println!("{} {} (from {})", m.channel, String::from_utf8_lossy(&m.body), m.from);
    }
    Ok(())
}
