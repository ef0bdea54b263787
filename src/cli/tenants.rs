//! `mandant tenants ...`: operations over every tenant database.

use std::process::ExitCode;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::config::Settings;
use crate::control::ControlPlane;
use crate::domain::ClientSlug;
use crate::fleet::{FleetOptions, FleetReport, Outcome, TenantResult, migrate_fleet};
use crate::server::{self, ControlDatabase};
use crate::tenant::migrate::latest_version;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Migrate every tenant database to the latest tenant migration.
    Migrate(MigrateArgs),
    /// List every client with status, server, database and schema version.
    List(ListArgs),
    /// Check every tenant's custom fields: desired (control plane) against its catalogue and real columns.
    Fields(ListArgs),
    /// Move a client's database to another server while it keeps serving (logical replication); follows the
    /// move's progress until it ends.
    Move(super::moves::MoveArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Tenants migrated at once overall.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Tenants migrated at once on one database server (default: --concurrency).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub per_server: Option<u16>,
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
        Command::Migrate(args) => migrate(settings, args).await,
        Command::List(args) => list(settings, args).await,
        Command::Fields(args) => fields(settings, args).await,
        Command::Move(args) => super::moves::run(settings, args).await,
    }
}

async fn migrate(settings: Settings, args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let only = args
        .only
        .iter()
        .map(|s| ClientSlug::parse(s.trim()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--only: {e}"))?;
    let (state, database) = server::start(settings).await?;
    let options = FleetOptions {
        concurrency: usize::from(args.concurrency),
        per_server: usize::from(args.per_server.unwrap_or(args.concurrency)),
        only,
        dry_run: args.dry_run,
        verify: args.verify,
    };
    let progress = Progress::new();
    let reporter = progress.clone();
    let result = migrate_fleet(&state.fleet(), &options, move |r| reporter.tenant_done(r)).await;
    progress.finish();
    state.control().close().await;
    database.close().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args.dry_run);
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Progress on stderr: on a terminal a live line with done and failed counts, otherwise one plain line per
/// tenant that was touched (stdout stays for the summary table or JSON).
#[derive(Clone)]
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    failed: Arc<AtomicUsize>,
    done: Arc<AtomicUsize>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        });
        Self {
            bar,
            failed: Arc::default(),
            done: Arc::default(),
        }
    }

    fn tenant_done(&self, result: &TenantResult) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if result.outcome == Outcome::Failed || result.outcome == Outcome::Divergent {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let failed = self.failed.load(Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.set_message(format!(
                "{done} tenants done, {failed} failed; last: {}",
                result.client
            )),
            None if result.connected || result.outcome != Outcome::Current => eprintln!(
                "[{done}] {} {:?} v{} -> v{} ({:.0} ms){}",
                result.client,
                result.outcome,
                result.from,
                result.to,
                result.duration_ms,
                result
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_report(report: &FleetReport, dry_run: bool) {
    for t in &report.templates {
        println!(
            "template on {:<10} {:?} v{} -> v{}{}",
            t.server,
            t.outcome,
            t.from,
            t.to,
            t.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    println!(
        "{:<24} {:<10} {:<13} {:>6} {:>6} {:>9}  DETAIL",
        "CLIENT", "SERVER", "OUTCOME", "FROM", "TO", "MS"
    );
    for t in report
        .tenants
        .iter()
        .filter(|t| t.outcome != Outcome::Current || t.connected)
    {
        let detail = match (&t.error, &t.verification) {
            (Some(e), _) => e.clone(),
            (None, Some(v)) if !v.is_clean() => {
                format!("divergent: {:?} unknown: {:?}", v.divergent, v.unknown)
            }
            _ => t.migrations.join(", "),
        };
        println!(
            "{:<24} {:<10} {:<13} {:>6} {:>6} {:>9.1}  {}",
            t.client,
            t.server,
            format!("{:?}", t.outcome).to_lowercase(),
            t.from,
            t.to,
            t.duration_ms,
            detail
        );
    }
    println!(
        "{} tenants{}: {} migrated, {} current, {} would migrate, {} divergent, {} failed, {} skipped (moving) in {:.0} ms (latest v{})",
        report.tenants.len(),
        if dry_run { " (dry run)" } else { "" },
        report.migrated,
        report.current,
        report.would_migrate,
        report.divergent,
        report.failed,
        report.moving,
        report.duration_ms,
        report.latest
    );
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
    /// The overview's figures (`GET /v1/overview`), as the statistics worker last took them.
    database_bytes: Option<i64>,
    recipients: Option<i64>,
    lists: Option<i64>,
    counts_at: Option<chrono::DateTime<chrono::Utc>>,
    fields_current: i64,
    fields_desired: i64,
    templates_current: i64,
    templates_desired: i64,
    last_error: Option<String>,
    last_served_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `12.3 MB`-style sizes for the table.
fn human_bytes(bytes: Option<i64>) -> String {
    let Some(bytes) = bytes else {
        return "-".into();
    };
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

async fn list(settings: Settings, args: ListArgs) -> anyhow::Result<ExitCode> {
    let database = ControlDatabase::open(&settings).await?;
    let control = ControlPlane::connect_lazy(database.target(), &settings.database);
    let clients = control.all_live_clients().await;
    let ids: Vec<uuid::Uuid> = clients
        .as_ref()
        .map(|c| c.iter().map(|c| c.id).collect())
        .unwrap_or_default();
    let figures = control.client_figures(&ids).await;
    control.close().await;
    database.close().await;
    let mut figures = figures?;
    let latest = latest_version();
    let rows: Vec<TenantRow> = clients?
        .into_iter()
        .map(|c| {
            let f = figures.remove(&c.id).unwrap_or_default();
            TenantRow {
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
                database_bytes: f.database_bytes,
                recipients: f.recipients,
                lists: f.lists,
                counts_at: f.counts_at,
                fields_current: f.fields.current,
                fields_desired: f.fields.desired,
                templates_current: f.templates.current + f.templates.overridden,
                templates_desired: f.templates.desired,
                last_error: f.last_error.map(|e| format!("{}: {}", e.source, e.message)),
                last_served_at: f.last_served_at,
            }
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<13} {:<10} {:>12} {:>10} {:>10} {:>6} {:>7} {:>9} {:<20}",
        "SLUG",
        "STATUS",
        "SERVER",
        "SCHEMA",
        "SIZE",
        "RECIPIENTS",
        "LISTS",
        "FIELDS",
        "TEMPLATES",
        "LAST SERVED"
    );
    let count = |n: Option<i64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for row in &rows {
        let schema = format!(
            "v{}{}",
            row.schema_version,
            if row.behind { " (behind)" } else { "" }
        );
        println!(
            "{:<24} {:<13} {:<10} {:>12} {:>10} {:>10} {:>6} {:>7} {:>9} {:<20}",
            row.slug,
            row.status,
            row.server.as_deref().unwrap_or("-"),
            schema,
            human_bytes(row.database_bytes),
            count(row.recipients),
            count(row.lists),
            format!("{}/{}", row.fields_current, row.fields_desired),
            format!("{}/{}", row.templates_current, row.templates_desired),
            row.last_served_at.map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string()
            ),
        );
    }
    let behind = rows.iter().filter(|r| r.behind).count();
    let erring = rows.iter().filter(|r| r.last_error.is_some()).count();
    println!(
        "{} client(s); latest tenant schema v{latest}; {behind} behind; {erring} with an error standing \
         (--json shows it)",
        rows.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct FieldCheck {
    client: String,
    status: &'static str,
    /// Empty: the database has exactly the desired fields.
    drift: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `mandant tenants fields`: the field drift of every client with a database; exit 1 when any drifts or fails.
async fn fields(settings: Settings, args: ListArgs) -> anyhow::Result<ExitCode> {
    let (state, database) = server::start(settings).await?;
    let targets = state.targets();
    let control = state.control();
    let mut checks = Vec::new();
    for client in control.all_live_clients().await? {
        let (Some(server_id), true) = (client.server_id, client.status.has_live_database()) else {
            continue;
        };
        let mut check = FieldCheck {
            client: client.slug.clone(),
            status: client.status.as_str(),
            drift: Vec::new(),
            error: None,
        };
        let result = async {
            let server = control.server(server_id).await?;
            let desired = control
                .desired_fields(client.id)
                .await?
                .iter()
                .map(crate::fanout::fields::field_spec)
                .collect::<Result<Vec<_>, _>>()?;
            let target = targets.admin_on_tenant(&server, client.id)?;
            Ok::<_, anyhow::Error>(crate::tenant::fields::drift(&target, &desired).await?)
        }
        .await;
        match result {
            Ok(drift) => check.drift = drift,
            Err(e) => check.error = Some(format!("{e:#}")),
        }
        checks.push(check);
    }
    control.close().await;
    database.close().await;
    let bad = checks
        .iter()
        .filter(|c| !c.drift.is_empty() || c.error.is_some())
        .count();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for check in &checks {
            match (&check.error, check.drift.is_empty()) {
                (Some(error), _) => println!("{:<24} error: {error}", check.client),
                (None, true) => println!("{:<24} ok", check.client),
                (None, false) => println!("{:<24} drift: {}", check.client, check.drift.join("; ")),
            }
        }
        println!("{} client(s); {bad} with drift or errors", checks.len());
    }
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
