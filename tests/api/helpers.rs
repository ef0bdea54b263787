//! The test harness: one throwaway PostgreSQL cluster per test binary (started on first use with the same code
//! as the embedded default, fsync off), a fresh control database and tenant-database prefix per test, and the real
//! application on port 0. Nothing needs to be running beforehand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use deadpool_postgres::tokio_postgres;
use mandant::app::AppState;
use mandant::config::{LoadOptions, Settings, TEST_TOML};
use mandant::db::PgTarget;
use mandant::embedded::{Cluster, ClusterSpec, ScratchDir, ThrowawayCluster};
use mandant::server::{Application, RunOptions};
use tokio::sync::oneshot;

/// A scratch directory, removed on drop.
pub struct TestDir(ScratchDir);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        Self(ScratchDir::new(tag).expect("create scratch dir"))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

fn test_root() -> PathBuf {
    ScratchDir::root().expect("scratch root")
}

/// The first admin's token in every test app (`auth.bootstrap_token`); the harness's HTTP client sends it.
pub const ADMIN_TOKEN: &str = "mdt_test-admin-token-for-the-harness-only-0001";

/// An HTTP client that authenticates with `token`.
pub fn http_client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("http client")
}

pub fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A name unique within this test binary run, usable in identifiers.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}_{}", std::process::id(), next_id())
}

/// Settings as the tests use them: defaults, then `config/test.toml`, then `env` (never the process environment).
pub fn test_settings(env: &[(&str, String)]) -> Settings {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    Settings::load(&LoadOptions {
        overlay: Some(TEST_TOML.to_owned()),
        config_dir: None,
        explicit_file: None,
        env,
    })
    .expect("test settings load")
}

/// A cluster spec for a throwaway cluster in `dir`.
pub fn throwaway_spec(dir: &Path) -> ClusterSpec {
    let mut spec = ClusterSpec::from_settings(&test_settings(&[]));
    spec.data_dir = dir.to_path_buf();
    spec
}

/// The cluster shared by every test of this binary; it stops when the test process exits (the postmaster's
/// parent-death signal fires) and its directory is removed by a later run.
pub fn cluster() -> &'static Cluster {
    static SHARED: OnceLock<ThrowawayCluster> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            init_logging();
            ScratchDir::remove_stale();
            ThrowawayCluster::start("shared").expect("start test cluster")
        })
        .cluster()
}

fn init_logging() {
    if std::env::var_os("TEST_LOG").is_some() {
        let settings = test_settings(&[("MANDANT__LOG__LEVEL", "debug".into())]);
        mandant::telemetry::init(&settings.log);
    }
}

/// A superuser connection to `dbname` on the shared cluster.
pub async fn superuser(dbname: &str) -> tokio_postgres::Client {
    cluster()
        .target(dbname)
        .connect()
        .await
        .expect("superuser connection")
}

/// Whether a database role may log in.
pub async fn role_can_login(role: &str) -> bool {
    superuser("postgres")
        .await
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("role lookup")
        .get(0)
}

/// The application under test, running on port 0 against its own control database.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    pub control_db: String,
    pub settings: Settings,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// False for a second process on another app's control plane: the first one cleans up.
    owns_databases: bool,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// The app without background workers: the test drives jobs itself with [`TestApp::runner`].
pub async fn spawn_app_without_workers() -> TestApp {
    spawn_app_opts(&[], RunOptions { no_workers: true }).await
}

/// Starts the app with extra `MANDANT__...` settings on top of the per-test ones.
pub async fn spawn_app_with(extra: &[(&str, String)]) -> TestApp {
    spawn_app_opts(extra, RunOptions::default()).await
}

pub async fn spawn_app_opts(extra: &[(&str, String)], options: RunOptions) -> TestApp {
    let control_db = unique("ctl_");
    let mut env = vec![
        (
            "MANDANT__DATABASE__URL",
            cluster().target(&control_db).to_url().expose().to_owned(),
        ),
        ("MANDANT__TENANTS__DB_PREFIX", format!("{}_", unique("t"))),
        ("MANDANT__TENANTS__TEMPLATE_DB", unique("tpl_")),
        ("MANDANT__TENANTS__CREDENTIAL_SECRET", unique("secret-")),
        ("MANDANT__AUTH__BOOTSTRAP_TOKEN", ADMIN_TOKEN.to_owned()),
        (
            "MANDANT__TENANTS__ARCHIVE_DIR",
            test_root().join(unique("archives-")).display().to_string(),
        ),
    ];
    env.extend(extra.iter().cloned());
    start_app(test_settings(&env), control_db, options, true).await
}

