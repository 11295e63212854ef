//! Scenario runner for NoMQ: the plumbing behind the `nomq-harness` binary.
//!
//! The binary runs scenarios in three modes (see issue 4 and the binary's `--help`):
//!
//! - `loopback`: several nodes on 127.0.0.1, in one process and in separate processes;
//! - `broadcast`: hosts in their own network namespaces on a bridge ([`netns`]), with real
//!   broadcast and multicast that cannot leave the machine ([`probe`] checks the lab itself);
//! - `lossy`: nodes talking through a user-space UDP relay that loses, duplicates and reorders
//!   datagrams with a seed ([`relay`]);
//! - `device`: checks a device running the device script of `docs/DEVICE.md` ([`device`]).
//!
//! Every mode prints a PASS / FAIL / SKIP table ([`report`]) and exits non-zero on any failure.
//! The NoMQ scenarios themselves arrive with the host adapter (`nomq-host`); this crate already
//! provides the relay, the namespace lab, the lab probes and the report.
//!
//! Network safety: nothing here sends to anything but loopback from the root network
//! namespace. Broadcast and multicast happen only inside the lab's namespaces.

pub mod device;
pub mod netns;
pub mod probe;
pub mod relay;
pub mod report;
pub mod scenarios;
pub mod tap;

/// The fixed test key pair of the harness: every scenario's nodes, the `device` checker and
/// the device programs of CI use it unless given a keyring file. It is public knowledge:
/// never use it outside tests.
#[must_use]
pub fn test_key_pair() -> nomq::KeyPair {
    nomq::KeyPair::new([1; 32], [2; 32])
}

/// A host keyring holding only [`test_key_pair`] (the same as `scenarios::keyring(1)`).
#[must_use]
pub fn test_keyring() -> nomq::Keyring<{ nomq_host::HOST_CHANNEL_KEYS }> {
    scenarios::keyring(1)
}
