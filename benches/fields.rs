//! `cargo bench --bench fields`: one central field propagated to every tenant database (`BENCH_TENANTS`, 200
//! sub-clients, plus the master: 201 databases) beside a sequential loop of the same `ALTER TABLE` over the same
//! databases, in the same run on the same cluster. Target: propagation at least 2x faster than the loop on 2
//! cores.
//!
//! Each of `BENCH_ROUNDS` (3) rounds:
//!   mandant:  `POST /v1/fields {"name": "bench_central_<r>", "type": "integer"}` (202), then the workers'
//!             `reconcile_fields` jobs (`workers.concurrency` = `BENCH_CONCURRENCY`, 4); timed from sending the POST
//!             until the control plane's `field_status` says `applied` for every client (polled every 10 ms on a
//!             connection of its own; `failed` must stay 0). `GET /v1/fields/{name}` confirms it afterwards.
//!   loop:     the baseline: for each database, one after the other, a superuser connection and
//!             `ALTER TABLE recipients ADD COLUMN bench_seq_<r> bigint` (autocommit). `bigint` is the column type
//!             the reconciler gives an integer field, so both phases run the same DDL.
//!   by hand:  context, always last in its round: one reconcile job's work done sequentially for every client, each
//!             part timed: the claim (the claim SQL of `control/jobs.rs`, copied, on a connection of its own, on
//!             probe jobs of a kind the workers never take), the control-plane reads (client, server, desired fields), connect, `SET ROLE`,
//!             `BEGIN` + advisory lock + catalogue read, `ALTER TABLE`, catalogue `INSERT`, `COMMIT`, marking the
//!             fields applied and completing the job (both the real control-plane methods). Its catalogue rows are
//!             removed afterwards (untimed), so later reconciles have nothing to drop.
//! The order of the first two phases alternates per round, every timed phase starts after a CHECKPOINT (the disk
//! latency of this machine drifts), and the machine's CPU use during each phase is sampled from /proc/stat.
//! Medians over the rounds are reported, and every round. Prints a table and writes benches/results/fields.json.

mod common;

use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres::Client;
use mandant::app::RunOptions;
use mandant::control::jobs::{Job, JobKind};
use mandant::tenant::cluster::{lock_key, quote_ident};

/// One round's timings (seconds) and CPU use.
#[derive(Debug, Default, Clone)]
struct Round {
    /// POST sent → every client applied.
    mandant: f64,
    /// POST sent → 202 received.
    post: f64,
    /// POST sent → the first client applied.
    first_applied: f64,
    sequential: f64,
    mandant_cpu: Cpu,
    sequential_cpu: Cpu,
    hand: Hand,
}

/// The machine's CPU use during a phase (fractions of both cores).
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    busy: f64,
    iowait: f64,
}

/// One reconcile job's parts, done by hand for every client in turn (seconds, summed over the clients).
#[derive(Debug, Default, Clone, Copy)]
struct Hand {
    claim: f64,
    control_reads: f64,
    connect: f64,
    set_role: f64,
    begin_read: f64,
    alter: f64,
    catalogue: f64,
    commit: f64,
    mark_applied: f64,
    complete: f64,
    total: f64,
}

impl Hand {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "claim_s": self.claim, "control_reads_s": self.control_reads, "connect_s": self.connect,
            "set_role_s": self.set_role, "begin_lock_read_s": self.begin_read, "alter_s": self.alter,
            "catalogue_insert_s": self.catalogue, "commit_s": self.commit, "mark_applied_s": self.mark_applied,
            "complete_s": self.complete, "total_s": self.total,
        })
    }
}

/// A client with a database: id, server and database name.
struct Tenant {
    id: uuid::Uuid,
    server: i64,
    database: String,
}

