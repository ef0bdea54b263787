//! The embedded PostgreSQL cluster: the zero-configuration default, and the throwaway clusters of the tests.
//!
//! Owns: finding the server binaries, `initdb` (once, atomically), starting `postgres` as a child process, waiting
//! until it accepts connections, adopting a cluster another `mandant` process already runs on the same data
//! directory, removing a stale `postmaster.pid`, and stopping the cluster it started.
//! Never: runs SQL (callers connect with [`Cluster::target`]), or stops a cluster it did not start.
//!
//! Layout under the data directory: `pg/` (PGDATA), `run/` (the Unix socket; the cluster listens on no TCP port),
//! `postgresql.log`. The bootstrap superuser `postgres` may log in without a password only through the socket,
//! whose directory is private to the user the cluster runs as; every other role needs its password
//! (scram-sha-256), so tenant roles are really checked.
//!
//! PostgreSQL refuses to run as root. When this process is root, `initdb` and `postgres` run as the `postgres`
//! system user (groups, gid and uid are dropped in the child before `exec`). The postmaster is started from a
//! dedicated supervisor thread with `PR_SET_PDEATHSIG = SIGINT`, so if `mandant` dies (even `kill -9`) the
//! cluster shuts down fast instead of lingering; it runs in its own process group so a terminal's Ctrl-C reaches
//! only `mandant`, which then shuts down in order (DESIGN.md §4, `shutdown.rs`).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

mod binaries;
mod pidfile;
mod setup;
#[cfg(feature = "testing")]
mod testing;

pub use binaries::Binaries;
use binaries::RunAs;
pub(crate) use pidfile::PidFile;
use setup::{initdb, lock_data_dir, prepare_private_dir, tail};
#[cfg(feature = "testing")]
pub use testing::{ScratchDir, ThrowawayCluster, TlsFiles};

use crate::config::Settings;
use crate::db::PgTarget;

/// The bootstrap superuser of an embedded cluster (socket-only, trust).
pub const SUPERUSER: &str = "postgres";
/// How long a fast shutdown (SIGINT) may take before we escalate to an immediate one (SIGQUIT).
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an immediate shutdown may take before SIGKILL.
const IMMEDIATE_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A Unix socket path is limited to 107 bytes (`sun_path`); the file name `.s.PGSQL.NNNNN` takes 15 of them.
const MAX_SOCKET_DIR_LEN: usize = 90;
/// Reads of an unparsable `postmaster.pid` (50 ms apart) before it counts as stale.
const PID_FILE_RETRIES: usize = 20;
/// The package that provides the server binaries on Debian and Ubuntu.
pub const PACKAGE_HINT: &str = "apt-get install postgresql";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found (searched: {searched}). Install them \
         (Debian/Ubuntu: `{PACKAGE_HINT}`) or point embedded.bin_dir / MANDANT__EMBEDDED__BIN_DIR at them"
    )]
    BinariesMissing { searched: String },
    #[error(
        "mandant runs as root, and PostgreSQL refuses to; it needs the `postgres` system user to run the \
         embedded cluster as (the `postgresql` package creates it: `{PACKAGE_HINT}`)"
    )]
    NoPostgresUser,
    #[error(
        "the `postgres` user cannot reach {path}: {blocked} is not searchable by it; choose another \
         embedded.data_dir or allow it (chmod o+x {blocked})"
    )]
    NotTraversable { path: PathBuf, blocked: PathBuf },
    #[error("{path} exists but is not a PostgreSQL data directory (no PG_VERSION); move it away")]
    NotADataDirectory { path: PathBuf },
    #[error(
        "the cluster in {path} was made by PostgreSQL {data_version}, but the binaries in {bin_dir} are \
         version {bin_version}; set embedded.bin_dir to PostgreSQL {data_version}'s binaries"
    )]
    VersionMismatch {
        path: PathBuf,
        data_version: String,
        bin_dir: PathBuf,
        bin_version: String,
    },
    #[error("initdb failed ({status}): {output}")]
    Initdb { status: String, output: String },
    #[error("PostgreSQL exited while starting ({status}); last lines of {log}:\n{tail}")]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "the PostgreSQL (pid {pid}) on {} is still shutting down; it did not exit in time, so no new one could be \
         started (stop it, or wait and start again)",
        pgdata.display()
    )]
    StillShuttingDown { pid: i32, pgdata: PathBuf },
    /// Internal: the postmaster being adopted began to shut down (or is gone) before it was ready.
    #[error("the PostgreSQL already running on this data directory shut down while being adopted")]
    AdoptedShutDown,
    #[error("PostgreSQL did not accept connections within {secs} s; last lines of {log}:\n{tail}")]
    StartTimeout {
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedError {
    let action = action.into();
    move |source| EmbeddedError::Io { action, source }
}

/// The default `autovacuum_naptime` (seconds) of the embedded cluster and of throwaway clusters; the embedded
/// cluster's comes from `embedded.autovacuum_naptime_secs` (config/default.toml explains the figure).
pub const DEFAULT_AUTOVACUUM_NAPTIME_SECS: u32 = 300;

/// What the embedded cluster should look like.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// mandant's data directory; the cluster lives in `pg/` below it.
    pub data_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    pub port: u16,
    pub fsync: bool,
    pub max_connections: u32,
    pub start_timeout: Duration,
    /// `max_slot_wal_keep_size`: a replication slot (a live move's) never holds more WAL than this.
    pub max_slot_wal_keep_size: String,
    /// `autovacuum_naptime` in seconds (`embedded.autovacuum_naptime_secs`).
    pub autovacuum_naptime_secs: u32,
    /// More server settings (`-c name=value`), applied after mandant's own, so they may override them (a
    /// throwaway cluster listening on TCP, with TLS: `embedded/testing.rs`). Empty for the embedded cluster.
    pub extra_settings: Vec<(String, String)>,
}

