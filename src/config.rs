//! Typed settings, loaded once at start.
//!
//! Layers, later wins: the committed `config/default.toml` (compiled in), an optional `config/local.toml` in the
//! working directory, an explicit `--config FILE`, then environment variables `MANDANT__SECTION__KEY`.
//! Loading validates everything it can without touching the network; a bad value is an error that names the
//! key. Secrets (`database.url`, `auth.bootstrap_token`) are wrapped in [`Secret`], whose `Debug` never shows the
//! value, so printing a `Settings` is safe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use crate::db::{PgTarget, Secret};
pub use crate::telemetry::{LogFormat, LogSettings};

/// The committed defaults, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
/// Overrides for throwaway clusters (tests and benchmarks).
pub const TEST_TOML: &str = include_str!("../config/test.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// `Ok` when `ok`, else the error naming `key`.
fn ensure(ok: bool, key: &'static str, reason: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(invalid(key, reason))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub embedded: EmbeddedSettings,
    pub tenants: TenantSettings,
    pub workers: WorkerSettings,
    pub routing: RoutingSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    pub import_limit_bytes: usize,
    pub request_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
}

impl ServerSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
}

impl DatabaseSettings {
    /// The external control-plane database, or `None` for the embedded cluster.
    pub fn target(&self) -> Result<Option<PgTarget>, ConfigError> {
        if self.url.is_empty() {
            return Ok(None);
        }
        PgTarget::parse_url(self.url.expose())
            .map(Some)
            .map_err(|reason| invalid("database.url", reason))
    }
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.acquire_timeout_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSettings {
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub port: u16,
    pub fsync: bool,
    pub max_connections: u32,
    pub start_timeout_secs: u64,
    /// `autovacuum_naptime` of the embedded cluster, in seconds: its autovacuum launcher starts a worker backend
    /// in every database once per this period, so with many tenant databases the default of PostgreSQL (60 s)
    /// spends a backend start per 60 s / databases (see `embedded::DEFAULT_AUTOVACUUM_NAPTIME_SECS`).
    pub autovacuum_naptime_secs: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    pub db_prefix: String,
    pub template_db: String,
    pub credential_secret: Secret,
    pub local_max_databases: u32,
    pub archive_dir: PathBuf,
    pub field_quota: u32,
    pub scram_iterations: u32,
    /// Days a moved tenant's source database is kept (renamed) before a job drops it.
    pub move_retention_days: u32,
    /// How long a request for a client in a move's freeze waits for the switch before it is answered 503.
    pub move_freeze_wait_ms: u64,
    /// How long a move's freeze waits for requests already running on the source before it fences the source.
    pub move_drain_ms: u64,
    /// How long a move may copy and catch up before it gives up and rolls back.
    pub move_copy_timeout_secs: u64,
    /// Moves a drain runs at once per source server and per target server.
    pub moves_per_server: u16,
    /// `max_slot_wal_keep_size` of the embedded cluster (and of throwaway clusters): a replication slot of a
    /// stuck move never holds more WAL than this.
    pub max_slot_wal_keep_size: String,
}

impl TenantSettings {
    pub fn move_freeze_wait(&self) -> Duration {
        Duration::from_millis(self.move_freeze_wait_ms)
    }
    pub fn move_drain(&self) -> Duration {
        Duration::from_millis(self.move_drain_ms)
    }
    pub fn move_copy_timeout(&self) -> Duration {
        Duration::from_secs(self.move_copy_timeout_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Names this process's worker slots (empty = this host and the data directory); see [`Settings::worker_identity`].
    pub identity: String,
    pub concurrency: u16,
    pub fanout_concurrency: u16,
    pub poll_interval_ms: u64,
    pub lease_secs: u64,
    pub max_attempts: u16,
    pub backoff_base_ms: u64,
    pub backoff_max_secs: u64,
    /// Per-client deadline of cross-client work (a count in one client, a page of a stream, its statistics).
    pub fanout_client_deadline_ms: u64,
    /// How often the overview's figures are gathered (0 = never).
    pub stats_interval_secs: u64,
    /// How often each process records when its routing pool last served each client.
    pub served_flush_secs: u64,
    /// How often the retention rules are applied (0 = never); one process at a time purges.
    pub retention_interval_secs: u64,
    /// How often every inner client's scope is applied again in its parent's database (rule scopes follow
    /// changed recipients within this delay; 0 = never). One process at a time.
    pub inner_scope_interval_secs: u64,
    /// How often finished moves are cleaned up after (retired source databases past their days, replication
    /// objects a rollback could not reach, moves whose worker died on the last attempt); 0 = never.
    pub move_sweep_interval_secs: u64,
}

impl WorkerSettings {
    pub fn fanout_client_deadline(&self) -> Duration {
        Duration::from_millis(self.fanout_client_deadline_ms)
    }
    /// `None`: statistics are off.
    pub fn stats_interval(&self) -> Option<Duration> {
        (self.stats_interval_secs > 0).then(|| Duration::from_secs(self.stats_interval_secs))
    }
    /// `None`: the inner clients' scope job is off.
    pub fn inner_scope_interval(&self) -> Option<Duration> {
        (self.inner_scope_interval_secs > 0)
            .then(|| Duration::from_secs(self.inner_scope_interval_secs))
    }
    /// `None`: the moves' clean-up is off.
    pub fn move_sweep_interval(&self) -> Option<Duration> {
        (self.move_sweep_interval_secs > 0)
            .then(|| Duration::from_secs(self.move_sweep_interval_secs))
    }
    /// `None`: the retention purge is off.
    pub fn retention_interval(&self) -> Option<Duration> {
        (self.retention_interval_secs > 0)
            .then(|| Duration::from_secs(self.retention_interval_secs))
    }
    pub fn served_flush(&self) -> Duration {
        Duration::from_secs(self.served_flush_secs)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
    /// The delay before retry number `attempt` (1-based), with +-20% jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.backoff_base_ms as f64 / 1000.0;
        let exp = base * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
        let capped = exp.min(self.backoff_max_secs as f64);
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        Duration::from_secs_f64((capped * jitter).max(0.001))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    pub budget_per_server: usize,
    pub per_tenant_cap: usize,
    pub max_waiters_per_tenant: usize,
    pub acquire_timeout_ms: u64,
    pub idle_ttl_secs: u64,
    pub max_lifetime_secs: u64,
    pub breaker_cooldown_ms: u64,
    pub pool_idle_drop_secs: u64,
    pub gc_interval_secs: u64,
    pub fair_share_hold_secs: u64,
    pub scan_share: usize,
    pub prepared_statements: bool,
    /// Concurrent single-statement reads of one tenant may share a busy connection (pipelined).
    pub shared_reads: bool,
}

impl RoutingSettings {
    pub fn gc_interval(&self) -> Duration {
        Duration::from_secs(self.gc_interval_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub bootstrap_token: Secret,
    pub cache_ttl_secs: u64,
    pub audit_retention_days: u32,
    pub session_idle_minutes: u32,
    pub session_max_hours: u32,
    pub session_cookie_secure: bool,
}

impl AuthSettings {
    pub fn cache_ttl(&self) -> Duration {
        Duration::from_secs(self.cache_ttl_secs)
    }
    /// A console session's idle expiry.
    pub fn session_idle(&self) -> chrono::Duration {
        chrono::Duration::minutes(i64::from(self.session_idle_minutes))
    }
    /// A console session's hard limit after sign-in.
    pub fn session_max(&self) -> chrono::Duration {
        chrono::Duration::hours(i64::from(self.session_max_hours))
    }
}

/// Where settings come from. [`LoadOptions::from_process`] is what the binary uses; tests build their own so
/// they never depend on (or race over) the process environment.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// TOML text layered right above the compiled-in defaults (the test harness passes `config/test.toml`).
    pub overlay: Option<String>,
    /// Directory searched for the optional `local.toml`.
    pub config_dir: Option<PathBuf>,
    /// `--config FILE`: must exist.
    pub explicit_file: Option<PathBuf>,
    /// Environment variables; only the `MANDANT__` ones are read.
    pub env: HashMap<String, String>,
}

impl LoadOptions {
    pub fn from_process(explicit_file: Option<PathBuf>) -> Self {
        Self {
            overlay: None,
            config_dir: Some(PathBuf::from("config")),
            explicit_file,
            env: std::env::vars().collect(),
        }
    }
}

impl Settings {
    pub fn load(options: &LoadOptions) -> Result<Self, ConfigError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(overlay) = &options.overlay {
            builder = builder.add_source(File::from_str(overlay, FileFormat::Toml));
        }
        if let Some(dir) = &options.config_dir {
            builder = builder.add_source(
                File::from(dir.join("local.toml"))
                    .format(FileFormat::Toml)
                    .required(false),
            );
        }
        if let Some(file) = &options.explicit_file {
            if !file.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", file.display()),
                ));
            }
            builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml));
        }
        let env: HashMap<String, String> = options
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("MANDANT__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix("MANDANT")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that serde cannot express: ranges and cross-field rules.
    /// Every key's constraint; the first one broken is the error (naming the key).
    fn validate(&self) -> Result<(), ConfigError> {
        let (server, database, embedded) = (&self.server, &self.database, &self.embedded);
        ensure(
            server.body_limit_bytes >= 1024,
            "server.body_limit_bytes",
            "must be at least 1024",
        )?;
        ensure(
            (1..=7 * 24 * 60).contains(&self.auth.session_idle_minutes),
            "auth.session_idle_minutes",
            "must be between 1 and 10080 (a week)",
        )?;
        ensure(
            (1..=24 * 30).contains(&self.auth.session_max_hours),
            "auth.session_max_hours",
            "must be between 1 and 720 (30 days)",
        )?;
        ensure(
            (1..=100_000).contains(&self.tenants.scram_iterations),
            "tenants.scram_iterations",
            "must be between 1 and 100000",
        )?;
        ensure(
            self.tenants.moves_per_server > 0,
            "tenants.moves_per_server",
            "must be at least 1",
        )?;
        ensure(
            self.tenants.move_copy_timeout_secs > 0,
            "tenants.move_copy_timeout_secs",
            "must be at least 1",
        )?;
        ensure(
            is_memory_size(&self.tenants.max_slot_wal_keep_size),
            "tenants.max_slot_wal_keep_size",
            "must be a size such as 4GB, 512MB or -1",
        )?;
        ensure(
            server.import_limit_bytes >= 1024,
            "server.import_limit_bytes",
            "must be at least 1024",
        )?;
        ensure(
            server.request_timeout_secs > 0,
            "server.request_timeout_secs",
            "must be at least 1",
        )?;
        ensure(
            database.max_connections > 0,
            "database.max_connections",
            "must be at least 1",
        )?;
        ensure(
            database.acquire_timeout_secs > 0,
            "database.acquire_timeout_secs",
            "must be at least 1",
        )?;
        database.target()?;
        ensure(
            !embedded.data_dir.as_os_str().is_empty(),
            "embedded.data_dir",
            "must not be empty",
        )?;
        ensure(
            embedded.port > 0,
            "embedded.port",
            "must be between 1 and 65535",
        )?;
        ensure(
            (10..=10_000).contains(&embedded.max_connections),
            "embedded.max_connections",
            "must be between 10 and 10000",
        )?;
        ensure(
            embedded.start_timeout_secs > 0,
            "embedded.start_timeout_secs",
            "must be at least 1",
        )?;
        ensure(
            (1..=2_147_483).contains(&embedded.autovacuum_naptime_secs),
            "embedded.autovacuum_naptime_secs",
            "must be between 1 and 2147483 (PostgreSQL's range)",
        )?;
        self.validate_tenants()?;
        self.validate_workers_and_routing()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        Ok(())
    }

    fn validate_tenants(&self) -> Result<(), ConfigError> {
        let prefix_ok = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.starts_with(|c: char| c.is_ascii_lowercase())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        // 63 bytes is PostgreSQL's identifier limit; a client id (uuid, 32 hex digits) follows the prefix.
        ensure(
            prefix_ok(&self.tenants.db_prefix, 63 - 32),
            "tenants.db_prefix",
            "must be 1-31 characters of a-z, 0-9 and _, starting with a letter",
        )?;
        ensure(
            prefix_ok(&self.tenants.template_db, 63),
            "tenants.template_db",
            "must be 1-63 characters of a-z, 0-9 and _, starting with a letter",
        )?;
        ensure(
            (1..=100_000).contains(&self.tenants.local_max_databases),
            "tenants.local_max_databases",
            "must be between 1 and 100000",
        )
    }

    fn validate_workers_and_routing(&self) -> Result<(), ConfigError> {
        let w = &self.workers;
        ensure(
            w.identity.chars().count() <= 200 && !w.identity.chars().any(char::is_control),
            "workers.identity",
            "must be at most 200 characters without control characters",
        )?;
        ensure(
            (1..=256).contains(&w.fanout_concurrency),
            "workers.fanout_concurrency",
            "must be between 1 and 256",
        )?;
        ensure(
            (100..=600_000).contains(&w.fanout_client_deadline_ms),
            "workers.fanout_client_deadline_ms",
            "must be between 100 and 600000",
        )?;
        ensure(
            w.stats_interval_secs == 0 || w.stats_interval_secs >= 10,
            "workers.stats_interval_secs",
            "must be 0 (off) or at least 10",
        )?;
        ensure(
            w.retention_interval_secs == 0 || (60..=86_400).contains(&w.retention_interval_secs),
            "workers.retention_interval_secs",
            "must be 0 (off) or between 60 and 86400",
        )?;
        ensure(
            w.inner_scope_interval_secs <= 86_400,
            "workers.inner_scope_interval_secs",
            "must be between 0 (off) and 86400",
        )?;
        ensure(
            (1..=3600).contains(&w.served_flush_secs),
            "workers.served_flush_secs",
            "must be between 1 and 3600",
        )?;
        ensure(
            (1..=256).contains(&w.concurrency),
            "workers.concurrency",
            "must be between 1 and 256",
        )?;
        ensure(
            w.poll_interval_ms >= 10,
            "workers.poll_interval_ms",
            "must be at least 10",
        )?;
        ensure(
            w.lease_secs >= 5,
            "workers.lease_secs",
            "must be at least 5",
        )?;
        ensure(
            w.max_attempts > 0,
            "workers.max_attempts",
            "must be at least 1",
        )?;
        ensure(
            w.backoff_max_secs > 0,
            "workers.backoff_max_secs",
            "must be at least 1",
        )?;
        let r = &self.routing;
        ensure(
            r.budget_per_server > 0
                && r.per_tenant_cap > 0
                && r.per_tenant_cap <= r.budget_per_server,
            "routing.per_tenant_cap",
            "must be at least 1 and at most routing.budget_per_server (itself at least 1)",
        )?;
        ensure(
            r.scan_share > 0 && r.scan_share <= r.budget_per_server,
            "routing.scan_share",
            "must be at least 1 and at most routing.budget_per_server",
        )?;
        ensure(
            r.max_waiters_per_tenant > 0,
            "routing.max_waiters_per_tenant",
            "must be at least 1",
        )?;
        ensure(
            r.acquire_timeout_ms > 0 && r.gc_interval_secs > 0 && r.max_lifetime_secs > 0,
            "routing",
            "acquire_timeout_ms, gc_interval_secs and max_lifetime_secs must be at least 1",
        )
    }

    /// The stable identity of this process's workers: `workers.identity`, or this host and the data directory. A
    /// process restarted with the same identity takes back the jobs its predecessor left running at once (see
    /// `control::jobs::WorkerSlot`), instead of waiting for their leases to expire.
    pub fn worker_identity(&self) -> String {
        if !self.workers.identity.is_empty() {
            return self.workers.identity.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        format!("{host}:{}", self.data_dir().display())
    }

    /// The directory for the embedded cluster, archives and the bootstrap token, made absolute.
    pub fn data_dir(&self) -> PathBuf {
        absolute(&self.embedded.data_dir)
    }

    /// Where client archives are written.
    pub fn archive_dir(&self) -> PathBuf {
        if self.tenants.archive_dir.as_os_str().is_empty() {
            self.data_dir().join("archives")
        } else {
            absolute(&self.tenants.archive_dir)
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A PostgreSQL memory size setting as written in a configuration (`-1`, or digits with an optional kB/MB/GB/TB
/// unit), so it can be passed as `-c name=value` safely.
fn is_memory_size(value: &str) -> bool {
    if value == "-1" {
        return true;
    }
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &value[digits.len()..];
    !digits.is_empty()
        && digits.len() <= 12
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["", "kB", "MB", "GB", "TB"].contains(&unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_without_any_file_or_variable() {
        let settings = Settings::load(&LoadOptions::default()).unwrap();
        assert_eq!(settings.server.listen.to_string(), "127.0.0.1:8080");
        assert!(settings.database.url.is_empty());
        assert_eq!(settings.embedded.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.log.format, LogFormat::Pretty);
        assert!(settings.auth.bootstrap_token.is_empty());
    }

    #[test]
    fn layers_apply_in_order_default_local_explicit_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("local.toml"),
            "[server]\nlisten = \"127.0.0.1:1001\"\nbody_limit_bytes = 5000\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        let explicit = dir.path().join("explicit.toml");
        std::fs::write(&explicit, "[server]\nlisten = \"127.0.0.1:1002\"\n").unwrap();

        let local_only = Settings::load(&LoadOptions {
            config_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(local_only.server.listen.port(), 1001);

        let with_explicit = Settings::load(&LoadOptions {
            config_dir: Some(dir.path().to_path_buf()),
            explicit_file: Some(explicit.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(with_explicit.server.listen.port(), 1002);
        // Keys the explicit file does not set keep the lower layers' values.
        assert_eq!(with_explicit.server.body_limit_bytes, 5000);
        assert_eq!(with_explicit.log.format, LogFormat::Json);

        let with_env = Settings::load(&LoadOptions {
            config_dir: Some(dir.path().to_path_buf()),
            explicit_file: Some(explicit),
            env: env(&[
                ("MANDANT__SERVER__LISTEN", "127.0.0.1:1003"),
                ("MANDANT__EMBEDDED__FSYNC", "false"),
                ("UNRELATED__SERVER__LISTEN", "127.0.0.1:9"),
            ]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(with_env.server.listen.port(), 1003);
        assert!(!with_env.embedded.fsync);
        assert_eq!(with_env.server.body_limit_bytes, 5000);
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_key() {
        let err = Settings::load(&LoadOptions {
            env: env(&[("MANDANT__SERVER__LISTEN", "not-an-address")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("server.listen"), "{err}");

        let err = Settings::load(&LoadOptions {
            env: env(&[("MANDANT__LOG__FORMAT", "xml")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("log.format"), "{err}");

        let err = Settings::load(&LoadOptions {
            env: env(&[("MANDANT__TENANTS__DB_PREFIX", "Bad-Prefix")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("tenants.db_prefix"), "{err}");

        // The routing pool's switches take a boolean, nothing else; set, they are what was given.
        for (variable, key) in [
            ("MANDANT__ROUTING__SHARED_READS", "routing.shared_reads"),
            (
                "MANDANT__ROUTING__PREPARED_STATEMENTS",
                "routing.prepared_statements",
            ),
        ] {
            let err = Settings::load(&LoadOptions {
                env: env(&[(variable, "sometimes")]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{err}");
        }
        let off = Settings::load(&LoadOptions {
            env: env(&[("MANDANT__ROUTING__SHARED_READS", "false")]),
            ..Default::default()
        })
        .unwrap();
        assert!(!off.routing.shared_reads);
        assert!(off.routing.prepared_statements);

        for naptime in ["0", "2147484"] {
            let err = Settings::load(&LoadOptions {
                env: env(&[("MANDANT__EMBEDDED__AUTOVACUUM_NAPTIME_SECS", naptime)]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("embedded.autovacuum_naptime_secs"), "{err}");
        }

        let err = Settings::load(&LoadOptions {
            env: env(&[
                ("MANDANT__ROUTING__BUDGET_PER_SERVER", "4"),
                ("MANDANT__ROUTING__PER_TENANT_CAP", "8"),
            ]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("routing.per_tenant_cap"), "{err}");

        for identity in ["host\u{7}bell".to_owned(), "x".repeat(201)] {
            let err = Settings::load(&LoadOptions {
                env: env(&[("MANDANT__WORKERS__IDENTITY", identity.as_str())]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("workers.identity"), "{err}");
        }

        for (var, value, key) in [
            (
                "MANDANT__WORKERS__FANOUT_CLIENT_DEADLINE_MS",
                "5",
                "workers.fanout_client_deadline_ms",
            ),
            (
                "MANDANT__WORKERS__STATS_INTERVAL_SECS",
                "5",
                "workers.stats_interval_secs",
            ),
            (
                "MANDANT__WORKERS__SERVED_FLUSH_SECS",
                "0",
                "workers.served_flush_secs",
            ),
            (
                "MANDANT__WORKERS__RETENTION_INTERVAL_SECS",
                "59",
                "workers.retention_interval_secs",
            ),
            (
                "MANDANT__WORKERS__RETENTION_INTERVAL_SECS",
                "86401",
                "workers.retention_interval_secs",
            ),
        ] {
            let err = Settings::load(&LoadOptions {
                env: env(&[(var, value)]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn the_worker_identity_is_the_configured_one_or_host_and_data_directory() {
        let settings = Settings::load(&LoadOptions {
            env: env(&[("MANDANT__WORKERS__IDENTITY", "pod-0")]),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(settings.worker_identity(), "pod-0");
        let derived = Settings::load(&LoadOptions::default())
            .unwrap()
            .worker_identity();
        assert!(
            derived.ends_with(&format!(
                ":{}",
                Settings::load(&LoadOptions::default())
                    .unwrap()
                    .data_dir()
                    .display()
            )),
            "{derived}"
        );
    }

    #[test]
    fn an_unknown_key_is_refused() {
        let err = Settings::load(&LoadOptions {
            env: env(&[("MANDANT__SERVER__LISTN", "127.0.0.1:1")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn a_missing_explicit_file_is_an_error() {
        let err = Settings::load(&LoadOptions {
            explicit_file: Some(PathBuf::from("/nonexistent/mandant.toml")),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("--config"), "{err}");
    }

    #[test]
    fn a_scan_share_of_zero_or_over_the_budget_is_refused_naming_its_key() {
        for share in ["0", "41"] {
            let err = Settings::load(&LoadOptions {
                env: env(&[
                    ("MANDANT__ROUTING__BUDGET_PER_SERVER", "40"),
                    ("MANDANT__ROUTING__SCAN_SHARE", share),
                ]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("routing.scan_share"), "{share}: {err}");
        }
    }

    #[test]
    fn console_session_limits_out_of_range_are_refused_naming_their_key() {
        for (key, variable, value) in [
            (
                "auth.session_idle_minutes",
                "MANDANT__AUTH__SESSION_IDLE_MINUTES",
                "0",
            ),
            (
                "auth.session_idle_minutes",
                "MANDANT__AUTH__SESSION_IDLE_MINUTES",
                "10081",
            ),
            (
                "auth.session_max_hours",
                "MANDANT__AUTH__SESSION_MAX_HOURS",
                "0",
            ),
            (
                "auth.session_max_hours",
                "MANDANT__AUTH__SESSION_MAX_HOURS",
                "721",
            ),
        ] {
            let err = Settings::load(&LoadOptions {
                env: env(&[(variable, value)]),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
    }

    #[test]
    fn a_bad_database_url_is_refused_without_echoing_it() {
        let err = Settings::load(&LoadOptions {
            env: env(&[("MANDANT__DATABASE__URL", "mysql://u:hunter2@x/y")]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("database.url"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let settings = Settings::load(&LoadOptions {
            env: env(&[
                (
                    "MANDANT__DATABASE__URL",
                    "postgres://u:hunter2@db:5432/mandant",
                ),
                ("MANDANT__AUTH__BOOTSTRAP_TOKEN", "tok-s3cret-value"),
            ]),
            ..Default::default()
        })
        .unwrap();
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("tok-s3cret-value"), "{shown}");
        let secret = Settings::load(&LoadOptions {
            env: env(&[("MANDANT__TENANTS__CREDENTIAL_SECRET", "key-material-42")]),
            ..Default::default()
        })
        .unwrap();
        assert!(!format!("{secret:?}").contains("key-material-42"));
        assert_eq!(settings.auth.bootstrap_token.expose(), "tok-s3cret-value");
    }
}
