//! Where every tenant lives and how to reach it: the names of a client's database and role (derived from its
//! immutable id), a server's administrator target, and the tenant's own target with its derived password
//! (`credentials.rs`). The data plane, provisioning, the fan-out jobs, the fleet migration and the CLI all ask
//! here, so no layer above has to know another's internals to open a tenant connection.
//! Never: stores or logs a password (`PgTarget` prints without it).

use uuid::Uuid;

use super::TenantError;
use super::credentials::{Credentials, KeyFileError};
use super::template_db::TemplateDbNames;
use crate::config::{Settings, TenantSettings};
use crate::control::servers::ServerRecord;
use crate::db::{PgTarget, Secret};

/// Names of one client's database objects, all derived from its immutable id.
#[derive(Debug, Clone)]
pub struct TenantNames {
    pub database: String,
    pub role: String,
}

impl TenantNames {
    pub fn new(settings: &TenantSettings, client_id: Uuid) -> Self {
        let name = format!("{}{}", settings.db_prefix, client_id.as_simple());
        Self {
            database: name.clone(),
            role: name,
        }
    }
}

/// Connection targets of database servers and tenants.
#[derive(Debug, Clone)]
pub struct Targets {
    control_target: PgTarget,
    tenants: TenantSettings,
    template_db: TemplateDbNames,
    credentials: Credentials,
}

impl Targets {
    pub fn new(settings: &Settings, control_target: PgTarget, credentials: Credentials) -> Self {
        Self {
            control_target,
            template_db: TemplateDbNames::new(
                &settings.tenants.db_prefix,
                &settings.tenants.template_db,
            ),
            tenants: settings.tenants.clone(),
            credentials,
        }
    }

    /// With the configured credential secret, or the key file under the data directory (created once).
    pub fn load(settings: &Settings, control_target: PgTarget) -> Result<Self, KeyFileError> {
        Ok(Self::new(
            settings,
            control_target,
            Credentials::load(settings)?,
        ))
    }

    /// The TLS mode of the control plane's connection (that of the `local` server).
    pub fn control_tls_mode(&self) -> crate::db::tls::SslMode {
        self.control_target.tls().mode()
    }

    pub fn names(&self, client_id: Uuid) -> TenantNames {
        TenantNames::new(&self.tenants, client_id)
    }

    /// The template database's names on every server.
    pub fn template_db(&self) -> &TemplateDbNames {
        &self.template_db
    }

    pub fn settings(&self) -> &TenantSettings {
        &self.tenants
    }

    /// The tenant role's password (derived, never stored).
    pub fn password_for(&self, client_id: Uuid) -> Secret {
        self.credentials.password_for(client_id)
    }

    /// The password of the second role of a client's database (derived, never stored).
    pub fn inner_password_for(&self, client_id: Uuid) -> Secret {
        self.credentials.inner_password_for(client_id)
    }

    /// The password of a live move's replication role (derived, never stored).
    pub fn move_password_for(&self, move_id: Uuid) -> Secret {
        self.credentials.move_password_for(move_id)
    }

    /// How inner clients reach their parent's database: its second role (`tenant::inner`), whose rows are
    /// limited by row-level security to the inner client each transaction names.
    pub fn inner(&self, server: &ServerRecord, parent_id: Uuid) -> Result<PgTarget, TenantError> {
        let names = self.names(parent_id);
        Ok(self
            .admin(server)?
            .with_dbname(&names.database)
            .with_credentials(
                &super::inner::inner_role(&names.role),
                self.inner_password_for(parent_id),
            ))
    }

    /// Encrypts a server's admin password for the registry (see `credentials.rs`).
    pub fn seal_password(&self, server: &str, password: &Secret) -> Vec<u8> {
        self.credentials.seal(server, password)
    }

    /// The administrator's target on a server's maintenance database: the stored URL (with its TLS), and the
    /// password decrypted from the registry.
    pub fn admin(&self, server: &ServerRecord) -> Result<PgTarget, TenantError> {
        let Some(url) = &server.admin_url else {
            return Ok(self.control_target.with_dbname("postgres"));
        };
        let target = PgTarget::parse_url(url)
            .map(|t| t.with_dbname("postgres"))
            .map_err(|e| {
                TenantError::BadServer(
                    server.name.clone(),
                    format!("its admin URL is not valid: {e}"),
                )
            })?;
        match &server.admin_password {
            None => Ok(target),
            Some(sealed) => match self.credentials.open(&server.name, sealed) {
                Some(password) => Ok(target.with_password(password)),
                None => Err(TenantError::BadServer(
                    server.name.clone(),
                    "its stored password cannot be decrypted (was tenants.credential_secret or tenant.key \
                     changed?)"
                        .to_owned(),
                )),
            },
        }
    }

    /// The administrator's target on a tenant's own database (DDL, migrations, archives).
    pub fn admin_on_tenant(
        &self,
        server: &ServerRecord,
        client_id: Uuid,
    ) -> Result<PgTarget, TenantError> {
        Ok(self
            .admin(server)?
            .with_dbname(&self.names(client_id).database))
    }

    /// How the tenant itself connects: its own role, its own database.
    pub fn tenant(&self, server: &ServerRecord, client_id: Uuid) -> Result<PgTarget, TenantError> {
        let names = self.names(client_id);
        Ok(self
            .admin(server)?
            .with_dbname(&names.database)
            .with_credentials(&names.role, self.password_for(client_id)))
    }
}
