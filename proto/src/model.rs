//! The CI model: inventory, items, typed attribute values, relations, collector reports and
//! the host identity block. Its serde JSON form is the `cmdb.inventory/v1` contract.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// The schema tag every inventory document carries.
pub const SCHEMA: &str = "cmdb.inventory/v1";

/// CI class names (DESIGN.md's table).
pub mod class {
    pub const SYSTEM: &str = "system";
    pub const OS: &str = "os";
    pub const CPU: &str = "cpu";
    pub const MEMORY: &str = "memory";
    pub const MEMORY_MODULE: &str = "memory_module";
    pub const DISK: &str = "disk";
    pub const FILESYSTEM: &str = "filesystem";
    pub const NETWORK_INTERFACE: &str = "network_interface";
    pub const PACKAGE: &str = "package";
    pub const SERVICE: &str = "service";
    pub const LISTENING_PORT: &str = "listening_port";
    pub const CONNECTION: &str = "connection";
    pub const USER: &str = "user";
    pub const GROUP: &str = "group";
    pub const KERNEL_MODULE: &str = "kernel_module";
    pub const FILE: &str = "file";
    pub const PROCESS: &str = "process";
    /// A service monitor's result. Produced by the resident agent's monitor rounds, not by
    /// discovery, so it is not in [`ALL`] (the classes `inventory --only` can select).
    pub const MONITOR: &str = "monitor";

    /// Every class, in the order DESIGN.md lists them.
    pub const ALL: &[&str] = &[
        SYSTEM,
        OS,
        CPU,
        MEMORY,
        MEMORY_MODULE,
        DISK,
        FILESYSTEM,
        NETWORK_INTERFACE,
        PACKAGE,
        SERVICE,
        LISTENING_PORT,
        CONNECTION,
        USER,
        GROUP,
        KERNEL_MODULE,
        FILE,
        PROCESS,
    ];
}

/// A typed attribute value. JSON: null, bool, integer, float, string or array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<AttrValue>),
}

impl AttrValue {
    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside, if this is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements, if this is a list.
    pub fn as_list(&self) -> Option<&[AttrValue]> {
        match self {
            AttrValue::List(l) => Some(l),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, AttrValue::Null)
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Null => f.write_str("-"),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Float(x) => write!(f, "{x}"),
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::List(l) => {
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                Ok(())
            }
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_owned())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}
impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}
impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}
impl From<i32> for AttrValue {
    fn from(i: i32) -> Self {
        AttrValue::Int(i64::from(i))
    }
}
impl From<u32> for AttrValue {
    fn from(i: u32) -> Self {
        AttrValue::Int(i64::from(i))
    }
}
impl From<u64> for AttrValue {
    /// Values beyond i64::MAX saturate (no real attribute gets there).
    fn from(i: u64) -> Self {
        AttrValue::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<usize> for AttrValue {
    fn from(i: usize) -> Self {
        AttrValue::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<f64> for AttrValue {
    fn from(x: f64) -> Self {
        AttrValue::Float(x)
    }
}
impl<T: Into<AttrValue>> From<Option<T>> for AttrValue {
    fn from(o: Option<T>) -> Self {
        o.map_or(AttrValue::Null, Into::into)
    }
}
impl<T: Into<AttrValue>> From<Vec<T>> for AttrValue {
    fn from(v: Vec<T>) -> Self {
        AttrValue::List(v.into_iter().map(Into::into).collect())
    }
}

/// Attributes of an item, in a deterministic (sorted) order.
pub type Attrs = BTreeMap<String, AttrValue>;

/// One configuration item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub class: String,
    pub key: String,
    pub attrs: Attrs,
}

impl Item {
    pub fn new(class: &str, key: impl Into<String>) -> Self {
        Item {
            class: class.to_owned(),
            key: key.into(),
            attrs: Attrs::new(),
        }
    }

    /// Builder-style attribute setter.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<AttrValue>) -> Self {
        self.attrs.insert(name.to_owned(), value.into());
        self
    }

    /// Sets an attribute in place.
    pub fn set(&mut self, name: &str, value: impl Into<AttrValue>) {
        self.attrs.insert(name.to_owned(), value.into());
    }

    pub fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attrs.get(name)
    }

    /// `<class>/<key>`, the name relations use.
    pub fn reference(&self) -> String {
        reference(&self.class, &self.key)
    }
}

/// `<class>/<key>`.
pub fn reference(class: &str, key: &str) -> String {
    format!("{class}/{key}")
}

/// A directed relation between two CIs of one host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Relation {
    pub from: String,
    pub to: String,
    pub kind: String,
}

