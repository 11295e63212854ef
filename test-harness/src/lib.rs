//! Scenario runner for NoMQ: the plumbing behind the `nomq-harness` binary.
//!
//! The binary runs scenarios in three modes (see issue 4 and the binary's `--help`):
//!
//! - `loopback`: several nodes on 127.0.0.1, in one process and in separate processes;
//! - `broadcast`: hosts in their own network namespaces on a bridge ([`netns`]), with real
//!   broadcast and multicast that cannot leave the machine ([`probe`] checks the lab itself);
//! - `lossy`: nodes talking through a user-space UDP relay that loses, duplicates and reorders
//!   datagrams with a seed ([`relay`]).
//!
//! Every mode prints a PASS / FAIL / SKIP table ([`report`]) and exits non-zero on any failure.
//! The NoMQ scenarios themselves arrive with the host adapter (`nomq-host`); this crate already
//! provides the relay, the namespace lab, the lab probes and the report.
//!
//! Network safety: nothing here sends to anything but loopback from the root network
//! namespace. Broadcast and multicast happen only inside the lab's namespaces.

pub mod netns;
pub mod probe;
pub mod relay;
pub mod report;
pub mod scenarios;
