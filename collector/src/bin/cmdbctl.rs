//! cmdbctl: the collector's HTTP API from the shell, as aligned tables or as the API's JSON.
//!
//! Owns argument parsing ([`cli`], [`times`]), the requests of the judgment commands
//! ([`requests`]), the HTTP client ([`client`]) and the table views ([`render`],
//! [`render_judgment`], [`table`]). Exit codes: 0 ok, 1 API or HTTP error (the message is
//! the API's JSON error message) and an audit log that fails `audit-log verify`, 64 usage
//! (bad arguments, no URL or token, an https:// URL, an unreadable quickstart.json or input
//! file). A closed stdout (`| head`) ends the program quietly with 0. docs/API.md lists the
//! commands.
#![forbid(unsafe_code)]

// A binary's root resolves `mod x;` beside itself (src/bin/x.rs), where cargo would take
// every file for a binary of its own: the modules live in src/bin/cmdbctl/ instead.
#[path = "cmdbctl/capacity.rs"]
mod capacity;
#[path = "cmdbctl/cli.rs"]
mod cli;
#[path = "cmdbctl/client.rs"]
mod client;
#[path = "cmdbctl/impact.rs"]
mod impact;

#[path = "cmdbctl/config_audit.rs"]
mod config_audit;

#[path = "cmdbctl/health.rs"]
mod health;
#[cfg(test)]
#[path = "cmdbctl/judgment_tests.rs"]
mod judgment_tests;
#[path = "cmdbctl/licenses.rs"]
mod licenses;
#[path = "cmdbctl/render.rs"]
mod render;
#[path = "cmdbctl/render_capacity.rs"]
mod render_capacity;
#[path = "cmdbctl/render_judgment.rs"]
mod render_judgment;
#[path = "cmdbctl/render_licenses.rs"]
mod render_licenses;
#[path = "cmdbctl/requests.rs"]
mod requests;
#[path = "cmdbctl/table.rs"]
mod table;
#[cfg(test)]
#[path = "cmdbctl/tests.rs"]
mod tests;
#[path = "cmdbctl/times.rs"]
mod times;

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Parser;
use cmdb_collector::http::json::{CiDetail, List, Page, RelationView};
use cmdb_collector::store::{AgentRecord, CiRecord, CloneRecord};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cli::{CisArgs, Command, Format, Settings};
use crate::client::{Api, ClientError};
use crate::requests::View;

/// Exit code for usage errors (EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code for API and HTTP errors.
const EXIT_API: u8 = 1;
/// Most pages `cis --all` follows (1000 per page: 100 million CIs).
const MAX_PAGES: usize = 100_000;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// Bad input the argument parser could not catch.
    #[error("{0}")]
    Usage(String),
    /// The API or the network failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// `audit-log verify` found the chain broken (after printing the report).
    #[error("the audit log does not verify: {0}")]
    Unverified(String),
}

