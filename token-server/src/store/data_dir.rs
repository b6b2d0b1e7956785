//! One token server per data directory. The embedded store serves one
//! process: a second server on the same directory would rotate keys and
//! issue opaque tokens the first one never sees. An advisory lock (`flock`)
//! on `<data_dir>/tokenmesh.lock` keeps it out; the kernel drops the lock
//! when the holder exits, even on SIGKILL, so a crash leaves nothing stale.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, Write},
    path::Path,
};

use super::{StoreError, StoreResult};

const LOCK_FILE: &str = "tokenmesh.lock";
/// The lock file holds a process id: a few bytes.
const MAX_HOLDER_LEN: u64 = 32;

/// Held for as long as this process uses the data directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Creates `dir` (private) and locks it, or says which process holds it.
    pub fn acquire(dir: &Path) -> StoreResult<Self> {
        super::sqlite::create_private_dir(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(LOCK_FILE);
        let unavailable = |e: std::io::Error| {
            StoreError::Unavailable(format!("cannot lock {}: {e}", path.display()))
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(unavailable)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(unavailable)?;
                file.rewind().map_err(unavailable)?;
                writeln!(file, "{}", std::process::id()).map_err(unavailable)?;
                Ok(Self { _file: file })
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = (&file).take(MAX_HOLDER_LEN).read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                Err(StoreError::InUse(format!(
                    "the data directory {} is in use by another token server{holder}: the embedded \
                     store serves one process; give each server its own --data-dir, or run \
                     replicas on PostgreSQL (--database-url)",
                    dir.display()
                )))
            }
            Err(TryLockError::Error(e)) => Err(unavailable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let message = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("in use by another token server"),
            "{message}"
        );
        assert!(
            message.contains(&format!("(pid {})", std::process::id())),
            "{message}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
