//! `mandant migrate`: applies the control-plane migrations, then brings each database server's template database
//! up to the latest tenant migration (tenant databases themselves: `mandant tenants migrate`). Safe to run while
//! `serve` runs and from several processes at once: both steps run under advisory locks.

use std::process::ExitCode;

use crate::app::AppState;
use crate::config::Settings;
use crate::control;
use crate::fleet::{FleetOptions, Outcome, migrate_templates};
use crate::server::ControlDatabase;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(settings: Settings, _args: Args) -> anyhow::Result<ExitCode> {
    let database = ControlDatabase::open(&settings).await?;
    let result = migrate_all(settings, &database).await;
    database.close().await;
    result
}

async fn migrate_all(settings: Settings, database: &ControlDatabase) -> anyhow::Result<ExitCode> {
    let report = control::migrate::run(database.target()).await?;
    if report.applied.is_empty() {
        println!("control plane: up to date (V{})", report.latest);
    } else {
        println!(
            "control plane: applied {} (now at V{})",
            report.applied.join(", "),
            report.latest
        );
    }
    let state = AppState::new(settings, database.target())?;
    let capacity = state.settings().tenants.local_max_databases;
    state.control().ensure_local_server(capacity).await?;
    let servers = state.control().list_servers().await?;
    let options = FleetOptions {
        concurrency: 1,
        per_server: 1,
        only: Vec::new(),
        dry_run: false,
        verify: false,
    };
    let templates = migrate_templates(&state.fleet(), &servers, &options).await;
    state.control().close().await;
    let mut failed = false;
    for t in &templates {
        match (&t.outcome, &t.error) {
            (Outcome::Failed, Some(e)) => {
                failed = true;
                println!("template on {}: failed: {e}", t.server);
            }
            (Outcome::Migrated, _) => println!(
                "template on {}: migrated v{} -> v{}",
                t.server, t.from, t.to
            ),
            _ => println!("template on {}: up to date (v{})", t.server, t.to),
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
