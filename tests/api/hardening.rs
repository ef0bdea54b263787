//! Hardening against an adversarial review of the consistency work (first written as probes that failed): a
//! listener that loses its connection, a slug change, a locked tenant role, worker slots whose session breaks or
//! whose identities are prefixes of each other, clusters not started by this process (`pg_ctl`, a `serve` that
//! is PID 1), and a request racing a resumption.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mandant::embedded::Cluster;
use mandant::server::RunOptions;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{
    TestApp, TestDir, http_client, next_id, spawn_app, spawn_app_with, spawn_app_without_workers,
    superuser, throwaway_spec,
};

const NO_WORKERS: RunOptions = RunOptions { no_workers: true };

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/// Creates a client on an app without workers and drives its jobs until it is active.
async fn active_client_without_workers(app: &TestApp, slug: &str) {
    app.create_client(slug).await;
    let runner = app.runner("probe-runner");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        app.drain(&runner).await;
        let client = app.client_json(slug).await;
        if client["status"] == "active" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{slug} never became active: {client}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one backend of this control database that LISTENs on `channel` and connected at or after `since`.
async fn listener_pid(control: &tokio_postgres::Client, channel: &str, since: &str) -> i32 {
    let query = format!("LISTEN \"{channel}\";");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = control
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
                 AND backend_start >= $1::text::timestamptz AND query = $2",
                &[&since, &query],
            )
            .await
            .unwrap();
        if rows.len() == 1 {
            return rows[0].get(0);
        }
        if Instant::now() >= deadline {
            let all = control
                .query(
                    "SELECT pid, backend_start::text, query FROM pg_stat_activity WHERE datname = current_database()",
                    &[],
                )
                .await
                .unwrap();
            let all: Vec<(i32, Option<String>, Option<String>)> =
                all.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
            panic!(
                "expected one {channel} listener connected since {since}, found {}; backends: {all:?}",
                rows.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Backends of this database whose last statement was the LISTEN on `channel`.
async fn listeners(control: &tokio_postgres::Client, channel: &str) -> Vec<i32> {
    control
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
            &[&format!("LISTEN \"{channel}\";")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Backends of this database waiting for a lock on `table`.
async fn waiting_on(control: &tokio_postgres::Client, table: &str) -> i64 {
    control
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE NOT l.granted AND c.relname = $1
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_waiting(
    control: &tokio_postgres::Client,
    table: &str,
    n: i64,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if waiting_on(control, table).await >= n {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The second process's LISTEN connection on `channel` is lost, and its reconnect has to wait a moment for a slot
/// of its control pool (every slot is busy with requests blocked on a lock of `table`) — as after a control-plane
/// restart, a failover, or a `pg_terminate_backend` on a busy process. The wait is shorter than the pool's acquire
/// timeout, so sqlx's `PgListener::recv` reconnects by itself and `control/listen.rs` never learns of it.
struct Stalled {
    session: tokio_postgres::Client,
    requests: Vec<tokio::task::JoinHandle<Option<StatusCode>>>,
    lost_at: Instant,
    /// Backends LISTENing on the channel before the loss (the lost one among them).
    before: Vec<i32>,
}

async fn lose_listener(
    second: &TestApp,
    channel: &str,
    table: &str,
    blocked_path: &str,
) -> Stalled {
    let session = second.control().await;
    // The second process's listener connected after the first process's (the second process started last).
    let since = session
        .query_one(
            "SELECT max(backend_start)::text FROM pg_stat_activity
             WHERE datname = current_database() AND query = $1",
            &[&format!("LISTEN \"{channel}\";")],
        )
        .await
        .unwrap()
        .get::<_, Option<String>>(0)
        .expect("a listener");
    let pid = listener_pid(&session, channel, &since).await;
    session
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let fire = || {
        let client = second.client.clone();
        let url = second.url(blocked_path);
        tokio::spawn(async move { client.get(url).send().await.ok().map(|r| r.status()) })
    };
    // Occupy every free slot of the second process's control pool (each request blocks on the lock), then queue
    // one more request in the pool (it does not reach the lock).
    let mut requests = Vec::new();
    loop {
        requests.push(fire());
        let n = requests.len() as i64;
        if !wait_waiting(&session, table, n, Duration::from_millis(400)).await {
            break;
        }
        assert!(n < 20, "the pool never filled");
    }
    let blocked = requests.len() as i64 - 1;
    let before = listeners(&session, channel).await;
    session
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let lost_at = Instant::now();
    // The queued request takes the slot the dead listener connection freed; the listener waits behind it.
    // (Under load it may not; the property checked afterwards holds either way.)
    let _ = wait_waiting(&session, table, blocked + 1, Duration::from_secs(1)).await;
    Stalled {
        session,
        requests,
        lost_at,
        before,
    }
}

impl Stalled {
    /// Lets the blocked requests finish; the listener gets a slot and LISTENs again (silently). Returns how long
    /// the listener was away, and checks that it came back without any error path (no `down()`): a new LISTEN
    /// backend exists.
    async fn release(self, channel: &str) -> Duration {
        let away = self.lost_at.elapsed();
        self.session.batch_execute("COMMIT").await.unwrap();
        for request in self.requests {
            let _ = request.await;
        }
        // Reconnected (on a new or an idle pooled connection): a LISTEN backend that was not listening before.
        let deadline = Instant::now() + Duration::from_secs(20);
        while listeners(&self.session, channel)
            .await
            .iter()
            .all(|pid| self.before.contains(pid))
        {
            assert!(Instant::now() < deadline, "the listener did not come back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        away
    }
}

fn is_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn pid_file_pid(pgdata: &Path) -> Option<i32> {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `cmd` as the `postgres` user when this process is root (the embedded cluster runs as that user then).
fn as_cluster_user(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Route cache and principal cache: a lost LISTEN connection that sqlx re-opens by itself
// ---------------------------------------------------------------------------------------------------------------

/// README: "a change made through one is what every other does on its very next request: a suspended or deleted
/// client is refused (409 client_not_active) ... Each process ... serves from its caches only while it is
/// listening." `PgListener::recv` reconnects transparently after an EOF (sqlx 0.9, `eager_reconnect` on), so
/// `control/listen.rs` never calls `down()`/`up()`: a deletion committed while the connection was away is never
/// heard, and the second process serves the deleting client from its cached route for up to 300 s.
#[tokio::test]
async fn a_deleting_client_is_refused_by_a_process_whose_clients_listener_lost_its_connection() {
    let first = spawn_app_without_workers().await;
    let slug = format!("silent-{}", next_id());
    active_client_without_workers(&first, &slug).await;
    let second = first.second_process(NO_WORKERS).await;
    let recipients = format!("/v1/clients/{slug}/recipients");
    // Warm: both processes have the client's route cached (and the admin's principal).
    for _ in 0..3 {
        assert_eq!(first.get(&recipients).await.status(), StatusCode::OK);
        assert_eq!(second.get(&recipients).await.status(), StatusCode::OK);
    }

    let stalled = lose_listener(&second, "mandant_clients", "roles", "/v1/roles").await;
    // Deleted through the first process while the second's listener is away.
    let deleted = first.delete(&format!("/v1/clients/{slug}")).await;
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let away = stalled.release("mandant_clients").await;
    assert_eq!(first.client_json(&slug).await["status"], "deleting");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let read_now = second.get(&recipients).await.status();
    let write = second
        .post_json(&recipients, &json!({"email": "after-delete@example.org"}))
        .await
        .status();
    // Past the listener's ping (10 s): the ping succeeds on the new connection, nothing clears the cache.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let read_later = second.get(&recipients).await.status();
    let first_says = first.get(&recipients).await.status();
    assert!(
        read_now == StatusCode::CONFLICT
            && write == StatusCode::CONFLICT
            && read_later == StatusCode::CONFLICT,
        "the API reported {slug} deleting (first process answers {first_says}), yet the second process served it: \
         GET right after: {read_now}, POST recipient: {write}, GET 11.5 s later: {read_later} (listener away {away:?})"
    );
}

/// Same mechanism for the principal cache: a token revoked through the first process keeps working in the second
/// for up to `auth.cache_ttl_secs` (30 s) after its auth listener silently reconnected.
#[tokio::test]
async fn a_revoked_token_is_refused_by_a_process_whose_auth_listener_lost_its_connection() {
    let first = spawn_app_without_workers().await;
    let second = first.second_process(NO_WORKERS).await;
    let minted = first
        .post_json("/v1/users/admin/tokens", &json!({"name": "probe"}))
        .await;
    assert_eq!(minted.status(), StatusCode::CREATED);
    let minted: serde_json::Value = minted.json().await.unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    let id = minted["id"].as_str().unwrap().to_owned();
    let with_token = http_client(Some(&token));
    for _ in 0..3 {
        let me = with_token.get(second.url("/v1/me")).send().await.unwrap();
        assert_eq!(me.status(), StatusCode::OK);
    }
    // Also warm the admin's principal in the second process (the blocked requests use it).
    assert_eq!(second.get("/v1/me").await.status(), StatusCode::OK);

    let blocked = format!("/v1/operations/{}", uuid::Uuid::new_v4());
    let stalled = lose_listener(&second, "mandant_auth", "jobs", &blocked).await;
    let revoked = first.delete(&format!("/v1/users/admin/tokens/{id}")).await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let away = stalled.release("mandant_auth").await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let in_first = with_token
        .get(first.url("/v1/me"))
        .send()
        .await
        .unwrap()
        .status();
    let in_second = with_token
        .get(second.url("/v1/me"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(in_first, StatusCode::UNAUTHORIZED);
    assert_eq!(
        in_second,
        StatusCode::UNAUTHORIZED,
        "the second process still accepts a token revoked through the first (listener away {away:?})"
    );
}

/// The trigger notifies slug changes, but the payload carries only the new slug: the route cached under the old
/// slug is never dropped, so the old slug keeps routing to the renamed client's database.
#[tokio::test]
async fn a_slug_change_drops_the_route_cached_under_the_old_slug() {
    let app = spawn_app().await;
    let slug = format!("oldslug-{}", next_id());
    app.create_active_client(&slug).await;
    let recipients = format!("/v1/clients/{slug}/recipients");
    for _ in 0..3 {
        assert_eq!(app.get(&recipients).await.status(), StatusCode::OK);
    }
    let renamed = format!("{slug}-x");
    app.control()
        .await
        .execute(
            "UPDATE clients SET slug = $1, updated_at = now() WHERE slug = $2",
            &[&renamed, &slug],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = app.get(&recipients).await.status();
    let new = app
        .get(&format!("/v1/clients/{renamed}/recipients"))
        .await
        .status();
    assert_eq!(new, StatusCode::OK);
    assert_eq!(
        old,
        StatusCode::NOT_FOUND,
        "no client has the slug {slug} any more, yet its cached route is served"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Suspend / resume: the tenant role change has no time bound
// ---------------------------------------------------------------------------------------------------------------

/// `set_suspended` commits the status, then applies NOLOGIN without a statement or lock timeout. A role row locked
/// by another transaction on the tenant server (here: an open `ALTER ROLE`) holds the request until the HTTP
/// request timeout, which answers 503 `request_timeout` although the client is already suspended.
#[tokio::test]
async fn suspend_answers_its_outcome_when_the_tenant_role_is_locked() {
    let app = spawn_app_with(&[("MANDANT__SERVER__REQUEST_TIMEOUT_SECS", "6".into())]).await;
    let slug = format!("lockedrole-{}", next_id());
    let client = app.create_active_client(&slug).await;
    let id: uuid::Uuid = client["id"].as_str().unwrap().parse().unwrap();
    let role = app.state.targets().names(id).role;
    let blocker = superuser("postgres").await;
    blocker
        .batch_execute(&format!("BEGIN; ALTER ROLE \"{role}\" CONNECTION LIMIT 7"))
        .await
        .unwrap();
    let started = Instant::now();
    let answer = app.post(&format!("/v1/clients/{slug}/suspend")).await;
    let took = started.elapsed();
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let now = app.client_json(&slug).await["status"].clone();
    assert!(
        status == StatusCode::OK || now == "active",
        "suspend answered {status} after {took:?} ({body}) while the client is {now}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Worker slots
// ---------------------------------------------------------------------------------------------------------------

/// "Whoever holds slot identity#n is the only process whose jobs are claimed as identity#n/...". The slot is a
/// session lock on an unmonitored connection: when that connection breaks (control-plane restart, idle killer,
/// pg_terminate_backend) the live process keeps claiming as #0, a process started with the same identity takes #0
/// too, and its `reclaim_jobs` ends the leases of the live process's running jobs.
#[tokio::test]
async fn a_process_whose_slot_connection_breaks_takes_a_new_slot_and_no_live_lease_is_ended() {
    let app = spawn_app().await;
    // Master provisioned: no job holds locks of its own any more.
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.client_json("master").await["status"] != "active" {
        assert!(Instant::now() < deadline, "master never became active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let identity = app.settings.worker_identity();
    let control = app.control().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let rows = control
            .query(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .unwrap();
        if rows.len() == 1 {
            break rows[0].get(0);
        }
        assert!(Instant::now() < deadline, "no worker slot lock found");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    control
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    while is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A running job of the live process (its loops claim as `<identity>#0/<pid>-<uuid>`).
    let live_worker = format!("{identity}#0/{}-live", std::process::id());
    control
        .execute(
            "INSERT INTO jobs (kind, status, attempts, lease_until, locked_by)
             VALUES ('propagate_fields', 'running', 1, now() + interval '1 hour', $1)",
            &[&live_worker],
        )
        .await
        .unwrap();
    // The process is alive and healthy.
    assert_eq!(app.get("/v1/me").await.status(), StatusCode::OK);

    // Another process with the same identity starts (a second serve/worker on this host and data directory).
    let slot = app
        .state
        .control()
        .take_worker_slot(&identity)
        .await
        .unwrap();
    let reclaimed = app.state.control().reclaim_jobs(&slot).await.unwrap();
    assert_ne!(
        slot.name,
        format!("{identity}#0"),
        "a second process got the slot of a live process; its reclaim ended {reclaimed} lease(s) of the live one"
    );
}

/// `reclaim_jobs` matches `starts_with(locked_by, slot || '/')`; identities are free text (the default one is a
/// host name and a path), so the slot `a#0` also matches jobs of the identity `a#0/b` (slot `a#0/b#0`).
#[tokio::test]
async fn reclaiming_takes_only_the_jobs_of_its_own_slot() {
    let app = spawn_app_without_workers().await;
    let control = app.state.control();
    let base = format!("host:/srv/probe{}", next_id());
    let other = control
        .take_worker_slot(&format!("{base}#0/b"))
        .await
        .unwrap();
    let live_job = format!("{}/{}-live", other.name, std::process::id());
    app.control()
        .await
        .execute(
            "INSERT INTO jobs (kind, status, attempts, lease_until, locked_by)
             VALUES ('propagate_fields', 'running', 1, now() + interval '1 hour', $1)",
            &[&live_job],
        )
        .await
        .unwrap();
    let mine = control.take_worker_slot(&base).await.unwrap();
    assert_eq!(mine.name, format!("{}#0", base.replace('/', "%2F")));
    let reclaimed = control.reclaim_jobs(&mine).await.unwrap();
    assert_eq!(
        reclaimed, 0,
        "slot {} ended the lease of {live_job}, a job of the live slot {}",
        mine.name, other.name
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Embedded: "orphan" = parent pid 1
// ---------------------------------------------------------------------------------------------------------------

/// Module doc: "Never: ... stops a cluster it did not start." A postmaster started with `pg_ctl start` is
/// daemonised (its parent is pid 1) and healthy; `Cluster::start` takes it for an orphan and sends it SIGINT.
#[tokio::test]
async fn the_embedded_start_adopts_a_cluster_started_with_pg_ctl_and_never_stops_it() {
    let dir = TestDir::new("pgctl");
    let spec = throwaway_spec(dir.path());
    let mut made = Cluster::start(&spec).unwrap();
    let pg_ctl = made.binaries().tool("pg_ctl");
    made.stop();
    drop(made);
    let pgdata = spec.pgdata();
    let options = format!(
        "-c listen_addresses= -c unix_socket_directories={} -c port={}",
        spec.socket_dir().display(),
        spec.port
    );
    let started = as_cluster_user(&pg_ctl)
        .arg("-D")
        .arg(&pgdata)
        .arg("-l")
        .arg(pgdata.join("pg_ctl.log"))
        .arg("-o")
        .arg(&options)
        .args(["-w", "start"])
        .current_dir("/")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(started.success(), "pg_ctl start failed");
    let pid = pid_file_pid(&pgdata).expect("pid file");
    let parent = ppid_of(pid);

    let adopted = Cluster::start(&spec);
    let alive = is_alive(pid);
    let owned = adopted.as_ref().map(|c| c.is_owned()).ok();
    drop(adopted);
    if alive {
        let _ = as_cluster_user(&pg_ctl)
            .arg("-D")
            .arg(&pgdata)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }
    assert!(
        alive && owned == Some(false),
        "the pg_ctl-started postmaster {pid} (parent {parent:?}) was {}; Cluster::start owned={owned:?}",
        if alive {
            "kept"
        } else {
            "stopped by Cluster::start"
        }
    );
}

fn pids_with_parent(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>()
            && ppid_of(pid) == Some(parent)
        {
            found.push(pid);
        }
    }
    found
}

/// The postmaster (not a backend) of `pgdata`, by its command line.
fn postmaster_of(pgdata: &Path) -> Option<i32> {
    let needle = pgdata.display().to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("postgres")) && args.contains(&needle) {
            return Some(pid);
        }
    }
    None
}

/// README: "With the embedded default, a second process on the same data directory uses the cluster of the first
/// while the first runs." In a container whose entrypoint is `mandant serve` (pid 1), the serve's postmaster has
/// parent pid 1, so a CLI command run beside it (`docker exec ... mandant tenants list`) takes it for an orphan
/// and shuts it down.
#[tokio::test]
async fn a_cli_command_beside_a_serve_running_as_pid_1_leaves_its_postgres_running() {
    let cwd = TestDir::new("pid1");
    let data: PathBuf = cwd.path().join("data");
    let pgdata = data.join("pg");
    let mandant = env!("CARGO_BIN_EXE_mandant");
    let data_s = data.display().to_string();
    let env: [(&str, &str); 5] = [
        ("MANDANT__EMBEDDED__DATA_DIR", &data_s),
        ("MANDANT__EMBEDDED__FSYNC", "false"),
        ("MANDANT__SERVER__LISTEN", "127.0.0.1:0"),
        (
            "MANDANT__AUTH__BOOTSTRAP_TOKEN",
            "mdt_pid1-probe-token-0123456789abcdef",
        ),
        ("MANDANT__LOG__LEVEL", "warn"),
    ];
    let clean = |command: &mut Command| {
        for (key, _) in std::env::vars() {
            if key.starts_with("MANDANT__") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.envs(env).current_dir(cwd.path());
    };
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(mandant)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    clean(&mut unshare);
    let mut serve = unshare.spawn().expect("unshare");
    let deadline = Instant::now() + Duration::from_secs(90);
    let (serve_pid, postmaster) = loop {
        let children = pids_with_parent(serve.id() as i32);
        let ready = std::fs::read_to_string(pgdata.join("postmaster.pid"))
            .map(|t| t.lines().nth(7).map(str::trim) == Some("ready"))
            .unwrap_or(false);
        if let (Some(&serve_pid), Some(postmaster), true) =
            (children.first(), postmaster_of(&pgdata), ready)
        {
            break (serve_pid, postmaster);
        }
        assert!(
            Instant::now() < deadline,
            "serve as pid 1 did not start its cluster"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let the serve finish its start (migrations, bootstrap).
    std::thread::sleep(Duration::from_secs(5));
    assert!(is_alive(postmaster));

    let mut nsenter = Command::new("nsenter");
    nsenter
        .args(["--target", &serve_pid.to_string(), "--pid", "--mount", "--"])
        .arg(mandant)
        .args(["tenants", "list"]);
    clean(&mut nsenter);
    let cli = nsenter.output().expect("nsenter");
    let alive = is_alive(postmaster);

    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve_pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    while serve.try_wait().ok().flatten().is_none() && Instant::now() < stop_deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(
        alive,
        "`mandant tenants list` beside a serve running as pid 1 stopped the serve's PostgreSQL (pid {postmaster}); \
         CLI exit {:?}, stderr:\n{}",
        cli.status.code(),
        String::from_utf8_lossy(&cli.stderr)
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Resume: a request racing the resumption trips the routing pool's breaker
// ---------------------------------------------------------------------------------------------------------------

/// README: "a resumed or newly active one is served" on the next request. Resume commits `active`, then applies
/// LOGIN; a request that reads `active` in between connects while the role is still NOLOGIN, gets 28000 and trips
/// the tenant's breaker. Nothing resets the breaker on resume (`status_changed`/`notified` close the pool only for
/// a non-active status), so after resume has answered 200 the client is refused with 503 for the whole cooldown
/// (`routing.breaker_cooldown_ms`, 2 s by default, as here).
#[tokio::test]
async fn a_resumed_client_is_served_right_after_resume_answered() {
    let app = spawn_app_with(&[("MANDANT__ROUTING__BREAKER_COOLDOWN_MS", "2000".into())]).await;
    let slug = format!("raceresume-{}", next_id());
    app.create_active_client(&slug).await;
    let recipients = format!("/v1/clients/{slug}/recipients");
    let mut seen = Vec::new();
    for round in 0..5 {
        assert_eq!(
            app.post(&format!("/v1/clients/{slug}/suspend"))
                .await
                .status(),
            StatusCode::OK
        );
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hammers: Vec<_> = (0..4)
            .map(|_| {
                let (client, url, stop) = (app.client.clone(), app.url(&recipients), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = client.get(&url).send().await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let resumed = app
            .post(&format!("/v1/clients/{slug}/resume"))
            .await
            .status();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for hammer in hammers {
            let _ = hammer.await;
        }
        assert_eq!(resumed, StatusCode::OK);
        let after = app.get(&recipients).await;
        let status = after.status();
        let body = after.text().await.unwrap_or_default();
        seen.push(format!("round {round}: {status} {body}"));
        if status != StatusCode::OK {
            break;
        }
    }
    assert!(
        seen.iter().all(|s| s.contains(" 200 OK ")),
        "a request right after resume answered 200 was refused:\n{}",
        seen.join("\n")
    );
}
