//! `mandant worker`: runs the background workers (provisioning, deletion, access changes) without the HTTP API.
//! Any number of worker processes may share one control plane: jobs are claimed with `SKIP LOCKED` and a lease.

use std::process::ExitCode;

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(settings: Settings, _args: Args) -> anyhow::Result<ExitCode> {
    crate::server::run_workers(settings, crate::shutdown::signal()).await?;
    Ok(ExitCode::SUCCESS)
}
