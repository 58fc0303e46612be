//! Harness for end-to-end tests: builds and starts the real `cmdb-collector` and
//! `cmdb-agent` binaries on 127.0.0.1 with a real PKI, enrolls agents with real tokens,
//! and reads the CMDB back through the HTTP API. Every wait is bounded.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod raw_agent;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory holding the workspace's debug binaries, built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // Cargo sets the package's variables for the test process (CARGO_PKG_NAME,
        // CARGO_MANIFEST_DIR, …); ring's build script reruns when they change, so
        // inheriting them would rebuild the TLS stack here and again for the next
        // `cargo test`.
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("CARGO_PKG_")
                || key_text.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_BIN_NAME",
                ]
                .contains(&key_text.as_ref())
            {
                build.env_remove(&key);
            }
        }
        let status = build
            .args([
                "build",
                "--quiet",
                "--bins",
                "-p",
                "cmdb-agent",
                "-p",
                "cmdb-collector",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build");
        assert!(status.success(), "building the binaries failed");
        // tests/ → workspace root → target/debug
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target.join("debug")
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("agent/tests/fixtures")
}

/// A free TCP port on 127.0.0.1 (bound then released; the race is acceptable in tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn kill(child: &mut Child, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// A running collector with its data directory: the real binary, or (for tests that need a
/// hook the binary does not expose) the library's `serve_with` on a thread of the test.
pub struct Collector {
    pub dir: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
    pub admin_token: String,
    pub extra_config: String,
    child: Option<Child>,
    in_process: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Collector {
    /// Initialises PKI and an admin token in `dir` and starts the collector.
    pub fn start(dir: &Path) -> Collector {
        Self::start_with(dir, "")
    }

    /// Like [`start`], with extra TOML appended to the config (e.g. "[limits]\n…").
    pub fn start_with(dir: &Path, extra_config: &str) -> Collector {
        let mut c = Self::prepare(dir, extra_config);
        c.restart();
        c
    }

    /// The collector library serving in this process with `agent_config` as its Config hook.
    /// `restart` is not available; `kill9` stops it (gracefully: there is no process to kill).
    pub fn start_in_process(
        dir: &Path,
        agent_config: cmdb_collector::ingest::AgentConfigFn,
    ) -> Collector {
        let mut c = Self::prepare(dir, "");
        let config = c.write_config();
        let cfg = cmdb_collector::config::CollectorConfig::load(&config).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let stop = async move {
                let _ = stop_rx.await;
            };
            let served = rt.block_on(cmdb_collector::serve::serve_with(
                cfg,
                Some(agent_config),
                stop,
                |_| {},
            ));
            if let Err(e) = served {
                eprintln!("in-process collector failed: {e}");
            }
            // Streams still open must not hold the test up.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        c.in_process = Some(stop_tx);
        c.wait_healthy();
        c
    }

    fn prepare(dir: &Path, extra_config: &str) -> Collector {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new(bin("cmdb-collector"))
                .args(["pki", "init", "--data-dir"])
                .arg(dir),
        );
        let admin_token = run_ok(
            Command::new(bin("cmdb-collector"))
                .args([
                    "api-token",
                    "create",
                    "--name",
                    "test-admin",
                    "--role",
                    "admin",
                    "--data-dir",
                ])
                .arg(dir),
        )
        .trim()
        .to_owned();
        Collector {
            dir: dir.to_owned(),
            grpc_port: free_port(),
            http_port: free_port(),
            admin_token,
            extra_config: extra_config.to_owned(),
            child: None,
            in_process: None,
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc_port)
    }

    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki/ca.pem")
    }

    /// (Re)starts the process on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "collector already running");
        assert!(
            self.in_process.is_none(),
            "an in-process collector cannot restart"
        );
        let config = self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("collector.log"))
            .unwrap();
        let child = Command::new(bin("cmdb-collector"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("CMDB_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let url = format!("{}/healthz", self.api());
        wait_for(Duration::from_secs(20), "collector /healthz", || {
            reqwest::blocking::get(&url)
                .ok()
                .filter(|r| r.status().is_success())
        });
    }

    fn write_config(&self) -> PathBuf {
        let config = self.dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\ngrpc_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\n{}",
                self.dir.display().to_string(),
                self.grpc_port,
                self.http_port,
                self.extra_config
            ),
        )
        .unwrap();
        config
    }

    /// SIGKILL: no chance to flush or say goodbye. (An in-process collector is told to stop.)
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, rustix::process::Signal::KILL);
            let _ = c.wait();
        }
        if let Some(stop) = self.in_process.take() {
            let _ = stop.send(());
        }
    }

    /// SIGTERM and wait (bounded) for a graceful exit; `restart` brings it back.
    pub fn stop(&mut self) {
        assert!(
            self.in_process.is_none(),
            "an in-process collector cannot stop and restart"
        );
        if let Some(mut c) = self.child.take() {
            kill(&mut c, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill(&mut c, rustix::process::Signal::KILL);
            let _ = c.wait();
            panic!("collector did not stop within 15 s of SIGTERM");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("collector.log")).unwrap_or_default()
    }

    /// A fresh enrollment token.
    pub fn token(&self, uses: u32, ttl: &str) -> String {
        run_ok(
            Command::new(bin("cmdb-collector"))
                .args([
                    "token",
                    "create",
                    "--uses",
                    &uses.to_string(),
                    "--ttl",
                    ttl,
                    "--data-dir",
                ])
                .arg(&self.dir),
        )
        .trim()
        .to_owned()
    }

    pub fn get(&self, path: &str) -> Value {
        self.get_with(path, &self.admin_token)
    }

    /// `get`, but `None` for 404 Not Found (what was visible before a SIGKILL but not yet
    /// flushed is gone until the agent sends it again: it was never acknowledged).
    pub fn get_if_found(&self, path: &str) -> Option<Value> {
        let resp = reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.api()))
            .bearer_auth(&self.admin_token)
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap();
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        let body: Value = resp.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: {status} {body}");
        Some(body)
    }

    pub fn get_with(&self, path: &str, token: &str) -> Value {
        let resp = reqwest::blocking::Client::new()
            .get(format!("{}{path}", self.api()))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    /// An API token with `role` (viewer, operator, change-manager, auditor, admin).
    pub fn api_token(&self, name: &str, role: &str) -> String {
        run_ok(
            Command::new(bin("cmdb-collector"))
                .args([
                    "api-token",
                    "create",
                    "--name",
                    name,
                    "--role",
                    role,
                    "--data-dir",
                ])
                .arg(&self.dir),
        )
        .trim()
        .to_owned()
    }

    /// Any request with a JSON body (or none); returns the status and the JSON answer.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let client = reqwest::blocking::Client::new();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client
            .request(method, format!("{}{path}", self.api()))
            .bearer_auth(token)
            .timeout(Duration::from_secs(20));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// A request that must succeed (2xx); returns the JSON answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.send(method, path, &self.admin_token, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Every CI matching the query, following pagination.
    pub fn cis(&self, query: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..1000 {
            let mut q = format!("/api/v1/cis?limit=1000&{query}");
            if let Some(a) = &after {
                q.push_str(&format!("&after={a}"));
            }
            let page = self.get(&q);
            out.extend(page["items"].as_array().cloned().unwrap_or_default());
            match page["next_after"].as_str() {
                Some(a) => after = Some(a.to_owned()),
                None => return out,
            }
        }
        panic!("pagination did not end");
    }

    pub fn agents(&self) -> Vec<Value> {
        let v = self.get("/api/v1/agents");
        v.as_array()
            .cloned()
            .or_else(|| v["items"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// The last `n` lines of a log, for failure reports.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- collector log ({}) ---\n{}",
                self.dir.display(),
                tail(&self.log(), 40)
            );
        }
    }
}