#[tokio::main]
async fn main() {
    let tenants = common::env_usize("BENCH_TENANTS", 200);
    let rounds = common::env_usize("BENCH_ROUNDS", 3).max(1);
    let concurrency = common::env_usize("BENCH_CONCURRENCY", 4).max(1);
    let cluster = common::cluster("bench-fields");
    let admin = cluster
        .cluster()
        .target("postgres")
        .connect()
        .await
        .expect("admin");
    let concurrency_env = concurrency.to_string();
    let settings = common::settings(
        &cluster,
        "bench_ctl",
        &[("MANDANT__WORKERS__CONCURRENCY", &concurrency_env)],
    );
    let control_pool = settings.database.max_connections;
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = reqwest::Client::new();

    // Setup (untimed): `tenants` sub-clients through the API, in chunks.
    let setup = Instant::now();
    let slugs: Vec<String> = (0..tenants).map(|i| format!("f-{i:04}")).collect();
    for chunk in slugs.chunks(50) {
        for slug in chunk {
            let status = http
                .post(format!("{}/v1/clients", app.base))
                .json(&serde_json::json!({"slug": slug, "name": slug}))
                .send()
                .await
                .expect("POST client")
                .status();
            assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{slug}");
        }
        common::wait_active(&app, 0).await;
    }
    common::wait_active(&app, tenants + 1).await;
    eprintln!(
        "setup: {tenants} clients in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    // The databases both phases change: every active client's, the master's included.
    let control = cluster
        .cluster()
        .target("bench_ctl")
        .connect()
        .await
        .expect("control");
    let databases: Vec<Tenant> = control
        .query(
            "SELECT id::text, server_id, db_name FROM clients WHERE status = 'active' ORDER BY slug",
            &[],
        )
        .await
        .expect("clients")
        .iter()
        .map(|r| Tenant {
            id: r.get::<_, &str>(0).parse().expect("uuid"),
            server: r.get(1),
            database: r.get(2),
        })
        .collect();
    // A second control connection for the by-hand claims (ControlPlane's pool is not public).
    let mut claimer = cluster
        .cluster()
        .target("bench_ctl")
        .connect()
        .await
        .expect("control");
    let n = databases.len();
    assert_eq!(n, tenants + 1, "active clients (the master included)");
    for t in &databases {
        assert_eq!(app.state.provisioner().names(t.id).database, t.database);
    }

    let mut results = Vec::new();
    for round in 0..rounds {
        let mut r = Round::default();
        let phases = if round % 2 == 0 {
            ["mandant", "sequential"]
        } else {
            ["sequential", "mandant"]
        };
        for phase in phases {
            checkpoint(&admin).await;
            let cpu = CpuSample::now();
            if phase == "mandant" {
                let name = format!("bench_central_{round}");
                let (total, post, first) = propagate(&app, &http, &control, &name, n).await;
                r.mandant_cpu = cpu.since();
                (r.mandant, r.post, r.first_applied) = (total, post, first);
                settle(&control).await;
            } else {
                let sql = format!("ALTER TABLE recipients ADD COLUMN bench_seq_{round} bigint");
                let started = Instant::now();
                for t in &databases {
                    let db = cluster
                        .cluster()
                        .target(&t.database)
                        .connect()
                        .await
                        .expect("connect");
                    db.batch_execute(&sql).await.expect("ALTER TABLE");
                }
                r.sequential = started.elapsed().as_secs_f64();
                r.sequential_cpu = cpu.since();
            }
        }

        checkpoint(&admin).await;
        r.hand = by_hand(&app, &control, &mut claimer, &databases, round).await;
        cleanup(&cluster, &control, &databases, round).await;

        eprintln!(
            "round {}: mandant {:.3} s (POST {:.3} s, first applied {:.3} s), sequential loop {:.3} s, by hand {:.3} s",
            round + 1,
            r.mandant,
            r.post,
            r.first_applied,
            r.sequential,
            r.hand.total
        );
        results.push(r);
    }
    app.stop().await;

    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let k = v.len();
        if k % 2 == 1 {
            v[k / 2]
        } else {
            (v[k / 2 - 1] + v[k / 2]) / 2.0
        }
    };
    type Pick = fn(&Round) -> f64;
    let lines: [(&str, String, Pick); 16] = [
        (
            "mandant",
            format!("mandant: POST /v1/fields → all applied (workers {concurrency})"),
            |r| r.mandant,
        ),
        ("mandant_post", "  of which POST → 202".into(), |r| r.post),
        (
            "mandant_first_applied",
            "  of which POST → first client applied".into(),
            |r| r.first_applied,
        ),
        (
            "sequential",
            "sequential ALTER TABLE loop (baseline)".into(),
            |r| r.sequential,
        ),
        (
            "hand",
            "by hand: one job's work per client, in turn".into(),
            |r| r.hand.total,
        ),
        (
            "hand_claim",
            "  claim (control plane, async commit)".into(),
            |r| r.hand.claim,
        ),
        (
            "hand_control_reads",
            "  client, server, desired fields".into(),
            |r| r.hand.control_reads,
        ),
        ("hand_connect", "  connect (tenant db)".into(), |r| {
            r.hand.connect
        }),
        ("hand_set_role", "  SET ROLE, lock_timeout".into(), |r| {
            r.hand.set_role
        }),
        (
            "hand_begin_read",
            "  BEGIN, advisory lock, catalogue read".into(),
            |r| r.hand.begin_read,
        ),
        ("hand_alter", "  ALTER TABLE ADD COLUMN".into(), |r| {
            r.hand.alter
        }),
        ("hand_catalogue", "  catalogue INSERT".into(), |r| {
            r.hand.catalogue
        }),
        ("hand_commit", "  COMMIT (tenant db)".into(), |r| {
            r.hand.commit
        }),
        (
            "hand_mark_applied",
            "  mark applied (control plane)".into(),
            |r| r.hand.mark_applied,
        ),
        (
            "hand_complete",
            "  complete the job (control plane)".into(),
            |r| r.hand.complete,
        ),
        ("hand_other", "  (client-side remainder)".into(), |r| {
            let h = &r.hand;
            h.total
                - (h.claim
                    + h.control_reads
                    + h.connect
                    + h.set_role
                    + h.begin_read
                    + h.alter
                    + h.catalogue
                    + h.commit
                    + h.mark_applied
                    + h.complete)
        }),
    ];

    println!(
        "fields: 1 central integer field → {n} tenant databases ({tenants} sub-clients + master), {rounds} rounds \
         (interleaved, CHECKPOINT before each phase), 2 cores, {}, same cluster for all rows\n",
        common::fsync_label()
    );
    println!(
        "{:<58} {:>7} {:>9} {:>10} {:>10}   rounds s",
        "phase", "tenants", "median s", "tenants/s", "ms/tenant"
    );
    let mut medians = serde_json::Map::new();
    for (key, name, pick) in &lines {
        let m = median(pick);
        let each: Vec<String> = results.iter().map(|r| format!("{:.3}", pick(r))).collect();
        println!(
            "{:<58} {:>7} {:>9.3} {:>10.1} {:>10.2}   {}",
            name,
            n,
            m,
            n as f64 / m,
            m * 1000.0 / n as f64,
            each.join(" ")
        );
        medians.insert(
            (*key).to_owned(),
            serde_json::json!({"s": m, "tenants_per_s": n as f64 / m, "ms_per_tenant": m * 1000.0 / n as f64}),
        );
    }
    let speedup = median(&|r| r.sequential) / median(&|r| r.mandant);
    let paired: Vec<f64> = results.iter().map(|r| r.sequential / r.mandant).collect();
    let cpu = |pick: fn(&Round) -> Cpu| {
        (
            median(&|r| pick(r).busy) * 100.0,
            median(&|r| pick(r).iowait) * 100.0,
        )
    };
    let (mandant_busy, mandant_iowait) = cpu(|r| r.mandant_cpu);
    let (sequential_busy, sequential_iowait) = cpu(|r| r.sequential_cpu);
    println!(
        "\nspeedup (sequential loop / mandant, medians): {speedup:.2}x (target >= 2); per round: {}",
        paired
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "CPU of both cores (median): mandant {mandant_busy:.0}% busy, {mandant_iowait:.0}% iowait; \
         sequential loop {sequential_busy:.0}% busy, {sequential_iowait:.0}% iowait"
    );
    println!(
        "worker concurrency {concurrency}, control-plane pool {control_pool} connections (config/test.toml)"
    );

    common::write_report(
        "fields",
        &serde_json::json!({
            "tenants": n,
            "sub_clients": tenants,
            "master_included": true,
            "rounds": rounds,
            "fsync": common::fsync_label(),
            "worker_concurrency": concurrency,
            "control_pool": control_pool,
            "target_speedup": 2.0,
            "speedup": speedup,
            "speedup_per_round": paired,
            "medians": medians,
            "cpu_median_percent": {
                "mandant": {"busy": mandant_busy, "iowait": mandant_iowait},
                "sequential": {"busy": sequential_busy, "iowait": sequential_iowait},
            },
            "each_round": results.iter().enumerate().map(|(i, r)| serde_json::json!({
                "order": if i % 2 == 0 { "mandant first" } else { "sequential first" },
                "mandant_s": r.mandant,
                "mandant_post_s": r.post,
                "mandant_first_applied_s": r.first_applied,
                "sequential_s": r.sequential,
                "mandant_cpu": {"busy": r.mandant_cpu.busy, "iowait": r.mandant_cpu.iowait},
                "sequential_cpu": {"busy": r.sequential_cpu.busy, "iowait": r.sequential_cpu.iowait},
                "by_hand": r.hand.json(),
            })).collect::<Vec<_>>(),
        }),
    );
}

