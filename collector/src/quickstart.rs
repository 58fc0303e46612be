//! `cmdb-collector quickstart`: a collector on this machine with the embedded store and a
//! fresh PKI, plus a local agent enrolled against it, in one command.
//!
//! Layout of `--dir DIR` (kept between runs; a second run resumes with the same data):
//! `DIR/collector/` (store, pki, tokens), `DIR/agent/` (the agent's key, certificate, outbox,
//! `agent.toml`), `DIR/quickstart.json` (`api_url`, `admin_token`, `grpc_url`) for scripts
//! and `cmdbctl --quickstart-dir DIR`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::CollectorConfig;
use crate::pki::Pki;
use crate::serve::{self, ListenAddrs};
use crate::tokens::{Role, Tokens};

/// What quickstart needs to start.
#[derive(Debug, Clone)]
pub struct QuickstartOptions {
    pub dir: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
    /// The cmdb-agent binary (default: next to this executable, then $PATH).
    pub agent_bin: Option<PathBuf>,
    /// Extra watch globs for the local agent (tests point it at a temp dir).
    pub watch: Vec<String>,
    /// Agent host root (tests use fixture trees).
    pub host_root: Option<PathBuf>,
}

/// A quickstart that could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    /// Files in the quickstart directory.
    #[error("{path}: {message}")]
    Files { path: PathBuf, message: String },
    /// PKI or tokens.
    #[error("{0}")]
    Setup(String),
    /// The local agent could not be enrolled or started.
    #[error("local agent: {0}")]
    Agent(String),
    /// The collector failed.
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
}

/// `DIR/quickstart.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QuickstartInfo {
    pub api_url: String,
    pub admin_token: String,
    pub grpc_url: String,
    pub data_dir: PathBuf,
}

fn files_err(path: &Path, e: impl std::fmt::Display) -> QuickstartError {
    QuickstartError::Files {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// The default quickstart directory: `$XDG_DATA_HOME/cmdb-quickstart` or
/// `~/.local/share/cmdb-quickstart`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir)
        .join("cmdb-quickstart")
}

fn agent_binary(explicit: Option<&Path>) -> Result<PathBuf, QuickstartError> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let sibling = dir.join("cmdb-agent");
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    Ok(PathBuf::from("cmdb-agent"))
}

