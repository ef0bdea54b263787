//! The command line: one binary whose commands are the server, the worker and the admin tools (DESIGN.md §7).
//! Each command lives in its own file with its options and a `run` function.

mod migrate;
mod moves;
mod serve;
mod servers;
mod templates;
mod tenants;
mod users;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{LoadOptions, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "mandant",
    version,
    about = "Database-per-tenant orchestration for multi-client management"
)]
pub struct Cli {
    /// A TOML file layered over config/default.toml and config/local.toml (environment variables still win).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (and, unless --no-workers, the background workers).
    Serve(serve::Args),
    /// Run only the background workers.
    Worker(worker::Args),
    /// Apply control-plane migrations (then the template databases).
    Migrate(migrate::Args),
    /// Operate on every tenant database.
    #[command(subcommand)]
    Tenants(tenants::Command),
    /// The master templates' sync state.
    #[command(subcommand)]
    Templates(templates::Command),
    /// Users: mint an API token from the command line (e.g. when the admin's token is lost).
    #[command(subcommand)]
    Users(users::Command),
    /// Database servers: list, register (checked), remove.
    #[command(subcommand)]
    Servers(servers::Command),
}

/// Parses the command line, loads settings, runs the command. Exit codes: 0 success, 1 failure, 2 bad
/// configuration or usage.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(&LoadOptions::from_process(cli.config.clone())) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("mandant: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mandant: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(settings, args).await,
            Command::Worker(args) => worker::run(settings, args).await,
            Command::Migrate(args) => migrate::run(settings, args).await,
            Command::Tenants(command) => tenants::run(settings, command).await,
            Command::Templates(command) => templates::run(settings, command).await,
            Command::Users(command) => users::run(settings, command).await,
            Command::Servers(command) => servers::run(settings, command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "command failed");
            eprintln!("mandant: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tenants_migrate_accepts_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "mandant",
            "tenants",
            "migrate",
            "--concurrency",
            "4",
            "--only",
            "a,b",
            "--dry-run",
            "--json",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Tenants(_)));
    }
}
