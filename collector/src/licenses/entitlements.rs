//! Entitlements (what the organisation bought) and their import from CSV or JSON.
//!
//! An entitlement is (contract, vendor, product, edition, metric, quantity, expires,
//! notes). Its key is (contract, vendor, product), compared case-insensitively: an import
//! holding one key twice is refused, and an accepted import replaces stored entitlements
//! with the same key (or the whole set with `replace`).
//!
//! Imports are all-or-nothing: [`parse_csv`] and [`parse_json`] return every entitlement
//! or the list of problems, each with its row number and the reason; the caller commits
//! only a complete set. CSV: a header row naming the columns (any order; `contract`,
//! `vendor`, `product`, `metric`, `quantity` required; `edition`, `expires`, `notes`
//! optional; anything else is refused), row numbers are file line numbers (the header is
//! row 1). JSON: an array of objects, or `{"items": [...]}`; row N is the N-th object.
//! Bounded: [`MAX_IMPORT_BYTES`], [`MAX_ROWS`], [`MAX_FIELD_BYTES`], at most
//! [`MAX_REPORTED_ERRORS`] problems reported.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

pub use crate::import_report::{ImportError, MAX_REPORTED_ERRORS, RowError};
use crate::import_report::{Problems, whole};
use serde::{Deserialize, Serialize};

/// Largest import body.
pub const MAX_IMPORT_BYTES: usize = 4 * 1024 * 1024;
/// Most rows in one import, and most entitlements stored.
pub const MAX_ROWS: usize = 20_000;
/// Longest text field.
pub const MAX_FIELD_BYTES: usize = 256;

/// How consumption is counted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Metric {
    /// Each package install (a package CI) counts one.
    #[default]
    #[serde(rename = "per-install")]
    PerInstall,
    /// Each host with the product counts one.
    #[serde(rename = "per-host")]
    PerHost,
    /// Each host counts its physical cores (cpu CI `cores`, all sockets).
    #[serde(rename = "per-core")]
    PerCore,
    /// Each host counts its interactive users (uid >= 1000 with a login shell).
    #[serde(rename = "per-user")]
    PerUser,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::PerInstall => "per-install",
            Metric::PerHost => "per-host",
            Metric::PerCore => "per-core",
            Metric::PerUser => "per-user",
        }
    }

    /// `per-core`, `per_core`, `PER-CORE`, `core` …
    pub fn parse(s: &str) -> Option<Metric> {
        let t = s.trim().to_ascii_lowercase().replace('_', "-");
        let t = t.strip_prefix("per-").unwrap_or(&t);
        match t {
            "install" => Some(Metric::PerInstall),
            "host" => Some(Metric::PerHost),
            "core" => Some(Metric::PerCore),
            "user" => Some(Metric::PerUser),
            _ => None,
        }
    }
}

/// One entitlement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlement {
    pub contract: String,
    pub vendor: String,
    pub product: String,
    /// Empty: every edition of the product.
    #[serde(default)]
    pub edition: String,
    pub metric: Metric,
    pub quantity: u64,
    /// Last day of validity (`YYYY-MM-DD`, UTC); `None`: perpetual.
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub notes: String,
}

impl Entitlement {
    /// (contract, vendor, product), lowercased: the duplicate key.
    pub fn key(&self) -> (String, String, String) {
        (
            self.contract.to_lowercase(),
            self.vendor.to_lowercase(),
            self.product.to_lowercase(),
        )
    }

    /// The first instant it no longer counts (the day after `expires`, 00:00 UTC).
    pub fn ends_at(&self) -> Option<SystemTime> {
        self.expires
            .as_deref()
            .and_then(parse_day)
            .map(|d| d + Duration::from_secs(86_400))
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        self.ends_at().is_some_and(|end| end <= now)
    }

    /// Still valid but ending within `window`.
    pub fn expiring(&self, now: SystemTime, window: Duration) -> bool {
        self.ends_at()
            .is_some_and(|end| end > now && end <= now + window)
    }
}

/// Midnight UTC of a `YYYY-MM-DD` day.
pub fn parse_day(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    humantime::parse_rfc3339(&format!("{s}T00:00:00Z")).ok()
}

