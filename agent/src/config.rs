//! The agent's configuration file (`cmdb-agent run --config /etc/cmdb/agent.toml`).
//!
//! Owns the TOML schema, its documented defaults (the same ones `packaging/agent.toml`
//! spells out) and the checks a parsed file must pass. Promises: every table rejects unknown
//! keys (`deny_unknown_fields`), so a typo is an error rather than a silently ignored
//! setting; every error names the file, the line and column, and the field (`file:7:1:
//! intervals.heartbeat: invalid duration …`), which `main` prints before exiting 64; durations
//! are humantime strings ("30s", "1h", "500ms"); sizes are plain byte counts. The file is
//! read with a size cap and never written.
//!
//! Never: touches the network, the state directory or the certificates (paths are only
//! resolved: the TLS files default to `<state_dir>/ca.pem`, `cert.pem`, `key.pem`).

use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cmdb_proto::monitor::{self, MonitorSpec};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::de::{DeTable, DeValue};

/// A configuration file larger than this is refused (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// At most this many collector endpoints.
pub const MAX_COLLECTORS: usize = 32;
/// At most this many watch globs.
pub const MAX_WATCH_GLOBS: usize = 1024;
/// The longest interval or timeout accepted (a year): longer is a typo, and timers must not
/// overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// gRPC's default message limit: a batch above it would be refused by the collector.
pub const MAX_BATCH_BYTES_LIMIT: u64 = 4 * 1024 * 1024;
/// The most events one batch may carry.
pub const MAX_BATCH_EVENTS_LIMIT: u32 = 10_000;

const MIB: u64 = 1024 * 1024;

/// The whole agent configuration, with defaults applied and TLS paths resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// Collector endpoints, `https://host:port`, tried in this order (failover). Required.
    pub collectors: Vec<String>,
    /// Where the agent keeps its identity, certificates and outbox. Default /var/lib/cmdb/agent.
    pub state_dir: PathBuf,
    /// Where the host's filesystem is read from. Default "/" (a container uses "/host").
    pub host_root: PathBuf,
    /// Certificate and key paths.
    pub tls: TlsPaths,
    /// Schedules.
    pub intervals: Intervals,
    /// Configuration files tracked as `file` CIs.
    pub watch: Watch,
    /// The on-disk outbox.
    pub outbox: OutboxSettings,
    /// Self-limits.
    pub budget: BudgetSettings,
    /// The connection to the collector.
    pub transport: TransportSettings,
    /// Service monitors (`[[monitors]]`), evaluated every `intervals.monitor` besides those
    /// the collector sends (which win on a name clash). Default none.
    pub monitors: Vec<MonitorSpec>,
}

/// PEM files for mTLS. Each defaults to a file in `state_dir` (written by `enroll`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The CA that signs the collector's certificate. Default `<state_dir>/ca.pem`.
    pub ca: PathBuf,
    /// The agent's certificate. Default `<state_dir>/cert.pem`.
    pub cert: PathBuf,
    /// The agent's private key. Default `<state_dir>/key.pem`.
    pub key: PathBuf,
}

/// Schedules (humantime strings in the file: "1h", "30s", "500ms").
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Intervals {
    /// Full inventory. Default 1h.
    #[serde(deserialize_with = "duration")]
    pub inventory: Duration,
    /// ± this percentage of random jitter on the inventory interval, 0..=50. Default 10.
    pub inventory_jitter_percent: u8,
    /// Listening ports, connections and services. Default 60s.
    #[serde(deserialize_with = "duration")]
    pub fast: Duration,
    /// One metrics sample. Default 15s.
    #[serde(deserialize_with = "duration")]
    pub metrics_sample: Duration,
    /// One metrics summary (min/avg/max/p95 of the samples in it). Default 60s.
    #[serde(deserialize_with = "duration")]
    pub metrics_window: Duration,
    /// Heartbeat to the collector. Default 30s.
    #[serde(deserialize_with = "duration")]
    pub heartbeat: Duration,
    /// Re-hash every watched file even without inotify events. Default 1h.
    #[serde(deserialize_with = "duration")]
    pub file_verify: Duration,
    /// Collect inotify events for this long before re-hashing. Default 500ms.
    #[serde(deserialize_with = "duration")]
    pub file_debounce: Duration,
    /// Full snapshot even without changes. Default 24h.
    #[serde(deserialize_with = "duration")]
    pub snapshot: Duration,
    /// One evaluation of every service monitor (± 10 %). Default 15s.
    #[serde(deserialize_with = "duration")]
    pub monitor: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            inventory: Duration::from_secs(3600),
            inventory_jitter_percent: 10,
            fast: Duration::from_secs(60),
            metrics_sample: Duration::from_secs(15),
            metrics_window: Duration::from_secs(60),
            heartbeat: Duration::from_secs(30),
            file_verify: Duration::from_secs(3600),
            file_debounce: Duration::from_millis(500),
            snapshot: Duration::from_secs(24 * 3600),
            monitor: Duration::from_secs(15),
        }
    }
}

