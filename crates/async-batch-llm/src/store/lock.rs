//! One writer per checkpoint: an exclusive advisory lock (`flock`) on a
//! sidecar file, `CHECKPOINT.lock`, held for as long as the store is open
//! for writing.
//!
//! The kernel releases the lock when the process ends, however it ends, so
//! a run killed with SIGKILL never blocks the next one. The holder writes
//! its PID, host and start time into the file, so a second run can say who
//! holds it. The file is removed when the lock is given back; a locker
//! checks after locking that the path still names the file it locked (a
//! holder may have removed it meanwhile) and tries again if not.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The lock file of a store at `store`: its canonical path (so a symlink
/// or another spelling of it finds the same lock) with `.lock` appended.
pub fn lock_path(store: &Path) -> PathBuf {
    let canonical = std::fs::canonicalize(store).ok().or_else(|| {
        let parent = store
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(parent).ok()?;
        Some(dir.join(store.file_name()?))
    });
    let mut p = canonical
        .unwrap_or_else(|| store.to_path_buf())
        .into_os_string();
    p.push(".lock");
    PathBuf::from(p)
}

/// The held lock of one store; dropping it gives the lock back.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
    path: PathBuf,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::io(path.display().to_string(), source)
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".to_owned())
}

/// What the holder of a locked file wrote into it.
fn holder_of(mut file: File) -> String {
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let holder = holder.trim();
    if holder.is_empty() {
        "another process".to_owned()
    } else {
        holder.to_owned()
    }
}

impl StoreLock {
    /// Takes the lock of the store at `store`, or fails at once with
    /// an error naming the holder ([`Error::is_in_use`]).
    pub fn acquire(store: &Path) -> Result<Self, Error> {
        let path = lock_path(store);
        for _ in 0..16 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::in_use(store.display().to_string(), holder_of(file)));
                }
                Err(TryLockError::Error(e)) => return Err(io(&path, e)),
            }
            // The holder before us may have removed the file after we
            // opened it: then we locked a file nobody else will find.
            let ours = file.metadata().map_err(|e| io(&path, e))?;
            match std::fs::metadata(&path) {
                Ok(now) if same_file(&ours, &now) => {}
                _ => continue,
            }
            let who = format!(
                "PID {} on {}, started {}",
                std::process::id(),
                host(),
                crate::time::format_rfc3339(std::time::SystemTime::now())
            );
            file.set_len(0).map_err(|e| io(&path, e))?;
            file.seek(SeekFrom::Start(0)).map_err(|e| io(&path, e))?;
            file.write_all(who.as_bytes()).map_err(|e| io(&path, e))?;
            return Ok(Self { file, path });
        }
        Err(io(
            &path,
            std::io::Error::other("the lock file kept changing while it was being locked"),
        ))
    }

    /// Who holds the lock of the store at `store` now (the holder's PID,
    /// host and start), or `None` when no process writes it. Takes no lock
    /// and creates no file: a reader asks this to say a run is live.
    pub fn holder(store: &Path) -> Option<String> {
        let path = lock_path(store);
        let file = File::open(&path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(TryLockError::WouldBlock) => Some(holder_of(file)),
            Err(TryLockError::Error(_)) => None,
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Removed while still held, so nobody locks the old file after us.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_the_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("run.sqlite");
        assert_eq!(StoreLock::holder(&store), None);
        let first = StoreLock::acquire(&store).unwrap();
        assert!(first.path().ends_with("run.sqlite.lock"));
        let holder = StoreLock::holder(&store).unwrap_or_default();
        assert!(
            holder.contains(&format!("PID {}", std::process::id())),
            "{holder}"
        );
        let e = StoreLock::acquire(&store).unwrap_err().to_string();
        assert!(
            e.contains("in use") && e.contains(&format!("PID {}", std::process::id())),
            "{e}"
        );
        drop(first);
        assert!(!lock_path(&store).exists());
        assert_eq!(StoreLock::holder(&store), None);
        let again = StoreLock::acquire(&store).unwrap();
        drop(again);
    }
}