const COLUMNS: &[&str] = &[
    "contract", "vendor", "product", "edition", "metric", "quantity", "expires", "notes",
];
const REQUIRED: &[&str] = &["contract", "vendor", "product", "metric", "quantity"];

/// Raw field values of one row, by column name.
type Fields<'a> = HashMap<&'static str, &'a str>;

/// Builds an entitlement from named text fields, or says why not.
fn from_fields(f: &Fields<'_>) -> Result<Entitlement, String> {
    let text = |name: &'static str, required: bool| -> Result<String, String> {
        let v = f.get(name).map(|s| s.trim()).unwrap_or("");
        if required && v.is_empty() {
            return Err(format!("{name} is empty"));
        }
        if v.len() > MAX_FIELD_BYTES {
            return Err(format!("{name} is longer than {MAX_FIELD_BYTES} bytes"));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("{name} holds a control character"));
        }
        Ok(v.to_owned())
    };
    let metric_text = text("metric", true)?;
    let metric = Metric::parse(&metric_text).ok_or_else(|| {
        format!("metric {metric_text:?} is not per-install, per-host, per-core or per-user")
    })?;
    let q = text("quantity", true)?;
    let quantity: u64 = q
        .parse()
        .map_err(|_| format!("quantity {q:?} is not a whole number >= 0"))?;
    if quantity > 1_000_000_000 {
        return Err(format!("quantity {quantity} is over 1000000000"));
    }
    let expires = text("expires", false)?;
    let expires = if expires.is_empty() {
        None
    } else {
        if parse_day(&expires).is_none() {
            return Err(format!("expires {expires:?} is not a date YYYY-MM-DD"));
        }
        Some(expires)
    };
    Ok(Entitlement {
        contract: text("contract", true)?,
        vendor: text("vendor", true)?,
        product: text("product", true)?,
        edition: text("edition", false)?,
        metric,
        quantity,
        expires,
        notes: text("notes", false)?,
    })
}

/// Refuses a second row with the key of an earlier one.
fn check_duplicates(rows: &[(usize, Entitlement)], p: &mut Problems) {
    let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
    for (row, e) in rows {
        if let Some(first) = seen.insert(e.key(), *row) {
            p.add(
                *row,
                format!(
                    "duplicate key (contract {:?}, vendor {:?}, product {:?}) of row {first}",
                    e.contract, e.vendor, e.product
                ),
            );
        }
    }
}

/// Parses a CSV import (see the module doc).
pub fn parse_csv(data: &[u8]) -> Result<Vec<Entitlement>, ImportError> {
    if data.len() > MAX_IMPORT_BYTES {
        return Err(whole(format!(
            "the import is larger than {MAX_IMPORT_BYTES} bytes"
        )));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(data);
    let headers = reader
        .headers()
        .map_err(|e| whole(format!("row 1 (header): {e}")))?
        .clone();
    let mut columns: Vec<Option<&'static str>> = Vec::with_capacity(headers.len());
    let mut p = Problems::default();
    for h in &headers {
        let name = h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase();
        match COLUMNS.iter().find(|c| **c == name) {
            Some(c) if columns.contains(&Some(*c)) => {
                p.add(1, format!("column {c:?} appears twice"));
            }
            Some(c) => columns.push(Some(*c)),
            None => {
                p.add(
                    1,
                    format!(
                        "unknown column {:?} (columns: {})",
                        h.chars().take(64).collect::<String>(),
                        COLUMNS.join(", ")
                    ),
                );
                columns.push(None);
            }
        }
    }
    for r in REQUIRED {
        if !columns.contains(&Some(*r)) {
            p.add(1, format!("required column {r:?} is missing"));
        }
    }
    if p.any() {
        return p.finish(Vec::new());
    }
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line() as usize;
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let row = record
                    .position()
                    .map(|pos| pos.line() as usize)
                    .unwrap_or(line);
                if rows.len() >= MAX_ROWS {
                    return Err(whole(format!("more than {MAX_ROWS} rows")));
                }
                if record.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                let fields: Fields<'_> = columns
                    .iter()
                    .zip(record.iter())
                    .filter_map(|(c, v)| c.map(|c| (c, v)))
                    .collect();
                match from_fields(&fields) {
                    Ok(e) => rows.push((row, e)),
                    Err(reason) => p.add(row, reason),
                }
            }
            Err(e) => {
                let row = e.position().map(|pos| pos.line() as usize).unwrap_or(line);
                let reason = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("{len} fields where the header has {expected_len}"),
                    csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_owned(),
                    _ => format!("malformed CSV: {e}"),
                };
                p.add(row, reason);
                // A malformed record may leave the reader out of step: stop at the first.
                if !matches!(
                    e.kind(),
                    csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. }
                ) {
                    break;
                }
            }
        }
    }
    check_duplicates(&rows, &mut p);
    p.finish(rows.into_iter().map(|(_, e)| e).collect())
}

