//! Test scaffolding (the `testing` feature; not in the release binary): scratch directories searchable by the
//! `postgres` user, and throwaway clusters in them for tests and benchmarks: on a Unix socket only (the default,
//! like the embedded cluster), or also on TCP at `localhost` on a free port, optionally with TLS, to stand in for
//! further database servers ([`ThrowawayCluster::start_tcp`]). No SQL here: roles on such a cluster are made by
//! the caller through its socket (`target`), where the superuser needs no password.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Cluster, ClusterSpec, EmbeddedError, PidFile, io_err};

/// A directory under `$TMPDIR/mandant-tests/`, searchable by the `postgres` user, removed on drop. For
/// throwaway clusters (tests, benchmarks) and their scratch files.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Root of all scratch directories; directories there older than an hour whose cluster no longer runs are
    /// left-overs of killed runs and are removed.
    pub fn root() -> Result<PathBuf, EmbeddedError> {
        let root = std::env::temp_dir().join("mandant-tests");
        fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("opening {}", root.display())))?;
        Ok(root)
    }

    pub fn new(tag: &str) -> Result<Self, EmbeddedError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Self::root()?.join(format!("{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&path).map_err(io_err(format!("creating {}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .map_err(io_err(format!("opening {}", path.display())))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes scratch directories of earlier runs that were killed before they could clean up.
    pub fn remove_stale() {
        const STALE_AFTER: Duration = Duration::from_secs(3600);
        let Ok(root) = Self::root() else { return };
        let Ok(entries) = fs::read_dir(root) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_AFTER);
            let running = fs::read_to_string(path.join("pg/postmaster.pid"))
                .ok()
                .and_then(|t| PidFile::parse(&t))
                .is_some_and(|p| p.is_alive_postgres());
            if old && !running {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A cluster in its own scratch directory, for tests and benchmarks. Stopped and removed on drop.
pub struct ThrowawayCluster {
    // Field order matters: the cluster stops before its directory is removed.
    cluster: Cluster,
    _dir: ScratchDir,
    /// The TCP port when started with [`Self::start_tcp`].
    tcp_port: Option<u16>,
}

/// A server certificate and its key (PEM files) for a throwaway cluster with `ssl = on`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A TCP port for a throwaway cluster, free on both loopback addresses now: chosen below Linux's ephemeral range
/// (32768-60999 by default), so that the source port of an outgoing connection (the tests' HTTP clients, the
/// pools) cannot take it between this check and the cluster's own bind. A port taken anyway (another test's cluster) is
/// retried by [`ThrowawayCluster::start_tcp_with`]. Found in CI: a port from the kernel's ephemeral range was taken
/// by the time PostgreSQL bound it ("could not bind IPv4 address: Address already in use").
fn free_port() -> Result<u16, EmbeddedError> {
    for _ in 0..500 {
        let port = rand::random_range(20_000..32_000);
        let v4 = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        // A machine without IPv6 loopback is fine: PostgreSQL then listens on IPv4 only.
        let v6 = match std::net::TcpListener::bind(("::1", port)) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
        };
        if v4 && v6 {
            return Ok(port);
        }
    }
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("finding a free TCP port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("finding a free TCP port"))?
        .port();
    Ok(port)
}

/// Whether a cluster failed to start because its TCP port was taken.
fn port_taken(error: &EmbeddedError) -> bool {
    matches!(error, EmbeddedError::Exited { tail, .. } if tail.contains("Address already in use"))
}

impl ThrowawayCluster {
    /// fsync off: tests.
    pub fn start(tag: &str) -> Result<Self, EmbeddedError> {
        Self::start_with(tag, false)
    }

    /// With a choice of durability: benchmarks measure with fsync on, as a production cluster runs.
    pub fn start_with(tag: &str, fsync: bool) -> Result<Self, EmbeddedError> {
        Self::start_with_settings(tag, fsync, &[])
    }

    /// As [`Self::start_with`], with more server settings (a benchmark's `shared_buffers`, for instance).
    pub fn start_with_settings(
        tag: &str,
        fsync: bool,
        settings: &[(String, String)],
    ) -> Result<Self, EmbeddedError> {
        let dir = ScratchDir::new(tag)?;
        let spec = ClusterSpec {
            data_dir: dir.path().to_path_buf(),
            bin_dir: None,
            port: 5432,
            fsync,
            max_connections: 300,
            start_timeout: Duration::from_secs(60),
            max_slot_wal_keep_size: "1GB".to_owned(),
            autovacuum_naptime_secs: super::DEFAULT_AUTOVACUUM_NAPTIME_SECS,
            extra_settings: settings.to_vec(),
        };
        let cluster = Cluster::start(&spec)?;
        Ok(Self {
            cluster,
            _dir: dir,
            tcp_port: None,
        })
    }

    /// A cluster that also listens on TCP at `localhost` (IPv4 and IPv6 loopback) on a free port, as a further
    /// database server for tests and benchmarks; with `tls`, `ssl = on` with that certificate and key (copied
    /// into the cluster's directory, owned by the cluster's user, mode 0600 as PostgreSQL demands). Roles log in
    /// over TCP with scram-sha-256 (the cluster's `pg_hba.conf`); only the socket lets the superuser in without a
    /// password.
    pub fn start_tcp(tag: &str, tls: Option<&TlsFiles>) -> Result<Self, EmbeddedError> {
        Self::start_tcp_with(tag, tls, &[])
    }

    /// As [`Self::start_tcp`], with more server settings (`wal_level = replica`: a server that cannot be moved
    /// off).
    pub fn start_tcp_with(
        tag: &str,
        tls: Option<&TlsFiles>,
        settings: &[(&str, &str)],
    ) -> Result<Self, EmbeddedError> {
        let mut attempts = 0;
        loop {
            match Self::try_start_tcp(tag, tls, settings) {
                Err(e) if port_taken(&e) && attempts < 4 => attempts += 1,
                done => return done,
            }
        }
    }

    fn try_start_tcp(
        tag: &str,
        tls: Option<&TlsFiles>,
        settings: &[(&str, &str)],
    ) -> Result<Self, EmbeddedError> {
        let dir = ScratchDir::new(tag)?;
        let port = free_port()?;
        // Small: tests start several of these beside the shared cluster.
        let mut extra_settings = vec![
            ("listen_addresses".to_owned(), "localhost".to_owned()),
            ("shared_buffers".to_owned(), "16MB".to_owned()),
        ];
        extra_settings.extend(
            settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        if let Some(files) = tls {
            let owner = Cluster::owner_ids()?;
            let tls_dir = dir.path().join("tls");
            fs::create_dir_all(&tls_dir).map_err(io_err("creating the TLS directory"))?;
            for (from, name) in [(&files.cert, "server.crt"), (&files.key, "server.key")] {
                let to = tls_dir.join(name);
                fs::copy(from, &to).map_err(io_err(format!("copying {}", from.display())))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
                    .map_err(io_err(format!("restricting {}", to.display())))?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&to, Some(uid), Some(gid)).map_err(io_err(
                        format!("handing {} to the cluster's user", to.display()),
                    ))?;
                }
            }
            extra_settings.push(("ssl".to_owned(), "on".to_owned()));
            extra_settings.push((
                "ssl_cert_file".to_owned(),
                tls_dir.join("server.crt").display().to_string(),
            ));
            extra_settings.push((
                "ssl_key_file".to_owned(),
                tls_dir.join("server.key").display().to_string(),
            ));
        }
        let spec = ClusterSpec {
            data_dir: dir.path().to_path_buf(),
            bin_dir: None,
            port,
            fsync: false,
            max_connections: 100,
            start_timeout: Duration::from_secs(60),
            max_slot_wal_keep_size: "1GB".to_owned(),
            autovacuum_naptime_secs: super::DEFAULT_AUTOVACUUM_NAPTIME_SECS,
            extra_settings,
        };
        let cluster = Cluster::start(&spec)?;
        Ok(Self {
            cluster,
            _dir: dir,
            tcp_port: Some(port),
        })
    }

    /// The TCP port of a cluster started with [`Self::start_tcp`].
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Stops the cluster now (a database server going down mid-test).
    pub fn stop(&mut self) {
        self.cluster.stop();
    }
}
