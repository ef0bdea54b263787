//! The PostgreSQL server binaries (found through `embedded.bin_dir`, `pg_config --bindir`, `PATH`, then
//! `/usr/lib/postgresql/*/bin`), and the system user the cluster's processes run as (root → `postgres`).

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{EmbeddedError, SUPERUSER, io_err};

/// The directory holding the PostgreSQL server binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub(super) dir: PathBuf,
}

impl Binaries {
    /// Finds `initdb` and `postgres`: the explicit directory if given (and only it), else `pg_config --bindir`,
    /// `PATH`, `/usr/lib/postgresql/*/bin` (newest first, but `prefer_major` first of all).
    pub fn discover(
        explicit: Option<&Path>,
        prefer_major: Option<&str>,
    ) -> Result<Self, EmbeddedError> {
        let candidates = match explicit {
            Some(dir) => vec![dir.to_path_buf()],
            None => Self::candidates(prefer_major),
        };
        Self::first_complete(&candidates)
    }

    /// The first directory of `candidates` that holds both binaries.
    pub fn first_complete(candidates: &[PathBuf]) -> Result<Self, EmbeddedError> {
        candidates
            .iter()
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
            .map(|dir| Self { dir: dir.clone() })
            .ok_or_else(|| EmbeddedError::BinariesMissing {
                searched: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn candidates(prefer_major: Option<&str>) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut versioned: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                Some((major, e.path().join("bin")))
            })
            .collect();
        versioned.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
        if let Some(major) = prefer_major {
            out.extend(
                versioned
                    .iter()
                    .filter(|(m, _)| m.to_string() == major)
                    .map(|(_, p)| p.clone()),
            );
        }
        if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
            && output.status.success()
        {
            out.push(PathBuf::from(
                String::from_utf8_lossy(&output.stdout).trim(),
            ));
        }
        if let Some(path) = std::env::var_os("PATH") {
            out.extend(std::env::split_paths(&path));
        }
        out.extend(versioned.into_iter().map(|(_, p)| p));
        out.push(PathBuf::from("/usr/local/pgsql/bin"));
        let mut seen = std::collections::HashSet::new();
        out.retain(|p| seen.insert(p.clone()));
        out
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A program from the same installation (`pg_dump`, `pg_restore`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The major version of these binaries (`postgres --version` → "15").
    pub fn major_version(&self) -> Result<String, EmbeddedError> {
        let output = Command::new(self.tool("postgres"))
            .arg("--version")
            .output()
            .map_err(io_err("running postgres --version"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = text.split_whitespace().nth(2).unwrap_or_default();
        Ok(version.split('.').next().unwrap_or_default().to_owned())
    }
}

/// The system user the cluster's processes run as.
#[derive(Debug, Clone, Copy)]
pub(super) enum RunAs {
    /// Not root: the cluster runs as we do.
    Me,
    /// Root: the `postgres` system user.
    User { uid: u32, gid: u32 },
}

impl RunAs {
    pub(super) fn detect() -> Result<Self, EmbeddedError> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Self::Me);
        }
        let user = nix::unistd::User::from_name(SUPERUSER)
            .ok()
            .flatten()
            .ok_or(EmbeddedError::NoPostgresUser)?;
        Ok(Self::User {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }

    /// Makes `path` (created by us) belong to the cluster's user.
    pub(super) fn give(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Self::User { uid, gid } = *self {
            nix::unistd::chown(
                path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| {
                io_err(format!("giving {} to the postgres user", path.display()))(e.into())
            })?;
        }
        Ok(())
    }

    /// Checks that every ancestor of `path` is searchable by the cluster's user.
    pub(super) fn check_reachable(&self, path: &Path) -> Result<(), EmbeddedError> {
        let Self::User { uid, gid } = *self else {
            return Ok(());
        };
        use std::os::unix::fs::MetadataExt;
        for dir in path.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(dir) else {
                continue;
            };
            let mode = meta.mode();
            let searchable = if meta.uid() == uid {
                mode & 0o100 != 0
            } else if meta.gid() == gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !searchable {
                return Err(EmbeddedError::NotTraversable {
                    path: path.to_path_buf(),
                    blocked: dir.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    /// Prepares `command` to drop to this user (and optionally to die with its parent thread) in the child.
    pub(super) fn apply(&self, command: &mut Command, die_with_parent: bool) {
        let ids = match *self {
            Self::Me => None,
            Self::User { uid, gid } => Some((uid, gid)),
        };
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe functions
        // (setgroups, setgid, setuid, prctl, getppid, _exit); it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if let Some((uid, gid)) = ids {
                    let groups = [gid as libc::gid_t];
                    if libc::setgroups(1, groups.as_ptr()) != 0
                        || libc::setgid(gid as libc::gid_t) != 0
                        || libc::setuid(uid as libc::uid_t) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                #[cfg(target_os = "linux")]
                if die_with_parent {
                    // Set after setuid: a change of credentials clears the parent-death signal.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT as libc::c_ulong) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                }
                #[cfg(not(target_os = "linux"))]
                let _ = (die_with_parent, parent);
                Ok(())
            });
        }
    }
}