/// Parses a JSON import: an array of entitlement objects or `{"items": [...]}`. Quantity
/// must be a number (a string is a wrong type); unknown fields are refused.
pub fn parse_json(data: &[u8]) -> Result<Vec<Entitlement>, ImportError> {
    if data.len() > MAX_IMPORT_BYTES {
        return Err(whole(format!(
            "the import is larger than {MAX_IMPORT_BYTES} bytes"
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| whole(format!("malformed JSON: {e}")))?;
    let items = match v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(mut o) if o.len() == 1 && o.contains_key("items") => {
            match o.remove("items") {
                Some(serde_json::Value::Array(a)) => a,
                _ => return Err(whole("items must be an array")),
            }
        }
        _ => {
            return Err(whole(
                "expected an array of entitlements or {\"items\": [...]}",
            ));
        }
    };
    if items.len() > MAX_ROWS {
        return Err(whole(format!("more than {MAX_ROWS} rows")));
    }
    let mut p = Problems::default();
    let mut rows = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let row = i + 1;
        match json_row(item) {
            Ok(e) => rows.push((row, e)),
            Err(reason) => p.add(row, reason),
        }
    }
    check_duplicates(&rows, &mut p);
    p.finish(rows.into_iter().map(|(_, e)| e).collect())
}

fn json_row(item: &serde_json::Value) -> Result<Entitlement, String> {
    let obj = item.as_object().ok_or_else(|| "not an object".to_owned())?;
    let mut texts: Vec<(&'static str, String)> = Vec::new();
    for (k, v) in obj {
        let Some(col) = COLUMNS.iter().find(|c| **c == k.as_str()) else {
            return Err(format!(
                "unknown field {:?} (fields: {})",
                k.chars().take(64).collect::<String>(),
                COLUMNS.join(", ")
            ));
        };
        let t = match (v, *col) {
            (serde_json::Value::Null, "expires" | "edition" | "notes") => String::new(),
            (serde_json::Value::Number(n), "quantity") => n.to_string(),
            (_, "quantity") => {
                return Err(format!("quantity must be a number, not {}", kind(v)));
            }
            (serde_json::Value::String(s), _) => s.clone(),
            (other, c) => return Err(format!("{c} must be a string, not {}", kind(other))),
        };
        texts.push((col, t));
    }
    let fields: Fields<'_> = texts.iter().map(|(c, t)| (*c, t.as_str())).collect();
    from_fields(&fields)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `stored` with `imported` merged in: same key replaced (in place), new keys appended.
pub fn merge(stored: &[Entitlement], imported: Vec<Entitlement>) -> Vec<Entitlement> {
    let mut out: Vec<Entitlement> = stored.to_vec();
    let index: HashMap<(String, String, String), usize> =
        out.iter().enumerate().map(|(i, e)| (e.key(), i)).collect();
    for e in imported {
        match index.get(&e.key()) {
            Some(i) => out[*i] = e,
            None => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    const GOOD: &str = "contract,vendor,product,metric,quantity,expires\n\
                        C-1,Microsoft,SQL Server,per-core,16,2030-12-31\n\
                        C-2,Oracle,Java SE,PER_CORE,8,\n";

    #[test]
    fn csv_parses_columns_in_any_order() {
        let v = parse_csv(GOOD.as_bytes()).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].metric, Metric::PerCore);
        assert_eq!(v[0].quantity, 16);
        assert_eq!(v[0].expires.as_deref(), Some("2030-12-31"));
        assert_eq!(v[1].expires, None);
    }

    #[test]
    fn csv_errors_name_rows_and_reasons() {
        let bad = "contract,vendor,product,metric,quantity\n\
                   C-1,Microsoft,SQL Server,per-core,16\n\
                   C-2,Oracle,Java SE,per-core\n\
                   C-3,Oracle,Java SE,per-socket,4\n\
                   C-4,Oracle,Java SE,per-core,many\n\
                   c-1,MICROSOFT,sql server,per-host,1\n";
        let e = parse_csv(bad.as_bytes()).unwrap_err();
        let rows: Vec<usize> = e.errors.iter().map(|r| r.row).collect();
        assert_eq!(rows, vec![3, 4, 5, 6], "{e}");
        assert!(
            e.errors[0]
                .reason
                .contains("4 fields where the header has 5")
        );
        assert!(e.errors[1].reason.contains("per-socket"));
        assert!(e.errors[2].reason.contains("quantity"));
        assert!(e.errors[3].reason.contains("duplicate key"));
        assert!(e.errors[3].reason.contains("row 2"));
        assert!(e.to_string().contains("row 5: quantity"));
    }

    #[test]
    fn csv_unknown_and_missing_columns_are_refused() {
        let e = parse_csv(b"contract,vendor,product,metric,qty\nC,V,P,per-host,1\n").unwrap_err();
        assert_eq!(e.errors[0].row, 1);
        assert!(e.errors[0].reason.contains("unknown column \"qty\""));
        assert!(e.errors[1].reason.contains("\"quantity\" is missing"));
    }

    #[test]
    fn json_checks_types_and_fields() {
        let ok = br#"{"items":[{"contract":"C","vendor":"V","product":"P","metric":"per-user","quantity":3}]}"#;
        assert_eq!(parse_json(ok).unwrap()[0].metric, Metric::PerUser);
        let bad = br#"[{"contract":"C","vendor":"V","product":"P","metric":"per-user","quantity":"3"},
                      {"contract":"C","vendor":"V","product":"P","metric":"per-user","quantity":3,"colour":"red"},
                      {"contract":"C","vendor":"V","product":"P","metric":"per-user","quantity":-1}]"#;
        let e = parse_json(bad).unwrap_err();
        assert_eq!(e.total, 3);
        assert!(e.errors[0].reason.contains("quantity must be a number"));
        assert!(e.errors[1].reason.contains("unknown field \"colour\""));
        assert_eq!(e.errors[2].row, 3);
    }

    #[test]
    fn expiry_is_end_of_day() {
        let e = parse_csv(GOOD.as_bytes()).unwrap().remove(0);
        let day = parse_day("2030-12-31").unwrap();
        assert!(!e.expired(day + Duration::from_secs(86_399)));
        assert!(e.expired(day + Duration::from_secs(86_400)));
        assert!(e.expiring(day, Duration::from_secs(2 * 86_400)));
        assert!(!e.expiring(
            day - Duration::from_secs(90 * 86_400),
            Duration::from_secs(86_400)
        ));
    }

    #[test]
    fn merge_replaces_by_key() {
        let stored = parse_csv(GOOD.as_bytes()).unwrap();
        let new = parse_csv(b"contract,vendor,product,metric,quantity\nc-1,microsoft,sql server,per-core,32\nC-9,X,Y,per-host,1\n").unwrap();
        let m = merge(&stored, new);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].quantity, 32);
    }

    proptest! {
        #[test]
        fn csv_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_csv(&data);
        }

        #[test]
        fn csv_rows_never_panic(body in "[a-zA-Z0-9,\"\\n -]{0,300}") {
            let text = format!("contract,vendor,product,metric,quantity\n{body}");
            let _ = parse_csv(text.as_bytes());
        }

        #[test]
        fn json_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_json(&data);
        }
    }
}