async fn checkpoint(admin: &Client) {
    admin.batch_execute("CHECKPOINT").await.expect("checkpoint");
}

/// Creates the central field `name` and waits until all `n` clients have it applied. Returns seconds from sending
/// the POST to: all applied, the 202, the first client applied.
async fn propagate(
    app: &common::RunningApp,
    http: &reqwest::Client,
    control: &Client,
    name: &str,
    n: usize,
) -> (f64, f64, f64) {
    let started = Instant::now();
    let response = http
        .post(format!("{}/v1/fields", app.base))
        .json(&serde_json::json!({"name": name, "type": "integer"}))
        .send()
        .await
        .expect("POST field");
    let status = response.status();
    let body: serde_json::Value = response.json().await.expect("field body");
    let post = started.elapsed().as_secs_f64();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    let count = |k: &str| body["propagation"][k].as_u64().expect("count");
    assert_eq!(count("applied") + count("pending"), n as u64, "{body}");

    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first = None;
    loop {
        let row = control
            .query_one(
                "SELECT count(*) FILTER (WHERE s.status = 'applied'), count(*) FILTER (WHERE s.status = 'pending'),
                        count(*) FILTER (WHERE s.status = 'failed')
                 FROM field_status s JOIN fields f ON f.id = s.field_id
                 WHERE f.client_id IS NULL AND f.name = $1",
                &[&name],
            )
            .await
            .expect("poll");
        let (applied, pending, failed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(failed, 0, "{name}: a client failed");
        if applied > 0 && first.is_none() {
            first = Some(started.elapsed().as_secs_f64());
        }
        if applied as usize == n && pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: only {applied} of {n} applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = started.elapsed().as_secs_f64();

    let shown: serde_json::Value = http
        .get(format!("{}/v1/fields/{name}", app.base))
        .send()
        .await
        .expect("GET field")
        .json()
        .await
        .expect("field body");
    let p = &shown["propagation"];
    assert_eq!(
        (
            p["applied"].as_u64(),
            p["pending"].as_u64(),
            p["failed"].as_u64()
        ),
        (Some(n as u64), Some(0), Some(0)),
        "{shown}"
    );
    (total, post, first.unwrap_or(total))
}

/// Waits (untimed) until no reconcile job is queued or running, so the next phase starts on a quiet system.
async fn settle(control: &Client) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 = control
            .query_one(
                "SELECT count(*) FROM jobs WHERE kind = 'reconcile_fields' AND status IN ('queued', 'running')",
                &[],
            )
            .await
            .expect("jobs")
            .get(0);
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} reconcile jobs still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One reconcile job's work for every client in turn, each part timed (see the module comment). The SQL on the
/// tenant side is that of `tenant/fields.rs` for one added field; the column is `bench_hand_<round>`.
async fn by_hand(
    app: &common::RunningApp,
    control_db: &Client,
    claimer: &mut Client,
    databases: &[Tenant],
    round: usize,
) -> Hand {
    let control = app.state.control();
    let provisioner = app.state.provisioner();
    let lease = app.state.settings().workers.lease();
    let worker = "bench-by-hand";
    // Probe jobs, one per client, of a kind the workers never claim (untimed; the real ones come with the POST).
    control_db
        .execute(
            "INSERT INTO jobs (kind, client_id, max_attempts)
             SELECT 'bench_probe', id, 8 FROM clients WHERE status = 'active'",
            &[],
        )
        .await
        .expect("probe jobs");
    let kinds = vec!["bench_probe".to_owned()];
    let column = format!("bench_hand_{round}");
    let fields_lock = lock_key("mandant.fields");
    let mut h = Hand::default();
    let all = Instant::now();
    for t in databases {
        // The claim: the SQL of ControlPlane::claim_job (control/jobs.rs), on the probe jobs.
        let at = Instant::now();
        let claimed = {
            let tx = claimer.transaction().await.expect("begin");
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await
                .expect("sync off");
            let row = tx
                .query_one(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1,
                            lease_until = now() + make_interval(secs => $2), updated_at = now()
                     WHERE id = (
                         SELECT j.id FROM jobs j
                         WHERE j.kind = ANY($3)
                           AND (j.status = 'queued' AND j.run_after <= now()
                                OR j.status = 'running' AND j.lease_until < now() AND j.attempts < j.max_attempts)
                           AND NOT EXISTS (
                               SELECT 1 FROM jobs o
                               WHERE o.client_id = j.client_id AND o.id <> j.id AND o.status = 'running')
                         ORDER BY j.run_after, j.created_at
                         FOR UPDATE SKIP LOCKED
                         LIMIT 1)
                     RETURNING id::text, attempts",
                    &[&worker, &lease.as_secs_f64(), &kinds],
                )
                .await
                .expect("claim");
            tx.commit().await.expect("commit claim");
            let id: uuid::Uuid = row.get::<_, &str>(0).parse().expect("job id");
            (id, row.get::<_, i32>(1))
        };
        h.claim += at.elapsed().as_secs_f64();

        let at = Instant::now();
        let client = control.client_by_id(t.id).await.expect("client");
        let server = control
            .server(client.server_id.expect("placed"))
            .await
            .expect("server");
        let desired = control.desired_fields(t.id).await.expect("desired");
        h.control_reads += at.elapsed().as_secs_f64();
        assert_eq!(server.id, t.server);

        let names = provisioner.names(t.id);
        let target = provisioner
            .admin_target(&server)
            .expect("target")
            .with_dbname(&names.database)
            .with_application_name("mandant-fields");
        let at = Instant::now();
        let mut db = target.connect().await.expect("connect");
        h.connect += at.elapsed().as_secs_f64();

        let at = Instant::now();
        db.batch_execute(&format!(
            "SET ROLE {}; SET lock_timeout = '3s'",
            quote_ident(&names.role)
        ))
        .await
        .expect("SET ROLE");
        h.set_role += at.elapsed().as_secs_f64();

        let at = Instant::now();
        let tx = db.transaction().await.expect("BEGIN");
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&fields_lock])
            .await
            .expect("lock");
        let catalogue = tx
            .query(
                "SELECT name, data_type, length, required, personal FROM field_catalogue FOR UPDATE",
                &[],
            )
            .await
            .expect("catalogue");
        h.begin_read += at.elapsed().as_secs_f64();
        assert!(catalogue.len() >= round, "catalogue of {}", t.database);

        let at = Instant::now();
        tx.batch_execute(&format!(
            "ALTER TABLE recipients ADD COLUMN IF NOT EXISTS {} bigint",
            quote_ident(&column)
        ))
        .await
        .expect("ALTER TABLE");
        h.alter += at.elapsed().as_secs_f64();

        let at = Instant::now();
        let none: Option<i32> = None;
        let no_default: Option<deadpool_postgres::tokio_postgres::types::Json<serde_json::Value>> =
            None;
        tx.execute(
            "INSERT INTO field_catalogue (name, origin, data_type, length, required, default_value, personal)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &column,
                &"central",
                &"integer",
                &none,
                &false,
                &no_default,
                &false,
            ],
        )
        .await
        .expect("catalogue INSERT");
        h.catalogue += at.elapsed().as_secs_f64();

        let at = Instant::now();
        tx.commit().await.expect("COMMIT");
        h.commit += at.elapsed().as_secs_f64();
        drop(db);

        let at = Instant::now();
        let applied: Vec<(i64, i32)> = desired.iter().map(|f| (f.id, f.version)).collect();
        control
            .fields_applied(t.id, &applied)
            .await
            .expect("applied");
        h.mark_applied += at.elapsed().as_secs_f64();

        let at = Instant::now();
        let job = Job {
            id: claimed.0,
            kind: JobKind::ReconcileFields,
            client_id: Some(t.id),
            payload: serde_json::json!({}),
            attempt: claimed.1,
            max_attempts: 8,
            locked_by: worker.to_owned(),
        };
        let result = serde_json::json!({"added": [&column], "changed": [], "dropped": []});
        assert!(
            control
                .complete_job(&job, Some(result))
                .await
                .expect("complete"),
            "probe job completed"
        );
        h.complete += at.elapsed().as_secs_f64();
    }
    h.total = all.elapsed().as_secs_f64();
    h
}