/// Watched configuration files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watch {
    /// Absolute host-path globs. Default: `discover::DEFAULT_WATCH_GLOBS`.
    pub globs: Vec<String>,
    /// Larger files are reported without a hash. Default 16 MiB.
    pub hash_cap_bytes: u64,
    /// At most this many `file` CIs. Default 4096.
    pub max_files: usize,
}

impl Default for Watch {
    fn default() -> Self {
        Watch {
            globs: crate::discover::DEFAULT_WATCH_GLOBS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            hash_cap_bytes: 16 * MIB,
            max_files: 4096,
        }
    }
}

/// The outbox on disk.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// Bound on the queued events' bytes. Default 64 MiB.
    pub max_bytes: u64,
    /// The store's page cache. Default 256 KiB: the outbox is written and read
    /// sequentially, and a cold 40 MiB backlog drains about as fast as with 1 MiB
    /// (docs/BENCHMARKS.md, resident agent footprint).
    pub cache_bytes: u64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            max_bytes: crate::outbox::DEFAULT_MAX_BYTES,
            cache_bytes: crate::outbox::DEFAULT_CACHE_BYTES,
        }
    }
}

/// The agent's self-limits.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSettings {
    /// Average CPU use, in percent of one core, that heavy jobs are paced to. Default 2.0.
    pub cpu_percent: f64,
    /// Resident memory above which optional work is skipped. Default 64 MiB.
    pub memory_bytes: u64,
    /// Timeout of every external command. Default 20s.
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            cpu_percent: 2.0,
            memory_bytes: 64 * MIB,
            command_timeout: Duration::from_secs(20),
        }
    }
}

/// The connection to the collector.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSettings {
    /// TCP + TLS connect. Default 10s.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// One request (enroll) or one batch's acknowledgement. Default 30s.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    /// First reconnect delay (full jitter). Default 1s.
    #[serde(deserialize_with = "duration")]
    pub backoff_initial: Duration,
    /// Longest reconnect delay. Default 60s.
    #[serde(deserialize_with = "duration")]
    pub backoff_max: Duration,
    /// Events per batch. Default 500.
    pub max_batch_events: u32,
    /// Encoded bytes per batch. Default 1 MiB.
    pub max_batch_bytes: u64,
}

impl Default for TransportSettings {
    fn default() -> Self {
        TransportSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_batch_events: 500,
            max_batch_bytes: MIB,
        }
    }
}

/// The file as written: TLS paths still optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    collectors: Vec<String>,
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default = "default_host_root")]
    host_root: PathBuf,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    intervals: Intervals,
    #[serde(default)]
    watch: Watch,
    #[serde(default)]
    outbox: OutboxSettings,
    #[serde(default)]
    budget: BudgetSettings,
    #[serde(default)]
    transport: TransportSettings,
    #[serde(default)]
    monitors: Vec<MonitorSpec>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/cmdb/agent")
}

fn default_host_root() -> PathBuf {
    PathBuf::from("/")
}

/// A humantime duration string ("30s", "1h 30m", "500ms").
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration string such as \"30s\", \"1h\" or \"500ms\"")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            humantime::parse_duration(s).map_err(|e| {
                E::custom(format!(
                    "invalid duration {s:?}: {e} (write e.g. \"30s\", \"1h\", \"500ms\")"
                ))
            })
        }
    }
    d.deserialize_str(V)
}

// === errors ===

