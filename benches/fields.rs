//! `cargo bench --bench fields`: one central field propagated to every tenant database (`BENCH_TENANTS`, 200
//! sub-clients, plus the master: 201 databases) beside a sequential loop of the same `ALTER TABLE` over the same
//! databases, in the same run on the same cluster. Target: propagation at least 2x faster than the loop on 2
//! cores.
//!
//! Each of `BENCH_ROUNDS` (3) rounds:
//!   mandant:  `POST /v1/fields {"name": "bench_central_<r>", "type": "integer"}` (202), then the workers'
//!             `propagate_fields` fan-out job (`workers.fanout_concurrency` tenants at once, 8; `BENCH_FANOUT`; the
//!             job loops: `workers.concurrency`, 4, `BENCH_CONCURRENCY`); timed from sending the POST until the
//!             control plane's `field_status` says `applied` for every client (polled every 10 ms on a connection of
//!             its own; `failed` must stay 0). `GET /v1/fields/{name}` confirms it afterwards.
//!   loop:     the baseline: for each database, one after the other, a superuser connection and
//!             `ALTER TABLE recipients ADD COLUMN bench_seq_<r> bigint` (autocommit). `bigint` is the column type
//!             the reconciler gives an integer field, so both phases run the same DDL.
//!   parallel: context: the same DDL over the same databases with `fanout_concurrency` connections at once and
//!             nothing else (no control plane, no catalogue): the floor of any parallel propagation that opens one
//!             connection per database, on this machine.
//!   lean:     context: the reconciler's tenant-side SQL for one new field (`SET ROLE`, lock, catalogue read,
//!             `ALTER TABLE`, catalogue `INSERT`, `COMMIT`) in two simple-query round trips after connecting,
//!             `fanout_concurrency` at once, no control plane; its catalogue rows are removed right after (untimed).
//!   by hand:  context, always last in its round: the fan-out job's work with one client at a time, each part
//!             timed. Once: the claim (the claim SQL of `control/jobs.rs`, copied, on a connection of its own, on a
//!             probe job of a kind the workers never take), the server and client lists, completing the job. Per
//!             client: its desired fields, connect, `SET ROLE`, `BEGIN` + advisory lock + catalogue read,
//!             `ALTER TABLE`, catalogue `INSERT`, `COMMIT`. Per 256: the batched status write. The control-plane
//!             calls are the real methods. Its catalogue rows are removed afterwards (untimed), so later
//!             reconciles have nothing to drop.
//! The order of the first four phases rotates per round (round 1 starts with mandant, round 2 with the loop, ...),
//! every timed phase starts after a CHECKPOINT (the disk latency of this machine drifts), and the CPU use during
//! each phase is sampled from /proc: the machine's, this process's (the app with its workers, the bench), the
//! cluster's (postmaster and backends) and the rest (a warning says when other processes, e.g. a build, took more
//! than 10% of it).
//! Medians over the rounds are reported, and every round. Prints a table and writes benches/results/fields.json.

mod common;

use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres::Client;
use futures_util::StreamExt;
use mandant::control::jobs::{Job, JobKind};
use mandant::db::{lock_key, quote_ident, quote_literal};
use mandant::server::RunOptions;

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
    /// The loop's connects and ALTER TABLEs (summed).
    sequential_connect: f64,
    sequential_alter: f64,
    mandant_cpu: Cpu,
    sequential_cpu: Cpu,
    /// The same ALTER TABLE loop, `fanout` databases at once (context: the floor).
    parallel: f64,
    parallel_cpu: Cpu,
    /// The reconciler's tenant-side SQL in two round trips, `fanout` at once (context).
    lean: f64,
    lean_cpu: Cpu,
    order: String,
    hand: Hand,
}

/// The machine's CPU use during a phase (fractions of both cores).
#[derive(Debug, Default, Clone, Copy)]
struct Cpu {
    busy: f64,
    iowait: f64,
    /// CPU seconds of the whole machine (both cores) and of this process (the app with its workers, the bench).
    machine_s: f64,
    process_s: f64,
    /// CPU seconds of the cluster's postmaster and its children (exited backends included).
    postgres_s: f64,
}