impl ClusterSpec {
    pub fn from_settings(settings: &Settings) -> Self {
        let e = &settings.embedded;
        Self {
            data_dir: settings.data_dir(),
            bin_dir: (!e.bin_dir.as_os_str().is_empty()).then(|| e.bin_dir.clone()),
            port: e.port,
            fsync: e.fsync,
            max_connections: e.max_connections,
            start_timeout: Duration::from_secs(e.start_timeout_secs),
            max_slot_wal_keep_size: settings.tenants.max_slot_wal_keep_size.clone(),
            autovacuum_naptime_secs: e.autovacuum_naptime_secs,
            extra_settings: Vec::new(),
        }
    }

    pub fn pgdata(&self) -> PathBuf {
        self.data_dir.join("pg")
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("postgresql.log")
    }

    /// `run/` under the data directory, or a short directory under the system temp dir when that path would be
    /// too long for a Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        let preferred = self.data_dir.join("run");
        if preferred.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
            return preferred;
        }
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.data_dir.hash(&mut h);
        std::env::temp_dir().join(format!("mandant-{:016x}", h.finish()))
    }
}

/// The exit status of the postmaster, filled in by its supervisor thread.
#[derive(Default)]
struct ExitSlot {
    status: Mutex<Option<io::Result<ExitStatus>>>,
    changed: Condvar,
}

impl ExitSlot {
    fn set(&self, status: io::Result<ExitStatus>) {
        let mut slot = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(status);
        self.changed.notify_all();
    }

    fn describe(&self) -> Option<String> {
        let slot = self.status.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|s| match s {
            Ok(status) => status.to_string(),
            Err(e) => e.to_string(),
        })
    }

    /// Waits until the process has exited or `timeout` passed; true if it exited.
    fn wait(&self, timeout: Duration) -> bool {
        let slot = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let (slot, _) = self
            .changed
            .wait_timeout_while(slot, timeout, |s| s.is_none())
            .unwrap_or_else(|p| p.into_inner());
        slot.is_some()
    }
}

