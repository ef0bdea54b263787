//! `mandant worker`: runs the background workers without the HTTP API.

use std::process::ExitCode;

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_settings: Settings, _args: Args) -> anyhow::Result<ExitCode> {
    eprintln!(
        "mandant worker: there are no background jobs in this version yet; provisioning jobs arrive with the \
         client registry (issue #3)."
    );
    Ok(ExitCode::from(2))
}
