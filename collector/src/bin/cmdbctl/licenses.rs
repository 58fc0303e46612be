//! `cmdbctl licenses …`: the licence routes' arguments and requests. Output goes through
//! [`crate::render_licenses`] as a table, CSV, or the API's JSON.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use cmdb_collector::licenses::entitlements::MAX_IMPORT_BYTES;
use reqwest::Method;
use serde_json::Value;

use crate::cli::Format;
use crate::client::Api;
use crate::render_licenses as render;
use crate::{RunError, print_json};

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum LicensesCommand {
    /// The compliance position per product: entitled, consumed, balance, status.
    Position(PositionArgs),
    /// The normalised software inventory.
    Software(SoftwareArgs),
    /// The stored entitlements.
    Entitlements,
    /// Import entitlements from FILE (.csv as CSV, anything else as JSON); all or nothing.
    Import {
        file: PathBuf,
        /// Replace every stored entitlement instead of merging by key.
        #[arg(long)]
        replace: bool,
    },
    /// Show the normalisation rules (the operator's; --builtin for the built-in ones),
    /// or replace them with --set FILE (JSON `{"rules": [...]}`).
    Rules {
        #[arg(long)]
        builtin: bool,
        #[arg(long, value_name = "FILE", conflicts_with = "builtin")]
        set: Option<PathBuf>,
    },
    /// Show the allow and deny lists, or replace them with --set FILE (JSON
    /// `{"allow": [...], "deny": [...]}`).
    Lists {
        #[arg(long, value_name = "FILE")]
        set: Option<PathBuf>,
    },
    /// Entitlements ending within the expiry window (or --days).
    Expiring {
        #[arg(long)]
        days: Option<u16>,
    },
    /// Software that no allow-list entry matches.
    Unapproved,
    /// Deny-listed installs (each one an alert in a security incident).
    Denied,
    /// Rebuild the software index now.
    Refresh,
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct PositionArgs {
    /// Only vendors containing this (case-insensitive).
    #[arg(long)]
    pub vendor: Option<String>,
    /// Only products containing this (case-insensitive).
    #[arg(long)]
    pub product: Option<String>,
    /// Only rows with this status.
    #[arg(long, value_parser = ["compliant", "shortfall", "surplus", "unlicensed"])]
    pub status: Option<String>,
    /// Hosts listed per row in --format json (default 100).
    #[arg(long)]
    pub hosts_limit: Option<u16>,
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct SoftwareArgs {
    #[arg(long)]
    pub vendor: Option<String>,
    #[arg(long)]
    pub product: Option<String>,
    /// Only products a normalisation rule matched.
    #[arg(long)]
    pub normalised: bool,
}

fn read_file(path: &Path) -> Result<Vec<u8>, RunError> {
    let err = |reason: String| RunError::Usage(format!("{}: {reason}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_IMPORT_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() > MAX_IMPORT_BYTES {
        return Err(err(format!("larger than {MAX_IMPORT_BYTES} bytes")));
    }
    Ok(bytes)
}

fn read_json(path: &Path) -> Result<Value, RunError> {
    serde_json::from_slice(&read_file(path)?)
        .map_err(|e| RunError::Usage(format!("{}: not JSON: {e}", path.display())))
}

fn push(query: &mut Vec<(&'static str, String)>, name: &'static str, v: &Option<String>) {
    if let Some(v) = v {
        query.push((name, v.clone()));
    }
}

/// Runs one `licenses` command.
pub fn run(
    api: &Api,
    cmd: &LicensesCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), RunError> {
    let mut query: Vec<(&'static str, String)> = Vec::new();
    let (v, view) = match cmd {
        LicensesCommand::Position(a) => {
            push(&mut query, "vendor", &a.vendor);
            push(&mut query, "product", &a.product);
            push(&mut query, "status", &a.status);
            if let Some(n) = a.hosts_limit {
                query.push(("hosts_limit", n.to_string()));
            }
            (
                api.get("/api/v1/licenses/position", &query)?,
                render::View::Position,
            )
        }
        LicensesCommand::Software(a) => {
            push(&mut query, "vendor", &a.vendor);
            push(&mut query, "product", &a.product);
            if a.normalised {
                query.push(("normalised", "true".into()));
            }
            (
                api.get("/api/v1/licenses/software", &query)?,
                render::View::Software,
            )
        }
        LicensesCommand::Entitlements => (
            api.get("/api/v1/licenses/entitlements", &[])?,
            render::View::Entitlements,
        ),
        LicensesCommand::Import { file, replace } => {
            let bytes = read_file(file)?;
            let csv = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            let ct = if csv { "text/csv" } else { "application/json" };
            if *replace {
                query.push(("replace", "true".into()));
            }
            (
                api.send_bytes(
                    Method::POST,
                    "/api/v1/licenses/entitlements",
                    &query,
                    Some((ct, bytes)),
                )?,
                render::View::Entitlements,
            )
        }
        LicensesCommand::Rules { builtin, set } => match set {
            Some(file) => (
                api.send(
                    Method::PUT,
                    "/api/v1/licenses/rules",
                    &[],
                    Some(&read_json(file)?),
                )?,
                render::View::Rules,
            ),
            None => {
                if *builtin {
                    query.push(("builtin", "true".into()));
                }
                (
                    api.get("/api/v1/licenses/rules", &query)?,
                    render::View::Rules,
                )
            }
        },
        LicensesCommand::Lists { set } => match set {
            Some(file) => (
                api.send(
                    Method::PUT,
                    "/api/v1/licenses/lists",
                    &[],
                    Some(&read_json(file)?),
                )?,
                render::View::Lists,
            ),
            None => (api.get("/api/v1/licenses/lists", &[])?, render::View::Lists),
        },
        LicensesCommand::Expiring { days } => {
            if let Some(d) = days {
                query.push(("days", d.to_string()));
            }
            (
                api.get("/api/v1/licenses/expiring", &query)?,
                render::View::Expiring,
            )
        }
        LicensesCommand::Unapproved => (
            api.get("/api/v1/licenses/unapproved", &[])?,
            render::View::Unapproved,
        ),
        LicensesCommand::Denied => (
            api.get("/api/v1/licenses/denied", &[])?,
            render::View::Denied,
        ),
        LicensesCommand::Refresh => (
            api.send(Method::POST, "/api/v1/licenses/refresh", &[], None)?,
            render::View::Refresh,
        ),
    };
    if format == Format::Json {
        return print_json(out, &v);
    }
    let text = render::render(view, &v, format == Format::Csv).map_err(|e| {
        RunError::from(crate::client::ClientError::Decode {
            url: "/api/v1/licenses".to_owned(),
            reason: e.to_string(),
        })
    })?;
    out.write_all(text.as_bytes())?;
    Ok(())
}
