//! cmdbctl's command line and where its connection settings come from.
//!
//! Precedence, per setting: a flag (`--url`, `--token`) beats `--quickstart-dir`'s
//! `quickstart.json`, which beats the environment (`CMDB_URL`, `CMDB_TOKEN`): what is on the
//! command line wins over what is inherited. The environment is read through a function
//! argument, so tests never touch the process environment.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use cmdb_collector::changes::ExpectedChange;
use reqwest::Url;
use serde::Deserialize;

use crate::times::{self, TimeArg};

/// Largest quickstart.json read.
const MAX_QUICKSTART_BYTES: u64 = 64 * 1024;
/// Largest page the API serves.
pub const MAX_LIMIT: u16 = 1000;

#[derive(Debug, Parser)]
#[command(
    name = "cmdbctl",
    version,
    about = "The cmdb collector's API from the shell",
    after_help = "Connection: --url/--token, else DIR/quickstart.json from --quickstart-dir, \
                  else CMDB_URL/CMDB_TOKEN.\nExit codes: 0 ok, 1 API or HTTP error, 64 usage."
)]
pub struct Cli {
    /// API base URL, e.g. http://127.0.0.1:8080 (env CMDB_URL).
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API bearer token (env CMDB_TOKEN; prefer it or --quickstart-dir: flags show in `ps`).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Read api_url and admin_token from DIR/quickstart.json (written by
    /// `cmdb-collector quickstart --dir DIR`).
    #[arg(long, global = true, value_name = "DIR")]
    pub quickstart_dir: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people; long cells are cut with "…".
    Table,
    /// The API's JSON, pretty-printed.
    Json,
    /// Comma-separated values with a header row (the capacity and licenses commands).
    Csv,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// List enrolled agents.
    Agents,
    /// Show one agent.
    Agent { id: String },
    /// List CIs (present ones unless --include-absent).
    Cis(CisArgs),
    /// Show one CI with its attributes and version history.
    Ci { id: String },
    /// List the relations of a CI.
    Relations { id: String },
    /// List clone records (two live agents claiming one host).
    Clones,
    /// Show the name and role of the token in use.
    Whoami,
    /// The forward schedule of change: change records by window start.
    Changes(ChangesArgs),
    /// Show, create, update, move or import change records.
    #[command(subcommand)]
    Change(ChangeCommand),
    /// List baselines.
    Baselines,
    /// Show, capture, approve or diff a baseline.
    #[command(subcommand)]
    Baseline(BaselineCommand),
    /// List drift records (judged CI changes), oldest first.
    Drift(DriftArgs),
    /// List waivers.
    Waivers,
    /// Grant or revoke a waiver.
    #[command(subcommand)]
    Waiver(WaiverCommand),
    /// Show or replace the drift and incident policies.
    #[command(subcommand)]
    Policies(PoliciesCommand),
    /// List incidents, newest first.
    Incidents(IncidentsArgs),
    /// Show an incident or act on it.
    #[command(subcommand)]
    Incident(IncidentCommand),
    /// Availability figures per CI over a period.
    Availability(AvailabilityArgs),
    /// Outages overlapping a period.
    Outages(RangeArgs),
    /// List the audit log, or verify its hash chain (`audit-log verify`).
    AuditLog(AuditLogArgs),
    /// Capacity series of a host (`--host`), or the forecasts (`capacity forecast`).
    Capacity(crate::capacity::CapacityArgs),
    /// Software licences: position, inventory, entitlements, rules, lists.
    #[command(subcommand)]
    Licenses(crate::licenses::LicensesCommand),
    /// The impact set of a CI: what is affected if it fails, what it depends on.
    Impact(crate::impact::ImpactArgs),

    /// ISO/IEC 20000 configuration audit: register import, runs, reports, deficiencies.
    #[command(subcommand)]
    Audit(crate::config_audit::AuditCommand),

    /// CMDB health KPIs (`health`), or the failing CIs (`health failing`).
    Health(crate::health::HealthArgs),
    /// The fleet: agents with version, last seen, up/down, backlog, collector failures.
    Fleet(crate::health::FleetArgs),
}

/// A page size of the judgment lists.
fn limit_arg() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..=i64::from(MAX_LIMIT))
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct ChangesArgs {
    /// Only changes whose window ends after this (RFC 3339, now, +2h, -30m).
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub from: Option<TimeArg>,
    /// Only changes whose window starts before this.
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub to: Option<TimeArg>,
    /// Only changes in this state.
    #[arg(long, value_parser = CHANGE_STATES)]
    pub state: Option<String>,
}

