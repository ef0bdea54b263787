//! The deletion job: optional archive (`pg_dump -Fc`), drop the database (ending its sessions), drop the role,
//! tombstone. The database is never dropped before its archive, when one was asked for, is complete.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tracing::Instrument;

use super::{ProvisionError, Provisioner};
use crate::control::clients::ClientRecord;
use crate::control::jobs::Job;
use crate::db::PgTarget;
use crate::domain::ClientStatus;
use crate::embedded::Binaries;
use crate::tenant::cluster::{self, admin_connect};

impl Provisioner {
    /// The deletion job. Returns `{"archive": path}` when an archive was written.
    pub async fn delete(&self, job: &Job) -> Result<Option<serde_json::Value>, ProvisionError> {
        let client = self.job_client(job).await?;
        let span = tracing::info_span!("delete", client = %client.slug, attempt = job.attempt);
        self.delete_steps(job, client).instrument(span).await
    }

    async fn delete_steps(
        &self,
        job: &Job,
        client: ClientRecord,
    ) -> Result<Option<serde_json::Value>, ProvisionError> {
        let id = client.id;
        if client.status != ClientStatus::Deleting {
            tracing::info!(status = ?client.status, "client is not being deleted; nothing to do");
            return Ok(None);
        }
        let names = self.targets.names(id);
        let mut archive = None;
        if let Some(server_id) = client.server_id {
            let server = self.control.server(server_id).await?;
            let admin_target = self.targets.admin(&server)?;
            let admin = admin_connect(&admin_target).await?;
            let wants_archive = job.payload["archive"].as_bool().unwrap_or(false);
            if wants_archive {
                let exists = cluster::database_exists(&admin, &names.database).await?;
                let database = admin_target.with_dbname(&names.database);
                if let Some(path) = self.archive(&client, job, &database, exists).await? {
                    archive = Some(path.display().to_string());
                }
                self.checkpoint(job, "archive").await?;
            }
            cluster::drop_database(&admin, &names.database).await?;
            self.checkpoint(job, "drop_database").await?;
            cluster::drop_role(&admin, &crate::tenant::inner::inner_role(&names.role)).await?;
            cluster::drop_role(&admin, &names.role).await?;
            self.checkpoint(job, "drop_role").await?;
        }
        // Copies kept on servers the client moved off go with it (not after their retention days).
        for retired in self.control.retired_of(id).await? {
            self.drop_retired(&retired).await?;
        }
        self.control
            .transition(id, ClientStatus::Deleting, ClientStatus::Deleted)
            .await?;
        tracing::info!(archived = archive.is_some(), "client deleted");
        Ok(archive.map(|path| serde_json::json!({ "archive": path })))
    }

    /// `pg_dump -Fc` of the tenant database into the archive directory, written under a temporary name and
    /// renamed when complete, so a file with the final name is always a whole dump. A retry of the same job
    /// reuses a finished file.
    ///
    /// A retry (of this job) first looks for its finished file and checks it with `pg_restore --list`, so the
    /// result names the archive even when the database was already dropped by the attempt that wrote it.
    async fn archive(
        &self,
        client: &ClientRecord,
        job: &Job,
        database: &PgTarget,
        exists: bool,
    ) -> Result<Option<PathBuf>, ProvisionError> {
        let fail = |e: String| ProvisionError::Archive(e);
        // Archives hold personal data: the directory and files are private to this service's user.
        tokio::fs::create_dir_all(&self.archive_dir)
            .await
            .map_err(|e| fail(format!("creating {}: {e}", self.archive_dir.display())))?;
        let private_dir = std::fs::Permissions::from_mode(0o700);
        tokio::fs::set_permissions(&self.archive_dir, private_dir)
            .await
            .map_err(|e| fail(format!("restricting {}: {e}", self.archive_dir.display())))?;
        let file = self.archive_dir.join(format!(
            "{}-{}-{}.dump",
            client.slug,
            client.id.as_simple(),
            &job.id.as_simple().to_string()[..8]
        ));
        let bin_dir = self.bin_dir.clone();
        let binaries =
            tokio::task::spawn_blocking(move || Binaries::discover(bin_dir.as_deref(), None))
                .await
                .map_err(|e| fail(e.to_string()))?
                .map_err(|e| fail(e.to_string()))?;
        if tokio::fs::try_exists(&file).await.unwrap_or(false) {
            let check = tokio::process::Command::new(binaries.tool("pg_restore"))
                .arg("--list")
                .arg(&file)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            if check.is_ok_and(|s| s.success()) {
                return Ok(Some(file));
            }
            tracing::warn!(file = %file.display(), "an earlier archive of this job is unreadable; dumping again");
        }
        if !exists {
            tracing::warn!("the database is already gone; there is nothing left to archive");
            return Ok(None);
        }
        // Per attempt, so a dump of an attempt that lost its claim can never write into this one's file.
        let partial = file.with_extension(format!("dump.partial-{}", job.attempt));
        let mut command = tokio::process::Command::new(binaries.tool("pg_dump"));
        command
            .arg("--format=custom")
            .arg("--no-password")
            .arg(format!("--file={}", partial.display()))
            .arg(format!("--host={}", database.host_arg()))
            .arg(format!("--port={}", database.port()))
            .arg(format!("--username={}", database.user()))
            .arg(format!("--dbname={}", database.dbname()))
            // The server's TLS mode, as every other connection to it uses (issue #20).
            .envs(database.libpq_tls_env())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(password) = database.password() {
            command.env("PGPASSWORD", password.expose());
        }
        let output = command
            .output()
            .await
            .map_err(|e| fail(format!("running pg_dump: {e}")))?;
        if !output.status.success() {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(fail(format!(
                "pg_dump exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        tokio::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(|e| fail(format!("restricting the archive: {e}")))?;
        tokio::fs::rename(&partial, &file)
            .await
            .map_err(|e| fail(format!("renaming the archive: {e}")))?;
        tracing::info!(file = %file.display(), "archived the tenant database");
        Ok(Some(file))
    }
}