impl From<requests::Invalid> for RunError {
    fn from(e: requests::Invalid) -> Self {
        RunError::Usage(e.0)
    }
}

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let settings = match cli::resolve(cli, &|name| std::env::var(name).ok()) {
        Ok(s) => s,
        Err(e) => {
            complain(&e.to_string());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = run(&settings, &mut stdout).and_then(|()| Ok(stdout.flush()?));
    let code = exit_code(&result);
    if let Err(e) = result
        && code != 0
    {
        complain(&e.to_string());
    }
    ExitCode::from(code)
}

/// 0 for success and for a closed stdout, 64 for usage errors, 1 for everything else.
fn exit_code<T>(result: &Result<T, RunError>) -> u8 {
    match result {
        Ok(_) => 0,
        Err(RunError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(RunError::Usage(_)) => EXIT_USAGE,
        Err(_) => EXIT_API,
    }
}

/// One line on stderr; a closed stderr is not worth a panic.
fn complain(msg: &str) {
    let _ = writeln!(std::io::stderr(), "cmdbctl: {msg}");
}

/// Commands with a CSV view (the report-style ones); the rest are table or JSON.
fn supports_csv(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Capacity(_)
            | Command::Licenses(_)
            | Command::Impact(_)
            | Command::Audit(_)
            | Command::Health(_)
            | Command::Fleet(_)
    )
}

fn run(s: &Settings, out: &mut dyn Write) -> Result<(), RunError> {
    let now = SystemTime::now();
    if s.format == Format::Csv && !supports_csv(&s.command) {
        return Err(RunError::Usage(
            "--format csv is available for the capacity, licenses, audit, health, fleet and impact commands only".into(),
        ));
    }
    let judged = requests::build(&s.command, now)?;
    let api = Api::new(&s.base_url, &s.token)?;
    if let Command::Licenses(cmd) = &s.command {
        return licenses::run(&api, cmd, s.format, out);
    }
    if let Command::Audit(cmd) = &s.command {
        return config_audit::run(&api, cmd, s.format, out);
    }
    let json = s.format == Format::Json;
    if let Some((req, view)) = judged {
        return run_judgment(&api, req, view, json, now, out);
    }
    match &s.command {
        Command::Agents => {
            let v = api.get("/api/v1/agents", &[])?;
            if json {
                return print_json(out, &v);
            }
            let list: List<AgentRecord> = decode(v)?;
            out.write_all(render::agents(&list.items).as_bytes())?;
        }
        Command::Agent { id } => {
            let v = api.get(&format!("/api/v1/agents/{}", path_id(id)?), &[])?;
            if json {
                return print_json(out, &v);
            }
            out.write_all(render::agent(&decode(v)?).as_bytes())?;
        }
        Command::Cis(args) => {
            let v = list_cis(&api, args)?;
            if json {
                return print_json(out, &v);
            }
            let page: Page<CiRecord> = decode(v)?;
            out.write_all(render::cis(&page.items).as_bytes())?;
            if let Some(after) = page.next_after {
                complain(&format!(
                    "more CIs follow: add --after {after} for the next page, or --all"
                ));
            }
        }
        Command::Ci { id } => {
            let v = api.get(&format!("/api/v1/cis/{}", path_id(id)?), &[])?;
            if json {
                return print_json(out, &v);
            }
            let detail: CiDetail = decode(v)?;
            out.write_all(render::ci(&detail).as_bytes())?;
        }
        Command::Relations { id } => {
            let v = api.get(&format!("/api/v1/cis/{}/relations", path_id(id)?), &[])?;
            if json {
                return print_json(out, &v);
            }
            let list: List<RelationView> = decode(v)?;
            out.write_all(render::relations(&list.items).as_bytes())?;
        }
        Command::Clones => {
            let v = api.get("/api/v1/clones", &[])?;
            if json {
                return print_json(out, &v);
            }
            let list: List<CloneRecord> = decode(v)?;
            out.write_all(render::clones(&list.items).as_bytes())?;
        }
        Command::Whoami => {
            let v = api.get("/api/v1/whoami", &[])?;
            if json {
                return print_json(out, &v);
            }
            let me: cmdb_collector::http::json::WhoAmI = decode(v)?;
            writeln!(out, "{} ({})", me.name, me.role)?;
        }
        Command::Capacity(a) => return capacity::run(&api, a, s.format, now, out),
        Command::Impact(a) => return impact::run(&api, a, s.format, out),
        Command::Health(a) => return health::run_health(&api, a, s.format, out),
        Command::Fleet(a) => return health::run_fleet(&api, a, s.format, out),
        // Built by `requests` and handled above.
        Command::Changes(_)
        | Command::Change(_)
        | Command::Baselines
        | Command::Baseline(_)
        | Command::Drift(_)
        | Command::Waivers
        | Command::Waiver(_)
        | Command::Policies(_)
        | Command::Incidents(_)
        | Command::Incident(_)
        | Command::Availability(_)
        | Command::Outages(_)
        | Command::AuditLog(_)
        | Command::Licenses(_)
        | Command::Audit(_) => {}
    }
    Ok(())
}

/// A judgment command: send its request, show the answer, and for `audit-log verify` fail
/// after showing a report whose chain does not hold.
fn run_judgment(
    api: &Api,
    req: requests::Request,
    view: View,
    json: bool,
    now: SystemTime,
    out: &mut dyn Write,
) -> Result<(), RunError> {
    let v = api.send(req.method, &req.path, &req.query, req.body.as_ref())?;
    let verdict = match view {
        View::AuditVerify => {
            let report: render_judgment::VerifyReport = decode(v.clone())?;
            (!report.holds())
                .then(|| format!("{} problems (ok: {})", report.problems.len(), report.ok))
        }
        _ => None,
    };
    let shown = if json {
        print_json(out, &v)
    } else {
        render_judgment::render(view, v, now)
            .map_err(|e| {
                RunError::from(ClientError::Decode {
                    url: req.path.clone(),
                    reason: e.to_string(),
                })
            })
            .and_then(|shown| {
                out.write_all(shown.text.as_bytes())?;
                if let Some(hint) = shown.hint {
                    complain(&hint);
                }
                Ok(())
            })
    };
    // A broken chain outranks a closed stdout (`verify | head` still exits 1).
    match verdict {
        Some(why) => Err(RunError::Unverified(why)),
        None => shown,
    }
}

/// `cis`: one page, or with `--all` every page merged into one `{"items", "next_after": null}`.
fn list_cis(api: &Api, args: &CisArgs) -> Result<Value, RunError> {
    let mut query: Vec<(&str, String)> = Vec::new();
    for (name, v) in [("class", &args.class), ("host", &args.host), ("q", &args.q)] {
        if let Some(v) = v {
            query.push((name, v.clone()));
        }
    }
    if args.include_absent {
        query.push(("include_absent", "true".to_owned()));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    let mut after = args.after.clone();
    if !args.all {
        if let Some(a) = &after {
            query.push(("after", a.clone()));
        }
        return Ok(api.get("/api/v1/cis", &query)?);
    }
    let mut items = Vec::new();
    for _ in 0..MAX_PAGES {
        let mut q = query.clone();
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        let page: Page<Value> = decode(api.get("/api/v1/cis", &q)?)?;
        items.extend(page.items);
        match page.next_after {
            None => return Ok(serde_json::json!({"items": items, "next_after": null})),
            // A cursor that does not move forward would loop for ever.
            Some(next) if after.as_ref().is_some_and(|a| next <= *a) => {
                return Err(ClientError::Decode {
                    url: "/api/v1/cis".to_owned(),
                    reason: format!("next_after {next:?} does not advance"),
                }
                .into());
            }
            Some(next) => after = Some(next),
        }
    }
    Err(RunError::Usage(format!(
        "more than {MAX_PAGES} pages; narrow the query with --class, --host or --q"
    )))
}

/// An id for a URL path; `.` and `..` would be resolved away by the URL itself.
fn path_id(id: &str) -> Result<String, RunError> {
    Ok(requests::path_id(id)?)
}

fn decode<T: DeserializeOwned>(v: Value) -> Result<T, RunError> {
    serde_json::from_value(v).map_err(|e| {
        ClientError::Decode {
            url: "the API".to_owned(),
            reason: e.to_string(),
        }
        .into()
    })
}

fn print_json(out: &mut dyn Write, v: &Value) -> Result<(), RunError> {
    serde_json::to_writer_pretty(&mut *out, v).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}
