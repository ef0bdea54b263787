//! The test harness: one throwaway PostgreSQL cluster per test binary (started on first use with the same code
//! as the embedded default, fsync off), a fresh control database and tenant-database prefix per test, and the real
//! application on port 0. Nothing needs to be running beforehand.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use deadpool_postgres::tokio_postgres;
use mandant::app::{Application, RunOptions};
use mandant::config::{LoadOptions, Settings, TEST_TOML};
use mandant::db::PgTarget;
use mandant::embedded::{Cluster, ClusterSpec};
use tokio::sync::oneshot;

/// Test directories older than this whose cluster is not running are left-overs of killed runs.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// A directory under the system temp dir, searchable by the `postgres` user, removed on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Self {
        let root = test_root();
        let path = root.join(format!("{tag}-{}-{}", std::process::id(), next_id()));
        std::fs::create_dir_all(&path).expect("create test dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("open test dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn test_root() -> PathBuf {
    let root = std::env::temp_dir().join("mandant-tests");
    std::fs::create_dir_all(&root).expect("create test root");
    let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755));
    root
}

/// Removes directories of earlier, killed test runs (their cluster no longer runs).
fn remove_stale_test_dirs() {
    let Ok(entries) = std::fs::read_dir(test_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        let running = std::fs::read_to_string(path.join("pg/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if old && !running {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
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

struct SharedCluster {
    cluster: Cluster,
    _dir: TestDir,
}

/// The cluster shared by every test of this binary; it stops when the test process exits (the postmaster's
/// parent-death signal fires) and its directory is removed by a later run.
pub fn cluster() -> &'static Cluster {
    static SHARED: OnceLock<SharedCluster> = OnceLock::new();
    &SHARED
        .get_or_init(|| {
            init_logging();
            remove_stale_test_dirs();
            let dir = TestDir::new("shared");
            let cluster = Cluster::start(&throwaway_spec(dir.path())).expect("start test cluster");
            SharedCluster { cluster, _dir: dir }
        })
        .cluster
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

/// The application under test, running on port 0 against its own control database.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub client: reqwest::Client,
    pub control_db: String,
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts the app with extra `MANDANT__...` settings on top of the per-test ones.
pub async fn spawn_app_with(extra: &[(&str, String)]) -> TestApp {
    let control_db = unique("ctl_");
    let mut env = vec![
        (
            "MANDANT__DATABASE__URL",
            cluster().target(&control_db).to_url().expose().to_owned(),
        ),
        ("MANDANT__TENANTS__DB_PREFIX", unique("t")),
        ("MANDANT__TENANTS__TEMPLATE_DB", unique("tpl_")),
    ];
    env.extend(extra.iter().cloned());
    let settings = test_settings(&env);
    let app = Application::build(settings.clone(), RunOptions::default())
        .await
        .expect("build app");
    let addr = app.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        addr,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        control_db,
        settings,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET request")
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
        // Drop what this test made. Async work cannot run in Drop, so use a small runtime on its own thread.
        let db = self.control_db.clone();
        let target = cluster().target("postgres");
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(client) = target.connect().await {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
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
