//! Reading and writing keyring files.

use crate::error::{Error, Warning};
use crate::model::KeyringFile;
use crate::{Loaded, MAX_FILE_LEN, json};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use zeroize::Zeroizing;

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |error| Error::Io { path, action, error }
}

/// What a file that is not a regular file is, in words ("a FIFO (named pipe)", "a
/// directory", …), for errors about paths that must name a regular file.
pub fn file_kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe)";
        } else if ft.is_socket() {
            return "a socket";
        } else if ft.is_char_device() || ft.is_block_device() {
            return "a device";
        }
    }
    if ft.is_dir() { "a directory" } else { "a special file" }
}

impl KeyringFile {
    /// Reads and checks a keyring file.
    ///
    /// A file that group or others may access still loads, with a
    /// [`Warning::Permissions`]; fields this format does not define are ignored with a
    /// [`Warning::UnknownField`].
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::TooLarge`], and every content
    /// error of [`from_json`](Self::from_json).
    pub fn load(path: impl AsRef<Path>) -> Result<Loaded, Error> {
        let path = path.as_ref();
        // Before opening: opening a FIFO for reading blocks until a writer appears.
        let ft = std::fs::metadata(path).map_err(io_error(path, "read"))?.file_type();
        if !ft.is_file() {
            return Err(Error::NotAFile { path: path.to_owned(), kind: file_kind(&ft) });
        }
        let file = File::open(path).map_err(io_error(path, "read"))?;
        // Metadata of the open file, not of the path: no race with a rename in between.
        let meta = file.metadata().map_err(io_error(path, "read"))?;
        let mut warnings = Vec::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_file() && mode & 0o077 != 0 {
                warnings.push(Warning::Permissions { path: path.to_owned(), mode });
            }
        }
        // Sized up front so that growing never leaves a copy of the keys behind.
        let expected = usize::try_from(meta.len()).unwrap_or(MAX_FILE_LEN).min(MAX_FILE_LEN);
        let mut bytes = Zeroizing::new(Vec::with_capacity(expected + 1));
        let limit = u64::try_from(MAX_FILE_LEN).unwrap_or(u64::MAX).saturating_add(1);
        file.take(limit).read_to_end(&mut bytes).map_err(io_error(path, "read"))?;
        if bytes.len() > MAX_FILE_LEN {
            return Err(Error::TooLarge { path: path.to_owned() });
        }
        let mut loaded = Self::from_json(&bytes, path)?;
        loaded.keyring.source = Some(path.to_owned());
        warnings.append(&mut loaded.warnings);
        loaded.warnings = warnings;
        Ok(loaded)
    }

    /// Parses and checks a keyring document already in memory (read from standard input,
    /// say). `path` only names the source in errors and warnings.
    ///
    /// # Errors
    /// [`Error::Syntax`], [`Error::WrongType`], [`Error::MissingField`],
    /// [`Error::UnknownVersion`], [`Error::BadHex`], [`Error::WrongLength`],
    /// [`Error::SameKeys`], [`Error::BadPattern`], [`Error::DuplicatePattern`],
    /// [`Error::Content`].
    pub fn from_json(json: &[u8], path: impl AsRef<Path>) -> Result<Loaded, Error> {
        json::parse(json, path.as_ref())
    }

    /// The keyring as a JSON document, in a buffer zeroized on drop.
    pub fn to_json(&self) -> Zeroizing<String> {
        json::emit(self)
    }

    /// Writes the keyring to `path` with mode `0600`, replacing an existing file only if
    /// `overwrite` is set.
    ///
    /// The document goes to a temporary file in the same directory, is flushed to disk,
    /// and then takes the final name in one step, so a reader sees the old file or the
    /// new one, never a part. Without `overwrite` the final step fails if the name is taken,
    /// even if it was taken after this call began.
    ///
    /// # Errors
    /// [`Error::Exists`] if `path` exists and `overwrite` is not set; [`Error::Io`].
    pub fn save(&self, path: impl AsRef<Path>, overwrite: bool) -> Result<(), Error> {
        let path = path.as_ref();
        // Checked first for a clear error before any work; `publish` checks again atomically.
        if !overwrite && fs::symlink_metadata(path).is_ok() {
            return Err(Error::Exists { path: path.to_owned() });
        }
        let json = self.to_json();
        let (tmp, mut file) = create_temporary(path)?;
        let written = file
            .write_all(json.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error(path, "write"));
        drop(file);
        let published = written.and_then(|()| publish(&tmp, path, overwrite));
        if published.is_err() {
            // Best effort: the error that matters is the one being returned.
            let _ = fs::remove_file(&tmp);
        }
        published?;
        sync_directory(path);
        Ok(())
    }
}

/// The directory a path names a file in ("." for a bare file name).
fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates a fresh file with mode 0600 next to `path`.
fn create_temporary(path: &Path) -> Result<(PathBuf, File), Error> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let action = "create a temporary file next to";
    let Some(name) = path.file_name() else {
        let error = io::Error::new(io::ErrorKind::InvalidInput, "the path does not name a file");
        return Err(Error::Io { path: path.to_owned(), action: "write", error });
    };
    let mut attempt = 0;
    loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
        let tmp = directory(path).join(tmp_name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&tmp) {
            Ok(file) => {
                // The umask may have cleared bits of 0600; set it exactly.
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let exact = file.set_permissions(fs::Permissions::from_mode(0o600));
                    if let Err(error) = exact {
                        drop(file);
                        let _ = fs::remove_file(&tmp);
                        return Err(Error::Io { path: path.to_owned(), action, error });
                    }
                }
                return Ok((tmp, file));
            }
            // A stale temporary file of an earlier process with the same id: try another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
            Err(error) => return Err(Error::Io { path: path.to_owned(), action, error }),
        }
    }
}

/// Gives the finished temporary file its final name.
fn publish(tmp: &Path, path: &Path, overwrite: bool) -> Result<(), Error> {
    if overwrite {
        return fs::rename(tmp, path).map_err(io_error(path, "replace"));
    }
    // A hard link fails if the name is taken, where a rename would replace it.
    match fs::hard_link(tmp, path) {
        Ok(()) => {
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(Error::Exists { path: path.to_owned() })
        }
        // File systems without hard links: fall back to check-then-rename.
        Err(_) if fs::symlink_metadata(path).is_ok() => {
            Err(Error::Exists { path: path.to_owned() })
        }
        Err(_) => fs::rename(tmp, path).map_err(io_error(path, "create")),
    }
}

/// Flushes the directory entry of a renamed file, where the platform allows it.
fn sync_directory(path: &Path) {
    #[cfg(unix)]
    if let Ok(dir) = File::open(directory(path)) {
        // Best effort: the data itself is already on disk.
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = path;
}
