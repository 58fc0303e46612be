//! cmdb-collector: the service that turns agent observations into a CMDB.
//!
//! This is a skeleton: ingest, identification, the store and the HTTP API arrive with the
//! transport issue. Today it only proves the protocol crate links and reports its version.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cmdb-collector", version, about = "cmdb collector (skeleton)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the inventory schema this collector accepts.
    Schema,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Schema => println!("{}", cmdb_proto::model::SCHEMA),
    }
    Ok(())
}
