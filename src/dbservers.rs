//! Registering database servers (issue #20), for the API and the CLI alike: parse and check what the operator
//! declared, connect with the URL's TLS mode, check the version (≥ 13) and the admin role's rights, note
//! `wal_level`, create the template database there (closed to `PUBLIC`, as on `local`), then record the server
//! with its password sealed. Nothing is recorded unless every check passed.
//!
//! Never: puts the password in an error, a log line or the registry in plain text. Errors that carry a server's
//! own text are passed through [`redact`] as well, should a server ever echo it.

use std::time::Duration;

use crate::control::servers::{NewServer, ServerRecord};
use crate::control::{ControlError, ControlPlane};
use crate::db::{PgTarget, Secret, describe_pg_error};
use crate::domain::Invalid;
use crate::domain::servers::{MAX_BUDGET, MAX_BYTES, MAX_DATABASES, ServerName, Zone};
use crate::tenant::TenantError;
use crate::tenant::migrate::MigrationSet;
use crate::tenant::server_check::{self, MIN_SERVER_VERSION};
use crate::tenant::targets::Targets;
use crate::tenant::template_db;

/// Databases a server takes when the operator declares no `max_databases` (as `tenants.local_max_databases`).
pub const DEFAULT_MAX_DATABASES: i64 = 2000;
/// How long the first connection and the checks may take: tokio-postgres bounds the TCP connect
/// (`db::CONNECT_TIMEOUT`), not the host name lookup; this bounds both, well below the request timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServersError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The URL does not parse, or names an unusable TLS setting; the text never quotes the URL.
    #[error("url: {0}")]
    BadUrl(String),
    #[error("the server cannot be reached: {0}")]
    Unreachable(String),
    #[error("the server runs PostgreSQL {0}; mandant needs 13 or newer")]
    TooOld(String),
    #[error(
        "the admin role is neither a superuser nor has it CREATEDB and CREATEROLE (missing: {0})"
    )]
    MissingRights(String),
    #[error("the template database could not be made there: {0}")]
    Template(String),
    #[error(transparent)]
    Control(#[from] ControlError),
}

/// A server as the operator declared it.
pub struct Registration {
    pub name: String,
    /// A PostgreSQL connection URL of an admin role (its password is a secret).
    pub url: Secret,
    pub max_databases: Option<i64>,
    pub max_bytes: Option<i64>,
    pub budget: Option<i64>,
    pub zone: Option<String>,
}

/// The declared numbers, each checked against its range (a refusal names the field).
pub fn check_range(
    field: &'static str,
    value: Option<i64>,
    range: &std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, Invalid> {
    match value {
        Some(v) if !range.contains(&v) => Err(Invalid {
            field,
            reason: format!("must be between {} and {}", range.start(), range.end()),
        }),
        other => Ok(other),
    }
}

/// `max_databases` and `budget` as stored (the ranges fit `integer`).
fn to_i32(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Removes every occurrence of the password from a text meant for a caller or a log.
pub fn redact(text: &str, password: Option<&Secret>) -> String {
    match password {
        Some(p) if p.expose().len() >= 3 => text.replace(p.expose(), "[redacted]"),
        _ => text.to_owned(),
    }
}

/// Registers servers: checks first, records last.
#[derive(Clone)]
pub struct ServerRegistry {
    control: ControlPlane,
    targets: Targets,
    migrations: MigrationSet,
}

impl ServerRegistry {
    pub fn new(control: ControlPlane, targets: Targets) -> Self {
        Self {
            control,
            targets,
            migrations: MigrationSet::embedded().clone(),
        }
    }

    /// Checks the declaration and the server, makes the template database, records the server (`active`).
    pub async fn register(&self, reg: &Registration) -> Result<ServerRecord, ServersError> {
        let name = ServerName::parse(&reg.name)?;
        let zone = reg.zone.as_deref().map(Zone::parse).transpose()?;
        let max_databases = check_range("max_databases", reg.max_databases, &MAX_DATABASES)?
            .unwrap_or(DEFAULT_MAX_DATABASES);
        let max_bytes = check_range("max_bytes", reg.max_bytes, &MAX_BYTES)?;
        let budget = check_range("budget", reg.budget, &MAX_BUDGET)?;
        let target = PgTarget::parse_url(reg.url.expose()).map_err(ServersError::BadUrl)?;
        let password = target.password().cloned();
        let admin = target.with_dbname("postgres");
        // A taken name is refused before the server is touched.
        match self.control.server_by_name(&name).await {
            Ok(_) => return Err(ControlError::ServerNameTaken.into()),
            Err(ControlError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let checked = tokio::time::timeout(CHECK_TIMEOUT, async {
            let conn = admin.connect().await.map_err(|e| {
                ServersError::Unreachable(redact(&describe_pg_error(&e), password.as_ref()))
            })?;
            server_check::inspect(&conn)
                .await
                .map_err(|e| ServersError::Unreachable(redact(&e.to_string(), password.as_ref())))
        })
        .await;
        let facts = match checked {
            Ok(facts) => facts?,
            Err(_) => {
                return Err(ServersError::Unreachable(format!(
                    "no answer within {CHECK_TIMEOUT:?}"
                )));
            }
        };
        if facts.version < MIN_SERVER_VERSION {
            return Err(ServersError::TooOld(format!(
                "{}.{}",
                facts.version / 10_000,
                facts.version % 10_000
            )));
        }
        if !facts.has_rights() {
            return Err(ServersError::MissingRights(facts.missing_rights()));
        }
        if !facts.live_moves_possible() {
            tracing::info!(server = %name, wal_level = %facts.wal_level,
                "wal_level is not logical: live moves off this server will not be possible until it is");
        }
        let outcome =
            template_db::ensure_template(&admin, self.targets.template_db(), &self.migrations)
                .await
                .map_err(|e: TenantError| {
                    ServersError::Template(redact(&e.to_string(), password.as_ref()))
                })?;
        let sealed = password
            .as_ref()
            .map(|p| self.targets.seal_password(name.as_str(), p));
        let stored_url = target.without_password().to_url();
        let record = self
            .control
            .insert_server(&NewServer {
                name: &name,
                admin_url: stored_url.expose(),
                admin_password: sealed,
                max_databases: to_i32(max_databases),
                max_bytes,
                budget: budget.map(to_i32),
                zone: zone.as_ref(),
                server_version: facts.version,
                wal_level: &facts.wal_level,
            })
            .await?;
        self.control
            .set_template_version(record.id, outcome.to)
            .await?;
        tracing::info!(server = %name, target = %target.redacted(), "database server registered");
        Ok(self.control.server(record.id).await?)
    }
}