/// Agent settings the tests vary.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub host_root: PathBuf,
    pub watch: Vec<String>,
    pub extra: String,
}

/// An enrolled agent with its state directory; started and stopped at will.
pub struct Agent {
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub agent_id: String,
    child: Option<Child>,
}

/// Fast schedules so that tests see things within seconds.
pub const FAST_INTERVALS: &str = "[intervals]\nheartbeat = \"1s\"\nmetrics_sample = \"250ms\"\nmetrics_window = \"1s\"\nfile_debounce = \"100ms\"\nfast = \"60s\"\ninventory = \"1h\"\n";

impl Agent {
    /// Enrolls a new agent (new state dir = new instance) against `collector`.
    pub fn enroll(collector: &Collector, state_dir: &Path, spec: &AgentSpec) -> Agent {
        let token = collector.token(1, "10m");
        let out = run_ok(
            Command::new(bin("cmdb-agent"))
                .args([
                    "enroll",
                    "--collector",
                    &collector.grpc_url(),
                    "--token",
                    &token,
                ])
                .arg("--ca-file")
                .arg(collector.ca_file())
                .arg("--state-dir")
                .arg(state_dir)
                .arg("--host-root")
                .arg(&spec.host_root),
        );
        let agent_id = out
            .split_whitespace()
            .find(|w| w.starts_with("agt-"))
            .expect("agent id in enroll output")
            .to_owned();
        let config = state_dir.join("agent.toml");
        let mut a = Agent {
            state_dir: state_dir.to_owned(),
            config,
            agent_id,
            child: None,
        };
        a.write_config(collector, spec);
        a
    }

    pub fn write_config(&mut self, collector: &Collector, spec: &AgentSpec) {
        let mut text = format!(
            "collectors = [{:?}]\nstate_dir = {:?}\nhost_root = {:?}\n{}\n",
            collector.grpc_url(),
            self.state_dir.display().to_string(),
            spec.host_root.display().to_string(),
            spec.extra,
        );
        if !spec.extra.contains("[intervals]") {
            text.push_str(FAST_INTERVALS);
        }
        text.push_str(&format!("\n[watch]\nglobs = {:?}\n", spec.watch));
        if !spec.extra.contains("[transport]") {
            text.push_str("\n[transport]\nbackoff_initial = \"100ms\"\nbackoff_max = \"1s\"\n");
        }
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state_dir.join("agent.log"))
            .unwrap();
        self.child = Some(
            Command::new(bin("cmdb-agent"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("CMDB_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, rustix::process::Signal::KILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded) for a graceful exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            kill(&mut c, rustix::process::Signal::KILL);
            let _ = c.wait();
            panic!("agent did not stop within 15 s of SIGTERM");
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- agent log ({}) ---\n{}",
                self.agent_id,
                tail(&self.log(), 40)
            );
        }
    }
}

/// Copies a fixture host tree (symlinks kept) into `dst`.
pub fn copy_tree(src: &Path, dst: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dst)
        .status()
        .unwrap();
    assert!(status.success());
}
