//! The binary itself: `serve` on the embedded cluster from nothing, SIGTERM, restart; configuration errors.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::helpers::{TestDir, mandant_command};

/// A `mandant serve` child with its JSON log lines collected on a thread.
pub(crate) struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Served {
    fn start(cwd: &Path, data_dir: &Path) -> Self {
        Self::start_at(cwd, data_dir, "info")
    }

    fn start_at(cwd: &Path, data_dir: &Path, level: &str) -> Self {
        Self::start_with(cwd, data_dir, level, &[])
    }

    pub(crate) fn start_with(
        cwd: &Path,
        data_dir: &Path,
        level: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = mandant_command(cwd)
            .arg("serve")
            .envs(env.iter().copied())
            .env("MANDANT__EMBEDDED__DATA_DIR", data_dir)
            .env("MANDANT__EMBEDDED__FSYNC", "false")
            .env("MANDANT__SERVER__LISTEN", "127.0.0.1:0")
            .env("MANDANT__LOG__FORMAT", "json")
            .env("MANDANT__LOG__LEVEL", level)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the log line whose message is `message` and returns its fields.
    fn wait_for(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) else {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!(
                        "mandant exited ({status}) before logging {message:?}:\n{}",
                        self.seen.join("\n")
                    );
                }
                continue;
            };
            self.seen.push(line.clone());
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&line)
                && json["fields"]["message"] == message
            {
                return json["fields"].clone();
            }
        }
        panic!(
            "no {message:?} log line within 60 s:\n{}",
            self.seen.join("\n")
        );
    }

    pub(crate) fn addr(&mut self) -> String {
        self.wait_for("listening")["addr"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// SIGTERM, then the exit status (must come within 60 s).
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mandant did not stop within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postmaster_pid(data_dir: &Path) -> u32 {
    std::fs::read_to_string(data_dir.join("pg/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn serve_comes_up_on_the_embedded_cluster_stops_cleanly_on_sigterm_and_reuses_its_data() {
    let cwd = TestDir::new("serve-cwd");
    let data = cwd.path().join("data");

    let mut served = Served::start(cwd.path(), &data);
    let addr = served.addr();
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let pid = postmaster_pid(&data);

    let status = served.terminate();
    assert!(
        status.success(),
        "exit {status}:\n{}",
        served.seen.join("\n")
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "PostgreSQL ({pid}) left running"
    );
    assert!(!data.join("pg/postmaster.pid").exists());
    let log = served.seen.join("\n");
    assert!(
        log.contains("creating the embedded PostgreSQL cluster"),
        "{log}"
    );
    assert!(log.contains("shutdown complete"), "{log}");

    // Second start: same data directory, no initdb.
    let mut again = Served::start(cwd.path(), &data);
    let addr = again.addr();
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    assert!(again.terminate().success());
    let log = again.seen.join("\n");
    assert!(
        !log.contains("creating the embedded PostgreSQL cluster"),
        "{log}"
    );
}

#[tokio::test]
async fn a_killed_serve_takes_its_embedded_cluster_down_with_it() {
    let cwd = TestDir::new("kill-cwd");
    let data = cwd.path().join("data");
    let mut served = Served::start(cwd.path(), &data);
    served.addr();
    let pid = postmaster_pid(&data);
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL outlived its killed parent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_configuration_value_exits_2_naming_the_key() {
    let cwd = TestDir::new("badcfg");
    let out = mandant_command(cwd.path())
        .arg("migrate")
        .env("MANDANT__SERVER__LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.listen"), "{stderr}");
}

#[test]
fn a_missing_config_file_exits_2() {
    let cwd = TestDir::new("nocfg");
    let out = mandant_command(cwd.path())
        .args(["--config", "missing.toml", "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[tokio::test]
async fn first_serve_prints_the_generated_admin_token_once_and_no_token_ever_reaches_the_log() {
    use std::os::unix::fs::PermissionsExt;
    let cwd = TestDir::new("serve-token");
    let data = cwd.path().join("data");
    let mut served = Served::start_at(cwd.path(), &data, "debug");
    let addr = served.addr();

    let file = data.join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token mode {mode:o}");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(token.starts_with("mdt_") && token.len() == 47, "{token}");

    let http = crate::helpers::http_client(Some(&token));
    let me: serde_json::Value = http
        .get(format!("http://{addr}/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "admin");
    // A second token, used and revoked, with a debug-level log meanwhile.
    let created: serde_json::Value = http
        .post(format!("http://{addr}/v1/users/admin/tokens"))
        .json(&serde_json::json!({"name": "ci"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let second = created["token"].as_str().unwrap().to_owned();
    let other = crate::helpers::http_client(Some(&second));
    let status = other
        .get(format!("http://{addr}/v1/clients"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, reqwest::StatusCode::OK);
    let id = created["id"].as_str().unwrap();
    http.delete(format!("http://{addr}/v1/users/admin/tokens/{id}"))
        .send()
        .await
        .unwrap();
    let refused = other
        .get(format!("http://{addr}/v1/clients"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(refused, reqwest::StatusCode::UNAUTHORIZED);
    assert!(served.terminate().success());

    // The generated token was printed exactly once (the line for the operator), never in a log record; the
    // second token appears nowhere.
    let printed: Vec<&String> = served.seen.iter().filter(|l| l.contains(&token)).collect();
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert!(
        serde_json::from_str::<serde_json::Value>(printed[0]).is_err(),
        "a log record: {}",
        printed[0]
    );
    assert!(
        !served.seen.iter().any(|l| l.contains(&second)),
        "the second token was logged"
    );

    // A restart creates no second admin and prints nothing.
    let mut again = Served::start(cwd.path(), &data);
    again.addr();
    let status = again.terminate();
    assert!(status.success(), "{status}: {}", again.seen.join("\n"));
    assert!(
        !again.seen.iter().any(|l| l.contains("mdt_")),
        "{:?}",
        again.seen
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
}

/// The bootstrap token of the restart test (at least 32 characters).
const RESTART_TOKEN: &str = "mdt_restart-test-token-0123456789abcdef";

async fn status_of(http: &reqwest::Client, addr: &str, slug: &str) -> String {
    match http
        .get(format!("http://{addr}/v1/clients/{slug}"))
        .send()
        .await
    {
        Ok(response) => response
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|c| c["status"].as_str().map(str::to_owned)),
        Err(_) => None,
    }
    .unwrap_or_default()
}

#[tokio::test]
async fn serve_restarted_at_once_after_kill_9_comes_up_and_finishes_every_provisioning_without_waiting_for_leases()
 {
    let cwd = TestDir::new("restart-cwd");
    let data = cwd.path().join("data");
    // Leases far longer than the test waits: only taking the jobs back at start can finish them in time.
    let env = [
        ("MANDANT__AUTH__BOOTSTRAP_TOKEN", RESTART_TOKEN),
        ("MANDANT__WORKERS__LEASE_SECS", "900"),
    ];
    let mut first = Served::start_with(cwd.path(), &data, "info", &env);
    let addr = first.addr();
    let http = crate::helpers::http_client(Some(RESTART_TOKEN));
    let slugs: Vec<String> = (0..6).map(|i| format!("restart-{i}")).collect();
    let mut operations = Vec::new();
    for slug in &slugs {
        let created = http
            .post(format!("http://{addr}/v1/clients"))
            .json(&serde_json::json!({"slug": slug, "name": slug}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), reqwest::StatusCode::ACCEPTED);
        let body: serde_json::Value = created.json().await.unwrap();
        operations.push(body["operation"].as_str().unwrap().to_owned());
    }
    // Kill -9 while a provisioning runs (as soon as one is seen running).
    let deadline = Instant::now() + Duration::from_secs(30);
    'running: while Instant::now() < deadline {
        for op in &operations {
            let op: serde_json::Value = http
                .get(format!("http://{addr}/v1/operations/{op}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if op["status"] == "running" {
                break 'running;
            }
        }
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // At once, as `Restart=always` would: the killed serve's PostgreSQL is still shutting down.
    let mut second = Served::start_with(cwd.path(), &data, "info", &env);
    let addr = second.addr();
    let deadline = Instant::now() + Duration::from_secs(120);
    for slug in &slugs {
        loop {
            let status = status_of(&http, &addr, slug).await;
            if status == "active" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{slug} is {status:?}, not active, after the restart:\n{}",
                second.seen.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(second.terminate().success());
}
