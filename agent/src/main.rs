//! cmdb-agent command line.
#![forbid(unsafe_code)]

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cmdb_agent::discover::{self, Context, Options};
use cmdb_agent::hostroot::HostRoot;
use cmdb_agent::{config, enroll, output, state};
use cmdb_proto::model::AgentInfo;

#[derive(Parser)]
#[command(
    name = "cmdb-agent",
    version,
    about = "cmdb agent: discovers configuration items"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Table,
}

#[derive(Subcommand)]
enum Command {
    /// Run the resident agent (discovery, metrics, file watching, delivery).
    Run {
        #[arg(long, default_value = "/etc/cmdb/agent.toml")]
        config: PathBuf,
    },
    /// Enroll with a collector: make a key pair here, send a CSR, keep the certificate.
    Enroll {
        /// The collector's gRPC endpoint, e.g. https://collector.example:7443.
        #[arg(long)]
        collector: String,
        /// An enrollment token from `cmdb-collector token create`.
        #[arg(long, env = "CMDB_ENROLL_TOKEN")]
        token: String,
        /// Trust the collector's CA from this file.
        #[arg(
            long,
            conflicts_with = "ca_sha256",
            required_unless_present = "ca_sha256"
        )]
        ca_file: Option<PathBuf>,
        /// Trust the collector's CA by its sha256 fingerprint (printed by `token create`).
        #[arg(long)]
        ca_sha256: Option<String>,
        #[arg(long, env = "CMDB_STATE_DIR", default_value = "/var/lib/cmdb/agent")]
        state_dir: PathBuf,
        #[arg(long, env = "CMDB_HOST_ROOT", default_value = "/")]
        host_root: PathBuf,
    },
    /// Discover this host once and print the inventory.
    Inventory {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Read /proc, /sys, /etc, /var, /lib and /run under this directory.
        #[arg(long, env = "CMDB_HOST_ROOT", default_value = "/")]
        host_root: PathBuf,
        /// Only these classes, comma-separated (e.g. package,service).
        #[arg(long)]
        only: Option<String>,
        /// Where the agent keeps its instance id.
        #[arg(long, env = "CMDB_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Extra watch globs for `file` CIs (replaces the defaults when given).
        #[arg(long = "watch", value_name = "GLOB")]
        watch: Vec<String>,
    },
}

fn default_state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        PathBuf::from("/var/lib/cmdb/agent")
    } else {
        std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("cmdb-agent")
    }
}

/// `CMDB_LOG` holds comma-separated `level` or `target=level` directives (`debug`,
/// `cmdb_agent::transport=debug,info`); unset, empty or unparsable means `info`. A
/// `Targets` filter rather than `EnvFilter`, whose span and field directives nobody uses
/// here and which links regex into the resident agent (~0.3 MB of code it keeps mapped).
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = std::env::var("CMDB_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .try_init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // A current-thread runtime: discovery, hashing and outbox writes run on blocking
    // threads, the rest is light I/O. Without the multi-thread scheduler (its worker
    // thread, its stack and its code: tokio's `rt-multi-thread` feature is not compiled
    // into the agent) the resident agent is smaller (docs/BENCHMARKS.md, "Resident agent
    // footprint"). The heartbeat cannot be starved by discovery because nothing
    // CPU-bound runs on the runtime thread.
    Ok(tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(4)
        .thread_stack_size(512 * 1024)
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cmdb-agent: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            // glibc gives every thread that allocates its own malloc arena (up to 8 per
            // core), each keeping its own freed memory; two are plenty for the agent.
            cmdb_malloc::bound_arenas(2);
            init_logging();
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cmdb-agent: {e}");
                    return Ok(ExitCode::from(64));
                }
            };
            runtime()?.block_on(cmdb_agent::run::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll {
            collector,
            token,
            ca_file,
            ca_sha256,
            state_dir,
            host_root,
        } => {
            init_logging();
            let ca = match (ca_file, ca_sha256) {
                (Some(f), _) => enroll::CaTrust::File(f),
                (None, Some(h)) => enroll::CaTrust::Sha256(h),
                (None, None) => {
                    eprintln!("cmdb-agent: enroll needs --ca-file or --ca-sha256");
                    return Ok(ExitCode::from(64));
                }
            };
            let instance_id = state::instance_id(&state_dir)?;
            // The identity block needs only the identity collectors (a few ms).
            let ctx = Context {
                root: HostRoot::new(host_root),
                options: Options::default(),
            };
            let only = discover::parse_only("system,os,network_interface")?;
            let agent = AgentInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                instance_id: instance_id.clone(),
            };
            let identity = discover::run(&ctx, agent, Some(&only)).host;
            let opts = enroll::EnrollOptions {
                collector,
                token,
                ca,
                state_dir,
                identity,
                instance_id,
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            };
            cmdb_agent::tls::install_crypto_provider();
            let enrolled = runtime()?.block_on(enroll::enroll(opts))?;
            println!("enrolled as {}", enrolled.agent_id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory {
            format,
            host_root,
            only,
            state_dir,
            watch,
        } => {
            let only = match only.as_deref().map(discover::parse_only).transpose() {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("cmdb-agent: --only: {e}");
                    return Ok(ExitCode::from(64));
                }
            };
            let state_dir = state_dir.unwrap_or_else(default_state_dir);
            let instance_id = match state::instance_id(&state_dir) {
                Ok(id) => id,
                Err(e) => {
                    // One-shot inventory still works without a writable state dir; the
                    // id is then not stable, and we say so.
                    eprintln!("cmdb-agent: warning: {e}; using an unsaved instance id");
                    uuid::Uuid::new_v4().hyphenated().to_string()
                }
            };
            let mut options = Options::default();
            if !watch.is_empty() {
                options.watch_globs = watch;
            }
            let ctx = Context {
                root: HostRoot::new(host_root),
                options,
            };
            let agent = AgentInfo {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                instance_id,
            };
            let inv = discover::run(&ctx, agent, only.as_ref());
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            let written = match format {
                Format::Json => output::write_json(&inv, &mut out),
                Format::Table => output::write_table(&inv, &mut out),
            };
            match written.and_then(|()| out.flush()) {
                Ok(()) => Ok(ExitCode::SUCCESS),
                // A closed pipe (| head) is not an error worth a message.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
                Err(e) => Err(e.into()),
            }
        }
    }
}
