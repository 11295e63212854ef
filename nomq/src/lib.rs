#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod addr;
pub mod body;
pub mod channel;
pub mod envelope;
pub mod keys;
pub mod node;
pub mod selftest;
pub mod time;
pub mod wire;

pub use addr::Addr;
pub use channel::{ChannelError, ChannelId, ChannelName, Pattern};
pub use envelope::{OpenError, Opened, SealError, open, seal, seal_in_place};
pub use keys::{KeyLookup, KeyPair, KeySet, Keyring, SecretKey};
pub use node::{Config, Event, Message, Node, PublishOptions, Transmit};
pub use time::{Duration, Instant};
pub use wire::{Flags, Header, KeyId, Packet, PacketId, PacketType, Qos, SessionId, WireError};
