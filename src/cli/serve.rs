//! `mandant serve [--no-workers]`: the HTTP API and, by default, the workers, until SIGINT/SIGTERM.

use std::process::ExitCode;

use crate::config::Settings;
use crate::server::{Application, RunOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Do not run background workers in this process (run `mandant worker` separately).
    #[arg(long)]
    pub no_workers: bool,
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<ExitCode> {
    let options = RunOptions {
        no_workers: args.no_workers,
    };
    let stop = crate::shutdown::signal();
    let app = Application::build(settings, options).await?;
    app.run_until(stop).await?;
    Ok(ExitCode::SUCCESS)
}
