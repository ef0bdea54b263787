//! `mandant servers list|add|remove [--json]`: the database servers, straight on the control plane, with the same
//! registration checks as `POST /v1/servers` (`dbservers.rs`) and an audit entry per change.
//!
//! The admin URL of `add` holds a password: give it through `MANDANT_SERVER_URL` rather than `--url` (a command
//! line is visible to every user of the machine through `ps`). It is never printed.

use std::process::ExitCode;

use crate::config::Settings;
use crate::control::access::AuditEntry;
use crate::control::servers::ServerUsage;
use crate::control::{ControlError, ControlPlane};
use crate::db::{PgTarget, Secret};
use crate::dbservers::{Registration, ServerRegistry, ServersError};
use crate::domain::servers::ServerName;
use crate::server::ControlDatabase;
use crate::tenant::targets::Targets;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every database server with its usage.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Register a database server (checked first: reachable with its TLS mode, PostgreSQL 13+, admin rights).
    Add {
        /// The server's name (`^[a-z][a-z0-9-]{0,39}$`).
        name: String,
        /// Admin connection URL; prefer the environment variable (a command line is visible to `ps`).
        #[arg(long, env = "MANDANT_SERVER_URL", hide_env_values = true)]
        url: String,
        #[arg(long)]
        max_databases: Option<i64>,
        #[arg(long)]
        max_bytes: Option<i64>,
        #[arg(long)]
        budget: Option<i64>,
        #[arg(long)]
        zone: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a server that holds no client.
    Remove {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(settings: Settings, command: Command) -> anyhow::Result<ExitCode> {
    let database = ControlDatabase::open(&settings).await?;
    let control = ControlPlane::connect_lazy(database.target(), &settings.database);
    let result = async {
        let targets = Targets::load(&settings, database.target().clone())?;
        let default_budget = settings.routing.budget_per_server;
        match command {
            Command::List { json } => list(&control, default_budget, json).await,
            Command::Add {
                name,
                url,
                max_databases,
                max_bytes,
                budget,
                zone,
                json,
            } => {
                let registration = Registration {
                    name,
                    url: Secret::new(url),
                    max_databases,
                    max_bytes,
                    budget,
                    zone,
                };
                let registry = ServerRegistry::new(control.clone(), targets);
                add(&control, &registry, &registration, default_budget, json).await
            }
            Command::Remove { name, json } => remove(&control, &name, json).await,
        }
    }
    .await;
    control.close().await;
    database.close().await;
    result
}

fn view(usage: &ServerUsage, default_budget: usize) -> serde_json::Value {
    let s = &usage.server;
    let url = s
        .admin_url
        .as_deref()
        .and_then(|u| PgTarget::parse_url(u).ok());
    serde_json::json!({
        "name": s.name,
        "url": url.as_ref().map(PgTarget::redacted),
        "sslmode": url.as_ref().map(|t| t.tls().mode().as_str()),
        "policy": s.policy().as_str(),
        "zone": s.zone,
        "databases": usage.databases,
        "max_databases": s.max_databases,
        "bytes": usage.bytes,
        "max_bytes": s.max_bytes,
        "budget": s.budget.map_or(default_budget as i64, i64::from),
        "server_version": s.server_version,
        "wal_level": s.wal_level,
        "template_version": s.template_version,
    })
}

async fn list(
    control: &ControlPlane,
    default_budget: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let servers = control.servers_with_usage().await?;
    if json {
        let items: Vec<_> = servers.iter().map(|s| view(s, default_budget)).collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<8} {:<12} {:>15} {:>20} {:>7}  url",
        "server", "policy", "zone", "databases", "bytes", "budget"
    );
    for usage in &servers {
        let s = &usage.server;
        let v = view(usage, default_budget);
        let bytes = match s.max_bytes {
            Some(max) => format!("{}/{max}", usage.bytes),
            None => usage.bytes.to_string(),
        };
        println!(
            "{:<20} {:<8} {:<12} {:>15} {:>20} {:>7}  {}",
            s.name,
            s.policy().as_str(),
            s.zone.as_deref().unwrap_or("-"),
            format!("{}/{}", usage.databases, s.max_databases),
            bytes,
            v["budget"],
            v["url"]
                .as_str()
                .unwrap_or("(the control plane's own cluster)"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(
    control: &ControlPlane,
    action: &str,
    name: &str,
    status: u16,
) -> anyhow::Result<()> {
    control
        .record_audit(&AuditEntry {
            user_id: None,
            username: None,
            client_id: None,
            client_slug: None,
            action: format!("CLI mandant servers {action}"),
            target: format!("/v1/servers/{name}"),
            outcome: "succeeded",
            status,
            request_id: None,
            detail: None,
        })
        .await?;
    Ok(())
}

async fn add(
    control: &ControlPlane,
    registry: &ServerRegistry,
    registration: &Registration,
    default_budget: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let record = match registry.register(registration).await {
        Ok(record) => record,
        Err(ServersError::Control(e @ ControlError::Unavailable(_))) => return Err(e.into()),
        Err(e) => {
            eprintln!("mandant: server {} not registered: {e}", registration.name);
            return Ok(ExitCode::FAILURE);
        }
    };
    audit(control, "add", &record.name, 201).await?;
    let usage = control
        .server_with_usage(&ServerName::parse(&record.name)?)
        .await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&view(&usage, default_budget))?
        );
    } else {
        println!("registered database server {}", record.name);
    }
    Ok(ExitCode::SUCCESS)
}

async fn remove(control: &ControlPlane, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let parsed = ServerName::parse(name)?;
    match control.delete_server(&parsed).await {
        Ok(()) => {}
        Err(ControlError::Unavailable(e)) => return Err(ControlError::Unavailable(e).into()),
        Err(ControlError::NotFound) => {
            eprintln!("mandant: there is no database server {name}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => {
            eprintln!("mandant: server {name} not removed: {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    audit(control, "remove", name, 204).await?;
    if json {
        println!("{}", serde_json::json!({ "removed": name }));
    } else {
        println!("removed database server {name}");
    }
    Ok(ExitCode::SUCCESS)
}
