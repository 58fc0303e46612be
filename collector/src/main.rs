//! cmdb-collector command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use cmdb_collector::config::CollectorConfig;
use cmdb_collector::pki::Pki;
use cmdb_collector::tokens::{Role, Tokens};
use cmdb_collector::{quickstart, serve};

#[derive(Parser)]
#[command(
    name = "cmdb-collector",
    version,
    about = "cmdb collector: ingest, CMDB store, API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct DataDir {
    /// The collector's data directory (store, PKI, tokens).
    #[arg(long, env = "CMDB_DATA_DIR", default_value = "/var/lib/cmdb/collector")]
    data_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the collector.
    Serve {
        #[arg(long, default_value = "/etc/cmdb/collector.toml")]
        config: PathBuf,
    },
    /// A collector with a fresh PKI and the embedded store, plus a local agent.
    Quickstart {
        /// Keep state here (default ~/.local/share/cmdb-quickstart); a second run resumes.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// gRPC port for agents (0 = any free port).
        #[arg(long, default_value_t = 0)]
        grpc_port: u16,
        /// HTTP API port (0 = any free port).
        #[arg(long, default_value_t = 0)]
        http_port: u16,
        /// The cmdb-agent binary (default: next to this one, then $PATH).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// Watch globs for the local agent's file CIs (default: the agent's defaults).
        #[arg(long = "watch", value_name = "GLOB")]
        watch: Vec<String>,
        /// Host root for the local agent.
        #[arg(long)]
        host_root: Option<PathBuf>,
    },
    /// Certificate authority.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// API tokens (bearer tokens with a role).
    ApiToken {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
    /// Agents.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the CA and the server certificate.
    Init {
        #[command(flatten)]
        data: DataDir,
        /// DNS names and IP addresses agents use to reach this collector.
        #[arg(long = "server-name", default_values_t = vec!["localhost".to_owned(), "127.0.0.1".to_owned()])]
        server_names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an enrollment token.
    Create {
        #[command(flatten)]
        data: DataDir,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid (e.g. 1h, 7d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Create an API token.
    Create {
        #[command(flatten)]
        data: DataDir,
        #[arg(long)]
        name: String,
        /// viewer, operator, change-manager, auditor or admin.
        #[arg(long, default_value = "viewer")]
        role: Role,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Revoke an agent: its streams are refused from now on.
    Revoke {
        #[command(flatten)]
        data: DataDir,
        /// The agent id (agt-…).
        id: String,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CMDB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// jemalloc instead of glibc's malloc. Under the ingest load (many streams decoding,
/// applying and acknowledging batches on 2 cores) glibc's malloc and free were ~40 % of the
/// collector's CPU samples (`perf`: `_int_malloc`, `_int_free`, `malloc_consolidate`,
/// arena locks); with jemalloc's per-thread caches and size classes the allocator is ~8 %
/// and ingest ~1.5x faster (docs/BENCHMARKS.md, "Fleet simulator", 2026-12-06). Its per-arena dirty pages are
/// given back to the system after `dirty_decay_ms` (10 s by default; tunable through the
/// `_RJEM_MALLOC_CONF` environment variable, docs/OPERATIONS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Most threads of tokio's blocking pool (store writes, judgment, reports); tokio's default
/// is 512, which a connect storm of thousands of agents filled, each thread with its stack.
const MAX_BLOCKING_THREADS: usize = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cmdb-collector: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = match CollectorConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("cmdb-collector: {e}");
                    return Ok(ExitCode::from(64));
                }
            };
            runtime()?.block_on(serve::serve(cfg, serve::termination(), |_| {}))?;
        }
        Command::Quickstart {
            dir,
            grpc_port,
            http_port,
            agent_bin,
            watch,
            host_root,
        } => {
            let opts = quickstart::QuickstartOptions {
                dir: dir.unwrap_or_else(quickstart::default_dir),
                grpc_port,
                http_port,
                agent_bin,
                watch,
                host_root,
            };
            runtime()?.block_on(quickstart::run(opts))?;
        }
        Command::Pki {
            command: PkiCommand::Init { data, server_names },
        } => {
            cmdb_collector::tls::install_crypto_provider();
            let pki = Pki::init(&serve::pki_dir(&data.data_dir), &server_names)?;
            println!("CA created in {}", serve::pki_dir(&data.data_dir).display());
            println!("CA fingerprint (sha256): {}", pki.ca_fingerprint());
        }
        Command::Token {
            command: TokenCommand::Create { data, uses, ttl },
        } => {
            let tokens = Tokens::open(&data.data_dir)?;
            let pki = Pki::open(&serve::pki_dir(&data.data_dir))?;
            let token = tokens.create_enrollment(uses, ttl, SystemTime::now())?;
            println!("{token}");
            eprintln!(
                "enroll with: cmdb-agent enroll --collector https://<collector>:7443 --token {token} --ca-sha256 {}",
                pki.ca_fingerprint()
            );
        }
        Command::ApiToken {
            command: ApiTokenCommand::Create { data, name, role },
        } => {
            let tokens = Tokens::open(&data.data_dir)?;
            println!("{}", tokens.create_api_token(&name, role)?);
        }
        Command::Agent {
            command: AgentCommand::Revoke { data, id },
        } => {
            let pki = Pki::open(&serve::pki_dir(&data.data_dir))?;
            pki.revoke(&id)?;
            println!("revoked {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
