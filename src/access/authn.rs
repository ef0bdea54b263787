//! Authentication: bearer token → [`Principal`], with a cache, and the first-start admin.
//!
//! A token is looked up by its SHA-256 (the only thing stored) and the stored hash is compared in constant time.
//! Verified principals are cached by token hash for `auth.cache_ttl_secs`, but only while this process is
//! `LISTEN`ing on the control plane's auth channel: every change of users, roles, access or tokens notifies it in
//! its transaction, and each process drops its whole cache when the notification arrives (and the process that
//! made the change drops it before answering: [`RightsService`](super::RightsService) does after each change).
//! Without a working listener every request reads the control plane, so a disabled user or a revoked token is
//! refused at once in every process either way. `last_used_at` is written at most once a minute per token, off
//! the request path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Settings;
use crate::control::access::AUTH_CHANNEL;
use crate::control::listen::Listening;
use crate::control::{ControlError, ControlPlane};
use crate::domain::FastMap;
use crate::domain::rights::{Principal, TOKEN_MIN_LEN, hashes_equal, new_token, token_hash};
use crate::shutdown::CancellationToken;

/// How often a token's `last_used_at` is written at most.
const TOUCH_EVERY_SECS: i64 = 60;
/// Cached principals at most (a flood of distinct valid tokens just clears the cache).
const MAX_CACHED: usize = 10_000;
/// The file the generated first admin token is written to, in `embedded.data_dir`.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

struct Cached {
    at: Instant,
    principal: Arc<Principal>,
    /// Unix seconds of the last `last_used_at` write (or of the stored value when loaded).
    touched: Arc<AtomicI64>,
}

pub struct Authenticator {
    pub(super) control: ControlPlane,
    ttl: Duration,
    cache: Mutex<FastMap<[u8; 32], Cached>>,
    /// Bumped by every invalidation; a principal loaded before one is not cached.
    generation: AtomicU64,
    /// Whether the auth channel is being listened to (the cache is used only then).
    listening: AtomicBool,
}

impl Authenticator {
    pub fn new(control: ControlPlane, ttl: Duration) -> Self {
        Self {
            control,
            ttl,
            cache: Mutex::default(),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        }
    }

    /// The principal of a valid token of an active user; `None` for anything else.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Arc<Principal>>, ControlError> {
        self.authenticate_hash(&token_hash(token)).await
    }

    /// As [`Self::authenticate`], by the token's hash (a console session knows only that).
    pub async fn authenticate_hash(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<Arc<Principal>>, ControlError> {
        let hash = *hash;
        if self.listening.load(Ordering::Acquire)
            && let Some(cached) = self.lock().get(&hash)
            && cached.at.elapsed() < self.ttl
            && cached
                .principal
                .expires_at
                .is_none_or(|at| at > chrono::Utc::now())
        {
            self.touch(&cached.principal, &cached.touched);
            return Ok(Some(cached.principal.clone()));
        }
        let generation = self.generation.load(Ordering::Acquire);
        // Boxed: the cache hit is the path every request takes; it need not carry the query's future.
        let Some(loaded) = Box::pin(self.control.principal_by_token_hash(&hash)).await? else {
            return Ok(None);
        };
        if !hashes_equal(&loaded.stored_hash, &hash) {
            return Ok(None);
        }
        let principal = Arc::new(loaded.principal);
        let touched = Arc::new(AtomicI64::new(
            loaded.last_used_at.map_or(0, |t| t.timestamp()),
        ));
        self.touch(&principal, &touched);
        let mut cache = self.lock();
        if self.listening.load(Ordering::Acquire)
            && self.generation.load(Ordering::Acquire) == generation
        {
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
            cache.insert(
                hash,
                Cached {
                    at: Instant::now(),
                    principal: principal.clone(),
                    touched,
                },
            );
        }
        Ok(Some(principal))
    }

    /// Forgets every cached principal (after a change of users, roles, access or tokens). Only `access/` calls it:
    /// [`RightsService`](super::RightsService) after each change it commits, and the listener here.
    pub(super) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.lock().clear();
    }

    fn touch(&self, principal: &Principal, touched: &AtomicI64) {
        let now = chrono::Utc::now().timestamp();
        let last = touched.load(Ordering::Relaxed);
        if now - last < TOUCH_EVERY_SECS
            || touched
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let control = self.control.clone();
        let token = principal.token_id;
        tokio::spawn(async move {
            if let Err(e) = control.touch_token(token).await {
                tracing::debug!(error = %e, "could not record a token's last use");
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// LISTENs on the auth channel until cancelled, dropping the cache on every notification; the cache is off
    /// while the listener is not connected (it reconnects after errors; `control/listen.rs`).
    pub async fn listen(self: Arc<Self>, retry: Duration, cancel: CancellationToken) {
        let control = self.control.clone();
        control
            .listen(&[AUTH_CHANNEL], "auth", &*self, retry, cancel)
            .await;
    }
}

impl Listening for Authenticator {
    fn up(&self) {
        // Changes made while nobody listened may be cached from before: start clean.
        self.invalidate();
        self.listening.store(true, Ordering::Release);
    }

    fn notified(&self, _channel: &str, _payload: &str) {
        self.invalidate();
    }

    fn down(&self) {
        self.listening.store(false, Ordering::Release);
        self.invalidate();
    }
}

/// First start: the built-in roles, and if no user exists the `admin` user (role master-admin) with the token of
/// `auth.bootstrap_token`, or a generated one that is printed once (stderr) and written to
/// `<embedded.data_dir>/admin.token` (mode 0600) before the user is committed.
pub async fn bootstrap(control: &ControlPlane, settings: &Settings) -> anyhow::Result<()> {
    control
        .ensure_builtin_roles()
        .await
        .context("writing the built-in roles")?;
    let configured = settings.auth.bootstrap_token.expose();
    let generated = configured.is_empty();
    if !generated && configured.len() < TOKEN_MIN_LEN {
        anyhow::bail!(
            "auth.bootstrap_token must be at least {TOKEN_MIN_LEN} characters (use 32 random bytes, e.g. \
             `openssl rand -base64 32`)"
        );
    }
    let token = if generated {
        new_token()
    } else {
        configured.to_owned()
    };
    let path = settings.embedded.data_dir.join(ADMIN_TOKEN_FILE);
    let created = control
        .bootstrap_admin(&token_hash(&token), || {
            if generated {
                write_secret_file(&path, &token)
            } else {
                Ok(())
            }
        })
        .await
        .context("creating the first admin")?
        .with_context(|| format!("writing the admin token to {}", path.display()))?;
    match (created, generated) {
        (true, true) => {
            // Printed, not logged: logs are shipped and kept; this line is for the operator at the terminal.
            eprintln!(
                "mandant: created user `admin` (master-admin). Its API token, shown only now, is also in {} \
                 (mode 0600):\n{token}\nSign in to the console with it at http://{}/console/",
                path.display(),
                settings.server.listen
            );
            tracing::info!(file = %path.display(), "created the first admin; its token was printed and written to the file");
        }
        (true, false) => tracing::info!("created the first admin with auth.bootstrap_token"),
        (false, false) => tracing::info!(
            "users exist; auth.bootstrap_token is ignored (it may be removed from the configuration)"
        ),
        (false, true) => {}
    }
    Ok(())
}

/// Writes `secret` to `path`, readable by the owner only (the directory is created if missing).
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An older file may have had wider permissions.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Where the generated admin token is written for these settings.
pub fn admin_token_path(settings: &Settings) -> PathBuf {
    settings.embedded.data_dir.join(ADMIN_TOKEN_FILE)
}
