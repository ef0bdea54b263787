//! `mandant templates ...`: the master templates' sync state, from the terminal.

use std::process::ExitCode;

use crate::config::Settings;
use crate::control::ControlPlane;
use crate::server::ControlDatabase;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every master template with its version and how many clients are synced, pending, failed or overridden.
    List(SyncArgs),
    /// One template's state per client: synced version, status and the last error.
    Sync {
        /// The template id.
        id: uuid::Uuid,
        #[command(flatten)]
        args: SyncArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct SyncArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, command: Command) -> anyhow::Result<ExitCode> {
    let database = ControlDatabase::open(&settings).await?;
    let control = ControlPlane::connect_lazy(database.target(), &settings.database);
    let result = match command {
        Command::List(args) => list(&control, args).await,
        Command::Sync { id, args } => sync(&control, id, args).await,
    };
    control.close().await;
    database.close().await;
    result
}

async fn list(control: &ControlPlane, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for template in control.templates(None, 10_000).await? {
        let states = control.template_sync(template.id).await?;
        let count = |s: &str| states.iter().filter(|r| r.status == s).count();
        rows.push(serde_json::json!({
            "id": template.id, "name": template.name, "version": template.version,
            "synced": count("synced"), "pending": count("pending"), "failed": count("failed"),
            "overridden": count("overridden"),
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36} {:<24} {:>4} {:>7} {:>7} {:>6} {:>10}",
        "ID", "NAME", "VER", "SYNCED", "PENDING", "FAILED", "OVERRIDDEN"
    );
    for r in &rows {
        println!(
            "{:<36} {:<24} {:>4} {:>7} {:>7} {:>6} {:>10}",
            r["id"].as_str().unwrap_or_default(),
            r["name"].as_str().unwrap_or_default(),
            r["version"],
            r["synced"],
            r["pending"],
            r["failed"],
            r["overridden"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn sync(control: &ControlPlane, id: uuid::Uuid, args: SyncArgs) -> anyhow::Result<ExitCode> {
    let template = control.template(id).await?;
    let states = control.template_sync(id).await?;
    let failed = states.iter().any(|s| s.status == "failed");
    if args.json {
        let rows: Vec<_> = states
            .iter()
            .map(|s| {
                serde_json::json!({
                    "client": s.client, "status": s.status, "synced_version": s.synced_version,
                    "last_error": s.last_error,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"template": id, "version": template.version, "clients": rows})
            )?
        );
    } else {
        println!("{} \"{}\" v{}", id, template.name, template.version);
        println!("{:<24} {:<11} {:>7}  ERROR", "CLIENT", "STATUS", "VERSION");
        for s in &states {
            println!(
                "{:<24} {:<11} {:>7}  {}",
                s.client,
                s.status,
                s.synced_version.map_or("-".into(), |v| v.to_string()),
                s.last_error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