/// Where in the file a problem is, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The configuration file.
    pub path: PathBuf,
    /// 1-based line and column (in characters), when the problem has a place in the file.
    pub position: Option<(usize, usize)>,
    /// The dotted field path ("intervals.heartbeat", "collectors[1]"), when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        // An unknown key is named by the message itself; say which table it is in.
        let prefix = match &self.field {
            Some(field) if self.message.starts_with("unknown field") => {
                field.rsplit_once('.').map(|(table, _)| table.to_owned())
            }
            other => other.clone(),
        };
        match prefix {
            Some(p) => write!(f, ": {p}: {}", self.message),
            None => write!(f, ": {}", self.message),
        }
    }
}

/// A configuration file that cannot be used. `main` exits 64 on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, too large, not UTF-8).
    #[error("{}: cannot read: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    /// Not valid TOML, an unknown field, a wrong type or an unparsable value.
    #[error("{0}")]
    Parse(Located),
    /// Parsed, but a value is out of range or inconsistent with another.
    #[error("{0}")]
    Invalid(Located),
}

impl ConfigError {
    /// The location details (none for read errors).
    pub fn located(&self) -> Option<&Located> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse(l) | ConfigError::Invalid(l) => Some(l),
        }
    }
}

// === loading ===

/// Reads and parses a configuration file (at most [`MAX_CONFIG_BYTES`]).
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let read_err = |reason: String| ConfigError::Read {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_err(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(read_err(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        read_err(format!(
            "not valid UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(&text, path)
}

/// Parses configuration text; `path_for_messages` names the file in errors.
pub fn parse(text: &str, path_for_messages: &Path) -> Result<AgentConfig, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span();
        let field = span
            .clone()
            .filter(|s| !s.is_empty())
            .and_then(|s| field_at(text, s));
        ConfigError::Parse(Located {
            path: path_for_messages.to_owned(),
            position: span.map(|s| line_col(text, s.start)),
            field,
            message: e.message().to_owned(),
        })
    })?;
    let config = resolve(raw);
    validate(&config).map_err(|(field, message)| {
        let position = span_of(text, &field).map(|s| line_col(text, s.start));
        ConfigError::Invalid(Located {
            path: path_for_messages.to_owned(),
            position,
            field: Some(field_string(&field)),
            message,
        })
    })?;
    Ok(config)
}

fn resolve(raw: RawConfig) -> AgentConfig {
    let in_state = |p: Option<PathBuf>, name: &str| p.unwrap_or_else(|| raw.state_dir.join(name));
    let tls = TlsPaths {
        ca: in_state(raw.tls.ca, "ca.pem"),
        cert: in_state(raw.tls.cert, "cert.pem"),
        key: in_state(raw.tls.key, "key.pem"),
    };
    AgentConfig {
        collectors: raw.collectors,
        state_dir: raw.state_dir,
        host_root: raw.host_root,
        tls,
        intervals: raw.intervals,
        watch: raw.watch,
        outbox: raw.outbox,
        budget: raw.budget,
        transport: raw.transport,
        monitors: raw.monitors,
    }
}

// === validation ===

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

type Invalid = (Vec<Seg>, String);

fn validate(c: &AgentConfig) -> Result<(), Invalid> {
    use Seg::{Index, Key};
    if c.collectors.is_empty() {
        return Err((
            vec![Key("collectors")],
            "at least one collector endpoint is required (\"https://host:port\")".into(),
        ));
    }
    if c.collectors.len() > MAX_COLLECTORS {
        return Err((
            vec![Key("collectors")],
            format!("at most {MAX_COLLECTORS} collector endpoints"),
        ));
    }
    for (i, url) in c.collectors.iter().enumerate() {
        check_endpoint(url)
            .map_err(|m| (vec![Key("collectors"), Index(i)], format!("{url:?}: {m}")))?;
    }

    let iv = &c.intervals;
    let durations = [
        ("intervals", "inventory", iv.inventory),
        ("intervals", "fast", iv.fast),
        ("intervals", "metrics_sample", iv.metrics_sample),
        ("intervals", "metrics_window", iv.metrics_window),
        ("intervals", "heartbeat", iv.heartbeat),
        ("intervals", "file_verify", iv.file_verify),
        ("intervals", "file_debounce", iv.file_debounce),
        ("intervals", "snapshot", iv.snapshot),
        ("intervals", "monitor", iv.monitor),
        ("budget", "command_timeout", c.budget.command_timeout),
        ("transport", "connect_timeout", c.transport.connect_timeout),
        ("transport", "request_timeout", c.transport.request_timeout),
        ("transport", "backoff_initial", c.transport.backoff_initial),
        ("transport", "backoff_max", c.transport.backoff_max),
    ];
    for (table, key, d) in durations {
        if d.is_zero() {
            return Err((vec![Key(table), Key(key)], "must be longer than 0".into()));
        }
        if d > MAX_DURATION {
            return Err((
                vec![Key(table), Key(key)],
                "must be at most 365 days".into(),
            ));
        }
    }
    if iv.inventory_jitter_percent > 50 {
        return Err((
            vec![Key("intervals"), Key("inventory_jitter_percent")],
            format!("{} is out of range 0..=50", iv.inventory_jitter_percent),
        ));
    }
    if iv.heartbeat >= iv.inventory {
        return Err((
            vec![Key("intervals"), Key("heartbeat")],
            format!(
                "must be shorter than intervals.inventory ({})",
                humantime::format_duration(iv.inventory)
            ),
        ));
    }
    if iv.metrics_sample > iv.metrics_window {
        return Err((
            vec![Key("intervals"), Key("metrics_sample")],
            format!(
                "must not be longer than intervals.metrics_window ({})",
                humantime::format_duration(iv.metrics_window)
            ),
        ));
    }
    if c.transport.backoff_initial > c.transport.backoff_max {
        return Err((
            vec![Key("transport"), Key("backoff_initial")],
            "must not be longer than transport.backoff_max".into(),
        ));
    }

    if c.watch.globs.len() > MAX_WATCH_GLOBS {
        return Err((
            vec![Key("watch"), Key("globs")],
            format!("at most {MAX_WATCH_GLOBS} globs"),
        ));
    }
    for (i, g) in c.watch.globs.iter().enumerate() {
        let at = vec![Key("watch"), Key("globs"), Index(i)];
        if !g.starts_with('/') {
            return Err((at, format!("{g:?} is not an absolute path")));
        }
        if let Err(e) = glob::Pattern::new(g) {
            return Err((at, format!("{g:?}: {e}")));
        }
    }

    let sizes = [
        ("watch", "hash_cap_bytes", c.watch.hash_cap_bytes),
        ("watch", "max_files", c.watch.max_files as u64),
        ("outbox", "max_bytes", c.outbox.max_bytes),
        ("outbox", "cache_bytes", c.outbox.cache_bytes),
        ("budget", "memory_bytes", c.budget.memory_bytes),
        (
            "transport",
            "max_batch_events",
            u64::from(c.transport.max_batch_events),
        ),
        ("transport", "max_batch_bytes", c.transport.max_batch_bytes),
    ];
    for (table, key, v) in sizes {
        if v == 0 {
            return Err((vec![Key(table), Key(key)], "must be greater than 0".into()));
        }
    }
    if c.transport.max_batch_bytes > MAX_BATCH_BYTES_LIMIT {
        return Err((
            vec![Key("transport"), Key("max_batch_bytes")],
            format!("must be at most {MAX_BATCH_BYTES_LIMIT} (the gRPC message limit)"),
        ));
    }
    if c.transport.max_batch_events > MAX_BATCH_EVENTS_LIMIT {
        return Err((
            vec![Key("transport"), Key("max_batch_events")],
            format!("must be at most {MAX_BATCH_EVENTS_LIMIT}"),
        ));
    }
    let cpu = c.budget.cpu_percent;
    if !(cpu.is_finite() && cpu > 0.0 && cpu <= 100.0) {
        return Err((
            vec![Key("budget"), Key("cpu_percent")],
            format!("{cpu} is out of range (0, 100] (percent of one core)"),
        ));
    }
    if let Err((i, e)) = monitor::check_set(&c.monitors) {
        let mut at = vec![Key("monitors"), Index(i)];
        at.extend(e.field().map(Key));
        return Err((at, e.to_string()));
    }
    Ok(())
}

/// Checks `https://host:port` (an optional trailing "/"; no user info, path or query).
fn check_endpoint(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("must start with https:// (the agent only speaks mTLS)")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err("must be https://host:port with no path or query");
    }
    if authority.contains('@') {
        return Err("must not contain user info");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed [ in IPv6 address")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address");
        }
        let port = after.strip_prefix(':').ok_or("missing :port")?;
        (addr, port)
    } else {
        authority.rsplit_once(':').ok_or("missing :port")?
    };
    if host.is_empty() {
        return Err("missing host");
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err("host has characters a DNS name or address cannot have");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be a number in 1..=65535"),
        Ok(_) => Ok(()),
    }
}