async fn start_app(
    settings: Settings,
    control_db: String,
    options: RunOptions,
    owns_databases: bool,
) -> TestApp {
    let app = Application::build(settings.clone(), options)
        .await
        .expect("build app");
    let addr = app.local_addr().expect("local addr");
    let state = app.state().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        client: http_client(Some(ADMIN_TOKEN)),
        control_db,
        settings,
        state,
        stop: Some(stop),
        task: Some(task),
        owns_databases,
    }
}

impl TestApp {
    /// Another `mandant` process on this app's control plane, with the same settings (its own HTTP port, route
    /// cache, routing pool and worker slot), as a second `serve` of a deployment would be.
    pub async fn second_process(&self, options: RunOptions) -> TestApp {
        start_app(
            self.settings.clone(),
            self.control_db.clone(),
            options,
            false,
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request with an optional JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, None).await
    }

    pub async fn patch_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.send(reqwest::Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// `POST /v1/clients` → 202; returns the body.
    pub async fn create_client(&self, slug: &str) -> serde_json::Value {
        let response = self
            .post_json(
                "/v1/clients",
                &serde_json::json!({"slug": slug, "name": format!("Client {slug}")}),
            )
            .await;
        assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
        response.json().await.expect("client body")
    }

    /// Polls an operation until it has finished (succeeded or failed); returns it.
    pub async fn wait_for_operation(&self, id: &str) -> serde_json::Value {
        self.poll_operation(id, |status| status == "succeeded" || status == "failed")
            .await
    }

    /// Polls an operation until it is in `status`; returns it.
    pub async fn wait_for_operation_state(&self, id: &str, status: &str) -> serde_json::Value {
        self.poll_operation(id, |s| s == status).await
    }

    async fn poll_operation(&self, id: &str, done: impl Fn(&str) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let op: serde_json::Value = self
                .get(&format!("/v1/operations/{id}"))
                .await
                .json()
                .await
                .expect("operation body");
            if done(op["status"].as_str().unwrap_or_default()) {
                return op;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "operation {id} stuck: {op}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ends every running job's lease, as if its worker had died long ago.
    pub async fn expire_leases(&self) {
        self.control()
            .await
            .execute(
                "UPDATE jobs SET lease_until = now() - interval '1 second' WHERE status = 'running'",
                &[],
            )
            .await
            .expect("expire leases");
    }

    /// The `mandant` binary configured for this app's control plane and names.
    pub fn command(&self, cwd: &Path) -> std::process::Command {
        let tenants = &self.settings.tenants;
        let mut command = mandant_command(cwd);
        command
            .env(
                "MANDANT__DATABASE__URL",
                self.control_target().to_url().expose(),
            )
            .env("MANDANT__TENANTS__DB_PREFIX", &tenants.db_prefix)
            .env("MANDANT__TENANTS__TEMPLATE_DB", &tenants.template_db)
            .env(
                "MANDANT__TENANTS__CREDENTIAL_SECRET",
                tenants.credential_secret.expose(),
            )
            .env("MANDANT__LOG__LEVEL", "error");
        command
    }

    /// Creates a client and waits until it is active; returns the client body.
    pub async fn create_active_client(&self, slug: &str) -> serde_json::Value {
        let created = self.create_client(slug).await;
        let op = self
            .wait_for_operation(created["operation"].as_str().expect("operation id"))
            .await;
        assert_eq!(op["status"], "succeeded", "{op}");
        let client = self.client_json(slug).await;
        assert_eq!(client["status"], "active", "{client}");
        client
    }

    /// A recipient created through the API in the client `slug` (`body`: its fields); its id.
    pub async fn create_recipient(&self, slug: &str, body: &serde_json::Value) -> i64 {
        let created = self
            .post_json(&format!("/v1/clients/{slug}/recipients"), body)
            .await;
        json_body(created, reqwest::StatusCode::CREATED).await["id"]
            .as_i64()
            .expect("recipient id")
    }

    /// `GET /v1/clients/{slug}` as JSON.
    pub async fn client_json(&self, slug: &str) -> serde_json::Value {
        self.get(&format!("/v1/clients/{slug}"))
            .await
            .json()
            .await
            .expect("client body")
    }

    /// A job runner for this app's control plane, for tests that drive jobs themselves.
    pub fn runner(&self, worker: &str) -> mandant::workers::JobRunner {
        mandant::workers::JobRunner::new(&self.state, worker)
    }

    /// Runs jobs with `runner` until none is due.
    pub async fn drain(&self, runner: &mandant::workers::JobRunner) -> Vec<mandant::workers::Tick> {
        let mut ticks = Vec::new();
        loop {
            match runner.tick().await.expect("tick") {
                mandant::workers::Tick::Idle => return ticks,
                tick => ticks.push(tick),
            }
        }
    }

    /// Scalar query on the control database.
    pub async fn control_i64(&self, sql: &str) -> i64 {
        self.control()
            .await
            .query_one(sql, &[])
            .await
            .expect("control query")
            .get(0)
    }

    /// A client's id, by slug.
    pub async fn client_id(&self, slug: &str) -> uuid::Uuid {
        self.client_json(slug).await["id"]
            .as_str()
            .expect("client id")
            .parse()
            .expect("uuid")
    }

    /// Takes a client's database down as an outage would: it refuses new connections, its sessions end, and this
    /// process's pooled connections to it are closed. Returns the database name.
    pub async fn take_down(&self, slug: &str) -> String {
        let id = self.client_id(slug).await;
        let database = self.state.targets().names(id).database;
        let admin = superuser("postgres").await;
        admin
            .batch_execute(&format!(
                "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false"
            ))
            .await
            .expect("refuse connections");
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&database],
            )
            .await
            .expect("end sessions");
        self.state.pools().close_tenant(id);
        database
    }

    /// Brings a database [`Self::take_down`] took down back up.
    pub async fn bring_up(&self, slug: &str) {
        let id = self.client_id(slug).await;
        let database = self.state.targets().names(id).database;
        superuser("postgres")
            .await
            .batch_execute(&format!(
                "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true"
            ))
            .await
            .expect("accept connections");
    }

    /// A client's own database, as superuser (for assertions on state and for sabotage).
    pub async fn tenant_db(&self, slug: &str) -> tokio_postgres::Client {
        let id = self.client_id(slug).await;
        superuser(&self.state.targets().names(id).database).await
    }

    /// Scalar query on a client's own database (as superuser).
    pub async fn tenant_i64(&self, slug: &str, sql: &str) -> i64 {
        self.tenant_db(slug)
            .await
            .query_one(sql, &[])
            .await
            .expect("tenant query")
            .get(0)
    }

    /// The routing-pool route of an active client, as the data plane would build it.
    pub async fn route(&self, slug: &str) -> mandant::tenant::pool::TenantRoute {
        let slug = mandant::domain::ClientSlug::parse(slug).expect("slug");
        let control = self.state.control();
        let client = control.client_by_slug(&slug).await.expect("client");
        let server = control
            .server(client.server_id.expect("placed"))
            .await
            .expect("server");
        mandant::tenant::pool::TenantRoute {
            client_id: client.id,
            server_id: server.id,
            server: server.name.clone(),
            budget: None,
            target: self
                .state
                .targets()
                .tenant(&server, client.id)
                .expect("tenant target"),
        }
    }

    /// Sends `body` with a content type, e.g. an import.
    pub async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// The control database, as superuser (for assertions on state and for sabotage).
    pub async fn control(&self) -> tokio_postgres::Client {
        superuser(&self.control_db).await
    }

    pub fn control_target(&self) -> PgTarget {
        cluster().target(&self.control_db)
    }

    /// Runs the ordered shutdown and returns its result.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("app task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if !self.owns_databases {
            return;
        }
        // Drop what this test made. Async work cannot run in Drop, so use a small runtime on its own thread.
        let db = self.control_db.clone();
        let prefix = self.settings.tenants.db_prefix.clone();
        let template = self.settings.tenants.template_db.clone();
        let target = cluster().target("postgres");
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(client) = target.connect().await else {
                    return;
                };
                let pattern = format!("{}%", prefix.replace('_', "\\_"));
                let mut databases: Vec<String> = client
                    .query(
                        "SELECT datname FROM pg_database WHERE datname LIKE $1 OR datname = $2",
                        &[&pattern, &template],
                    )
                    .await
                    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                    .unwrap_or_default();
                databases.push(db);
                for database in databases {
                    let _ = client
                        .batch_execute(&format!("ALTER DATABASE \"{database}\" IS_TEMPLATE false"))
                        .await;
                    let _ = client
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                        ))
                        .await;
                }
                let roles: Vec<String> = client
                    .query(
                        "SELECT rolname FROM pg_roles WHERE rolname LIKE $1",
                        &[&pattern],
                    )
                    .await
                    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                    .unwrap_or_default();
                for role in roles {
                    let _ = client
                        .batch_execute(&format!("DROP ROLE IF EXISTS \"{role}\""))
                        .await;
                }
            });
        })
        .join();
    }
}

