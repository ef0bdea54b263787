//! `mandant migrate`: applies the control-plane migrations (and, once tenants exist, brings each server's template
//! database up to date). Safe to run while `serve` runs and from several processes at once.

use std::process::ExitCode;

use crate::app::ControlDatabase;
use crate::config::Settings;
use crate::control;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(settings: Settings, _args: Args) -> anyhow::Result<ExitCode> {
    let database = ControlDatabase::open(&settings).await?;
    let result = control::migrate::run(database.target()).await;
    database.close().await;
    let report = result?;
    if report.applied.is_empty() {
        println!("control plane: up to date (V{})", report.latest);
    } else {
        println!(
            "control plane: applied {} (now at V{})",
            report.applied.join(", "),
            report.latest
        );
    }
    Ok(ExitCode::SUCCESS)
}