/// How a discovery collector fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectorState {
    Ok,
    Partial,
    Timeout,
    Error,
    PermissionDenied,
    Unsupported,
}

impl CollectorState {
    pub fn as_str(self) -> &'static str {
        match self {
            CollectorState::Ok => "ok",
            CollectorState::Partial => "partial",
            CollectorState::Timeout => "timeout",
            CollectorState::Error => "error",
            CollectorState::PermissionDenied => "permission_denied",
            CollectorState::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for CollectorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `collectors` in the inventory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectorReport {
    pub name: String,
    pub status: CollectorState,
    pub duration_ms: u64,
    pub items: u64,
    pub message: Option<String>,
    /// The classes this collector is authoritative for.
    pub classes: Vec<String>,
}

/// The `host` identity block: what the collector identifies the host by.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostIdentity {
    pub hostname: Option<String>,
    pub fqdn: Option<String>,
    pub machine_id: Option<String>,
    pub product_uuid: Option<String>,
    pub serial_number: Option<String>,
    pub board_serial: Option<String>,
    pub cloud_instance_id: Option<String>,
    pub macs: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub instance_id: String,
}

/// One full inventory document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub schema: String,
    #[serde(with = "rfc3339")]
    pub collected_at: SystemTime,
    pub agent: AgentInfo,
    pub host: HostIdentity,
    pub collectors: Vec<CollectorReport>,
    pub items: Vec<Item>,
    pub relations: Vec<Relation>,
}

impl Inventory {
    /// Sorts items by (class, key) and relations, so that output and hashes are stable.
    pub fn canonicalize(&mut self) {
        self.items
            .sort_by(|a, b| (&a.class, &a.key).cmp(&(&b.class, &b.key)));
        self.relations.sort();
        self.relations.dedup();
    }

    /// blake3 over the canonical item and relation set (not timestamps or statuses):
    /// equal hashes mean equal configuration.
    pub fn content_hash(&self) -> [u8; 32] {
        content_hash(&self.items, &self.relations)
    }
}

/// blake3 over items and relations, independent of their order.
pub fn content_hash(items: &[Item], relations: &[Relation]) -> [u8; 32] {
    let mut items: Vec<&Item> = items.iter().collect();
    items.sort_by(|a, b| (&a.class, &a.key).cmp(&(&b.class, &b.key)));
    let mut relations: Vec<&Relation> = relations.iter().collect();
    relations.sort();
    let mut hasher = blake3::Hasher::new();
    for item in items {
        // serde_json over BTreeMap attrs is deterministic; writing to a hasher cannot fail
        // for these types, and a failure would only weaken the hash, never corrupt data.
        let _ = serde_json::to_writer(HashWriter(&mut hasher), item);
        hasher.update(b"\n");
    }
    hasher.update(b"--relations--\n");
    for r in relations {
        hasher.update(r.from.as_bytes());
        hasher.update(b"\0");
        hasher.update(r.to.as_bytes());
        hasher.update(b"\0");
        hasher.update(r.kind.as_bytes());
        hasher.update(b"\n");
    }
    *hasher.finalize().as_bytes()
}

struct HashWriter<'a>(&'a mut blake3::Hasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// serde adapter: `SystemTime` as an RFC 3339 UTC string.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_values_round_trip_through_json() {
        let item = Item::new(class::PACKAGE, "dpkg:bash:amd64")
            .with("name", "bash")
            .with("size", 1234_i64)
            .with("ratio", 0.5)
            .with("essential", true)
            .with("license", AttrValue::Null)
            .with("depends", vec!["libc6", "base-files"]);
        let json = serde_json::to_string(&item).unwrap();
        assert!(json.contains(r#""size":1234"#), "{json}");
        assert!(json.contains(r#""license":null"#), "{json}");
        let back: Item = serde_json::from_str(&json).unwrap();
        assert_eq!(back, item);
    }

    #[test]
    fn content_hash_ignores_order() {
        let a = Item::new("user", "root").with("uid", 0_i64);
        let b = Item::new("user", "daemon").with("uid", 1_i64);
        let r = Relation {
            from: "user/root".into(),
            to: "group/root".into(),
            kind: "member_of".into(),
        };
        assert_eq!(
            content_hash(&[a.clone(), b.clone()], std::slice::from_ref(&r)),
            content_hash(&[b, a.clone()], &[r])
        );
        assert_ne!(
            content_hash(std::slice::from_ref(&a), &[]),
            content_hash(&[a.with("uid", 2_i64)], &[])
        );
    }
}
