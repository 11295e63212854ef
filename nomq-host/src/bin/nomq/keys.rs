//! `nomq keys`: generate, show and rotate keyring files.

use crate::common::Failure;
use nomq_keys::KeyringFile;
use std::path::{Path, PathBuf};

/// Default keyring file.
const DEFAULT_FILE: &str = "nomq-keys.json";

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Generate a fresh keyring (written with mode 0600).
    Gen {
        /// Where to write it.
        #[arg(short, long, value_name = "FILE", default_value = DEFAULT_FILE)]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
        /// Also generate keys for this channel pattern, a cryptographic ACL (repeatable).
        #[arg(long = "channel", value_name = "PATTERN")]
        channels: Vec<String>,
    },
    /// Print the fingerprints of a keyring's keys (never the keys).
    Show {
        /// The keyring file.
        #[arg(value_name = "FILE", default_value = DEFAULT_FILE)]
        file: PathBuf,
    },
    /// Replace the network keys with fresh ones; the old ones stay accepted as previous.
    Rotate {
        /// The keyring file.
        #[arg(value_name = "FILE", default_value = DEFAULT_FILE)]
        file: PathBuf,
    },
}

pub fn run(cmd: KeysCommand) -> Result<(), Failure> {
    match cmd {
        KeysCommand::Gen { out, force, channels } => generate(&out, force, &channels),
        KeysCommand::Show { file } => {
            let ring = load(&file)?;
            println!("{}", ring.fingerprints());
            Ok(())
        }
        KeysCommand::Rotate { file } => {
            let mut ring = load(&file)?;
            ring.rotate().map_err(|e| Failure::usage(format!("cannot rotate: {e}")))?;
            save(&ring, &file, true)?;
            println!("rotated {}; the previous keys stay accepted", file.display());
            println!("{}", ring.fingerprints());
            Ok(())
        }
    }
}

fn generate(out: &Path, force: bool, channels: &[String]) -> Result<(), Failure> {
    let mut ring = KeyringFile::generate()
        .map_err(|e| Failure::usage(format!("cannot generate keys: {e}")))?;
    for p in channels {
        ring.add_channel(p).map_err(|e| Failure::usage(format!("--channel: {e}")))?;
    }
    // Fail before writing if the core keyring could not hold it.
    ring.to_core::<{ nomq_host::HOST_CHANNEL_KEYS }>()
        .map_err(|e| Failure::usage(e.to_string()))?;
    save(&ring, out, force)?;
    println!("wrote {} (mode 0600)", out.display());
    println!("{}", ring.fingerprints());
    Ok(())
}

fn load(path: &Path) -> Result<KeyringFile, Failure> {
    nomq_host::config::require_regular_file(path, "keyring")
        .map_err(|e| Failure::usage(e.to_string()))?;
    let loaded = KeyringFile::load(path).map_err(|e| Failure::usage(e.to_string()))?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded.keyring)
}

fn save(ring: &KeyringFile, path: &Path, overwrite: bool) -> Result<(), Failure> {
    ring.save(path, overwrite).map_err(|e| match e {
        nomq_keys::Error::Exists { .. } => {
            Failure::usage(format!("{e}; pass --force to replace it"))
        }
        e => Failure::usage(e.to_string()),
    })
}
