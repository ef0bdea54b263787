//! Connection targets: where one PostgreSQL database is and how to open it.
//!
//! One parser (tokio-postgres's URL and key/value syntax) feeds both clients we use: sqlx for the control plane and
//! tokio-postgres (deadpool, refinery) for clusters and tenants. A target's `Debug` and [`PgTarget::redacted`] never
//! show the password, so a target can be logged. Every target carries its TLS ([`tls::Tls`]: libpq's `sslmode` and
//! `sslrootcert`, parsed here because tokio-postgres knows neither `verify-ca` nor `verify-full`), and every
//! connection opened through it uses it.

pub mod tls;

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
    tls: tls::Tls,
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
            tls: tls::Tls::disabled(),
        }
    }

    /// Parses `postgres://user:pw@host:port/db` (a Unix socket directory percent-encoded as the host) or the
    /// `host=... dbname=...` form. The error never contains the input, which may hold a password.
    pub fn parse_url(url: &str) -> Result<Self, String> {
        let (url, ssl) = split_tls_params(url)?;
        let config = tokio_postgres::Config::from_str(&url)
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
        let mode = ssl.mode.as_deref().map(tls::SslMode::parse).transpose()?;
        let tcp_host = match &host {
            PgHost::Tcp(h) => Some(h.as_str()),
            PgHost::Unix(_) => None,
        };
        let tls = tls::Tls::new(mode, ssl.root_cert.map(PathBuf::from), tcp_host)?;
        Ok(Self {
            host,
            port,
            user,
            password,
            dbname,
            application_name: "mandant".to_owned(),
            tls,
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
    pub fn tls(&self) -> &tls::Tls {
        &self.tls
    }

    /// The same target without its password (what is stored beside the encrypted password).
    pub fn without_password(&self) -> Self {
        Self {
            password: None,
            ..self.clone()
        }
    }

    /// The same target with a password (read back from its encrypted store).
    pub fn with_password(&self, password: Secret) -> Self {
        Self {
            password: Some(password),
            ..self.clone()
        }
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
        self.tls.apply_to_sqlx(options)
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
            .ssl_mode(self.tls.tokio_mode())
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
        url.push_str(&self.query());
        Secret::new(url)
    }

    /// `?sslmode=...&sslrootcert=...` when the TLS is not the host's default, else empty.
    fn query(&self) -> String {
        let params = self.tls.url_params();
        if params.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("?{}", pairs.join("&"))
    }

    /// A printable description without the password.
    pub fn redacted(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}{}",
            self.user,
            self.host_arg(),
            self.port,
            self.dbname,
            self.query()
        )
    }

    /// The TLS of this target for libpq tools (`pg_dump`): `PGSSLMODE` and, if given, `PGSSLROOTCERT`.
    pub fn libpq_tls_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.tls.mode().as_str().to_owned())];
        if let Some(path) = self.tls.root_cert() {
            env.push(("PGSSLROOTCERT", path.display().to_string()));
        }
        env
    }

    /// The connector for this target's TLS (tokio-postgres' `connect`, `cancel_query`).
    pub fn tls_connector(&self) -> tls::MakeTls {
        self.tls.connector()
    }

    /// Opens one tokio-postgres connection (with the target's TLS) and drives it on a background task.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = self.tokio_config().connect(self.tls_connector()).await?;
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

/// The TLS parameters of a connection string, which tokio-postgres would refuse (`verify-*`, `sslrootcert`).
#[derive(Default)]
struct SslParams {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query or a `key=value` string; the rest is returned
/// untouched for tokio-postgres. Errors never quote the input.
fn split_tls_params(url: &str) -> Result<(String, SslParams), String> {
    let mut ssl = SslParams::default();
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => ssl.mode = Some(value),
            "sslrootcert" => ssl.root_cert = Some(value),
            _ => return false,
        }
        true
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), ssl));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| "a query parameter is not valid percent-encoded UTF-8".to_owned())?;
            if !take(&percent_decode(key).unwrap_or_default(), value) {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, ssl));
    }
    // key = value pairs; a value may be single-quoted with backslash escapes (libpq's rules).
    let mut rest = String::with_capacity(url.len());
    let mut chars = url.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err("not a PostgreSQL connection string (expected key=value)".to_owned());
        }
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek().is_some_and(|(_, c)| *c == '\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err("an unterminated quoted value".to_owned()),
                    },
                    Some((_, '\'')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated quoted value".to_owned()),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        let end = chars.peek().map_or(url.len(), |(i, _)| *i);
        if !take(&key, value) {
            rest.push_str(&url[start..end]);
            rest.push(' ');
        }
    }
    Ok((rest.trim_end().to_owned(), ssl))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
    fn tls_parameters_are_taken_from_urls_and_key_value_strings_and_written_back() {
        let remote =
            PgTarget::parse_url("postgres://u:pw@db.example/m?sslmode=disable&application_name=x")
                .unwrap();
        assert_eq!(remote.tls().mode(), tls::SslMode::Disable);
        assert!(remote.to_url().expose().ends_with("?sslmode=disable"));
        let default = PgTarget::parse_url("postgres://u:pw@db.example/m").unwrap();
        assert_eq!(default.tls().mode(), tls::SslMode::Require);
        let kv = PgTarget::parse_url("host=127.0.0.1 user=u dbname='my db' sslmode = 'require'")
            .unwrap();
        assert_eq!(kv.tls().mode(), tls::SslMode::Require);
        assert_eq!(kv.dbname(), "my db");
        let again = PgTarget::parse_url(kv.to_url().expose()).unwrap();
        assert_eq!(again.tls().mode(), tls::SslMode::Require);
        let err = PgTarget::parse_url("postgres://u:hunter2@db.example/m?sslmode=verify-full")
            .unwrap_err();
        assert!(
            err.contains("sslrootcert") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn parse_error_does_not_echo_the_input() {
        let err = PgTarget::parse_url("postgres://u:hunter2@/").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
