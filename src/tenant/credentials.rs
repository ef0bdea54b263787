//! Tenant role passwords, derived from one server secret: `hex(HMAC-SHA256(secret, "mandant.tenant-role.v1:" +
//! client id))`. Nothing per tenant is stored, so the control plane holds no tenant password at all; anyone who
//! can derive one must have the secret (`tenants.credential_secret` or `<data_dir>/tenant.key`).
//!
//! The same secret seals what must be stored: a registered database server's admin password, encrypted at rest
//! with ChaCha20-Poly1305 (ring) under a key derived as `HMAC-SHA256(secret, "mandant.server-password.v1")`, a
//! random nonce per seal, and the server's name as associated data (a sealed password copied to another server's
//! row does not open).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{KeyInit, Mac};
use uuid::Uuid;

use crate::config::Settings;
use crate::db::Secret;

const KEY_FILE: &str = "tenant.key";
const CONTEXT: &str = "mandant.tenant-role.v1:";
const INNER_CONTEXT: &str = "mandant.tenant-inner-role.v1:";
const MOVE_CONTEXT: &str = "mandant.move-replication-role.v1:";
const SEAL_CONTEXT: &str = "mandant.server-password.v1";

#[derive(Clone)]
pub struct Credentials {
    key: Secret,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials([redacted])")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("tenant credential key {path}: {source}")]
pub struct KeyFileError {
    path: String,
    #[source]
    source: std::io::Error,
}

impl Credentials {
    /// The configured secret, or the key file under the data directory (created once, mode 0600).
    pub fn load(settings: &Settings) -> Result<Self, KeyFileError> {
        if !settings.tenants.credential_secret.is_empty() {
            return Ok(Self {
                key: settings.tenants.credential_secret.clone(),
            });
        }
        let dir = settings.data_dir();
        let path = dir.join(KEY_FILE);
        let err = |source| KeyFileError {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        Self::load_or_create(&path).map_err(err)
    }

    /// Reads the key file, or creates it atomically: the key is written and synced under a temporary name, then
    /// hard-linked to the final name, which fails if another process got there first (then its key is used). A
    /// crash can leave only a stray temporary file, never a truncated key.
    fn load_or_create(path: &Path) -> std::io::Result<Self> {
        if let Some(key) = Self::read(path)? {
            return Ok(key);
        }
        let fresh: [u8; 32] = rand::random();
        let hex: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(hex.as_bytes())?;
            file.sync_all()?;
        }
        let linked = std::fs::hard_link(&temporary, path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated the tenant credential key");
                Ok(Self {
                    key: Secret::new(hex),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::read(path)?
                .ok_or_else(|| std::io::Error::other("the key file vanished while it was created")),
            Err(e) => Err(e),
        }
    }

    fn read(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = text.trim().to_owned();
                if key.len() < 32 {
                    return Err(std::io::Error::other(
                        "the key file is truncated or empty; restore it from a backup (tenant passwords derive from it)",
                    ));
                }
                Ok(Some(Self {
                    key: Secret::new(key),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The sealing key for stored server passwords.
    fn seal_key(&self) -> ring::aead::LessSafeKey {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(SEAL_CONTEXT.as_bytes());
        let key = mac.finalize().into_bytes();
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key)
            .expect("a 32-byte key fits ChaCha20-Poly1305");
        ring::aead::LessSafeKey::new(unbound)
    }

    /// Encrypts a server's admin password for storage: nonce (12 bytes) ‖ ciphertext ‖ tag.
    pub fn seal(&self, server: &str, password: &Secret) -> Vec<u8> {
        let nonce_bytes: [u8; ring::aead::NONCE_LEN] = rand::random();
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes);
        let mut sealed = password.expose().as_bytes().to_vec();
        self.seal_key()
            .seal_in_place_append_tag(nonce, ring::aead::Aad::from(server.as_bytes()), &mut sealed)
            .expect("ChaCha20-Poly1305 seals any length a password has");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts what [`Self::seal`] made for the same server; `None` if it was made with another secret, for
    /// another server, or was altered.
    pub fn open(&self, server: &str, sealed: &[u8]) -> Option<Secret> {
        if sealed.len() < ring::aead::NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = ciphertext.to_vec();
        let plain = self
            .seal_key()
            .open_in_place(nonce, ring::aead::Aad::from(server.as_bytes()), &mut buffer)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok().map(Secret::new)
    }

    /// The password of a client's tenant role.
    pub fn password_for(&self, client_id: Uuid) -> Secret {
        self.derive(CONTEXT, client_id)
    }

    /// The password of the second role of a client's database, the inner clients' (tenant::inner).
    pub fn inner_password_for(&self, client_id: Uuid) -> Secret {
        self.derive(INNER_CONTEXT, client_id)
    }

    /// The password of a live move's replication role (`tenant::replication`): derived from the move's random id,
    /// so a resumed move finds the same one and none is stored.
    pub fn move_password_for(&self, move_id: Uuid) -> Secret {
        self.derive(MOVE_CONTEXT, move_id)
    }

    fn derive(&self, context: &str, client_id: Uuid) -> Secret {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.key.expose().as_bytes())
            .expect("HMAC accepts keys of any length");
        mac.update(context.as_bytes());
        mac.update(client_id.as_simple().to_string().as_bytes());
        let digest = mac.finalize().into_bytes();
        Secret::new(
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_stable_per_client_and_differ_between_clients_and_keys() {
        let a = Credentials {
            key: Secret::new("k1"),
        };
        let b = Credentials {
            key: Secret::new("k2"),
        };
        let (x, y) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(a.password_for(x), a.password_for(x));
        assert_ne!(a.password_for(x), a.password_for(y));
        assert_ne!(a.password_for(x), b.password_for(x));
        assert_eq!(a.password_for(x).expose().len(), 64);
    }

    #[test]
    fn a_sealed_password_opens_only_with_the_same_secret_and_server_name() {
        let a = Credentials {
            key: Secret::new("k1"),
        };
        let b = Credentials {
            key: Secret::new("k2"),
        };
        let sealed = a.seal("eu1", &Secret::new("hunter2"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(a.open("eu1", &sealed).unwrap().expose(), "hunter2");
        assert!(a.open("eu2", &sealed).is_none());
        assert!(b.open("eu1", &sealed).is_none());
        assert!(a.open("eu1", &sealed[..5]).is_none());
        assert_ne!(
            sealed,
            a.seal("eu1", &Secret::new("hunter2")),
            "a fresh nonce per seal"
        );
    }

    #[test]
    fn the_key_file_is_created_once_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = Credentials::load_or_create(&path).unwrap();
        let second = Credentials::load_or_create(&path).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(first.password_for(id), second.password_for(id));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