impl Cpu {
    /// CPU seconds of anything else on the machine (another build or test run disturbs the measurement).
    fn other_s(&self) -> f64 {
        (self.machine_s - self.process_s - self.postgres_s).max(0.0)
    }
}

/// One reconcile job's parts, done by hand for every client in turn (seconds, summed over the clients).
#[derive(Debug, Default, Clone, Copy)]
struct Hand {
    /// Once per job.
    claim: f64,
    job_reads: f64,
    /// Per client.
    desired: f64,
    connect: f64,
    set_role: f64,
    begin: f64,
    lock: f64,
    read: f64,
    alter: f64,
    catalogue: f64,
    commit: f64,
    /// Per batch (of up to 256 client-field pairs).
    mark_applied: f64,
    /// Once per job.
    complete: f64,
    total: f64,
}

impl Cpu {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"busy": self.busy, "iowait": self.iowait, "machine_cpu_s": self.machine_s,
                           "process_cpu_s": self.process_s, "postgres_cpu_s": self.postgres_s,
                           "other_cpu_s": self.other_s()})
    }
}

impl Hand {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "claim_s": self.claim, "servers_clients_read_s": self.job_reads,
            "desired_fields_reads_s": self.desired, "connect_s": self.connect,
            "set_role_s": self.set_role, "begin_s": self.begin,
            "advisory_lock_s": self.lock, "catalogue_read_s": self.read, "alter_s": self.alter,
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
    let cluster = common::cluster("bench-fields");
    let admin = common::superuser(&cluster, "postgres").await;
    // The configured defaults unless BENCH_CONCURRENCY (job loops) or BENCH_FANOUT (tenants one fan-out job
    // works on at once) say otherwise.
    let mut overrides = Vec::new();
    for (var, key) in [
        ("BENCH_CONCURRENCY", "MANDANT__WORKERS__CONCURRENCY"),
        ("BENCH_FANOUT", "MANDANT__WORKERS__FANOUT_CONCURRENCY"),
    ] {
        if let Ok(value) = std::env::var(var) {
            overrides.push((key, value));
        }
    }
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let settings = common::settings(&cluster, "bench_ctl", &overrides);
    let control_pool = settings.database.max_connections;
    let concurrency = settings.workers.concurrency;
    let fanout = settings.workers.fanout_concurrency;
    let app = common::start_app(settings, RunOptions::default()).await;
    let http = common::http();

    // Setup (untimed): `tenants` sub-clients through the API, in chunks.
    let setup = Instant::now();
    let slugs: Vec<String> = (0..tenants).map(|i| format!("f-{i:04}")).collect();
    common::create_clients(&app, &http, &slugs).await;
    eprintln!(
        "setup: {tenants} clients in {:.1} s",
        setup.elapsed().as_secs_f64()
    );

    // The databases both phases change: every active client's, the master's included.
    let control = common::superuser(&cluster, "bench_ctl").await;
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
    let mut claimer = common::superuser(&cluster, "bench_ctl").await;
    let n = databases.len();
    assert_eq!(n, tenants + 1, "active clients (the master included)");
    for t in &databases {
        assert_eq!(app.state.targets().names(t.id).database, t.database);
    }

