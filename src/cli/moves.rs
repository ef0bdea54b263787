//! `mandant tenants move <slug> <server>`: starts a live move (the API's checks, `Provisioner::request_move`) and
//! follows its operation with the phase and the copy's progress until it ends. The move itself is a job: any
//! running `mandant serve` or `mandant worker` runs it (`--detach` only starts it).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::domain::ClientSlug;
use crate::domain::servers::ServerName;
use crate::server;

#[derive(Debug, clap::Args)]
pub struct MoveArgs {
    /// The client to move.
    pub slug: String,
    /// The database server to move it to.
    pub server: String,
    /// Start the move and print its operation id; do not follow it.
    #[arg(long)]
    pub detach: bool,
}

/// How long a move may stay queued before the command says that no worker seems to run.
const NO_WORKER_HINT_AFTER: Duration = Duration::from_secs(15);

pub async fn run(settings: Settings, args: MoveArgs) -> anyhow::Result<ExitCode> {
    let slug = ClientSlug::parse(&args.slug).map_err(|e| anyhow::anyhow!("slug: {e}"))?;
    let target = ServerName::parse(&args.server).map_err(|e| anyhow::anyhow!("server: {e}"))?;
    let (state, database) = server::start(settings).await?;
    let result = follow(&state, &slug, &target, args.detach).await;
    state.control().close().await;
    database.close().await;
    result
}

async fn follow(
    state: &crate::app::AppState,
    slug: &ClientSlug,
    target: &ServerName,
    detach: bool,
) -> anyhow::Result<ExitCode> {
    let client = match state.control().client_by_slug(slug).await {
        Ok(client) => client,
        Err(crate::control::ControlError::NotFound) => {
            eprintln!("no client {slug}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let (_, operation) = match state
        .provisioner()
        .request_move(&client, target, None)
        .await?
    {
        Ok(started) => started,
        Err(refusal) => {
            eprintln!("cannot move {slug}: {refusal} ({})", refusal.code());
            return Ok(ExitCode::FAILURE);
        }
    };
    println!("moving {slug} to {target}: operation {operation}");
    if detach {
        return Ok(ExitCode::SUCCESS);
    }
    let live = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = String::new();
    let mut hinted = false;
    loop {
        let op = state.control().operation(operation).await?;
        let progress = op
            .result
            .as_ref()
            .map(|r| {
                let count = |k: &str| r.get(k).and_then(serde_json::Value::as_i64);
                match (count("tables_copied"), count("tables"), count("lag_bytes")) {
                    (Some(done), Some(all), Some(lag)) => {
                        format!(", {done}/{all} tables copied, {lag} bytes behind")
                    }
                    _ => String::new(),
                }
            })
            .unwrap_or_default();
        let line = format!(
            "{} {}{progress}",
            op.status,
            op.step.as_deref().unwrap_or("queued")
        );
        if line != last {
            if live {
                eprint!("\r\x1b[2K{:>5.1}s {line}", started.elapsed().as_secs_f64());
            } else {
                eprintln!("{:>5.1}s {line}", started.elapsed().as_secs_f64());
            }
            last = line;
        }
        match op.status.as_str() {
            "succeeded" => {
                if live {
                    eprintln!();
                }
                println!("{slug} now lives on {target}");
                return Ok(ExitCode::SUCCESS);
            }
            "failed" => {
                if live {
                    eprintln!();
                }
                eprintln!(
                    "the move failed and was rolled back; {slug} stays where it was: {}",
                    op.last_error.unwrap_or_default()
                );
                return Ok(ExitCode::FAILURE);
            }
            "queued" if !hinted && started.elapsed() > NO_WORKER_HINT_AFTER => {
                eprintln!(
                    "\nstill queued: is a `mandant serve` or `mandant worker` running on this control plane?"
                );
                hinted = true;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