// === positions ===

fn field_string(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = text[line_start..offset].chars().count() + 1;
    (line, col)
}

/// The dotted path of the smallest key or value whose span holds all of `span`.
fn field_at(text: &str, span: Range<usize>) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    let mut best: Option<(usize, String)> = None;
    walk_table(doc.get_ref(), "", &mut |path, node, _is_key| {
        if node.start <= span.start && span.end <= node.end {
            let len = node.end - node.start;
            if best.as_ref().is_none_or(|(l, _)| len <= *l) {
                best = Some((len, path.to_owned()));
            }
        }
    });
    best.map(|(_, p)| p)
}

/// The span of the value at `path` (or of its key), if the file spells it.
fn span_of(text: &str, path: &[Seg]) -> Option<Range<usize>> {
    let doc = DeTable::parse(text).ok()?;
    let want = field_string(path);
    let mut found = None;
    // The value's position, not the key's: that is what needs changing.
    walk_table(doc.get_ref(), "", &mut |p, node, is_key| {
        if found.is_none() && !is_key && p == want {
            found = Some(node);
        }
    });
    // Fall back to the nearest spelled ancestor ("collectors" for "collectors[3]").
    if found.is_none() && path.len() > 1 {
        return span_of(text, &path[..path.len() - 1]);
    }
    found
}

