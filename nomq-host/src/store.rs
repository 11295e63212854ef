//! [`FileStore`]: a node's state in a file, saved atomically (docs/PROTOCOL.md, "State
//! store").

use nomq::node::StateStore;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A node's state in one file. [`StateStore::save`] writes `<path>.tmp`, fsyncs it,
/// renames it over `<path>` and fsyncs the directory, so after a crash at any moment the
/// file holds the old state or the new one, whole. A missing file loads as nothing saved.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    tmp: PathBuf,
}

/// A failed load or save of a [`FileStore`]: the file, the operation, the OS error.
#[derive(Debug, thiserror::Error)]
#[error("state file {}: {op}: {source}", path.display())]
pub struct FileStoreError {
    /// The state file (or its temporary file or directory, for `op`).
    pub path: PathBuf,
    /// What failed: "open", "read", "write", "fsync", "rename", "too large".
    pub op: &'static str,
    /// The OS error.
    pub source: io::Error,
}

impl FileStore {
    /// A store at `path` (nothing is touched until the first load or save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        Self { path, tmp: PathBuf::from(tmp) }
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> FileStoreError {
        let path = path.to_path_buf();
        move |source| FileStoreError { path, op, source }
    }
}

impl StateStore for FileStore {
    type Error = FileStoreError;

    fn load(&mut self, buf: &mut [u8]) -> Result<Option<usize>, FileStoreError> {
        let f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Self::err(&self.path, "open")(e)),
        };
        // One byte more than fits tells a file larger than any state we write.
        let mut data = Vec::with_capacity(buf.len() + 1);
        let limit = u64::try_from(buf.len()).unwrap_or(u64::MAX).saturating_add(1);
        f.take(limit).read_to_end(&mut data).map_err(Self::err(&self.path, "read"))?;
        let Some(dest) = buf.get_mut(..data.len()) else {
            let e = io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {} bytes: not a state of this node", buf.len()),
            );
            return Err(Self::err(&self.path, "too large")(e));
        };
        dest.copy_from_slice(&data);
        let len = data.len();
        Ok(Some(len))
    }

    fn save(&mut self, state: &[u8]) -> Result<(), FileStoreError> {
        let mut f = File::create(&self.tmp).map_err(Self::err(&self.tmp, "open"))?;
        f.write_all(state).map_err(Self::err(&self.tmp, "write"))?;
        f.sync_all().map_err(Self::err(&self.tmp, "fsync"))?;
        drop(f);
        fs::rename(&self.tmp, &self.path).map_err(Self::err(&self.path, "rename"))?;
        // The rename is durable only once the directory is.
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        #[cfg(unix)]
        File::open(dir).and_then(|d| d.sync_all()).map_err(Self::err(dir, "fsync"))?;
        #[cfg(not(unix))]
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_replace_the_file_and_a_missing_file_is_nothing_saved() {
        let dir = std::env::temp_dir().join(format!("nomq-store-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        let _ = fs::remove_file(&path);
        let mut s = FileStore::new(&path);
        let mut buf = [0u8; 8];
        assert_eq!(s.load(&mut buf).unwrap(), None);
        s.save(b"old").unwrap();
        s.save(b"newer").unwrap();
        assert_eq!(s.load(&mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"newer");
        assert!(!dir.join("state.tmp").exists());
        s.save(&[7; 9]).unwrap();
        let e = s.load(&mut buf).unwrap_err();
        assert_eq!(e.op, "too large");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        let mut bad = FileStore::new(dir.join("no-such-dir").join("state"));
        let e = bad.save(b"x").unwrap_err();
        assert_eq!(e.op, "open");
        assert!(e.to_string().contains("no-such-dir"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
