//! Preparing a data directory: the start lock, private directories, `initdb` (atomically), log tails.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::binaries::{Binaries, RunAs};
use super::{EmbeddedError, SUPERUSER, io_err};

/// An exclusive `flock` on `<data_dir>/embedded.lock`, held while a process starts the cluster.
pub(super) fn lock_data_dir(data_dir: &Path) -> Result<nix::fcntl::Flock<File>, EmbeddedError> {
    let path = data_dir.join("embedded.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err(format!("locking {}", path.display()))(errno.into()))
}

/// Creates `dir` if needed and makes it private to the cluster's user (mode 0700).
pub(super) fn prepare_private_dir(dir: &Path, run_as: RunAs) -> Result<(), EmbeddedError> {
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("restricting {}", dir.display())))?;
    run_as.give(dir)
}

/// Creates the cluster in a scratch directory and renames it into place, so a crash during `initdb` never leaves
/// a half-made `pg/` that would block the next start.
pub(super) fn initdb(
    binaries: &Binaries,
    pgdata: &Path,
    run_as: RunAs,
) -> Result<(), EmbeddedError> {
    let scratch = pgdata.with_file_name("pg.initdb-tmp");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(io_err(format!(
            "removing the leftover {}",
            scratch.display()
        )))?;
    }
    prepare_private_dir(&scratch, run_as)?;
    tracing::info!(pgdata = %pgdata.display(), bin = %binaries.dir.display(), "creating the embedded PostgreSQL cluster");
    let mut command = Command::new(binaries.tool("initdb"));
    command
        .arg("-D")
        .arg(&scratch)
        .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale"])
        .arg("--no-instructions")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    run_as.apply(&mut command, false);
    let output = command.output().map_err(io_err(format!(
        "running {}",
        binaries.tool("initdb").display()
    )))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        return Err(EmbeddedError::Initdb {
            status: output.status.to_string(),
            output: text.trim().to_owned(),
        });
    }
    // Only the bootstrap superuser, through the private socket directory, may skip the password.
    let hba = "# Written by mandant (src/embedded.rs). The socket directory is private to the cluster's user.\n\
               local   all   postgres                 trust\n\
               local   all   all                      scram-sha-256\n\
               host    all   all   127.0.0.1/32       scram-sha-256\n\
               host    all   all   ::1/128            scram-sha-256\n";
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(scratch.join("pg_hba.conf"))
        .map_err(io_err("opening pg_hba.conf"))?;
    file.write_all(hba.as_bytes())
        .map_err(io_err("writing pg_hba.conf"))?;
    fs::rename(&scratch, pgdata).map_err(io_err(format!(
        "moving {} to {}",
        scratch.display(),
        pgdata.display()
    )))
}

/// The last lines of a log file, for error messages.
pub(super) fn tail(path: &Path) -> String {
    const TAIL_BYTES: u64 = 2048;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().to_owned()
}
