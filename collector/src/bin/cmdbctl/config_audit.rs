//! `cmdbctl audit …`: the configuration audit (register import, runs, reports, deficiency
//! states). Tables by default; `--format json` prints the API's JSON; `--format csv` (for
//! `show`) prints the run's deficiencies as the CSV report. `export` writes the server's
//! report as it is: HTML by default, `--format json|csv` or `--as json|csv|html`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use cmdb_collector::config_audit::register::MAX_IMPORT_BYTES;
use cmdb_collector::config_audit::{Run, RunInfo};
use reqwest::Method;
use serde_json::Value;

use crate::cli::Format;
use crate::client::Api;
use crate::table::Table;
use crate::{RunError, decode, print_json};

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum AuditCommand {
    /// Replace the authorised register with FILE (.csv as CSV, anything else as JSON);
    /// all or nothing.
    Import { file: PathBuf },
    /// Run an audit now.
    Run {
        /// Absent CIs last seen within this many days still count as live (default 7).
        #[arg(long, value_name = "N")]
        missing_after_days: Option<u16>,
    },
    /// Show a run with its deficiencies (the latest when RUN is not given).
    Show { run: Option<String> },
    /// List the runs, newest first.
    Runs,
    /// Download a run's report: HTML by default, JSON or CSV with the global
    /// `--format json|csv` (or `--as json|csv|html`).
    Export {
        run: String,
        /// The report's format (overrides `--format`).
        #[arg(long = "as", value_name = "FORMAT", value_parser = ["json", "csv", "html"])]
        report: Option<String>,
        /// Write to FILE instead of stdout.
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Move a deficiency forward: open → action_taken → verified.
    Deficiency {
        run: String,
        def: String,
        #[arg(long, value_parser = ["action_taken", "verified"])]
        state: String,
        #[arg(long)]
        note: Option<String>,
    },
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

fn run_path(id: &str) -> Result<String, RunError> {
    Ok(format!("/api/v1/audit/runs/{}", crate::path_id(id)?))
}

/// The latest run's id.
fn latest(api: &Api) -> Result<String, RunError> {
    let v = api.get("/api/v1/audit/runs", &[])?;
    let list: cmdb_collector::http::config_audit::RunList = decode(v)?;
    list.items
        .first()
        .map(|r| r.id.clone())
        .ok_or_else(|| RunError::Usage("no audit has run yet".into()))
}

fn summary_table(runs: &[RunInfo]) -> String {
    let mut t = Table::new(&[
        "RUN",
        "FINISHED",
        "REGISTERED",
        "LIVE",
        "MISSING",
        "UNREGISTERED",
        "MISMATCHED",
    ]);
    for r in runs {
        let s = &r.summary;
        t.row([
            r.id.clone(),
            humantime::format_rfc3339_seconds(r.finished_at).to_string(),
            s.registered.to_string(),
            s.live.to_string(),
            s.missing.to_string(),
            s.unregistered.to_string(),
            s.mismatched.to_string(),
        ]);
    }
    t.render()
}

fn run_view(run: &Run) -> String {
    let mut out = summary_table(std::slice::from_ref(&run.info));
    out.push('\n');
    let mut t = Table::new(&[
        "ID",
        "KIND",
        "CLASS",
        "HOST",
        "KEY",
        "ATTRIBUTE",
        "EXPECTED",
        "ACTUAL",
        "STATE",
        "NOTE",
    ]);
    for d in &run.deficiencies {
        let o = |v: &Option<String>| v.clone().unwrap_or_default();
        t.row([
            d.id.clone(),
            d.kind.as_str().to_owned(),
            d.class.clone(),
            d.host.clone(),
            d.key.clone(),
            o(&d.attribute),
            o(&d.expected),
            o(&d.actual),
            d.state.as_str().to_owned(),
            d.note.clone(),
        ]);
    }
    out.push_str(&t.render());
    if run.info.truncated {
        out.push_str(&format!(
            "({} deficiencies found; the first {} are stored)\n",
            run.info.deficiencies_total,
            run.deficiencies.len()
        ));
    }
    out
}

/// Runs one `audit` command.
pub fn run(
    api: &Api,
    cmd: &AuditCommand,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), RunError> {
    let json = format == Format::Json;
    match cmd {
        AuditCommand::Import { file } => {
            let bytes = read_file(file)?;
            let csv = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
            let ct = if csv { "text/csv" } else { "application/json" };
            let v = api.send_bytes(
                Method::PUT,
                "/api/v1/audit/register",
                &[],
                Some((ct, bytes)),
            )?;
            if json {
                return print_json(out, &v);
            }
            let rows = v.get("rows").and_then(Value::as_u64).unwrap_or(0);
            writeln!(out, "{rows} register rows imported")?;
        }
        AuditCommand::Run { missing_after_days } => {
            let body = match missing_after_days {
                Some(n) => serde_json::json!({ "missing_after_days": n }),
                None => serde_json::json!({}),
            };
            let v = api.send(Method::POST, "/api/v1/audit/runs", &[], Some(&body))?;
            if json {
                return print_json(out, &v);
            }
            let info: RunInfo = decode(v)?;
            out.write_all(summary_table(&[info]).as_bytes())?;
        }
        AuditCommand::Runs => {
            let v = api.get("/api/v1/audit/runs", &[])?;
            if json {
                return print_json(out, &v);
            }
            let list: cmdb_collector::http::config_audit::RunList = decode(v)?;
            out.write_all(summary_table(&list.items).as_bytes())?;
        }
        AuditCommand::Show { run } => {
            let id = match run {
                Some(r) => r.clone(),
                None => latest(api)?,
            };
            let path = run_path(&id)?;
            if format == Format::Csv {
                let bytes = api.get_raw(&format!("{path}/report"), &[("format", "csv".into())])?;
                out.write_all(&bytes)?;
                return Ok(());
            }
            let v = api.get(&path, &[])?;
            if json {
                return print_json(out, &v);
            }
            let r: Run = decode(v)?;
            out.write_all(run_view(&r).as_bytes())?;
        }
        AuditCommand::Export {
            run,
            report,
            output,
        } => {
            let kind = match (report, format) {
                (Some(r), _) => r.clone(),
                (None, Format::Json) => "json".to_owned(),
                (None, Format::Csv) => "csv".to_owned(),
                (None, Format::Table) => "html".to_owned(),
            };
            let path = format!("{}/report", run_path(run)?);
            let bytes = api.get_raw(&path, &[("format", kind)])?;
            match output {
                Some(file) => std::fs::write(file, &bytes)
                    .map_err(|e| RunError::Usage(format!("{}: {e}", file.display())))?,
                None => out.write_all(&bytes)?,
            }
        }
        AuditCommand::Deficiency {
            run,
            def,
            state,
            note,
        } => {
            let mut body = serde_json::json!({ "state": state });
            if let Some(n) = note {
                body["note"] = Value::String(n.clone());
            }
            let path = format!("{}/deficiencies/{}", run_path(run)?, crate::path_id(def)?);
            let v = api.send(Method::POST, &path, &[], Some(&body))?;
            if json {
                return print_json(out, &v);
            }
            let d: cmdb_collector::config_audit::Deficiency = decode(v)?;
            writeln!(out, "{} {} ({})", d.id, d.state.as_str(), d.note)?;
        }
    }
    Ok(())
}
