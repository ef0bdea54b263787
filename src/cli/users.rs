//! `mandant users token <username>`: a new API token minted straight in the control plane, for an operator who
//! lost the admin's token (or wants one for automation) and can reach the control database anyway. Printed once
//! to stdout; recorded in the audit log as a CLI action.

use std::process::ExitCode;

use crate::config::Settings;
use crate::control::ControlPlane;
use crate::control::access::AuditEntry;
use crate::domain::rights::{Username, new_token, token_hash};
use crate::server::ControlDatabase;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create an API token for a user and print it (once).
    Token {
        /// The user's name.
        username: String,
        /// A label for the token.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime in days (default: until revoked).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=3650))]
        expires_in_days: Option<i64>,
    },
}

pub async fn run(settings: Settings, command: Command) -> anyhow::Result<ExitCode> {
    let database = ControlDatabase::open(&settings).await?;
    let control = ControlPlane::connect_lazy(database.target(), &settings.database);
    let result = match command {
        Command::Token {
            username,
            name,
            expires_in_days,
        } => token(&control, &username, &name, expires_in_days).await,
    };
    control.close().await;
    database.close().await;
    result
}

async fn token(
    control: &ControlPlane,
    username: &str,
    name: &str,
    expires_in_days: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let username = Username::parse(username)?;
    let name = crate::domain::required_text("name", name, 100)?;
    let user = match control.user_by_name(username.as_str()).await {
        Ok(user) => user,
        Err(crate::control::ControlError::NotFound) => {
            eprintln!("mandant: there is no user {username}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let token = new_token();
    let expires_at = expires_in_days.map(|d| chrono::Utc::now() + chrono::Duration::days(d));
    let meta = control
        .create_token(user.id, &name, &token_hash(&token), expires_at, None)
        .await?;
    control
        .record_audit(&AuditEntry {
            user_id: None,
            username: None,
            client_id: Some(user.home_client_id),
            client_slug: Some(user.home_client.clone()),
            action: "CLI mandant users token".into(),
            target: format!("/v1/users/{username}/tokens/{}", meta.id),
            outcome: "succeeded",
            status: 201,
            request_id: None,
            detail: Some(serde_json::json!({"token_name": name})),
        })
        .await?;
    tracing::info!(user = %username, token = %meta.id, "token created from the command line");
    if user.status != "active" {
        eprintln!(
            "mandant: note: {username} is {}; the token works once the user is enabled",
            user.status
        );
    }
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
