//! `cmdb-collector serve --config FILE`: the collector's TOML configuration, with
//! `deny_unknown_fields` everywhere and documented defaults. A bad file is reported with
//! its path, line, column and field; `main` exits 64 on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field or a wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parses but cannot work.
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// The collector's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Where the store, PKI and tokens live. Default /var/lib/cmdb/collector.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// gRPC (agents, mTLS). Default 127.0.0.1:7443.
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// HTTP API, /metrics, /healthz. Default 127.0.0.1:8080.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    #[serde(default)]
    pub store: StoreSettings,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub agents: AgentSettings,
    #[serde(default)]
    pub judgment: JudgmentConfig,
    #[serde(default)]
    pub availability: crate::availability::AvailabilitySettings,
    /// Capacity roll-ups, retention tiers and forecasts (`[capacity]`).
    #[serde(default)]
    pub capacity: crate::capacity::CapacitySettings,
    /// Incident notification sinks (`[[notify.sinks]]`); none by default.
    #[serde(default)]
    pub notify: NotifySettings,
    /// Software licences (`[licenses]`).
    #[serde(default)]
    pub licenses: LicensesConfig,
    /// CMDB health KPIs: required attributes, effective durations, report cache
    /// (`[cmdb_health]`, see [`crate::cmdb_health::HealthSettings`]).
    #[serde(default)]
    pub cmdb_health: crate::cmdb_health::HealthSettings,
}

/// Software licence settings (`[licenses]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LicensesConfig {
    /// Normalisation rules (JSON, or TOML if the name ends in .toml) loaded at start,
    /// replacing the stored ones. Default none.
    #[serde(default)]
    pub rules_file: Option<PathBuf>,
    /// Allow/deny lists (JSON or TOML) loaded at start, replacing the stored ones.
    #[serde(default)]
    pub lists_file: Option<PathBuf>,
    /// Apply the built-in rules after the operator's. Default true.
    #[serde(default = "default_true")]
    pub builtin_rules: bool,
    /// Entitlements ending within this are flagged and announced. Default "60d".
    #[serde(default = "default_expiry_window", with = "duration")]
    pub expiry_window: Duration,
    /// How often the software index is rebuilt from the store. Default "5m".
    #[serde(default = "default_license_refresh", with = "duration")]
    pub refresh: Duration,
}

impl Default for LicensesConfig {
    fn default() -> Self {
        LicensesConfig {
            rules_file: None,
            lists_file: None,
            builtin_rules: true,
            expiry_window: default_expiry_window(),
            refresh: default_license_refresh(),
        }
    }
}

impl LicensesConfig {
    /// The licence service's settings.
    pub fn settings(&self) -> crate::licenses::LicenseSettings {
        crate::licenses::LicenseSettings {
            rules_file: self.rules_file.clone(),
            lists_file: self.lists_file.clone(),
            builtin_rules: self.builtin_rules,
            expiry_window: self.expiry_window,
            refresh: self.refresh,
        }
    }
}

fn default_expiry_window() -> Duration {
    Duration::from_secs(60 * 86_400)
}
fn default_license_refresh() -> Duration {
    Duration::from_secs(300)
}

/// Drift, correlation and incident settings (`[judgment]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgmentConfig {
    /// A host's first inventory becomes its initial baseline (pending approval). Default true.
    #[serde(default = "default_true")]
    pub initial_baselines: bool,
    /// Alerts of one host and category within this window join one incident. Default "2m".
    #[serde(default = "default_grouping", with = "duration")]
    pub grouping_window: Duration,
    /// More flips than this within `flap_window` make one flapping incident. Default 5.
    #[serde(default = "default_flap_threshold")]
    pub flap_threshold: usize,
    /// Default "10m".
    #[serde(default = "default_flap_window", with = "duration")]
    pub flap_window: Duration,
    /// Resolved incidents close by themselves after this long. Default "3d".
    #[serde(default = "default_auto_close", with = "duration")]
    pub auto_close: Duration,
    /// CPU priority (`nice`, 0–19) of the threads doing derived work from the change feed
    /// (this engine and host links): above 0, ingest is favoured when the cores are busy and
    /// the derived work catches up when they are not (`crate::background`). Default 10.
    #[serde(default = "default_worker_nice")]
    pub worker_nice: i32,
}

impl Default for JudgmentConfig {
    fn default() -> Self {
        JudgmentConfig {
            initial_baselines: true,
            grouping_window: default_grouping(),
            flap_threshold: default_flap_threshold(),
            flap_window: default_flap_window(),
            auto_close: default_auto_close(),
            worker_nice: default_worker_nice(),
        }
    }
}