/// Removes the by-hand catalogue rows (so no reconcile drops the columns later) and the probe jobs. Untimed.
async fn cleanup(
    cluster: &mandant::embedded::ThrowawayCluster,
    control: &Client,
    databases: &[Tenant],
    round: usize,
) {
    let column = format!("bench_hand_{round}");
    for t in databases {
        let db = cluster
            .cluster()
            .target(&t.database)
            .connect()
            .await
            .expect("connect");
        db.execute("DELETE FROM field_catalogue WHERE name = $1", &[&column])
            .await
            .expect("catalogue cleanup");
    }
    control
        .execute("DELETE FROM jobs WHERE kind = 'bench_probe'", &[])
        .await
        .expect("probe cleanup");
}

/// A reading of /proc/stat's aggregate CPU line.
struct CpuSample {
    busy: u64,
    iowait: u64,
    total: u64,
}

impl CpuSample {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let at = |i: usize| ticks.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let total: u64 = (0..8).map(at).sum();
        let idle = at(3) + at(4);
        Self {
            busy: total - idle,
            iowait: at(4),
            total,
        }
    }

    fn since(&self) -> Cpu {
        let now = Self::now();
        let total = (now.total - self.total).max(1) as f64;
        Cpu {
            busy: (now.busy - self.busy) as f64 / total,
            iowait: (now.iowait - self.iowait) as f64 / total,
        }
    }
}
