//! Connection targets: where one PostgreSQL database is and how to open it.
//!
//! One parser (tokio-postgres's URL and key/value syntax) feeds both clients we use: sqlx for the control plane and
//! tokio-postgres (deadpool, refinery) for clusters and tenants. A target's `Debug` and [`PgTarget::redacted`] never
//! show the password, so a target can be logged.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::tokio_postgres;
use sqlx::postgres::PgConnectOptions;

use serde::Deserialize;

/// How long opening one connection may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, PartialEq, Eq)]
pub enum PgHost {
    Tcp(String),
    /// Directory holding the server's Unix socket.
    Unix(PathBuf),
}

#[derive(Clone)]
pub struct PgTarget {
    host: PgHost,
    port: u16,
    user: String,
    password: Option<Secret>,
    dbname: String,
    application_name: String,
}

impl PgTarget {
    /// A database on a local cluster reached through its socket directory.
    pub fn unix(socket_dir: &Path, port: u16, user: &str, dbname: &str) -> Self {
        Self {
            host: PgHost::Unix(socket_dir.to_path_buf()),
            port,
            user: user.to_owned(),
            password: None,
            dbname: dbname.to_owned(),
            application_name: "mandant".to_owned(),
        }
    }

    /// Parses `postgres://user:pw@host:port/db` (a Unix socket directory percent-encoded as the host) or the
    /// `host=... dbname=...` form. The error never contains the input, which may hold a password.
    pub fn parse_url(url: &str) -> Result<Self, String> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("not a PostgreSQL connection URL ({e})"))?;
        let host = match config.get_hosts() {
            [] => return Err("names no host".to_owned()),
            [tokio_postgres::config::Host::Tcp(h)] => PgHost::Tcp(h.clone()),
            [tokio_postgres::config::Host::Unix(p)] => PgHost::Unix(p.clone()),
            _ => return Err("names several hosts; give exactly one".to_owned()),
        };
        let port = match config.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Err("names several ports; give exactly one".to_owned()),
        };
        let user = config
            .get_user()
            .ok_or_else(|| "names no user".to_owned())?
            .to_owned();
        let dbname = config
            .get_dbname()
            .ok_or_else(|| "names no database".to_owned())?
            .to_owned();
        let password = config
            .get_password()
            .map(|p| Secret::new(String::from_utf8_lossy(p).into_owned()));
        Ok(Self {
            host,
            port,
            user,
            password,
            dbname,
            application_name: "mandant".to_owned(),
        })
    }

    pub fn with_dbname(&self, dbname: &str) -> Self {
        Self {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    pub fn with_credentials(&self, user: &str, password: Secret) -> Self {
        Self {
            user: user.to_owned(),
            password: Some(password),
            ..self.clone()
        }
    }

    pub fn with_application_name(&self, name: &str) -> Self {
        Self {
            application_name: name.to_owned(),
            ..self.clone()
        }
    }

    pub fn host(&self) -> &PgHost {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn user(&self) -> &str {
        &self.user
    }
    pub fn dbname(&self) -> &str {
        &self.dbname
    }
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The host as libpq tools take it (`--host`): a name, or the socket directory.
    pub fn host_arg(&self) -> String {
        match &self.host {
            PgHost::Tcp(host) => host.clone(),
            PgHost::Unix(dir) => dir.display().to_string(),
        }
    }

    pub fn sqlx_options(&self) -> PgConnectOptions {
        let mut options = PgConnectOptions::new()
            .port(self.port)
            .username(&self.user)
            .database(&self.dbname)
            .application_name(&self.application_name);
        options = match &self.host {
            PgHost::Tcp(host) => options.host(host),
            PgHost::Unix(dir) => options.socket(dir),
        };
        if let Some(password) = &self.password {
            options = options.password(password.expose());
        }
        options
    }

    pub fn tokio_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        match &self.host {
            PgHost::Tcp(host) => config.host(host),
            PgHost::Unix(dir) => config.host_path(dir),
        };
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(password) = &self.password {
            config.password(password.expose());
        }
        config
    }

    /// The URL form, password included: hand it only to configuration, never to a log.
    pub fn to_url(&self) -> Secret {
        let mut url = String::from("postgres://");
        url.push_str(&encode(&self.user));
        if let Some(password) = &self.password {
            url.push(':');
            url.push_str(&encode(password.expose()));
        }
        url.push('@');
        match &self.host {
            PgHost::Tcp(host) => url.push_str(host),
            PgHost::Unix(dir) => url.push_str(&encode(&dir.to_string_lossy())),
        }
        url.push_str(&format!(":{}/{}", self.port, encode(&self.dbname)));
        Secret::new(url)
    }

    /// A printable description without the password.
    pub fn redacted(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.user,
            self.host_arg(),
            self.port,
            self.dbname
        )
    }

    /// Opens one tokio-postgres connection and drives it on a background task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.tokio_config().connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended with an error");
            }
        });
        Ok(client)
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTarget({})", self.redacted())
    }
}

/// Percent-encodes everything but unreserved URL characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A value that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value, for the one place that needs it (a connection, a hash).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("Secret(empty)")
        } else {
            f.write_str("Secret([redacted])")
        }
    }
}

/// Quotes an SQL identifier: wraps it in double quotes and doubles any inside.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (for the few utility statements that cannot take bind parameters).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A stable advisory-lock key for a name (the first 8 bytes of its SHA-256).
pub fn lock_key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Whether a tokio-postgres error means the connection itself is gone (closed, an I/O error, the server
/// shutting down or terminating the session), not that the statement was wrong.
pub fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let code = code.code();
        return code.starts_with("08") || code.starts_with("57P");
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// The most useful text of a tokio-postgres error: its Display is often only "db error".
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => crate::telemetry::error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_literal_doubles_embedded_quotes() {
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("a"), lock_key("a"));
        assert_ne!(lock_key("a"), lock_key("b"));
    }

    #[test]
    fn quote_ident_doubles_embedded_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("plain"), "\"plain\"");
    }

    #[test]
    fn url_round_trips_through_a_unix_socket_directory() {
        let target = PgTarget::unix(Path::new("/tmp/x y/run"), 5433, "postgres", "ctl_1");
        let parsed = PgTarget::parse_url(target.to_url().expose()).unwrap();
        assert!(parsed.host == PgHost::Unix(PathBuf::from("/tmp/x y/run")));
        assert_eq!(parsed.port(), 5433);
        assert_eq!(parsed.dbname(), "ctl_1");
    }

    #[test]
    fn debug_output_never_contains_the_password() {
        let target = PgTarget::parse_url("postgres://u:hunter2@db.example:5432/mandant").unwrap();
        let shown = format!("{target:?} {}", target.redacted());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.example"));
    }

    #[test]
    fn parse_error_does_not_echo_the_input() {
        let err = PgTarget::parse_url("postgres://u:hunter2@/").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