/// The JSON body of a response that must have `expected` status (the body is shown when it has not).
pub async fn json_body(
    response: reqwest::Response,
    expected: reqwest::StatusCode,
) -> serde_json::Value {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(status, expected, "{body}");
    body
}

/// Reads the error shape `{"error": {"code", "message"}}` and returns the code.
pub async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "error without a message: {body}");
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
        .to_owned()
}

/// The `mandant` binary built by cargo for this test run, with no `MANDANT__` variables inherited and run from
/// `cwd` (so a developer's config/local.toml cannot leak in).
pub fn mandant_command(cwd: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mandant"));
    for (key, _) in std::env::vars() {
        if key.starts_with("MANDANT__") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.current_dir(cwd);
    command
}

/// A further database server for a test: a throwaway cluster listening on TCP at `localhost` on a free port
/// (`ThrowawayCluster::start_tcp`), optionally with TLS. Roles are made through its socket (superuser, no
/// password); over TCP every role logs in with its password (scram-sha-256).
pub struct ExtraServer {
    cluster: ThrowawayCluster,
    pub port: u16,
}

impl ExtraServer {
    pub async fn start(tag: &str, tls: Option<mandant::embedded::TlsFiles>) -> Self {
        let tag = tag.to_owned();
        let cluster = tokio::task::spawn_blocking(move || {
            ThrowawayCluster::start_tcp(&tag, tls.as_ref()).expect("start an extra cluster on TCP")
        })
        .await
        .expect("cluster start task");
        let port = cluster.tcp_port().expect("a TCP port");
        Self { cluster, port }
    }

    /// As [`Self::start`] with more server settings (`wal_level = replica`).
    pub async fn start_with(tag: &str, settings: &'static [(&'static str, &'static str)]) -> Self {
        let tag = tag.to_owned();
        let cluster = tokio::task::spawn_blocking(move || {
            ThrowawayCluster::start_tcp_with(&tag, None, settings)
                .expect("start an extra cluster on TCP")
        })
        .await
        .expect("cluster start task");
        let port = cluster.tcp_port().expect("a TCP port");
        Self { cluster, port }
    }

    /// The superuser through the socket.
    pub async fn superuser(&self) -> tokio_postgres::Client {
        self.superuser_on("postgres").await
    }

    /// The superuser on one database of the extra cluster, through the socket.
    pub async fn superuser_on(&self, dbname: &str) -> tokio_postgres::Client {
        self.cluster
            .cluster()
            .target(dbname)
            .connect()
            .await
            .expect("superuser connection to the extra cluster")
    }

    /// Stops the cluster at once (fast shutdown), as a server going down.
    pub fn stop(&mut self) {
        self.cluster.stop();
    }

    /// Creates a login role with `password` and `options` (e.g. `SUPERUSER`, `CREATEDB CREATEROLE`, or none) and
    /// returns its URL over TCP to `host` with the query (`sslmode=...`), e.g. `localhost`, `127.0.0.1`.
    pub async fn admin_url(
        &self,
        role: &str,
        password: &str,
        options: &str,
        host: &str,
        query: &str,
    ) -> String {
        self.superuser()
            .await
            .batch_execute(&format!(
                "DROP ROLE IF EXISTS \"{role}\"; CREATE ROLE \"{role}\" LOGIN {options} PASSWORD '{password}'"
            ))
            .await
            .expect("create the admin role");
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!(
            "postgres://{role}:{password}@{host}:{}/postgres{query}",
            self.port
        )
    }

    /// A superuser query on the extra cluster, for a count.
    pub async fn i64(&self, sql: &str) -> i64 {
        self.superuser()
            .await
            .query_one(sql, &[])
            .await
            .expect("query on the extra cluster")
            .get(0)
    }
}