/// A visitor of spans: (dotted path, span, whether the span is the key's).
type SpanVisitor<'a> = dyn FnMut(&str, Range<usize>, bool) + 'a;

/// Calls `visit` for every key and value span in the document.
fn walk_table(table: &DeTable<'_>, prefix: &str, visit: &mut SpanVisitor<'_>) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        // A key's own span is visited first, so that an error on the key (unknown field)
        // finds the key even when the value (a table) spans a larger region.
        visit(&path, k.span(), true);
        walk_value(v.get_ref(), v.span(), &path, visit);
    }
}

fn walk_value(value: &DeValue<'_>, span: Range<usize>, path: &str, visit: &mut SpanVisitor<'_>) {
    visit(path, span, false);
    if let Some(t) = value.as_table() {
        walk_table(t, path, visit);
    } else if let Some(a) = value.as_array() {
        for (i, item) in a.iter().enumerate() {
            walk_value(item.get_ref(), item.span(), &format!("{path}[{i}]"), visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmdb_proto::monitor::MonitorKind;
    use proptest::prelude::*;

    const FILE: &str = "/etc/cmdb/agent.toml";

    fn parse_err(text: &str) -> String {
        parse(text, Path::new(FILE)).unwrap_err().to_string()
    }

    fn minimal() -> &'static str {
        "collectors = [\"https://collector.example:7443\"]\n"
    }

    #[test]
    fn a_minimal_file_gets_every_default() {
        let c = parse(minimal(), Path::new(FILE)).unwrap();
        assert_eq!(c.collectors, vec!["https://collector.example:7443"]);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/cmdb/agent"));
        assert_eq!(c.host_root, PathBuf::from("/"));
        assert_eq!(c.tls.ca, PathBuf::from("/var/lib/cmdb/agent/ca.pem"));
        assert_eq!(c.tls.cert, PathBuf::from("/var/lib/cmdb/agent/cert.pem"));
        assert_eq!(c.tls.key, PathBuf::from("/var/lib/cmdb/agent/key.pem"));
        assert_eq!(c.intervals, Intervals::default());
        assert_eq!(c.intervals.heartbeat, Duration::from_secs(30));
        assert_eq!(c.intervals.file_debounce, Duration::from_millis(500));
        assert_eq!(c.watch, Watch::default());
        assert_eq!(
            c.watch.globs.len(),
            crate::discover::DEFAULT_WATCH_GLOBS.len()
        );
        assert_eq!(c.outbox.max_bytes, 64 * MIB);
        assert_eq!(c.outbox.cache_bytes, 256 * 1024);
        assert_eq!(c.budget, BudgetSettings::default());
        assert_eq!(c.transport.max_batch_bytes, MIB);
    }

    #[test]
    fn tls_paths_follow_state_dir_unless_given() {
        let c = parse(
            "collectors = [\"https://c:1\"]\nstate_dir = \"/srv/agent\"\n[tls]\nca = \"/etc/ca.pem\"\n",
            Path::new(FILE),
        )
        .unwrap();
        assert_eq!(c.tls.ca, PathBuf::from("/etc/ca.pem"));
        assert_eq!(c.tls.cert, PathBuf::from("/srv/agent/cert.pem"));
        assert_eq!(c.tls.key, PathBuf::from("/srv/agent/key.pem"));
    }

    #[test]
    fn unknown_top_level_field_names_file_line_and_field() {
        let text = "# comment\n\ncolectors = [\"https://c:1\"]\n";
        let e = parse_err(text);
        assert!(e.starts_with("/etc/cmdb/agent.toml:3:1: "), "{e}");
        assert!(e.contains("unknown field `colectors`"), "{e}");
        assert!(e.contains("expected one of"), "{e}");
    }

    #[test]
    fn unknown_nested_field_names_its_table() {
        let text =
            "collectors = [\"https://c:1\"]\n[intervals]\nfast = \"1m\"\nhartbeat = \"5s\"\n";
        let e = parse(text, Path::new(FILE)).unwrap_err();
        let l = e.located().unwrap();
        assert_eq!(l.field.as_deref(), Some("intervals.hartbeat"));
        let e = e.to_string();
        assert!(
            e.starts_with("/etc/cmdb/agent.toml:4:1: intervals: unknown field `hartbeat`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_line_column_and_field() {
        let text = "collectors = [\"https://c:1\"]\n\n[outbox]\nmax_bytes = \"lots\"\n";
        let e = parse_err(text);
        assert!(
            e.starts_with("/etc/cmdb/agent.toml:4:13: outbox.max_bytes: invalid type"),
            "{e}"
        );
        let e = parse_err("collectors = \"https://c:1\"\n");
        assert!(
            e.starts_with("/etc/cmdb/agent.toml:1:14: collectors: "),
            "{e}"
        );
        let e = parse_err("collectors = [\"https://c:1\", 7]\n");
        assert!(e.contains(":1:30: collectors[1]: invalid type"), "{e}");
    }

    #[test]
    fn bad_duration_names_line_column_and_field() {
        let text = "collectors = [\"https://c:1\"]\n[intervals]\nheartbeat = \"30 parsecs\"\n";
        let e = parse_err(text);
        assert!(
            e.starts_with("/etc/cmdb/agent.toml:3:13: intervals.heartbeat: invalid duration"),
            "{e}"
        );
        // A bare number is not a duration either (seconds? milliseconds?).
        let e = parse_err("collectors = [\"https://c:1\"]\n[intervals]\nheartbeat = 30\n");
        assert!(
            e.contains(":3:13: intervals.heartbeat: invalid type"),
            "{e}"
        );
        assert!(e.contains("\"30s\""), "{e}");
    }

    #[test]
    fn missing_or_empty_collectors_are_named() {
        let e = parse_err("state_dir = \"/x\"\n");
        assert!(e.starts_with("/etc/cmdb/agent.toml:1:1: "), "{e}");
        assert!(e.contains("missing field `collectors`"), "{e}");
        let e = parse_err("state_dir = \"/x\"\ncollectors = []\n");
        assert!(
            e.starts_with("/etc/cmdb/agent.toml:2:14: collectors: at least one"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse_err("collectors = [\"https://c:1\"]\nstate_dir = \n");
        assert!(e.starts_with("/etc/cmdb/agent.toml:2:"), "{e}");
    }

    #[test]
    fn endpoints_must_be_https_with_host_and_port() {
        for (url, why) in [
            ("http://c:1", "https://"),
            ("https://c", "missing :port"),
            ("https://:7443", "missing host"),
            ("https://c:0", "port"),
            ("https://c:99999", "port"),
            ("https://c:7443/path", "no path"),
            ("https://u@c:7443", "user info"),
            ("https://[::1:7443", "unclosed"),
        ] {
            let text = format!("state_dir = \"/x\"\ncollectors = [\"https://ok:1\", \"{url}\"]\n");
            let e = parse_err(&text);
            assert!(e.starts_with("/etc/cmdb/agent.toml:2:"), "{e}");
            assert!(e.contains("collectors[1]:"), "{e}");
            assert!(e.contains(why), "{url}: {e}");
        }
        for ok in [
            "https://collector.example:7443",
            "https://collector.example:7443/",
            "https://10.0.0.1:443",
            "https://[2001:db8::1]:7443",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn ranges_and_consistency_are_checked() {
        let cases = [
            (
                "[intervals]\nfast = \"0s\"\n",
                "intervals.fast: must be longer than 0",
                3,
            ),
            (
                "[intervals]\ninventory_jitter_percent = 51\n",
                "intervals.inventory_jitter_percent: 51 is out of range",
                3,
            ),
            (
                "[intervals]\ninventory = \"1m\"\nheartbeat = \"2m\"\n",
                "intervals.heartbeat: must be shorter than intervals.inventory",
                4,
            ),
            (
                "[outbox]\nmax_bytes = 0\n",
                "outbox.max_bytes: must be greater than 0",
                3,
            ),
            (
                "[budget]\ncpu_percent = -1\n",
                "budget.cpu_percent: -1 is out of range",
                3,
            ),
            (
                "[watch]\nglobs = [\"/etc/x\", \"etc/y\"]\n",
                "watch.globs[1]: \"etc/y\" is not an absolute path",
                3,
            ),
            (
                "[transport]\nbackoff_initial = \"2m\"\n",
                "transport.backoff_initial: must not be longer",
                3,
            ),
            (
                "[intervals]\nsnapshot = \"1000years\"\n",
                "intervals.snapshot: must be at most 365 days",
                3,
            ),
        ];
        for (extra, want, line) in cases {
            let text = format!("collectors = [\"https://c:1\"]\n{extra}");
            let e = parse(&text, Path::new(FILE)).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid(_)), "{e}");
            let e = e.to_string();
            assert!(e.contains(want), "{e}");
            assert!(
                e.starts_with(&format!("/etc/cmdb/agent.toml:{line}:")),
                "{e}"
            );
        }
        // A default that another setting makes invalid points at its table...
        let e = parse_err("collectors = [\"https://c:1\"]\n[intervals]\ninventory = \"10s\"\n");
        assert!(
            e.starts_with("/etc/cmdb/agent.toml:2:1: intervals.heartbeat: must be shorter"),
            "{e}"
        );
        // ...or, when the table is not spelled either, has no line.
        let e = parse_err("collectors = [\"https://c:1\"]\nintervals.inventory = \"10s\"\n");
        assert!(e.contains("intervals.heartbeat: must be shorter"), "{e}");
    }

    #[test]
    fn monitors_parse_with_their_interval() {
        let text = "collectors = [\"https://c:1\"]\n[intervals]\nmonitor = \"5s\"\n\n[[monitors]]\nname = \"web\"\nkind = \"tcp_port\"\ntarget = \"443\"\n\n[[monitors]]\nname = \"nginx\"\nkind = \"systemd_unit\"\ntarget = \"nginx.service\"\n\n[[monitors]]\nname = \"sshd\"\nkind = \"process\"\ntarget = \"/usr/sbin/sshd\"\n";
        let c = parse(text, Path::new(FILE)).unwrap();
        assert_eq!(c.intervals.monitor, Duration::from_secs(5));
        assert_eq!(
            c.monitors,
            vec![
                MonitorSpec {
                    name: "web".into(),
                    kind: MonitorKind::TcpPort,
                    target: "443".into()
                },
                MonitorSpec {
                    name: "nginx".into(),
                    kind: MonitorKind::SystemdUnit,
                    target: "nginx.service".into()
                },
                MonitorSpec {
                    name: "sshd".into(),
                    kind: MonitorKind::Process,
                    target: "/usr/sbin/sshd".into()
                },
            ]
        );
        assert_eq!(
            parse(minimal(), Path::new(FILE)).unwrap().intervals.monitor,
            Duration::from_secs(15)
        );
    }

    #[test]
    fn bad_monitors_name_file_line_and_field() {
        let base = "collectors = [\"https://c:1\"]\n\n[[monitors]]\nname = \"web\"\nkind = \"tcp_port\"\ntarget = \"443\"\n\n[[monitors]]\n";
        let cases = [
            // A duplicate name points at the second one's name.
            (
                "name = \"web\"\nkind = \"process\"\ntarget = \"nginx\"\n",
                "/etc/cmdb/agent.toml:9:8: monitors[1].name: duplicate monitor name \"web\"",
            ),
            (
                "name = \"x\"\nkind = \"ping\"\ntarget = \"h\"\n",
                "/etc/cmdb/agent.toml:10:8: monitors[1].kind: unknown variant `ping`, expected one of `systemd_unit`, `process`, `tcp_port`",
            ),
            (
                "name = \"x\"\nkind = \"tcp_port\"\ntarget = \"http\"\n",
                "/etc/cmdb/agent.toml:11:10: monitors[1].target: \"http\" is not a port number",
            ),
            (
                "name = \"x\"\nkind = \"process\"\ntarget = \"nginx\"\ninterval = \"1s\"\n",
                "/etc/cmdb/agent.toml:12:1: monitors[1]: unknown field `interval`",
            ),
            (
                "name = \"x\"\nkind = \"process\"\n",
                "missing field `target`",
            ),
            (
                &format!(
                    "name = \"{}\"\nkind = \"process\"\ntarget = \"x\"\n",
                    "n".repeat(129)
                ),
                "/etc/cmdb/agent.toml:9:8: monitors[1].name: a monitor name has 1 to 128 bytes",
            ),
        ];
        for (extra, want) in cases {
            let e = parse(&format!("{base}{extra}"), Path::new(FILE)).unwrap_err();
            let s = e.to_string();
            assert!(s.contains(want), "want {want:?} in {s:?}");
            assert!(s.starts_with(FILE), "{s}");
        }
        let e = parse_err("collectors = [\"https://c:1\"]\n[intervals]\nmonitor = \"0s\"\n");
        assert!(
            e.contains(":3:11: intervals.monitor: must be longer than 0"),
            "{e}"
        );
        let many: String = (0..=monitor::MAX_MONITORS)
            .map(|i| {
                format!("[[monitors]]\nname = \"m{i}\"\nkind = \"tcp_port\"\ntarget = \"22\"\n")
            })
            .collect();
        let e = parse_err(&format!("collectors = [\"https://c:1\"]\n{many}"));
        assert!(e.contains("monitors[256]: at most 256 monitors"), "{e}");
    }

    #[test]
    fn load_reads_files_and_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, minimal()).unwrap();
        assert!(load(&p).is_ok());
        let missing = dir.path().join("nope.toml");
        let e = load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.toml: cannot read"), "{e}");
        std::fs::write(&p, vec![0xff, 0xfe]).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("UTF-8"));
        std::fs::write(&p, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("larger than"));
    }

    #[test]
    fn the_packaged_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        let packaged = load(&path).unwrap();
        let defaults = parse(minimal(), Path::new(FILE)).unwrap();
        assert_eq!(packaged, defaults);
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é=1", 2), (1, 2));
        assert_eq!(line_col("é=1", 1), (1, 1));
        assert_eq!(line_col("x", 99), (1, 2));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC*") {
            let _ = parse(&s, Path::new(FILE));
        }

        #[test]
        fn toml_shaped_text_never_panics(
            lines in proptest::collection::vec(
                "(\\[[a-z_.]{0,12}\\]|[a-z_]{1,12} = (\"[ -~]{0,20}\"|-?[0-9]{1,6}|\\[\\]|true|\\{\\}))",
                0..12,
            )
        ) {
            let text = lines.join("\n");
            if let Err(e) = parse(&text, Path::new(FILE)) {
                prop_assert!(e.to_string().starts_with(FILE));
            }
        }

        #[test]
        fn endpoint_check_never_panics(s in "https://\\PC{0,40}") {
            let _ = check_endpoint(&s);
        }
    }
}