const CHANGE_STATES: [&str; 7] = [
    "draft",
    "approved",
    "implementing",
    "implemented",
    "closed",
    "failed",
    "cancelled",
];

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum ChangeCommand {
    /// Show one change record with its expected changes and history.
    Show { id: String },
    /// Create a change record (standard changes start approved, others as drafts).
    Create(ChangeCreateArgs),
    /// Edit a draft or approved change (editing an approved change's scope, window,
    /// expectations or outage flag sends it back to draft).
    Update(ChangeUpdateArgs),
    /// Approve a draft: draft → approved (change managers and admins).
    Approve(TransitionArgs),
    /// Start an approved change: approved → implementing.
    Implement(TransitionArgs),
    /// Finish implementing: implementing → implemented.
    Complete(TransitionArgs),
    /// Close an approved or implemented change (advances the baselines its evidence
    /// touched).
    Close(TransitionArgs),
    /// Mark an implementing or implemented change failed.
    Fail(TransitionArgs),
    /// Cancel a draft or approved change.
    Cancel(TransitionArgs),
    /// Import an ITSM export, {"changes": [...]}, all or nothing ("-" reads stdin).
    Import { file: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ChangeTypeArg {
    Normal,
    Standard,
    Emergency,
}

#[derive(Debug, PartialEq, Eq, Args)]
pub struct ChangeCreateArgs {
    /// What the change does (up to 512 bytes).
    #[arg(long)]
    pub title: String,
    /// Standard changes are pre-approved; emergency ones may later accept drift.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub change_type: ChangeTypeArg,
    /// A CI selector such as "host=web-* class=package" (repeat for OR).
    #[arg(long, value_name = "SELECTOR", required = true)]
    pub scope: Vec<String>,
    /// Window start (RFC 3339, now, +2h, -30m).
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub start: TimeArg,
    /// Window end.
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub end: TimeArg,
    /// An expected change, class=…,key=…,attribute=…,old=…,new=… (globs; any part may be
    /// left out; repeatable).
    #[arg(long, value_name = "PATTERN", value_parser = expected_change)]
    pub expect: Vec<ExpectedChange>,
    /// The change takes its CIs down: a graceful shutdown in the window is planned
    /// downtime.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub outage_expected: Option<bool>,
    /// Longer text (up to 8 KiB).
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, PartialEq, Eq, Args)]
pub struct ChangeUpdateArgs {
    pub id: String,
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Replaces the scope (repeat for OR).
    #[arg(long, value_name = "SELECTOR")]
    pub scope: Vec<String>,
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub start: Option<TimeArg>,
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub end: Option<TimeArg>,
    /// Replaces the expected changes (repeatable).
    #[arg(long, value_name = "PATTERN", value_parser = expected_change, conflicts_with = "clear_expect")]
    pub expect: Vec<ExpectedChange>,
    /// Removes every expected change (the change then covers any change in its scope).
    #[arg(long)]
    pub clear_expect: bool,
    /// --outage-expected or --outage-expected=false.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub outage_expected: Option<bool>,
}

#[derive(Debug, PartialEq, Eq, Args)]
pub struct TransitionArgs {
    pub id: String,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub note: Option<String>,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum BaselineCommand {
    /// Show a baseline (with --items, every CI it holds).
    Show {
        id: String,
        #[arg(long)]
        items: bool,
    },
    /// Capture a baseline of the live CIs in scope (pending until approved).
    Capture {
        #[arg(long)]
        name: String,
        /// A CI selector (repeat for OR).
        #[arg(long, value_name = "SELECTOR", required = true)]
        scope: Vec<String>,
    },
    /// Approve a pending baseline (change managers and admins).
    Approve { id: String },
    /// Compare a baseline with live state.
    Diff { id: String },
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct DriftArgs {
    /// A host id or an exact hostname.
    #[arg(long)]
    pub host: Option<String>,
    /// A CI id.
    #[arg(long, value_name = "ID")]
    pub ci: Option<String>,
    #[arg(long, value_parser = ["authorized", "accepted", "unauthorized"])]
    pub verdict: Option<String>,
    /// Only open (unresolved) drift, or with --open=false only resolved drift.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub open: Option<bool>,
    /// Only drift authorised by this change record.
    #[arg(long, value_name = "ID")]
    pub change: Option<String>,
    /// Most records (1-1000; the API's default is 100).
    #[arg(long, value_parser = limit_arg())]
    pub limit: Option<u16>,
    /// Start after this drift id.
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum WaiverCommand {
    /// Accept deviations of the CIs in scope until the waiver expires (change managers
    /// and admins).
    Create {
        /// A CI selector (repeat for OR).
        #[arg(long, value_name = "SELECTOR", required = true)]
        scope: Vec<String>,
        /// Only these attributes (repeatable; none = every attribute, additions and
        /// removals).
        #[arg(long = "attribute", value_name = "NAME")]
        attributes: Vec<String>,
        /// Why the deviation is acceptable (required; recorded in the audit log).
        #[arg(long)]
        justification: String,
        /// A duration from now (7d, 12h) or a time (RFC 3339, +2h).
        #[arg(long, value_name = "WHEN", value_parser = times::expiry)]
        expires: TimeArg,
    },
    /// Withdraw a waiver before it expires.
    Revoke {
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum PoliciesCommand {
    /// The attribute policies, criticality rules and deny list in force.
    Show,
    /// Replace all three with a JSON file shaped like `policies show --format json`
    /// (admins; "-" reads stdin).
    Set { file: PathBuf },
}

const INCIDENT_STATES: [&str; 5] = ["new", "acknowledged", "in_progress", "resolved", "closed"];
const CATEGORIES: [&str; 5] = [
    "availability",
    "capacity",
    "unauthorized-change",
    "security",
    "identity",
];

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct IncidentsArgs {
    #[arg(long, value_parser = INCIDENT_STATES)]
    pub state: Option<String>,
    /// Only open incidents (new, acknowledged, in progress); --open=false for the others.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub open: Option<bool>,
    #[arg(long, value_parser = CATEGORIES)]
    pub category: Option<String>,
    /// A host id or an exact hostname.
    #[arg(long)]
    pub host: Option<String>,
    /// Most incidents (1-1000; the API's default is 100).
    #[arg(long, value_parser = limit_arg())]
    pub limit: Option<u16>,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum IncidentCommand {
    /// Show an incident with its alerts and timeline.
    Show { number: String },
    /// Acknowledge a new incident.
    Ack {
        number: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Assign an open incident (and move it to in_progress).
    Assign { number: String, assignee: String },
    /// Resolve an open incident.
    Resolve {
        number: String,
        #[arg(long)]
        note: String,
    },
    /// Reopen a resolved incident (in_progress).
    Reopen {
        number: String,
        #[arg(long)]
        note: String,
    },
    /// Close an incident; with --change, a retroactive emergency change accepts its drift
    /// into the baseline (change managers and admins).
    Close {
        number: String,
        #[arg(long)]
        note: Option<String>,
        #[arg(long, value_name = "CHANGE_ID")]
        change: Option<String>,
    },
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct RangeArgs {
    /// Period start (RFC 3339, now, -30d; default: 30 days before --to).
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub from: Option<TimeArg>,
    /// Period end (default: now).
    #[arg(long, value_name = "TIME", value_parser = times::time, allow_hyphen_values = true)]
    pub to: Option<TimeArg>,
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct AvailabilityArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    /// Only this CI.
    #[arg(long, value_name = "ID")]
    pub ci: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditLogArgs {
    #[command(subcommand)]
    pub command: Option<AuditLogCommand>,
    /// Entries after this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// Most entries (1-1000; the API's default is 100).
    #[arg(long, value_parser = limit_arg())]
    pub limit: Option<u16>,
}

#[derive(Debug, PartialEq, Eq, Subcommand)]
pub enum AuditLogCommand {
    /// Check the hash chain; exits 1 and lists each problem when it does not hold
    /// (auditors and admins).
    Verify,
}

/// `--expect class=…,key=…,attribute=…,old=…,new=…`. A comma starts a new part only
/// when a word and `=` follow it (`,new=`), so values may contain other commas; a word
/// that is not a part name is refused rather than read as part of the previous value.
pub fn expected_change(s: &str) -> Result<ExpectedChange, String> {
    const PARTS: [&str; 5] = ["class", "key", "attribute", "old", "new"];
    let part_name = |p: &str| {
        p.split_once('=')
            .map(|(name, _)| name)
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphabetic() || c == '_'))
            .map(str::to_owned)
    };
    let mut parts: Vec<String> = Vec::new();
    for piece in s.split(',') {
        match parts.last_mut() {
            Some(last) if part_name(piece).is_none() => {
                last.push(',');
                last.push_str(piece);
            }
            _ => parts.push(piece.to_owned()),
        }
    }
    let mut e = ExpectedChange {
        class: "*".into(),
        key: "*".into(),
        attribute: "*".into(),
        old: None,
        new: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    for part in &parts {
        let Some((name, value)) = part
            .split_once('=')
            .filter(|(name, _)| PARTS.contains(name))
        else {
            return Err(format!(
                "{part:?} is not one of class=, key=, attribute=, old=, new="
            ));
        };
        if seen.contains(&name) {
            return Err(format!("{name}= given twice"));
        }
        if value.is_empty() {
            return Err(format!("{name}= needs a pattern"));
        }
        let value = value.to_owned();
        match name {
            "class" => e.class = value,
            "key" => e.key = value,
            "attribute" => e.attribute = value,
            "old" => e.old = Some(value),
            _ => e.new = Some(value),
        }
        seen.push(name);
    }
    Ok(e)
}

#[derive(Debug, Default, PartialEq, Eq, Args)]
pub struct CisArgs {
    /// Only this class (e.g. package, service, file).
    #[arg(long)]
    pub class: Option<String>,
    /// Only this host: a host id or an exact hostname.
    #[arg(long)]
    pub host: Option<String>,
    /// Case-insensitive substring of the key or of any string attribute.
    #[arg(long)]
    pub q: Option<String>,
    /// Include absent and retired CIs.
    #[arg(long)]
    pub include_absent: bool,
    /// Page size (1-1000; the API's default is 100).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_LIMIT)))]
    pub limit: Option<u16>,
    /// Start after this CI id (the previous page's next_after).
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
    /// Follow next_after until the last page.
    #[arg(long)]
    pub all: bool,
}

/// Everything a command needs, resolved.
#[derive(Debug)]
pub struct Settings {
    /// `http://host:port[/prefix]`, without a trailing slash.
    pub base_url: String,
    pub token: String,
    pub format: Format,
    pub command: Command,
}

/// Settings that cannot be used (exit 64).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// No URL from any source.
    #[error("no API URL: give --url, set CMDB_URL or give --quickstart-dir")]
    NoUrl,
    /// No token from any source.
    #[error("no API token: give --token, set CMDB_TOKEN or give --quickstart-dir")]
    NoToken,
    /// An https:// URL.
    #[error(
        "{0}: TLS for the API is not supported yet; use http:// (the collector serves its API on loopback)"
    )]
    Https(String),
    /// Not a usable http:// URL.
    #[error("{url}: not a usable API URL ({reason}); expected e.g. http://127.0.0.1:8080")]
    BadUrl { url: String, reason: String },
    /// quickstart.json is missing or malformed.
    #[error("{path}: {reason}")]
    Quickstart { path: String, reason: String },
}

#[derive(Deserialize)]
struct Quickstart {
    api_url: Option<String>,
    admin_token: Option<String>,
}

/// Resolves the connection settings; `env` looks up an environment variable.
pub fn resolve(cli: Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, UsageError> {
    let quickstart = match &cli.quickstart_dir {
        Some(dir) => Some(read_quickstart(&dir.join("quickstart.json"))?),
        None => None,
    };
    let (qs_url, qs_token) = quickstart
        .map(|q| (q.api_url, q.admin_token))
        .unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    let url = non_empty(cli.url)
        .or(non_empty(qs_url))
        .or_else(|| non_empty(env("CMDB_URL")))
        .ok_or(UsageError::NoUrl)?;
    let token = non_empty(cli.token)
        .or(non_empty(qs_token))
        .or_else(|| non_empty(env("CMDB_TOKEN")))
        .ok_or(UsageError::NoToken)?;
    Ok(Settings {
        base_url: base_url(url.trim())?,
        token: token.trim().to_owned(),
        format: cli.format,
        command: cli.command,
    })
}

fn read_quickstart(path: &Path) -> Result<Quickstart, UsageError> {
    let err = |reason: String| UsageError::Quickstart {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    file.take(MAX_QUICKSTART_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_QUICKSTART_BYTES {
        return Err(err(format!("larger than {MAX_QUICKSTART_BYTES} bytes")));
    }
    serde_json::from_str(&text).map_err(|e| err(format!("not quickstart JSON: {e}")))
}

/// Checks an API URL and drops its trailing slash.
fn base_url(url: &str) -> Result<String, UsageError> {
    let bad = |reason: &str| UsageError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "http" => {}
        "https" => return Err(UsageError::Https(url.to_owned())),
        _ => return Err(bad("the scheme must be http")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("no query or fragment allowed"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("credentials go in --token, not the URL"));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cmdbctl").chain(args.iter().copied()))
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn commands_parse() {
        assert_eq!(parse(&["agents"]).unwrap().command, Command::Agents);
        assert_eq!(
            parse(&["agent", "agt-1"]).unwrap().command,
            Command::Agent { id: "agt-1".into() }
        );
        assert_eq!(
            parse(&["ci", "ci-1"]).unwrap().command,
            Command::Ci { id: "ci-1".into() }
        );
        assert_eq!(
            parse(&["relations", "ci-1"]).unwrap().command,
            Command::Relations { id: "ci-1".into() }
        );
        assert_eq!(parse(&["clones"]).unwrap().command, Command::Clones);
        assert_eq!(parse(&["whoami"]).unwrap().command, Command::Whoami);
        let cli = parse(&[
            "--format",
            "json",
            "cis",
            "--class",
            "package",
            "--host",
            "web-1",
            "--q",
            "ssl",
            "--include-absent",
            "--limit",
            "50",
            "--all",
        ])
        .unwrap();
        assert_eq!(cli.format, Format::Json);
        assert_eq!(
            cli.command,
            Command::Cis(CisArgs {
                class: Some("package".into()),
                host: Some("web-1".into()),
                q: Some("ssl".into()),
                include_absent: true,
                limit: Some(50),
                after: None,
                all: true,
            })
        );
        // Global options may follow the command.
        let cli = parse(&["cis", "--url", "http://127.0.0.1:1", "--format", "json"]).unwrap();
        assert_eq!(cli.url.as_deref(), Some("http://127.0.0.1:1"));
        assert_eq!(cli.format, Format::Json);
        assert_eq!(parse(&[]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["cis", "--limit", "0"][..],
            &["cis", "--limit", "1001"],
            &["cis", "--limit", "ten"],
            &["agent"],
            &["frobnicate"],
            &["--format", "yaml", "agents"],
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.use_stderr(), "{args:?} should be an error, not help");
        }
        assert!(!parse(&["--help"]).unwrap_err().use_stderr());
    }

    #[test]
    fn flags_beat_quickstart_beats_env() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("quickstart.json"),
            r#"{"api_url": "http://127.0.0.1:7001/", "admin_token": "qs-token", "extra": 1}"#,
        )
        .unwrap();
        let qs = dir.path().to_str().unwrap();
        let env = HashMap::from([
            ("CMDB_URL", "http://127.0.0.1:7002"),
            ("CMDB_TOKEN", "env-token"),
        ]);
        let env = |k: &str| env.get(k).map(|v| (*v).to_owned());

        let s = resolve(parse(&["agents"]).unwrap(), &env).unwrap();
        assert_eq!(
            (s.base_url.as_str(), s.token.as_str()),
            ("http://127.0.0.1:7002", "env-token")
        );

        let s = resolve(parse(&["--quickstart-dir", qs, "agents"]).unwrap(), &env).unwrap();
        assert_eq!(
            (s.base_url.as_str(), s.token.as_str()),
            ("http://127.0.0.1:7001", "qs-token")
        );

        let s = resolve(
            parse(&["--quickstart-dir", qs, "--token", "flag-token", "agents"]).unwrap(),
            &env,
        )
        .unwrap();
        assert_eq!(
            (s.base_url.as_str(), s.token.as_str()),
            ("http://127.0.0.1:7001", "flag-token")
        );

        let s = resolve(
            parse(&[
                "--url",
                "http://localhost:9/cmdb/",
                "--token",
                "t",
                "agents",
            ])
            .unwrap(),
            &no_env,
        )
        .unwrap();
        assert_eq!(s.base_url, "http://localhost:9/cmdb");
    }

    #[test]
    fn unusable_settings() {
        let r = resolve(parse(&["agents"]).unwrap(), &no_env);
        assert!(matches!(r, Err(UsageError::NoUrl)));
        let r = resolve(
            parse(&["--url", "http://127.0.0.1:1", "agents"]).unwrap(),
            &no_env,
        );
        assert!(matches!(r, Err(UsageError::NoToken)));

        let r = resolve(
            parse(&["--url", "https://127.0.0.1:1", "--token", "t", "agents"]).unwrap(),
            &no_env,
        );
        let e = r.unwrap_err();
        assert!(matches!(e, UsageError::Https(_)));
        assert!(
            e.to_string()
                .contains("TLS for the API is not supported yet")
        );

        for url in [
            "127.0.0.1:8080",
            "ftp://x",
            "http://",
            "http://h/?a=1",
            "http://u:p@h/",
            "not a url",
        ] {
            let r = resolve(
                parse(&["--url", url, "--token", "t", "agents"]).unwrap(),
                &no_env,
            );
            assert!(matches!(r, Err(UsageError::BadUrl { .. })), "{url}: {r:?}");
        }

        let dir = tempfile::tempdir().unwrap();
        let qs = dir.path().to_str().unwrap();
        let r = resolve(parse(&["--quickstart-dir", qs, "agents"]).unwrap(), &no_env);
        assert!(
            matches!(r, Err(UsageError::Quickstart { .. })),
            "missing file"
        );
        std::fs::write(dir.path().join("quickstart.json"), "{not json").unwrap();
        let r = resolve(parse(&["--quickstart-dir", qs, "agents"]).unwrap(), &no_env);
        assert!(
            matches!(r, Err(UsageError::Quickstart { .. })),
            "malformed file"
        );
    }
}
