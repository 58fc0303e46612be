//! cmdb-collector command line.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cmdb-collector", version, about = "cmdb collector")]
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