/// A postmaster this process started.
struct Postmaster {
    pid: Pid,
    exit: Arc<ExitSlot>,
    /// This process's claim on the postmaster (`pidfile::claim_owner`), released when it is stopped or we die.
    _owner: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// A running cluster. Dropping a cluster this process started stops it.
pub struct Cluster {
    pgdata: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    log_path: PathBuf,
    binaries: Binaries,
    owned: Option<Postmaster>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("pgdata", &self.pgdata)
            .field("socket_dir", &self.socket_dir)
            .field("port", &self.port)
            .field("owned", &self.owned.as_ref().map(|p| p.pid.as_raw()))
            .finish()
    }
}

impl Cluster {
    /// Starts the cluster described by `spec`, creating it on first use, or adopts the one already running on
    /// its data directory. Blocking: call it from `spawn_blocking` in async code.
    pub fn start(spec: &ClusterSpec) -> Result<Self, EmbeddedError> {
        let run_as = RunAs::detect()?;
        let pgdata = spec.pgdata();
        let socket_dir = spec.socket_dir();
        let log_path = spec.log_path();
        fs::create_dir_all(&spec.data_dir)
            .map_err(io_err(format!("creating {}", spec.data_dir.display())))?;
        // One starter at a time per data directory (two `mandant` commands started together): the second waits
        // for the first to finish initdb and start, then adopts its cluster. Released when `start` returns.
        let _starting = lock_data_dir(&spec.data_dir)?;
        run_as.check_reachable(&pgdata)?;
        prepare_private_dir(&socket_dir, run_as)?;

        let data_version = fs::read_to_string(pgdata.join("PG_VERSION"))
            .ok()
            .map(|v| v.trim().to_owned());
        let binaries = Binaries::discover(spec.bin_dir.as_deref(), data_version.as_deref())?;
        match data_version {
            Some(data_version) => {
                let bin_version = binaries.major_version()?;
                if bin_version != data_version {
                    return Err(EmbeddedError::VersionMismatch {
                        path: pgdata,
                        data_version,
                        bin_dir: binaries.dir.clone(),
                        bin_version,
                    });
                }
            }
            None if pgdata.exists() => {
                return Err(EmbeddedError::NotADataDirectory { path: pgdata });
            }
            None => initdb(&binaries, &pgdata, run_as)?,
        }

        let mut cluster = Self {
            pgdata,
            socket_dir,
            port: spec.port,
            log_path,
            binaries,
            owned: None,
        };
        let deadline = Instant::now() + spec.start_timeout;
        while let Some(running) = cluster.running_postmaster() {
            if running.is_leaving(&spec.data_dir) {
                // Shutting down, or orphaned (the process that started it died, e.g. `kill -9` of a `serve`, and
                // its parent-death signal is on the way): it will be gone in a moment. Wait, then start our own.
                cluster.wait_gone(&running, deadline)?;
                continue;
            }
            // Another mandant process (a `serve`, or a CLI command) runs this cluster: use it, never stop it.
            tracing::info!(pid = running.pid, pgdata = %cluster.pgdata.display(), "using the embedded PostgreSQL already running");
            cluster.port = running.port;
            cluster.socket_dir = running.socket_dir.clone();
            match cluster.wait_ready(
                deadline.saturating_duration_since(Instant::now()),
                None,
                Some(&running),
            ) {
                Ok(()) => return Ok(cluster),
                // It started to shut down while we waited for it: wait until it is gone, then start our own.
                Err(EmbeddedError::AdoptedShutDown) => cluster.wait_gone(&running, deadline)?,
                Err(e) => return Err(e),
            }
        }
        cluster.socket_dir = spec.socket_dir();
        cluster.port = spec.port;
        cluster.spawn(spec, run_as)?;
        Ok(cluster)
    }