/// Prepares the collector side (PKI, admin token) once; returns the admin token.
fn prepare_collector(data_dir: &Path, info_path: &Path) -> Result<String, QuickstartError> {
    std::fs::create_dir_all(data_dir).map_err(|e| files_err(data_dir, e))?;
    let pki_dir = serve::pki_dir(data_dir);
    if !pki_dir.join("ca.pem").exists() {
        Pki::init(&pki_dir, &["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(|e| QuickstartError::Setup(format!("PKI: {e}")))?;
    }
    if let Ok(text) = std::fs::read_to_string(info_path)
        && let Ok(info) = serde_json::from_str::<QuickstartInfo>(&text)
    {
        return Ok(info.admin_token);
    }
    let tokens =
        Tokens::open(data_dir).map_err(|e| QuickstartError::Setup(format!("tokens: {e}")))?;
    tokens
        .create_api_token("quickstart-admin", Role::Admin)
        .map_err(|e| QuickstartError::Setup(format!("tokens: {e}")))
}

fn write_info(path: &Path, info: &QuickstartInfo) -> Result<(), QuickstartError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(info).map_err(|e| files_err(path, e))?;
    std::fs::write(&tmp, text).map_err(|e| files_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| files_err(path, e))
}

/// Enrolls the local agent (first run only) and writes its config; returns the config path.
fn prepare_agent(
    opts: &QuickstartOptions,
    data_dir: &Path,
    grpc_url: &str,
) -> Result<PathBuf, QuickstartError> {
    let agent_dir = opts.dir.join("agent");
    std::fs::create_dir_all(&agent_dir).map_err(|e| files_err(&agent_dir, e))?;
    let bin = agent_binary(opts.agent_bin.as_deref())?;
    if !agent_dir.join("cert.pem").exists() {
        let tokens =
            Tokens::open(data_dir).map_err(|e| QuickstartError::Setup(format!("tokens: {e}")))?;
        let token = tokens
            .create_enrollment(1, Duration::from_secs(600), SystemTime::now())
            .map_err(|e| QuickstartError::Setup(format!("tokens: {e}")))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("enroll")
            .args(["--collector", grpc_url, "--token", &token])
            .arg("--ca-file")
            .arg(serve::pki_dir(data_dir).join("ca.pem"))
            .arg("--state-dir")
            .arg(&agent_dir);
        if let Some(root) = &opts.host_root {
            cmd.arg("--host-root").arg(root);
        }
        let status = cmd
            .status()
            .map_err(|e| QuickstartError::Agent(format!("cannot run {}: {e}", bin.display())))?;
        if !status.success() {
            return Err(QuickstartError::Agent(format!(
                "enrollment failed ({status})"
            )));
        }
    }
    let config = agent_dir.join("agent.toml");
    let mut text = format!(
        "# Written by cmdb-collector quickstart on every start.\ncollectors = [{:?}]\nstate_dir = {:?}\n",
        grpc_url,
        agent_dir.display().to_string()
    );
    if let Some(root) = &opts.host_root {
        text.push_str(&format!("host_root = {:?}\n", root.display().to_string()));
    }
    if !opts.watch.is_empty() {
        text.push_str(&format!("\n[watch]\nglobs = {:?}\n", opts.watch));
    }
    std::fs::write(&config, text).map_err(|e| files_err(&config, e))?;
    Ok(config)
}

fn start_agent(opts: &QuickstartOptions, config: &Path) -> Result<Child, QuickstartError> {
    let bin = agent_binary(opts.agent_bin.as_deref())?;
    Command::new(&bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .spawn()
        .map_err(|e| QuickstartError::Agent(format!("cannot start {}: {e}", bin.display())))
}

fn stop_agent(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id())
        && let Some(pid) = rustix::process::Pid::from_raw(pid)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs the quickstart until SIGTERM/SIGINT.
pub async fn run(opts: QuickstartOptions) -> Result<(), QuickstartError> {
    crate::tls::install_crypto_provider();
    let data_dir = opts.dir.join("collector");
    let info_path = opts.dir.join("quickstart.json");
    let admin_token = prepare_collector(&data_dir, &info_path)?;

    let mut cfg = CollectorConfig::with_data_dir(data_dir.clone());
    cfg.grpc_listen.set_port(opts.grpc_port);
    cfg.http_listen.set_port(opts.http_port);
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<ListenAddrs>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve::serve(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        move |addrs| {
            let _ = addr_tx.send(addrs);
        },
    ));
    let addrs = match addr_rx.await {
        Ok(a) => a,
        Err(_) => {
            return match server.await {
                Ok(Err(e)) => Err(e.into()),
                _ => Err(QuickstartError::Setup("collector failed to start".into())),
            };
        }
    };
    let grpc_url = format!("https://127.0.0.1:{}", addrs.grpc.port());
    let api_url = format!("http://{}", addrs.http);
    let info = QuickstartInfo {
        api_url: api_url.clone(),
        admin_token: admin_token.clone(),
        grpc_url: grpc_url.clone(),
        data_dir: opts.dir.clone(),
    };
    write_info(&info_path, &info)?;

    let agent_opts = opts.clone();
    let agent_data = data_dir.clone();
    let agent_grpc = grpc_url.clone();
    let config =
        tokio::task::spawn_blocking(move || prepare_agent(&agent_opts, &agent_data, &agent_grpc))
            .await
            .map_err(|e| QuickstartError::Agent(e.to_string()))??;
    let mut agent = start_agent(&opts, &config)?;

    println!("cmdb quickstart is running (Ctrl-C stops it).");
    println!("  console:      {api_url}/ (log in with the admin token)");
    println!("  API:          {api_url}/api/v1/cis");
    println!("  admin token:  {admin_token}");
    println!("  agents:       {grpc_url} (mTLS)");
    println!("  data:         {}", opts.dir.display());
    println!(
        "  try:          cmdbctl --quickstart-dir {} cis --class package",
        opts.dir.display()
    );

    serve::termination().await;
    tokio::task::spawn_blocking(move || stop_agent(&mut agent))
        .await
        .map_err(|e| QuickstartError::Agent(e.to_string()))?;
    let _ = stop_tx.send(());
    match server.await {
        Ok(r) => r.map_err(QuickstartError::from),
        Err(e) => Err(QuickstartError::Setup(format!("collector task: {e}"))),
    }
}
