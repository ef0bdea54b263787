//! `postmaster.pid`: which postmaster runs a data directory, on which socket, and whether it is ready, shutting
//! down, or orphaned.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The fields of `postmaster.pid` we use.
pub(crate) struct PidFile {
    pub(super) pid: i32,
    pub(super) port: u16,
    pub(super) socket_dir: PathBuf,
    pub(super) status: String,
}

impl PidFile {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let lines: Vec<&str> = text.lines().collect();
        Some(Self {
            pid: lines.first()?.trim().parse().ok()?,
            port: lines
                .get(3)
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0),
            socket_dir: PathBuf::from(lines.get(4).map(|l| l.trim()).unwrap_or_default()),
            status: lines
                .get(7)
                .map(|l| l.trim().to_owned())
                .unwrap_or_default(),
        })
    }

    /// Shutting down (`stopping` in its pid file), or orphaned: started by a mandant process that is gone (see
    /// [`owner_is_gone`]), so its parent-death signal is on the way.
    pub(super) fn is_leaving(&self, data_dir: &Path) -> bool {
        self.status == "stopping" || self.is_orphan(data_dir)
    }

    pub(super) fn is_orphan(&self, data_dir: &Path) -> bool {
        owner_is_gone(data_dir, self.pid)
    }

    pub(crate) fn is_alive_postgres(&self) -> bool {
        if self.pid <= 0 {
            return false;
        }
        let alive = !matches!(
            kill(Pid::from_raw(self.pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        let cmdline = fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        alive && String::from_utf8_lossy(&cmdline).contains("postgres")
    }
}

/// Names the process that started the postmaster: it holds an `flock` on this file for as long as it lives (the
/// lock ends with the process, however it dies), and the file holds the postmaster's pid.
const OWNER_FILE: &str = "embedded.owner";

/// Marks this process as the owner of postmaster `pid` on `data_dir` while the returned lock lives.
pub(super) fn claim_owner(data_dir: &Path, pid: i32) -> Option<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(data_dir.join(OWNER_FILE))
        .ok()?;
    let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()?;
    lock.set_len(0).ok()?;
    lock.seek(SeekFrom::Start(0)).ok()?;
    lock.write_all(pid.to_string().as_bytes()).ok()?;
    Some(lock)
}

/// Whether postmaster `pid` was started by a mandant process that is gone: the owner file names it and nobody
/// holds its lock. A postmaster started any other way (another tool, `pg_ctl`) is never called orphaned.
fn owner_is_gone(data_dir: &Path, pid: i32) -> bool {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .open(data_dir.join(OWNER_FILE))
    else {
        return false;
    };
    let Ok(mut lock) = Flock::lock(file, FlockArg::LockSharedNonblock) else {
        return false; // its owner lives
    };
    let mut text = String::new();
    let _ = lock.read_to_string(&mut text);
    text.trim().parse::<i32>().ok() == Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postmaster_is_orphaned_only_when_its_recorded_owner_is_gone() {
        let dir = std::env::temp_dir().join(format!("mandant-owner-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // No owner file: started some other way (pg_ctl, another tool), never called orphaned.
        assert!(!owner_is_gone(&dir, 4242));
        // Owned by a live process (this one holds the lock).
        let held = claim_owner(&dir, 4242).expect("claim");
        assert!(!owner_is_gone(&dir, 4242));
        drop(held);
        // The owner is gone: orphaned, but only the postmaster the file names.
        assert!(owner_is_gone(&dir, 4242));
        assert!(!owner_is_gone(&dir, 4243));
        let _ = fs::remove_dir_all(&dir);
    }
}
