//! `mandant tenants ...`: operations over every tenant database.

use std::process::ExitCode;

use serde::Serialize;

use crate::app::ControlDatabase;
use crate::config::Settings;
use crate::control::ControlPlane;
use crate::tenant::migrate::latest_version;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Migrate every tenant database to the latest tenant migration.
    Migrate(MigrateArgs),
    /// List every client with status, server, database and schema version.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Tenants migrated at once (also bounded per database server).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Only these client slugs (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "SLUG,...")]
    pub only: Vec<String>,
    /// Show what would run per tenant; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Connect to every tenant and compare its real migration history instead of trusting the registry.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Migrate(_) => {
            eprintln!(
                "mandant tenants migrate: arrives with the fleet migration (issue #4); until then new tenants \
                 are cloned from a current template and caught up at provisioning."
            );
            Ok(ExitCode::from(2))
        }
        Command::List(args) => list(settings, args).await,
    }
}

#[derive(Debug, Serialize)]
struct TenantRow {
    slug: String,
    name: String,
    kind: String,
    status: &'static str,
    parent: Option<String>,
    server: Option<String>,
    database: Option<String>,
    schema_version: i32,
    latest_schema_version: i32,
    behind: bool,
}

async fn list(settings: Settings, args: ListArgs) -> anyhow::Result<ExitCode> {
    let database = ControlDatabase::open(&settings).await?;
    let control = ControlPlane::connect_lazy(database.target(), &settings.database);
    let clients = control.all_live_clients().await;
    control.close().await;
    database.close().await;
    let latest = latest_version();
    let rows: Vec<TenantRow> = clients?
        .into_iter()
        .map(|c| TenantRow {
            behind: c.status.has_live_database() && c.schema_version < latest,
            slug: c.slug,
            name: c.name,
            kind: c.kind,
            status: c.status.as_str(),
            parent: c.parent,
            server: c.server,
            database: c.db_name,
            schema_version: c.schema_version,
            latest_schema_version: latest,
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<13} {:<10} {:<45} {:>7}",
        "SLUG", "STATUS", "SERVER", "DATABASE", "SCHEMA"
    );
    for row in &rows {
        let schema = format!(
            "v{}{}",
            row.schema_version,
            if row.behind { " (behind)" } else { "" }
        );
        println!(
            "{:<24} {:<13} {:<10} {:<45} {:>7}",
            row.slug,
            row.status,
            row.server.as_deref().unwrap_or("-"),
            row.database.as_deref().unwrap_or("-"),
            schema
        );
    }
    let behind = rows.iter().filter(|r| r.behind).count();
    println!(
        "{} client(s); latest tenant schema v{latest}; {behind} behind",
        rows.len()
    );
    Ok(ExitCode::SUCCESS)
}
