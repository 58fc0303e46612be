//! `cmdbctl health [--kpi K] [--class C]` (the CMDB health KPI table),
//! `cmdbctl health failing [--kpi K] [--class C] [--limit N]` (the failing CIs) and
//! `cmdbctl fleet [--status up|down] [--version V]` (the fleet view), as a table, the
//! API's JSON, or CSV.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::cli::Format;
use crate::client::Api;
use crate::table::Table;
use crate::{RunError, print_json};

#[derive(Debug, Default, PartialEq, Eq, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HealthArgs {
    #[command(subcommand)]
    pub command: Option<HealthCommand>,
    /// Only this KPI.
    #[arg(long, value_parser = ["completeness", "correctness", "compliance"])]
    pub kpi: Option<String>,
    /// Only this class.
    #[arg(long, value_name = "CLASS")]
    pub class: Option<String>,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum HealthCommand {
    /// The failing CIs behind the KPIs.
    Failing(FailingArgs),
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct FailingArgs {
    /// Only this KPI.
    #[arg(long, value_parser = ["completeness", "correctness", "compliance"])]
    pub kpi: Option<String>,
    /// Only this class.
    #[arg(long, value_name = "CLASS")]
    pub class: Option<String>,
    /// At most this many (1..=1000, default 100).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: Option<u16>,
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct FleetArgs {
    /// Only agents that are up, or down.
    #[arg(long, value_parser = ["up", "down"])]
    pub status: Option<String>,
    /// Only agents of this version.
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn items(v: &Value, field: &str) -> Vec<Value> {
    v.get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn csv_out(out: &mut dyn Write, headers: &[&str], rows: Vec<Vec<String>>) -> Result<(), RunError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(headers).map_err(std::io::Error::other)?;
    for r in rows {
        w.write_record(&r).map_err(std::io::Error::other)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    out.write_all(&bytes)?;
    Ok(())
}

fn table_out(
    out: &mut dyn Write,
    headers: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<(), RunError> {
    let mut t = Table::new(headers);
    for r in rows {
        t.row(r);
    }
    out.write_all(t.render().as_bytes())?;
    Ok(())
}

fn emit(
    out: &mut dyn Write,
    format: Format,
    headers: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<(), RunError> {
    match format {
        Format::Csv => csv_out(out, headers, rows),
        _ => table_out(out, headers, rows),
    }
}

pub fn run_health(
    api: &Api,
    a: &HealthArgs,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), RunError> {
    let mut q: Vec<(&'static str, String)> = Vec::new();
    match &a.command {
        Some(HealthCommand::Failing(f)) => {
            if let Some(k) = &f.kpi {
                q.push(("kpi", k.clone()));
            }
            if let Some(c) = &f.class {
                q.push(("class", c.clone()));
            }
            if let Some(l) = f.limit {
                q.push(("limit", l.to_string()));
            }
            let v = api.get("/api/v1/cmdb-health/failing", &q)?;
            if format == Format::Json {
                return print_json(out, &v);
            }
            let rows = items(&v, "items")
                .iter()
                .map(|f| {
                    ["kpi", "class", "key", "ci_id", "host_id", "reason"]
                        .iter()
                        .map(|k| text(&f[*k]))
                        .collect()
                })
                .collect();
            emit(
                out,
                format,
                &["kpi", "class", "key", "ci_id", "host_id", "reason"],
                rows,
            )?;
            if v["truncated"] == Value::Bool(true) {
                crate::complain(&format!(
                    "{} failing in all; more than listed: raise --limit or narrow with --kpi/--class",
                    text(&v["total"])
                ));
            }
            Ok(())
        }
        None => {
            if let Some(k) = &a.kpi {
                q.push(("kpi", k.clone()));
            }
            if let Some(c) = &a.class {
                q.push(("class", c.clone()));
            }
            let v = api.get("/api/v1/cmdb-health", &q)?;
            if format == Format::Json {
                return print_json(out, &v);
            }
            let rows = items(&v, "kpis")
                .iter()
                .map(|k| {
                    let ratio = k["ratio"].as_f64().unwrap_or(0.0);
                    vec![
                        text(&k["kpi"]),
                        text(&k["class"]),
                        text(&k["healthy"]),
                        text(&k["total"]),
                        if format == Format::Csv {
                            format!("{ratio:.4}")
                        } else {
                            format!("{:.1} %", ratio * 100.0)
                        },
                    ]
                })
                .collect();
            emit(
                out,
                format,
                &["kpi", "class", "healthy", "total", "ratio"],
                rows,
            )?;
            if let Value::String(why) = &v["compliance"] {
                crate::complain(&format!("compliance: {why}"));
            }
            Ok(())
        }
    }
}

pub fn run_fleet(
    api: &Api,
    a: &FleetArgs,
    format: Format,
    out: &mut dyn Write,
) -> Result<(), RunError> {
    let mut q: Vec<(&'static str, String)> = Vec::new();
    if let Some(s) = &a.status {
        q.push(("status", s.clone()));
    }
    if let Some(v) = &a.version {
        q.push(("version", v.clone()));
    }
    let v = api.get("/api/v1/fleet", &q)?;
    if format == Format::Json {
        return print_json(out, &v);
    }
    let rows = items(&v, "items")
        .iter()
        .map(|i| {
            let problems: Vec<String> = i["collectors"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .filter(|c| c["status"] != "ok" && c["status"] != "unsupported")
                        .map(|c| format!("{}={}", text(&c["name"]), text(&c["status"])))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                text(&i["agent_id"]),
                text(&i["hostname"]),
                text(&i["host_id"]),
                text(&i["version"]),
                if i["up"] == Value::Bool(true) {
                    "up"
                } else {
                    "down"
                }
                .to_owned(),
                text(&i["last_seen"]),
                text(&i["outbox_events"]),
                text(&i["outbox_bytes"]),
                text(&i["failures"]),
                problems.join(" "),
                text(&i["revoked"]),
                text(&i["gaps"]),
            ]
        })
        .collect();
    emit(
        out,
        format,
        &[
            "agent_id",
            "hostname",
            "host_id",
            "version",
            "status",
            "last_seen",
            "outbox_events",
            "outbox_bytes",
            "failures",
            "collector_problems",
            "revoked",
            "gaps",
        ],
        rows,
    )?;
    if format == Format::Table {
        let s = &v["summary"];
        crate::complain(&format!(
            "{} agents: {} up, {} down",
            text(&s["agents"]),
            text(&s["up"]),
            text(&s["down"])
        ));
    }
    Ok(())
}