impl CollectorConfig {
    /// The judgment engine's settings from this configuration.
    pub fn judgment_settings(&self) -> crate::judgment::JudgmentSettings {
        crate::judgment::JudgmentSettings {
            correlation: crate::correlate::CorrelationSettings {
                grouping_window: self.judgment.grouping_window,
                flap_threshold: self.judgment.flap_threshold,
                flap_window: self.judgment.flap_window,
            },
            heartbeat: self.agents.heartbeat,
            missed_heartbeats: self.availability.missed_heartbeats,
            initial_baselines: self.judgment.initial_baselines,
            auto_close: self.judgment.auto_close,
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_grouping() -> Duration {
    Duration::from_secs(120)
}
fn default_flap_threshold() -> usize {
    5
}
fn default_flap_window() -> Duration {
    Duration::from_secs(600)
}
fn default_worker_nice() -> i32 {
    10
}
fn default_auto_close() -> Duration {
    Duration::from_secs(3 * 24 * 3600)
}

/// Embedded store settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// sled page cache. Default 256 MiB.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// A CI absent this long is retired (never deleted). Default "30d".
    #[serde(default = "default_absent_retention", with = "duration")]
    pub absent_retention: Duration,
    /// Metric summaries older than this are pruned. Default "7d".
    #[serde(default = "default_metrics_retention", with = "duration")]
    pub metrics_retention: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            cache_bytes: default_cache_bytes(),
            absent_retention: default_absent_retention(),
            metrics_retention: default_metrics_retention(),
        }
    }
}

/// Bounds on what one agent may send.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest gRPC message accepted (a snapshot of a big host). Default 16 MiB.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Most events in one Batch. Default 1000.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// Sustained events per second per agent; the Ack hints it, a stream above twice it for
    /// a whole second is ended with RESOURCE_EXHAUSTED. Default 2000.
    #[serde(default = "default_rate")]
    pub per_agent_events_per_second: u32,
    /// Concurrent agent streams. Default 20000.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Streams whose events are being applied to the store at once; the others' batches
    /// wait, read ahead, and are applied together when their turn comes (heartbeats do not
    /// wait). 0: twice the CPU cores. Default 0.
    #[serde(default)]
    pub concurrent_applies: usize,
}

impl Limits {
    /// `concurrent_applies`, with 0 resolved to twice the CPU cores.
    pub fn apply_slots(&self) -> usize {
        match self.concurrent_applies {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
            n => n,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message_bytes(),
            max_batch_events: default_max_batch_events(),
            per_agent_events_per_second: default_rate(),
            max_streams: default_max_streams(),
            concurrent_applies: 0,
        }
    }
}

/// Agent lifecycle settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Heartbeat interval the collector asks agents for. Default "30s".
    #[serde(default = "default_heartbeat", with = "duration")]
    pub heartbeat: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            heartbeat: default_heartbeat(),
        }
    }
}

/// Where incident notifications go ([`crate::notify`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySettings {
    /// The sinks, each with its own filter; none by default.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// A notification still undelivered this long after it was queued is moved to the
    /// dead letters (and logged at ERROR). Default "24h".
    #[serde(default = "default_max_attempts_age", with = "duration")]
    pub max_attempts_age: Duration,
    /// Upper bound of the first retry delay; it doubles with every failed attempt (full
    /// jitter: the delay is uniform between zero and the bound). Default "1s".
    #[serde(default = "default_backoff_initial", with = "duration")]
    pub backoff_initial: Duration,
    /// The retry delay's bound stops doubling here. Default "5m".
    #[serde(default = "default_backoff_max", with = "duration")]
    pub backoff_max: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            sinks: Vec::new(),
            max_attempts_age: default_max_attempts_age(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
        }
    }
}

/// Incident categories a sink may filter on.
pub const INCIDENT_CATEGORIES: &[&str] = &[
    "availability",
    "capacity",
    "unauthorized-change",
    "security",
    "identity",
];
/// Longest sink name; names are `[a-z0-9_-]`, unique.
pub const MAX_SINK_NAME: usize = 64;
/// Longest per-request timeout a sink may have.
pub const MAX_SINK_TIMEOUT: Duration = Duration::from_secs(300);

