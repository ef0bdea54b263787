//! `mandant tenants ...`: operations over every tenant database.

use std::process::ExitCode;

use crate::config::Settings;

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

pub async fn run(_settings: Settings, command: Command) -> anyhow::Result<ExitCode> {
    let what = match command {
        Command::Migrate(_) => {
            "tenants migrate: arrives with the tenant schema and fleet migration (issue #4)"
        }
        Command::List(_) => "tenants list: arrives with the client registry (issue #3)",
    };
    eprintln!("mandant {what}; there are no tenant databases in this version yet.");
    Ok(ExitCode::from(2))
}
