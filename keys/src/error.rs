//! Errors and warnings.

use nomq::ChannelError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Why a keyring file could not be loaded or saved, or a keyring not be built.
///
/// Every message names the file and, for content errors, the field as a JSON path
/// (`channels[1].hmac_key`). An inner error (I/O, pattern) is part of the message, so
/// [`std::error::Error::source`] returns `None`; the inner value is still a public field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read, created, written or renamed.
    #[error("cannot {action} keyring file {}: {error}", path.display())]
    Io {
        /// The keyring file.
        path: PathBuf,
        /// What was being done ("read", "create a temporary file next to", …).
        action: &'static str,
        /// What the operating system said.
        error: io::Error,
    },
    /// The path is not a regular file (a directory, a FIFO, a device, a socket): reading
    /// it could block forever or read something that is no keyring.
    #[error("keyring file {} is {kind}, not a regular file", path.display())]
    NotAFile {
        /// The keyring file.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO (named pipe)", …).
        kind: &'static str,
    },
    /// Saving without `overwrite` to a path that already exists.
    #[error(
        "keyring file {} already exists; refusing to overwrite it (overwrite was not requested)",
        path.display()
    )]
    Exists {
        /// The keyring file.
        path: PathBuf,
    },
    /// The file is larger than any keyring file should be ([`MAX_FILE_LEN`](crate::MAX_FILE_LEN)).
    #[error(
        "keyring file {} is larger than {} bytes; is it the right file?",
        path.display(),
        crate::MAX_FILE_LEN
    )]
    TooLarge {
        /// The keyring file.
        path: PathBuf,
    },
    /// The file is not JSON.
    #[error(
        "keyring file {} is not valid JSON: {message} at line {line}, column {column}",
        path.display()
    )]
    Syntax {
        /// The keyring file.
        path: PathBuf,
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1 (0 at the very start of a line, as `serde_json` counts).
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// A required field is absent.
    #[error("keyring file {}: missing field `{field}`", path.display())]
    MissingField {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the field.
        field: String,
    },
    /// A field holds the wrong kind of JSON value.
    #[error("keyring file {}: {} must be {expected}, found {found}", path.display(), Field(field))]
    WrongType {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the field; empty for the whole document.
        field: String,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A key holds a character that is not a hex digit.
    #[error(
        "keyring file {}: `{field}` is not hex: character {found:?} at position {position} \
         (counting from 0) is not a hex digit",
        path.display()
    )]
    BadHex {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the key.
        field: String,
        /// Position of the character in the string, counting from 0.
        position: usize,
        /// The character.
        found: char,
    },
    /// A key is hex but not 32 bytes (64 hex digits) long.
    #[error(
        "keyring file {}: `{field}` has the wrong length: got {}, need {} bytes (64 hex digits)",
        path.display(),
        Length(*digits),
        crate::hex::KEY_LEN
    )]
    WrongLength {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the key.
        field: String,
        /// How many hex digits it has.
        digits: usize,
    },
    /// A key pair's encryption key equals its MAC key.
    #[error(
        "keyring file {}: `{}` equals `{}`; the encryption and MAC keys must differ",
        path.display(),
        join(field, "encryption_key"),
        join(field, "hmac_key")
    )]
    SameKeys {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the object holding the pair; empty for the network keys.
        field: String,
    },
    /// A channel pattern is not a valid subscription pattern.
    #[error(
        "keyring file {}: `{field}` {pattern:?} is not a valid channel pattern: {error}",
        path.display()
    )]
    BadPattern {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the pattern.
        field: String,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        error: ChannelError,
    },
    /// Two channel entries have the same pattern.
    #[error(
        "keyring file {}: `{field}` {pattern:?} repeats the pattern of `channels[{first}]`; \
         each pattern may appear once",
        path.display()
    )]
    DuplicatePattern {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the later pattern.
        field: String,
        /// The pattern.
        pattern: String,
        /// Index of the earlier entry in `channels`.
        first: usize,
    },
    /// The `version` field names a format this build does not know.
    #[error(
        "keyring file {}: unsupported `version` {found}; this build reads version {}",
        path.display(),
        crate::FORMAT_VERSION
    )]
    UnknownVersion {
        /// The keyring file.
        path: PathBuf,
        /// The version as written.
        found: String,
    },
    /// Content that serde itself refuses: a field given twice, say (which of the two
    /// would be meant?).
    #[error("keyring file {}: {message} in {}", path.display(), Field(field))]
    Content {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the object or value; empty for the whole document.
        field: String,
        /// What the JSON parser said.
        message: String,
    },
    /// The keyring has more channel entries than the core keyring can hold.
    #[error(
        "{}{channels} channel {}, but this keyring holds at most {capacity}",
        Source(path.as_deref()),
        if *channels == 1 { "entry" } else { "entries" }
    )]
    TooManyChannels {
        /// The file the keyring was loaded from, if it was.
        path: Option<PathBuf>,
        /// Channel entries in the keyring.
        channels: usize,
        /// Channel scopes the core keyring holds.
        capacity: usize,
    },
    /// Two different key pairs of the keyring have the same key id (the 4-byte id packets
    /// carry, `nomq::KeySet::key_id`), so the core keyring refuses them. About one chance in
    /// 2³² for any two pairs; new keys for one of them cure it.
    #[error(
        "{}two different key pairs have the same key id (a one in 2^32 chance); \
         generate new keys for one of them",
        Source(path.as_deref())
    )]
    KeyIdCollision {
        /// The file the keyring was loaded from, if it was.
        path: Option<PathBuf>,
    },
}

