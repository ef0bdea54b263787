//! Test scaffolding (the `testing` feature; not in the release binary): scratch directories searchable by the
//! `postgres` user, and throwaway clusters in them for tests and benchmarks.

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
}

impl ThrowawayCluster {
    /// fsync off: tests.
    pub fn start(tag: &str) -> Result<Self, EmbeddedError> {
        Self::start_with(tag, false)
    }

    /// With a choice of durability: benchmarks measure with fsync on, as a production cluster runs.
    pub fn start_with(tag: &str, fsync: bool) -> Result<Self, EmbeddedError> {
        let dir = ScratchDir::new(tag)?;
        let spec = ClusterSpec {
            data_dir: dir.path().to_path_buf(),
            bin_dir: None,
            port: 5432,
            fsync,
            max_connections: 300,
            start_timeout: Duration::from_secs(60),
        };
        let cluster = Cluster::start(&spec)?;
        Ok(Self { cluster, _dir: dir })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }
}