    /// Waits until the postmaster `leaving` has exited (an orphan is asked to shut down fast first, as its
    /// parent-death signal would have), at most until `deadline`.
    fn wait_gone(&self, leaving: &PidFile, deadline: Instant) -> Result<(), EmbeddedError> {
        tracing::warn!(
            pid = leaving.pid,
            status = %leaving.status,
            pgdata = %self.pgdata.display(),
            "the embedded PostgreSQL on this data directory is shutting down (or was left behind by a process that \
             died); waiting for it to exit before starting it again"
        );
        if leaving.is_orphan(self.data_dir()) {
            let _ = kill(Pid::from_raw(leaving.pid), Signal::SIGINT);
        }
        while leaving.is_alive_postgres() {
            if Instant::now() >= deadline {
                return Err(EmbeddedError::StillShuttingDown {
                    pid: leaving.pid,
                    pgdata: self.pgdata.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }

    /// The postmaster recorded in `postmaster.pid`, if it is alive; a stale file (its process gone, or the pid
    /// reused by something that is not PostgreSQL) is removed.
    fn running_postmaster(&self) -> Option<PidFile> {
        let path = self.pgdata.join("postmaster.pid");
        // A postmaster writes its pid file in steps; give an unreadable one a moment before calling it stale.
        let mut parsed = None;
        for _ in 0..PID_FILE_RETRIES {
            let text = fs::read_to_string(&path).ok()?;
            parsed = PidFile::parse(&text);
            if parsed.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        match parsed {
            Some(pid_file) if pid_file.is_alive_postgres() => Some(pid_file),
            parsed => {
                tracing::warn!(
                    pid = parsed.map(|p| p.pid),
                    file = %path.display(),
                    "removing a stale postmaster.pid left by a PostgreSQL that is no longer running"
                );
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    fn spawn(&mut self, spec: &ClusterSpec, run_as: RunAs) -> Result<(), EmbeddedError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(io_err(format!("opening {}", self.log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicating the log file handle"))?;
        let mut command = Command::new(self.binaries.tool("postgres"));
        command
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-c")
            .arg("listen_addresses=")
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.socket_dir.display()
            ))
            .arg("-c")
            .arg(format!("port={}", self.port))
            .arg("-c")
            .arg(format!("max_connections={}", spec.max_connections))
            .arg("-c")
            .arg(format!("fsync={}", if spec.fsync { "on" } else { "off" }))
            // Live moves copy tenants off this cluster by logical replication (a restart to change it); each
            // move holds a slot and a sender here (and for its initial copy up to two more), and an apply worker
            // with up to two table-sync workers on its target: room for several moves at once either way.
            .args(["-c", "wal_level=logical"])
            .args(["-c", "max_replication_slots=20", "-c", "max_wal_senders=20"])
            .args([
                "-c",
                "max_logical_replication_workers=10",
                "-c",
                "max_worker_processes=16",
            ])
            .arg("-c")
            .arg(format!(
                "max_slot_wal_keep_size={}",
                spec.max_slot_wal_keep_size
            ))
            // One autovacuum worker start per database per naptime: see `embedded.autovacuum_naptime_secs`.
            .arg("-c")
            .arg(format!(
                "autovacuum_naptime={}",
                spec.autovacuum_naptime_secs
            ));
        if !spec.fsync {
            command
                .args(["-c", "full_page_writes=off"])
                .args(["-c", "synchronous_commit=off"]);
        }
        for (name, value) in &spec.extra_settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .env("LC_ALL", "C")
            .process_group(0);
        run_as.apply(&mut command, true);

        let exit = Arc::new(ExitSlot::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let slot = exit.clone();
        // The supervisor thread is the postmaster's parent for its whole life: PR_SET_PDEATHSIG fires when the
        // parent *thread* ends, so spawning from a short-lived (e.g. blocking-pool) thread would kill it early.
        std::thread::Builder::new()
            .name("postgres-supervisor".into())
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    slot.set(child.wait());
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            })
            .map_err(io_err("starting the postgres supervisor thread"))?;
        let pid = rx
            .recv()
            .map_err(|_| io_err("starting postgres")(io::Error::other("supervisor thread ended")))?
            .map_err(io_err(format!(
                "starting {}",
                self.binaries.tool("postgres").display()
            )))?;
        tracing::info!(pid, pgdata = %self.pgdata.display(), "started embedded PostgreSQL");
        self.owned = Some(Postmaster {
            pid: Pid::from_raw(pid as i32),
            exit: exit.clone(),
            _owner: pidfile::claim_owner(&spec.data_dir, pid as i32),
        });
        if let Err(e) = self.wait_ready(spec.start_timeout, Some(&exit), None) {
            self.stop();
            return Err(e);
        }
        Ok(())
    }

    /// Waits until `postmaster.pid` says `ready` (the server accepts connections on its socket).
    fn wait_ready(
        &self,
        timeout: Duration,
        exit: Option<&ExitSlot>,
        adopted: Option<&PidFile>,
    ) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = exit.and_then(|e| e.describe()) {
                return Err(EmbeddedError::Exited {
                    status,
                    log: self.log_path.clone(),
                    tail: tail(&self.log_path),
                });
            }
            let pid_file = fs::read_to_string(self.pgdata.join("postmaster.pid"))
                .ok()
                .and_then(|text| PidFile::parse(&text));
            match pid_file {
                // An adopted postmaster that is shutting down (or gone) will never be ready: tell the caller now.
                Some(p) if adopted.is_some() && p.is_leaving(self.data_dir()) => {
                    return Err(EmbeddedError::AdoptedShutDown);
                }
                Some(p) if p.status == "ready" => return Ok(()),
                _ if adopted.is_some_and(|a| !a.is_alive_postgres()) => {
                    return Err(EmbeddedError::AdoptedShutDown);
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedError::StartTimeout {
                    secs: timeout.as_secs(),
                    log: self.log_path.clone(),
                    tail: tail(&self.log_path),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// mandant's data directory (the parent of `pg/`).
    fn data_dir(&self) -> &Path {
        self.pgdata.parent().unwrap_or(&self.pgdata)
    }

    /// A database on this cluster, as the bootstrap superuser.
    /// The user the cluster runs as (uid, gid) when this process is root and it is not us; for files the server
    /// must own (a TLS key: PostgreSQL refuses one others can read).
    pub fn owner_ids() -> Result<Option<(u32, u32)>, EmbeddedError> {
        Ok(match RunAs::detect()? {
            RunAs::Me => None,
            RunAs::User { uid, gid } => Some((uid, gid)),
        })
    }

    pub fn target(&self, dbname: &str) -> PgTarget {
        PgTarget::unix(&self.socket_dir, self.port, SUPERUSER, dbname)
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// True if this process started the cluster (and so will stop it).
    pub fn is_owned(&self) -> bool {
        self.owned.is_some()
    }

    /// The postmaster's pid, if this process started it and it still runs.
    pub fn pid(&self) -> Option<u32> {
        self.owned
            .as_ref()
            .filter(|p| p.exit.describe().is_none())
            .map(|p| p.pid.as_raw() as u32)
    }

    /// Stops the cluster if this process started it: fast shutdown (SIGINT: disconnect sessions, checkpoint),
    /// then immediate (SIGQUIT), then SIGKILL, each after a deadline. Blocking. Idempotent.
    pub fn stop(&mut self) {
        let Some(postmaster) = self.owned.take() else {
            return;
        };
        for (signal, timeout) in [
            (Signal::SIGINT, FAST_STOP_TIMEOUT),
            (Signal::SIGQUIT, IMMEDIATE_STOP_TIMEOUT),
            (Signal::SIGKILL, IMMEDIATE_STOP_TIMEOUT),
        ] {
            if postmaster.exit.describe().is_some() {
                break;
            }
            let _ = kill(postmaster.pid, signal);
            if postmaster.exit.wait(timeout) {
                break;
            }
            tracing::warn!(
                pid = postmaster.pid.as_raw(),
                ?signal,
                "PostgreSQL did not stop in time; escalating"
            );
        }
        tracing::info!(pgdata = %self.pgdata.display(), "stopped embedded PostgreSQL");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