/// Writes `` `field` ``, or "the document" for the root.
struct Field<'a>(&'a str);
impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("the document") } else { write!(f, "`{}`", self.0) }
    }
}

/// `prefix.name`, or `name` at the root.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

/// `31 bytes (62 hex digits)`, or `65 hex digits (an odd number)`.
struct Length(usize);
impl fmt::Display for Length {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.0;
        if digits.is_multiple_of(2) {
            write!(f, "{} bytes ({digits} hex digits)", digits / 2)
        } else {
            write!(f, "{digits} hex digits (an odd number)")
        }
    }
}

/// `keyring file PATH: `, or `keyring: ` for a keyring built in memory.
struct Source<'a>(Option<&'a Path>);
impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "keyring file {}: ", p.display()),
            None => f.write_str("keyring: "),
        }
    }
}

impl Error {
    /// The keyring file this error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Io { path, .. }
            | Self::Exists { path }
            | Self::TooLarge { path }
            | Self::NotAFile { path, .. }
            | Self::Syntax { path, .. }
            | Self::MissingField { path, .. }
            | Self::WrongType { path, .. }
            | Self::BadHex { path, .. }
            | Self::WrongLength { path, .. }
            | Self::SameKeys { path, .. }
            | Self::BadPattern { path, .. }
            | Self::DuplicatePattern { path, .. }
            | Self::UnknownVersion { path, .. }
            | Self::Content { path, .. } => Some(path),
            Self::TooManyChannels { path, .. } | Self::KeyIdCollision { path } => path.as_deref(),
        }
    }
}

/// Something worth telling the user about a keyring file that still loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Warning {
    /// The file is readable or writable by its group or by others.
    #[error(
        "keyring file {} is accessible by group or others (mode {mode:04o}); \
         restrict it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The keyring file.
        path: PathBuf,
        /// Its permission bits (`0o644`, say).
        mode: u32,
    },
    /// A field this format does not define; it was ignored (a typo of `previous`, say).
    #[error("keyring file {}: unknown field `{field}` ignored", path.display())]
    UnknownField {
        /// The keyring file.
        path: PathBuf,
        /// JSON path of the field.
        field: String,
    },
}

/// The operating system's random number generator failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed: {0}")]
pub struct RandomError(pub(crate) getrandom::Error);

/// Why an in-memory change to a [`KeyringFile`](crate::KeyringFile) was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// Fresh keys could not be drawn.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The encryption key equals the MAC key.
    #[error("the encryption and MAC keys must differ")]
    SameKeys,
    /// The pattern is not a valid subscription pattern.
    #[error("{pattern:?} is not a valid channel pattern: {error}")]
    BadPattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        error: ChannelError,
    },
    /// A channel entry with this pattern exists already.
    #[error("the keyring already has keys for channel pattern {pattern:?}")]
    DuplicatePattern {
        /// The pattern.
        pattern: String,
    },
    /// No channel entry has this pattern.
    #[error("the keyring has no keys for channel pattern {pattern:?}")]
    UnknownChannel {
        /// The pattern.
        pattern: String,
    },
}
