//! One server per data directory: `serve` holds an exclusive lock on
//! `<data_dir>/LOCK` (`flock`, through `File::try_lock`) for as long as it
//! runs, with its pid written in the file so that a second server can say
//! who holds it. The kernel releases the lock with the process, however it
//! ends (`kill -9` included); the file itself stays, harmlessly.
//!
//! `serve` takes it, and so do `keys`, `audit` and `orgs` when no server
//! answers on the admin socket and they open the embedded store themselves
//! (a server starting meanwhile is told which pid holds the data dir);
//! `migrate` opens the store only, which redb locks on its own.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data dir {} is in use by pid {pid}", path.display())]
    InUse { path: PathBuf, pid: String },
    #[error("data dir {}: cannot lock {}: {source}", path.display(), LOCK_FILE)]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lock, held until dropped (the server keeps it until it exits).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Locks `data_dir` (which must exist) or says which pid holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let io = |source| LockError::Io {
            path: data_dir.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::InUse {
                    path: data_dir.to_path_buf(),
                    pid: holder(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _file: file })
    }
}

/// The pid written by the lock's holder. It writes it just after locking,
/// so an empty file is read again for a moment.
fn holder(file: &mut File) -> String {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        let mut text = String::new();
        let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
        let pid = text.trim();
        if read.is_ok() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
            return pid.to_owned();
        }
        if Instant::now() >= deadline {
            return "unknown (another process holds its LOCK file)".to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DataDirLock::acquire(dir.path()).expect("first lock");
        // flock locks belong to open file descriptions: a second open in the
        // same process conflicts, as another process's would.
        let err = DataDirLock::acquire(dir.path()).expect_err("second lock refused");
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {} is in use by pid {}",
                dir.path().display(),
                std::process::id()
            )
        );
        drop(first);
        DataDirLock::acquire(dir.path()).expect("free again once dropped");
    }
}