/// One notification sink: an HTTP endpoint that receives a POST per incident notice.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique, `[a-z0-9_-]`, at most 64 bytes: it prefixes the sink's outbox entries, so
    /// renaming a sink dead-letters what is still queued for the old name.
    pub name: String,
    /// `http://host[:port]/path`. https is refused: the collector's HTTP client is built
    /// without a TLS backend (yet); put a TLS-terminating proxy on the loopback instead.
    pub url: String,
    /// The body's shape.
    pub format: SinkFormat,
    /// Incident categories sent; empty (the default) = all.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Incidents whose priority number is at most this are sent (1 = only P1). Default 5.
    #[serde(default = "default_min_priority")]
    pub min_priority: u8,
    /// Sent verbatim as the `Authorization` header, e.g. "Basic ..." or "Bearer ...".
    /// Never logged.
    #[serde(default)]
    pub authorization: Option<String>,
    /// Per-request timeout (connect, send, answer). Default "10s".
    #[serde(default = "default_sink_timeout", with = "duration")]
    pub timeout: Duration,
}

impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("format", &self.format)
            .field("categories", &self.categories)
            .field("min_priority", &self.min_priority)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The body a sink receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkFormat {
    /// `{"source":"cmdb","event":"opened",...}`: the notice as is.
    Json,
    /// A ServiceNow incident-table record (POST to `/api/now/table/incident` or an import
    /// set), coalescing on `correlation_id`.
    Servicenow,
}

/// A sink setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("sink {name:?}: {message}")]
pub struct InvalidSink {
    /// The field, e.g. `notify.sinks.url`.
    pub field: &'static str,
    pub name: String,
    pub message: String,
}

// === impl SinkConfig ===