    let postmaster = cluster.cluster().pid();
    let mut results = Vec::new();
    for round in 0..rounds {
        let mut r = Round::default();
        // The order rotates, so each phase goes first in one round of three.
        let mut phases = ["mandant", "sequential", "parallel", "lean"];
        phases.rotate_left(round % 4);
        r.order = phases.join(", ");
        for phase in phases {
            checkpoint(&admin).await;
            let cpu = CpuSample::now(postmaster);
            if phase == "mandant" {
                let name = format!("bench_central_{round}");
                let (total, post, first) = propagate(&app, &http, &control, &name, n).await;
                r.mandant_cpu = cpu.since();
                (r.mandant, r.post, r.first_applied) = (total, post, first);
                settle(&control).await;
            } else if phase == "parallel" {
                // The same DDL over the same databases, `fanout` at once, nothing else: the floor of any
                // parallel propagation with one connection per database on this machine.
                let sql = format!("ALTER TABLE recipients ADD COLUMN bench_par_{round} bigint");
                let started = Instant::now();
                futures_util::stream::iter(&databases)
                    .for_each_concurrent(usize::from(fanout), |t| {
                        let (cluster, sql) = (&cluster, &sql);
                        async move {
                            let db = common::superuser(cluster, &t.database).await;
                            db.batch_execute(sql).await.expect("ALTER TABLE");
                        }
                    })
                    .await;
                r.parallel = started.elapsed().as_secs_f64();
                r.parallel_cpu = cpu.since();
            } else if phase == "lean" {
                // The reconciler's tenant-side work for one new field in two round trips after connecting (simple
                // query batches, literals instead of parameters), `fanout` at once, no control plane: what the
                // propagation could approach.
                let column = format!("bench_lean_{round}");
                let targets = app.state.targets();
                let started = Instant::now();
                futures_util::stream::iter(&databases)
                    .for_each_concurrent(usize::from(fanout), |t| {
                        let (cluster, column) = (&cluster, &column);
                        async move {
                            let role = targets.names(t.id).role;
                            let db = cluster
                                .cluster()
                                .target(&t.database)
                                .with_application_name("mandant-fields")
                                .connect()
                                .await
                                .expect("connect");
                            let read = db
                                .simple_query(&format!(
                                    "SET ROLE {}; SET lock_timeout = '3s'; BEGIN; \
                                     SELECT pg_advisory_xact_lock({}); \
                                     SELECT name, data_type, length, required, personal FROM field_catalogue \
                                     FOR UPDATE",
                                    quote_ident(&role),
                                    lock_key("mandant.fields")
                                ))
                                .await
                                .expect("lean read");
                            assert!(!read.is_empty());
                            db.batch_execute(&format!(
                                "ALTER TABLE recipients ADD COLUMN IF NOT EXISTS {col} bigint; \
                                 INSERT INTO field_catalogue \
                                     (name, origin, data_type, length, required, default_value, personal) \
                                 VALUES ({name}, 'central', 'integer', NULL, false, NULL, false); COMMIT",
                                col = quote_ident(column),
                                name = quote_literal(column),
                            ))
                            .await
                            .expect("lean write");
                        }
                    })
                    .await;
                r.lean = started.elapsed().as_secs_f64();
                r.lean_cpu = cpu.since();
                cleanup(&cluster, &control, &databases, &column).await;
            } else {
                let sql = format!("ALTER TABLE recipients ADD COLUMN bench_seq_{round} bigint");
                let started = Instant::now();
                for t in &databases {
                    let at = Instant::now();
                    let db = common::superuser(&cluster, &t.database).await;
                    let connected = Instant::now();
                    db.batch_execute(&sql).await.expect("ALTER TABLE");
                    r.sequential_connect += (connected - at).as_secs_f64();
                    r.sequential_alter += connected.elapsed().as_secs_f64();
                }
                r.sequential = started.elapsed().as_secs_f64();
                r.sequential_cpu = cpu.since();
            }
        }

        checkpoint(&admin).await;
        r.hand = by_hand(&app, &control, &mut claimer, &databases, round).await;
        cleanup(
            &cluster,
            &control,
            &databases,
            &format!("bench_hand_{round}"),
        )
        .await;

        eprintln!(
            "round {} ({}): mandant {:.3} s (POST {:.3} s, first applied {:.3} s), sequential loop {:.3} s, \
             parallel loop {:.3} s, lean {:.3} s, by hand {:.3} s",
            round + 1,
            r.order,
            r.mandant,
            r.post,
            r.first_applied,
            r.sequential,
            r.parallel,
            r.lean,
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
    let lines: [(&str, String, Pick); 23] = [
        (
            "mandant",
            format!("mandant: POST /v1/fields → all applied (fan-out {fanout})"),
            |r| r.mandant,
        ),
        ("mandant_post", "  of which POST → 202".into(), |r| r.post),
        (
            "mandant_first_applied",
            "  of which POST → first status recorded applied".into(),
            |r| r.first_applied,
        ),
        (
            "sequential",
            "sequential ALTER TABLE loop (baseline)".into(),
            |r| r.sequential,
        ),
        (
            "sequential_connect",
            "  of which connect (superuser)".into(),
            |r| r.sequential_connect,
        ),
        (
            "sequential_alter",
            "  of which ALTER TABLE (autocommit)".into(),
            |r| r.sequential_alter,
        ),
        (
            "parallel",
            format!("parallel ALTER TABLE loop, {fanout} at once (the floor)"),
            |r| r.parallel,
        ),
        (
            "lean",
            format!("lean reconcile, 2 round trips, {fanout} at once (no control)"),
            |r| r.lean,
        ),
        (
            "hand",
            "by hand: the fan-out job's work, one client at a time".into(),
            |r| r.hand.total,
        ),
        (
            "hand_claim",
            "  claim the job (once, control plane)".into(),
            |r| r.hand.claim,
        ),
        (
            "hand_job_reads",
            "  servers, live clients (once, control plane)".into(),
            |r| r.hand.job_reads,
        ),
        (
            "hand_desired",
            "  desired fields (per client, control plane)".into(),
            |r| r.hand.desired,
        ),
        ("hand_connect", "  connect (tenant db)".into(), |r| {
            r.hand.connect
        }),
        ("hand_set_role", "  SET ROLE, lock_timeout".into(), |r| {
            r.hand.set_role
        }),
        ("hand_begin", "  BEGIN".into(), |r| r.hand.begin),
        (
            "hand_lock",
            "  SELECT pg_advisory_xact_lock($1)".into(),
            |r| r.hand.lock,
        ),
        ("hand_read", "  catalogue read (FOR UPDATE)".into(), |r| {
            r.hand.read
        }),
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
            "  mark applied (batches of 256, control plane)".into(),
            |r| r.hand.mark_applied,
        ),
        (
            "hand_complete",
            "  complete the job (once, control plane)".into(),
            |r| r.hand.complete,
        ),
        ("hand_other", "  (client-side remainder)".into(), |r| {
            let h = &r.hand;
            h.total
                - (h.claim
                    + h.job_reads
                    + h.desired
                    + h.connect
                    + h.set_role
                    + h.begin
                    + h.lock
                    + h.read
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
    let floor = median(&|r| r.sequential) / median(&|r| r.parallel);
    println!(
        "\nspeedup (sequential loop / mandant, medians): {speedup:.2}x (target >= 2); per round: {}",
        paired
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "floor: the bare parallel loop ({fanout} at once) is {floor:.2}x the sequential loop; mandant reaches {:.0}% of it; \
         the lean reconcile is {:.2}x",
        100.0 * speedup / floor,
        median(&|r| r.sequential) / median(&|r| r.lean)
    );
    type CpuPick = fn(&Round) -> Cpu;
    let phases: [(&str, &str, CpuPick); 4] = [
        ("mandant", "mandant", |r| r.mandant_cpu),
        ("sequential", "sequential loop", |r| r.sequential_cpu),
        ("parallel", "parallel loop", |r| r.parallel_cpu),
        ("lean", "lean reconcile", |r| r.lean_cpu),
    ];
    println!(
        "CPU (medians): {:<16} {:>6} {:>8}   ms per tenant: {:>12} {:>10} {:>6} {:>7}",
        "phase", "busy", "iowait", "this process", "PostgreSQL", "other", "total"
    );
    let mut cpu_report = serde_json::Map::new();
    for (key, name, pick) in phases {
        let m = |f: fn(&Cpu) -> f64| median(&|r| f(&pick(r)));
        let per = |f: fn(&Cpu) -> f64| m(f) * 1000.0 / n as f64;
        let (busy, iowait) = (m(|c| c.busy) * 100.0, m(|c| c.iowait) * 100.0);
        let (own, pg, other) = (
            per(|c| c.process_s),
            per(|c| c.postgres_s),
            per(|c| c.other_s()),
        );
        println!(
            "               {name:<16} {busy:>5.0}% {iowait:>7.0}%                 {own:>12.2} {pg:>10.2} {other:>6.2} {:>7.2}",
            own + pg + other
        );
        cpu_report.insert(
            key.to_owned(),
            serde_json::json!({"busy_percent": busy, "iowait_percent": iowait,
                               "ms_per_tenant": {"this_process": own, "postgres": pg, "other": other}}),
        );
    }
    println!(
        "  (this process: the app with its workers and HTTP, and the bench; PostgreSQL: the postmaster and its backends)"
    );
    let disturbed = results
        .iter()
        .flat_map(|r| [r.mandant_cpu, r.sequential_cpu, r.parallel_cpu, r.lean_cpu])
        .any(|c| c.other_s() > 0.1 * c.machine_s);
    if disturbed {
        println!(
            "WARNING: other processes used more than 10% of the CPU during a timed phase: the machine was not quiet"
        );
    }
    println!(
        "workers.concurrency {concurrency}, workers.fanout_concurrency {fanout}, control-plane pool {control_pool} \
         connections (config/test.toml)"
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
            "fanout_concurrency": fanout,
            "control_pool": control_pool,
            "target_speedup": 2.0,
            "speedup": speedup,
            "speedup_per_round": paired,
            "medians": medians,
            "parallel_floor_speedup": floor,
            "lean_speedup": median(&|r| r.sequential) / median(&|r| r.lean),
            "cpu_medians": cpu_report,
            "disturbed_by_other_processes": disturbed,
            "each_round": results.iter().map(|r| serde_json::json!({
                "order": r.order,
                "mandant_s": r.mandant,
                "mandant_post_s": r.post,
                "mandant_first_applied_s": r.first_applied,
                "sequential_s": r.sequential,
                "sequential_connect_s": r.sequential_connect,
                "sequential_alter_s": r.sequential_alter,
                "mandant_cpu": r.mandant_cpu.json(),
                "sequential_cpu": r.sequential_cpu.json(),
                "parallel_s": r.parallel,
                "parallel_cpu": r.parallel_cpu.json(),
                "lean_s": r.lean,
                "lean_cpu": r.lean_cpu.json(),
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

/// Waits (untimed) until no field job is queued or running, so the next phase starts on a quiet system.
async fn settle(control: &Client) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let open: i64 = control
            .query_one(
                "SELECT count(*) FROM jobs
                 WHERE kind IN ('propagate_fields', 'reconcile_fields') AND status IN ('queued', 'running')",
                &[],
            )
            .await
            .expect("jobs")
            .get(0);
        if open == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{open} field jobs still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `propagate_fields` job's work done by hand, one client after the other, each part timed (see the module
/// comment): per job the claim, the server and client lists and the completion; per client the desired-fields read
/// and the tenant-side SQL of `tenant/fields.rs` for one added field (the column `bench_hand_<round>`); per batch
/// the status write.
async fn by_hand(
    app: &common::RunningApp,
    control_db: &Client,
    claimer: &mut Client,
    databases: &[Tenant],
    round: usize,
) -> Hand {
    let control = app.state.control();
    let targets = app.state.targets();
    let lease = app.state.settings().workers.lease();
    let worker = "bench-by-hand";
    // A probe job of a kind the workers never claim (untimed; the real one comes with the POST).
    control_db
        .execute(
            "INSERT INTO jobs (kind, client_id, max_attempts)
             SELECT 'bench_probe', id, 8 FROM clients WHERE kind = 'master'",
            &[],
        )
        .await
        .expect("probe job");
    let kinds = vec!["bench_probe".to_owned()];
    let column = format!("bench_hand_{round}");
    let fields_lock = lock_key("mandant.fields");
    let mut h = Hand::default();
    let all = Instant::now();

    // The claim: the SQL of ControlPlane::claim_job (control/jobs.rs), on the probe job.
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
                 RETURNING id::text, client_id::text, attempts",
                &[&worker, &lease.as_secs_f64(), &kinds],
            )
            .await
            .expect("claim");
        tx.commit().await.expect("commit claim");
        let id: uuid::Uuid = row.get::<_, &str>(0).parse().expect("job id");
        let client: uuid::Uuid = row.get::<_, &str>(1).parse().expect("client id");
        (id, client, row.get::<_, i32>(2))
    };
    h.claim = at.elapsed().as_secs_f64();

    let at = Instant::now();
    let servers = control.list_servers().await.expect("servers");
    let clients = control.all_live_clients().await.expect("clients");
    h.job_reads = at.elapsed().as_secs_f64();
    assert_eq!(clients.len(), databases.len());

    let mut applied = Vec::new();
    for t in databases {
        let at = Instant::now();
        let desired = control.desired_fields(t.id).await.expect("desired");
        h.desired += at.elapsed().as_secs_f64();
        let server = servers.iter().find(|s| s.id == t.server).expect("server");

        let names = targets.names(t.id);
        let target = targets
            .admin_on_tenant(server, t.id)
            .expect("target")
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
        h.begin += at.elapsed().as_secs_f64();
        let at = Instant::now();
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&fields_lock])
            .await
            .expect("lock");
        h.lock += at.elapsed().as_secs_f64();
        let at = Instant::now();
        let catalogue = tx
            .query(
                "SELECT name, data_type, length, required, personal FROM field_catalogue FOR UPDATE",
                &[],
            )
            .await
            .expect("catalogue");
        h.read += at.elapsed().as_secs_f64();
        assert!(catalogue.len() > round, "catalogue of {}", t.database);

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
        applied.extend(desired.iter().map(|f| (t.id, f.id, f.version)));
    }

    // One batched status write (the job writes every 256 entries and at the end).
    let at = Instant::now();
    for batch in applied.chunks(256) {
        control.fields_applied(batch).await.expect("applied");
    }
    h.mark_applied = at.elapsed().as_secs_f64();

    let at = Instant::now();
    let job = Job {
        id: claimed.0,
        kind: JobKind::PropagateFields,
        client_id: Some(claimed.1),
        payload: serde_json::json!({}),
        attempt: claimed.2,
        max_attempts: 8,
        locked_by: worker.to_owned(),
        step: None,
    };
    let result = serde_json::json!({"reconciled": databases.len(), "failed": 0});
    assert!(
        control
            .complete_job(&job, Some(result))
            .await
            .expect("complete"),
        "probe job completed"
    );
    h.complete = at.elapsed().as_secs_f64();
    h.total = all.elapsed().as_secs_f64();
    h
}

/// Removes the catalogue rows of `column` (so no reconcile drops the columns later) and the probe jobs. Untimed.
async fn cleanup(
    cluster: &mandant::embedded::ThrowawayCluster,
    control: &Client,
    databases: &[Tenant],
    column: &str,
) {
    for t in databases {
        let db = common::superuser(cluster, &t.database).await;
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
    process: u64,
    postgres: u64,
    postmaster: Option<u32>,
}

/// The numeric fields of /proc/<pid>/stat after the command name (index 0 = state, 1 = ppid, 11 = utime, ...).
fn proc_stat(pid: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect()
}

/// utime + stime of a process, plus cutime + cstime (its reaped children) when `children`.
fn ticks_of(stat: &[u64], children: bool) -> u64 {
    let at = |i: usize| stat.get(i).copied().unwrap_or(0);
    at(11) + at(12) + if children { at(13) + at(14) } else { 0 }
}

/// CPU ticks of the postmaster (with its reaped backends) and its live children.
fn postgres_ticks(postmaster: Option<u32>) -> u64 {
    let Some(pm) = postmaster else { return 0 };
    let mut sum = ticks_of(&proc_stat(&pm.to_string()), true);
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let stat = proc_stat(pid);
        if stat.get(1).copied() == Some(u64::from(pm)) {
            sum += ticks_of(&stat, false);
        }
    }
    sum
}

impl CpuSample {
    fn now(postmaster: Option<u32>) -> Self {
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
            process: ticks_of(&proc_stat("self"), false),
            postgres: postgres_ticks(postmaster),
            postmaster,
        }
    }

    fn since(&self) -> Cpu {
        let now = Self::now(self.postmaster);
        let total = (now.total - self.total).max(1) as f64;
        // Clock ticks are USER_HZ, 100 per second on Linux.
        Cpu {
            busy: (now.busy - self.busy) as f64 / total,
            iowait: (now.iowait - self.iowait) as f64 / total,
            machine_s: (now.busy - self.busy) as f64 / 100.0,
            process_s: (now.process - self.process) as f64 / 100.0,
            postgres_s: now.postgres.saturating_sub(self.postgres) as f64 / 100.0,
        }
    }
}
