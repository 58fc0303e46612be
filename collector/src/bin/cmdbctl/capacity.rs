//! `cmdbctl capacity`: the capacity series of a host (`capacity --host H [--resource R]
//! [--from T] [--to T] [--tier minute|hour|day]`) and the forecasts (`capacity forecast
//! [--all] [--host H]`), as a table, the API's JSON, or CSV. `render_capacity` draws them.

use std::io::Write;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::cli::Format;
use crate::client::Api;
use crate::render_capacity;
use crate::times::{self, TimeArg};
use crate::{RunError, decode, print_json};

#[derive(Debug, Default, PartialEq, Eq, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CapacityArgs {
    #[command(subcommand)]
    pub command: Option<CapacityCommand>,
    /// The host (id or hostname); required for the series.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Only this resource: cpu, load, memory, swap, processes, filesystem:<mount>,
    /// interface:<name>:rx|tx.
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Start (RFC 3339, now, -7d; default: a day before --to).
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub from: Option<TimeArg>,
    /// End (default: now).
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub to: Option<TimeArg>,
    /// Roll-up tier (default: by range, minute up to 2 days, hour up to 90, then day).
    #[arg(long, value_parser = ["minute", "hour", "day"])]
    pub tier: Option<String>,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum CapacityCommand {
    /// Time-to-threshold forecasts: the at-risk list, or every forecast with --all.
    Forecast(ForecastArgs),
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct ForecastArgs {
    /// Every forecast, not only the at-risk ones.
    #[arg(long)]
    pub all: bool,
    /// Only this host (id or hostname).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
}

/// Query parameters of a request.
type Query = Vec<(&'static str, String)>;

/// The request of a capacity command: path and query.
pub fn request(a: &CapacityArgs, now: SystemTime) -> Result<(&'static str, Query), RunError> {
    let mut q: Vec<(&'static str, String)> = Vec::new();
    if let Some(CapacityCommand::Forecast(f)) = &a.command {
        if let Some(h) = &f.host {
            q.push(("host", h.clone()));
        }
        if f.all {
            q.push(("all", "true".to_owned()));
        }
        return Ok(("/api/v1/capacity/forecast", q));
    }
    let host = a.host.clone().ok_or_else(|| {
        RunError::Usage("capacity: --host is required (or use `capacity forecast`)".into())
    })?;
    q.push(("host", host));
    if let Some(r) = &a.resource {
        q.push(("resource", r.clone()));
    }
    for (name, t) in [("from", a.from), ("to", a.to)] {
        if let Some(t) = t {
            let t = t
                .resolve(now)
                .map_err(|e| RunError::Usage(format!("--{name}: {e}")))?;
            q.push((name, humantime::format_rfc3339_seconds(t).to_string()));
        }
    }
    if let Some(t) = &a.tier {
        q.push(("tier", t.clone()));
    }
    Ok(("/api/v1/capacity", q))
}

pub fn run(
    api: &Api,
    a: &CapacityArgs,
    format: Format,
    now: SystemTime,
    out: &mut dyn Write,
) -> Result<(), RunError> {
    let (path, query) = request(a, now)?;
    let v: Value = api.get(path, &query)?;
    let forecast = a.command.is_some();
    match format {
        Format::Json => print_json(out, &v),
        Format::Table if forecast => {
            let list: render_capacity::ForecastList = decode(v)?;
            out.write_all(render_capacity::forecast_table(&list.items, now).as_bytes())?;
            if list.truncated {
                crate::complain("more forecasts were left out; narrow with --host");
            }
            Ok(())
        }
        Format::Table => {
            let list: render_capacity::SeriesList = decode(v)?;
            out.write_all(render_capacity::series_table(&list.items).as_bytes())?;
            Ok(())
        }
        Format::Csv if forecast => {
            let list: render_capacity::ForecastList = decode(v)?;
            out.write_all(&render_capacity::forecast_csv(&list.items)?)?;
            Ok(())
        }
        Format::Csv => {
            let list: render_capacity::SeriesList = decode(v)?;
            out.write_all(&render_capacity::series_csv(&list.items)?)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn args(argv: &[&str]) -> CapacityArgs {
        let cli = Cli::try_parse_from(argv).unwrap();
        match cli.command {
            Command::Capacity(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn series_and_forecast_requests() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = args(&[
            "cmdbctl",
            "capacity",
            "--host",
            "db-01",
            "--resource",
            "filesystem:/var",
            "--from",
            "-1d",
            "--tier",
            "hour",
        ]);
        let (path, q) = request(&a, now).unwrap();
        assert_eq!(path, "/api/v1/capacity");
        assert_eq!(
            q,
            vec![
                ("host", "db-01".to_owned()),
                ("resource", "filesystem:/var".to_owned()),
                ("from", "2027-01-14T08:00:00Z".to_owned()),
                ("tier", "hour".to_owned()),
            ]
        );
        let (path, q) = request(&args(&["cmdbctl", "capacity", "forecast", "--all"]), now).unwrap();
        assert_eq!(path, "/api/v1/capacity/forecast");
        assert_eq!(q, vec![("all", "true".to_owned())]);
        assert!(matches!(
            request(&args(&["cmdbctl", "capacity"]), now),
            Err(RunError::Usage(_))
        ));
        assert!(
            Cli::try_parse_from(["cmdbctl", "capacity", "--host", "h", "--tier", "week"]).is_err()
        );
        let cli =
            Cli::try_parse_from(["cmdbctl", "--format", "csv", "capacity", "forecast"]).unwrap();
        assert_eq!(cli.format, Format::Csv);
    }
}
