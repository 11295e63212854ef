#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod fs;
pub use fs::file_kind;
mod hex;
mod json;
mod model;

pub use error::{EditError, Error, RandomError, Warning};
pub use model::{
    ChannelFingerprints, ChannelKeys, Fingerprint, Fingerprints, KeyringFile, generate_pair,
};
pub use nomq::KeyPair;

/// The version of the file format this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The largest keyring file [`KeyringFile::load`] reads, in bytes.
///
/// A keyring with a hundred channels is about 50 KiB; anything this large is the wrong file.
pub const MAX_FILE_LEN: usize = 1 << 20;

/// A keyring read from a file, with what the user should hear about it.
#[derive(Debug)]
#[must_use = "warnings are meant for the user"]
pub struct Loaded {
    /// The keyring.
    pub keyring: KeyringFile,
    /// Things that did not stop the load but deserve attention, in file order.
    pub warnings: Vec<Warning>,
}