impl SinkConfig {
    /// Checks everything but uniqueness of the name (that needs the whole list).
    pub fn validate(&self) -> Result<(), InvalidSink> {
        let invalid = |field, message: String| InvalidSink {
            field,
            name: self.name.clone(),
            message,
        };
        if self.name.is_empty()
            || self.name.len() > MAX_SINK_NAME
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(invalid(
                "notify.sinks.name",
                format!("must be 1 to {MAX_SINK_NAME} characters of a-z, 0-9, '_' and '-'"),
            ));
        }
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| invalid("notify.sinks.url", format!("{:?}: {e}", self.url)))?;
        match url.scheme() {
            "http" => {}
            "https" => {
                return Err(invalid(
                    "notify.sinks.url",
                    "https is not supported yet: the collector's HTTP client has no TLS \
                     backend; use http:// to a TLS-terminating proxy on the loopback"
                        .to_owned(),
                ));
            }
            other => {
                return Err(invalid(
                    "notify.sinks.url",
                    format!("scheme {other:?} is not supported; use http://"),
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("notify.sinks.url", "has no host".to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "notify.sinks.url",
                "must not carry credentials; use `authorization`".to_owned(),
            ));
        }
        if let Some(c) = self
            .categories
            .iter()
            .find(|c| !INCIDENT_CATEGORIES.contains(&c.as_str()))
        {
            return Err(invalid(
                "notify.sinks.categories",
                format!(
                    "unknown category {c:?}; known: {}",
                    INCIDENT_CATEGORIES.join(", ")
                ),
            ));
        }
        if !(1..=5).contains(&self.min_priority) {
            return Err(invalid(
                "notify.sinks.min_priority",
                "must be 1 to 5".to_owned(),
            ));
        }
        if let Some(a) = &self.authorization
            && (a.is_empty() || reqwest::header::HeaderValue::from_str(a).is_err())
        {
            // The value itself is a secret: never echo it.
            return Err(invalid(
                "notify.sinks.authorization",
                "must be a non-empty header value (visible ASCII, no line breaks)".to_owned(),
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_SINK_TIMEOUT {
            return Err(invalid(
                "notify.sinks.timeout",
                "must be positive and at most 5m".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Checks every sink and that names are unique.
pub fn validate_sinks(sinks: &[SinkConfig]) -> Result<(), InvalidSink> {
    let mut seen = std::collections::HashSet::new();
    for sink in sinks {
        sink.validate()?;
        if !seen.insert(sink.name.as_str()) {
            return Err(InvalidSink {
                field: "notify.sinks.name",
                name: sink.name.clone(),
                message: "is used by another sink".to_owned(),
            });
        }
    }
    Ok(())
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cmdb/collector")
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_cache_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_absent_retention() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_metrics_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_message_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_max_batch_events() -> usize {
    1000
}
fn default_rate() -> u32 {
    2000
}
fn default_max_streams() -> usize {
    20_000
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}
fn default_max_attempts_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_backoff_initial() -> Duration {
    crate::notify::INITIAL_BACKOFF
}
fn default_backoff_max() -> Duration {
    crate::notify::MAX_BACKOFF
}
fn default_min_priority() -> u8 {
    5
}
fn default_sink_timeout() -> Duration {
    Duration::from_secs(10)
}

mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

impl CollectorConfig {
    /// The configuration with every default and the given data directory.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        CollectorConfig {
            data_dir,
            grpc_listen: default_grpc_listen(),
            http_listen: default_http_listen(),
            store: StoreSettings::default(),
            limits: Limits::default(),
            agents: AgentSettings::default(),
            judgment: JudgmentConfig::default(),
            availability: crate::availability::AvailabilitySettings::default(),
            capacity: crate::capacity::CapacitySettings::default(),
            notify: NotifySettings::default(),
            licenses: LicensesConfig::default(),
            cmdb_health: crate::cmdb_health::HealthSettings::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: CollectorConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        let invalid = |field, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message: message.to_owned(),
        };
        if cfg.limits.max_message_bytes < 64 * 1024 {
            return Err(invalid(
                "limits.max_message_bytes",
                "must be at least 65536",
            ));
        }
        if cfg.limits.max_batch_events == 0 {
            return Err(invalid("limits.max_batch_events", "must be at least 1"));
        }
        if cfg.limits.per_agent_events_per_second == 0 {
            return Err(invalid(
                "limits.per_agent_events_per_second",
                "must be at least 1",
            ));
        }
        if cfg.agents.heartbeat.is_zero() {
            return Err(invalid("agents.heartbeat", "must be positive"));
        }
        if cfg.availability.missed_heartbeats == 0 {
            return Err(invalid(
                "availability.missed_heartbeats",
                "must be at least 1",
            ));
        }
        if cfg.judgment.flap_window.is_zero() || cfg.judgment.flap_threshold == 0 {
            return Err(invalid(
                "judgment.flap_window",
                "flap_window and flap_threshold must be positive",
            ));
        }
        if !(0..=19).contains(&cfg.judgment.worker_nice) {
            return Err(invalid("judgment.worker_nice", "must be 0 to 19"));
        }
        if let Err((field, message)) = cfg.capacity.validate() {
            return Err(invalid(field, &message));
        }
        if let Err((field, message)) = cfg.cmdb_health.validate() {
            return Err(invalid(field, &message));
        }
        let mut names = std::collections::BTreeSet::new();
        for m in &cfg.availability.monitors {
            m.validate()
                .map_err(|e| invalid("availability.monitors", &e))?;
            if !names.insert(m.name.as_str()) {
                return Err(invalid(
                    "availability.monitors",
                    &format!("monitor name {:?} is used twice", m.name),
                ));
            }
        }
        if cfg.availability.monitors.len() > 256 {
            return Err(invalid("availability.monitors", "at most 256 monitors"));
        }
        if cfg.notify.max_attempts_age.is_zero() {
            return Err(invalid("notify.max_attempts_age", "must be positive"));
        }
        if cfg.notify.backoff_initial.is_zero() {
            return Err(invalid("notify.backoff_initial", "must be positive"));
        }
        if cfg.notify.backoff_max < cfg.notify.backoff_initial {
            return Err(invalid(
                "notify.backoff_max",
                "must be at least notify.backoff_initial",
            ));
        }
        validate_sinks(&cfg.notify.sinks).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            field: e.field,
            message: format!("sink {:?}: {}", e.name, e.message),
        })?;
        Ok(cfg)
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_file_line_and_field() {
        let p = Path::new("/etc/cmdb/collector.toml");
        let cfg = CollectorConfig::parse("data_dir = \"/tmp/x\"\n", p).unwrap();
        assert_eq!(cfg.grpc_listen.port(), 7443);
        assert_eq!(cfg.agents.heartbeat, Duration::from_secs(30));

        let e = CollectorConfig::parse("data_dir = \"/x\"\n\n[limits]\nmax_batch_evnts = 3\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/cmdb/collector.toml:4:"), "{e}");
        assert!(e.contains("max_batch_evnts"), "{e}");

        let e = CollectorConfig::parse("[agents]\nheartbeat = \"soon\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("soon"), "{e}");

        let e = CollectorConfig::parse("[limits]\nmax_batch_events = 0\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_batch_events"), "{e}");
    }

    #[test]
    fn concurrent_applies_default_to_twice_the_cores() {
        let p = Path::new("c.toml");
        let cfg = CollectorConfig::parse("data_dir = \"/x\"\n", p).unwrap();
        assert_eq!(cfg.limits.concurrent_applies, 0);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(cfg.limits.apply_slots(), 2 * cores);
        let cfg =
            CollectorConfig::parse("data_dir = \"/x\"\n[limits]\nconcurrent_applies = 3\n", p)
                .unwrap();
        assert_eq!(cfg.limits.apply_slots(), 3);
    }

    #[test]
    fn notify_sinks_parse_with_defaults() {
        let p = Path::new("c.toml");
        let cfg = CollectorConfig::parse(
            "[[notify.sinks]]\nname = \"ops-hook\"\nurl = \"http://127.0.0.1:9000/hook\"\nformat = \"json\"\n\n\
             [[notify.sinks]]\nname = \"snow\"\nurl = \"http://proxy.local/api/now/table/incident\"\n\
             format = \"servicenow\"\ncategories = [\"availability\", \"security\"]\nmin_priority = 2\n\
             authorization = \"Basic c2VjcmV0\"\ntimeout = \"3s\"\n",
            p,
        )
        .unwrap();
        assert_eq!(cfg.notify.max_attempts_age, Duration::from_secs(24 * 3600));
        assert_eq!(cfg.notify.backoff_initial, Duration::from_secs(1));
        assert_eq!(cfg.notify.backoff_max, Duration::from_secs(300));
        let [hook, snow] = cfg.notify.sinks.as_slice() else {
            panic!("two sinks expected")
        };
        assert_eq!(hook.format, SinkFormat::Json);
        assert_eq!(hook.min_priority, 5);
        assert!(hook.categories.is_empty());
        assert_eq!(hook.timeout, Duration::from_secs(10));
        assert_eq!(snow.format, SinkFormat::Servicenow);
        assert_eq!(snow.min_priority, 2);
        assert_eq!(snow.timeout, Duration::from_secs(3));
        // The secret never shows in Debug output (logs of the parsed config).
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn bad_notify_sinks_name_the_field() {
        let p = Path::new("c.toml");
        let sink = |extra: &str| {
            format!(
                "[[notify.sinks]]\nname = \"s\"\nurl = \"http://h/x\"\nformat = \"json\"\n{extra}"
            )
        };
        let err = |text: &str| CollectorConfig::parse(text, p).unwrap_err().to_string();

        let e = err(&sink("").replace("http://h/x", "https://h/x"));
        assert!(
            e.contains("notify.sinks.url") && e.contains("no TLS backend"),
            "{e}"
        );
        let e = err(&sink("").replace("http://h/x", "ftp://h/x"));
        assert!(e.contains("notify.sinks.url"), "{e}");
        let e = err(&sink("").replace("http://h/x", "not a url"));
        assert!(e.contains("notify.sinks.url"), "{e}");
        let e = err(&sink("categories = [\"weather\"]\n"));
        assert!(
            e.contains("notify.sinks.categories") && e.contains("weather"),
            "{e}"
        );
        let e = err(&sink("min_priority = 0\n"));
        assert!(e.contains("notify.sinks.min_priority"), "{e}");
        let e = err(&sink("min_priority = 6\n"));
        assert!(e.contains("notify.sinks.min_priority"), "{e}");
        let e = err(&sink("timeout = \"0s\"\n"));
        assert!(e.contains("notify.sinks.timeout"), "{e}");
        let e = err(&sink("authorization = \"Bearer a\\nb\"\n"));
        assert!(e.contains("notify.sinks.authorization"), "{e}");
        assert!(!e.contains("Bearer"), "the secret is not echoed: {e}");
        let e = err(&sink("").replace("name = \"s\"", "name = \"Has Space\""));
        assert!(e.contains("notify.sinks.name"), "{e}");
        let e = err(&format!("{}{}", sink(""), sink("")));
        assert!(
            e.contains("notify.sinks.name") && e.contains("another sink"),
            "{e}"
        );
        let e = err(&sink("").replace("\"json\"", "\"xml\""));
        assert!(e.contains(":4:") && e.contains("xml"), "{e}");
        let e = err("[notify]\nmax_attempts_age = \"0s\"\n");
        assert!(e.contains("notify.max_attempts_age"), "{e}");
        let e = err("[notify]\nbackoff_initial = \"0s\"\n");
        assert!(e.contains("notify.backoff_initial"), "{e}");
        let e = err("[notify]\nbackoff_initial = \"2s\"\nbackoff_max = \"1s\"\n");
        assert!(e.contains("notify.backoff_max"), "{e}");
        let ok = CollectorConfig::parse(
            "[notify]\nbackoff_initial = \"100ms\"\nbackoff_max = \"2s\"\n",
            p,
        )
        .unwrap();
        assert_eq!(ok.notify.backoff_initial, Duration::from_millis(100));
        assert_eq!(ok.notify.backoff_max, Duration::from_secs(2));
        let e = err(&sink("colour = \"red\"\n"));
        assert!(e.contains("colour"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = CollectorConfig::parse(&s, Path::new("x.toml"));
        }
    }
}
